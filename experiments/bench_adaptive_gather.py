"""Does gathering the alive tokens make adaptive depth cheaper? Dense vs gathered passes.

    python -m experiments.bench_adaptive_gather [--width 256] [--seq 256] [--batch 8]
                                                [--kv-per-pass]

A stack of ``AdaptiveDecoderLayer``s whose continue gate keeps a chosen fraction f of
each sequence alive after the first pass (p = 0.9 for the first f·T positions, 0.05 for
the rest; the gate reads the top-k attention mass feature, which is exactly 1 for the
first k positions), Kmax = 4. For each f the dense path (every pass computes every
token) and the gathered path (``gather_capacity`` = f: passes 2..4 run on a [B, f·T, d]
block) are timed side by side in one process — forward (inference, while_loop) and
forward + backward (training, scan) — after checking that both give the same output.
With ``--kv-per-pass`` the layers recompute keys/values before every pass (the gathered
path only the block's). Prints a table of times and speed-ups; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.common import markdown_table, write_results
from homeo_jax.models.adaptive_layer import AdaptiveConfig, AdaptiveDecoderLayer
from homeo_jax.training.build import hardware_description


class PrefixGate(AdaptiveDecoderLayer):
  def continue_gate(self, features, bias=0.0):
    return jnp.where(features[..., 1] > 0.9999, 0.9, 0.05)


class Stack(nnx.Module):
  def __init__(self, cfg: AdaptiveConfig, *, rngs: nnx.Rngs):
    self.layers = nnx.List([PrefixGate(cfg, i, rngs=rngs) for i in range(cfg.num_layers)])

  def __call__(self, x, path):
    for layer in self.layers:
      x, _ = layer(
        x, force=jnp.int32(0), clamp=jnp.int32(0), num_passes=layer.cfg.max_passes, path=path
      )
    return x


def timed(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--kv-per-pass", action="store_true", help="model.kv_per_pass")
  args = parser.parse_args()
  print(hardware_description())
  x = jax.random.normal(jax.random.key(0), (args.batch, args.seq, args.width))
  rows = []
  for frac in (0.1, 0.25, 0.5):
    base = AdaptiveConfig(
      vocab_size=8,
      num_layers=args.layers,
      num_heads=max(1, args.width // 64),
      d_model=args.width,
      max_seq_len=args.seq,
      min_alive_fraction=0.0,
      top_mass_k=max(1, round(frac * args.seq)),
      kv_per_pass=args.kv_per_pass,
      ffn="mlp",
    )
    results = {}
    for name, capacity in (("dense", 0.0), ("gathered", frac)):
      model = Stack(dataclasses.replace(base, gather_capacity=capacity), rngs=nnx.Rngs(0))
      graphdef, params = nnx.split(model)

      def forward(params, x, graphdef=graphdef):
        return nnx.merge(graphdef, params)(x, "while")

      def train_step(params, x, graphdef=graphdef):
        def loss(p):
          return jnp.mean(jnp.square(nnx.merge(graphdef, p)(x, "scan")))

        return jax.grad(loss)(params)

      fwd, step = jax.jit(forward), jax.jit(train_step)
      results[name] = (
        fwd(params, x),
        timed(fwd, params, x, repeats=args.repeats),
        timed(step, params, x, repeats=args.repeats),
      )
    (out_d, fwd_d, step_d), (out_g, fwd_g, step_g) = results["dense"], results["gathered"]
    err = float(jnp.max(jnp.abs(out_d - out_g)))
    tokens = args.batch * args.seq
    rows.append(
      [
        f"{frac:.2f}",
        f"{1 + 3 * frac:.2f}",
        f"{err:.1e}",
        f"{1e3 * fwd_d:.1f} / {1e3 * fwd_g:.1f}",
        f"{fwd_d / fwd_g:.2f}×",
        f"{1e3 * step_d:.1f} / {1e3 * step_g:.1f}",
        f"{step_d / step_g:.2f}×",
        f"{tokens / fwd_g:,.0f}",
      ]
    )
  table = markdown_table(
    [
      "alive after pass 1",
      "passes/token",
      "max abs(dense − gathered)",
      "forward ms dense / gathered",
      "forward speed-up",
      "fwd+bwd ms dense / gathered",
      "fwd+bwd speed-up",
      "gathered tokens/s (fwd)",
    ],
    rows,
  )
  print(table)
  setting = (
    f"{args.layers} layers, d={args.width}, T={args.seq}, batch {args.batch}, Kmax 4, "
    f"kv_per_pass {args.kv_per_pass}, median of {args.repeats}"
  )
  print(setting)
  name = "bench_adaptive_gather" + ("_kv_per_pass" if args.kv_per_pass else "")
  write_results(name, "Gathering alive tokens: dense against gathered passes", table, [setting])


if __name__ == "__main__":
  main()
