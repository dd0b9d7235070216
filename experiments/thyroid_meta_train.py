"""Meta-train the Spectral Thyroid and write the weights the package ships.

    python experiments/thyroid_meta_train.py [--iterations 100] [--versions alpha ...]

For each version: truncated backprop through 32-step unrolls of the small task
distribution in ``homeo_jax/regulators/thyroid_meta.py`` (32 tasks per meta-step, Adam
1e-2, early stopping on 64 validation tasks), then the meta-objective on 64 held-out
test tasks for the neutral (untrained, all multipliers 1) and the trained thyroid.
Writes ``homeo_jax/regulators/thyroid_weights/<version>.npz``, a provenance sidecar
``<version>.json`` beside each (command, git revision, task family, seeds, objectives)
and prints a table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from homeo_jax.regulators import thyroid_meta  # noqa: E402
from homeo_jax.regulators.thyroid import (  # noqa: E402
  VERSIONS,
  WEIGHTS_DIR,
  init_thyroid_params,
  save_thyroid_params,
)
from homeo_jax.training.experiment import markdown_table  # noqa: E402
from homeo_jax.training.loop import hardware_description  # noqa: E402


def git_revision() -> str:
  """The checkout's commit (``+dirty`` with uncommitted changes), or "unknown"."""
  root = Path(__file__).resolve().parents[1]
  try:
    rev = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True)
    return rev + ("+dirty" if dirty.stdout.strip() else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--iterations", type=int, default=100)
  parser.add_argument("--versions", nargs="+", default=list(VERSIONS), choices=VERSIONS)
  parser.add_argument("--out", default=str(WEIGHTS_DIR))
  args = parser.parse_args()
  print(hardware_description())
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  val, test = thyroid_meta.validation_seeds(), thyroid_meta.held_out_seeds()
  rows = []
  for version in args.versions:
    neutral = init_thyroid_params(version)
    start = time.perf_counter()
    trained, history = thyroid_meta.meta_train(
      version, iterations=args.iterations, init=neutral, validation_seeds=val
    )
    seconds = time.perf_counter() - start
    scores = {
      name: (thyroid_meta.evaluate(p, version, val), thyroid_meta.evaluate(p, version, test))
      for name, p in (("neutral", neutral), ("trained", trained))
    }
    provenance = {
      "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
      "git_revision": git_revision(),
      "date": time.strftime("%Y-%m-%d"),
      "hardware": hardware_description(),
      "version": version,
      "task_family": thyroid_meta.__doc__.split("\n\n")[1].replace("\n", " "),
      "meta_steps": args.iterations,
      "tasks_per_step": 32,
      "meta_seed": 0,
      "validation_task_seeds": [int(val[0]), int(val[-1])],
      "held_out_task_seeds": [int(test[0]), int(test[-1])],
      "validation_J": {"neutral": scores["neutral"][0], "trained": scores["trained"][0]},
      "held_out_J": {"neutral": scores["neutral"][1], "trained": scores["trained"][1]},
      "seconds": round(seconds, 1),
    }
    save_thyroid_params(trained, out / f"{version}.npz", provenance)
    rows.append(
      [
        version,
        f"{scores['neutral'][0]:+.4f} → {scores['trained'][0]:+.4f}",
        f"{scores['neutral'][1]:+.4f} → {scores['trained'][1]:+.4f}",
        f"{np.mean(history[:10]):+.4f} → {np.mean(history[-10:]):+.4f}",
        f"{seconds:.0f} s",
      ]
    )
    print(rows[-1], flush=True)
  print(
    markdown_table(
      [
        "version",
        "validation J (neutral → trained)",
        "held-out test J (neutral → trained)",
        "train J (first → last 10 steps)",
        "meta-training time",
      ],
      rows,
    )
  )
  print("J: lower is better (variance of late losses − 0.1·progress + 0.01·smoothness)")


if __name__ == "__main__":
  main()
