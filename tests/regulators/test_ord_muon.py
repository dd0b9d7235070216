import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers
from optax.transforms import MaskedNode

from homeo_jax.cores.polar import orthogonalize
from homeo_jax.regulators.ord_muon import (
  Matrices,
  Momentum,
  NewtonSchulz,
  ord_muon,
  scale_by_ord_muon,
)

NO_MOMENTUM = Momentum(beta=0.0)


def random_tree(seed=0):
  k = jax.random.split(jax.random.key(seed), 5)
  return {
    "attn": {"w": jax.random.normal(k[0], (32, 64)) * 0.2, "b": jnp.zeros(64)},
    "mlp": {
      "up": jax.random.normal(k[1], (32, 96)) * 0.2,
      "down": jax.random.normal(k[2], (96, 32)) * 0.2,
    },
    "conv": jax.random.normal(k[3], (3, 8, 16)),
  }


def grads_at(params, i):
  return jax.tree.map(lambda p: jax.random.normal(jax.random.key(100 + i), p.shape), params)


def run(tx, params, steps=4):
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for i in range(steps):
    u, state = update(grads_at(params, i), state, params)
    params = optax.apply_updates(params, u)
    out.append(u)
  return out, state


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["standard", "dion"])
def test_spectral_lr_zero_is_optax_muon(preset):
  params = random_tree()
  ours, _ = run(
    ord_muon(0.02, spectral_lr=0.0, newton_schulz={"coeffs": preset}, weight_decay=0.1), params
  )
  ref, _ = run(optax.contrib.muon(0.02, ns_coeffs=preset, weight_decay=0.1), params)
  for a, b in zip(ours, ref, strict=True):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-7, rtol=1e-5), a, b)


@pytest.mark.slow
def test_dimension_numbers_match_optax():
  params = random_tree()
  dims = {
    "attn": {"w": MuonDimensionNumbers(), "b": None},
    "mlp": {"up": MuonDimensionNumbers(), "down": MuonDimensionNumbers()},
    "conv": MuonDimensionNumbers(reduction_axis=1, output_axis=2),
  }
  ours, _ = run(ord_muon(0.02, matrices=Matrices(dims)), params, steps=2)
  ref, _ = run(optax.contrib.muon(0.02, muon_weight_dimension_numbers=dims), params, steps=2)
  for a, b in zip(ours, ref, strict=True):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-7, rtol=1e-5), a, b)


def decomposition_reference(g, w):
  g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
  rho = np.sum(g * w) / np.sum(w * w)
  return rho, rho * w, g - rho * w


@pytest.mark.slow
@pytest.mark.parametrize("spectral_lr, project", [(0.0, True), (0.5, False), (2.0, True)])
def test_decomposition_against_float64(spectral_lr, project):
  w = jax.random.normal(jax.random.key(1), (24, 40))
  g = jax.random.normal(jax.random.key(2), (24, 40)) + 0.7 * w  # a real radial component
  tx = scale_by_ord_muon(spectral_lr, project_radial=project, momentum=NO_MOMENTUM)
  update, state = tx.update({"w": g}, tx.init({"w": w}), {"w": w})
  rho, g_par, g_perp = decomposition_reference(g, w)
  assert abs(float(state.rho["w"]) - rho) < 1e-5
  frac = np.linalg.norm(g_par) / np.linalg.norm(np.asarray(g, np.float64))
  assert abs(float(state.spectral_frac["w"]) - frac) < 1e-5
  assert abs(np.sum(g_perp * np.asarray(w, np.float64))) < 1e-9  # G⊥ ⟂ W
  expected = np.asarray(orthogonalize(jnp.asarray(g_perp, jnp.float32))) + spectral_lr * g_par
  np.testing.assert_allclose(update["w"], expected, atol=2e-5)


def test_muon_mode_reports_diagnostics_without_decomposing():
  w = jax.random.normal(jax.random.key(1), (24, 40))
  g = jax.random.normal(jax.random.key(2), (24, 40)) + 0.7 * w
  tx = scale_by_ord_muon(momentum=NO_MOMENTUM)
  update, state = tx.update({"w": g}, tx.init({"w": w}), {"w": w})
  np.testing.assert_allclose(update["w"], orthogonalize(g), atol=1e-6)  # Polar(G), not G⊥
  assert abs(float(state.rho["w"]) - decomposition_reference(g, w)[0]) < 1e-5


def test_near_radial_gradient_is_not_inflated():
  w = jax.random.normal(jax.random.key(3), (16, 32))
  g = 3.0 * w + 1e-6 * jax.random.normal(jax.random.key(4), (16, 32))
  geometric = scale_by_ord_muon(project_radial=True, momentum=NO_MOMENTUM)
  u, _ = geometric.update({"w": g}, geometric.init({"w": w}), {"w": w})
  np.testing.assert_array_equal(u["w"], 0.0)  # Polar(rounding noise) would be full size
  spectral = scale_by_ord_muon(1.0, momentum=NO_MOMENTUM)
  u, _ = spectral.update({"w": g}, spectral.init({"w": w}), {"w": w})
  np.testing.assert_allclose(u["w"], g, rtol=1e-4, atol=1e-5)  # only the radial term


def test_zero_weights_and_zero_gradients():
  tx = scale_by_ord_muon(1.0, momentum=NO_MOMENTUM)
  g = jax.random.normal(jax.random.key(5), (8, 12))
  u, state = tx.update({"w": g}, tx.init({"w": jnp.zeros((8, 12))}), {"w": jnp.zeros((8, 12))})
  assert float(state.rho["w"]) == 0.0
  np.testing.assert_allclose(u["w"], orthogonalize(g), atol=1e-6)
  u, _ = tx.update({"w": jnp.zeros((8, 12))}, tx.init({"w": g}), {"w": g})
  np.testing.assert_array_equal(u["w"], 0.0)


@pytest.mark.slow
def test_nan_leaf_does_not_reach_other_leaves():
  params = random_tree()
  grads = grads_at(params, 0)
  grads["mlp"]["up"] = grads["mlp"]["up"].at[0, 0].set(jnp.nan)
  tx = ord_muon(0.02, spectral_lr=0.5)
  u, _ = tx.update(grads, tx.init(params), params)
  assert not bool(jnp.isfinite(u["mlp"]["up"]).all())
  for path in (("attn", "w"), ("mlp", "down"), ("conv",), ("attn", "b")):
    leaf = u
    for key in path:
      leaf = leaf[key]
    assert bool(jnp.isfinite(leaf).all()), path


def test_non_matrix_leaves_go_to_adam():
  params = random_tree()
  tx = ord_muon(0.02)
  state = tx.init(params)
  rho = state.inner_states["muon"].inner_state[0].rho
  assert len(jax.tree.leaves(rho)) == 3  # attn.w, mlp.up, mlp.down
  assert isinstance(rho["conv"], MaskedNode) and isinstance(rho["attn"]["b"], MaskedNode)


def test_bad_hyperparameters():
  with pytest.raises(ValueError, match="spectral_lr must be >= 0, got -1"):
    scale_by_ord_muon(spectral_lr=-1.0)
  with pytest.raises(ValueError, match="newton_schulz.radial_rtol must be in"):
    scale_by_ord_muon(newton_schulz=NewtonSchulz(radial_rtol=1.5))
  with pytest.raises(ValueError, match="newton_schulz.coeffs must be one of .*'fast'"):
    ord_muon(0.1, newton_schulz={"coeffs": "fast"})
  with pytest.raises(ValueError, match="adam.beta1 is not a field of AdamLeaves"):
    ord_muon(0.1, adam={"beta1": 0.9})
