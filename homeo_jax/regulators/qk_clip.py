"""QK-clip: cap each attention head's largest logit by rescaling its query and key weights.

The "MuonClip" of the Kimi K2 technical report (arXiv 2507.20534). The model reports, per
layer l and head h, the largest attention logit of the step's forward,
S_max^{l,h} = max over the batch and causal positions of q·k/√d (telemetry
``attn_head_logit_max``, ``[layers, heads]``). After the inner optimizer's update, every head
whose logit went over the threshold τ has its weights rescaled:

    η = τ / S_max^{l,h}   where S_max^{l,h} > τ, else 1
    W_q^{l,h} ← η^α · W_q^{l,h},      W_k^{l,h} ← η^(1−α) · W_k^{l,h}

so the same inputs would give that head a largest logit of exactly τ (the logit is bilinear
in W_q and W_k). As an optax transform the rescale is an update: it returns
u' = (W + u)·s − W, with s the per-column scale, so ``optax.apply_updates`` lands on the
rescaled weights. It goes last in a chain (after the optimizer, any other update change) and
works with any inner optimizer. K2: τ = 100, α = ½; the clip acts early and goes quiet once
the logits stay below τ.

Where the queries and keys are among the parameters comes from ``columns(params)``: a dict
``{leaf path: (layer, query offset, key offset, width)}`` (``models/roles.py:
query_key_columns``, which knows the fused qkv layout). A non-finite logit rescales nothing.
Logged: ``clipped_heads`` (heads rescaled this step), ``max_logit`` (the largest seen) and
``min_scale`` (the smallest η, 1 when nothing was clipped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from homeo_jax.regulators import registry
from homeo_jax.regulators.base import RegulatorSpec, check, fresh, read_telemetry, regulator_spec

TELEMETRY = "attn_head_logit_max"


class QKClipState(NamedTuple):
  spec: RegulatorSpec  # static: name, telemetry read
  clipped_heads: jax.Array  # shape=(), int32: heads rescaled this step
  max_logit: jax.Array  # shape=(), float32: the largest attention logit this step
  min_scale: jax.Array  # shape=(), float32: the smallest η applied this step

  logged_fields = ("clipped_heads", "max_logit", "min_scale")


def head_scales(logit_max: jax.Array, threshold: float, alpha: float) -> tuple[jax.Array, ...]:
  """(η, query scale η^α, key scale η^(1−α)), each ``[layers, heads]``; η = 1 where the
  logit is at most τ or not finite."""
  over = jnp.isfinite(logit_max) & (logit_max > threshold)
  eta = jnp.where(over, threshold / jnp.where(over, logit_max, 1.0), 1.0)
  return eta, eta**alpha, eta ** (1.0 - alpha)


def _column_scale(cols: Any, out: int, q_scale: jax.Array, k_scale: jax.Array) -> jax.Array:
  """``[out]``: one per output column, the head's query or key scale where it has one."""
  layer, query, key, width = cols
  heads = q_scale.shape[-1]
  if width % heads:
    raise ValueError(f"qk_clip: {width} query/key columns do not split into {heads} heads")
  per_head = width // heads
  scale = jnp.ones((out,), jnp.float32)
  if query >= 0:
    scale = scale.at[query : query + width].set(jnp.repeat(q_scale[layer], per_head))
  if key >= 0:
    scale = scale.at[key : key + width].set(jnp.repeat(k_scale[layer], per_head))
  return scale


def qk_clip(
  threshold: float = 100.0,
  alpha: float = 0.5,
  *,
  columns: Callable[[Any], Mapping[str, Any]],
  name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Rescale the query and key weights of every head whose logit exceeded ``threshold``.

  Args:
    threshold: τ, the largest attention logit a head may keep (100, > 0).
    alpha: the share of the rescale taken by the queries (½, in [0, 1]).
    columns: ``params -> {leaf path: (layer, query, key, width)}``, where each layer's
      per-head queries and keys sit among a kernel's output (last-axis) columns.
    name: instance name of its metrics (``"qk_clip"``).
  """
  kind = "qk_clip"
  check(kind, "threshold", threshold, lambda v: v > 0, "> 0")
  check(kind, "alpha", alpha, lambda v: 0 <= v <= 1, "in [0, 1]")
  spec = regulator_spec(kind, name, reads=(TELEMETRY,))

  def init_fn(params):
    del params
    return QKClipState(
      spec=spec,
      clipped_heads=fresh(0, jnp.int32),
      max_logit=fresh(0.0, jnp.float32),
      min_scale=fresh(1.0, jnp.float32),
    )

  def update_fn(updates, state: QKClipState, params=None, **extra_args):
    if params is None:
      raise ValueError("qk_clip rescales the parameters: pass tx.update(..., params)")
    logit_max = read_telemetry(spec, extra_args)[TELEMETRY]
    if logit_max.ndim != 2:
      raise ValueError(f"qk_clip: {TELEMETRY} must be [layers, heads], got {logit_max.shape}")
    eta, q_scale, k_scale = head_scales(logit_max, threshold, alpha)
    layout = columns(params)
    for path, cols in layout.items():
      if not 0 <= cols[0] < logit_max.shape[0]:
        raise ValueError(f"qk_clip: {path} is layer {cols[0]}, the telemetry has {logit_max.shape}")

    def rescale(path, u, w):
      cols = layout.get(jax.tree_util.keystr(path))
      if cols is None:
        return u
      s = _column_scale(cols, w.shape[-1], q_scale, k_scale)
      new = (w.astype(jnp.float32) + u.astype(jnp.float32)) * s
      return (new - w.astype(jnp.float32)).astype(u.dtype)

    updates = jax.tree_util.tree_map_with_path(rescale, updates, params)
    seen = jnp.max(jnp.where(jnp.isfinite(logit_max), logit_max, -jnp.inf))
    return updates, QKClipState(
      spec=spec,
      clipped_heads=jnp.sum(eta < 1.0).astype(jnp.int32),
      max_logit=jnp.where(jnp.isfinite(seen), seen, state.max_logit).astype(jnp.float32),
      min_scale=jnp.min(eta).astype(jnp.float32),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@registry.register_regulator("qk_clip", qk_clip, order=90, supplied=("columns",))
def _wrap(inner, ctx: registry.BuildContext, **kwargs) -> optax.GradientTransformation:
  """``optimizer.regulators.qk_clip={'threshold': 100}``: needs the model's
  ``attention_telemetry`` (the wiring check says so before anything compiles)."""
  return optax.chain(inner, qk_clip(columns=ctx.rules.query_key_columns, **kwargs))
