"""Does depth matter on the algorithmic corpus? Fixed 1 vs 2 vs Kmax passes, per token class.

    python experiments/ouro_depth_task.py [--seeds 0 1 2]

``configs/ouro_spec.py:tiny_algorithmic``: the tiny adaptive model on Shakespeare
interleaved with algorithmic snippets (``data/algorithmic.py``), trained at a fixed depth
(no price, no coupon, as the ablation's fixed arms). Validation per class: ``algorithmic``
(2,000 fresh snippets, a seed never used in training) and ``text`` (the last 10% of the
plain Shakespeare). The question (issue 20): is fixed_1 clearly worse than fixed_Kmax on
the algorithmic class — a task on which adaptive depth has something to win?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ouro_spec_ablation import FIXED  # noqa: E402

from homeo_jax.data import algorithmic, corpora  # noqa: E402
from homeo_jax.training.config import load_config  # noqa: E402
from homeo_jax.training.cpu import reexec_with_page_keeping_allocator  # noqa: E402
from homeo_jax.training.experiment import (  # noqa: E402
  markdown_table,
  mean_std,
  read_run,
  run_arms,
  verdict,
  write_experiment_report,
)
from homeo_jax.training.loop import load_data, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 10_001


def main() -> None:
  reexec_with_page_keeping_allocator(sys.argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  args = parser.parse_args()
  base = load_config(f"{ROOT}/configs/ouro_spec.py:tiny_algorithmic")
  data = load_data(base)
  kmax = base.model.max_passes
  plain = corpora.shakespeare_text()
  eval_sets = {
    "algorithmic": np.asarray(data.tokenizer.encode(algorithmic.snippets(2000, HELD_OUT_SEED))),
    "text": np.asarray(data.tokenizer.encode(plain[int(0.9 * len(plain)) :][:200_000])),
  }
  arms = {
    "fixed_1": [*FIXED, "model.hard_kill=True"],
    "fixed_2": [*FIXED, "model.force_k=2"],
    f"fixed_{kmax}": [*FIXED, f"model.force_k={kmax}"],
  }
  out = Path("runs/ouro_depth_task")
  runs = run_arms(
    base, arms, args.seeds, out, data=data,
    train_fn=lambda config, data: train(config, data=data, eval_sets=eval_sets),
  )  # fmt: skip
  stats = {arm: [read_run(d)[1] for d in dirs] for arm, dirs in runs.items()}
  algo = {arm: [s["val_loss/algorithmic"] for s in ss] for arm, ss in stats.items()}
  text = {arm: [s["val_loss/text"] for s in ss] for arm, ss in stats.items()}
  deep = f"fixed_{kmax}"
  rows = [
    [
      arm,
      mean_std(algo[arm], 4),
      mean_std(text[arm], 4),
      mean_std([s["val_loss"] for s in stats[arm]], 4),
      "—" if arm == deep else verdict(algo[arm], algo[deep]),
      "—" if arm == deep else verdict(text[arm], text[deep]),
    ]
    for arm in runs
  ]
  table = markdown_table(
    [
      "arm",
      "val loss, algorithmic class",
      "val loss, text class",
      "val loss, mixed split",
      f"algorithmic vs {deep}",
      f"text vs {deep}",
    ],
    rows,
  )
  print(table)
  write_experiment_report(
    out,
    "Depth on the algorithmic corpus",
    [
      f"seeds {args.seeds}; {base.train.steps} steps of {base.data.batch_size}x"
      f"{base.data.seq_len} BPE tokens; model {base.model.num_layers}x{base.model.d_model}, "
      f"Kmax {kmax}; fixed depth, no price, no coupon",
      "algorithmic class: 2,000 snippets from a held-out generator seed; text class: the "
      "last 10% of the plain Shakespeare (200K chars); verdicts: 2 standard errors",
    ],
    table,
    "",
  )


if __name__ == "__main__":
  main()
