"""CPU process settings: the device count per core, the allocator re-exec and its guards,
and the math they must not change (a fixed-seed loss curve, on 1 and on 2 CPU devices)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from homeo_jax.training import cpu
from homeo_jax.training.sharding import MeshConfig
from tests.conftest import assert_script_passes_on_fake_devices

# shakespeare_char.py:smoke with dropout 0.1, window_batches seed 0, 12 steps, computed
# at a8e1334 — before Dense, heads-first attention and the CPU device split.
GOLDEN_LOSSES = [
  4.318406, 4.320091, 4.293702, 4.26426, 4.227184, 4.186009,
  4.177213, 4.169771, 4.154276, 4.164231, 4.157358, 4.165297,
]  # fmt: skip

CURVE = """
import numpy as np
from homeo_jax.data import load_text_data, window_batches
from homeo_jax.training.config import apply_overrides, load_config
from homeo_jax.training.build import setup

def loss_curve(steps=12):
  cfg = apply_overrides(load_config("configs/shakespeare_char.py:smoke"), ["model.dropout=0.1"])
  data = load_text_data("shakespeare", tokenizer="char", max_chars=200_000)
  run = setup(cfg, data)
  batches = window_batches(data.train_tokens, seq_len=32, batch_size=8, seed=0)
  state, losses = run.state, []
  for i in range(steps):
    state, metrics = run.train_step(state, run.put(batches[i]))
    losses.append(float(metrics["loss"]))
  return np.array(losses), run
"""


@pytest.mark.slow
def test_loss_curve_is_todays_on_one_device():
  scope = {}
  exec(CURVE, scope)
  losses, _ = scope["loss_curve"]()
  np.testing.assert_allclose(losses, GOLDEN_LOSSES, rtol=2e-6)


@pytest.mark.slow
def test_loss_curve_is_todays_on_two_data_parallel_cpu_devices():
  script = (
    CURVE
    + f"""
import jax
assert jax.device_count() == 2
losses, run = loss_curve()
big = max(jax.tree.leaves(run.state.params), key=lambda x: x.size)
assert len(big.sharding.device_set) == 2, big.sharding  # the step runs on both devices
np.testing.assert_allclose(losses, {GOLDEN_LOSSES}, rtol=2e-5)
print("ok")
"""
  )
  assert_script_passes_on_fake_devices(script, devices=2)


@pytest.mark.parametrize(
  "requested, cores, batch, expected",
  [(0, 2, 12, 2), (0, 2, 7, 1), (0, 8, 12, 6), (0, 16, 12, 12), (0, 1, 64, 1), (3, 2, 12, 3)],
)
def test_cpu_device_count(requested, cores, batch, expected):
  assert cpu.cpu_device_count(requested, cores, batch) == expected


@pytest.mark.slow
def test_split_cpu_cores_sets_one_device_per_core_in_a_fresh_process():
  script = """
import os, jax
from homeo_jax.training import cpu
from homeo_jax.training.sharding import MeshConfig
cores = len(os.sched_getaffinity(0))
assert cpu.split_cpu_cores(MeshConfig(), 12) is None  # the default: one device
assert cpu.split_cpu_cores(MeshConfig(1, 1, 1, cpu_devices=0), 12) is None  # a user mesh
count = cpu.split_cpu_cores(MeshConfig(cpu_devices=0), 12)
assert count == cpu.cpu_device_count(0, cores, 12), (count, cores)
assert jax.device_count() == count
assert (cpu.COLLECTIVE_TIMEOUT_FLAG in os.environ.get("XLA_FLAGS", "")) == (count > 1)
assert cpu.split_cpu_cores(MeshConfig(), 12) is None  # backends are up now
print("ok")
"""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
  )
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_split_cpu_cores_leaves_a_set_device_count_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  assert cpu.split_cpu_cores(MeshConfig(cpu_devices=2), 12) is None


@pytest.fixture
def environ(monkeypatch):
  """A private copy of the environment without allocator settings."""
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
  env.pop("HOMEO_JAX_REEXECUTED", None)
  env.pop(cpu.ALLOCATOR_ENV, None)
  env["JAX_PLATFORMS"] = "cpu"
  monkeypatch.setattr(os, "environ", env)
  return env


def no_tcmalloc(monkeypatch):
  monkeypatch.setattr(cpu.ctypes.util, "find_library", lambda name: None)
  monkeypatch.setattr(cpu.os.path, "exists", lambda path: False)


def test_allocator_environment(environ, monkeypatch):
  monkeypatch.setattr(sys, "platform", "linux")
  assert cpu.allocator_environment("system") == {}
  environ["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=2"
  assert cpu.allocator_environment("hugepages") == {
    "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  }
  monkeypatch.setattr(cpu, "TCMALLOC_PATHS", ("/x/libtcmalloc_minimal.so.4",))
  monkeypatch.setattr(cpu.os.path, "exists", lambda path: path.startswith("/x/"))
  environ["LD_PRELOAD"] = "/y/other.so"
  assert cpu.allocator_environment("auto") == {
    "LD_PRELOAD": "/x/libtcmalloc_minimal.so.4:/y/other.so"
  }
  no_tcmalloc(monkeypatch)
  assert "GLIBC_TUNABLES" in cpu.allocator_environment("auto")  # falls back to huge pages
  with pytest.raises(RuntimeError, match="libtcmalloc_minimal"):
    cpu.allocator_environment("tcmalloc")


def test_reexec_runs_once_with_the_allocator_set(environ, monkeypatch):
  monkeypatch.setattr(sys, "platform", "linux")
  no_tcmalloc(monkeypatch)
  calls = []
  monkeypatch.setattr(cpu.os, "execv", lambda exe, argv: calls.append(argv))
  cpu.reexec_with_page_keeping_allocator(["-m", "homeo_jax.train", "--config", "c.py"])
  assert calls == [[sys.executable, "-m", "homeo_jax.train", "--config", "c.py"]]
  assert environ["HOMEO_JAX_REEXECUTED"] == "1"
  assert "glibc.malloc.hugetlb=1" in environ["GLIBC_TUNABLES"]
  cpu.reexec_with_page_keeping_allocator(["x"])  # the re-executed process goes on
  assert len(calls) == 1


@pytest.mark.parametrize(
  "setting",
  [
    {"HOMEO_JAX_ALLOCATOR": "system"},
    {"JAX_PLATFORMS": "cuda"},
    {"LD_PRELOAD": "/l/libtcmalloc.so"},
  ],
)
def test_reexec_does_nothing_when_not_wanted(environ, monkeypatch, setting):
  environ.update(setting)
  monkeypatch.setattr(cpu.os, "execv", lambda *a: pytest.fail("re-executed"))
  cpu.reexec_with_page_keeping_allocator(["x"])


def test_reexec_names_a_bad_allocator(environ):
  environ[cpu.ALLOCATOR_ENV] = "jemalloc"
  with pytest.raises(ValueError, match="HOMEO_JAX_ALLOCATOR.*'jemalloc'"):
    cpu.reexec_with_page_keeping_allocator(["x"])
