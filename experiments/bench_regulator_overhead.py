"""Update-time overhead of each regulator over its bare inner optimizer, side by side.

    python -m experiments.bench_regulator_overhead [--preset full|cpu] [--repeats 30]

The parameter tree is the baseline LM's (``configs/shakespeare_char.py``: the nanoGPT
recipe's 10.75M parameters with ``--preset full``). Each transform's jitted ``update``
is timed alone (median after warm-up, outputs blocked on), with the loss, grad norm and
per-head attention logits (above QK-clip's τ, so its rescale runs) passed as telemetry as
the train step does. The overhead is reported against the bare update and against one
whole AdamW train step (forward, backward, update) of the same model, timed in the same
run on a batch of the preset's shape. Targets: ARS < 5% over AdamW; the Thyroid < 2% with
update_every=10; QK-clip, spike-aware moments and the update homeostat < 5% of an AdamW
step.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import ROOT, ResultsFile, git_revision, markdown_table
from homeo_jax.models import roles
from homeo_jax.regulators.ars import ars_adamw
from homeo_jax.regulators.qk_clip import qk_clip
from homeo_jax.regulators.spike_aware import spike_aware
from homeo_jax.regulators.thyroid import thyroid
from homeo_jax.regulators.update_prox import fisher_subspace_prox
from homeo_jax.regulators.update_ratio import update_ratio_homeostat
from homeo_jax.training import config as config_lib
from homeo_jax.training.build import build_model, hardware_description
from homeo_jax.training.step import functional_model, init_train_state, make_train_step


def adamw() -> optax.GradientTransformation:
  return optax.adamw(1e-3, b2=0.99, weight_decay=0.1)


def pairs():
  """(name, regulator, its bare inner optimizer)."""
  stack = optax.chain(
    spike_aware(adamw()),
    update_ratio_homeostat(1e-2, group_labels=roles.param_roles, group_names=roles.ROLES),
    qk_clip(columns=roles.query_key_columns),
  )
  return [
    ("qk_clip (τ 100)", optax.chain(adamw(), qk_clip(columns=roles.query_key_columns)), adamw()),
    ("spike_aware (θ 5000)", spike_aware(adamw()), adamw()),
    (
      "update_ratio (per role)",
      optax.chain(
        adamw(),
        update_ratio_homeostat(1e-2, group_labels=roles.param_roles, group_names=roles.ROLES),
      ),
      adamw(),
    ),
    ("the three together", stack, adamw()),
    (
      "ars_adamw (window 100)",
      ars_adamw(1e-3, b2=0.99, weight_decay=0.1),
      optax.adamw(1e-3, b2=0.99, weight_decay=0.1),
    ),
    (
      "ars_adamw, spectral detector",
      ars_adamw(1e-3, b2=0.99, weight_decay=0.1, guard={"detector": "spectral"}),
      optax.adamw(1e-3, b2=0.99, weight_decay=0.1),
    ),
    (
      "fisher_subspace_prox(ars_adamw), rank 8",
      fisher_subspace_prox(ars_adamw(1e-3, b2=0.99, weight_decay=0.1), rank=8),
      optax.adamw(1e-3, b2=0.99, weight_decay=0.1),
    ),
    (
      "thyroid α/λ/τ (update_every 10, untrained weights)",
      thyroid(optax.adamw, 1e-3, 0.1, weights="random", b2=0.99),
      optax.adamw(1e-3, b2=0.99, weight_decay=0.1),
    ),
  ]


def time_update(tx, params, grads, repeats, layers_heads):
  update = jax.jit(tx.update, donate_argnums=1)
  state = tx.init(params)
  telemetry = {
    "value": jnp.asarray(2.5),
    "grad_norm": jnp.asarray(1.0),
    "attn_head_logit_max": jnp.linspace(50.0, 150.0, np.prod(layers_heads)).reshape(layers_heads),
  }
  _, state = update(grads, state, params, **telemetry)  # compile
  jax.block_until_ready(state)
  times = []
  for i in range(repeats):
    telemetry["value"] = jnp.asarray(2.5 + 0.1 * (i % 7))
    start = time.perf_counter()
    updates, state = update(grads, state, params, **telemetry)
    jax.block_until_ready((updates, state))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def time_train_step(config, repeats: int) -> float:
  """Median ms of one jitted AdamW train step (forward, backward, update) of ``config``."""
  model = build_model(config, vocab_size=84)
  apply_fn, params = functional_model(model)
  tx = optax.with_extra_args_support(adamw())
  step = jax.jit(make_train_step(apply_fn, tx), donate_argnums=0)
  state = init_train_state(params, tx, 0)
  batch = jax.random.randint(
    jax.random.key(0), (config.data.batch_size, config.data.seq_len + 1), 0, 84
  )
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="full", choices=["full", "cpu"])
  parser.add_argument("--repeats", type=int, default=30)
  args = parser.parse_args()
  spec = "configs/shakespeare_char.py" + ("" if args.preset == "full" else ":cpu")
  config = config_lib.load_config(str(ROOT / spec))
  config = dataclasses.replace(
    config, model=dataclasses.replace(config.model, attention_telemetry=True)
  )
  _, params = functional_model(build_model(config, vocab_size=84))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  n = sum(x.size for x in jax.tree.leaves(params))
  layers_heads = (config.model.num_layers, config.model.num_heads)
  step_ms = time_train_step(config, args.repeats)
  rows = []
  for name, regulated, bare in pairs():
    # Interleave so drift in machine load hits both alike.
    t_bare, t_reg = [], []
    for _ in range(3):
      bare_tx = optax.with_extra_args_support(bare)
      t_bare.append(time_update(bare_tx, params, grads, args.repeats, layers_heads))
      t_reg.append(
        time_update(optax.with_extra_args_support(regulated), params, grads, args.repeats,
                    layers_heads)
      )  # fmt: skip
    b, r = min(t_bare), min(t_reg)
    rows.append(
      [
        name,
        f"{n:,}",
        f"{b:.2f}",
        f"{r:.2f}",
        f"{100 * (r / b - 1):+.1f}%",
        f"{100 * (r - b) / step_ms:+.2f}%",
      ]
    )
  headers = ["regulator", "parameters", "bare inner ms", "regulated ms", "overhead",
             "overhead / AdamW step"]  # fmt: skip
  text = "\n".join(
    [
      "# Regulator overhead: update time against the bare optimizer and one AdamW step",
      "",
      f"- command: `python -m experiments.bench_regulator_overhead {' '.join(sys.argv[1:])}`",
      f"- revision {git_revision()}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
      f"- hardware: {hardware_description()}",
      f"- one AdamW train step ({config.data.batch_size}×{config.data.seq_len} tokens, "
      f"{n:,} parameters): {step_ms:.2f} ms; medians of {args.repeats} updates, best of 3 "
      "interleaved rounds",
      "",
      markdown_table(headers, rows),
      "",
    ]
  )
  print(text)
  results = ResultsFile(f"bench_regulator_overhead_{args.preset}")
  results.data["meta"] = {"command": " ".join(sys.argv), "step_ms": step_ms, "rows": rows}
  results.record("latest", {"step_ms": step_ms, "rows": rows}, hardware_description())
  results.write_markdown(text)


if __name__ == "__main__":
  main()
