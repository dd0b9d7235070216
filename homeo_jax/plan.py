"""What a run will cost, without running it: ``python -m homeo_jax.plan --config FILE[:preset]``.

    python -m homeo_jax.plan --config configs/shakespeare_char.py                # the GPU recipe
    python -m homeo_jax.plan --config configs/spechorn.py:gpu --mfu 0.35 --set data.batch_size=32

Builds the config's model and optimizer *abstractly* (no parameters are allocated),
lowers the train step and compiles it for this machine's backend, then prints:

* parameters, and FLOPs per step from XLA's cost analysis next to the analytic
  6·N·tokens + 12·L·d·T·tokens count (``training/flops.py``; N without the position
  table, and for a mixture of experts with k/E of the experts — what a token runs; the
  adaptive model's extra passes are not in it);
* memory per device from the compiled step's memory analysis (arguments + outputs −
  donated aliases + temporaries) — this backend's buffer assignment, an estimate for
  another one;
* for H100, A100, TPU v5e and v5p: the step and run time at the stated MFU (default
  0.4; step time = FLOPs / (devices · peak · MFU)), whether the step fits one device's
  HBM (90% usable), and otherwise the FSDP size that would make it fit, dividing
  parameters, optimizer state and activations alike (an estimate).

With ``--target cuda`` or ``tpu`` the step is also exported for that platform with
``jax.export`` (a lowering check; nothing runs there).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import numpy as np

from homeo_jax.training import config as config_lib
from homeo_jax.training import flops as flops_lib

USABLE_HBM = 0.9


@dataclasses.dataclass
class Plan:
  name: str
  num_params: int
  tokens_per_step: int  # the largest stage's batch (data.batch_multipliers)
  steps: int
  run_flops: float  # every step's FLOPs, staged batches included
  flops_per_step: float  # XLA cost analysis
  analytic_flops: float
  bytes_per_step: float
  state_bytes: float  # parameters + optimizer state
  peak_bytes: float  # compiled step, one device
  backend: str


def plan(config: config_lib.Config, *, target: str | None = None) -> Plan:
  """Lower and compile ``config``'s train step on abstract values; see the module docstring."""
  from flax import nnx

  from homeo_jax.models.roles import param_roles
  from homeo_jax.training.build import assemble, load_data
  from homeo_jax.training.stages import base_batches_before
  from homeo_jax.training.step import functional_model, make_train_step

  config_lib.validate_config(config)
  data = load_data(config)
  parts = assemble(config, data, abstract=True)
  model, graphdef, rest, tx, state = parts.model, parts.graphdef, parts.rest, parts.tx, parts.state
  params = state.params
  d = config.data
  # A staged run is planned at its largest batch (the peak memory); its run FLOPs scale
  # each stage's share of the tokens.
  largest = d.batch_size * max(d.batch_multipliers, default=1)
  batch = jax.ShapeDtypeStruct((largest, d.seq_len + 1), np.int32)
  loss_fn = parts.loss_fn

  def train_step(state, batch, rest):
    # the model's non-parameter variables are arguments too, so all of it stays abstract
    apply_fn, _ = functional_model(nnx.merge(graphdef, state.params, rest))
    return make_train_step(apply_fn, tx, loss_fn)(state, batch)

  step = jax.jit(train_step, donate_argnums=0)
  lowered = step.lower(state, batch, rest)
  cost = flops_lib.step_cost(lowered)
  memory = lowered.compile().memory_analysis()
  peak_bytes = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )
  if target:
    from jax import export

    export.export(step, platforms=(target,))(state, batch, rest)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  m = config.model
  pos = getattr(model, "pos_embed", None)
  unused = int(np.prod(pos.embedding.shape)) if pos is not None else 0  # a lookup, no matmul
  moe = getattr(m, "moe", None)
  if moe is not None and config.model_type == "moe_transformer":  # a token runs k of E
    roles = param_roles(params)
    experts = sum(
      int(np.prod(x.shape))
      for x, role in zip(jax.tree.leaves(params), jax.tree.leaves(roles), strict=True)
      if role == "expert"
    )
    unused += experts * (1.0 - moe.top_k / moe.num_experts)
  tokens = largest * d.seq_len
  steps = config.train.steps
  run_batches = steps * largest
  if d.batch_multipliers:
    scheduled = steps - config.optimizer.extension_steps
    run_batches = d.batch_size * base_batches_before(steps, d.batch_multipliers, scheduled)
  return Plan(
    name=config.name,
    num_params=num_params,
    tokens_per_step=tokens,
    steps=steps,
    run_flops=cost["flops"] * run_batches / largest,
    flops_per_step=cost["flops"],
    analytic_flops=flops_lib.analytic_flops(
      num_params, unused, m.num_layers, m.d_model, d.seq_len, tokens
    ),
    bytes_per_step=cost["bytes"],
    state_bytes=float(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))),
    peak_bytes=float(peak_bytes),
    backend=jax.default_backend(),
  )


def devices_needed(p: Plan, hbm_bytes: float) -> int:
  """The smallest power-of-two FSDP size whose share of the step fits one device."""
  n = 1
  while p.peak_bytes / n > USABLE_HBM * hbm_bytes and n < 4096:
    n *= 2
  return n


def hours(seconds: float) -> str:
  return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def format_plan(p: Plan, mfu: float) -> str:
  from homeo_jax.training.report import markdown_table

  ratio = p.flops_per_step / p.analytic_flops if p.analytic_flops else float("nan")
  lines = [
    f"# plan: {p.name}",
    "",
    f"- parameters: {p.num_params:,}; tokens per step: {p.tokens_per_step:,}; steps: {p.steps:,}"
    f"; run FLOPs: {p.run_flops:.4g}",
    f"- FLOPs per step (XLA cost analysis): {p.flops_per_step:.4g}; analytic "
    f"6·N·tokens + 12·L·d·T·tokens: {p.analytic_flops:.4g} (ratio {ratio:.3f})",
    f"- bytes accessed per step (cost analysis): {p.bytes_per_step:.4g}",
    f"- parameters + optimizer state: {p.state_bytes / 1e9:.3f} GB; peak memory of the "
    f"compiled step on one device ({p.backend} buffer assignment): {p.peak_bytes / 1e9:.3f} GB",
    "",
  ]
  rows = []
  for name in flops_lib.PLANNED:
    acc = flops_lib.accelerator(name)
    n = devices_needed(p, acc.hbm_bytes)
    step_s = p.flops_per_step / (n * acc.peak_flops * mfu)
    fits = "yes" if n == 1 else f"no: mesh.fsdp={n} ({n} devices)"
    rows.append(
      [
        name,
        fits,
        f"{1000 * step_s:.3g}",
        hours(p.run_flops / (n * acc.peak_flops * mfu)),
        f"{acc.peak_flops / 1e12:.0f}",
      ]
    )
  header = ["device", "fits one device", f"step ms at MFU {mfu:g}", "run time", "peak TFLOP/s"]
  lines.append(markdown_table(header, rows))
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="homeo_jax.plan", description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="config file, optionally :preset")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the estimates")
  parser.add_argument("--target", choices=["cuda", "tpu"], default=None)
  args = parser.parse_args(argv)
  try:
    if not 0.0 < args.mfu <= 1.0:
      raise config_lib.ConfigError(f"--mfu must be in (0, 1], got {args.mfu}")
    config = config_lib.apply_overrides(config_lib.load_config(args.config), args.set)
    result = plan(config, target=args.target)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  print(format_plan(result, args.mfu))
  return 0


if __name__ == "__main__":
  sys.exit(main())
