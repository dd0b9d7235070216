"""FLOPs, device peaks and model FLOPs utilization (MFU).

* ``step_cost(lowered)``: FLOPs and bytes of one train step from XLA's cost analysis of
  the lowered (global, unpartitioned) program — no compilation needed.
* ``analytic_flops(...)``: the PaLM count, 6·N·tokens for the matmuls (forward and
  backward) plus 12·L·d·T·tokens for attention's scores and values, the cross-check.
* ``device_peak(device)``: dense bfloat16 peak FLOP/s of an accelerator from a table of
  vendor figures, or for a CPU host a peak measured once with a float32 matmul probe and
  cached under ``$HOMEO_JAX_CACHE``.
* MFU = step FLOPs / step seconds / (peak per device · devices).
* ``forward_flops_per_token(cfg, seq_len, passes)``: an adaptive-depth (Ouro-Spec)
  model's forward FLOPs per token at the passes it executed, for compute frontiers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Accelerator:
  name: str
  peak_flops: float  # dense bfloat16 FLOP/s per chip
  hbm_bytes: float
  hbm_bandwidth: float  # bytes/s
  kinds: tuple[str, ...]  # substrings of jax's device_kind that name it


# Vendor figures (dense bf16; NVIDIA SXM parts; Cloud TPU docs per chip).
ACCELERATORS = (
  Accelerator("H100", 989e12, 80e9, 3.35e12, ("H100",)),
  Accelerator("H200", 989e12, 141e9, 4.8e12, ("H200",)),
  Accelerator("A100", 312e12, 80e9, 2.039e12, ("A100",)),
  Accelerator("TPU v5e", 197e12, 16e9, 819e9, ("TPU v5 lite", "TPU v5e")),
  Accelerator("TPU v5p", 459e12, 95e9, 2.765e12, ("TPU v5p", "TPU v5")),
  Accelerator("TPU v4", 275e12, 32e9, 1.2e12, ("TPU v4",)),
)
PLANNED = ("H100", "A100", "TPU v5e", "TPU v5p")  # what ``homeo_jax.plan`` estimates for


def accelerator(name_or_kind: str) -> Accelerator | None:
  for acc in ACCELERATORS:
    if name_or_kind == acc.name or any(k in name_or_kind for k in acc.kinds):
      return acc
  return None


def step_cost(lowered: jax.stages.Lowered) -> dict[str, float]:
  """{"flops", "bytes"} of the lowered program (XLA's HLO cost analysis)."""
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}


def analytic_flops(
  num_params: int, unused_params: float, num_layers: int, d_model: int, seq_len: int, tokens: int
) -> float:
  """6·(N − parameters a token does not multiply by)·tokens + 12·L·d·T·tokens (PaLM,
  appendix B): a train step's matmul FLOPs, forward and backward, with a tied head counted
  once as a matmul. ``unused_params``: lookups (position table), experts not chosen."""
  matmul_params = num_params - unused_params
  return 6.0 * matmul_params * tokens + 12.0 * num_layers * d_model * seq_len * tokens


def cpu_peak_flops(n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of the best of ``repeats`` float32 ``n × n`` matmuls on the default CPU
  device(s) together (2·n³ per matmul), cached per machine and jax version."""
  key = f"{platform.machine()}-{platform.processor()}-{os.cpu_count()}-{jax.__version__}"
  key += f"-{jax.device_count()}"
  path = _cache_path()
  cached = _read_json(path)
  if key in cached:
    return float(cached[key])
  devices = jax.devices()
  matmul = jax.jit(lambda a, b: a @ b)
  xs = [jax.device_put(jnp.ones((n, n), jnp.float32), d) for d in devices]
  jax.block_until_ready([matmul(x, x) for x in xs])
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready([matmul(x, x) for x in xs])
    best = min(best, time.perf_counter() - start)
  peak = 2.0 * n**3 * len(devices) / best
  cached[key] = peak
  try:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(cached, indent=1))
    os.replace(tmp, path)
  except OSError:
    pass  # an unwritable cache only costs a re-measurement
  return peak


def device_peak(device: Any = None) -> tuple[float | None, str]:
  """(peak FLOP/s of all local devices together, where the figure comes from); None
  when the device kind is not in the table."""
  device = device or jax.devices()[0]
  count = jax.local_device_count()
  if device.platform == "cpu":
    return cpu_peak_flops(), "float32 matmul probe"
  acc = accelerator(device.device_kind)
  if acc is None:
    return None, f"unknown device kind {device.device_kind!r}"
  return acc.peak_flops * count, f"{acc.name} dense bf16 peak × {count}"


def _cache_path():
  from homeo_jax.data.tokenizers import cache_dir

  return cache_dir() / "device_peaks.json"


def _read_json(path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


def forward_flops_per_token(
  cfg: Any, seq_len: int, passes: float | list[float], semantic_dim: int = 0
) -> float:
  """Matmul FLOPs (2·MACs) of one token's forward pass through an adaptive-depth model
  (``models.adaptive.AdaptiveConfig``), given the passes it runs per
  layer (a number, or one per layer). Attention is counted over all ``seq_len`` keys, as
  the implementation computes it (the causal mask does not skip work); the gate is
  negligible (< 0.1%) and left out. Keys/values are computed once per layer, or for every
  pass with ``kv_per_pass``."""
  d, ff = cfg.d_model, cfg.ff_dim
  per_layer = passes if isinstance(passes, list) else [passes] * cfg.num_layers
  per_pass = 4 * d * d + 4 * seq_len * d + 4 * d * ff  # q, out; scores + values; FFN
  kv = 4 * d * d
  if getattr(cfg, "kv_per_pass", False):
    per_pass, kv = per_pass + kv, 0.0
  return float(sum(kv + k * per_pass for k in per_layer) + 2 * d * cfg.vocab_size) + (
    2.0 * semantic_dim * d
  )
