"""The instability proving ground: final loss against peak learning rate, per regulator.

    python experiments/lr_sensitivity.py [--seeds 0 1 2] [--arms adamw qk_norm ...]

Every arm trains ``configs/lr_sensitivity.py`` at each peak lr of ``LEARNING_RATES`` (min lr
a tenth of it). Arms: AdamW; ARS (``ars_adamw``, guard + gate + jitter, relative surprise);
the Spectral Thyroid (shipped weights); and the two published mitigations, qk-layernorm
(``model.qk_norm``) and z-loss 1e-4 (``train.z_loss``). A run that meets a non-finite loss
stops there (``train.on_nonfinite=stop``) and counts as diverged.

Reported per arm, following Wortsman et al. 2023 (arXiv 2309.14322): **LR sensitivity**
= mean over the lrs of min(ℓ(lr), ℓ₀) − ℓ*, with ℓ(lr) the final validation loss, ℓ₀ =
ln(vocab) the loss at initialisation (a diverged run scores ℓ₀) and ℓ* the best loss of
any arm; the largest lr that trains (every seed finite and below ℓ_uni, the entropy of the
training characters' frequencies: a model that ends there has learned nothing but them);
the largest attention logit and the output-logit mean seen during training.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from homeo_jax.training.config import load_config  # noqa: E402
from homeo_jax.training.cpu import reexec_with_page_keeping_allocator  # noqa: E402
from homeo_jax.training.experiment import (  # noqa: E402
  markdown_table,
  mean_std,
  read_run,
  run_arms,
  select_arms,
  write_experiment_report,
)
from homeo_jax.training.loop import NonFiniteError, load_data, train  # noqa: E402
from homeo_jax.training.report import series  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
  "adamw": [],
  "ars": ["optimizer.name=ars_adamw", "optimizer.kwargs.surprise=relative"],
  "thyroid": ["optimizer.name=thyroid_adamw"],
  "qk_norm": ["model.qk_norm=true"],
  "z_loss": ["train.z_loss=1e-4"],
}


def train_or_diverge(config, data):
  try:
    return train(config, data=data)
  except NonFiniteError as e:  # the run's stats.json says "stopped: non-finite"
    print(f"diverged: {e}", flush=True)
    return None


def outcome(run_dir: Path, ceiling: float, unigram: float) -> dict[str, float]:
  records, stats = read_run(run_dir)
  diverged = stats.get("status", "").startswith("stopped") or stats.get("val_loss") is None
  final = ceiling if diverged else min(float(stats["val_loss"]), ceiling)
  _, attn = series(records, "telemetry/attn_logit_max")
  _, logit = series(records, "telemetry/output_logit_mean")
  return {
    "final": final,
    "diverged": float(diverged or final >= ceiling),
    "failed": float(diverged or final >= unigram),
    "attn_max": float(np.nanmax(attn)) if len(attn) else math.nan,
    "logit_mean_min": float(np.nanmin(logit)) if len(logit) else math.nan,
  }


def main() -> None:
  reexec_with_page_keeping_allocator(sys.argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--arms", nargs="+", default=None)
  args = parser.parse_args()
  spec = importlib.util.spec_from_file_location("lr_config", ROOT / "configs/lr_sensitivity.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  lrs = module.LEARNING_RATES
  base = load_config(f"{ROOT}/configs/lr_sensitivity.py")
  data = load_data(base)
  ceiling = math.log(data.vocab_size)
  counts = np.bincount(np.asarray(data.train_tokens), minlength=data.vocab_size)
  freq = counts[counts > 0] / counts.sum()
  unigram = float(-(freq * np.log(freq)).sum())
  out = Path("runs/lr_sensitivity_cpu")
  arms = select_arms(ARMS, args.arms)
  sweep = {
    f"{arm}/lr{lr:g}": [
      *overrides, f"optimizer.learning_rate={lr}", f"optimizer.min_learning_rate={lr / 10}"
    ]
    for arm, overrides in arms.items()
    for lr in lrs
  }  # fmt: skip
  runs = run_arms(base, sweep, args.seeds, out, data=data, train_fn=train_or_diverge)

  results = {
    arm: {lr: [outcome(d, ceiling, unigram) for d in runs[f"{arm}/lr{lr:g}"]] for lr in lrs}
    for arm in arms
  }
  best = min(r["final"] for per_lr in results.values() for rs in per_lr.values() for r in rs)
  rows = []
  for arm, per_lr in results.items():
    # Sensitivity per seed (mean over lrs), then mean ± std over seeds.
    sens = [
      float(np.mean([per_lr[lr][i]["final"] - best for lr in lrs])) for i in range(len(args.seeds))
    ]
    stable = [lr for lr in lrs if not any(r["failed"] for r in per_lr[lr])]
    largest = max(stable) if stable else None
    best_lr = min(lrs, key=lambda lr: np.mean([r["final"] for r in per_lr[lr]]))
    rows.append(
      [
        arm,
        mean_std(sens, 3),
        "none" if largest is None else f"{largest:g}",
        f"{best_lr:g}",
        mean_std([r["final"] for r in per_lr[best_lr]], 3),
        *(
          f"{np.mean([r['final'] for r in per_lr[lr]]):.3f}"
          + (f" ({int(sum(r['failed'] for r in per_lr[lr]))}✗)" if any(
            r["failed"] for r in per_lr[lr]) else "")
          for lr in lrs
        ),
      ]
    )  # fmt: skip
  table = markdown_table(
    [
      "arm",
      "LR sensitivity",
      "largest lr that trains",
      "best lr",
      "loss at best lr",
      *(f"lr {lr:g}" for lr in lrs),
    ],
    rows,
  )
  tele_rows = [
    [arm]
    + [
      f"{np.nanmean([r['attn_max'] for r in per_lr[lr]]):.1f} / "
      f"{np.nanmean([r['logit_mean_min'] for r in per_lr[lr]]):.1f}"
      for lr in lrs
    ]
    for arm, per_lr in results.items()
  ]
  telemetry = markdown_table(["arm", *(f"lr {lr:g}" for lr in lrs)], tele_rows)
  print(table)
  print(telemetry)
  (out / "results.json").write_text(json.dumps({a: {f"{k:g}": v for k, v in r.items()} for a, r in results.items()}, indent=1))  # noqa: E501  # fmt: skip

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for i, (arm, per_lr) in enumerate(results.items()):
    for ax, key in zip(axes, ("final", "attn_max", "logit_mean_min"), strict=True):
      mean = [np.nanmean([r[key] for r in per_lr[lr]]) for lr in lrs]
      std = [np.nanstd([r[key] for r in per_lr[lr]]) for lr in lrs]
      ax.errorbar(lrs, mean, yerr=std, label=arm, marker="o", ms=3, capsize=2, color=f"C{i}")
  titles = ("final val loss (diverged = ln V)", "max attention logit", "min mean output logit")
  for ax, title in zip(axes, titles, strict=True):
    ax.set(xscale="log", xlabel="peak learning rate", title=title)
    ax.grid(alpha=0.3)
  axes[0].axhline(ceiling, color="k", ls="--", lw=0.8)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "lr_sensitivity.png", dpi=110)
  o, m = base.optimizer, base.model
  write_experiment_report(
    out,
    "LR sensitivity: the instability proving ground",
    [
      f"seeds {args.seeds}; {base.train.steps} steps of {base.data.batch_size}x"
      f"{base.data.seq_len} tokens; model {m.num_layers}x{m.d_model}; warm-up "
      f"{o.warmup_steps}, cosine to lr/10, β2 {o.b2}, wd {o.weight_decay}, no clipping",
      f"LR sensitivity = mean over lrs of min(final val, ln V = {ceiling:.3f}) − best "
      f"({best:.3f}); mean ± std over seeds; ✗ = failed seeds (non-finite, or final val ≥ "
      f"ℓ_uni = {unigram:.3f}, the unigram entropy of the training characters)",
      "telemetry table: max attention logit / minimum mean output logit, mean over seeds",
      "telemetry per arm and lr:\n\n" + telemetry,
    ],
    table,
    "lr_sensitivity.png",
  )


if __name__ == "__main__":
  main()
