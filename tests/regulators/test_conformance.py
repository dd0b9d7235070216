"""One conformance suite, parameterized over every regulator (as optax/contrib/_common_test.py).

Each entry builds a complete optimizer (a GradientTransformationExtraArgs after
``optax.with_extra_args_support``). Every regulator must: converge on a small
quadratic under a jitted ``lax.scan``; accept and ignore unknown extra args; work
inside ``optax.chain`` and ``optax.inject_hyperparams``; not recompile on a second
call; keep float32/bfloat16 dtypes; and keep its state finite when the telemetry is
NaN/Inf (and, under ``optax.apply_if_finite``, when the gradients are).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from homeo_jax.models.roles import QueryKeyColumns
from homeo_jax.regulators.ars import ars_adamw
from homeo_jax.regulators.compute_price import compute_price
from homeo_jax.regulators.load_balance import deepseek_balancer, spechorn_balancer
from homeo_jax.regulators.ord_muon import ord_muon
from homeo_jax.regulators.qk_clip import qk_clip
from homeo_jax.regulators.spike_aware import spike_aware
from homeo_jax.regulators.spike_guard import skip_spikes
from homeo_jax.regulators.thyroid import thyroid
from homeo_jax.regulators.update_prox import fisher_subspace_prox
from homeo_jax.regulators.update_ratio import update_ratio_homeostat

MOE_LOAD = jnp.array([[10.0, 30.0, 20.0, 4.0]])
MOE_INPUT = jnp.ones((1, 4, 8))
MOE_DUAL = jnp.array([[0.1, -0.2, 0.05, 0.05]])

REGULATORS = {
  "ars_adamw": lambda lr: ars_adamw(lr),
  "ars_adamw_relative": lambda lr: ars_adamw(
    lr, gate={"surprise": "relative"}, guard={"window": 10}
  ),
  "ord_muon": lambda lr: ord_muon(lr, spectral_lr=0.0),
  "ord_muon_spectral": lambda lr: ord_muon(lr, spectral_lr=0.5),
  "ord_muon_geometric": lambda lr: ord_muon(lr, project_radial=True),
  "adamw_spechorn": lambda lr: optax.chain(optax.adamw(lr), spechorn_balancer(1, 4, 8)),
  "adamw_deepseek": lambda lr: optax.chain(optax.adamw(lr), deepseek_balancer(1, 4)),
  "thyroid": lambda lr: thyroid(optax.adamw, lr, 1e-4, weights="random", update_every=2),
  "thyroid_alpha": lambda lr: thyroid(optax.adamw, lr, version="alpha", weights="random"),
  "adamw_compute_price": lambda lr: optax.chain(
    optax.adamw(lr), compute_price(schedule={"warmup_steps": 0})
  ),
  "spike_guard_adamw": lambda lr: skip_spikes(optax.adamw(lr), window=8, min_history=4),
  "fisher_subspace_ars": lambda lr: fisher_subspace_prox(
    ars_adamw(lr), gamma=0.1, fisher_weight=0.2, rank=2, refresh_every=3
  ),
  # "w" [8, 16] as one layer's fused query | key columns of 2 heads (telemetry [1, 2]).
  "adamw_qk_clip": lambda lr: optax.chain(
    optax.adamw(lr), qk_clip(columns=lambda p: {"['w']": QueryKeyColumns(0, 0, 8, 8)})
  ),
  "spike_aware_adamw": lambda lr: spike_aware(optax.adamw(lr), 50.0),
  "spike_aware_reset": lambda lr: spike_aware(optax.adam(lr), reset_interval=50, warmup=5),
  "spike_aware_muon": lambda lr: spike_aware(ord_muon(lr, spectral_lr=0.0), 50.0),
  "adamw_update_ratio": lambda lr: optax.chain(
    optax.adamw(lr), update_ratio_homeostat(0.05, bounds=(0.5, 2.0))
  ),
}


def telemetry(bad=None):
  """The extra args every update gets: the loss, grad norm and MoE telemetry."""
  value = jnp.asarray(1.0 if bad is None else bad)
  load = MOE_LOAD if bad is None else MOE_LOAD * bad
  return {
    "value": value,
    "grad_norm": value,
    "moe_load": load,
    "moe_mean_input": MOE_INPUT,
    "moe_sinkhorn_dual": MOE_DUAL if bad is None else MOE_DUAL * bad,
    "avg_k": value,
    "delta_ce": value,
    "attn_head_logit_max": jnp.full((1, 2), 1.0 if bad is None else bad),
  }


# Polar(G⊥) alone (the "geometric only" ablation arm) removes exactly the direction that
# changes ‖W‖, so it cannot reach a target of another norm: measured 307 -> 170 in 1000
# steps on this quadratic, where Muon reaches 0.03. It is an arm, not an optimizer.
CONVERGING = sorted(set(REGULATORS) - {"ord_muon_geometric"})


def make(name, lr=0.05):
  return optax.with_extra_args_support(REGULATORS[name](lr))


def target_params(dtype=jnp.float32):
  k = jax.random.split(jax.random.key(0), 3)
  return {
    "w": jax.random.normal(k[0], (8, 16)).astype(dtype),
    "v": jax.random.normal(k[1], (16, 8)).astype(dtype),
    "b": jax.random.normal(k[2], (8,)).astype(dtype),
  }


def quadratic_loss(params, target):
  return sum(
    jnp.sum(jnp.square(p - t))
    for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(target), strict=True)
  )


def init_params(dtype=jnp.float32):
  return jax.tree.map(lambda t: jnp.zeros_like(t) + 0.1, target_params(dtype))


@pytest.mark.parametrize("name", CONVERGING)
def test_converges_under_jitted_scan(name):
  tx = make(name)
  target = target_params()

  def step(carry, _):
    params, state = carry
    loss, grads = jax.value_and_grad(quadratic_loss)(params, target)
    extra = {**telemetry(), "value": loss, "grad_norm": optax.tree.norm(grads)}
    updates, state = tx.update(grads, state, params, **extra)
    return (optax.apply_updates(params, updates), state), loss

  params = init_params()
  (_, _), losses = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=300))(params)
  assert bool(jnp.isfinite(losses).all())
  assert float(losses[-1]) < 0.05 * float(losses[0]), (float(losses[0]), float(losses[-1]))


@pytest.mark.parametrize("name", sorted(REGULATORS))
def test_ignores_unknown_extra_args_and_chains(name):
  params = init_params()
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optax.chain(optax.clip_by_global_norm(1.0), make(name))
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params, unknown_telemetry=3, load=jnp.ones(4), **telemetry())
  clipped = optax.clip_by_global_norm(1.0).update(grads, None)[0]
  plain, _ = make(name).update(clipped, make(name).init(params), params, **telemetry())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, plain)


@pytest.mark.parametrize("name", sorted(REGULATORS))
def test_inside_inject_hyperparams(name):
  tx = optax.inject_hyperparams(REGULATORS[name])(lr=0.05)
  params = init_params()
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = tx.update(grads, state, params, **telemetry())
  state.hyperparams["lr"] = jnp.asarray(0.1)
  updates2, _ = tx.update(grads, state, params, **telemetry())
  # first step from fresh momentum vs second: compare the Adam leaf scale by lr ratio sign only
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates2))
  assert float(jnp.abs(updates2["b"]).max()) > float(jnp.abs(updates["b"]).max())


@pytest.mark.parametrize("name", sorted(REGULATORS))
def test_no_recompile_on_second_call(name):
  tx = make(name)
  params = init_params()
  update = jax.jit(functools.partial(tx.update))
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, state = update(grads, state, params, **telemetry())
  _, state = update(grads, state, params, **{**telemetry(), "value": jnp.array(2.0)})
  assert update._cache_size() == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(REGULATORS))
def test_keeps_dtypes(name, dtype):
  tx = make(name)
  params = init_params(dtype)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params, **telemetry())
  for u in jax.tree.leaves(updates):
    assert u.dtype == dtype


def finite(tree):
  return all(
    bool(jnp.isfinite(x).all())
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
  )


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
@pytest.mark.parametrize("name", sorted(REGULATORS))
def test_state_stays_finite_on_bad_input(name, bad):
  params = init_params()
  grads = jax.tree.map(jnp.ones_like, params)
  tx = make(name)
  state = tx.init(params)
  _, state = tx.update(grads, state, params, **telemetry(bad))
  assert finite(state)  # bad telemetry never enters regulator state
  guarded = optax.with_extra_args_support(optax.apply_if_finite(make(name), 3))
  gstate = guarded.init(params)
  bad_grads = jax.tree.map(lambda g: g.at[0].set(bad), grads)
  _, gstate = guarded.update(bad_grads, gstate, params, **telemetry())
  assert finite(gstate.inner_state) and int(gstate.notfinite_count) == 1
