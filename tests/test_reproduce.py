"""experiments/reproduce.py: the combined report and the run counts its plan multiplies."""

import importlib.util
from pathlib import Path

from homeo_jax.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce", ROOT / "experiments" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)


def test_combined_report_gathers_reports_and_repoints_figures(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  folder = Path("runs/ord_muon_cpu")
  folder.mkdir(parents=True)
  (folder / "report.md").write_text("# ORD\n\n| a |\n|---|\n\n![curves](curves.png)\n")
  results = {"ord_muon": ("finished", 90.0), "spechorn": ("failed (exit 1); rerun", 6.0)}
  text = reproduce.combined_report("cpu", results).read_text()
  assert "| ord_muon | finished | 1.5 min |" in text
  assert "![curves](../ord_muon_cpu/curves.png)" in text  # relative to runs/reproduce_cpu
  assert "## spechorn" in text and "No report: the ablation did not finish." in text


def test_run_counts_follow_the_scripts():
  counts = {}
  for name, (script, config_file, scales, runs_of) in reproduce.ABLATIONS.items():
    base = load_config(f"{ROOT}/configs/{config_file}:{scales['cpu']}")
    counts[name] = runs_of(reproduce._module(script), base, 3)
  assert counts["ars_narcissus"] == 3 * 3  # AdamW, +Ψ, +Ψ+χ
  assert counts["ord_muon"] == 11 * 3  # 9 arms + 2 Polar Express arms
  assert all(n >= 3 for n in counts.values()), counts
