"""Loss-free MoE load balancing as optax regulators: SpecHorn and DeepSeek's bias.

Both pass the gradient updates through unchanged; they read the MoE telemetry
(``moe_load`` ``[L, E]``, ``moe_mean_input`` ``[L, E, d]``) from the extra args, keep
their statistics in optax state and publish a control the router reads at the next
step. Chain them after the optimizer: ``optax.chain(optax.adamw(...), spechorn_balancer(...))``.

SpecHorn (``spechorn_balancer``), per layer l and expert e, with relative load
r = load / mean(load) (1 = balanced):

* load EMA           L̄ ← EMA(r)                       (decay ``load_decay``, 0.9)
* EMA load bias      bias = −bias_scale·(L̄ − 1)          overloaded experts are pushed down
* capacity-use EMA   Ū ← EMA(load / target), target = routed_scaling_factor·k·N/E
                     (the k·N assignments spread evenly; the seed writes tokens/E for k=1)
* capacity penalty   cap = cap_penalty_scale·relu(Ū − 1)²
* spectral vectors   s_e ← EMA(P·mean routed input of e), P a fixed random projection
                     d → ``spec_dim`` (128) from ``seed``, refreshed every
                     ``spec_update_every`` (16) steps
* orthogonality      ortho_e = mean_{j≠e} relu(cos(s_e, s_j))
* published control  moe_logit_adjust = bias − cap − ortho_scale·ortho

The scheduler (``schedule=True``) moves cap_penalty_scale multiplicatively by
``scheduler_rate`` (5%) per step, up when the load CV = std/mean of the load (mean over
layers) is above ``cv_band[1]`` and down when below ``cv_band[0]``, within
``cap_penalty_range``; bias_scale rises linearly over ``total_steps`` through
``bias_scale_range`` and ortho_scale through ``ortho_scale_range``. Without it the
scales stay at ``bias_scale``, ``cap_penalty_scale``, ``ortho_scale``.

DeepSeek (``deepseek_balancer``): b_i ← b_i + u·sign(mean load − load_i), u = 0.001,
published as ``moe_selection_bias`` (selection only). Wang et al. 2024, arXiv 2408.15664.

Bad telemetry (a non-finite load) skips the update; the state stays finite.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from homeo_jax.cores import signals


def _read_load(extra_args) -> jax.Array:
  if "moe_load" not in extra_args:
    raise ValueError(
      "load balancers read 'moe_load' [layers, experts] from the extra args "
      "(the MoE model's telemetry)"
    )
  return jnp.asarray(extra_args["moe_load"], jnp.float32)


def load_stats(load: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(relative load load/mean ``[L, E]``, CV, MaxVio), CV and MaxVio averaged over layers."""
  mean = jnp.mean(load, axis=-1, keepdims=True)
  rel = load / jnp.maximum(mean, 1e-9)
  cv = jnp.mean(jnp.std(load, axis=-1) / jnp.maximum(mean[..., 0], 1e-9))
  max_vio = jnp.mean(jnp.max(rel, axis=-1) - 1.0)
  return rel, cv, max_vio


def orthogonality_penalty(spec: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(per-expert mean positive off-diagonal cosine ``[L, E]``, mean off-diagonal cosine)."""
  unit = spec / jnp.maximum(jnp.linalg.norm(spec, axis=-1, keepdims=True), 1e-9)
  cos = jnp.einsum("led,lfd->lef", unit, unit)
  e = spec.shape[-2]
  off = 1.0 - jnp.eye(e)
  penalty = jnp.sum(jax.nn.relu(cos) * off, axis=-1) / max(e - 1, 1)
  return penalty, jnp.sum(cos * off) / (spec.shape[0] * max(e * (e - 1), 1))


class SpecHornState(NamedTuple):
  step: jax.Array  # shape=(), int32
  load_ema: signals.EMA  # [L, E]: relative load
  capacity_ema: signals.EMA  # [L, E]: load / target
  spec_ema: signals.EMA  # [L, E, spec_dim]: spectral vectors
  bias_scale: jax.Array  # shape=(), float32
  cap_penalty_scale: jax.Array  # shape=(), float32
  ortho_scale: jax.Array  # shape=(), float32
  cv: jax.Array  # shape=(), float32: this batch's load CV
  max_vio: jax.Array  # shape=(), float32: this batch's MaxVio
  ortho_similarity: jax.Array  # shape=(), float32: mean off-diagonal cosine of s_e
  controls: dict  # {"moe_logit_adjust": [L, E]}

  regulator_name = "spechorn"
  logged_fields = (
    "cv",
    "max_vio",
    "bias_scale",
    "cap_penalty_scale",
    "ortho_scale",
    "ortho_similarity",
  )


def spechorn_balancer(
  num_layers: int,
  num_experts: int,
  d_model: int,
  *,
  total_steps: int = 1000,
  bias_scale: float = 8.0,
  cap_penalty_scale: float = 15.0,
  ortho_scale: float = 0.4,
  orthogonality: bool = True,
  schedule: bool = True,
  cv_band: tuple[float, float] = (0.03, 0.08),
  cap_penalty_range: tuple[float, float] = (5.0, 30.0),
  bias_scale_range: tuple[float, float] = (4.0, 12.0),
  ortho_scale_range: tuple[float, float] = (0.1, 0.6),
  scheduler_rate: float = 0.05,
  load_decay: float = 0.9,
  spec_decay: float = 0.9,
  spec_dim: int = 128,
  spec_update_every: int = 16,
  routed_scaling_factor: float = 1.0,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """SpecHorn's load state, penalties and CV scheduler; see the module docstring."""
  for name, (lo, hi) in (
    ("cv_band", cv_band),
    ("cap_penalty_range", cap_penalty_range),
    ("bias_scale_range", bias_scale_range),
    ("ortho_scale_range", ortho_scale_range),
  ):
    if not 0 <= lo <= hi:
      raise ValueError(f"{name} must satisfy 0 <= low <= high, got {(lo, hi)}")
  for name, value in (("load_decay", load_decay), ("spec_decay", spec_decay)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{name} must be in [0, 1), got {value}")
  if min(num_layers, num_experts, d_model, spec_dim, spec_update_every, total_steps) < 1:
    raise ValueError(
      "num_layers, num_experts, d_model, spec_dim, spec_update_every and "
      "total_steps must all be >= 1"
    )
  if not routed_scaling_factor > 0:
    raise ValueError(f"routed_scaling_factor must be > 0, got {routed_scaling_factor}")
  projection = jax.random.normal(jax.random.key(seed), (d_model, spec_dim)) / d_model**0.5
  shape = (num_layers, num_experts)

  def init_fn(params):
    del params
    f = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return SpecHornState(
      step=jnp.zeros((), jnp.int32),
      load_ema=signals.ema_init(shape),
      capacity_ema=signals.ema_init(shape),
      spec_ema=signals.ema_init((*shape, spec_dim)),
      bias_scale=f(bias_scale_range[0] if schedule else bias_scale),
      cap_penalty_scale=f(cap_penalty_scale),
      ortho_scale=f((ortho_scale_range[0] if schedule else ortho_scale) * orthogonality),
      cv=f(0.0),
      max_vio=f(0.0),
      ortho_similarity=f(0.0),
      controls={"moe_logit_adjust": jnp.zeros(shape, jnp.float32)},
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params
    load = _read_load(extra_args)
    ok = jnp.all(jnp.isfinite(load))
    rel, cv, max_vio = load_stats(jnp.where(ok, load, 1.0))
    load_ema = signals.ema_update(state.load_ema, rel, load_decay, ok)
    capacity_ema = signals.ema_update(
      state.capacity_ema, rel / routed_scaling_factor, load_decay, ok
    )
    spec_ema = state.spec_ema
    if orthogonality and "moe_mean_input" in extra_args:
      spectral = jnp.asarray(extra_args["moe_mean_input"], jnp.float32) @ projection
      refresh = jnp.logical_and(state.step % spec_update_every == 0, ok)
      spec_ema = signals.ema_update(spec_ema, spectral, spec_decay, refresh)
    ortho, similarity = orthogonality_penalty(signals.ema_debiased(spec_ema, spec_decay))
    if schedule:
      progress = jnp.minimum(state.step.astype(jnp.float32) / total_steps, 1.0)
      lerp = lambda r: r[0] + (r[1] - r[0]) * progress  # noqa: E731
      factor = jnp.where(
        cv > cv_band[1], 1 + scheduler_rate, jnp.where(cv < cv_band[0], 1 - scheduler_rate, 1.0)
      )
      cap_scale = jnp.clip(state.cap_penalty_scale * jnp.where(ok, factor, 1.0), *cap_penalty_range)
      b_scale, o_scale = lerp(bias_scale_range), lerp(ortho_scale_range) * orthogonality
    else:
      cap_scale, b_scale, o_scale = state.cap_penalty_scale, state.bias_scale, state.ortho_scale
    bias = -b_scale * (signals.ema_debiased(load_ema, load_decay) - 1.0)
    cap = cap_scale * jnp.square(jax.nn.relu(signals.ema_debiased(capacity_ema, load_decay) - 1))
    adjust = bias - cap - o_scale * ortho
    return updates, SpecHornState(
      step=optax.safe_increment(state.step),
      load_ema=load_ema,
      capacity_ema=capacity_ema,
      spec_ema=spec_ema,
      bias_scale=jnp.asarray(b_scale, jnp.float32),
      cap_penalty_scale=jnp.asarray(cap_scale, jnp.float32),
      ortho_scale=jnp.asarray(o_scale, jnp.float32),
      cv=jnp.where(ok, cv, state.cv),
      max_vio=jnp.where(ok, max_vio, state.max_vio),
      ortho_similarity=similarity,
      controls={"moe_logit_adjust": adjust},
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class DeepSeekBalancerState(NamedTuple):
  selection_bias: jax.Array  # [L, E], float32
  cv: jax.Array  # shape=(), float32
  max_vio: jax.Array  # shape=(), float32
  controls: dict  # {"moe_selection_bias": [L, E]}

  regulator_name = "deepseek"
  logged_fields = ("cv", "max_vio")


def deepseek_balancer(
  num_layers: int, num_experts: int, *, update_rate: float = 1e-3
) -> optax.GradientTransformationExtraArgs:
  """Auxiliary-loss-free balancing: b_i += u·sign(mean load − load_i), selection only."""
  if not update_rate > 0:
    raise ValueError(f"update_rate must be > 0, got {update_rate}")
  shape = (num_layers, num_experts)

  def init_fn(params):
    del params
    zero = jnp.zeros(shape, jnp.float32)
    return DeepSeekBalancerState(
      selection_bias=zero,
      cv=jnp.zeros(()),
      max_vio=jnp.zeros(()),
      controls={"moe_selection_bias": zero},
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params
    load = _read_load(extra_args)
    ok = jnp.all(jnp.isfinite(load))
    safe = jnp.where(ok, load, 1.0)
    _, cv, max_vio = load_stats(safe)
    step = update_rate * jnp.sign(jnp.mean(safe, -1, keepdims=True) - safe)
    bias = state.selection_bias + jnp.where(ok, step, 0.0)
    return updates, DeepSeekBalancerState(
      selection_bias=bias,
      cv=jnp.where(ok, cv, state.cv),
      max_vio=jnp.where(ok, max_vio, state.max_vio),
      controls={"moe_selection_bias": bias},
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
