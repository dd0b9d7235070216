import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from homeo_jax.cores.sinkhorn import sinkhorn


def numpy_sinkhorn(logits, eps, n_iter):
  """Plain float64 Sinkhorn–Knopp in the probability domain (the reference)."""
  k = np.exp((logits - logits.max()) / eps)
  t, e = k.shape
  u, v = np.ones(t), np.ones(e)
  for _ in range(n_iter):
    u = (1.0 / t) / (k @ v)
    v = (1.0 / e) / (k.T @ u)
  return u[:, None] * k * v[None, :]


@pytest.mark.parametrize("n_iter", [1, 4, 20])
def test_matches_float64_reference(n_iter):
  logits = np.random.default_rng(0).normal(size=(64, 8))
  ours = sinkhorn(jnp.asarray(logits, jnp.float32), n_iter=n_iter, eps=0.5)
  np.testing.assert_allclose(ours, numpy_sinkhorn(logits, 0.5, n_iter), rtol=2e-4, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_ott_at_convergence(seed):
  logits = jax.random.normal(jax.random.key(seed), (50, 6))
  eps = 0.2
  geom = geometry.Geometry(cost_matrix=-logits, epsilon=eps)
  out = ott_sinkhorn.Sinkhorn(threshold=1e-7, max_iterations=5000)(
    linear_problem.LinearProblem(geom)
  )
  ours = sinkhorn(logits, n_iter=2000, eps=eps)
  np.testing.assert_allclose(ours, out.matrix, atol=1e-4 / 50)
  np.testing.assert_allclose(ours * 50, out.matrix * 50, atol=1e-4)  # per-token plan rows


def test_default_iterations_give_exact_expert_marginals():
  logits = jax.random.normal(jax.random.key(3), (1024, 16)) * 2.0
  plan = sinkhorn(logits)  # eps 0.05, 4 iterations: ends on the column update
  np.testing.assert_allclose(plan.sum(0) * 16, 1.0, atol=1e-3)
  assert float(jnp.abs(plan.sum(1) * 1024 - 1.0).max()) < 0.5  # rows approximate


@pytest.mark.parametrize("scale, eps", [(1e4, 0.05), (50.0, 0.01)])
def test_stable_for_large_logits_and_small_eps(scale, eps):
  logits = jax.random.normal(jax.random.key(4), (128, 8)) * scale
  log_plan = sinkhorn(logits, eps=eps, n_iter=10, return_log=True)
  assert bool(jnp.isfinite(log_plan).all())
  np.testing.assert_allclose(jnp.exp(log_plan).sum(0) * 8, 1.0, atol=1e-3)


def test_custom_marginals_and_batch_axes():
  logits = jax.random.normal(jax.random.key(5), (3, 40, 5))
  col = jnp.array([0.4, 0.3, 0.1, 0.1, 0.1])
  plan = sinkhorn(logits, n_iter=200, eps=0.3, col_marginal=jnp.broadcast_to(col, (3, 5)))
  np.testing.assert_allclose(plan.sum(-2), jnp.broadcast_to(col, (3, 5)), atol=1e-5)
  np.testing.assert_allclose(plan.sum(-1), 1 / 40, atol=1e-5)


def test_differentiable():
  logits = jax.random.normal(jax.random.key(6), (32, 4))
  target = jax.nn.one_hot(jnp.arange(32) % 4, 4) / 32
  grad = jax.grad(lambda x: jnp.sum((sinkhorn(x, eps=0.1) - target) ** 2))(logits)
  assert bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).max()) > 0


def test_bad_arguments():
  with pytest.raises(ValueError, match="n_iter must be >= 1, got 0"):
    sinkhorn(jnp.ones((4, 2)), n_iter=0)
  with pytest.raises(ValueError, match="eps must be > 0, got -1"):
    sinkhorn(jnp.ones((4, 2)), eps=-1)
