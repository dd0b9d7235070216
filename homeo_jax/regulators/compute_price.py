"""The Ouro-Spec compute price: dual ascent on λ_p that holds the mean depth at a target.

An optax transform that passes updates through unchanged, reads the adaptive model's
telemetry (``avg_k``: soft depth, mean over layers and tokens) and publishes the
controls the model reads at the next step:

* ``compute_price`` — λ_p (0 before ``ponder_start``), priced into the loss by
  ``adaptive_lm_loss`` as relu(λ_p·relu(avg_k − 1)/(Kmax − 1) − coupon);
* ``force_k`` — 2 during the force-2 warm-up (steps < ``warmup_steps``), 2 on an audit
  step, 0 (adaptive) otherwise;
* ``gate_clamp`` — 1 while steps < ``clamp_until`` (the model clamps p to [0.01, 0.95]).

Per step t (its batch ran with the controls published at t − 1):

1. dual ascent, when t ≥ ``warmup_steps``, the step was not an audit and avg_k is
   finite:  λ_p ← clip(λ_p + r·dual_lr·(avg_k − target_k), price_min, price_max),
   r = 1 before the deadband engages;
2. deadband: once engaged, r = 0 inside [0.98·target_k, 1.05·target_k] and
   r = ``deadband_rate`` (½) outside. The seed's trigger "λ_p > 0.50 for 100 steps" can
   never fire under price_max = 0.05, so the trigger here is *settling*: λ_p has stayed
   within ±``settle_rtol`` (5%) of a reference value for ``settle_steps`` (100)
   consecutive control steps (the reference resets whenever λ_p leaves that range).
   Once engaged it stays engaged (it is part of the state and of the checkpoint);
3. audit: with probability ``audit_prob`` (5%), from ``audit_start`` on, the next step
   is an audit: the model runs force_k = 2 and the step's avg_k is not fed to the dual
   ascent; its ΔCE is logged as ``audit_delta_ce`` (regular steps: ``delta_ce``).

``fixed_price`` pins λ_p (the ``--set_lambda`` override of the experiments).

Bad telemetry (NaN/Inf avg_k) skips the dual step; λ_p stays finite and in its clamp.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ComputePriceState(NamedTuple):
  regulator_name = "compute_price"
  logged_fields = (
    "price",
    "avg_k",
    "ctrl_err",
    "deadband",
    "audit",
    "delta_ce",
    "audit_delta_ce",
    "audits",
  )

  step: jax.Array  # shape=(), int32: steps seen
  price: jax.Array  # shape=(), float32: λ_p
  settle_ref: jax.Array  # shape=(), float32: reference value of the settling test
  settle_count: jax.Array  # shape=(), int32: control steps λ_p stayed near settle_ref
  deadband: jax.Array  # shape=(), int32: 1 once the deadband has engaged
  audit: jax.Array  # shape=(), int32: 1 when the step about to run is an audit
  audits: jax.Array  # shape=(), int32: audits run so far
  avg_k: jax.Array  # shape=(), float32: last soft depth seen
  ctrl_err: jax.Array  # shape=(), float32: last avg_k − target_k on a control step
  delta_ce: jax.Array  # shape=(), float32: last regular step's ΔCE
  audit_delta_ce: jax.Array  # shape=(), float32: last audit step's ΔCE
  key: jax.Array  # uint32[2]: PRNG key data for the audit draws
  controls: dict  # compute_price, force_k, gate_clamp for the next step


def compute_price(
  *,
  max_passes: int = 4,
  target_k: float = 1.30,
  dual_lr: float = 5e-5,
  price_min: float = 1e-4,
  price_max: float = 5e-2,
  warmup_steps: int = 800,
  warmup_force: int = 2,
  ponder_start: int = 1200,
  clamp_until: int = 4000,
  audit_prob: float = 0.05,
  audit_start: int = 1200,
  audit_force: int = 2,
  deadband: tuple[float, float] = (0.98, 1.05),
  deadband_rate: float = 0.5,
  settle_steps: int = 100,
  settle_rtol: float = 0.05,
  fixed_price: float | None = None,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """The compute-price controller; see the module docstring."""
  if max_passes < 1:
    raise ValueError(f"max_passes must be >= 1, got {max_passes}")
  if not 1.0 <= target_k <= max_passes:
    raise ValueError(f"target_k must be in [1, max_passes={max_passes}], got {target_k}")
  if not 0.0 < price_min <= price_max:
    raise ValueError(f"need 0 < price_min <= price_max, got {price_min}, {price_max}")
  if not 0.0 <= audit_prob <= 1.0:
    raise ValueError(f"audit_prob must be in [0, 1], got {audit_prob}")
  for name, k in (("warmup_force", warmup_force), ("audit_force", audit_force)):
    if not 1 <= k <= max_passes:
      raise ValueError(f"{name} must be in [1, max_passes={max_passes}], got {k}")
  if not deadband[0] <= 1.0 <= deadband[1]:
    raise ValueError(f"deadband must bracket 1 (fractions of target_k), got {deadband}")
  if fixed_price is not None and fixed_price < 0:
    raise ValueError(f"fixed_price must be >= 0, got {fixed_price}")

  def publish(next_step, price, audit):
    force = jnp.where(next_step < warmup_steps, warmup_force, jnp.where(audit > 0, audit_force, 0))
    return {
      "compute_price": jnp.where(next_step >= ponder_start, price, 0.0).astype(jnp.float32),
      "force_k": force.astype(jnp.int32),
      "gate_clamp": (next_step < clamp_until).astype(jnp.int32),
    }

  def init_fn(params):
    del params
    price = jnp.asarray(price_min if fixed_price is None else fixed_price, jnp.float32)
    zero_i, zero_f = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
    return ComputePriceState(
      step=zero_i,
      price=price,
      settle_ref=price,
      settle_count=zero_i,
      deadband=zero_i,
      audit=zero_i,
      audits=zero_i,
      avg_k=jnp.ones((), jnp.float32),
      ctrl_err=zero_f,
      delta_ce=zero_f,
      audit_delta_ce=zero_f,
      key=jax.random.key_data(jax.random.key(seed)),
      controls=publish(zero_i, price, zero_i),
    )

  def update_fn(updates, state: ComputePriceState, params=None, **extra_args):
    del params
    if "avg_k" not in extra_args:
      raise ValueError("compute_price reads 'avg_k' from the extra args (the adaptive LM's)")
    avg_k = jnp.asarray(extra_args["avg_k"], jnp.float32)
    delta_ce = jnp.asarray(extra_args.get("delta_ce", jnp.nan), jnp.float32)
    was_audit = state.audit > 0
    finite = jnp.isfinite(avg_k)
    control = (state.step >= warmup_steps) & ~was_audit & finite
    err = jnp.where(finite, avg_k - target_k, 0.0)
    inside = (avg_k >= deadband[0] * target_k) & (avg_k <= deadband[1] * target_k)
    rate = jnp.where(state.deadband > 0, jnp.where(inside, 0.0, deadband_rate), 1.0)
    if fixed_price is None:
      stepped = jnp.clip(state.price + rate * dual_lr * err, price_min, price_max)
      price = jnp.where(control, stepped, state.price)
    else:
      price = state.price
    moved = jnp.abs(price - state.settle_ref) > settle_rtol * jnp.maximum(
      state.settle_ref, price_min
    )
    settle_ref = jnp.where(control & moved, price, state.settle_ref)
    settle_count = jnp.where(
      control, jnp.where(moved, 0, state.settle_count + 1), state.settle_count
    )
    engaged = jnp.maximum(state.deadband, (settle_count >= settle_steps).astype(jnp.int32))

    key, draw = jax.random.split(jax.random.wrap_key_data(state.key))
    next_step = state.step + 1
    audit = ((next_step >= audit_start) & (jax.random.uniform(draw) < audit_prob)).astype(jnp.int32)
    ok_ce = jnp.isfinite(delta_ce)
    new_state = ComputePriceState(
      step=next_step,
      price=price,
      settle_ref=settle_ref,
      settle_count=settle_count,
      deadband=engaged,
      audit=audit,
      audits=state.audits + was_audit.astype(jnp.int32),
      avg_k=jnp.where(finite, avg_k, state.avg_k),
      ctrl_err=jnp.where(control, err, state.ctrl_err),
      delta_ce=jnp.where(~was_audit & ok_ce, delta_ce, state.delta_ce),
      audit_delta_ce=jnp.where(was_audit & ok_ce, delta_ce, state.audit_delta_ce),
      key=jax.random.key_data(key),
      controls=publish(next_step, price, audit),
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scaled_schedule(
  total_steps: int, reference_steps: int = 10_000, **steps: int
) -> dict[str, int]:
  """The seed's step counts scaled by total_steps/reference_steps for runs shorter than
  ``reference_steps`` (the seed's schedule assumes a run of that length); unchanged
  otherwise."""
  factor = min(1.0, total_steps / reference_steps)
  return {name: round(value * factor) for name, value in steps.items()}
