"""Every ablation at one scale, resumable, with one combined report.

    python -m experiments.reproduce --scale cpu                     # all five, 2-core CPU sizes
    python -m experiments.reproduce --scale gpu --only spechorn ord_muon
    python -m experiments.reproduce --scale gpu --plan              # cost estimate, runs nothing
    python -m experiments.reproduce --scale seed                    # ORD, Ouro-Spec: seed settings

Runs each ablation script (``python -m experiments.<script> --scale S --seeds ...``) in its own
process, one after another; each arm of each writes its own run folder under
``runs/<ablation>_<scale>/``. A rerun skips the arms whose ``stats.json`` says finished
and resumes paused or interrupted ones from their newest checkpoint (``run_arms`` and the
training loop), so the command is safe to launch again after a preemption. At the end
``runs/reproduce_<scale>/report.md`` gathers every ablation's report (its tables and
figures) with a status line per ablation.

``--plan`` prints, per ablation, the runs it makes and an estimate of their time on each
device kind from ``homeo_jax.plan`` (XLA's FLOPs per step at the stated MFU).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(script: str):
  return importlib.import_module(f"experiments.{script}")


# name: (script, config file, {reproduce scale: the script's scale}, runs(module, base, seeds))
ABLATIONS = {
  "ord_muon": (
    "ord_muon_ablation", "ord_muon.py", {"cpu": "cpu", "gpu": "gpu", "seed": "seed"},
    lambda m, base, seeds: len(m.SEED_ARMS if base.name.endswith("seed") else m.ARMS) * seeds,
  ),
  "ars_narcissus": (
    "ars_narcissus", "ars_narcissus.py", {"cpu": "cpu", "gpu": "gpu"},
    lambda m, base, seeds: len(m.ARMS) * seeds,
  ),
  "spechorn": (
    "spechorn_ablation", "spechorn.py", {"cpu": "cpu", "gpu": "gpu"},
    lambda m, base, seeds: len(m.ARMS) * seeds,
  ),
  "thyroid_2bit": (  # one-seed lr sweep, then manual + thyroid arms + two float arms
    "thyroid_2bit", "thyroid_2bit.py", {"cpu": "cpu", "gpu": "gpu"},
    lambda m, base, seeds: len(m.SWEEP) + (1 + len(m.THYROID) + 2) * seeds,
  ),
  "ouro_spec": (
    "ouro_spec_ablation", "ouro_spec.py", {"cpu": "tiny", "gpu": "seed", "seed": "seed"},
    lambda m, base, seeds: len(m.arms(base.model.max_passes)) * seeds,
  ),
}  # fmt: skip


def report_dir(name: str, script_scale: str) -> Path:
  return Path("runs") / f"{name}_{script_scale}"


def run_ablation(name: str, scale: str, seeds: list[int]) -> tuple[str, float]:
  script, _, scales, _ = ABLATIONS[name]
  command = [sys.executable, "-m", f"experiments.{script}", "--scale", scales[scale]]
  command += ["--seeds", *map(str, seeds)]
  print(f"=== {name}: {' '.join(command)}", flush=True)
  start = time.perf_counter()
  rc = subprocess.call(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
  status = "finished" if rc == 0 else f"failed (exit {rc}); rerun to resume"
  return status, time.perf_counter() - start


def combined_report(scale: str, results: dict[str, tuple[str, float]]) -> Path:
  """One markdown file: a status table, then each ablation's report with its figure
  links rewritten to point into that ablation's folder."""
  out = Path("runs") / f"reproduce_{scale}"
  out.mkdir(parents=True, exist_ok=True)
  lines = [f"# Reproduced ablations ({scale})", "", "| ablation | status | wall |", "|---|---|---|"]
  lines += [f"| {n} | {s} | {sec / 60:.1f} min |" for n, (s, sec) in results.items()]
  for name in results:
    folder = report_dir(name, ABLATIONS[name][2][scale])
    path = folder / "report.md"
    lines += ["", f"## {name} (`{path}`)", ""]
    if not path.exists():
      lines.append("No report: the ablation did not finish.")
      continue
    relative = os.path.relpath(folder, out)
    text = path.read_text().replace("\n# ", "\n### ")
    text = re.sub(r"\]\((?!https?:)([^)]+)\)", f"]({relative}/\\1)", text)
    lines.append(text.removeprefix("# "))
  report = out / "report.md"
  report.write_text("\n".join(lines) + "\n")
  return report


def print_plan(names: list[str], scale: str, seeds: int, mfu: float) -> None:
  from experiments.common import markdown_table
  from homeo_jax import plan as plan_lib
  from homeo_jax.training.config import load_config
  from homeo_jax.training.flops import PLANNED, accelerator

  rows = []
  for name in names:
    script, config_file, scales, runs_of = ABLATIONS[name]
    base = load_config(f"{ROOT}/configs/{config_file}:{scales[scale]}")
    runs = runs_of(_module(script), base, seeds)
    p = plan_lib.plan(base)
    times = []
    for kind in PLANNED:
      acc = accelerator(kind)
      n = plan_lib.devices_needed(p, acc.hbm_bytes)
      seconds = runs * p.run_flops / (n * acc.peak_flops * mfu)
      times.append(plan_lib.hours(seconds) + ("" if n == 1 else f" ({n} devices)"))
    rows.append([name, f"{config_file}:{scales[scale]}", str(runs), f"{p.steps:,}", *times])
  header = ["ablation", "config", "runs", "steps/run", *(f"{k} at MFU {mfu:g}" for k in PLANNED)]
  print(markdown_table(header, rows))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scale", default="cpu", choices=["cpu", "gpu", "seed"])
  parser.add_argument("--only", nargs="+", choices=sorted(ABLATIONS), default=None)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--plan", action="store_true", help="print the cost estimate only")
  parser.add_argument("--mfu", type=float, default=0.4, help="--plan: the assumed MFU")
  args = parser.parse_args()
  # "seed": the ablations that have a preset at the seed's own settings (ORD, Ouro-Spec).
  names = [n for n in args.only or list(ABLATIONS) if args.scale in ABLATIONS[n][2]]
  if not names:
    raise SystemExit(f"none of {args.only} has a {args.scale!r} preset")
  if args.plan:
    print_plan(names, args.scale, len(args.seeds), args.mfu)
    return
  results = {name: run_ablation(name, args.scale, args.seeds) for name in names}
  print(f"report: {combined_report(args.scale, results)}")
  if any(status != "finished" for status, _ in results.values()):
    sys.exit(1)


if __name__ == "__main__":
  main()
