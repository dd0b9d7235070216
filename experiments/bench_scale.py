"""Scale-out benchmarks: LM step throughput/MFU per optimizer, and Muon on sharded matrices.

    python -m experiments.bench_scale throughput [--size gpt2-small] [--peak-tflops 989]
    python -m experiments.bench_scale muon-sharding [--devices 8]   # fake CPU devices ok

``throughput``: tokens/s of the baseline LM's jitted train step (forward, backward,
optimizer) with AdamW, our Muon (``ord_muon``, spectral_lr 0), ARS-steered AdamW and the
Thyroid-steered AdamW, side by side, each relative to AdamW; with ``--peak-tflops`` also
the model FLOPs utilization, MFU = tokens/s · (6·N + 12·L·d·T) / peak (PaLM's
accounting, N the non-embedding parameters). GPT-2-small: 12 layers, 768 wide,
16 × 1024 tokens a step, bf16 compute.

``muon-sharding``: the hidden matrices of a GPT-2-small-shaped model sharded FSDP-style
(rows split over all devices). Newton–Schulz per leaf on those sharded matrices vs the
same-shape stacks sharded along the stack axis (``orthogonalize_many(stack_mesh=...)``):
time and the number of collectives XLA inserts, side by side; results equal.
"""

from __future__ import annotations

import argparse
import os
import time

SIZES = {
  "tiny": dict(num_layers=2, d_model=64, num_heads=4, seq_len=64, batch=8),
  "cpu": dict(num_layers=4, d_model=256, num_heads=4, seq_len=256, batch=8),
  "gpt2-small": dict(num_layers=12, d_model=768, num_heads=12, seq_len=1024, batch=16),
}


def _timed(fn, *args, repeats: int):
  import jax
  import numpy as np

  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return float(np.median(times)), out


def throughput(args) -> None:
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from experiments.common import markdown_table, write_results
  from homeo_jax.models import Transformer, TransformerConfig
  from homeo_jax.training.build import hardware_description
  from homeo_jax.training.config import OptimizerConfig
  from homeo_jax.training.optimizers import build_optimizer
  from homeo_jax.training.step import functional_model, init_train_state, make_train_step

  size = SIZES[args.size]
  cfg = TransformerConfig(
    vocab_size=50304,
    num_layers=size["num_layers"],
    num_heads=size["num_heads"],
    d_model=size["d_model"],
    max_seq_len=size["seq_len"],
    dtype="bfloat16" if jax.default_backend() != "cpu" else "float32",
  )
  apply_fn, params = functional_model(Transformer(cfg, rngs=nnx.Rngs(0)))
  n_total = sum(x.size for x in jax.tree.leaves(params))
  n_embed = cfg.vocab_size * cfg.d_model + cfg.max_seq_len * cfg.d_model
  t, b = size["seq_len"], size["batch"]
  flops_per_token = 6 * (n_total - n_embed) + 12 * cfg.num_layers * cfg.d_model * t
  batch = jax.random.randint(jax.random.key(1), (b, t + 1), 0, cfg.vocab_size)
  print(hardware_description(), f"| {args.size}: {n_total / 1e6:.1f}M params, {b}×{t} tokens")
  rows, base = [], None
  for name, kwargs in (
    ("adamw", {}),
    ("ord_muon", {}),
    ("ars_adamw", {}),
    ("thyroid_adamw", {"update_every": 10}),
  ):
    opt = OptimizerConfig(name=name, learning_rate=3e-4, warmup_steps=10, kwargs=kwargs)
    tx = optax.with_extra_args_support(build_optimizer(opt, 1000, model=cfg))
    state = init_train_state(jax.tree.map(jnp.copy, params), tx, 0)
    step = jax.jit(make_train_step(apply_fn, tx), donate_argnums=0)

    def run(state, step=step):
      state, metrics = step(state, batch)
      return state

    state = run(state)  # compile
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(args.repeats):
      state = run(state)
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - start) / args.repeats
    tok_s = b * t / seconds
    base = base or tok_s
    mfu = tok_s * flops_per_token / (args.peak_tflops * 1e12) if args.peak_tflops else None
    rows.append(
      [
        name,
        f"{1e3 * seconds:.1f}",
        f"{tok_s:,.0f}",
        f"{tok_s / base:.3f}",
        f"{tok_s * flops_per_token / 1e12:.2f}",
        "—" if mfu is None else f"{100 * mfu:.1f}%",
      ]
    )
    del state
  table = markdown_table(
    ["optimizer", "ms/step", "tokens/s", "vs AdamW", "model TFLOP/s", "MFU"], rows
  )
  print(table)
  write_results(
    f"bench_scale_throughput_{args.size}",
    f"Optimizer throughput at size {args.size}",
    table,
    [f"{n_total / 1e6:.1f}M params, {b}×{t} tokens per step, median of {args.repeats}"],
  )


def muon_sharding(args) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from experiments.common import markdown_table, write_results
  from homeo_jax.cores.polar import orthogonalize, orthogonalize_many
  from homeo_jax.training.build import hardware_description

  devices = jax.devices()
  mesh = Mesh(np.asarray(devices), ("fsdp",))
  d, layers = args.width, args.layers
  shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)] * layers
  keys = jax.random.split(jax.random.key(0), len(shapes))
  row_sharded = NamedSharding(mesh, PartitionSpec("fsdp", None))
  mats = [
    jax.device_put(jax.random.normal(k, s), row_sharded) for k, s in zip(keys, shapes, strict=True)
  ]
  print(hardware_description(), f"| {len(mats)} matrices of a {layers}-layer, {d}-wide model")

  per_leaf = jax.jit(lambda ms: [orthogonalize(m) for m in ms])
  stacked = jax.jit(
    lambda ms: [x[0] for x in orthogonalize_many([m[None] for m in ms], stack_mesh=mesh)]
  )
  rows, outs = [], {}
  for name, fn in (
    ("per leaf, FSDP-sharded matrices", per_leaf),
    ("stacked, stack axis sharded", stacked),
  ):
    hlo = fn.lower(mats).compile().as_text()
    collectives = sum(
      hlo.count(op)
      for op in (
        "all-reduce(",
        "all-gather(",
        "reduce-scatter(",
        "all-to-all(",
        "collective-permute(",
      )
    )
    seconds, out = _timed(fn, mats, repeats=args.repeats)
    outs[name] = out
    rows.append([name, f"{1e3 * seconds:.1f}", str(collectives)])
  a, b = outs.values()
  err = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b, strict=True))
  base = float(rows[0][1])
  for row in rows:
    row.append(f"{base / float(row[1]):.2f}×")
  table = markdown_table(["Newton–Schulz (5 steps)", "ms", "collectives in HLO", "speed-up"], rows)
  note = f"max |difference| between the two: {err:.1e}; {len(devices)} devices"
  print(table)
  print(note)
  write_results(
    "bench_scale_muon_sharding",
    "Muon's Newton–Schulz on sharded stacks",
    table,
    [f"{len(mats)} matrices of a {layers}-layer, {d}-wide model", note],
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="mode", required=True)
  t = sub.add_parser("throughput")
  t.add_argument("--size", default="cpu", choices=sorted(SIZES))
  t.add_argument("--peak-tflops", type=float, default=0.0, help="device peak, e.g. 989 (H100 bf16)")
  t.add_argument("--repeats", type=int, default=5)
  m = sub.add_parser("muon-sharding")
  m.add_argument("--devices", type=int, default=0, help="fake CPU devices (0: the real ones)")
  m.add_argument("--width", type=int, default=768)
  m.add_argument("--layers", type=int, default=12)
  m.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  if args.mode == "muon-sharding" and args.devices:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
  throughput(args) if args.mode == "throughput" else muon_sharding(args)


if __name__ == "__main__":
  main()
