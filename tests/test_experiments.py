"""The experiments package: every module imports (as ``python -m experiments.<name>`` does),
and a report ships as a committed results file with its provenance."""

import ast
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import pytest

import experiments
from experiments import common
from experiments.common import write_experiment_report

MODULES = sorted(m.name for m in pkgutil.iter_modules(experiments.__path__))


def _setup_calls() -> list[tuple[str, str, str]]:
  """(experiment, config file, scale) for every ``experiment_setup(...)`` call, read from source."""
  calls = []
  for name in MODULES:
    tree = ast.parse((common.ROOT / "experiments" / f"{name}.py").read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "experiment_setup":
        config_file, scales = ast.literal_eval(node.args[1]), ast.literal_eval(node.args[2])
        calls += [(name, config_file, scale) for scale in scales]
  return calls


@pytest.mark.parametrize("name", MODULES)
def test_every_experiment_imports_as_a_package_module(name):
  importlib.import_module(f"experiments.{name}")


@pytest.mark.parametrize("name,config_file,scale", _setup_calls())
def test_every_experiment_command_line_loads_its_preset(name, config_file, scale, monkeypatch):
  import types

  reexecuted = []
  monkeypatch.setattr(common, "reexec_with_page_keeping_allocator", reexecuted.append)
  monkeypatch.setattr(common, "split_cpu_cores", lambda *a: None)
  # as `python -m experiments.<name>` runs it, and as the file
  as_module = types.SimpleNamespace(__spec__=types.SimpleNamespace(name=f"experiments.{name}"))
  as_file = types.SimpleNamespace(__spec__=None)
  for main, argv0 in [(as_module, "-m"), (as_file, f"/x/experiments/{name}.py")]:
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", [argv0, "--scale", scale, "--seeds", "4"])
    args, base, out = common.experiment_setup(name, config_file, [scale], name)
    assert args.seeds == [4] and out.name == f"{name}_{scale}"
    assert base.train.steps > 0
  # the allocator re-exec keeps it a package module: `python -m experiments.<name> ARGS`
  assert reexecuted == 2 * [["-m", f"experiments.{name}", "--scale", scale, "--seeds", "4"]]


def test_a_report_ships_with_command_revision_and_hardware(tmp_path):
  out, results = tmp_path / "runs" / "demo_cpu", tmp_path / "results"
  out.mkdir(parents=True)
  (out / "demo.png").write_bytes(b"\x89PNG")
  write_experiment_report(out, "Demo", ["seeds [0, 1, 2]"], "| a |\n|---|\n| 1 |", "demo.png",
                          results_dir=results)  # fmt: skip
  shipped = json.loads((results / "demo_cpu.json").read_text())
  assert shipped["title"] == "Demo" and shipped["notes"] == ["seeds [0, 1, 2]"]
  assert shipped["revision"] and shipped["date"] and shipped["hardware"] and shipped["command"]
  text = (results / "demo_cpu.md").read_text()
  assert "- command: `" in text and "| 1 |" in text and "![demo_cpu](demo_cpu.png)" in text
  assert (results / "demo_cpu.png").read_bytes() == b"\x89PNG"  # named by the run, not "demo"
  assert (out / "report.md").is_file()


def test_a_table_script_writes_its_committed_results_file(tmp_path, monkeypatch):
  from experiments.common import write_results

  monkeypatch.chdir(tmp_path)
  write_results("bench_x", "A bench", "| a |\n|---|\n| 1 |", ["2 seeds"], results_dir=tmp_path)
  record = json.loads((tmp_path / "bench_x.json").read_text())
  assert record["title"] == "A bench" and record["notes"] == ["2 seeds"]
  assert record["revision"] and record["hardware"] and record["date"]
  text = (tmp_path / "bench_x.md").read_text()
  assert "| a |" in text and "- command: `python -m" in text and "- 2 seeds" in text
  assert (tmp_path / "runs" / "bench_x" / "report.md").is_file()


def test_run_arms_resumes_and_shares_a_sweep_with_another_process(tmp_path):
  """Finished runs are not retrained; a run another process holds is skipped, then awaited."""
  import fcntl
  import threading

  from homeo_jax.training.config import Config

  trained = []

  def fake_train(config, data):
    trained.append(config.train.run_dir)
    (Path(config.train.run_dir) / "stats.json").write_text('{"status": "finished"}')

  done = tmp_path / "a" / "seed0"
  done.mkdir(parents=True)
  (done / "stats.json").write_text('{"status": "stopped: non-finite loss"}')
  held = tmp_path / "a" / "seed1"
  held.mkdir(parents=True)
  claim = open(held / ".claim", "w")  # noqa: SIM115 - released by the thread below
  fcntl.flock(claim, fcntl.LOCK_EX)

  def other_process_finishes():
    (held / "stats.json").write_text('{"status": "finished"}')
    claim.close()

  timer = threading.Timer(0.5, other_process_finishes)
  timer.start()
  runs = common.run_arms(Config(), {"a": [], "b": []}, [0, 1], tmp_path, data=object(),
                         train_fn=fake_train)  # fmt: skip
  timer.join()
  assert runs == {"a": [done, held], "b": [tmp_path / "b" / "seed0", tmp_path / "b" / "seed1"]}
  assert trained == [str(tmp_path / "b" / "seed0"), str(tmp_path / "b" / "seed1")]


def test_run_arms_stops_when_a_run_pauses(tmp_path):
  from homeo_jax.training.config import Config

  trained = []

  def paused_train(config, data):
    trained.append(config.train.run_dir)
    (Path(config.train.run_dir) / "stats.json").write_text('{"status": "paused"}')

  with pytest.raises(SystemExit, match="seed0: paused"):
    common.run_arms(Config(), {"a": []}, [0, 1], tmp_path, data=object(), train_fn=paused_train)
  assert trained == [str(tmp_path / "a" / "seed0")]  # seed 1 never started
