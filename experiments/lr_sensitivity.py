"""The instability proving ground: final loss against peak learning rate, per arm.

    python -m experiments.lr_sensitivity                  # every arm, verdict arms first
    python -m experiments.lr_sensitivity --tier verdict   # plain, qk-norm, ..., the stack
    python -m experiments.lr_sensitivity --arms plain qk_clip --max-runs 10
    python -m experiments.lr_sensitivity --report         # tables and plot from the file
    python -m experiments.lr_sensitivity --workers 2      # two processes, one core each

Every arm trains ``configs/lr_sensitivity.py`` (nanoGPT's CPU shape, 1,000 steps) at each
peak lr of Wortsman et al.'s grid (3e-4 … 1 in half-decades; the min lr a tenth of it). A
run that meets a non-finite loss stops (``train.on_nonfinite=stop``) and counts as
diverged, scoring ℓ₀ = ln V. Each finished run is recorded in
``experiments/results/lr_sensitivity.json`` at once, so the sweep resumes run by run;
``--workers N`` shares the runs among N processes that record into the one file.

Arms, with AdamW as the inner optimizer:
- baselines: ``plain``; ``qk_norm`` (model.qk_norm); ``z_loss`` (1e-4); ``qk_norm_z_loss``;
- regulators alone: ``qk_clip`` (τ 100, α ½), ``spike_aware`` (θ 5000), ``update_ratio``
  (the homeostat at r* = ``SETPOINT``), ``spike_guard`` (skip at 6σ), ``ars``, ``thyroid``;
- the stack: spike guard + QK-clip + spike-aware moments + update homeostat
  (``stack``), and with qk-norm (``stack_qk_norm``);
- with Muon (``ord_muon`` at spectral_lr 0; Muon's lr 10× the grid value, the CPU preset's
  ratio): ``muon_plain``, ``muon_qk_norm``, ``muon_qk_clip``, ``muon_stack``;
- the homeostat's setpoint swept over a decade (``update_ratio_r*``) at three lrs.

Reported per arm (Wortsman et al. 2023, arXiv 2309.14322): **LR sensitivity** = mean over
the grid of min(ℓ(lr), ℓ₀) − min over the grid of ℓ, per seed, then mean ± s.e.; the
**stable range**, the largest lr whose mean loss is within 0.1 nats of the arm's own best
and of the best arm's best; the loss at the arm's best lr; diverged runs; the largest
attention logit seen; seconds per step against ``plain`` (runs share the machine: rough).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.common import (
  ROOT,
  ResultsFile,
  mean_se,
  parse_shard,
  reexec,
  run_workers,
  standard_error,
)

NAME = "lr_sensitivity"
GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # Wortsman et al.'s, in half-decades
# The homeostat's r*, ‖u‖/‖W‖ per step at the schedule's peak: the best of the setpoint
# sweep (update_ratio_r*: 1e-2, 3e-2, 1e-1 at lr 1e-3, 1e-2, 1e-1; plain AdamW at lr 3e-3
# runs at ~2e-2).
SETPOINT = 3e-2
SETPOINTS = (1e-2, 3e-2, 1e-1)  # a decade from it, for the setpoint sweep
SETPOINT_LRS = (1e-3, 1e-2, 1e-1)
VERDICT_SEEDS = (0, 1, 2)
SCREEN_SEEDS = (0,)
NATS = 0.1  # "within 0.1 nats": the stable range's tolerance


@dataclasses.dataclass(frozen=True)
class Arm:
  overrides: tuple[str, ...]
  tier: str  # "verdict" (3 seeds), "screen" (1 seed) or "setpoint"
  muon: bool = False
  lrs: tuple[float, ...] | None = None  # None: the whole grid

  @property
  def seeds(self) -> tuple[int, ...]:
    return VERDICT_SEEDS if self.tier == "verdict" else SCREEN_SEEDS


QK_NORM = ("model.qk_norm=true",)
Z_LOSS = ("train.z_loss=1e-4",)
QK_CLIP = ("optimizer.regulators.qk_clip={}",)
SPIKE_AWARE = ("optimizer.regulators.spike_aware={}",)
SPIKE_GUARD = ("optimizer.regulators.spike_guard={}",)


def update_ratio(setpoint: float = SETPOINT) -> tuple[str, ...]:
  return (f"optimizer.regulators.update_ratio.setpoint={setpoint}",)


STACK = (*SPIKE_GUARD, *QK_CLIP, *SPIKE_AWARE, *update_ratio())
MUON = ("optimizer.name=ord_muon", "optimizer.kwargs.spectral_lr=0.0")

ARMS: dict[str, Arm] = {
  "plain": Arm((), "verdict"),
  "qk_norm": Arm(QK_NORM, "verdict"),
  "stack": Arm(STACK, "verdict"),
  "stack_qk_norm": Arm((*STACK, *QK_NORM), "verdict"),
  "qk_norm_z_loss": Arm((*QK_NORM, *Z_LOSS), "verdict"),
  "muon_plain": Arm(MUON, "verdict", muon=True),
  "muon_qk_norm": Arm((*MUON, *QK_NORM), "verdict", muon=True),
  "muon_stack": Arm((*MUON, *STACK), "verdict", muon=True),
  "z_loss": Arm(Z_LOSS, "screen"),
  "qk_clip": Arm(QK_CLIP, "screen"),
  "spike_aware": Arm(SPIKE_AWARE, "screen"),
  "update_ratio": Arm(update_ratio(), "screen"),
  "spike_guard": Arm(SPIKE_GUARD, "screen"),
  "ars": Arm(("optimizer.name=ars_adamw", "optimizer.kwargs.gate.surprise=relative"), "screen"),
  "thyroid": Arm(("optimizer.name=thyroid_adamw",), "screen"),
  "muon_qk_clip": Arm((*MUON, *QK_CLIP), "screen", muon=True),
  **{f"update_ratio_r{r:g}": Arm(update_ratio(r), "setpoint", lrs=SETPOINT_LRS) for r in SETPOINTS},
}
TIERS = ("verdict", "screen", "setpoint")


def run_key(arm: str, lr: float, seed: int) -> str:
  return f"{arm}/lr{lr:g}/seed{seed}"


def lr_overrides(arm: Arm, lr: float) -> list[str]:
  out = [f"optimizer.learning_rate={lr}", f"optimizer.min_learning_rate={lr / 10}"]
  if arm.muon:
    out.append(f"optimizer.kwargs.muon_learning_rate={10 * lr}")
  return out


def run_one(base, data, arm: Arm, lr: float, seed: int, run_dir: Path) -> dict:
  """Train one (arm, lr, seed) and return what the report needs."""
  from experiments.common import read_run, seeded_config
  from homeo_jax.training.loop import NonFiniteError, train
  from homeo_jax.training.report import series

  shutil.rmtree(run_dir, ignore_errors=True)  # a run cut off part-way starts over
  config = seeded_config(base, [*arm.overrides, *lr_overrides(arm, lr)], seed, run_dir)
  try:
    result = train(config, data=data)
    if result.status != "finished":  # paused (a signal): nothing to record, stop the sweep
      raise SystemExit(f"{run_dir}: {result.status}; rerun the command to resume")
    stopped = False
  except NonFiniteError as e:
    print(f"diverged: {e}", flush=True)
    stopped = True
  records, stats = read_run(run_dir)
  _, attn = series(records, "telemetry/attn_logit_max")
  val = stats.get("val_loss")
  finite_attn = attn[np.isfinite(attn)] if len(attn) else attn
  out = {
    "val_loss": None if stopped or val is None or not math.isfinite(val) else float(val),
    "stopped": stopped,
    "steps": int(stats.get("step", 0)),
    "attn_logit_max": float(finite_attn.max()) if len(finite_attn) else None,
    "seconds_per_step": stats.get("seconds_per_step"),
  }
  shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # keep the metrics, not weights
  return out


# --------------------------------------------------------------------------------------------
# The report, from the results file alone.


def final_loss(record: dict, ceiling: float) -> float:
  """min(ℓ, ℓ₀); a diverged run scores ℓ₀."""
  val = record.get("val_loss")
  return ceiling if val is None else min(val, ceiling)


def arm_losses(runs: dict, name: str, arm: Arm, ceiling: float) -> dict[float, list[float]]:
  """``{lr: [final loss per recorded seed]}`` over the lrs with at least one seed."""
  out = {}
  for lr in arm.lrs or GRID:
    vals = [
      final_loss(runs[run_key(name, lr, s)], ceiling)
      for s in arm.seeds
      if run_key(name, lr, s) in runs
    ]
    if vals:
      out[lr] = vals
  return out


def complete(runs: dict, name: str, arm: Arm) -> bool:
  return all(run_key(name, lr, s) in runs for lr in arm.lrs or GRID for s in arm.seeds)


def sensitivity(per_lr: dict[float, list[float]], seeds: int) -> list[float]:
  """Per seed: mean over lrs of ℓ(lr) − min over lrs of ℓ (losses already capped at ℓ₀)."""
  out = []
  for i in range(seeds):
    losses = [per_lr[lr][i] for lr in sorted(per_lr) if len(per_lr[lr]) > i]
    if len(losses) == len(per_lr):
      out.append(float(np.mean(losses) - np.min(losses)))
  return out


def stable_lr(per_lr: dict[float, list[float]], reference: float) -> float | None:
  """The largest lr whose mean loss is within ``NATS`` of ``reference``."""
  ok = [lr for lr, v in per_lr.items() if np.mean(v) <= reference + NATS]
  return max(ok) if ok else None


def summarize(results: ResultsFile, ceiling: float) -> dict[str, dict]:
  runs = results.runs
  summary = {}
  for name, arm in ARMS.items():
    per_lr = arm_losses(runs, name, arm, ceiling)
    if not per_lr:
      continue
    means = {lr: float(np.mean(v)) for lr, v in per_lr.items()}
    best_lr = min(means, key=means.get)
    keys = [
      run_key(name, lr, s) for lr in per_lr for s in arm.seeds if run_key(name, lr, s) in runs
    ]
    attn = {
      lr: [runs[run_key(name, lr, s)].get("attn_logit_max") for s in arm.seeds
           if run_key(name, lr, s) in runs]
      for lr in per_lr
    }  # fmt: skip
    sps = [runs[k]["seconds_per_step"] for k in keys if runs[k].get("seconds_per_step")]
    summary[name] = {
      "complete": complete(runs, name, arm),
      "per_lr": per_lr,
      "means": means,
      "best_lr": best_lr,
      "best": per_lr[best_lr],
      "sensitivity": sensitivity(per_lr, len(arm.seeds)) if len(per_lr) == len(GRID) else [],
      "stable_self": stable_lr(per_lr, means[best_lr]),
      "diverged": sum(bool(runs[k]["stopped"]) for k in keys),
      "runs": len(keys),
      "attn": attn,
      "seconds_per_step": float(np.median(sps)) if sps else math.nan,
    }
  if summary:
    # "The best arm" is the best of the same inner optimizer: the verdicts are per optimizer.
    best = {}
    for name, s in summary.items():
      muon = ARMS[name].muon
      best[muon] = min(best.get(muon, math.inf), min(s["means"].values()))
    for name, s in summary.items():
      s["stable_global"] = stable_lr(s["per_lr"], best[ARMS[name].muon])
    summary["_best"] = best.get(False, math.nan)
  return summary


def _fmt_lr(lr: float | None) -> str:
  return "none" if lr is None else f"{lr:g}"


def _pm(mean: float, se: float) -> str:
  return f"{mean:.3f}" + (f" ± {se:.3f}" if math.isfinite(se) else "")


def _seeds_label(arms) -> str:
  """ "" when every arm has all its seeds, else how many whole lr curves the answer rests on."""
  if all(a["complete"] for a in arms):
    return ""
  counts = sorted({len(a["sensitivity"]) for a in arms})
  return f" (provisional: {'/'.join(map(str, counts))} seed(s) per arm)"


def verdict_lines(summary: dict) -> list[str]:
  """The moonshot's two questions per inner optimizer, once each arm has a whole lr curve;
  provisional (and said so) until every arm has its three seeds."""
  lines = []
  for inner, prefix in (("AdamW", ""), ("Muon", "muon_")):
    plain, qk, stack, stack_qk = (
      summary.get(f"{prefix}{n}") for n in ("plain", "qk_norm", "stack", "stack_qk_norm")
    )
    arms_a = (plain, qk, stack)
    if all(a and a["sensitivity"] for a in arms_a):
      seeds = _seeds_label(arms_a)
      s, q = np.mean(stack["sensitivity"]), np.mean(qk["sensitivity"])
      s_se, q_se = standard_error(stack["sensitivity"]), standard_error(qk["sensitivity"])
      loss_s, loss_p = np.mean(stack["best"]), np.mean(plain["best"])
      se = math.sqrt(
        np.nan_to_num(standard_error(stack["best"])) ** 2
        + np.nan_to_num(standard_error(plain["best"])) ** 2
      )
      yes = s <= q and loss_s <= loss_p + 2 * se
      margin = f"2 s.e. = {2 * se:.3f}" if se > 0 else "one seed: no s.e., so no margin"
      lines.append(
        f"**(a) {inner}: {'yes' if yes else 'no'}**{seeds} — the stack's LR sensitivity is "
        f"{_pm(s, s_se)} against qk-norm's {_pm(q, q_se)}; its best-lr loss "
        f"{loss_s:.3f} against plain {inner}'s {loss_p:.3f} ({margin})."
      )
    if qk and stack_qk and qk["sensitivity"] and stack_qk["sensitivity"]:
      seeds = _seeds_label((qk, stack_qk))
      a, b = stack_qk["stable_global"], qk["stable_global"]
      yes = a is not None and b is not None and a >= 3 * b * 0.99
      lines.append(
        f"**(b) {inner}: {'yes' if yes else 'no'}**{seeds} — the largest lr within {NATS} nats "
        f"of the best arm's best is {_fmt_lr(a)} with the stack + qk-norm and {_fmt_lr(b)} with "
        f"qk-norm alone (≥ 3× needed)."
      )
    elif f"{prefix}stack_qk_norm" not in ARMS:
      lines.append(f"(b) {inner}: not in the sweep (no {prefix}stack_qk_norm arm).")
    else:
      lines.append(f"(b) {inner}: not yet measured (needs stack_qk_norm and qk_norm curves).")
  return lines


def report(results: ResultsFile, ceiling: float, base) -> str:
  summary = summarize(results, ceiling)
  best_all = summary.pop("_best", math.nan)
  meta = results.data["meta"]
  plain_sps = summary.get("plain", {}).get("seconds_per_step", math.nan)
  rows = []
  for name, s in summary.items():
    arm = ARMS[name]
    rows.append(
      "| "
      + " | ".join(
        [
          name + ("" if s["complete"] else " (partial)"),
          f"{len(arm.seeds)}",
          mean_se(s["sensitivity"]) if s["sensitivity"] else "—",
          _fmt_lr(s["stable_self"]),
          _fmt_lr(s["stable_global"]),
          _fmt_lr(s["best_lr"]),
          mean_se(s["best"]),
          f"{s['diverged']}/{s['runs']}",
          f"{s['seconds_per_step'] / plain_sps:.2f}" if math.isfinite(plain_sps) else "—",
        ]
      )
      + " |"
    )
  headers = [
    "arm",
    "seeds",
    "LR sensitivity",
    "stable to (own best)",
    "stable to (best arm)",
    "best lr",
    "loss at best lr",
    "diverged",
    "step time / plain",
  ]
  table = "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers), *rows])
  grid = sorted({lr for s in summary.values() for lr in s["per_lr"]})
  loss_rows = [
    f"| {name} | "
    + " | ".join(f"{np.mean(s['per_lr'][lr]):.3f}" if lr in s["per_lr"] else "" for lr in grid)
    + " |"
    for name, s in summary.items()
  ]
  attn_rows = [
    f"| {name} | "
    + " | ".join(_fmt_attn(s["attn"][lr]) if lr in s["attn"] else "" for lr in grid)
    + " |"
    for name, s in summary.items()
  ]
  lr_head = (
    "| arm | " + " | ".join(f"lr {lr:g}" for lr in grid) + " |\n|" + "---|" * (len(grid) + 1)
  )
  m, o = base.model, base.optimizer
  hardware = sorted({r["hardware"] for r in results.runs.values()})
  revisions = sorted({r["revision"] for r in results.runs.values()})
  dates = sorted(r["date"] for r in results.runs.values())
  text = [
    "# LR sensitivity: the instability proving ground",
    "",
    f"- command: `{meta.get('command', '')}`",
    f"- revisions: {', '.join(revisions)}; dates {dates[0]} … {dates[-1]}" if dates else "",
    f"- hardware: {'; '.join(hardware)}",
    f"- model {m.num_layers}×{m.d_model}, {m.num_heads} heads, block {base.data.seq_len}, "
    f"batch {base.data.batch_size}, {base.train.steps} steps; warm-up {o.warmup_steps}, cosine "
    f"to lr/10, β2 {o.b2}, weight decay {o.weight_decay}, no clipping; the homeostat's r* = "
    f"{SETPOINT:g} (following the schedule)",
    f"- seeds: {list(VERDICT_SEEDS)} for the verdict arms, {list(SCREEN_SEEDS)} for the "
    "screening and setpoint arms (marked 1 seed); a partial arm's statistics cover the seeds "
    "whose lr curve is complete, and its verdict waits for all three",
    "- step time / plain: the median seconds per step of the arm's runs over plain's, measured "
    "while other jobs shared the two cores — rough; the side-by-side overhead is in "
    "`experiments/results/bench_regulator_overhead_cpu.md`",
    f"- ℓ₀ = ln V = {ceiling:.3f} (a diverged run scores it); best loss of any AdamW arm "
    f"{best_all:.3f}; stable range: the largest lr whose mean loss is within {NATS} nats of "
    "the arm's own best / of the best arm's best with the same inner optimizer",
    "",
    "## Verdicts",
    "",
    *(f"- {line}" for line in verdict_lines({**summary})),
    "",
    "## Per arm",
    "",
    table,
    "",
    "## Final validation loss per lr (mean over seeds; diverged = ℓ₀)",
    "",
    lr_head,
    *loss_rows,
    "",
    "## Largest attention logit per lr (mean over seeds)",
    "",
    lr_head,
    *attn_rows,
    "",
    f"![loss and attention logit against lr]({NAME}.png)",
    "",
  ]
  _plot(summary, ceiling, results.md_path.with_suffix(".png"))
  return "\n".join(line for line in text if line is not None)


def _fmt_attn(values: Sequence[float | None]) -> str:
  vals = [v for v in values if v is not None]
  return f"{np.mean(vals):.3g}" if vals else "n/a"


def _plot(summary: dict, ceiling: float, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
  for i, (name, s) in enumerate(summary.items()):
    if ARMS[name].tier == "setpoint":
      continue
    row = 1 if ARMS[name].muon else 0
    lrs = sorted(s["per_lr"])
    mean = [np.mean(s["per_lr"][lr]) for lr in lrs]
    err = [np.nan_to_num(standard_error(s["per_lr"][lr])) for lr in lrs]
    style = dict(marker="o", ms=3, capsize=2, color=f"C{i % 10}", ls="-" if i < 10 else "--")
    axes[row, 0].errorbar(lrs, mean, yerr=err, label=name, **style)
    attn = [np.mean([v for v in s["attn"][lr] if v is not None] or [np.nan]) for lr in lrs]
    axes[row, 1].plot(lrs, attn, label=name, **{k: v for k, v in style.items() if k != "capsize"})
  for row, inner in enumerate(("AdamW", "Muon")):
    axes[row, 0].axhline(ceiling, color="k", ls=":", lw=0.8)
    axes[row, 0].set(xscale="log", ylabel=f"{inner}: final val loss", ylim=(None, ceiling + 0.1))
    axes[row, 1].set(xscale="log", yscale="log", ylabel=f"{inner}: max attention logit")
    for ax in axes[row]:
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  for ax in axes[1]:
    ax.set_xlabel("peak learning rate")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arms", nargs="+", default=None, choices=sorted(ARMS), metavar="ARM")
  parser.add_argument("--tier", choices=(*TIERS, "all"), default="all")
  parser.add_argument("--max-runs", type=int, default=0, help="stop after this many runs (0: all)")
  parser.add_argument("--report", action="store_true", help="only rewrite the report")
  parser.add_argument("--preset", default="cpu", help="configs/lr_sensitivity.py preset")
  parser.add_argument("--results", default=None, help="results folder (tests)")
  parser.add_argument(
    "--workers", type=int, default=1, help="parallel sweep processes, one CPU core each"
  )
  parser.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # k/n: one worker's share
  args = parser.parse_args(argv)
  shard, shards = parse_shard(args.shard)
  if args.workers < 1:
    raise ValueError(f"--workers must be >= 1, got {args.workers}")
  if args.workers > 1 and not args.report and args.shard is None:
    rest = [a for i, a in enumerate(argv) if not _is_workers_arg(argv, i)]
    code = run_workers("experiments.lr_sensitivity", rest, args.workers)
    if code:
      raise SystemExit(code)
    main([*rest, "--report"])
    return

  from homeo_jax.training.build import hardware_description, load_data
  from homeo_jax.training.config import load_config

  base = load_config(f"{ROOT}/configs/lr_sensitivity.py:{args.preset}")
  results = ResultsFile(NAME, Path(args.results)) if args.results else ResultsFile(NAME)
  data = load_data(base)
  ceiling = math.log(data.vocab_size)
  if not args.report:
    # A worker records the command that started the sweep (--workers N), not its shard.
    command = [a for i, a in enumerate(argv) if "--shard" not in (a, argv[i - 1] if i else "")]
    if shards > 1:
      command += ["--workers", str(shards)]
    results.start(["python -m experiments.lr_sensitivity", *command], preset=args.preset)
    names = args.arms or [n for t in TIERS for n, a in ARMS.items() if a.tier == t]
    if args.tier != "all":
      names = [n for n in names if ARMS[n].tier == args.tier]
    # Seed-major: every arm's first seed before any arm's second, so a sweep cut short has
    # whole curves to compare.
    todo = [
      (name, lr, seed)
      for seed in sorted({s for n in names for s in ARMS[n].seeds})
      for name in names
      for lr in ARMS[name].lrs or GRID
      if seed in ARMS[name].seeds and not results.has(run_key(name, lr, seed))
    ]
    if args.max_runs:
      todo = todo[: args.max_runs]
    todo = todo[shard::shards]
    hardware = hardware_description()
    for i, (name, lr, seed) in enumerate(todo):
      print(f"== [{i + 1}/{len(todo)}] {name} lr {lr:g} seed {seed}", flush=True)
      run_dir = Path("runs") / NAME / name / f"lr{lr:g}" / f"seed{seed}"
      record = run_one(base, data, ARMS[name], lr, seed, run_dir)
      results.record(run_key(name, lr, seed), record, hardware)
      results.write_markdown(report(results, ceiling, base))
  results.write_markdown(report(results, ceiling, base))
  print(results.md_path.read_text())


def _is_workers_arg(argv: Sequence[str], i: int) -> bool:
  """Whether ``argv[i]`` is ``--workers``, its value, or ``--workers=N``."""
  a = argv[i]
  return a == "--workers" or a.startswith("--workers=") or (i > 0 and argv[i - 1] == "--workers")


if __name__ == "__main__":
  if "--report" not in sys.argv:
    reexec("experiments.lr_sensitivity")  # the CPU's page-keeping allocator, before JAX starts
  main()
