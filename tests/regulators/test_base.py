"""Named regulator instances, controls keyed by name, deployment controls."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from homeo_jax import controls, regulator_metrics
from homeo_jax.regulators.base import regulator_specs
from homeo_jax.regulators.compute_price import compute_price
from homeo_jax.regulators.load_balance import deepseek_balancer, spechorn_balancer

LOAD_A = jnp.array([[10.0, 30.0, 20.0, 4.0]])
LOAD_B = jnp.array([[4.0, 4.0, 4.0, 52.0]])


@pytest.mark.slow
def test_two_named_balancers_coexist_with_their_own_controls_and_metrics():
  """Two MoE stacks, one balancer each: each reads its own telemetry key."""
  tx = optax.chain(
    spechorn_balancer(1, 4, 8, name="encoder", spectral=None, sinkhorn_rate=None),
    spechorn_balancer(1, 4, 8, name="decoder", spectral=None, sinkhorn_rate=None),
  )
  state = tx.init({})
  # Each instance reads moe_load; a user with two stacks passes each its own by chaining
  # per-stack transforms. Here both see the same load: their controls must agree.
  _, state = tx.update({}, state, None, moe_load=LOAD_A)
  ctrl = controls(state)
  assert set(ctrl) == {"encoder", "decoder"}
  np.testing.assert_allclose(
    ctrl["encoder"]["moe_logit_adjust"], ctrl["decoder"]["moe_logit_adjust"], atol=0
  )
  metrics = regulator_metrics(state)
  assert {"regulators/encoder/cv", "regulators/decoder/cv"} <= set(metrics)
  assert [s.name for s in regulator_specs(state)] == ["encoder", "decoder"]


def test_duplicate_names_are_one_clear_error():
  tx = optax.chain(deepseek_balancer(1, 4), deepseek_balancer(1, 4))
  state = tx.init({})
  with pytest.raises(ValueError, match="two regulators are named 'deepseek'.*pass name="):
    controls(state)


def test_bad_name_is_rejected():
  with pytest.raises(ValueError, match="deepseek: name must be a non-empty string"):
    deepseek_balancer(1, 4, name="a/b")


def test_specs_declare_reads_and_publications():
  (price,) = regulator_specs(jax.eval_shape(compute_price().init, {}))
  assert price.reads == ("avg_k",)
  assert price.publishes == ("compute_price", "force_k", "gate_clamp", "halt_bias")
  (horn,) = regulator_specs(spechorn_balancer(1, 4, 8).init({}))
  assert horn.reads == ("moe_load", "moe_mean_input", "moe_sinkhorn_dual")
  (no_ortho,) = regulator_specs(spechorn_balancer(1, 4, 8, spectral=None).init({}))
  assert no_ortho.reads == ("moe_load", "moe_sinkhorn_dual")


def test_deployment_controls_drop_training_overrides():
  """During warm-up and clamping, training forces depth 2 and clamps the gate; the
  deployment controls run the model free, at the current price."""
  tx = compute_price(
    schedule={"warmup_steps": 10, "clamp_until": 10, "ponder_start": 0}, fixed_price=0.03
  )
  state = tx.init({})
  _, state = tx.update({}, state, avg_k=jnp.float32(2.0))
  train = controls(state)["compute_price"]
  deploy = controls(state, deployment=True)["compute_price"]
  assert (int(train["force_k"]), int(train["gate_clamp"])) == (2, 1)
  assert (int(deploy["force_k"]), int(deploy["gate_clamp"])) == (0, 0)
  assert float(deploy["compute_price"]) == pytest.approx(0.03)


def test_regulators_inside_a_wrapping_regulator_are_found():
  """The spike guard wraps its optimizer: the ARS inside still logs and is name-checked."""
  from homeo_jax.regulators.ars import ars_adamw
  from homeo_jax.regulators.spike_guard import skip_spikes

  params = {"w": jnp.ones((2, 3))}
  state = skip_spikes(ars_adamw(1e-3)).init(params)
  assert [s.kind for s in regulator_specs(state)] == ["spike_guard", "ars"]
  with pytest.raises(ValueError, match="two regulators are named 'ars'"):
    regulator_specs(skip_spikes(ars_adamw(1e-3), name="ars").init(params))
