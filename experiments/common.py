"""What every experiment shares: its results file, its command line and its statistics.

``ResultsFile`` is an experiment's committed record, ``experiments/results/<name>.json``
(the runs, one entry each, and the provenance) beside ``<name>.md`` (the tables people
read). A sweep records each run as it finishes, so a sweep stopped part-way resumes where
it stopped, on this machine or another, from the committed file alone.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def git_revision() -> str:
  """The checkout's commit (with ``+dirty`` when files differ from it), or ``unknown``."""
  try:
    rev = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return rev + ("+dirty" if dirty else "")


def reexec(module: str) -> None:
  """Re-run ``python -m <module> <args>`` with the CPU's page-keeping allocator (once)."""
  from homeo_jax.training.cpu import reexec_with_page_keeping_allocator

  reexec_with_page_keeping_allocator(["-m", module, *sys.argv[1:]])


class ResultsFile:
  """``experiments/results/<name>.json``: ``{"meta": {...}, "runs": {key: record}}``.

  ``record(key, value)`` stores one run and rewrites the file atomically; ``has(key)`` tells a
  resuming sweep what is done. Each stored run carries the revision, date and hardware it
  ran on; ``meta`` holds the command of the latest invocation.
  """

  def __init__(self, name: str, directory: Path = RESULTS_DIR):
    self.name = name
    self.json_path = Path(directory) / f"{name}.json"
    self.md_path = Path(directory) / f"{name}.md"
    self.data: dict[str, Any] = {"meta": {}, "runs": {}}
    if self.json_path.exists():
      self.data = json.loads(self.json_path.read_text())

  @property
  def runs(self) -> dict[str, Any]:
    return self.data["runs"]

  def has(self, key: str) -> bool:
    return key in self.runs

  def start(self, command: Sequence[str], **meta: Any) -> None:
    """Note this invocation's command and settings."""
    self.data["meta"].update(command=" ".join(command), **meta)
    self._write_json()

  def record(self, key: str, value: dict[str, Any], hardware: str) -> None:
    self.runs[key] = {
      **value,
      "revision": git_revision(),
      "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
      "hardware": hardware,
    }
    self._write_json()

  def write_markdown(self, text: str) -> None:
    _atomic_write(self.md_path, text)

  def _write_json(self) -> None:
    _atomic_write(self.json_path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def _atomic_write(path: Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def standard_error(values: Sequence[float]) -> float:
  """s.e. of the mean over seeds (NaN for one value)."""
  values = [v for v in values if v is not None and math.isfinite(v)]
  return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else math.nan


def mean_se(values: Sequence[float], digits: int = 3) -> str:
  """``"m ± s.e. (n)"``; ``"m (1 seed)"`` for one value."""
  vals = [v for v in values if v is not None and math.isfinite(v)]
  if not vals:
    return "n/a"
  if len(vals) == 1:
    return f"{vals[0]:.{digits}f} (1 seed)"
  return f"{np.mean(vals):.{digits}f} ± {standard_error(vals):.{digits}f}"
