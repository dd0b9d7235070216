"""Does the Spectral Thyroid make 2-bit training safe without tuning? Manual vs thyroid arms.

    python experiments/thyroid_2bit.py [--scale cpu|gpu] [--seeds 0 1 2]

2-bit LM (configs/thyroid_2bit.py), arms: ``manual`` — AdamW with a fixed cosine
schedule whose peak learning rate is picked by a sweep over {1e-3, 3e-3, 1e-2} (one
seed each, seed 100; the sweep's wall time is reported as its tuning cost) — and the
shipped thyroid over AdamW at the config's untuned 3e-3: ``thyroid_alpha`` (v0.1),
``thyroid_alt`` (α/λ/τ, v0.2), ``thyroid_group`` (per organelle, v0.3). Float arms:
``float_adamw`` and ``float_thyroid`` (α/λ/τ) on the same model unquantized.

Every run logs the level-flip rate (``models.quant.level_flip_monitor``). A *cliff
incident* is a step whose training loss exceeds its EMA (decay 0.9) by more than 3
running standard deviations while the flip rate exceeds its own EMA + 3σ within ±2
steps (both statistics from the steps before it, after a 20-step burn-in).
Reported per arm over seeds: final validation loss, steps to reach the manual arm's
mean final validation loss, cliff incidents and loss spikes per run, tuning time.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from homeo_jax.models import TransformerConfig  # noqa: E402
from homeo_jax.models.quant import level_flip_monitor  # noqa: E402
from homeo_jax.training.experiment import (  # noqa: E402
  experiment_setup,
  first_step_at_or_below,
  markdown_table,
  mean_curve,
  mean_std,
  read_run,
  run_arms,
  verdict,
  write_experiment_report,
)
from homeo_jax.training.loop import load_data, model_config, train  # noqa: E402
from homeo_jax.training.optimizers import build_optimizer  # noqa: E402

SWEEP = (1e-3, 3e-3, 1e-2)
ADAMW = ["optimizer.name=adamw", "optimizer.kwargs={}", "model.temperature_from="]
THYROID = {
  "thyroid_alpha": ["optimizer.kwargs.version=alpha"],
  "thyroid_alt": ["optimizer.kwargs.version=alpha_lambda_tau"],
  "thyroid_group": ["optimizer.kwargs.version=per_group"],
}


def train_with_flip_monitor(config, data):
  """The loop, with the level-flip monitor chained after the configured optimizer."""
  tx = build_optimizer(
    config.optimizer, config.train.steps, model=model_config(config, data.vocab_size)
  )
  levels, scale = getattr(config.model, "levels", "2bit"), getattr(config.model, "scale", "channel")
  return train(config, data=data, tx=optax.chain(tx, level_flip_monitor(levels, scale=scale)))


def as_float(config):
  fields = {f.name: getattr(config.model, f.name) for f in dataclasses.fields(TransformerConfig)}
  return dataclasses.replace(config, model_type="transformer", model=TransformerConfig(**fields))


def running_stats(x: np.ndarray, decay: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
  """EMA and EMA standard deviation of x *before* each step."""
  mean, var = np.zeros_like(x), np.zeros_like(x)
  m, v = x[0], 0.0
  for i, xi in enumerate(x):
    mean[i], var[i] = m, v
    d = xi - m
    m += (1 - decay) * d
    v = decay * (v + (1 - decay) * d * d)
  return mean, np.sqrt(var)


def cliffs(records: list[dict], k: float = 3.0, burn_in: int = 20) -> tuple[int, int]:
  """(loss spikes, cliff incidents = spikes with a flip-rate burst within ±2 steps)."""
  rows = [r for r in records if "loss" in r and "regulators/quant/flip_rate" in r]
  loss = np.array([r["loss"] for r in rows])
  flips = np.array([r["regulators/quant/flip_rate"] for r in rows])
  lm, ls = running_stats(loss)
  fm, fs = running_stats(flips)
  spike = (loss > lm + k * ls) & (np.arange(len(loss)) >= burn_in)
  burst = (flips > fm + k * fs) & (np.arange(len(flips)) >= burn_in)
  near = np.convolve(burst.astype(int), np.ones(5, int), mode="same") > 0
  return int(spike.sum()), int((spike & near).sum())


def main() -> None:
  args, base, out = experiment_setup(
    __doc__.splitlines()[0], "thyroid_2bit.py", ("cpu", "gpu"), "thyroid_2bit"
  )
  data = load_data(base)

  start = time.perf_counter()
  sweep = run_arms(
    base,
    {f"sweep_lr{lr:g}": [*ADAMW, f"optimizer.learning_rate={lr}"] for lr in SWEEP},
    [100],
    out,
    data=data,
    train_fn=train_with_flip_monitor,
  )
  sweep_stats = {arm: read_run(d[0])[1] for arm, d in sweep.items()}
  sweep_seconds = sum(
    s["total_steps"] * base.data.batch_size * base.data.seq_len / max(s["tokens_per_second"], 1)
    for s in sweep_stats.values()
  )
  sweep_val = {arm: s["val_loss"] for arm, s in sweep_stats.items()}
  best_lr = SWEEP[int(np.argmin(list(sweep_val.values())))]
  print(f"sweep {sweep_val}: manual lr {best_lr:g} ({time.perf_counter() - start:.0f} s)")

  arms = {"manual": [*ADAMW, f"optimizer.learning_rate={best_lr}"], **THYROID}
  runs = run_arms(base, arms, args.seeds, out, data=data, train_fn=train_with_flip_monitor)
  float_base = as_float(base)
  runs.update(
    run_arms(
      float_base,
      {"float_adamw": [*ADAMW, f"optimizer.learning_rate={best_lr}"], "float_thyroid": []},
      args.seeds,
      out,
      data=data,
      train_fn=train_with_flip_monitor,
    )
  )

  results = {arm: [read_run(d) for d in dirs] for arm, dirs in runs.items()}
  final = {arm: [s["val_loss"] for _, s in rs] for arm, rs in results.items()}
  target = float(np.mean(final["manual"]))
  rows = []
  for arm, rs in results.items():
    spikes, incidents = zip(*[cliffs(r) for r, _ in rs], strict=True)
    steps_to = [first_step_at_or_below(r, "val/loss", target) for r, _ in rs]
    flip = [np.mean([x["regulators/quant/flip_rate"] for x in r if "loss" in x]) for r, _ in rs]
    reference = "manual" if not arm.startswith("float") else "float_adamw"
    rows.append(
      [
        arm,
        mean_std(final[arm]),
        mean_std([None if s is None else float(s) for s in steps_to], 0),
        mean_std([float(x) for x in incidents], 2),
        mean_std([float(x) for x in spikes], 2),
        mean_std(flip, 5),
        f"{sweep_seconds:.0f} s (3-run sweep)" if arm in ("manual", "float_adamw") else "0",
        "—" if arm == reference else verdict(final[arm], final[reference]),
      ]
    )
  table = markdown_table(
    [
      "arm",
      "final val loss",
      f"steps to val ≤ {target:.3f}",
      "cliff incidents / run",
      "loss spikes / run",
      "mean flip rate",
      "tuning time",
      "vs manual (float: vs float_adamw)",
    ],
    rows,
  )
  print(table)
  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  for i, (arm, dirs) in enumerate(runs.items()):
    steps, mean, std = mean_curve(dirs, "val/loss")
    axes[0].plot(steps, mean, marker="o", ms=3, label=arm, color=f"C{i}")
    axes[0].fill_between(steps, mean - std, mean + std, alpha=0.15, color=f"C{i}")
    if arm.startswith("thyroid"):
      steps, mean, _ = mean_curve(dirs, "regulators/thyroid/alpha")
      axes[1].plot(steps, mean, label=f"{arm} α", color=f"C{i}")
  axes[0].set(xlabel="step", ylabel="validation loss", title="validation loss (mean ± std)")
  axes[1].set(xlabel="step", ylabel="α", title="thyroid learning-rate multiplier (mean)")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "curves.png", dpi=110)
  write_experiment_report(
    out,
    f"Spectral Thyroid, 2-bit LM ({args.scale})",
    [
      f"seeds {args.seeds}; {base.train.steps} steps of {base.data.batch_size}×"
      f"{base.data.seq_len} tokens; {base.model.num_layers}×{base.model.d_model} model",
      f"manual: sweep {json.dumps({k: round(v, 4) for k, v in sweep_val.items()})} → "
      f"lr {best_lr:g}; thyroid arms at the untuned config lr "
      f"{base.optimizer.learning_rate:g} with the shipped weights",
      "cliff incident: loss > EMA + 3σ with a flip-rate burst (> EMA + 3σ) within ±2 steps",
      f"steps to target: first evaluation (every {base.train.eval_every}) at or below the "
      "manual arm's mean final validation loss",
    ],
    table,
    "curves.png",
  )


if __name__ == "__main__":
  main()
