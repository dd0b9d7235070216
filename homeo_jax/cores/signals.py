"""Scalar-signal primitives shared by every regulator: ring buffer, EMA, autocorrelation,
spectral resonance.

All are pure functions over small NamedTuple states with static shapes, safe under jit
and ``lax.scan``. A value is pushed only when ``valid`` (by default: finite), so a NaN
or Inf loss never enters a regulator's statistics.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


def tree_all_finite(tree: Any) -> jax.Array:
  """True when every floating-point leaf of ``tree`` is finite (one fused reduction)."""
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class RingBuffer(NamedTuple):
  values: jax.Array  # shape=(window,), float32: the last `window` valid values
  count: jax.Array  # shape=(), int32: valid values pushed so far (saturating)


def ring_init(window: int) -> RingBuffer:
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  return RingBuffer(values=jnp.zeros((window,), jnp.float32), count=jnp.zeros((), jnp.int32))


def ring_push(buffer: RingBuffer, value: jax.Array, valid: jax.Array | None = None) -> RingBuffer:
  """Append ``value`` (overwriting the oldest) unless ``valid`` is False or it is non-finite."""
  value = jnp.asarray(value, jnp.float32)
  ok = jnp.isfinite(value) if valid is None else jnp.logical_and(valid, jnp.isfinite(value))
  window = buffer.values.shape[0]
  slot = buffer.count % window
  values = buffer.values.at[slot].set(jnp.where(ok, value, buffer.values[slot]))
  count = jnp.where(ok, jnp.minimum(buffer.count, jnp.iinfo(jnp.int32).max - 1) + 1, buffer.count)
  return RingBuffer(values=values, count=count)


def ring_size(buffer: RingBuffer) -> jax.Array:
  """Number of valid values held: min(count, window)."""
  return jnp.minimum(buffer.count, buffer.values.shape[0])


def ring_ordered(buffer: RingBuffer) -> tuple[jax.Array, jax.Array]:
  """(values oldest→newest, mask of valid entries); valid entries come first."""
  window = buffer.values.shape[0]
  shift = jnp.where(buffer.count >= window, buffer.count % window, 0)
  ordered = jnp.roll(buffer.values, -shift)
  return ordered, jnp.arange(window) < ring_size(buffer)


def lag1_autocorrelation(buffer: RingBuffer) -> jax.Array:
  """Pearson correlation of the window against itself shifted by one step.

  Computed over the valid values only; 0 when fewer than 3 values are held or when
  either shifted series has zero variance (a constant window), never NaN.
  """
  x, mask = ring_ordered(buffer)
  pair = jnp.logical_and(mask[:-1], mask[1:]).astype(jnp.float32)
  n = jnp.sum(pair)
  a, b = x[:-1], x[1:]
  denom = jnp.maximum(n, 1.0)
  mean_a = jnp.sum(a * pair) / denom
  mean_b = jnp.sum(b * pair) / denom
  da, db = (a - mean_a) * pair, (b - mean_b) * pair
  var_a, var_b = jnp.sum(da * da), jnp.sum(db * db)
  cov = jnp.sum(da * db)
  scale = jnp.sqrt(var_a * var_b)
  # Zero variance: relative to the values' magnitude, so rounding noise counts as constant.
  tiny = 1e-12 * (1.0 + jnp.sum(jnp.abs(x) * mask) / denom) ** 2 * denom
  defined = jnp.logical_and(n >= 2, jnp.minimum(var_a, var_b) > tiny)
  rho = jnp.where(defined, cov / jnp.where(defined, scale, 1.0), 0.0)
  return jnp.clip(rho, -1.0, 1.0)


def spectral_resonance(
  buffer: RingBuffer,
  *,
  min_values: int = 16,
  trend_order: int = 3,
  min_cycles: float = 4.0,
  floor: float = 1e-3,
) -> jax.Array:
  """How much of the window's detrended variation is one oscillation, in [0, 1].

  Over the n valid values: subtract a least-squares polynomial of degree ``trend_order``
  (the trend: a decaying loss), taper with a Hann window, and take the power spectrum of
  frequencies with at least ``min_cycles`` cycles in the window (slower ones are trend).
  The result is the largest power in three adjacent bins (a tapered sinusoid's main lobe)
  over the total power plus a floor for oscillations below ``floor`` × the mean |value|
  (a noiseless curve's fitting residue is not a resonance). A pure oscillation gives ≈ 1;
  white noise about 0.2; a smooth decay, with or without noise, about 0.05–0.2. 0 until
  ``min_values`` values are held.
  """
  x, mask = ring_ordered(buffer)
  window = x.shape[0]
  n = ring_size(buffer).astype(jnp.float32)
  w = mask.astype(jnp.float32)
  i = jnp.arange(window, dtype=jnp.float32)
  t = jnp.where(mask, 2.0 * i / jnp.maximum(n - 1.0, 1.0) - 1.0, 0.0)
  basis = jnp.stack([t**d for d in range(trend_order + 1)], axis=1) * w[:, None]
  gram = basis.T @ basis + 1e-9 * jnp.eye(trend_order + 1)
  coef = jnp.linalg.solve(gram, basis.T @ (x * w))
  residual = (x - basis @ coef) * w
  hann = jnp.where(mask, 0.5 - 0.5 * jnp.cos(2.0 * jnp.pi * i / jnp.maximum(n - 1.0, 1.0)), 0.0)
  power = jnp.abs(jnp.fft.rfft(residual * hann)) ** 2
  # Bin k of the length-`window` transform holds k·n/window cycles of the n values.
  cycles = jnp.arange(power.shape[0], dtype=jnp.float32) * n / window
  power = jnp.where(cycles >= min_cycles, power, 0.0)
  lobe = power + jnp.roll(power, 1).at[0].set(0.0) + jnp.roll(power, -1).at[-1].set(0.0)
  level = jnp.sum(jnp.abs(x) * w) / jnp.maximum(n, 1.0)
  noise_floor = (floor * level) ** 2 * jnp.sum(hann**2)
  share = jnp.max(lobe) / (jnp.sum(power) + noise_floor + 1e-30)
  return jnp.where(n >= min_values, jnp.clip(share, 0.0, 1.0), 0.0)


class EMA(NamedTuple):
  value: jax.Array  # shape=(...), float32: biased running average
  count: jax.Array  # shape=(), int32: valid updates so far


def ema_init(shape: tuple[int, ...] = ()) -> EMA:
  return EMA(value=jnp.zeros(shape, jnp.float32), count=jnp.zeros((), jnp.int32))


def ema_update(ema: EMA, x: jax.Array, decay: float, valid: jax.Array | None = None) -> EMA:
  """value ← decay·value + (1 − decay)·x, skipped where x is non-finite or not ``valid``."""
  x = jnp.asarray(x, jnp.float32)
  ok = jnp.all(jnp.isfinite(x))
  ok = ok if valid is None else jnp.logical_and(ok, valid)
  new = decay * ema.value + (1.0 - decay) * jnp.where(ok, x, 0.0)
  return EMA(value=jnp.where(ok, new, ema.value), count=ema.count + ok.astype(jnp.int32))


def ema_debiased(ema: EMA, decay: float) -> jax.Array:
  """The bias-corrected average (Adam-style); 0 before the first valid update."""
  correction = 1.0 - jnp.power(decay, ema.count.astype(jnp.float32))
  return jnp.where(ema.count > 0, ema.value / jnp.where(ema.count > 0, correction, 1.0), 0.0)
