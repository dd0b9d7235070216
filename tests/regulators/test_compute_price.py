"""The compute price: dual ascent, clamps, deadband engagement, audits, schedule, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from homeo_jax.regulators.compute_price import (
  Deadband,
  DualAscent,
  GateBias,
  LogPI,
  PriceSchedule,
  compute_price,
  scaled_schedule,
)

PARAMS = {"w": jnp.zeros(3)}
NO_AUDITS = PriceSchedule(warmup_steps=0, audit_prob=0.0)
FROM_STEP_0 = PriceSchedule(warmup_steps=0, ponder_start=0, audit_prob=0.0)
NEVER_SETTLES = Deadband(settle_steps=10_000)
GRADS = {"w": jnp.ones(3)}


def run(tx, avg_ks, delta_ces=None):
  """Feed a sequence of telemetry through a jitted scan; returns the stacked states."""
  delta_ces = np.zeros(len(avg_ks)) if delta_ces is None else delta_ces

  def step(state, x):
    _, state = tx.update(GRADS, state, PARAMS, avg_k=x[0], delta_ce=x[1])
    return state, state

  xs = jnp.asarray(np.stack([avg_ks, delta_ces], 1), jnp.float32)
  _, states = jax.jit(lambda s: jax.lax.scan(step, s, xs))(tx.init(PARAMS))
  return jax.device_get(states)


def reference(avg_ks, audits, *, target, lr, lo, hi, warmup, settle_steps, rtol, band, rate):
  """float64 reference of the dual ascent with deadband (audit draws taken as given)."""
  price, ref, count, engaged, out = lo, lo, 0, False, []
  for t, (k, audit) in enumerate(zip(avg_ks, audits, strict=True)):
    if t >= warmup and not audit and np.isfinite(k):
      low_edge, high_edge = band[0] * target, band[1] * target
      if engaged:  # inside the band: hold; outside: half rate, from the nearer edge
        r = 0.0 if low_edge <= k <= high_edge else rate
        err = k - high_edge if k > high_edge else k - low_edge
      else:
        r, err = 1.0, k - target
      price = float(np.clip(price + r * lr * err, lo, hi))
      if abs(price - ref) > rtol * max(ref, lo):
        ref, count = price, 0
      elif price <= lo or price >= hi:  # saturated at a clamp: not settled
        count = 0
      else:
        count += 1
      engaged = engaged or count >= settle_steps
    out.append((price, engaged))
  return out


def test_dual_ascent_with_deadband_against_a_float64_reference():
  tx = compute_price(
    target_k=1.3,
    controller=DualAscent(dual_lr=2e-3),
    price_min=1e-4,
    price_max=5e-2,
    schedule=PriceSchedule(warmup_steps=5, ponder_start=5, audit_start=5, audit_prob=0.2),
    deadband=Deadband(settle_steps=10),
    seed=3,
  )
  rng = np.random.default_rng(0)
  # Above target (price climbs to its clamp and settles there), then near/below target.
  avg_ks = np.concatenate([rng.uniform(1.6, 2.2, 80), rng.uniform(1.15, 1.45, 120)])
  avg_ks[50] = np.nan
  states = run(tx, avg_ks)
  audits = np.concatenate([[0], states.audit[:-1]]).astype(bool)  # audit flag of each step
  assert 10 < audits.sum() < 70  # ~20% of the steps after audit_start
  ref = reference(
    avg_ks,
    audits,
    target=1.3,
    lr=2e-3,
    lo=1e-4,
    hi=5e-2,
    warmup=5,
    settle_steps=10,
    rtol=0.05,
    band=(0.98, 1.05),
    rate=0.5,
  )
  np.testing.assert_allclose(states.price, [p for p, _ in ref], rtol=1e-5, atol=1e-8)
  np.testing.assert_array_equal(states.deadband.astype(bool), [e for _, e in ref])
  assert states.deadband[-1] == 1  # the settling trigger engaged
  assert states.price.max() == pytest.approx(5e-2)  # clamp reached and held
  # audits never moved the price
  moved = np.abs(np.diff(np.concatenate([[1e-4], states.price]))) > 0
  assert not np.any(moved & audits)


def test_clamps_and_bad_telemetry():
  tx = compute_price(controller=DualAscent(1.0), schedule=NO_AUDITS, price_min=1e-4, price_max=5e-2)
  high = run(tx, np.full(5, 4.0))
  assert np.all(high.price == np.float32(5e-2))
  low = run(tx, np.full(5, 1.0))
  assert np.all(low.price == np.float32(1e-4))
  bad = run(tx, np.array([np.nan, np.inf, -np.inf, 1.5]))
  assert np.all(np.isfinite(bad.price)) and bad.price[2] == np.float32(1e-4)
  assert bad.avg_k[2] == 1.0 and bad.avg_k[3] == 1.5


def test_deadband_holds_inside_and_steps_from_the_edge_outside():
  tx = compute_price(
    controller=DualAscent(1e-2), schedule=NO_AUDITS, deadband=Deadband(settle_steps=3)
  )
  # one step up off the floor, then on target: λ_p unmoved for 3 steps -> settled -> engaged
  s = run(tx, [1.8, 1.3, 1.3, 1.3, 1.3 * 1.02, 1.3 * 1.04, 1.0, 2.0])
  np.testing.assert_allclose(s.price[0], 1e-4 + 1e-2 * 0.5, rtol=1e-6)
  assert list(s.deadband) == [0, 0, 0, 1, 1, 1, 1, 1]
  assert list(s.deadband_steps_since_trigger) == [0, 0, 0, 0, 1, 2, 3, 4]
  assert s.price[5] == s.price[3] and s.price[4] == s.price[3]  # inside the band: no move
  # outside: half rate, measured from the nearer band edge (0.98·1.3 below, 1.05·1.3 above)
  np.testing.assert_allclose(s.price[6], s.price[5] + 0.5 * 1e-2 * (1.0 - 0.98 * 1.3), rtol=1e-5)
  np.testing.assert_allclose(s.price[7], s.price[6] + 0.5 * 1e-2 * (2.0 - 1.05 * 1.3), rtol=1e-5)


def test_a_price_pinned_at_its_clamp_never_triggers_the_deadband():
  tx = compute_price(
    controller=DualAscent(1e-2), schedule=NO_AUDITS, deadband=Deadband(settle_steps=3)
  )
  high = run(tx, np.full(20, 10.0))  # λ_p saturates at price_max: saturated, not settled
  low = run(tx, np.full(20, 1.0))  # and at price_min
  assert high.price[-1] == np.float32(5e-2) and low.price[-1] == np.float32(1e-4)
  assert high.deadband.max() == 0 and low.deadband.max() == 0


def test_audits_are_forced_to_two_passes_and_kept_apart():
  tx = compute_price(
    schedule=PriceSchedule(warmup_steps=2, ponder_start=2, audit_start=4, audit_prob=1.0)
  )
  s = run(tx, np.full(8, 1.6), delta_ces=np.arange(8) * 0.01)
  # controls for step t+1 sit in state t: warm-up forces 2, audits force 2 from step 4
  assert list(s.controls["force_k"]) == [2, 0, 0, 2, 2, 2, 2, 2]
  assert list(s.audit) == [0, 0, 0, 1, 1, 1, 1, 1]
  # steps 4..7 were audits: their ΔCE went to audit_delta_ce and λ_p froze
  np.testing.assert_allclose(s.audit_delta_ce[4:], np.arange(4, 8) * 0.01, atol=1e-7)
  np.testing.assert_allclose(s.delta_ce[4:], 0.03, atol=1e-7)
  assert np.all(s.price[4:] == s.price[3]) and s.price[3] > s.price[1]
  assert s.audits[-1] == 4


def test_schedule_controls_and_fixed_price():
  tx = compute_price(
    schedule=PriceSchedule(warmup_steps=2, ponder_start=4, clamp_until=6, audit_prob=0.0),
    fixed_price=0.02,
  )
  state = tx.init(PARAMS)
  assert int(state.controls["force_k"]) == 2 and float(state.controls["compute_price"]) == 0.0
  s = run(tx, np.full(8, 3.0))
  assert list(s.controls["compute_price"] > 0) == [False] * 3 + [True] * 5
  assert list(s.controls["gate_clamp"]) == [1, 1, 1, 1, 1, 0, 0, 0]
  assert np.all(s.price == np.float32(0.02))  # fixed_price pins it


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"target_k": 0.5}, "compute_price: target_k must be in \\[1, 4\\], got 0.5"),
    ({"target_k": 5.0}, "compute_price: target_k must be in \\[1, 4\\], got 5.0"),
    ({"max_passes": 0}, "compute_price: max_passes must be an int >= 1, got 0"),
    ({"schedule": {"audit_prob": 2.0}}, "audit_prob must be in \\[0, 1\\], got 2.0"),
    (
      {"controller": {"kind": "seed", "price_gain": 0.1}},
      "controller.price_gain is not a field of DualAscent \\(it has: dual_lr\\)",
    ),
    (
      {"controller": GateBias(price_gain=0.1), "fixed_price": 0.02},
      "price_gain moves λ_p, so fixed_price must be None",
    ),
    ({"controller": GateBias(price_damping=-1.0)}, "price_damping must be >= 0, got -1.0"),
    ({"schedule": {"warmup": 3}}, "schedule.warmup is not a field of PriceSchedule"),
    ({"deadband": [0.9, 1.1]}, "deadband must be a Deadband or a dict, got \\[0.9, 1.1\\]"),
  ],
)
def test_bad_arguments_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    compute_price(**kwargs)


def test_scaled_schedule():
  assert scaled_schedule(600, 10_000, warmup=800, clamp=4000) == {"warmup": 48, "clamp": 240}
  assert scaled_schedule(20_000, 10_000, warmup=800) == {"warmup": 800}


def test_log_pi_controller_against_a_float64_reference():
  """PI on log λ_p over the relative error; no audits, deadband never engages here."""
  tx = compute_price(
    target_k=2.0,
    price_min=1e-4,
    price_max=10.0,
    controller=LogPI(integral_gain=0.1, proportional_gain=0.4),
    schedule=PriceSchedule(warmup_steps=3, ponder_start=3, audit_prob=0.0),
    deadband=NEVER_SETTLES,
  )
  avg_ks = np.concatenate([np.linspace(3.5, 2.5, 40), np.linspace(2.4, 1.6, 40)])
  states = run(tx, avg_ks)
  price, prev, want = 1e-4, 0.0, []
  for t, k in enumerate(avg_ks):
    if t >= 3:
      e = (k - 2.0) / 2.0
      price = float(np.clip(price * np.exp(0.1 * e + 0.4 * (e - prev)), 1e-4, 10.0))
      prev = e
    want.append(price)
  np.testing.assert_allclose(states.price, want, rtol=1e-4)
  # up while deeper than the target, down once below it: the peak is where avg_k crossed 2
  assert 40 <= int(np.argmax(states.price)) <= 55 and states.price[-1] < states.price.max()


def test_gate_bias_controller_against_a_float64_reference():
  """b ← clip(b − κ_b·(e + κ_p·Δe), ±bias_max), e = avg_k − target; λ_p stays put."""
  tx = compute_price(
    target_k=2.0,
    controller=GateBias(bias_gain=0.2, proportional_gain=0.5, bias_max=1.5),
    schedule=PriceSchedule(warmup_steps=3, ponder_start=3, audit_prob=0.0),
    deadband=NEVER_SETTLES,
  )
  avg_ks = np.concatenate([np.linspace(3.5, 2.5, 40), np.linspace(1.2, 1.9, 40)])
  states = run(tx, avg_ks)
  bias, prev, want = 0.0, 0.0, []
  for t, k in enumerate(avg_ks):
    if t >= 3:
      e = k - 2.0
      bias = float(np.clip(bias - 0.2 * (e + 0.5 * (e - prev)), -1.5, 1.5))
      prev = e
    want.append(bias)
  np.testing.assert_allclose(states.halt_bias, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(states.controls["halt_bias"], want, rtol=1e-4, atol=1e-6)
  assert states.halt_bias.min() == pytest.approx(-1.5)  # the clamp binds
  np.testing.assert_allclose(states.price, 1e-4)  # λ_p stays at its floor


def test_price_gain_recentres_the_bias_against_a_float64_reference():
  """log λ_p ← clip(log λ_p − κ_m·(b_t + τ_m·(b_t − b_{t−1})), log price_min, log price_max),
  after b's own step; b's trajectory is the controller's without the price."""
  tx = compute_price(
    target_k=2.0,
    controller=GateBias(bias_gain=0.2, price_gain=0.05, price_damping=60.0),
    price_max=10.0,
    schedule=PriceSchedule(warmup_steps=3, ponder_start=3, audit_prob=0.0),
    deadband=NEVER_SETTLES,
  )
  avg_ks = np.concatenate([np.linspace(3.5, 2.5, 40), np.linspace(1.2, 1.9, 40)])
  states = run(tx, avg_ks)
  bias, prev, price, want_b, want_p = 0.0, 0.0, 1e-4, [], []
  for t, k in enumerate(avg_ks):
    if t >= 3:
      e = k - 2.0
      new_bias = float(np.clip(bias - 0.2 * (e + 0.5 * (e - prev)), -8.0, 8.0))
      drive = new_bias + 60.0 * (new_bias - bias)
      price = float(np.clip(price * np.exp(-0.05 * drive), 1e-4, 10.0))
      bias, prev = new_bias, e
    want_b.append(bias)
    want_p.append(price)
  np.testing.assert_allclose(states.halt_bias, want_b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(states.price, want_p, rtol=1e-3)
  steps = np.diff(want_p)
  assert max(want_p) == 10.0 and steps.min() < 0 < steps.max()  # up and down, clamp binds


def gate_learning_plant(tx, steps, rate=0.05, gain=1.0):
  """Closed loop on a gate that learns: its logit c climbs at ``rate``·(return − λ_p)
  per step, the return of depth diminishing, gain·(4 − avg_k)/3, and avg_k =
  1 + 3·sigmoid(b + c). Returns (avg_k, b, λ_p) per step."""
  state, c, trace = tx.init(PARAMS), 0.0, []
  update = jax.jit(tx.update)
  for _ in range(steps):
    b, price = float(state.controls["halt_bias"]), float(state.controls["compute_price"])
    k = 1.0 + 3.0 / (1.0 + np.exp(-(b + c)))
    trace.append((k, b, price))
    c += rate * (gain * (4.0 - k) / 3.0 - price)
    _, state = update(GRADS, state, PARAMS, avg_k=jnp.float32(k))
  return np.array(trace)


@pytest.mark.parametrize("target", [1.3, 2.0, 3.0])
def test_price_gain_holds_a_gate_that_learns_against_the_bias(target):
  """Without a price the gate's logit climbs for as long as depth pays, the bias follows
  it to its clamp and depth overshoots (the looped task's failure, docs/systems/ouro_spec.md); with
  price_gain the price settles at the return of depth at the target, (4 − t)/3, and the
  bias returns near 0."""
  kw = dict(target_k=target, schedule=FROM_STEP_0, deadband=Deadband(band=(0.98, 1.02)))
  alone = gate_learning_plant(compute_price(**kw, controller="gate_bias", price_max=10.0), 1200)
  alone = alone[900:]
  assert np.all(alone[:, 1] == -8.0) and np.all(alone[:, 0] - target > 0.5)
  for rate, gain in ((0.05, 1.0), (0.2, 3.0)):
    tx = compute_price(**kw, controller=GateBias(price_gain=0.03), price_max=10.0)
    held = gate_learning_plant(tx, 1200)[900:]
    assert np.max(np.abs(held[:, 0] - target)) <= 0.1, (rate, gain)
    assert np.max(np.abs(held[:, 1])) <= 1.0, (rate, gain)
    np.testing.assert_allclose(held[-1, 2], (4.0 - target) / 3.0, rtol=0.15)


@pytest.mark.parametrize("target", [1.3, 2.0, 3.0])
def test_gate_bias_controller_holds_a_drifting_plant_at_its_target(target):
  """Closed loop on a plant with the adaptive layer's shape of response, avg_k =
  1 + 3·sigmoid(b + c_t), whose own preference c_t drifts by 4 logits over the run (the
  gate learning to go deeper). The loop holds avg_k within 0.1 of the target over the last
  quarter, where the one-sided price could not. Should the deadband engage, the
  seed's band [0.98, 1.05]·target would reach 0.15 above 3, so the band here is ±2%."""
  tx = compute_price(
    target_k=target,
    controller="gate_bias",
    schedule=FROM_STEP_0,
    deadband=Deadband(band=(0.98, 1.02)),
  )
  state, ks = tx.init(PARAMS), []
  update = jax.jit(tx.update)
  for t in range(800):
    c = -2.0 + 4.0 * t / 800
    k = 1.0 + 3.0 / (1.0 + np.exp(-(float(state.halt_bias) + c)))
    ks.append(k)
    _, state = update(GRADS, state, PARAMS, avg_k=jnp.float32(k))
  assert max(abs(np.array(ks[600:]) - target)) <= 0.1


def test_a_constant_halting_bias_is_published_from_the_first_step():
  """``bias_gain=0`` with ``initial_bias``: the best-constant baseline of the controller."""
  tx = compute_price(
    controller=GateBias(bias_gain=0.0, initial_bias=2.5), schedule={"warmup_steps": 0}
  )
  states = run(tx, np.linspace(1.0, 4.0, 30))
  assert float(tx.init(PARAMS).controls["halt_bias"]) == 2.5
  np.testing.assert_array_equal(states.controls["halt_bias"], 2.5)
  with pytest.raises(
    ValueError, match="initial_bias must be in \\[-bias_max, bias_max\\], got 9.0"
  ):
    compute_price(controller={"kind": "gate_bias", "initial_bias": 9.0})


def test_deployment_controls_keep_the_halting_bias():
  tx = compute_price(
    schedule=PriceSchedule(warmup_steps=0, ponder_start=0, clamp_until=10), controller="gate_bias"
  )
  state = tx.init(PARAMS)
  for _ in range(5):
    _, state = tx.update(GRADS, state, PARAMS, avg_k=jnp.float32(3.0))
  deploy = state.deployment_controls()
  assert float(deploy["halt_bias"]) == float(state.halt_bias) < 0
  assert int(deploy["gate_clamp"]) == 0 and int(state.controls["gate_clamp"]) == 1


def test_unknown_controller_is_named():
  with pytest.raises(ValueError, match="compute_price: controller must be one of .*got 'pid'"):
    compute_price(controller="pid")


def test_the_builder_names_a_max_passes_that_disagrees_with_the_model():
  from homeo_jax.models import AdaptiveConfig
  from homeo_jax.training.config import ConfigError, OptimizerConfig
  from homeo_jax.training.optimizers import build_optimizer

  model = AdaptiveConfig(vocab_size=8, num_layers=1, num_heads=1, d_model=8, max_seq_len=8)
  cfg = OptimizerConfig(name="adamw_compute_price", kwargs={"max_passes": model.max_passes + 1})
  with pytest.raises(ConfigError, match=f"max_passes={model.max_passes + 1}.*disagrees"):
    build_optimizer(cfg, total_steps=10, model=model)
  same = OptimizerConfig(name="adamw_compute_price", kwargs={"max_passes": model.max_passes})
  build_optimizer(same, total_steps=10, model=model)  # agreeing is fine
