import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from homeo_jax import regulator_metrics
from homeo_jax.regulators.ars import ars_adamw
from homeo_jax.regulators.update_prox import fisher_subspace_prox

RNG = np.random.default_rng(0)
PARAMS = {
  "w": RNG.normal(size=(12, 10)),
  "b": RNG.normal(size=(10,)),
  "thin": RNG.normal(size=(3, 9)),
}
GRADS = [jax.tree.map(lambda p: RNG.normal(size=p.shape), PARAMS) for _ in range(4)]  # noqa: B023


def reference(params, grads_seq, lr, c, gamma, rank, decay, refresh_every=0):
  """float64 NumPy: SGD proposal, then the Fisher shrink and the subspace shrink."""
  params = {k: v.astype(np.float64) for k, v in params.items()}

  def basis_of(p):
    return {
      k: np.linalg.svd(v, full_matrices=False)[0][:, :rank]
      for k, v in p.items()
      if v.ndim == 2 and min(v.shape) > rank
    }

  basis = basis_of(params)
  ema = {k: np.zeros_like(v) for k, v in params.items()}
  out = []
  for step, grads in enumerate(grads_seq, start=1):
    if refresh_every and step % refresh_every == 0:
      basis = basis_of(params)
    updates = {}
    for k, g in grads.items():
      ema[k] = decay * ema[k] + (1 - decay) * g**2
      v = ema[k] / (1 - decay**step)
      u = -lr * g / (1 + c * v / v.mean())
      if k in basis:
        inside = basis[k] @ (basis[k].T @ u)
        u = inside + (u - inside) / (1 + 2 * gamma)
      updates[k] = u
    params = {k: params[k] + updates[k] for k in params}
    out.append(updates)
  return out


@pytest.mark.parametrize("refresh_every", [0, 2])
def test_prox_against_float64_reference(refresh_every):
  tx = fisher_subspace_prox(
    optax.sgd(0.1), fisher_weight=2.0, gamma=1.5, rank=4, fisher_decay=0.9,
    refresh_every=refresh_every,
  )  # fmt: skip
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), PARAMS)
  state = tx.init(params)
  update = jax.jit(tx.update)
  want = reference(PARAMS, GRADS, 0.1, 2.0, 1.5, 4, 0.9, refresh_every)
  for grads, expected in zip(GRADS, want, strict=True):
    updates, state = update(jax.tree.map(jnp.asarray, grads), state, params)
    for k in PARAMS:
      np.testing.assert_allclose(updates[k], expected[k], rtol=2e-4, atol=1e-6, err_msg=k)
    params = optax.apply_updates(params, updates)
  assert state.basis["thin"].shape == ()  # a side of 3 <= rank: Fisher term only


@pytest.mark.slow
def test_no_penalty_is_the_inner_update():
  tx = fisher_subspace_prox(optax.sgd(0.1), fisher_weight=0.0, gamma=0.0)
  params = jax.tree.map(jnp.asarray, PARAMS)
  updates, state = tx.update(jax.tree.map(jnp.asarray, GRADS[0]), tx.init(params), params)
  for k in PARAMS:
    np.testing.assert_allclose(updates[k], -0.1 * GRADS[0][k], rtol=1e-5, atol=1e-7)
  assert float(state.shrink) == pytest.approx(1.0)


def test_chains_with_ars_adamw_under_jit_and_skips_bad_gradients():
  tx = fisher_subspace_prox(ars_adamw(1e-2, weight_decay=0.0), gamma=1.0, rank=2)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), PARAMS)
  state = tx.init(params)
  update = jax.jit(tx.update)
  grads = jax.tree.map(jnp.asarray, GRADS[0])
  updates, state = update(grads, state, params, value=2.0)
  assert 0.0 < float(state.shrink) < 1.0
  metrics = regulator_metrics(state)
  assert set(metrics) >= {"regulators/fisher_subspace/shrink", "regulators/ars/psi"}
  before = jax.tree.map(lambda e: e.value, state.fisher, is_leaf=lambda x: hasattr(x, "count"))
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
  _, state = update(bad, state, params, value=2.0)
  after = jax.tree.map(lambda e: e.value, state.fisher, is_leaf=lambda x: hasattr(x, "count"))
  jax.tree.map(np.testing.assert_array_equal, before, after)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="fisher_subspace: gamma must be >= 0, got -1"):
    fisher_subspace_prox(optax.sgd(0.1), gamma=-1)
  with pytest.raises(ValueError, match="fisher_subspace: rank must be an int >= 1, got 0"):
    fisher_subspace_prox(optax.sgd(0.1), rank=0)


@pytest.mark.slow
def test_state_survives_a_checkpoint(tmp_path):
  from homeo_jax.training.checkpoint import Checkpointer

  tx = fisher_subspace_prox(ars_adamw(1e-2), rank=2)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), PARAMS)
  _, state = tx.update(jax.tree.map(jnp.asarray, GRADS[0]), tx.init(params), params, value=2.0)
  checkpointer = Checkpointer(tmp_path / "ckpt", keep=1)
  checkpointer.save(1, state, {})
  restored, _ = checkpointer.restore_latest(tx.init(params))
  checkpointer.close()
  jax.tree.map(np.testing.assert_array_equal, restored, state)
