"""FLOPs from XLA's cost analysis against hand counts, device peaks, MFU in a run, the planner."""

import json

import jax
import jax.numpy as jnp
import pytest

from homeo_jax import plan as plan_lib
from homeo_jax.training import flops
from homeo_jax.training.config import apply_overrides, load_config
from homeo_jax.training.loop import train
from tests.conftest import tiny_config


def test_cost_analysis_counts_a_matmul_exactly():
  a = jax.ShapeDtypeStruct((8, 16), jnp.float32)
  b = jax.ShapeDtypeStruct((16, 4), jnp.float32)
  cost = flops.step_cost(jax.jit(lambda a, b: a @ b).lower(a, b))
  assert cost["flops"] == 2 * 8 * 16 * 4


def test_analytic_count_by_hand():
  # N = 1,000 parameters of which 100 a lookup; 2 layers, d 8, T 4, 40 tokens
  assert flops.analytic_flops(1000, 100, 2, 8, 4, 40) == 6 * 900 * 40 + 12 * 2 * 8 * 4 * 40


@pytest.mark.parametrize(
  "kind, name",
  [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA A100-SXM4-80GB", "A100"),
   ("TPU v5 lite", "TPU v5e"), ("TPU v5p", "TPU v5p"), ("NVIDIA H200", "H200")],
)  # fmt: skip
def test_accelerators_by_device_kind(kind, name):
  assert flops.accelerator(kind).name == name
  assert flops.accelerator("Quantum Fridge 9000") is None


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("HOMEO_JAX_CACHE", str(tmp_path))
  first = flops.cpu_peak_flops(n=128, repeats=2)
  assert first > 1e8  # any CPU does 0.1 GFLOP/s
  cached = json.loads((tmp_path / "device_peaks.json").read_text())
  assert list(cached.values()) == [first]
  assert flops.cpu_peak_flops(n=128, repeats=2) == first


@pytest.mark.slow
def test_a_run_reports_mfu_from_its_step_flops(tmp_path):
  train(tiny_config(tmp_path, train={"steps": 3, "eval_every": 3}))
  stats = json.loads((tmp_path / "stats.json").read_text())
  peak, _ = flops.device_peak()
  assert stats["peak_flops"] == pytest.approx(peak)
  mfu = stats["tokens_per_second"] / (8 * 32) * stats["flops_per_step"] / peak
  assert stats["mfu"] == pytest.approx(mfu, rel=1e-6) and 0 < stats["mfu"] < 1
  assert "model FLOPs utilization" in (tmp_path / "report.md").read_text()


@pytest.fixture(scope="module")
def smoke_plan():
  config = apply_overrides(load_config("configs/shakespeare_char.py:smoke"), [])
  return plan_lib.plan(config), config


def test_plan_matches_the_analytic_count_and_the_state_size(smoke_plan):
  p, config = smoke_plan
  assert p.tokens_per_step == 8 * 32 and p.steps == config.train.steps
  # the rest is elementwise work (norms, softmax, GELU, AdamW): 7% at width 32
  assert 1.0 < p.flops_per_step / p.analytic_flops < 1.1
  # AdamW: parameters, two moments, plus a few scalars (step, key, counters)
  assert 3 * 4 * p.num_params <= p.state_bytes < 3 * 4 * p.num_params + 4096
  assert p.peak_bytes > p.state_bytes


def test_plan_mesh_when_it_does_not_fit(smoke_plan):
  p, _ = smoke_plan
  big = plan_lib.Plan(**{**vars(p), "peak_bytes": 100e9})
  assert plan_lib.devices_needed(big, 80e9) == 2
  assert plan_lib.devices_needed(big, 16e9) == 8
  text = plan_lib.format_plan(big, 0.4)
  assert "| H100 | no: mesh.fsdp=2 (2 devices) |" in text
  step_ms = p.flops_per_step / (989e12 * 0.4) * 1000
  assert f"| H100 | yes | {step_ms:.3g} |" in plan_lib.format_plan(p, 0.4)


def test_plan_cli_names_a_bad_value(capsys):
  assert plan_lib.main(["--config", "configs/shakespeare_char.py:smoke", "--mfu", "2"]) == 2
  assert "--mfu must be in (0, 1], got 2.0" in capsys.readouterr().err


@pytest.mark.slow
def test_plan_keeps_buffers_abstract_too():
  """The adaptive model's hybrid Fourier table is a non-parameter variable: planned too."""
  config = apply_overrides(
    load_config("configs/ouro_spec.py:tiny"),
    ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "data.batch_size=2"],
  )
  p = plan_lib.plan(config)
  assert p.flops_per_step > p.analytic_flops  # extra passes beyond the one-pass count


@pytest.mark.parametrize("kv_per_pass", [False, True])
def test_adaptive_forward_flops_count_keys_values_once_or_per_pass(kv_per_pass):
  from homeo_jax.models.adaptive_layer import AdaptiveConfig

  cfg = AdaptiveConfig(
    vocab_size=10, num_layers=2, d_model=8, d_ff=16, ffn="mlp", kv_per_pass=kv_per_pass
  )
  # by hand, per pass: q + out 4·64, scores + values 4·32·8, FFN 4·8·16; keys/values 4·64
  per_pass, kv = 256 + 1024 + 512, 256
  head = 2 * 8 * 10
  layers = [1.0, 3.0]
  expected = sum((k * (per_pass + kv) if kv_per_pass else kv + k * per_pass) for k in layers)
  assert flops.forward_flops_per_token(cfg, 32, layers) == pytest.approx(expected + head)
