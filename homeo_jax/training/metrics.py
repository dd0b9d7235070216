"""Run-folder files: atomic writes, ``metrics.jsonl`` and the ``stats.json`` dashboard."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Write via a temporary file and ``os.replace`` so readers never see a partial file."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


def to_python(value: Any) -> Any:
  """Arrays and NumPy scalars -> JSON-able Python numbers (NaN/Inf become None)."""
  if isinstance(value, dict):
    return {k: to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
    arr = np.asarray(value)
    return to_python(arr.tolist()) if arr.ndim else to_python(arr.item())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class RunFiles:
  """The metrics log and dashboard of one run folder."""

  def __init__(self, run_dir: str | os.PathLike):
    self.run_dir = Path(run_dir)
    self.run_dir.mkdir(parents=True, exist_ok=True)
    self.metrics_path = self.run_dir / "metrics.jsonl"
    self.stats_path = self.run_dir / "stats.json"

  def append_metrics(self, record: dict[str, Any]) -> None:
    with self.metrics_path.open("a") as f:
      f.write(json.dumps(to_python(record)) + "\n")

  def truncate_after(self, step: int) -> None:
    """Drop records past ``step``: after a resume they are re-written by the same steps."""
    if not self.metrics_path.exists():
      return
    kept = [
      line
      for line in self.metrics_path.read_text().splitlines()
      if line and json.loads(line).get("step", 0) <= step
    ]
    atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

  def read_metrics(self) -> list[dict[str, Any]]:
    if not self.metrics_path.exists():
      return []
    return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

  def write_stats(self, stats: dict[str, Any]) -> None:
    atomic_write_text(self.stats_path, json.dumps(to_python(stats), indent=2, sort_keys=True))
