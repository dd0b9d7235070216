"""ARS in the Narcissus closed loop: a pretrained LM keeps training on its own samples.

    python -m experiments.ars_closed_loop [--seeds 0 1 2] [--arms adamw psi ...]
        [--temperature 0.7] [--fraction 1.0] [--lr 2e-3] [--steps 1000]

Per seed: pretrain (``configs/ars_closed_loop.py:pretrain``), then every arm continues
from that checkpoint in the closed loop (``:cpu``; ``training/closed_loop.py``). Arms: AdamW;
ARS's guard and gate (+Ψ); and jitter (+Ψ+χ); and the seed's update regularizer Φ(W, ΔW)
(+Ψ+χ+Φ, ``regulators/update_prox.py``); +Ψ+χ with the spectral detector — these with
the relative surprise, as in the data-shift ablation — and +Ψ+χ with the seed's raw
surprise. Bars: AdamW at a quarter of the learning rate, and AdamW with constant betas
as low as the raw gate sets them.

Failure, measured on the samples the loop generates (``generations.jsonl``): **collapse**
when the unigram entropy of a block's samples falls below ``COLLAPSE_FRACTION`` of the
pretrained model's (its first block) or their share of distinct 4-grams below the same
fraction of the first block's; **divergence** when the loss is non-finite or the
validation loss on real Shakespeare exceeds ``DIVERGED_VAL``. Wasted compute: steps spent
collapsed or diverged, plus steps undone by rollbacks. Recovery: steps from the first
collapsed block to the first healthy block after it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments.common import (
  ROOT,
  markdown_table,
  mean_std,
  read_run,
  reexec,
  run_arms,
  select_arms,
  write_experiment_report,
)
from homeo_jax.data import window_batches
from homeo_jax.training.build import load_data
from homeo_jax.training.closed_loop import SelfGeneratedBatches
from homeo_jax.training.config import apply_overrides, load_config
from homeo_jax.training.loop import train
from homeo_jax.training.report import series
from homeo_jax.training.trained import restore_state

ARS = ["optimizer.name=ars_adamw", "optimizer.kwargs.gate.surprise=relative"]
ARMS = {
  "adamw": ["optimizer.name=adamw", "optimizer.kwargs={}"],
  "psi": [*ARS, "optimizer.kwargs.jitter=None"],
  "psi_chi": [*ARS, "optimizer.kwargs.jitter.scale=0.1"],
  "psi_chi_phi": [
    *ARS,
    "optimizer.kwargs.jitter.scale=0.1",
    "optimizer.regulators.update_prox={'gamma': 1.0, 'rank': 8}",
  ],
  "psi_chi_spectral": [
    *ARS,
    "optimizer.kwargs.jitter.scale=0.1",
    "optimizer.kwargs.guard.detector=spectral",
  ],
  # The seed's own surprise: the raw loss (Φ ≈ 0.1 + 0.9·exp(−loss/Ψ), ≈ 0.35 at loss 1.3).
  "psi_chi_raw": ["optimizer.name=ars_adamw", "optimizer.kwargs.jitter.scale=0.1"],
  # The bars ARS must clear: a quarter of the learning rate, and constant betas as low as
  # the raw gate's (Φ = 1/3).
  "adamw_lr5e-4": ["optimizer.name=adamw", "optimizer.kwargs={}", "optimizer.learning_rate=5e-4"],
  "adamw_low_betas": [
    "optimizer.name=adamw", "optimizer.kwargs={}", "optimizer.b1=0.3", "optimizer.b2=0.33"
  ],
}  # fmt: skip
COLLAPSE_FRACTION = 0.75
DIVERGED_VAL = 4.0  # nats; a unigram model of the characters scores about 3.3


def generations(run_dir: Path) -> dict[str, np.ndarray]:
  """The generation log, last record per step (a resumed block is logged twice)."""
  by_step = {}
  path = Path(run_dir) / "generations.jsonl"
  for line in path.read_text().splitlines():
    record = json.loads(line)
    by_step[record["step"]] = record
  steps = sorted(by_step)
  return {
    "step": np.array(steps),
    "entropy": np.array([by_step[s]["sample_entropy_bits"] for s in steps]),
    "distinct4": np.array([by_step[s]["distinct_4gram_share"] for s in steps]),
  }


def failure(run_dir: Path, every: int) -> dict[str, float | None]:
  records, stats = read_run(run_dir)
  gen = generations(run_dir)
  collapsed = (gen["entropy"] < COLLAPSE_FRACTION * gen["entropy"][0]) | (
    gen["distinct4"] < COLLAPSE_FRACTION * gen["distinct4"][0]
  )
  val_steps, val = series(records, "val/loss")
  _, loss = series(records, "loss")
  diverged_val = val_steps[~np.isfinite(val) | (val > DIVERGED_VAL)]
  diverged = bool(len(diverged_val)) or not np.all(np.isfinite(loss))
  first = int(np.argmax(collapsed)) if collapsed.any() else None
  recovery = None
  if first is not None and (~collapsed[first:]).any():
    recovery = float(every * int(np.argmax(~collapsed[first:])))
  return {
    "collapsed": float(collapsed.any()),
    "diverged": float(diverged),
    "wasted": float(every * collapsed.sum() + stats.get("rolled_back_steps", 0)),
    "recovery": recovery,
    "min_entropy": float(gen["entropy"].min()),
    "final_entropy": float(gen["entropy"][-1]),
    "final_distinct4": float(gen["distinct4"][-1]),
    "entropy0": float(gen["entropy"][0]),
    "peak_w": float(np.nanmax(series(records, "params/norm")[1])),
    "w0": float(series(records, "params/norm")[1][0]),
    "peak_g": float(np.nanmax(series(records, "grads/norm")[1])),
    "final_val": stats.get("val_loss"),
    "min_train_loss": float(np.nanmin(loss)),
  }


def main() -> None:
  reexec("experiments.ars_closed_loop")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--arms", nargs="+", default=None)
  parser.add_argument("--temperature", type=float, default=None)
  parser.add_argument("--fraction", type=float, default=None)
  parser.add_argument("--lr", type=float, default=None)
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--tag", default="", help="suffix of the output folder")
  args = parser.parse_args()
  spec = f"{ROOT}/configs/ars_closed_loop.py"
  import importlib.util

  module_spec = importlib.util.spec_from_file_location("closed_loop_config", spec)
  knobs = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(knobs)
  temperature = knobs.TEMPERATURE if args.temperature is None else args.temperature
  fraction = knobs.FRACTION if args.fraction is None else args.fraction
  every, prompt_len = knobs.EVERY, knobs.PROMPT_LEN

  pretrain = load_config(f"{spec}:pretrain")
  base = load_config(f"{spec}:cpu")
  overrides = []
  if args.lr is not None:
    overrides.append(f"optimizer.learning_rate={args.lr}")
  if args.steps is not None:
    overrides.append(f"train.steps={args.steps}")
  base = apply_overrides(base, overrides)
  out = Path(f"runs/ars_closed_loop_cpu{args.tag}")
  data = load_data(pretrain)
  d = base.data

  pretrain_out = out.parent / "ars_closed_loop_pretrain"
  pretrained = run_arms(pretrain, {"pretrain": []}, args.seeds, pretrain_out, data=data)
  pretrain_of = dict(zip(args.seeds, pretrained["pretrain"], strict=True))

  def closed_loop(config, data):
    seed = config.train.seed
    source = apply_overrides(pretrain, [f"train.run_dir={pretrain_of[seed]}", f"train.seed={seed}"])
    model, _ = restore_state(source, data, quarantine=False)
    fresh = window_batches(
      data.train_tokens, seq_len=d.seq_len, batch_size=d.batch_size, seed=1000 + seed
    )
    batches = SelfGeneratedBatches(
      model,
      fresh,
      fraction=fraction,
      every=every,
      temperature=temperature,
      prompt_len=prompt_len,
      seed=seed,
      log_dir=config.train.run_dir,
      tokenizer=data.tokenizer,
    )
    return train(config, data=data, model=model, train_batches=batches)

  runs = run_arms(
    base, select_arms(ARMS, args.arms), args.seeds, out, data=data, train_fn=closed_loop
  )

  rows, results = [], {}
  for arm, dirs in runs.items():
    rs = [failure(run_dir, every) for run_dir in dirs]
    results[arm] = rs
    col = lambda k, rs=rs: [r[k] for r in rs]  # noqa: E731
    rows.append(
      [
        arm,
        f"{int(sum(col('collapsed')))}/{len(rs)}",
        f"{int(sum(col('diverged')))}/{len(rs)}",
        mean_std(col("min_entropy"), 2),
        mean_std(col("final_distinct4"), 3),
        mean_std(col("peak_w"), 2),
        mean_std([r["peak_w"] - r["w0"] for r in rs], 2),
        mean_std(col("peak_g"), 2),
        mean_std(col("min_train_loss"), 3),
        mean_std(col("final_val"), 3),
        mean_std(col("wasted"), 0),
        mean_std(col("recovery"), 0),
      ]
    )
  table = markdown_table(
    [
      "arm",
      "collapsed",
      "diverged",
      "min sample entropy (bits)",
      "final distinct 4-grams",
      "peak ‖w‖",
      "peak ‖w‖ − start",
      "peak grad norm",
      "min train loss",
      "final val (real text)",
      "wasted steps",
      "recovery steps",
    ],
    rows,
  )
  entropy0 = np.mean([r["entropy0"] for rs in results.values() for r in rs])
  print(table)
  (out / "results.json").write_text(json.dumps(results, indent=1))

  fig, axes = plt.subplots(3, 2, figsize=(12, 9), sharex=True)
  panels = [
    ("loss", "train loss (own samples)"),
    ("val/loss", "val loss (real text)"),
    ("params/norm", "‖w‖"),
    ("grads/norm", "grad norm"),
    ("regulators/ars/surprise_eff", "surprise S̃ (ARS arms)"),
  ]
  for ax, (key, label) in zip(axes.ravel(), panels, strict=False):
    for i, (arm, dirs) in enumerate(runs.items()):
      for j, run_dir in enumerate(dirs):
        steps, values = series(read_run(run_dir)[0], key)
        if len(steps):
          ax.plot(steps, values, color=f"C{i}", lw=0.8, alpha=0.8, label=arm if j == 0 else None)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  ax = axes[2, 1]
  for i, (arm, dirs) in enumerate(runs.items()):
    for j, run_dir in enumerate(dirs):
      gen = generations(run_dir)
      ax.plot(gen["step"], gen["entropy"], color=f"C{i}", lw=0.8, label=arm if j == 0 else None)
  ax.axhline(COLLAPSE_FRACTION * entropy0, color="k", ls="--", lw=0.8)
  ax.set_ylabel("sample entropy (bits)")
  ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "traces.png", dpi=110)
  o = base.optimizer
  write_experiment_report(
    out,
    "ARS in the Narcissus closed loop",
    [
      f"seeds {args.seeds}; pretrain {pretrain.train.steps} steps; closed loop "
      f"{base.train.steps} steps of {d.batch_size}x{d.seq_len} tokens, model "
      f"{base.model.num_layers}x{base.model.d_model}; constant lr {o.learning_rate}, no "
      f"clipping, wd {o.weight_decay}",
      f"loop: every {every} steps sample a block at temperature {temperature} from "
      f"{prompt_len} real characters; {fraction:.0%} of each batch's rows are samples",
      f"collapse: a block's sample entropy < {COLLAPSE_FRACTION} × the pretrained model's "
      f"({entropy0:.2f} bits) or distinct 4-grams < {COLLAPSE_FRACTION} × its share; "
      f"divergence: non-finite loss or val > {DIVERGED_VAL}; wasted = steps collapsed or "
      "diverged + steps rolled back; mean ± sample std over seeds",
    ],
    table,
    "traces.png",
  )


if __name__ == "__main__":
  main()
