import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax.contrib._muon import orthogonalize_via_newton_schulz as optax_ns

from homeo_jax.cores.polar import SCHEDULES, orthogonalize, orthogonalize_many
from tests.conftest import assert_script_passes_on_fake_devices


def svals(x):
  return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


@pytest.fixture(scope="module")
def matrix():
  return jax.random.normal(jax.random.key(0), (256, 512))


@pytest.mark.parametrize(
  "name, lo, hi",
  [
    ("standard", 0.67, 1.14),  # REFERENCES.md: about [0.68, 1.13] on 256x512
    ("dion", 0.975, 1.035),  # about [0.978, 1.032]
    ("polar_express", 0.85, 1.15),
  ],
)
def test_singular_values_against_svd(matrix, name, lo, hi):
  s = svals(orthogonalize(matrix, coeffs=name))
  assert lo <= s.min() and s.max() <= hi, (s.min(), s.max())


@pytest.mark.parametrize("shape", [(64, 96), (96, 64), (48, 48)])
@pytest.mark.parametrize("name", ["standard", "dion"])
def test_matches_optax_newton_schulz(shape, name):
  x = jax.random.normal(jax.random.key(1), shape) * 1e-2
  coeffs = jnp.asarray(SCHEDULES[name].coeffs if name == "dion" else SCHEDULES[name].coeffs[0])
  np.testing.assert_allclose(orthogonalize(x, coeffs=name), optax_ns(x, coeffs, 5), atol=2e-6)


def test_polar_factor_of_a_well_conditioned_matrix():
  # singular values in [0.5, 1]: the standard schedule maps them into its band, and the
  # singular vectors are exactly those of the polar factor U V^T.
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(32, 32)))
  v, _ = np.linalg.qr(rng.normal(size=(48, 32)))
  x = u @ np.diag(np.linspace(0.5, 1.0, 32)) @ v.T
  polar = u @ v.T
  out = np.asarray(orthogonalize(jnp.asarray(x, jnp.float32), coeffs="dion"), np.float64)
  orth_err = np.linalg.norm(out @ out.T - np.eye(32), 2)
  assert orth_err < 0.08
  # the direction is the polar factor's: <out, UV^T> / (|out| |UV^T|) ~ 1
  cos = np.sum(out * polar) / (np.linalg.norm(out) * np.linalg.norm(polar))
  assert cos > 0.999


@pytest.mark.slow
def test_batched_equals_per_matrix_and_many_groups():
  xs = jax.random.normal(jax.random.key(2), (5, 24, 40))
  batched = orthogonalize(xs)
  for i in range(5):
    np.testing.assert_allclose(batched[i], orthogonalize(xs[i]), atol=1e-6)
  parts = [xs[:2], jax.random.normal(jax.random.key(3), (3, 40, 24)), xs[2:]]
  outs = orthogonalize_many(parts)
  np.testing.assert_allclose(jnp.concatenate([outs[0], outs[2]]), batched, atol=1e-6)
  np.testing.assert_allclose(outs[1], orthogonalize(parts[1]), atol=1e-6)


def test_bfloat16_compute_keeps_dtype_and_quality(matrix):
  out = orthogonalize(matrix, dtype=jnp.bfloat16)
  assert out.dtype == jnp.float32
  s = svals(out)
  assert s.min() > 0.6 and s.max() < 1.25
  assert orthogonalize(matrix.astype(jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.slow
def test_zero_huge_rank_deficient_and_nan():
  zero = orthogonalize(jnp.zeros((2, 8, 12)))
  np.testing.assert_array_equal(zero, 0.0)
  x = jax.random.normal(jax.random.key(4), (8, 12))
  huge = orthogonalize(x * 1e30)
  np.testing.assert_allclose(huge, orthogonalize(x), atol=1e-5)
  low_rank = jnp.outer(jnp.arange(1.0, 9.0), jnp.ones(12))  # rank 1
  s = svals(orthogonalize(low_rank))
  assert np.isfinite(s).all() and s[0] > 0.6 and s[1] < 1e-4
  stack = jnp.stack([x, x.at[0, 0].set(jnp.nan)])
  out = orthogonalize(stack)
  assert bool(jnp.isfinite(out[0]).all()) and not bool(jnp.isfinite(out[1]).all())


def test_bad_input():
  with pytest.raises(ValueError, match="shape \\(7,\\)"):
    orthogonalize(jnp.ones(7))
  with pytest.raises(ValueError, match="'nope'"):
    orthogonalize(jnp.ones((2, 2)), coeffs="nope")
  with pytest.raises(ValueError, match=r"\(3,\) or \(n, 3\)"):
    orthogonalize(jnp.ones((2, 2)), coeffs=(1.0, 2.0))


@pytest.mark.slow
def test_sharded_inputs_on_a_fake_device_mesh():
  import textwrap

  script = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from homeo_jax.cores.polar import orthogonalize
    assert jax.device_count() == 4
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("stack", "model"))
    x = jax.random.normal(jax.random.key(0), (4, 32, 64))
    expected = orthogonalize(x)
    f = jax.jit(orthogonalize)
    # the stack axis sharded (the fast path), and a matrix axis sharded (GSPMD all-reduces)
    for spec in (P("stack"), P(None, None, "model"), P("stack", "model")):
      xs = jax.device_put(x, NamedSharding(mesh, spec))
      out = f(xs)
      np.testing.assert_allclose(out, expected, atol=1e-5)
      assert isinstance(out.sharding, NamedSharding) and len(out.addressable_shards) == 4
    print("ok")
  """)
  assert_script_passes_on_fake_devices(script, devices=4)
