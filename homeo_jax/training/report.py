"""End-of-run report: ``report.md`` and PNG plots from ``metrics.jsonl`` and ``stats.json``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from homeo_jax.training.metrics import atomic_write_text  # noqa: E402


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of ``key`` over the records that have it (None -> NaN)."""
  rows = [(r["step"], np.nan if r[key] is None else r[key]) for r in records if key in r]
  if not rows:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*rows, strict=True)
  return np.asarray(steps), np.asarray(values, dtype=np.float64)


def plot_loss(records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
  fig, ax = plt.subplots(figsize=(7, 4))
  for key, label in (("loss", "train"), ("val/loss", "validation")):
    steps, values = series(records, key)
    if len(steps):
      ax.plot(steps, values, label=label, marker="o" if key == "val/loss" else None, ms=3)
  _mark_faults(ax, records)
  ax.set_xlabel("step")
  ax.set_ylabel("cross entropy (nats/token)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _mark_faults(ax, records: Sequence[dict[str, Any]]) -> None:
  """Rollbacks as dashed lines at the step returned to, skipped steps as red crosses."""
  for i, r in enumerate(r for r in records if r.get("event") == "rollback"):
    label = "rollback" if i == 0 else None
    ax.axvline(r["step"], color="tab:red", ls="--", lw=1, label=label)
  skipped = [r["step"] for r in records if r.get("nonfinite")]
  if skipped:
    top = ax.get_ylim()[1]
    ax.plot(skipped, [top] * len(skipped), "x", color="tab:red", label="non-finite step")


def plot_regulators(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> bool:
  """One panel per logged regulator field; returns False when there is nothing to plot."""
  keys = sorted({k for r in records for k in r if k.startswith("regulators/")})
  if not keys:
    return False
  fig, axes = plt.subplots(len(keys), 1, figsize=(7, 1.8 * len(keys)), sharex=True, squeeze=False)
  for ax, key in zip(axes[:, 0], keys, strict=True):
    ax.plot(*series(records, key), lw=1)
    ax.set_ylabel(key.removeprefix("regulators/"), fontsize=8)
    ax.grid(alpha=0.3)
  axes[-1, 0].set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def write_report(
  run_dir: str | os.PathLike, records: Sequence[dict[str, Any]], stats: dict[str, Any]
) -> Path:
  run_dir = Path(run_dir)
  plot_loss(records, run_dir / "loss.png", title=stats.get("name", ""))
  has_regulators = plot_regulators(records, run_dir / "regulators.png")
  lines = [
    f"# Run report: {stats.get('name', run_dir.name)}",
    "",
    f"- hardware: {stats.get('hardware')}",
    f"- parameters: {stats.get('num_params'):,}",
    f"- steps: {stats.get('step')} of {stats.get('total_steps')} ({stats.get('status')})",
    f"- tokens/s (mean over logged intervals): {stats.get('tokens_per_second', 0):,.0f}",
    f"- model FLOPs utilization: {_percent(stats.get('mfu'))} ({stats.get('flops_per_step', 0):.3g}"
    f" FLOPs per step from XLA's cost analysis; peak {stats.get('peak_flops') or 0:.3g} FLOP/s,"
    f" {stats.get('peak_source', 'unknown')})",
    f"- final train loss: {_fmt(stats.get('train_loss'))}",
    f"- final validation loss: {_fmt(stats.get('val_loss'))}",
    f"- best validation loss: {_fmt(stats.get('best_val_loss'))} at step "
    f"{stats.get('best_val_step')}",
    f"- seed: {stats.get('seed')}",
    f"- wasted compute: {stats.get('skipped_steps', 0)} skipped steps, "
    f"{stats.get('rolled_back_steps', 0)} steps undone by {stats.get('rollbacks', 0)} "
    "rollbacks",
    "",
    "![loss](loss.png)",
  ]
  if has_regulators:
    lines += ["", "![regulators](regulators.png)"]
  if stats.get("last_sample"):
    sample = stats["last_sample"]
    lines += ["", f"## Sample at step {sample['step']}", "", "```text", sample["text"], "```"]
  path = run_dir / "report.md"
  atomic_write_text(path, "\n".join(lines) + "\n")
  return path


def _percent(value: Any) -> str:
  return "n/a" if value is None else f"{100 * value:.1f}%"


def _fmt(value: Any) -> str:
  return "n/a" if value is None else f"{value:.4f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
