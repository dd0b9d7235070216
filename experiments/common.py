"""What every experiment shares: arms × seeds over the one training loop, its results file,
its command line, its statistics and its report.

An experiment is a base config, a dict of arms (each a list of ``--set``-style overrides)
and seeds. ``run_arms`` trains every (arm, seed) into ``<out_dir>/<arm>/seed<k>/`` —
skipping runs that already finished, so an interrupted experiment resumes — and returns the
run folders. ``write_experiment_report`` writes the run folder's ``report.md`` and the
committed ``experiments/results/<name>.md`` and ``.json``.

``ResultsFile`` is an experiment's committed record, ``experiments/results/<name>.json``
(the runs, one entry each, and the provenance) beside ``<name>.md`` (the tables people
read). A sweep records each run as it finishes, so a sweep stopped part-way resumes where
it stopped, on this machine or another, from the committed file alone.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from homeo_jax.training.build import load_data
from homeo_jax.training.config import Config, apply_overrides, load_config
from homeo_jax.training.cpu import reexec_with_page_keeping_allocator, split_cpu_cores
from homeo_jax.training.loop import train
from homeo_jax.training.report import markdown_table as markdown_table
from homeo_jax.training.report import series

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
  reexec_with_page_keeping_allocator(["-m", module, *sys.argv[1:]])


def run_workers(module: str, argv: Sequence[str], workers: int) -> int:
  """Run ``python -m <module> <argv> --shard k/<workers>`` for each k, in parallel, and wait.

  Each worker is pinned to one CPU core with single-threaded XLA: a small model's steps use a
  second core poorly, so on the 2-core CPU two workers finish ~1.3× the runs per hour of one
  two-threaded process. SIGINT/SIGTERM are passed on (each worker pauses its run). Returns the
  first non-zero exit status, or 0.
  """
  import signal

  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None]
  env = {
    **os.environ,
    "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false "
    "intra_op_parallelism_threads=1".strip(),
  }
  procs = []
  for k in range(workers):
    core = cores[k % len(cores)]
    pin = (lambda c=core: os.sched_setaffinity(0, {c})) if core is not None else None
    cmd = [sys.executable, "-m", module, *argv, "--shard", f"{k}/{workers}"]
    procs.append(subprocess.Popen(cmd, env=env, preexec_fn=pin))

  def forward(signum, _frame):
    for proc in procs:
      proc.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    codes = [proc.wait() for proc in procs]
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return next((c for c in codes if c), 0)


def parse_shard(text: str | None) -> tuple[int, int]:
  """``"k/n"`` → ``(k, n)`` (``None`` → ``(0, 1)``), with a one-line error for bad input."""
  if text is None:
    return 0, 1
  try:
    k, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard must be k/n with integers, got {text!r}") from None
  if not 0 <= k < n:
    raise ValueError(f"--shard k/n needs 0 <= k < n, got {text!r}")
  return k, n


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
    """Store one run. Several workers may share the file: under a lock, the runs others
    recorded since this one read it are read back first, so no worker's runs are lost."""
    entry = {
      **value,
      "revision": git_revision(),
      "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
      "hardware": hardware,
    }
    with _locked(self.json_path):
      if self.json_path.exists():
        on_disk = json.loads(self.json_path.read_text())
        self.data["runs"] = {**on_disk.get("runs", {}), **self.runs}
      self.runs[key] = entry
      self._write_json()

  def write_markdown(self, text: str) -> None:
    _atomic_write(self.md_path, text)

  def _write_json(self) -> None:
    _atomic_write(self.json_path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def _atomic_write(path: Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # one per writer process
  tmp.write_text(text)
  os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
  """An exclusive advisory lock on ``<path>.lock`` (POSIX), held for the block."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path.with_suffix(path.suffix + ".lock"), "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


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


def run_arms(
  base: Config,
  arms: Mapping[str, Sequence[str]],
  seeds: Sequence[int],
  out_dir: str | os.PathLike,
  *,
  data: Any = None,
  train_fn: Callable[..., Any] = train,
) -> dict[str, list[Path]]:
  """Train every arm for every seed; returns ``{arm: [run_dir per seed]}``.

  Finished runs are kept, so a sweep resumes run by run. Several processes may run one sweep
  at once (e.g. one per core): each run is claimed with a lock on ``<run_dir>/.claim``, a
  process skips the runs another holds and, before returning, waits until they finish.
  """
  out_dir = Path(out_dir)
  data = data if data is not None else load_data(base)
  runs: dict[str, list[Path]] = {}
  held_elsewhere: list[Path] = []
  for arm, overrides in arms.items():
    runs[arm] = []
    for seed in seeds:
      run_dir = out_dir / arm / f"seed{seed}"
      runs[arm].append(run_dir)
      if run_finished(run_dir):
        continue
      run_dir.mkdir(parents=True, exist_ok=True)
      with open(run_dir / ".claim", "w") as claim:
        try:
          fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process trains this run
          held_elsewhere.append(run_dir)
          continue
        if run_finished(run_dir):  # finished between the check and the claim
          continue
        print(f"== {arm} seed {seed} -> {run_dir}", flush=True)
        train_fn(seeded_config(base, overrides, seed, run_dir), data=data)
      if not run_finished(run_dir):  # paused by a signal: the sweep stops with it
        raise SystemExit(f"{run_dir}: paused; launch the sweep again to resume")
  for run_dir in held_elsewhere:
    with open(run_dir / ".claim", "w") as claim:
      fcntl.flock(claim, fcntl.LOCK_EX)  # returns when the other process lets go
    if not run_finished(run_dir):
      raise RuntimeError(f"{run_dir}: the process that claimed it stopped before it finished")
  return runs


def run_finished(run_dir: Path) -> bool:
  """The run has its final stats (a run stopped on a non-finite step is a result too)."""
  stats_path = run_dir / "stats.json"
  status = json.loads(stats_path.read_text()).get("status", "") if stats_path.exists() else ""
  return status == "finished" or status.startswith("stopped")


def seeded_config(
  base: Config, overrides: Sequence[str], seed: int, run_dir: str | os.PathLike
) -> Config:
  """``base`` with an arm's overrides, one seed (model and data) and its own run folder."""
  return apply_overrides(
    base,
    [
      *overrides,
      f"train.seed={seed}",
      f"data.seed={seed}",
      f"train.run_dir={run_dir}",
      "train.progress=false",
    ],
  )


def experiment_setup(
  description: str, config_file: str, scales: Sequence[str], out_prefix: str
) -> tuple[Any, Config, Path]:
  """The experiments' shared command line: ``--scale`` (a preset of ``configs/<file>``),
  ``--seeds`` (default 0 1 2) and ``--arms`` (a subset, for ``select_arms``). Returns
  (args, base config, output folder)."""
  import argparse

  # CPU: before JAX starts (training/cpu.py); as ``python -m``, so it stays a package module
  reexec(_module_name())
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--scale", default=scales[0], choices=list(scales))
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--arms", nargs="+", default=None, help="run only these arms")
  args = parser.parse_args()
  base = load_config(f"{ROOT}/configs/{config_file}:{args.scale}")
  split_cpu_cores(base.mesh, base.data.batch_size)  # CPU: one data-parallel device per core
  return args, base, Path(f"runs/{out_prefix}_{args.scale}")


def select_arms(
  arms: Mapping[str, Sequence[str]], names: Sequence[str] | None
) -> dict[str, Sequence[str]]:
  """``arms`` restricted to ``names`` (all when None), in ``names``' order."""
  if names is None:
    return dict(arms)
  unknown = [n for n in names if n not in arms]
  if unknown:
    raise SystemExit(f"unknown arm {unknown[0]!r}; arms: {', '.join(arms)}")
  return {n: arms[n] for n in names}


def read_run(run_dir: str | os.PathLike) -> tuple[list[dict], dict]:
  run_dir = Path(run_dir)
  records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
  return records, json.loads((run_dir / "stats.json").read_text())


def mean_std(values: Sequence[float | None], digits: int = 4) -> str:
  """``"m ± s"`` over the finite values (sample std), noting how many were missing."""
  vals = [v for v in values if v is not None and math.isfinite(v)]
  if not vals:
    return "n/a"
  text = f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.{digits}f}"
  missing = len(values) - len(vals)
  return text + (f" ({missing} n/a)" if missing else "")


def first_step_at_or_below(records: Sequence[dict], key: str, threshold: float) -> int | None:
  steps, values = series(records, key)
  hits = np.nonzero(values <= threshold)[0]
  return int(steps[hits[0]]) if len(hits) else None


def verdict(arm: Sequence[float], reference: Sequence[float], lower_is_better: bool = True) -> str:
  """better / worse when the means differ by more than 2 standard errors, else neutral."""
  a, r = np.asarray(arm, np.float64), np.asarray(reference, np.float64)
  diff = a.mean() - r.mean()
  se = math.sqrt(a.var(ddof=1) / len(a) + r.var(ddof=1) / len(r)) if min(len(a), len(r)) > 1 else 0
  if abs(diff) <= 2 * se:
    return "neutral (within noise)"
  return "better" if (diff < 0) == lower_is_better else "worse"


def mean_curve(run_dirs: Sequence[Path], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(steps, mean, std) of ``key`` over runs, on the steps all runs logged."""
  curves = [series(read_run(d)[0], key) for d in run_dirs]
  common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
  stacked = np.stack(
    [[dict(zip(s.tolist(), v, strict=True))[x] for x in common] for s, v in curves]
  )
  return np.asarray(common), stacked.mean(0), stacked.std(0)


def restore_final_state(config: Config, data: Any):
  """The last checkpoint of ``config``'s run folder: (apply_fn, TrainState)."""
  from homeo_jax.training.step import functional_model
  from homeo_jax.training.trained import restore_state

  model, state = restore_state(config, data)
  return functional_model(model)[0], state


def write_experiment_report(
  out_dir: Path,
  title: str,
  notes: Sequence[str],
  table: str,
  figure: str,
  *,
  name: str | None = None,
  results_dir: Path = RESULTS_DIR,
) -> Path:
  """``<out_dir>/report.md`` — title, hardware, the notes as bullets, the table, the figure —
  and the committed copy ``experiments/results/<name>.md`` (``name``: the run folder's) with
  the command, revision and date, beside ``<name>.json`` holding the same fields and the
  figure copied next to them as ``<name>.png`` (run folders name their figures alike)."""
  from homeo_jax.training.build import hardware_description
  from homeo_jax.training.metrics import atomic_write_text

  name = name or Path(out_dir).name
  command = "python -m " + " ".join([_module_name(), *sys.argv[1:]])
  revision = git_revision()
  date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
  hardware = hardware_description()
  head = [f"# {title}", "", f"- hardware: {hardware}"]
  provenance = [f"- command: `{command}`", f"- revision {revision}, {date}"]
  body = [*(f"- {note}" for note in notes), "", table, ""]
  shipped_figure = f"{name}{Path(figure).suffix}" if figure else ""
  path = Path(out_dir) / "report.md"
  local = [f"![{Path(figure).stem}]({Path(figure).name})", ""] if figure else []
  atomic_write_text(path, "\n".join([*head, *body, *local]))
  results_dir = Path(results_dir)
  results_dir.mkdir(parents=True, exist_ok=True)
  shipped = [f"![{name}]({shipped_figure})", ""] if figure else []
  atomic_write_text(results_dir / f"{name}.md", "\n".join([*head, *provenance, *body, *shipped]))
  record = dict(title=title, command=command, revision=revision, date=date, hardware=hardware,
                notes=list(notes), table=table)  # fmt: skip
  atomic_write_text(results_dir / f"{name}.json", json.dumps(record, indent=1) + "\n")
  if figure and (Path(out_dir) / figure).is_file():
    shutil.copyfile(Path(out_dir) / figure, results_dir / shipped_figure)
  print(f"wrote {path} and {results_dir / name}.md")
  return path


def write_results(
  name: str,
  title: str,
  table: str,
  notes: Sequence[str] = (),
  *,
  results_dir: Path = RESULTS_DIR,
) -> Path:
  """The committed ``experiments/results/<name>.md`` and ``.json`` of a script whose result is
  one table (a benchmark, a search): the table with its command, revision, date, hardware and
  notes; ``runs/<name>/report.md`` beside it."""
  out_dir = Path("runs") / name
  out_dir.mkdir(parents=True, exist_ok=True)
  return write_experiment_report(
    out_dir, title, notes, table, "", name=name, results_dir=results_dir
  )


def _module_name() -> str:
  """``experiments.<name>`` of the running experiment (``python -m`` sets ``__spec__``)."""
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  if spec is not None:
    return spec.name
  return f"experiments.{Path(sys.argv[0]).stem}"  # run as a file: its module in the package
