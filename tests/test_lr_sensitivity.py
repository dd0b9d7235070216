"""experiments.lr_sensitivity: the sweep records each run at once and resumes from its file;
its summary statistics are Wortsman et al.'s, checked on hand-made numbers."""

import json

import numpy as np
import pytest

from experiments import lr_sensitivity as sweep
from experiments.common import ResultsFile


def test_sensitivity_and_stable_range_by_hand():
  per_lr = {1e-3: [2.0, 2.2], 1e-2: [1.8, 1.9], 1e-1: [4.0, 4.0]}
  # seed 0: mean(2.0, 1.8, 4.0) − 1.8; seed 1: mean(2.2, 1.9, 4.0) − 1.9
  np.testing.assert_allclose(sweep.sensitivity(per_lr, 2), [2.6 - 1.8, 8.1 / 3 - 1.9])
  assert sweep.stable_lr(per_lr, 1.85) == 1e-2  # within 0.1 nats of 1.85
  assert sweep.stable_lr(per_lr, 2.05) == 1e-2  # 1e-3's mean 2.1 is within too, but smaller
  assert sweep.stable_lr(per_lr, 1.0) is None
  assert sweep.final_loss({"val_loss": None}, 4.17) == 4.17  # diverged scores ℓ₀
  assert sweep.final_loss({"val_loss": 5.0}, 4.17) == 4.17


@pytest.mark.slow
def test_the_sweep_records_runs_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setattr(sweep, "GRID", (1e-3, 1e-2))
  args = ["--preset", "smoke", "--results", str(tmp_path), "--arms", "plain", "--max-runs", "2"]
  monkeypatch.chdir(tmp_path)
  sweep.main([*args, "--report"])  # nothing recorded yet: an empty report
  sweep.main(args)
  runs = json.loads((tmp_path / "lr_sensitivity.json").read_text())["runs"]
  assert sorted(runs) == ["plain/lr0.001/seed0", "plain/lr0.01/seed0"]  # seed-major
  record = runs["plain/lr0.001/seed0"]
  assert record["val_loss"] > 0 and record["steps"] == 6 and not record["stopped"]
  assert record["revision"] and record["hardware"] and record["attn_logit_max"] > 0
  sweep.main(args)  # resumes: the next two runs, not the first two again
  assert len(ResultsFile("lr_sensitivity", tmp_path).runs) == 4
  assert "plain (partial)" in (tmp_path / "lr_sensitivity.md").read_text()


def test_workers_sharing_a_results_file_keep_each_others_runs(tmp_path):
  first, second = ResultsFile("sweep", tmp_path), ResultsFile("sweep", tmp_path)
  first.record("a/lr0.1/seed0", {"val_loss": 2.0}, "cpu")
  second.record("a/lr1/seed0", {"val_loss": 3.0}, "cpu")  # read the file before `first` wrote
  first.record("b/lr0.1/seed0", {"val_loss": 2.5}, "cpu")
  on_disk = ResultsFile("sweep", tmp_path).runs
  assert {k: v["val_loss"] for k, v in on_disk.items()} == {
    "a/lr0.1/seed0": 2.0,
    "a/lr1/seed0": 3.0,
    "b/lr0.1/seed0": 2.5,
  }
  assert not list(tmp_path.glob("*.tmp"))


def test_shard_argument_is_checked():
  from experiments.common import parse_shard

  assert parse_shard(None) == (0, 1) and parse_shard("1/2") == (1, 2)
  with pytest.raises(ValueError, match="'2/2'"):
    parse_shard("2/2")
  with pytest.raises(ValueError, match="'x'"):
    parse_shard("x")
  assert sweep._is_workers_arg(["--arms", "plain", "--workers", "2"], 3)
  assert not sweep._is_workers_arg(["--arms", "plain", "--workers", "2"], 1)


def test_verdict_lines_answer_both_questions_and_say_when_provisional():
  def arm(sens, best, stable, complete=True):
    return {"sensitivity": sens, "best": best, "stable_global": stable, "complete": complete}

  summary = {
    "plain": arm([0.6, 0.7, 0.65], [1.94, 1.95, 1.93], 0.003),
    "qk_norm": arm([0.35, 0.34, 0.36], [1.92, 1.93, 1.92], 0.003),
    "stack": arm([0.2, 0.25, 0.22], [1.89, 1.90, 1.89], 0.03),
    "stack_qk_norm": arm([0.26], [1.90], 0.003, complete=False),
  }
  a, b, muon = sweep.verdict_lines(summary)
  assert muon == "(b) Muon: not in the sweep (no muon_stack_qk_norm arm)."
  assert a.startswith("**(a) AdamW: yes** — ") and "0.223 ± 0.015 against qk-norm's 0.350" in a
  assert b.startswith("**(b) AdamW: no** (provisional: 1/3 seed(s) per arm)")
  assert "0.003 with the stack + qk-norm and 0.003 with qk-norm alone" in b
  summary["stack_qk_norm"] = arm([0.26, 0.25, 0.27], [1.90, 1.91, 1.90], 0.01)
  _, b, _ = sweep.verdict_lines(summary)  # one half-decade step of the grid is ≥ 3×
  assert b.startswith("**(b) AdamW: yes** — ")
