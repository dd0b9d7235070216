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
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from homeo_jax.cores.quantize import LEVELS, SCALES, quantize
from homeo_jax.models import roles
from homeo_jax.models.layers import TransformerConfig, read_control
from homeo_jax.models.transformer import Transformer

__all__ = ["LEVELS", "SCALES", "QuantTransformer", "QuantTransformerConfig", "quantize"]


@dataclasses.dataclass(frozen=True)
class QuantTransformerConfig(TransformerConfig):
  levels: str = "2bit"
  scale: str = "channel"  # absmean over each output channel, or the whole matrix ("tensor")
  base_temperature: float = 0.1
  temperature_from: str = ""  # regulator publishing quant_temperature ("": none)
  # False: training differentiates the soft staircase itself (what a meta-gradient through
  # training needs, experiments/thyroid_meta.py) instead of passing gradients straight through.
  straight_through: bool = True

  def validate(self, prefix: str = "model") -> None:
    super().validate(prefix)
    if self.levels not in LEVELS:
      raise ValueError(f"{prefix}.levels must be one of {tuple(LEVELS)}, got {self.levels!r}")
    if self.scale not in SCALES:
      raise ValueError(f"{prefix}.scale must be one of {SCALES}, got {self.scale!r}")
    if not self.base_temperature > 0:
      raise ValueError(f"{prefix}.base_temperature must be > 0, got {self.base_temperature}")


def is_quantized(path, x) -> bool:
  """Attention and MLP matrices (the one parameter rule, ``models/roles.py``)."""
  return roles.is_quantized(roles.param_role(jax.tree_util.keystr(path), jnp.ndim(x)), jnp.ndim(x))


def quantized_mask(params: Any) -> Any:
  """True at the leaves the quantized LM stores in low bits."""
  return jax.tree_util.tree_map_with_path(is_quantized, params)


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
