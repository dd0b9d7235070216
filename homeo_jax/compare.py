"""Compare runs side by side: ``python -m homeo_jax.compare RUN [RUN ...]``.

    python -m homeo_jax.compare runs/a runs/b --metrics regulators/ars/psi --out runs/a_vs_b

Prints one markdown table (steps, final and best validation loss, final train loss,
tokens/s, wasted compute, the final value of every ``--metrics`` key, or by default of
the regulator figures all runs share) and writes ``compare.png``: training loss,
validation loss and each chosen metric, one line per run, on shared step axes. Reads
``stats.json`` and ``metrics.jsonl`` only; nothing is loaded onto a device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from homeo_jax.training.report import markdown_table, plt, series

DEFAULT_METRICS_SHOWN = 4  # regulator figures in the table when --metrics is not given


def read(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """(metrics records, stats) of a run folder; a folder without them is a ValueError."""
  try:
    stats = json.loads((run_dir / "stats.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
  except OSError as e:
    raise ValueError(f"{run_dir}: not a run folder ({e.strerror}: {e.filename})") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{run_dir}/stats.json is not JSON ({e.msg})") from None
  return [json.loads(line) for line in lines if line.strip()], stats


def shared_regulator_metrics(runs: list[tuple[list[dict], dict]]) -> list[str]:
  keys = [
    {k for k in stats.get("last_metrics", {}) if k.startswith("regulators/")} for _, stats in runs
  ]
  return sorted(set.intersection(*keys))[:DEFAULT_METRICS_SHOWN] if keys else []


def last_value(records: list[dict], key: str) -> float | None:
  _, values = series(records, key)
  return float(values[-1]) if len(values) else None


def fmt(value: Any, digits: int = 4) -> str:
  if value is None:
    return "-"
  return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"


def table(names: list[str], runs: list[tuple[list[dict], dict]], metrics: list[str]) -> str:
  header = ["run", "steps", "best val loss (step)", "final val loss", "final train loss",
            "tokens/s", "wasted steps", *metrics]  # fmt: skip
  rows = []
  for name, (records, stats) in zip(names, runs, strict=True):
    best = stats.get("best_val_loss")
    wasted = stats.get("skipped_steps", 0) + stats.get("rolled_back_steps", 0)
    rows.append(
      [
        name,
        f"{stats.get('step', '-')} of {stats.get('total_steps', '-')}",
        "-" if best is None else f"{best:.4f} ({stats.get('best_val_step')})",
        fmt(stats.get("val_loss")),
        fmt(stats.get("train_loss")),
        fmt(stats.get("tokens_per_second")),
        str(wasted),
        *(fmt(last_value(records, key)) for key in metrics),
      ]
    )
  return markdown_table(header, rows)


def plot(names: list[str], runs, metrics: list[str], path: Path) -> None:
  keys = ["loss", "val/loss", *metrics]
  fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), sharex=True, squeeze=False)
  for ax, key in zip(axes[:, 0], keys, strict=True):
    for name, (records, _) in zip(names, runs, strict=True):
      steps, values = series(records, key)
      if len(steps):
        ax.plot(steps, values, label=name, lw=1, marker="o" if key == "val/loss" else None, ms=3)
    ax.set_ylabel(key, fontsize=8)
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=8)
  axes[-1, 0].set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="homeo_jax.compare", description=__doc__.splitlines()[0])
  parser.add_argument("run_dirs", nargs="+", type=Path)
  parser.add_argument("--metrics", nargs="*", default=None, help="metrics.jsonl keys to add")
  parser.add_argument("--out", type=Path, default=Path("."), help="folder for compare.png")
  args = parser.parse_args(argv)
  try:
    runs = [read(d) for d in args.run_dirs]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  names = [str(d) for d in args.run_dirs]
  common = os.path.commonpath(names) if len(names) > 1 else ""
  names = [n[len(common) :].lstrip("/") or n for n in names]
  metrics = args.metrics if args.metrics is not None else shared_regulator_metrics(runs)
  print(table(names, runs, metrics))
  args.out.mkdir(parents=True, exist_ok=True)
  plot(names, runs, metrics, args.out / "compare.png")
  print(f"\ncurves: {args.out / 'compare.png'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
