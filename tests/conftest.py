"""Shared fixtures: tiny configs and data so the suite runs in minutes on 2 CPU cores."""

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("HOMEO_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache"))
# Many tests compile the same tiny programs (the train step of `tiny_config`, the CLI's runs in
# subprocesses): one compilation cache per test run compiles each once (a fifth less CPU time).
# The first process sets it; xdist workers and subprocesses inherit it through the environment.
# A fresh folder per run, removed at its end: no test reads an older run's programs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _COMPILE_CACHE = tempfile.mkdtemp(prefix="homeo_jax_tests_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILE_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
else:
  _COMPILE_CACHE = None

from homeo_jax.data import load_text_data  # noqa: E402
from homeo_jax.models import TransformerConfig  # noqa: E402
from homeo_jax.training.config import Config, DataConfig, OptimizerConfig, TrainConfig  # noqa: E402


def pytest_sessionfinish(session):
  if _COMPILE_CACHE and not hasattr(session.config, "workerinput"):  # the process that made it
    shutil.rmtree(_COMPILE_CACHE, ignore_errors=True)


def tiny_config(run_dir, **sections) -> Config:
  """A 2-layer, 32-wide char model on 200K chars of Shakespeare, 6 steps."""
  config = Config(
    name="tiny",
    model=TransformerConfig(
      vocab_size=0, num_layers=2, num_heads=2, d_model=32, max_seq_len=32, dropout=0.1
    ),
    data=DataConfig(
      corpus="shakespeare", tokenizer="char", seq_len=32, batch_size=8, max_chars=200_000
    ),
    optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3, warmup_steps=2),
    train=TrainConfig(
      steps=6,
      eval_every=3,
      eval_batches=2,
      log_every=1,
      checkpoint_every=3,
      progress=False,
      run_dir=str(run_dir),
    ),
  )
  for name, overrides in sections.items():
    config = dataclasses.replace(
      config, **{name: dataclasses.replace(getattr(config, name), **overrides)}
    )
  return config


@pytest.fixture(scope="session")
def tiny_data():
  return load_text_data("shakespeare", tokenizer="char", max_chars=200_000)


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  """``python -m homeo_jax.train ARGS`` in a subprocess, output captured."""
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  return subprocess.run(
    [sys.executable, "-m", "homeo_jax.train", *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


def assert_script_passes_on_fake_devices(script: str, devices: int = 4) -> None:
  """Run ``script`` in a fresh interpreter with ``devices`` fake CPU devices; it must print ok.

  XLA reads the device count once at start-up, so mesh tests need their own process.
  """
  env = {
    **os.environ,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    "JAX_PLATFORMS": "cpu",
  }
  proc = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
  )
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
