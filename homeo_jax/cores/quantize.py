"""Low-bit weight levels: absmean scaling, the hard and the soft (temperature) staircase.

For a weight matrix W with absmean scale γ = mean|W| (BitNet b1.58), per output channel
(``scale="channel"``) or for the whole matrix (``scale="tensor"``), and x = W/γ: hard 2-bit
levels q(x) = clip(⌊x⌋ + ½, −1.5, 1.5), ternary q(x) = clip(round(x), −1, 1); the soft
staircase at temperature τ, q_τ(x) = q_min + Σ_b σ((x − b)/τ) over its steps b. The
quantized LM (``models/quant.py``) and the level-flip monitor
(``regulators/flip_monitor.py``) both use these.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LEVELS = {
  "2bit": (-1.5, (-1.0, 0.0, 1.0)),  # (lowest level, step positions)
  "ternary": (-1.0, (-0.5, 0.5)),
}
SCALES = ("channel", "tensor")


def absmean_scale(w: jax.Array, scale: str = "channel") -> jax.Array:
  """γ = mean|W| over the input axis (``[1, out]``) or the whole matrix (``[1, 1]``)."""
  axis = 0 if scale == "channel" else None
  return jnp.maximum(jnp.mean(jnp.abs(w), axis=axis, keepdims=True), 1e-8)


def hard_levels(x: jax.Array, levels: str = "2bit") -> jax.Array:
  if levels == "ternary":
    return jnp.clip(jnp.round(x), -1.0, 1.0)
  return jnp.clip(jnp.floor(x) + 0.5, -1.5, 1.5)


def soft_levels(x: jax.Array, temperature: jax.Array, levels: str = "2bit") -> jax.Array:
  lowest, steps = LEVELS[levels]
  return lowest + sum(jax.nn.sigmoid((x - b) / temperature) for b in steps)


def quantize(
  w: jax.Array,
  temperature: jax.Array | None,
  levels: str = "2bit",
  straight_through: bool = True,
  scale: str = "channel",
) -> jax.Array:
  """Quantized W: hard levels when ``temperature`` is None, else soft.

  The soft value's gradient is straight-through (identity) by default; with
  ``straight_through=False`` it is the soft staircase's true derivative (what a
  meta-gradient through the forward must use).
  """
  gamma = absmean_scale(w, scale)
  x = w / gamma
  if temperature is None:
    return hard_levels(x, levels) * gamma
  q = soft_levels(x, temperature, levels)
  if not straight_through:
    return q * gamma
  return (x + jax.lax.stop_gradient(q - x)) * gamma
