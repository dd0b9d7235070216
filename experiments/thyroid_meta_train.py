"""Meta-train the Spectral Thyroid and write the weights the package ships.

    python -m experiments.thyroid_meta_train [--iterations 60] [--versions alpha ...]

For each version: truncated backprop through 32-step unrolls of the task families in
``experiments/thyroid_meta.py`` — per meta-step 32 MLP tasks and 4 + 4 tiny
AdamW byte LMs (float and 2-bit) on Shakespeare slices, Adam 1e-2, early stopping on
validation tasks — then the meta-objective J on held-out tasks: 64 MLP tasks and 16 + 16
LM tasks on Python source, a corpus meta-training never reads.

The bar: the best *constant* (α, λ, τ) of a 5 × 3 × 3 grid, chosen on the validation
tasks as the thyroid's early stopping is, then scored on the same held-out tasks. Each
network starts at that constant (zero head weights, biases at its logits, moved 2%
inside a clamp it sits on), so meta-training has to find window-dependent moves that
beat it. The thyroid counts as learned on a family only if it beats the constant by more
than two standard errors of the paired per-task difference.

Writes ``homeo_jax/regulators/thyroid_weights/<version>.npz``, a provenance sidecar
``<version>.json`` beside each (command, git revision, task families, seeds, objectives)
and prints a table (also to ``runs/thyroid_meta/report.md``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from experiments import thyroid_meta as meta
from experiments.common import git_revision, markdown_table, write_results
from homeo_jax.regulators.thyroid import (
  VERSIONS,
  WEIGHTS_DIR,
  init_thyroid_params,
  save_thyroid_params,
)
from homeo_jax.training.build import hardware_description

GRID = list(itertools.product((0.5, 0.7, 1.0, 1.4, 2.0), (0.1, 1.0, 2.0), (0.5, 1.0, 2.0)))
TASKS_PER_STEP = {"mlp": 32, "lm": 4, "lm_2bit": 4}
VALIDATION = {"mlp": 64, "lm": 8, "lm_2bit": 8}
HELD_OUT = {"mlp": 64, "lm": 16, "lm_2bit": 16}


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  """Mean and standard error of the per-task difference a − b."""
  d = np.asarray(a) - np.asarray(b)
  return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--iterations", type=int, default=60)
  parser.add_argument("--versions", nargs="+", default=list(VERSIONS), choices=VERSIONS)
  parser.add_argument("--out", default=str(WEIGHTS_DIR))
  parser.add_argument("--report", default="runs/thyroid_meta")
  args = parser.parse_args()
  print(hardware_description(), flush=True)
  out, report = Path(args.out), Path(args.report)
  out.mkdir(parents=True, exist_ok=True)
  report.mkdir(parents=True, exist_ok=True)
  corpora = {"train": meta.corpus_bytes(meta.META_CORPUS)}
  corpora["held_out"] = meta.corpus_bytes(meta.HELD_OUT_CORPUS)
  validation = {
    f: (meta.validation_seeds(n), None if f == "mlp" else corpora["train"])
    for f, n in VALIDATION.items()
  }
  held_out = {
    f: (meta.held_out_seeds(n), None if f == "mlp" else corpora["held_out"])
    for f, n in HELD_OUT.items()
  }

  start = time.perf_counter()
  grid_val = {f: meta.constant_grid(GRID, f, *validation[f]) for f in validation}
  # Families weigh alike, as in meta-training.
  best = int(np.argmin(np.mean([grid_val[f].mean(1) for f in grid_val], 0)))

  def held_out_scores(policy):
    return {
      f: meta.evaluate(policy, None, seeds, f, corpus) for f, (seeds, corpus) in held_out.items()
    }

  constant_scores = held_out_scores(meta.constant_policy(*GRID[best]))
  neutral_scores = held_out_scores(meta.constant_policy(1.0, 1.0, 1.0))
  grid_seconds = time.perf_counter() - start
  print(f"best constant (α, λ, τ) = {GRID[best]} on validation ({grid_seconds:.0f} s)", flush=True)

  rows, summary = [], {"best_constant": GRID[best], "grid_seconds": round(grid_seconds, 1)}
  for version in args.versions:
    # The network starts at the best constant: what it learns must beat that constant.
    start_params = init_thyroid_params(version, multipliers=GRID[best])
    start = time.perf_counter()
    trained, history = meta.meta_train(
      version,
      iterations=args.iterations,
      tasks_per_step=TASKS_PER_STEP,
      init=start_params,
      validation=validation,
      corpus=corpora["train"],
      eval_every=10,
      log_every=10,
    )
    seconds = time.perf_counter() - start
    scores = {f: meta.evaluate(trained, version, held_out[f][0], f, held_out[f][1])
              for f in held_out}  # fmt: skip
    per_family = {}
    for f in held_out:
      vs_constant, vs_neutral = (
        paired(scores[f], constant_scores[f]),
        paired(scores[f], neutral_scores[f]),
      )
      learned = vs_constant[0] + 2 * vs_constant[1] < 0
      per_family[f] = {
        "neutral": float(neutral_scores[f].mean()),
        "best_constant": float(constant_scores[f].mean()),
        "trained": float(scores[f].mean()),
        "trained_minus_constant": vs_constant,
        "trained_minus_neutral": vs_neutral,
        "learned": bool(learned),
      }
      rows.append(
        [
          version,
          f + (" (Python source)" if f != "mlp" else ""),
          f"{neutral_scores[f].mean():+.4f}",
          f"{constant_scores[f].mean():+.4f}",
          f"{scores[f].mean():+.4f}",
          f"{vs_constant[0]:+.4f} ± {vs_constant[1]:.4f}",
          "yes" if learned else "no",
        ]
      )
    provenance = {
      "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
      "git_revision": git_revision(),
      "date": time.strftime("%Y-%m-%d"),
      "hardware": hardware_description(),
      "version": version,
      "task_family": meta.__doc__.split("\n\n")[1].replace("\n", " "),
      "tasks_per_step": TASKS_PER_STEP,
      "meta_steps": args.iterations,
      "meta_seed": 0,
      "validation_task_seeds": {f: [int(s[0]), int(s[-1])] for f, (s, _) in validation.items()},
      "held_out_task_seeds": {f: [int(s[0]), int(s[-1])] for f, (s, _) in held_out.items()},
      "corpora": {"meta_training": meta.META_CORPUS, "held_out_lm": meta.HELD_OUT_CORPUS},
      "held_out_J": per_family,
      "best_constant": GRID[best],
      "start": f"init_thyroid_params(version, multipliers={GRID[best]})",
      "seconds": round(seconds, 1),
    }
    save_thyroid_params(trained, out / f"{version}.npz", provenance)
    summary[version] = {"held_out": per_family, "seconds": round(seconds, 1),
                        "history_first_last": [float(np.mean(history[:10])),
                                               float(np.mean(history[-10:]))]}  # fmt: skip
    print(f"{version}: {seconds:.0f} s", json.dumps(per_family), flush=True)
  table = markdown_table(
    [
      "version",
      "held-out family",
      "J neutral",
      f"J best constant {GRID[best]}",
      "J thyroid",
      "thyroid − constant (± SE)",
      "learned (beats constant by > 2 SE)",
    ],
    rows,
  )
  print(table)
  print("J: lower is better (variance of late losses − 0.1·progress + 0.01·smoothness)")
  (report / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
  write_results(
    "thyroid_meta_train",
    "Thyroid meta-training",
    table,
    ["J: lower is better (variance of late losses − 0.1·progress + 0.01·smoothness)"],
  )


if __name__ == "__main__":
  main()
