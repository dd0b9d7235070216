"""The search for a quantization-cliff regime: manual 2-bit AdamW in harsher and harsher
settings, counting cliff incidents as ``thyroid_2bit.py`` defines them.

    python -m experiments.thyroid_cliff_search                       # every setting, seed 0
    python -m experiments.thyroid_cliff_search --settings NAME ... --seeds 1 2  # more seeds

Each setting is ``configs/thyroid_2bit.py:cpu`` with AdamW and the overrides below
(higher lr, β2 = 0.999 without a gradient clip, lower temperature, constant lr,
per-tensor scales, ternary levels, wider and deeper models, 1,000–2,000 steps). A regime
is a cliff regime when a setting has ≥ 3 incidents per run in ≥ 2 of 3 seeds. Prints, per
setting and for every seed run so far (seed 0 for all; more where ``--seeds`` added them):
loss spikes, cliff incidents, the largest loss / EMA ratio after the burn-in, and the final
validation loss; writes ``experiments/results/thyroid_cliff_search.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from experiments.common import (
  ROOT,
  markdown_table,
  read_run,
  reexec,
  run_arms,
  run_finished,
  write_results,
)
from experiments.thyroid_2bit import ADAMW, cliff_trace, running_stats, train_with_flip_monitor
from homeo_jax.training.build import load_data
from homeo_jax.training.config import load_config

LR = "optimizer.learning_rate="
HARSH = ["optimizer.b2=0.999", "optimizer.grad_clip=0"]
TENSOR, TERNARY = "model.scale=tensor", "model.levels=ternary"
SETTINGS = {  # name: (steps, overrides)
  "lr1e-2": (1000, [LR + "1e-2"]),
  "lr3e-2": (1000, [LR + "3e-2"]),
  "lr1e-1": (1000, [LR + "1e-1"]),
  "lr3e-2_t02": (1000, [LR + "3e-2", "model.base_temperature=0.02"]),
  "lr3e-2_d128": (1000, [LR + "3e-2", "model.d_model=128"]),
  "lr1e-2_const": (1000, [LR + "1e-2", "optimizer.schedule=constant"]),
  "s2k_lr1e-1": (2000, [LR + "1e-1"]),
  "s2k_lr1e-1_tensor": (2000, [LR + "1e-1", TENSOR]),
  "s2k_lr3e-2_tensor": (2000, [LR + "3e-2", TENSOR]),
  "s2k_lr1e-1_tensor_tern": (2000, [LR + "1e-1", TENSOR, TERNARY]),
  "s2k_lr1e-1_tensor_t02": (2000, [LR + "1e-1", TENSOR, "model.base_temperature=0.02"]),
  "b999_lr1e-2": (2000, [LR + "1e-2", *HARSH]),
  "b999_lr3e-2": (2000, [LR + "3e-2", *HARSH]),
  "b999_lr1e-2_tensor": (2000, [LR + "1e-2", *HARSH, TENSOR]),
  "b999_lr1e-2_d128": (2000, [LR + "1e-2", *HARSH, "model.d_model=128"]),
  "p4_tern_tensor_lr3e-2": (1000, [LR + "3e-2", *HARSH, TENSOR, TERNARY]),
  "p4_tensor_t002_const": (
    1000,
    [
      LR + "3e-2",
      *HARSH,
      TENSOR,
      "model.base_temperature=0.02",
      "optimizer.schedule=constant",
      "optimizer.warmup_steps=0",
    ],
  ),  # fmt: skip
  "p4_L4d128_tensor": (
    1000,
    [LR + "1e-2", *HARSH, TENSOR, "model.num_layers=4", "model.d_model=128"],
  ),
  "p4_wd0_t002": (
    1000,
    [LR + "1e-2", *HARSH, "model.base_temperature=0.02", "optimizer.weight_decay=0"],
  ),
}


SHORT = {
  LR: "lr ",
  "optimizer.b2=0.999": "β2 0.999",
  "optimizer.grad_clip=0": "no clip",
  TENSOR: "per-tensor scale",
  TERNARY: "ternary",
  "model.base_temperature=0.02": "τ₀ 0.02",
  "model.d_model=128": "d 128",
  "model.num_layers=4": "4 layers",
  "optimizer.schedule=constant": "constant lr",
  "optimizer.warmup_steps=0": "no warm-up",
  "optimizer.weight_decay=0": "wd 0",
}


def describe(overrides: list[str]) -> str:
  """The overrides in a few words (``SHORT``)."""
  words = []
  for o in overrides:
    for long, short in SHORT.items():
      if o.startswith(long):
        o = short + o[len(long) :] if long == LR else short
        break
    words.append(o)
  return ", ".join(words)


def main() -> None:
  reexec("experiments.thyroid_cliff_search")
  base = load_config(f"{ROOT}/configs/thyroid_2bit.py:cpu")
  data = load_data(base)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=None)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  args = parser.parse_args()
  out = Path("runs/thyroid_cliff_probe")
  arms = {
    name: [*ADAMW, f"train.steps={steps}", "train.checkpoint_every=100000", *overrides]
    for name, (steps, overrides) in SETTINGS.items()
  }
  run_arms(base, arms, [0], out, data=data, train_fn=train_with_flip_monitor)
  extra = {name: arms[name] for name in args.settings or []}
  run_arms(base, extra, args.seeds, out, data=data, train_fn=train_with_flip_monitor)
  rows = []
  for name, (steps, overrides) in SETTINGS.items():
    seeds = sorted(int(d.name[4:]) for d in (out / name).glob("seed*") if run_finished(d))
    per_seed = []
    for seed in seeds:
      records, stats = read_run(out / name / f"seed{seed}")
      _, loss, _, spike, incident = cliff_trace(records)
      ema, _ = running_stats(loss)
      ratio = float(np.max(loss[20:] / ema[20:]))
      per_seed.append((int(spike.sum()), int(incident.sum()), ratio, stats["val_loss"]))
    spikes, incidents, ratios, vals = zip(*per_seed, strict=True)
    rows.append(
      [
        name,
        steps,
        describe(overrides),
        ", ".join(map(str, seeds)),
        " / ".join(map(str, spikes)),
        " / ".join(map(str, incidents)),
        f"{sum(i >= 3 for i in incidents)}/{len(seeds)}",
        " / ".join(f"{r:.3f}" for r in ratios),
        " / ".join(f"{v:.4f}" for v in vals),
      ]
    )
  table = markdown_table(
    ["setting", "steps", "overrides", "seeds", "loss spikes", "cliff incidents",
     "runs with ≥ 3 incidents", "max loss/EMA", "final val"],
    rows,
  )  # fmt: skip
  print(table)
  notes = [
    "manual 2-bit AdamW; seed 0 for every setting, more seeds where listed (values per seed)",
    "cliff regime: ≥ 3 incidents per run in ≥ 2 of 3 seeds",
  ]
  write_results("thyroid_cliff_search", "Cliff-regime search", table, notes)


if __name__ == "__main__":
  main()
