import jax
import jax.numpy as jnp
import numpy as np
import pytest

from homeo_jax import controls
from homeo_jax.regulators.load_balance import (
  CVScheduler,
  SpectralVectors,
  Stages,
  deepseek_balancer,
  spechorn_balancer,
)

L, E, D = 2, 4, 8


def loads(steps, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 40, size=(L, E)).astype(np.float32) for _ in range(steps)]


def mean_inputs(steps, seed=1):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(L, E, D)).astype(np.float32) for _ in range(steps)]


def numpy_spechorn(
  load_seq, input_seq, *, schedule, total_steps, decay=0.9, rate=0.05, every=16, projection
):
  """float64 reference of the SpecHorn regulator (module docstring)."""
  load_ema = np.zeros((L, E))
  spec = np.zeros((L, E, 128))
  n_spec = 0
  cap_scale = 15.0
  out = []
  for step, (load, inputs) in enumerate(zip(load_seq, input_seq, strict=True)):
    load = load.astype(np.float64)
    rel = load / load.mean(-1, keepdims=True)
    cv = np.mean(load.std(-1) / load.mean(-1))
    load_ema = decay * load_ema + (1 - decay) * rel
    n_load = step + 1
    if step % every == 0:
      spec = decay * spec + (1 - decay) * (inputs.astype(np.float64) @ projection)
      n_spec += 1
    spec_hat = spec / (1 - decay**n_spec)
    unit = spec_hat / np.linalg.norm(spec_hat, axis=-1, keepdims=True)
    cos = np.einsum("led,lfd->lef", unit, unit)
    ortho = (np.maximum(cos, 0) * (1 - np.eye(E))).sum(-1) / (E - 1)
    if schedule:
      progress = min(step / total_steps, 1.0)
      cap_scale *= (1 + rate) if cv > 0.08 else (1 - rate) if cv < 0.03 else 1.0
      cap_scale = float(np.clip(cap_scale, 5, 30))
      b_scale, o_scale = 4 + 8 * progress, 0.1 + 0.5 * progress
    else:
      b_scale, o_scale = 8.0, 0.4
    bias = -b_scale * (load_ema / (1 - decay**n_load) - 1)
    cap = cap_scale * np.maximum(rel - 1, 0) ** 2  # this batch's capacity use
    out.append(dict(adjust=bias - cap - o_scale * ortho, cv=cv, cap_scale=cap_scale))
  return out


@pytest.mark.parametrize("schedule", [True, False])
def test_spechorn_against_float64_reference(schedule):
  steps = 20
  tx = spechorn_balancer(
    L,
    E,
    D,
    # the seed's gains, which the reference below hard-codes
    stages=Stages(bias_scale=8.0, cap_penalty_scale=15.0),
    scheduler=CVScheduler(
      total_steps=50, bias_scale_range=(4.0, 12.0), cap_penalty_range=(5.0, 30.0)
    )
    if schedule
    else None,
    spectral=SpectralVectors(seed=3),
    sinkhorn_rate=None,
  )
  projection = np.asarray(jax.random.normal(jax.random.key(3), (D, 128)), np.float64) / D**0.5
  want = numpy_spechorn(
    loads(steps), mean_inputs(steps), schedule=schedule, total_steps=50, projection=projection
  )
  state = tx.init({})
  update = jax.jit(tx.update)
  for t, (load, inputs) in enumerate(zip(loads(steps), mean_inputs(steps), strict=True)):
    _, state = update({}, state, None, moe_load=load, moe_mean_input=inputs)
    np.testing.assert_allclose(
      controls(state)["spechorn"]["moe_logit_adjust"], want[t]["adjust"], rtol=2e-4, atol=2e-4
    )
    np.testing.assert_allclose(float(state.cv), want[t]["cv"], rtol=1e-5)
    np.testing.assert_allclose(float(state.cap_penalty_scale), want[t]["cap_scale"], rtol=1e-5)


@pytest.mark.slow
def test_bias_pushes_overloaded_experts_down_and_scheduler_stays_in_range():
  tx = spechorn_balancer(L, E, D, scheduler={"total_steps": 10}, spectral=None, sinkhorn_rate=None)
  state = tx.init({})
  skewed = np.array([[40.0, 10, 10, 10]] * L)
  for _ in range(200):  # CV stays high: the cap penalty scale climbs to its ceiling
    _, state = tx.update({}, state, None, moe_load=skewed)
  adjust = controls(state)["spechorn"]["moe_logit_adjust"]
  assert (adjust[:, 0] < adjust[:, 1:].min(-1)).all()
  assert float(state.cap_penalty_scale) == pytest.approx(0.5)
  assert float(state.bias_scale) == pytest.approx(0.75) and float(state.ortho_scale) == 0.0
  flat = np.full((L, E), 10.0)
  for _ in range(200):  # CV 0 < 0.03: the scale decays to its floor
    _, state = tx.update({}, state, None, moe_load=flat)
  assert float(state.cap_penalty_scale) == pytest.approx(0.1)


def test_deepseek_bias_against_reference():
  tx = deepseek_balancer(L, E, update_rate=1e-3)
  state = tx.init({})
  bias = np.zeros((L, E))
  for load in loads(10):
    _, state = tx.update({}, state, None, moe_load=load)
    bias += 1e-3 * np.sign(load.mean(-1, keepdims=True) - load)
  np.testing.assert_allclose(controls(state)["deepseek"]["moe_selection_bias"], bias, atol=1e-7)


def test_bad_telemetry_and_arguments():
  tx = spechorn_balancer(L, E, D, sinkhorn_rate=None, spectral=None)
  state = tx.init({})
  _, state = tx.update({}, state, None, moe_load=np.ones((L, E)) * 5)
  before = controls(state)["spechorn"]["moe_logit_adjust"]
  _, state = tx.update({}, state, None, moe_load=np.full((L, E), np.nan))
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state))
  np.testing.assert_allclose(controls(state)["spechorn"]["moe_logit_adjust"], before, atol=1e-6)
  with pytest.raises(ValueError, match="moe_load"):
    tx.update({}, state, None)
  with pytest.raises(ValueError, match="scheduler.cv_band must satisfy"):
    spechorn_balancer(L, E, D, scheduler={"cv_band": (0.1, 0.05)})
  with pytest.raises(ValueError, match="scheduler.band is not a field of CVScheduler"):
    spechorn_balancer(L, E, D, scheduler={"band": (0.1, 0.05)})
  with pytest.raises(ValueError, match="update_rate must be > 0"):
    deepseek_balancer(L, E, update_rate=0.0)


def test_sinkhorn_duals_accumulate_into_the_bias():
  """adjust = (stages 2-4) + Σ rate·dual; a non-finite dual is skipped."""
  base = spechorn_balancer(L, E, D, spectral=None, sinkhorn_rate=None, scheduler=None)
  tx = spechorn_balancer(L, E, D, spectral=None, scheduler=None, sinkhorn_rate=0.25)
  load = np.ones((L, E)) * 5
  dual = np.linspace(-1, 1, L * E).reshape(L, E)
  b_state, s_state = base.init({}), tx.init({})
  for d in (dual, dual, np.full((L, E), np.nan)):
    _, b_state = base.update({}, b_state, None, moe_load=load)
    _, s_state = tx.update({}, s_state, None, moe_load=load, moe_sinkhorn_dual=d)
  got = controls(s_state)["spechorn"]["moe_logit_adjust"]
  want = controls(b_state)["spechorn"]["moe_logit_adjust"] + 2 * 0.25 * dual
  np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match="reads 'moe_sinkhorn_dual'"):
    tx.update({}, s_state, None, moe_load=load)


def test_integral_stages_add_their_terms_to_the_duals_integral():
  """stages="integral": sb ← sb + rate·dual + stage_rate·(bias − cap), by hand."""
  stages = Stages(mode="integral", rate=0.2, bias_scale=0.5, cap_penalty_scale=0.5)
  tx = spechorn_balancer(L, E, D, stages=stages, spectral=None, scheduler=None, sinkhorn_rate=0.25)
  load = np.arange(1.0, L * E + 1).reshape(L, E)
  dual = np.linspace(-1, 1, L * E).reshape(L, E)
  state = tx.init({})
  rel = load / load.mean(-1, keepdims=True)
  sb = np.zeros((L, E))
  for _ in range(3):
    _, state = tx.update({}, state, None, moe_load=load, moe_sinkhorn_dual=dual)
    ema = rel  # a constant input: the debiased EMA is the input itself
    bias = -0.5 * (ema - 1)
    cap = 0.5 * np.maximum(rel - 1, 0) ** 2
    sb = sb + 0.25 * dual + 0.2 * (bias - cap)
    np.testing.assert_allclose(controls(state)["spechorn"]["moe_logit_adjust"], sb, rtol=1e-5)
  with pytest.raises(ValueError, match="stages.mode must be one of .*got 'sum'"):
    spechorn_balancer(L, E, D, stages={"mode": "sum"})
