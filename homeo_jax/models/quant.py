"""2-bit (or ternary) weight quantization with a temperature, and the quantized LM.

For a weight matrix W with absmean scale γ = mean|W| (BitNet b1.58), per output channel
(``scale="channel"``, the default) or one for the whole matrix (``scale="tensor"``, as
BitNet b1.58 itself), and x = W/γ:

* hard 2-bit (``levels="2bit"``): q(x) = clip(⌊x⌋ + ½, −1.5, 1.5), the 4 levels
  {−1.5, −0.5, 0.5, 1.5}; ternary (``levels="ternary"``): q(x) = clip(round(x), −1, 1).
* soft, temperature τ: the staircase written as a sum of sigmoids at its steps b,
  q_τ(x) = q_min + Σ_b σ((x − b)/τ). τ → 0 recovers the hard staircase exactly; larger
  τ rounds more softly (τ = 1 is a gentle ramp).

Training uses W_q = γ·(x + stop_gradient(q_τ(x) − x)): the forward value is the soft
quantization at temperature τ, the backward pass is straight-through (identity), so
gradients reach W however hard the rounding is. Evaluation uses the hard levels.

τ = ``base_temperature`` · the ``quant_temperature`` control of the regulator named by
``temperature_from`` (the Spectral Thyroid's τ multiplier, e.g. ``"thyroid"``); with
``temperature_from=""`` (the default) the model reads no control and τ = ``base_temperature``.

Which weights: the attention and MLP matrices (roles ``attention`` and ``mlp`` of the one
parameter rule, ``models/roles.py``); embeddings, norms and the (tied) head stay in float,
as in BitNet. ``qwix`` does int2
by round+clip with a clipped STE but has no temperature hook or absmean calibration, so
this ~40-line transform is written here instead.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from homeo_jax.models import roles
from homeo_jax.models.layers import TransformerConfig, read_control
from homeo_jax.models.transformer import Transformer
from homeo_jax.regulators.base import RegulatorSpec, regulator_spec

LEVELS = {
  "2bit": (-1.5, (-1.0, 0.0, 1.0)),  # (lowest level, step positions)
  "ternary": (-1.0, (-0.5, 0.5)),
}


SCALES = ("channel", "tensor")


@dataclasses.dataclass(frozen=True)
class QuantTransformerConfig(TransformerConfig):
  levels: str = "2bit"
  scale: str = "channel"  # absmean over each output channel, or the whole matrix ("tensor")
  base_temperature: float = 0.1
  temperature_from: str = ""  # regulator publishing quant_temperature ("": none)
  # False: training differentiates the soft staircase itself (what a meta-gradient through
  # training needs, regulators/thyroid_meta.py) instead of passing gradients straight through.
  straight_through: bool = True

  def validate(self, prefix: str = "model") -> None:
    super().validate(prefix)
    if self.levels not in LEVELS:
      raise ValueError(f"{prefix}.levels must be one of {tuple(LEVELS)}, got {self.levels!r}")
    if self.scale not in SCALES:
      raise ValueError(f"{prefix}.scale must be one of {SCALES}, got {self.scale!r}")
    if not self.base_temperature > 0:
      raise ValueError(f"{prefix}.base_temperature must be > 0, got {self.base_temperature}")


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


def is_quantized(path, x) -> bool:
  """Attention and MLP matrices (the one parameter rule, ``models/roles.py``)."""
  return roles.is_quantized(roles.param_role(jax.tree_util.keystr(path), jnp.ndim(x)), jnp.ndim(x))


class QuantTransformer(Transformer):
  """The baseline LM with its block matrices quantized (soft + STE in training, hard in eval)."""

  def control_reads(self) -> tuple[tuple[str, str], ...]:
    source = self.cfg.temperature_from
    return ((source, "quant_temperature"),) if source else ()

  def decoder(self) -> QuantTransformer:
    """A copy holding the hard-quantized weights (what evaluation runs), quantized once
    rather than at every generated token; its ``decode_step`` uses them as they are."""
    return self._quantized(temperature=None)

  def _quantized(self, temperature) -> QuantTransformer:
    graphdef, state = nnx.split(self)
    cfg = self.cfg

    def quantized_leaf(path, w):
      if not is_quantized(path, w):
        return w
      return quantize(w, temperature, cfg.levels, cfg.straight_through, cfg.scale)

    quantized = jax.tree_util.tree_map_with_path(quantized_leaf, state)
    return nnx.merge(graphdef, quantized)

  def __call__(self, tokens, *, controls=None, deterministic=True, rngs=None):
    cfg = self.cfg
    temperature = None
    if not deterministic:
      temperature = cfg.base_temperature
      if cfg.temperature_from:
        temperature = temperature * read_control(
          controls, cfg.temperature_from, "quant_temperature"
        )
    model = self._quantized(temperature)
    return Transformer.__call__(
      model, tokens, controls=controls, deterministic=deterministic, rngs=rngs
    )


class FlipState(NamedTuple):
  logged_fields = ("flip_rate",)

  spec: RegulatorSpec  # static: the instance name of its metric
  flip_rate: jax.Array  # shape=(), float32: share of quantized weights whose level changed


def level_flip_monitor(
  levels: str = "2bit", name: str = "quant", scale: str = "channel"
) -> optax.GradientTransformation:
  """Logs the weight level-flip rate: the share of the quantized matrices' weights whose
  hard level (after absmean scaling) differs between ``params`` and ``params + updates``;
  ``levels`` and ``scale`` must be the model's.

  Updates pass through unchanged; chain it last, after the optimizer (it must see the
  final updates). A burst of flips coinciding with a loss spike is a quantization cliff.
  """

  spec = regulator_spec("flip_monitor", name)

  def init_fn(params):
    del params
    return FlipState(spec=spec, flip_rate=jnp.zeros((), jnp.float32))

  def update_fn(updates, state, params=None):
    del state
    if params is None:
      raise ValueError("level_flip_monitor needs params")

    def count(path, p, u):
      if not is_quantized(path, p):
        return jnp.zeros((2,))
      new = p + u
      before = hard_levels(p / absmean_scale(p, scale), levels)
      after = hard_levels(new / absmean_scale(new, scale), levels)
      return jnp.array([jnp.sum(before != after), p.size], jnp.float32)

    counts = jax.tree_util.tree_map_with_path(count, params, updates)
    flips, total = sum(jax.tree.leaves(counts), jnp.zeros((2,)))
    return updates, FlipState(spec=spec, flip_rate=flips / jnp.maximum(total, 1.0))

  return optax.GradientTransformation(init_fn, update_fn)
