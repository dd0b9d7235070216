"""Spike guard: skip (or clip) an update whose loss or gradient norm is an outlier.

Wraps any optax optimizer. Every step, with the last ``window`` accepted losses ℓ and
gradient norms g in ring buffers (``cores/signals``):

    spike  =  ℓ_t > mean(ℓ) + k·std(ℓ)   or   g_t > mean(g) + k·std(g)
              (once both windows hold ``min_history`` values; k = ``threshold``, 6)
    bad    =  ℓ_t or g_t is NaN/Inf

* ``mode="skip"`` (levanter's skip-step, OLMo's SkipStepOptimizer): on a spike or a bad
  step the update is zero and the inner optimizer's state is left as it was — as if the
  step never happened (``optax.apply_if_finite`` semantics, extended to outliers).
* ``mode="clip"``: on a spike the gradient is scaled down to norm at most mean(g) + k·std(g)
  and the inner optimizer steps with it (update-norm clipping); a bad step is still
  skipped.

A skipped value never enters the windows, so a run of spikes cannot raise its own
threshold; after ``max_consecutive`` (16) spikes in a row the next step is accepted as it is
(a persistent level shift is not a spike) and enters the windows.

Reads ``value`` (the loss) and ``grad_norm`` from the extra args. State fields ``skipped``
(total), ``consecutive``, ``clipped`` (total) and ``spike`` (this step) are logged as
``regulators/<name>/<field>``; ``name`` defaults to ``"spike_guard"``.

References: levanter ``optim/skipstep.py`` (rolling window of 128, loss and grad norm);
OLMo-core ``SkipStepOptimizer`` (σ factor 6); ``optax.apply_if_finite``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from homeo_jax.cores import signals
from homeo_jax.regulators import registry
from homeo_jax.regulators.base import (
  RegulatorSpec,
  check,
  fresh,
  read_telemetry,
  regulator_spec,
  shape_int,
  static_int,
)

MODES = ("skip", "clip")


class SpikeGuardState(NamedTuple):
  spec: RegulatorSpec  # static: name, telemetry read
  inner: Any  # the wrapped optimizer's state
  losses: signals.RingBuffer  # last `window` accepted losses
  grad_norms: signals.RingBuffer  # last `window` accepted gradient norms
  spike: jax.Array  # shape=(), int32: 1 if this step was a spike or non-finite
  consecutive: jax.Array  # shape=(), int32: spikes in a row
  skipped: jax.Array  # shape=(), int32: steps skipped so far
  clipped: jax.Array  # shape=(), int32: steps clipped so far

  logged_fields = ("spike", "skipped", "clipped", "consecutive")


def _window_stats(buffer: signals.RingBuffer) -> tuple[jax.Array, jax.Array]:
  """Mean and (population) standard deviation of the values held."""
  values, mask = signals.ring_ordered(buffer)
  n = jnp.maximum(jnp.sum(mask), 1)
  mean = jnp.sum(jnp.where(mask, values, 0.0)) / n
  var = jnp.sum(jnp.where(mask, jnp.square(values - mean), 0.0)) / n
  return mean, jnp.sqrt(var)


def skip_spikes(
  inner: optax.GradientTransformation,
  *,
  window: int = 128,
  threshold: float = 6.0,
  min_history: int = 16,
  max_consecutive: int = 16,
  mode: str = "skip",
  name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``inner`` guarded against loss and gradient-norm spikes; see the module docstring.

  Args:
    inner: any optax transform (telemetry is passed on to it).
    window: values in each rolling window (128, a Python int >= 2).
    threshold: k, the outlier threshold in standard deviations (6.0, > 0).
    min_history: values needed before spikes are judged (16, in [2, window]).
    max_consecutive: spikes in a row after which a step is accepted as it is (16, >= 1).
    mode: ``"skip"`` the update or ``"clip"`` the gradient to the threshold norm.
    name: instance name of its metrics (``"spike_guard"``).
  """
  kind = "spike_guard"
  window = static_int(kind, "window", window, minimum=2)
  check(kind, "threshold", threshold, lambda v: v > 0, "> 0")
  check(kind, "min_history", min_history, lambda v: 2 <= v <= window, f"in [2, {window}]")
  check(kind, "max_consecutive", max_consecutive, lambda v: v >= 1, ">= 1")
  if mode not in MODES:
    raise ValueError(f"{kind}: mode must be one of {MODES}, got {mode!r}")
  spec = regulator_spec(kind, name, reads=("value", "grad_norm"))
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    size = shape_int(kind, "window", window)
    return SpikeGuardState(
      spec=spec,
      inner=inner.init(params),
      losses=signals.ring_init(size),
      grad_norms=signals.ring_init(size),
      spike=fresh(0, jnp.int32),
      consecutive=fresh(0, jnp.int32),
      skipped=fresh(0, jnp.int32),
      clipped=fresh(0, jnp.int32),
    )

  def update_fn(updates, state: SpikeGuardState, params=None, **extra_args):
    telemetry = read_telemetry(spec, extra_args)
    loss, norm = telemetry["value"], telemetry["grad_norm"]
    finite = jnp.isfinite(loss) & jnp.isfinite(norm)
    judged = jnp.minimum(
      signals.ring_size(state.losses), signals.ring_size(state.grad_norms)
    ) >= jnp.asarray(min_history)
    loss_mean, loss_std = _window_stats(state.losses)
    norm_mean, norm_std = _window_stats(state.grad_norms)
    norm_limit = norm_mean + threshold * norm_std
    outlier = judged & ((loss > loss_mean + threshold * loss_std) | (norm > norm_limit))
    forced = state.consecutive >= max_consecutive  # a level shift, not a spike
    spike = (outlier & ~forced) | ~finite
    skip = spike if mode == "skip" else ~finite
    clip = (spike & finite) if mode == "clip" else jnp.zeros((), bool)

    scale = jnp.where(clip, jnp.minimum(1.0, norm_limit / jnp.maximum(norm, 1e-30)), 1.0)
    scaled = jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)
    new_updates, inner_state = inner.update(scaled, state.inner, params, **extra_args)
    new_updates = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), new_updates)
    inner_state = jax.tree.map(lambda new, old: jnp.where(skip, old, new), inner_state, state.inner)
    accepted = ~skip & ~clip
    return new_updates, SpikeGuardState(
      spec=spec,
      inner=inner_state,
      losses=signals.ring_push(state.losses, loss, accepted),
      grad_norms=signals.ring_push(state.grad_norms, norm, accepted),
      spike=spike.astype(jnp.int32),
      consecutive=jnp.where(spike, state.consecutive + 1, 0).astype(jnp.int32),
      skipped=jnp.where(skip, optax.safe_increment(state.skipped), state.skipped),
      clipped=jnp.where(clip, optax.safe_increment(state.clipped), state.clipped),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@registry.register_regulator("spike_guard", skip_spikes, order=100)
def _wrap(inner, ctx: registry.BuildContext, **kwargs) -> optax.GradientTransformation:
  """``optimizer.regulators.spike_guard={'threshold': 6, 'mode': 'skip'}``."""
  del ctx
  return skip_spikes(inner, **kwargs)
