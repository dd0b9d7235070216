"""The Narcissus failure and its suppression: ARS under an abrupt distribution shift.

    python -m experiments.ars_narcissus [--scale cpu|gpu] [--seeds 0 1 2]

Three arms, identical except for the optimizer: (1) AdamW; (2) +Ψ: ARS guard and surprise
gate, no jitter; (3) +Ψ +χ: guard, gate and chronos-jitter. ARS uses the "relative"
surprise (excess of the loss over its own EMA; see homeo_jax/regulators/ars.py).

Definitions used in the report:
* loss spike: a step whose train loss exceeds the mean + 3σ of the previous 50 steps;
* divergence: a non-finite train loss, or one above 2·ln(vocab) (worse than a uniform
  guess twice over), counted separately in the first 20 steps (a start-up blow-up,
  before any regulator has data) and after the shift (a collapse);
* recovery: steps after the shift until the 5-step moving average of the train loss is
  back within 10% of its mean over the 20 steps before the shift (n/a if never).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import configs.ars_narcissus as narcissus
from experiments.common import (
  markdown_table,
  mean_std,
  read_run,
  run_arms,
  write_experiment_report,
)
from homeo_jax.data import SwitchedBatches, TextData, build_tokenizer, window_batches
from homeo_jax.data.corpora import load_corpus, split_train_val
from homeo_jax.training import apply_overrides, train
from homeo_jax.training.report import series

ARS = ["optimizer.name=ars_adamw", "optimizer.kwargs.gate.surprise=relative"]
ARMS = {
  "adamw": ["optimizer.name=adamw"],
  "guard": [*ARS, "optimizer.kwargs.jitter=None"],
  "guard_jitter": [*ARS, "optimizer.kwargs.jitter.scale=0.1"],
}
SPIKE_WINDOW, SPIKE_K = 50, 3.0


def spikes(loss: np.ndarray) -> int:
  count = 0
  for t in range(SPIKE_WINDOW, len(loss)):
    past = loss[t - SPIKE_WINDOW : t]
    past = past[np.isfinite(past)]
    if len(past) > 10 and np.isfinite(loss[t]) and loss[t] > past.mean() + SPIKE_K * past.std():
      count += 1
  return count


def recovery_steps(loss: np.ndarray, shift: int, window: int = 5) -> int | None:
  pre = np.nanmean(loss[shift - 20 : shift])
  avg = np.convolve(np.nan_to_num(loss, nan=np.inf), np.ones(window) / window, mode="valid")
  for t in range(shift, len(avg)):
    if avg[t] <= 1.1 * pre:
      return t + window - shift
  return None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scale", default="cpu", choices=["cpu", "gpu"])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--lr", type=float, default=None, help="override the (constant) lr")
  args = parser.parse_args()
  base = narcissus.get_config(args.scale)
  suffix = ""
  if args.lr is not None:
    base = apply_overrides(base, [f"optimizer.learning_rate={args.lr}"])
    suffix = f"_lr{args.lr:g}"
  d = base.data
  shakespeare = load_corpus("shakespeare", d.max_chars or None)
  python = load_corpus("python_stdlib", narcissus.PYTHON_CHARS)
  tok = build_tokenizer("char", shakespeare + python)
  sh_train, sh_val = split_train_val(tok.encode(shakespeare), d.val_fraction)
  py_train, py_val = split_train_val(tok.encode(python), d.val_fraction)
  data = TextData(tokenizer=tok, train_tokens=sh_train, val_tokens=sh_val)
  shift = int(base.train.steps * narcissus.SHIFT_FRACTION)
  ceiling = 2 * np.log(tok.vocab_size)

  def train_shifted(config, data):
    batches = SwitchedBatches(
      window_batches(sh_train, seq_len=d.seq_len, batch_size=d.batch_size, seed=config.data.seed),
      window_batches(py_train, seq_len=d.seq_len, batch_size=d.batch_size, seed=config.data.seed),
      switch_at=shift,
    )
    return train(config, data=data, train_batches=batches, eval_sets={"python": py_val})

  out = Path(f"runs/ars_narcissus_{args.scale}{suffix}")
  runs = run_arms(base, ARMS, args.seeds, out, data=data, train_fn=train_shifted)

  rows, traces = [], {}
  for arm, dirs in runs.items():
    cols = {
      k: []
      for k in (
        "peak_w",
        "final_w",
        "peak_g",
        "post_g",
        "spikes",
        "startup",
        "div",
        "rec",
        "val_sh",
        "val_py",
      )
    }
    for run_dir in dirs:
      records, stats = read_run(run_dir)
      _, loss = series(records, "loss")
      _, wnorm = series(records, "params/norm")
      _, gnorm = series(records, "grads/norm")
      cols["peak_w"].append(np.nanmax(wnorm))
      cols["final_w"].append(wnorm[-1])
      cols["peak_g"].append(np.nanmax(gnorm))
      cols["post_g"].append(np.nanmax(gnorm[shift : shift + 50]))
      cols["spikes"].append(spikes(loss))
      diverged = ~np.isfinite(loss) | (loss > ceiling)
      cols["startup"].append(int(np.any(diverged[:20])))
      cols["div"].append(int(np.any(diverged[shift:])))
      rec = recovery_steps(loss, shift)
      cols["rec"].append(None if rec is None else float(rec))
      cols["val_sh"].append(stats.get("val_loss"))
      cols["val_py"].append(stats.get("val_loss/python"))
      traces.setdefault(arm, records)
    rows.append(
      [
        arm,
        mean_std(cols["peak_w"], 2),
        mean_std(cols["final_w"], 2),
        mean_std(cols["peak_g"], 2),
        mean_std(cols["post_g"], 2),
        mean_std(cols["spikes"], 1),
        f"{sum(cols['startup'])}/{len(dirs)}",
        f"{sum(cols['div'])}/{len(dirs)}",
        mean_std(cols["rec"], 0),
        mean_std(cols["val_sh"], 3),
        mean_std(cols["val_py"], 3),
      ]
    )
  table = markdown_table(
    [
      "arm",
      "peak ‖w‖",
      "final ‖w‖",
      "peak grad norm",
      "peak grad norm (50 steps after shift)",
      "loss spikes",
      "start-up blow-ups (steps < 20)",
      "divergences after the shift",
      "recovery steps",
      "final val (Shakespeare)",
      "final val (Python)",
    ],
    rows,
  )
  print(table)

  fig, axes = plt.subplots(3, 2, figsize=(12, 9), sharex=True)
  panels = [
    ("loss", "train loss"),
    ("params/norm", "‖w‖"),
    ("regulators/ars/psi", "Ψ"),
    ("regulators/ars/phi", "Φ"),
    ("regulators/ars/b1", "β1_eff"),
    ("regulators/ars/learning_rate", "lr_eff"),
  ]
  for ax, (key, label) in zip(axes.ravel(), panels, strict=True):
    for i, (arm, records) in enumerate(traces.items()):
      steps, values = series(records, key)
      if len(steps):
        ax.plot(steps, values, label=arm, lw=0.8, color=f"C{i}")
    ax.axvline(shift, color="k", ls="--", lw=0.8)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=8)
  axes[-1, 0].set_xlabel("step (seed 0)")
  axes[-1, 1].set_xlabel("step (seed 0)")
  fig.tight_layout()
  fig.savefig(out / "traces.png", dpi=110)
  o = base.optimizer
  write_experiment_report(
    out,
    f"ARS data-shift ablation ({args.scale})",
    [
      f"seeds {args.seeds}; {base.train.steps} steps of {d.batch_size}x{d.seq_len} tokens, "
      f"Shakespeare -> Python stdlib at step {shift}; model {base.model.num_layers}x"
      f"{base.model.d_model}; constant lr {o.learning_rate}, no clipping, wd {o.weight_decay}",
      f"spike: loss > mean + {SPIKE_K}σ of the previous {SPIKE_WINDOW} steps; divergence: "
      f"non-finite or > {ceiling:.2f}; recovery: 5-step mean back within 10% of the 20 steps "
      "before the shift",
    ],
    table,
    "traces.png",
  )


if __name__ == "__main__":
  main()
