"""Run-folder files: atomic writes, ``metrics.jsonl``, TensorBoard events and ``stats.json``."""

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
  """The metrics log, TensorBoard events and dashboard of one run folder.

  Every record appended to ``metrics.jsonl`` also goes to TensorBoard (tensorboardX) under
  ``<run_dir>/tensorboard``: each finite number as a scalar, each string (a sample) as text.
  When a resume or rollback drops records past a step, the next writer opens with
  ``purge_step`` so TensorBoard drops the same steps from its curves.
  """

  def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True):
    self.run_dir = Path(run_dir)
    self.run_dir.mkdir(parents=True, exist_ok=True)
    self.metrics_path = self.run_dir / "metrics.jsonl"
    self.stats_path = self.run_dir / "stats.json"
    self.tensorboard_dir = self.run_dir / "tensorboard" if tensorboard else None
    self._writer = None
    self._purge_step: int | None = None

  def append_metrics(self, record: dict[str, Any]) -> None:
    with self.metrics_path.open("a") as f:
      f.write(json.dumps(to_python(record)) + "\n")
    if self.tensorboard_dir is not None and "step" in record:
      self._write_events(record)

  def open_events(self) -> None:
    """Open the TensorBoard writer now (the first open imports tensorboardX, about a second:
    the loop pays it before its timed steps, not inside one)."""
    if self.tensorboard_dir is not None and self._writer is None:
      from tensorboardX import SummaryWriter

      self._writer = SummaryWriter(
        str(self.tensorboard_dir), purge_step=self._purge_step, flush_secs=10
      )
      self._purge_step = None

  def _write_events(self, record: dict[str, Any]) -> None:
    self.open_events()
    step = int(record["step"])
    for key, value in to_python(record).items():
      if key == "step":
        continue
      if isinstance(value, str):
        self._writer.add_text(key, value, step)
      elif isinstance(value, (int, float)) and not isinstance(value, bool):
        self._writer.add_scalar(key, value, step)

  def truncate_after(self, step: int) -> None:
    """Drop records past ``step``: after a resume they are re-written by the same steps."""
    self.close()
    self._purge_step = step + 1
    if not self.metrics_path.exists():
      return
    kept = [
      line
      for line in self.metrics_path.read_text().splitlines()
      if line and json.loads(line).get("step", 0) <= step
    ]
    atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

  def close(self) -> None:
    """Flush and close the TensorBoard writer (a later record opens a new one)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def read_metrics(self) -> list[dict[str, Any]]:
    if not self.metrics_path.exists():
      return []
    return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

  def write_stats(self, stats: dict[str, Any]) -> None:
    atomic_write_text(self.stats_path, json.dumps(to_python(stats), indent=2, sort_keys=True))
