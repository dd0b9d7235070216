"""Does spectral learning help? AdamW vs Muon vs ORD-Muon arms, >= 3 seeds each.

    python -m experiments.ord_muon_ablation [--scale cpu|gpu|seed] [--seeds 0 1 2]

Arms (identical except for the optimizer): AdamW; Muon = Polar(G) (spectral_lr 0);
Polar(G⊥) (geometric only); Polar(G⊥) + s·G∥ for the sweep s ∈ {0.5, 1, 2, 5}; weight
decay 0 for Muon and the geometric arm; Muon and ORD (s = 1) with Polar Express as the
polar step instead of the standard quintic.
Writes runs/ord_muon_<scale>/report.md with the table, the verdict per arm against
Muon, validation curves and the ρ / spectral_frac traces.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments.common import (
  experiment_setup,
  first_step_at_or_below,
  markdown_table,
  mean_curve,
  mean_std,
  read_run,
  run_arms,
  select_arms,
  verdict,
  write_experiment_report,
)
from homeo_jax.training.report import series

ORD = "optimizer.name=ord_muon"
ARMS = {
  "adamw": ["optimizer.name=adamw", "optimizer.kwargs={}"],
  "muon": [ORD],
  "geometric": [ORD, "optimizer.kwargs.project_radial=True"],
  **{f"ord_{s:g}": [ORD, f"optimizer.kwargs.spectral_lr={s}"] for s in (0.5, 1.0, 2.0, 5.0)},
  # Decoupled weight decay is purely radial: these two arms test whether the decomposed
  # arms lose because nothing in Polar(G⊥) counters the decay any more.
  "muon_wd0": [ORD, "optimizer.weight_decay=0.0"],
  "geometric_wd0": [ORD, "optimizer.kwargs.project_radial=True", "optimizer.weight_decay=0.0"],
  # The seed names Polar Express (Amsel et al. 2025) as its polar step.
  "muon_polar_express": [ORD, "optimizer.kwargs.newton_schulz.coeffs=polar_express"],
  "ord_1_polar_express": [
    ORD, "optimizer.kwargs.spectral_lr=1.0", "optimizer.kwargs.newton_schulz.coeffs=polar_express"
  ],
}  # fmt: skip
SEED_ARMS = ("adamw", "muon", "ord_0.5", "ord_1", "geometric")


def main() -> None:
  args, base, out = experiment_setup(
    __doc__.splitlines()[0], "ord_muon.py", ("cpu", "gpu", "seed"), "ord_muon"
  )
  # The seed preset already uses Polar Express; its default arms are the headline ones.
  names = args.arms or (SEED_ARMS if args.scale == "seed" else None)
  runs = run_arms(base, select_arms(ARMS, names), args.seeds, out)

  results = {arm: [read_run(d) for d in dirs] for arm, dirs in runs.items()}
  final = {arm: [s["val_loss"] for _, s in rs] for arm, rs in results.items()}
  best = {arm: [s["best_val_loss"] for _, s in rs] for arm, rs in results.items()}
  target = float(np.mean(final["adamw"]))  # "as good as AdamW ends"
  tokens_per_step = base.data.batch_size * base.data.seq_len  # the first stage's, if staged
  rows = []
  for arm, rs in results.items():
    steps_to = [first_step_at_or_below(r, "val/loss", target) for r, _ in rs]
    ms = [1e3 * s.get("seconds_per_step", tokens_per_step / s["tokens_per_second"]) for _, s in rs]
    frac = [
      np.mean(
        [
          x["regulators/ord_muon/spectral_frac"]
          for x in r
          if "regulators/ord_muon/spectral_frac" in x
        ]
        or [np.nan]
      )
      for r, _ in rs
    ]
    wnorm = [series(r, "params/norm")[1][-1] for r, _ in rs]
    rho = [
      np.mean(
        [x["regulators/ord_muon/rho"] for x in r if "regulators/ord_muon/rho" in x] or [np.nan]
      )
      for r, _ in rs
    ]
    rows.append(
      [
        arm,
        mean_std(final[arm]),
        mean_std(best[arm]),
        mean_std([None if s is None else float(s) for s in steps_to], 0),
        mean_std(ms, 1),
        mean_std(wnorm, 2),
        mean_std(frac, 3),
        mean_std(rho, 4),
        "—" if arm == "muon" else verdict(final[arm], final["muon"]),
      ]
    )
  table = markdown_table(
    [
      "arm",
      "final val loss",
      "best val loss",
      f"steps to val ≤ {target:.3f}",
      "ms/step",
      "final ‖W‖ (all params)",
      "mean spectral_frac",
      "mean ρ",
      "vs Muon (final val)",
    ],
    rows,
  )
  print(table)

  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  for i, (arm, dirs) in enumerate(runs.items()):
    color = f"C{i % 10}"
    steps, mean, std = mean_curve(dirs, "val/loss")
    axes[0].plot(steps, mean, label=arm, marker="o", ms=3, color=color)
    axes[0].fill_between(steps, mean - std, mean + std, alpha=0.15, color=color)
    if arm != "adamw":
      steps, mean, _ = mean_curve(dirs, "regulators/ord_muon/spectral_frac")
      axes[1].plot(steps, mean, label=arm, color=color)
  axes[0].set(xlabel="step", ylabel="validation loss", title="validation loss (mean ± std)")
  axes[1].set(xlabel="step", ylabel="‖G∥‖ / ‖G‖", title="spectral_frac (mean over matrices)")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "curves.png", dpi=110)

  write_experiment_report(
    out,
    f"ORD-Muon ablation ({args.scale})",
    [
      f"seeds: {args.seeds}; {base.train.steps} steps of {tokens_per_step} tokens; "
      f"model {base.model.num_layers}x{base.model.d_model}; "
      f"AdamW lr {base.optimizer.learning_rate}, Muon lr 0.02 (hidden matrices), "
      "same schedule shape",
      f"target for 'steps to': AdamW's mean final validation loss ({target:.4f})",
      "verdict: better/worse when the mean final validation loss differs from Muon's by more "
      "than 2 standard errors, else neutral",
    ],
    table,
    "curves.png",
  )


if __name__ == "__main__":
  main()
