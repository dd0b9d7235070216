"""Level-flip monitor: the share of low-bit weights whose quantization level an update changes.

A burst of flips coinciding with a loss spike is a quantization cliff (the 2-bit experiment,
``experiments/thyroid_2bit.py``, logs it for every run). Updates pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from homeo_jax.cores.quantize import absmean_scale, hard_levels
from homeo_jax.regulators.base import RegulatorSpec, regulator_spec


class FlipState(NamedTuple):
  logged_fields = ("flip_rate",)

  spec: RegulatorSpec  # static: the instance name of its metric
  flip_rate: jax.Array  # shape=(), float32: share of quantized weights whose level changed


def level_flip_monitor(
  levels: str = "2bit",
  name: str = "quant",
  scale: str = "channel",
  *,
  mask: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
  """Logs the weight level-flip rate: the share of the quantized matrices' weights whose
  hard level (after absmean scaling) differs between ``params`` and ``params + updates``;
  ``levels`` and ``scale`` must be the model's, ``mask(params)`` is True at its quantized
  leaves (``models.quant.quantized_mask``; default: every matrix).

  Chain it last, after the optimizer (it must see the final updates).
  """

  spec = regulator_spec("flip_monitor", name)

  def init_fn(params):
    del params
    return FlipState(spec=spec, flip_rate=jnp.zeros((), jnp.float32))

  def update_fn(updates, state, params=None):
    del state
    if params is None:
      raise ValueError("level_flip_monitor needs params")
    quantized = mask(params) if mask is not None else jax.tree.map(lambda p: p.ndim == 2, params)

    def count(p, u, q):
      if not q:
        return jnp.zeros((2,))
      new = p + u
      before = hard_levels(p / absmean_scale(p, scale), levels)
      after = hard_levels(new / absmean_scale(new, scale), levels)
      return jnp.array([jnp.sum(before != after), p.size], jnp.float32)

    counts = jax.tree.map(count, params, updates, quantized)
    flips, total = sum(jax.tree.leaves(counts), jnp.zeros((2,)))
    return updates, FlipState(spec=spec, flip_rate=flips / jnp.maximum(total, 1.0))

  return optax.GradientTransformation(init_fn, update_fn)
