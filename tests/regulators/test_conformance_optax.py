"""The conformance suite, part two: the contract checks of optax/contrib/_common_test.py
over every regulator of ``test_conformance.REGULATORS`` (a separate file so that the two
halves run on separate test workers)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from homeo_jax.regulators.ars import Guard, ars_adamw
from homeo_jax.regulators.compute_price import compute_price
from homeo_jax.regulators.load_balance import deepseek_balancer
from homeo_jax.regulators.ord_muon import ord_muon
from homeo_jax.regulators.thyroid import thyroid
from tests.regulators.test_conformance import REGULATORS, finite, init_params, make, telemetry

# The contract checks of optax/contrib/_common_test.py, over every regulator.


def one_step(tx, params, state):
  grads = jax.tree.map(jnp.ones_like, params)
  return tx.update(grads, state, params, **telemetry())


@pytest.mark.parametrize("name", sorted(REGULATORS))
def test_abstract_init_matches_concrete(name):
  tx = make(name)
  params = init_params()
  abstract = jax.eval_shape(tx.init, params)
  concrete = tx.init(params)
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete), strict=True):
    assert (a.shape, a.dtype) == (c.shape, c.dtype)


@pytest.mark.parametrize("name", sorted(REGULATORS))
def test_jitted_step_with_donated_state(name):
  """Every init buffer is distinct, and the jitted update keeps shapes, dtypes and
  shardings, so a step can donate the whole state (params and optimizer state)."""
  tx = make(name)
  params = init_params()
  state = tx.init(params)
  pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
  assert len(set(pointers)) == len(pointers), "init returned a shared buffer"

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state):
    updates, state = one_step(tx, params, state)
    return optax.apply_updates(params, updates), state

  before = jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding), state)
  for _ in range(3):
    params, state = step(params, state)
  after = jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding), state)
  assert before == after
  assert finite(params) and finite(state)


@pytest.mark.parametrize("name", sorted(REGULATORS))
def test_inject_hyperparams_under_jit(name):
  """The learning rate is traced inside the regulator's factory; changing it in the
  state changes the step without recompiling."""
  tx = optax.inject_hyperparams(REGULATORS[name])(lr=0.05)
  params = init_params()
  update = jax.jit(tx.update)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  small, _ = update(grads, state, params, **telemetry())
  state.hyperparams["lr"] = jnp.asarray(0.1, jnp.float32)
  large, _ = update(grads, state, params, **telemetry())
  np.testing.assert_allclose(large["b"], 2 * small["b"], rtol=1e-5)  # AdamW leaf: ∝ lr
  assert update._cache_size() == 1


def test_public_factories_under_inject_hyperparams():
  """The regulators' own factories, injected directly as a user writes them."""
  params = init_params()
  grads = jax.tree.map(jnp.ones_like, params)
  injected = {
    "ars_adamw": optax.inject_hyperparams(ars_adamw)(learning_rate=1e-2, b2=0.99),
    # thyroid forwards **inner_kwargs, which inject_hyperparams cannot bind: name them.
    "thyroid": optax.inject_hyperparams(
      lambda learning_rate, weight_decay: thyroid(
        optax.adamw, learning_rate, weight_decay, weights="random"
      )
    )(learning_rate=1e-2, weight_decay=1e-4),
    "ord_muon": optax.inject_hyperparams(ord_muon)(learning_rate=1e-2, spectral_lr=0.5),
    "compute_price": optax.inject_hyperparams(compute_price)(target_k=2.0, price_max=0.1),
    "deepseek": optax.inject_hyperparams(deepseek_balancer)(1, 4, update_rate=1e-2),
  }
  for name, tx in injected.items():
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params, **telemetry())
    assert finite(updates) and finite(state), name


def test_shape_arguments_are_concrete_at_init_or_static():
  """A window sets a shape: fine as a Python int, a clear error when traced."""
  tx = optax.inject_hyperparams(ars_adamw)(learning_rate=1e-2, guard=Guard(window=10))
  state = tx.init(init_params())
  assert state.inner_state.controller.surprise_buffer.values.shape == (10,)
  jax.eval_shape(tx.init, init_params())  # the option group is static under inject
  traced = lambda w: ars_adamw(1e-2, guard=Guard(window=w)).init(init_params())  # noqa: E731
  with pytest.raises(ValueError, match="ars: window sets a shape and must not be traced"):
    jax.eval_shape(traced, 10)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGULATORS))
def test_multi_steps_passes_telemetry(name):
  """optax.MultiSteps accumulates k gradients and steps the regulator once per k with the
  telemetry of the k-th mini-step; the result equals one step on the mean gradient."""
  params = init_params()
  g1 = jax.tree.map(jnp.ones_like, params)
  g2 = jax.tree.map(lambda x: 3 * jnp.ones_like(x), params)
  multi = optax.MultiSteps(make(name), every_k_schedule=2)
  state = multi.init(params)
  _, state = multi.update(g1, state, params, **telemetry())
  updates, state = multi.update(g2, state, params, **telemetry())
  direct, _ = make(name).update(
    jax.tree.map(lambda a, b: (a + b) / 2, g1, g2), make(name).init(params), params, **telemetry()
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), updates, direct)
