"""The one mechanism by which a regulator steers an inner optimizer's hyperparameters.

``steer_hyperparams(inner_factory, controller, steered={...}, **other)`` builds the inner
optimizer with ``optax.inject_hyperparams`` and, every step:

1. evaluates the *base* value of each steered hyperparameter (a number, or a schedule
   at this transform's step count) — the base stays the source of truth;
2. asks the controller for the *effective* values from the base values and the
   telemetry in the extra args (``value=loss``, ``grad_norm=``, ...);
3. writes them into the inner state's ``hyperparams`` and steps the inner optimizer.

Effective values are recomputed from the base each step, never accumulated. Steered
hyperparameters must not also be schedules inside ``inject_hyperparams`` (the wrapper
owns their schedule), so it passes placeholder arrays for them. Base values may be traced
arrays (the wrapper itself under ``optax.inject_hyperparams``). ARS and the Spectral
Thyroid are controllers over this one wrapper.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from homeo_jax.regulators.base import fresh


class HyperparamController(NamedTuple):
  """A controller: ``init(params) -> state`` and
  ``update(state, base, updates, params, **extra_args) -> (state, effective)``.

  ``base`` and ``effective`` are dicts name -> scalar array over the steered names.
  """

  init: Callable[..., Any]
  update: Callable[..., tuple[Any, dict[str, jax.Array]]]


class SteeredState(NamedTuple):
  count: jax.Array  # shape=(), int32: steps taken (the schedules' clock)
  inner: Any  # optax.InjectStatefulHyperparamsState of the inner optimizer
  controller: Any  # the controller's own state (a regulator state NamedTuple)


def base_values(
  steered: Mapping[str, optax.ScalarOrSchedule], count: jax.Array
) -> dict[str, jax.Array]:
  return {k: jnp.asarray(v(count) if callable(v) else v, jnp.float32) for k, v in steered.items()}


def _placeholder(value: optax.ScalarOrSchedule) -> Any:
  """A Python float where the value is concrete (inject_hyperparams then casts it to the
  params' dtype), else the tracer itself (this wrapper under an outer inject_hyperparams)."""
  value = value(0) if callable(value) else value
  try:
    return float(value)
  except (jax.errors.ConcretizationTypeError, TypeError):
    return value


def unsteered_args(factory: Callable[..., Any], steered: Mapping[str, Any]) -> tuple[str, ...]:
  """Every named argument of ``factory`` but the steered ones.

  They stay static under the wrapper's ``inject_hyperparams``: an integer that sets a shape
  (a window, adafactor's ``min_dim_size_to_factor``) must not be traced, and a float that is
  not steered keeps the exactness of a Python number — injected, it would be cast to the
  parameters' dtype, where Adam's β2 = 0.999 rounds to 1 in bfloat16 and its bias correction
  divides by zero.
  """
  return tuple(
    p.name
    for p in inspect.signature(factory).parameters.values()
    if p.name not in steered and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
  )


def steer_hyperparams(
  inner_factory: Callable[..., optax.GradientTransformation],
  controller: HyperparamController,
  steered: Mapping[str, optax.ScalarOrSchedule],
  *,
  static_args: tuple[str, ...] = (),
  **other_hyperparams: Any,
) -> optax.GradientTransformationExtraArgs:
  """Wrap ``inner_factory(**steered, **other_hyperparams)`` under ``controller``; only the
  steered hyperparameters are injected, every other argument stays static
  (``unsteered_args``)."""
  steered = dict(steered)
  placeholders = {k: _placeholder(v) for k, v in steered.items()}
  static = tuple(static_args) + unsteered_args(inner_factory, steered)
  inner = optax.inject_hyperparams(inner_factory, static_args=tuple(dict.fromkeys(static)))(
    **placeholders, **other_hyperparams
  )

  def init_fn(params):
    # A jitted step donates the state, so no two leaves may share a buffer, nor a leaf an
    # array a closure keeps: a controller may reuse one array for several fields or hand
    # out its own (the Thyroid's weights), and inject_hyperparams may return a traced
    # placeholder. Those get their own buffers here, once for every controller; the inner
    # optimizer's moments are fresh already and are not copied.
    inner_state = inner.init(params)
    hyperparams = jax.tree.map(fresh, inner_state.hyperparams)
    return SteeredState(
      count=jnp.zeros((), jnp.int32),
      inner=inner_state._replace(hyperparams=hyperparams),
      controller=jax.tree.map(fresh, controller.init(params)),
    )

  def update_fn(updates, state, params=None, **extra_args):
    base = base_values(steered, state.count)
    controller_state, effective = controller.update(
      state.controller, base, updates, params, **extra_args
    )
    hyperparams = dict(state.inner.hyperparams)
    for name, value in effective.items():
      # A copy: the controller keeps the same value in its own state, and two leaves of
      # a donated state must not share a buffer.
      hyperparams[name] = jnp.array(value, hyperparams[name].dtype, copy=True)
    inner_state = state.inner._replace(hyperparams=hyperparams)
    new_updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
    return new_updates, SteeredState(
      count=optax.safe_increment(state.count), inner=inner_state, controller=controller_state
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
