"""Does the Spectral Thyroid make 2-bit training safe without tuning? Against the best tuned
and the best constant setting.

    python -m experiments.thyroid_2bit [--scale cpu|stress|gpu] [--seeds 0 1 2]

2-bit LM (configs/thyroid_2bit.py; ``stress`` is the harshest setting of the cliff search), arms:

* ``manual``: AdamW with the config's schedule at the best peak lr of a 6-point sweep
  (``SWEEP``, 1e-3 … 3.2e-2, every point with every seed; best mean final validation);
* ``neutral``: the thyroid with every multiplier at 1, i.e. AdamW at the untuned config lr;
* ``best_constant``: constant multipliers (α, λ, τ) in the thyroid's ranges: α = the
  manual lr / the config lr (clipped to [0.1, 2]) and (λ, τ) the best of a 3 × 3 grid
  (one seed, 100), then run with every seed;
* ``thyroid_alpha`` (v0.1), ``thyroid_alt`` (α/λ/τ, v0.2), ``thyroid_group`` (v0.3):
  the shipped thyroid over AdamW at the untuned config lr;
* float: ``float_adamw`` (manual's lr) and ``float_thyroid`` (v0.2) on the same model
  unquantized.

Every run logs the level-flip rate (``regulators/flip_monitor.py``). A *cliff incident* is
a step whose training loss exceeds its EMA (decay 0.9) by more than 3 running standard
deviations while the flip rate exceeds its own EMA + 3σ within ±2 steps (both statistics
from the steps before it, after a 20-step burn-in).
Reported per arm over seeds: final validation loss, steps to reach the manual arm's
mean final validation loss, cliff incidents and loss spikes per run, tuning runs
("interventions"); ``traces.png`` marks spikes and incidents on the manual arm's traces.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax

from experiments.common import (
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
from homeo_jax.models import TransformerConfig
from homeo_jax.models.quant import quantized_mask
from homeo_jax.regulators.flip_monitor import level_flip_monitor
from homeo_jax.regulators.thyroid import ALPHA_RANGE
from homeo_jax.training.build import load_data, model_config
from homeo_jax.training.loop import train
from homeo_jax.training.optimizers import build_optimizer

SWEEP = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)  # peak lrs of the manual arm's sweep
GRID = [(lam, tau) for lam in (0.1, 1.0, 2.0) for tau in (0.5, 1.0, 2.0)]
ADAMW = ["optimizer.name=adamw", "optimizer.kwargs={}", "model.temperature_from="]
FLOAT_ADAMW = ADAMW[:2]  # the float model reads no temperature
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
  return train(
    config,
    data=data,
    tx=optax.chain(tx, level_flip_monitor(levels, scale=scale, mask=quantized_mask)),
  )


def peak(lr: float) -> list[str]:
  """A peak lr and its cosine floor, a tenth of it (the presets' ratio)."""
  return [f"optimizer.learning_rate={lr}", f"optimizer.min_learning_rate={lr / 10}"]


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


def cliff_trace(records: list[dict], k: float = 3.0, burn_in: int = 20):
  """(steps, loss, flip rate, spike mask, incident mask): incidents are spikes with a
  flip-rate burst within ±2 steps."""
  rows = [r for r in records if "loss" in r and "regulators/quant/flip_rate" in r]
  steps = np.array([r["step"] for r in rows])
  loss = np.array([r["loss"] for r in rows])
  flips = np.array([r["regulators/quant/flip_rate"] for r in rows])
  lm, ls = running_stats(loss)
  fm, fs = running_stats(flips)
  spike = (loss > lm + k * ls) & (np.arange(len(loss)) >= burn_in)
  burst = (flips > fm + k * fs) & (np.arange(len(flips)) >= burn_in)
  near = np.convolve(burst.astype(int), np.ones(5, int), mode="same") > 0
  return steps, loss, flips, spike, spike & near


def cliffs(records: list[dict]) -> tuple[int, int]:
  """(loss spikes, cliff incidents) of one run."""
  *_, spike, incident = cliff_trace(records)
  return int(spike.sum()), int(incident.sum())


def plot_traces(run_dirs, path: Path) -> None:
  fig, axes = plt.subplots(len(run_dirs), 1, figsize=(12, 2.6 * len(run_dirs)), squeeze=False)
  for ax, run_dir in zip(axes[:, 0], run_dirs, strict=True):
    steps, loss, flips, spike, incident = cliff_trace(read_run(run_dir)[0])
    ax.plot(steps, loss, lw=0.7, color="C0", label="training loss")
    ax.scatter(steps[spike], loss[spike], s=14, color="C1", label="loss spike (> EMA + 3σ)")
    ax.scatter(steps[incident], loss[incident], s=50, marker="x", color="C3",
               label="cliff incident (spike + flip burst)")  # fmt: skip
    twin = ax.twinx()
    twin.plot(steps, flips, lw=0.5, color="C2", alpha=0.6)
    twin.set_ylabel("flip rate", color="C2")
    ax.set(title=str(run_dir), ylabel="loss")
    ax.legend(fontsize=7, loc="upper right")
  axes[-1, 0].set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def multiplier_ranges(runs: dict[str, list]) -> list[str]:
  """``"<arm> α a…b, λ …, τ …"`` per thyroid arm, over the steps from its first update on
  (until then every multiplier is 1)."""
  out = []
  for arm, dirs in runs.items():
    if not arm.startswith("thyroid"):
      continue
    values: dict[str, list[float]] = {"alpha": [], "lam": [], "tau": []}
    for d in dirs:
      records = [x for x in read_run(d)[0] if "regulators/thyroid/alpha" in x]
      first = next(i for i, x in enumerate(records) if x["regulators/thyroid/alpha"] != 1.0)
      for key, vals in values.items():
        vals += [x[f"regulators/thyroid/{key}"] for x in records[first:]]
    symbols = {"alpha": "α", "lam": "λ", "tau": "τ"}
    ranges = [f"{symbols[k]} {min(v):.3f}…{max(v):.3f}" for k, v in values.items()]
    out.append(f"{arm} " + ", ".join(ranges))
  return out


def main() -> None:
  args, base, out = experiment_setup(
    __doc__.splitlines()[0], "thyroid_2bit.py", ("cpu", "stress", "gpu"), "thyroid_2bit"
  )
  data = load_data(base)
  lr0, wd0, t0 = (
    base.optimizer.learning_rate,
    base.optimizer.weight_decay,
    base.model.base_temperature,
  )
  run = functools.partial(run_arms, base, seeds=args.seeds, out_dir=out, data=data,
                          train_fn=train_with_flip_monitor)  # fmt: skip

  sweep = run({f"sweep_lr{lr:g}": [*ADAMW, *peak(lr)] for lr in SWEEP})
  sweep_val = {arm: [read_run(d)[1]["val_loss"] for d in dirs] for arm, dirs in sweep.items()}
  best_lr = SWEEP[int(np.argmin([np.mean(v) for v in sweep_val.values()]))]
  alpha = float(np.clip(best_lr / lr0, *ALPHA_RANGE))
  print(f"sweep {({a: round(float(np.mean(v)), 4) for a, v in sweep_val.items()})}: "
        f"manual lr {best_lr:g}", flush=True)  # fmt: skip

  def constant(lam, tau):
    return [
      *ADAMW,
      *peak(lr0 * alpha),
      f"optimizer.weight_decay={wd0 * lam}",
      f"model.base_temperature={t0 * tau}",
    ]

  grid = run_arms(base, {f"grid_l{lam:g}_t{tau:g}": constant(lam, tau) for lam, tau in GRID},
                  [100], out, data=data, train_fn=train_with_flip_monitor)  # fmt: skip
  grid_val = {arm: read_run(d[0])[1]["val_loss"] for arm, d in grid.items()}
  lam, tau = GRID[int(np.argmin(list(grid_val.values())))]
  print(f"grid {grid_val}: best constant α={alpha:.3g} λ={lam:g} τ={tau:g}", flush=True)

  runs = {"manual": sweep[f"sweep_lr{best_lr:g}"]}
  runs.update(run({"neutral": ADAMW, "best_constant": constant(lam, tau), **THYROID}))
  runs.update(
    run_arms(
      as_float(base),
      {"float_adamw": [*FLOAT_ADAMW, *peak(best_lr)], "float_thyroid": []},
      args.seeds,
      out,
      data=data,
      train_fn=train_with_flip_monitor,
    )
  )
  tuning = {"manual": len(SWEEP) * len(args.seeds), "float_adamw": len(SWEEP) * len(args.seeds)}
  tuning["best_constant"] = tuning["manual"] + len(GRID)

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
        str(tuning.get(arm, 0)),
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
      "tuning runs",
      "vs manual (float: vs float_adamw)",
    ],
    rows,
  )
  print(table)
  plot_traces(runs["manual"], out / "traces.png")
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
      f"{base.data.seq_len} tokens; {base.model.num_layers}×{base.model.d_model} model, "
      f"{base.model.levels}, {base.model.scale} scale, base temperature {t0:g}",
      "manual: lr sweep (3 seeds each) "
      + json.dumps({k: round(float(np.mean(v)), 4) for k, v in sweep_val.items()})
      + f" → lr {best_lr:g}",
      f"best constant: α = {alpha:.3g} with (λ, τ) from the grid (seed 100) "
      + json.dumps({k: round(v, 4) for k, v in grid_val.items()})
      + f" → λ = {lam:g}, τ = {tau:g}",
      f"thyroid arms at the untuned config lr {lr0:g} with the shipped weights; their "
      "multipliers after the first update (min … max over steps and seeds): "
      + "; ".join(multiplier_ranges(runs)),
      "cliff incident: loss > EMA + 3σ with a flip-rate burst (> EMA + 3σ) within ±2 steps "
      "(traces.png: the manual arm's runs)",
      f"steps to target: first evaluation (every {base.train.eval_every}) at or below the "
      "manual arm's mean final validation loss",
    ],
    table,
    "curves.png",
  )


if __name__ == "__main__":
  main()
