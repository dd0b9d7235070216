"""Benchmark the jitted cores against the references, side by side in one run.

    python -m experiments.bench_cores                     # CPU-sized shapes
    python -m experiments.bench_cores --shapes gpt2-small gpt2-medium   # on a GPU

Polar: the update time of ``optax.contrib.muon`` vs ours (``ord_muon`` with spectral_lr=0,
same-shape matrices stacked and orthogonalised in one batched call; float32 and
bfloat16 Newton–Schulz), over the 4·L hidden matrices of a GPT-2-shaped model, and the
orthogonality error of each against ``jnp.linalg.svd``. Sinkhorn: ours vs ott-jax on a
routing-sized problem at equal iterations, and ott-jax run to its 1e-3 threshold.
Prints ratios; writes experiments/results/bench_cores.md. Timings: median of ``--repeats``
calls after a warm-up (compilation excluded), ``block_until_ready`` on every output.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import markdown_table, write_results
from homeo_jax.cores.sinkhorn import sinkhorn, sinkhorn_potentials
from homeo_jax.regulators.ord_muon import ord_muon
from homeo_jax.training.build import hardware_description

# (layers, width): GPT-2 small/medium, and a quarter-width small for a 2-core CPU.
SHAPES = {"cpu": (12, 192), "gpt2-small": (12, 768), "gpt2-medium": (24, 1024)}


def gpt2_matrices(layers: int, width: int) -> dict:
  key = jax.random.key(0)
  tree = {}
  for i in range(layers):
    for name, shape in (
      ("qkv", (width, 3 * width)),
      ("out", (width, width)),
      ("up", (width, 4 * width)),
      ("down", (4 * width, width)),
    ):
      key, sub = jax.random.split(key)
      tree[f"h{i}.{name}"] = jax.random.normal(sub, shape) * 0.02
  return tree


def timed(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def orthogonality(u: np.ndarray) -> tuple[float, float, float]:
  """(‖UUᵀ − I‖₂ on the small side, min σ, max σ) from an SVD in float64."""
  u = np.asarray(u, np.float64)
  if u.shape[0] > u.shape[1]:
    u = u.T
  s = np.linalg.svd(u, compute_uv=False)
  return float(np.max(np.abs(s**2 - 1))), float(s.min()), float(s.max())


def bench_polar(shapes: str, repeats: int) -> list[list]:
  layers, width = SHAPES[shapes]
  params = gpt2_matrices(layers, width)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), params)
  rows = []
  txs = {
    "optax.contrib.muon": optax.contrib.muon(0.02),
    "ours, float32": ord_muon(0.02, newton_schulz={"compute_dtype": jnp.float32}),
    "ours, bfloat16": ord_muon(0.02, newton_schulz={"compute_dtype": jnp.bfloat16}),
  }
  reference_ms = None
  probe = "h0.up"
  for name, tx in txs.items():
    state = tx.init(params)
    update = jax.jit(tx.update)
    ms = timed(update, grads, state, params, repeats=repeats)
    reference_ms = reference_ms or ms
    u = update(grads, state, params)[0][probe] / 0.02 / np.sqrt(4.0)  # undo lr, shape scale
    err, smin, smax = orthogonality(u)
    rows.append(
      [
        f"{shapes} ({4 * layers} matrices)",
        name,
        f"{ms:.1f}",
        f"{reference_ms / ms:.2f}x",
        f"{err:.3f}",
        f"[{smin:.3f}, {smax:.3f}]",
      ]
    )
  return rows


def bench_sinkhorn(tokens: int, experts: int, repeats: int) -> list[list]:
  from ott.geometry import geometry
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import sinkhorn as ott_sinkhorn

  logits = jax.random.normal(jax.random.key(2), (tokens, experts)) * 2.0
  eps = 0.05

  def col_cv(scores, k=2):
    """CV of the hard top-k loads (not the soft plan's column sums, exact by construction)."""
    top = np.asarray(jax.lax.top_k(scores, k)[1]).ravel()
    load = np.bincount(top, minlength=experts)
    return float(load.std() / load.mean())

  def dual_bias(x):  # the causal router: per-token top-k of logits + eps·g (models/moe.py)
    _, g = sinkhorn_potentials(x, n_iter=4, eps=eps)
    return x + eps * (g - g.mean())

  def ott_plan(x, iterations, threshold):
    geom = geometry.Geometry(cost_matrix=-x, epsilon=eps)
    solver = ott_sinkhorn.Sinkhorn(
      min_iterations=iterations, max_iterations=iterations, threshold=threshold, inner_iterations=1
    )
    out = solver(linear_problem.LinearProblem(geom))
    return out.matrix, out.n_iters

  ours = jax.jit(lambda x: sinkhorn(x, n_iter=4, eps=eps))
  ott4 = jax.jit(lambda x: ott_plan(x, 4, 0.0)[0])
  ott_conv = jax.jit(lambda x: ott_plan(x, 2000, 1e-3))
  ms_ours = timed(ours, logits, repeats=repeats)
  ms_ott4 = timed(ott4, logits, repeats=repeats)
  ms_conv = timed(lambda x: ott_conv(x)[0], logits, repeats=repeats)
  n_conv = int(ott_conv(logits)[1])
  return [
    [f"{tokens}x{experts}", "no Sinkhorn: top-2 of the logits", "—", "—", f"{col_cv(logits):.3f}"],
    [
      f"{tokens}x{experts}",
      "ours, duals as a per-token bias (causal routing)",
      "—",
      "—",
      f"{col_cv(jax.jit(dual_bias)(logits)):.3f}",
    ],
    [
      f"{tokens}x{experts}",
      "ours, 4 iterations",
      f"{ms_ours:.2f}",
      "1.00x",
      f"{col_cv(ours(logits)):.3f}",
    ],
    [
      f"{tokens}x{experts}",
      "ott-jax, 4 iterations",
      f"{ms_ott4:.2f}",
      f"{ms_ott4 / ms_ours:.2f}x",
      f"{col_cv(ott4(logits)):.3f}",
    ],
    [
      f"{tokens}x{experts}",
      f"ott-jax to threshold 1e-3 ({n_conv} iterations)",
      f"{ms_conv:.2f}",
      f"{ms_conv / ms_ours:.1f}x",
      f"{col_cv(ott_conv(logits)[0]):.3f}",
    ],
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", nargs="+", default=["cpu"], choices=sorted(SHAPES))
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--tokens", type=int, default=16384)
  parser.add_argument("--experts", type=int, default=64)
  args = parser.parse_args()
  polar_rows = [row for shapes in args.shapes for row in bench_polar(shapes, args.repeats)]
  polar = markdown_table(
    ["shapes", "Muon update", "ms", "speed-up vs optax", "‖UUᵀ−I‖₂ (h0.up)", "σ range (h0.up)"],
    polar_rows,
  )
  sink = markdown_table(
    ["problem", "solver", "ms", "time / ours", "hard top-2 load CV"],
    bench_sinkhorn(args.tokens, args.experts, args.repeats),
  )
  text = "\n".join(
    [
      "# Core benchmarks",
      "",
      f"- hardware: {hardware_description()}",
      f"- median of {args.repeats} calls after warm-up",
      "",
      "## Polar / Muon",
      "",
      polar,
      "",
      "## Sinkhorn",
      "",
      sink,
      "",
    ]
  )
  print(text)
  write_results("bench_cores", "The jitted cores against their references", text)


if __name__ == "__main__":
  main()
