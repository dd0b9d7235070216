"""2-bit (or ternary) weight quantization with a temperature, and the quantized LM.

For a weight matrix W with per-output-channel absmean scale γ = mean|W| (BitNet b1.58)
and x = W/γ:

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


@dataclasses.dataclass(frozen=True)
class QuantTransformerConfig(TransformerConfig):
  levels: str = "2bit"
  base_temperature: float = 0.1
  temperature_from: str = ""  # regulator publishing quant_temperature ("": none)

  def validate(self, prefix: str = "model") -> None:
    super().validate(prefix)
    if self.levels not in LEVELS:
      raise ValueError(f"{prefix}.levels must be one of {tuple(LEVELS)}, got {self.levels!r}")
    if not self.base_temperature > 0:
      raise ValueError(f"{prefix}.base_temperature must be > 0, got {self.base_temperature}")


def absmean_scale(w: jax.Array) -> jax.Array:
  """Per-output-channel γ = mean|W| over the input axis, ``[1, out]``."""
  return jnp.maximum(jnp.mean(jnp.abs(w), axis=0, keepdims=True), 1e-8)


def hard_levels(x: jax.Array, levels: str = "2bit") -> jax.Array:
  if levels == "ternary":
    return jnp.clip(jnp.round(x), -1.0, 1.0)
  return jnp.clip(jnp.floor(x) + 0.5, -1.5, 1.5)


def soft_levels(x: jax.Array, temperature: jax.Array, levels: str = "2bit") -> jax.Array:
  lowest, steps = LEVELS[levels]
  return lowest + sum(jax.nn.sigmoid((x - b) / temperature) for b in steps)


def quantize(
  w: jax.Array, temperature: jax.Array | None, levels: str = "2bit", straight_through: bool = True
) -> jax.Array:
  """Quantized W: hard levels when ``temperature`` is None, else soft.

  The soft value's gradient is straight-through (identity) by default; with
  ``straight_through=False`` it is the soft staircase's true derivative (what a
  meta-gradient through the forward must use).
  """
  scale = absmean_scale(w)
  x = w / scale
  if temperature is None:
    return hard_levels(x, levels) * scale
  q = soft_levels(x, temperature, levels)
  if not straight_through:
    return q * scale
  return (x + jax.lax.stop_gradient(q - x)) * scale


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
    quantized = jax.tree_util.tree_map_with_path(
      lambda p, w: quantize(w, temperature, self.cfg.levels) if is_quantized(p, w) else w, state
    )
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


def level_flip_monitor(levels: str = "2bit", name: str = "quant") -> optax.GradientTransformation:
  """Logs the weight level-flip rate: the share of the quantized matrices' weights whose
  hard level (after absmean scaling) differs between ``params`` and ``params + updates``.

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
      before = hard_levels(p / absmean_scale(p), levels)
      after = hard_levels(new / absmean_scale(new), levels)
      return jnp.array([jnp.sum(before != after), p.size], jnp.float32)

    counts = jax.tree_util.tree_map_with_path(count, params, updates)
    flips, total = sum(jax.tree.leaves(counts), jnp.zeros((2,)))
    return updates, FlipState(spec=spec, flip_rate=flips / jnp.maximum(total, 1.0))

  return optax.GradientTransformation(init_fn, update_fn)
