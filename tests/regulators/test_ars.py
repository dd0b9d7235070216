import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from homeo_jax import regulator_metrics
from homeo_jax.regulators.ars import Gate, Guard, Jitter, ars_adamw
from tests.cores.test_signals import SYNTHETIC, reference_lag1, reference_spectral_resonance

PARAMS = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}


def ars_options(
  window=100, jitter=True, guard=True, jitter_scale=0.1, seed=0, detector="lag1", **gate
):
  """``ars_adamw``'s option groups from the flat names the tests speak."""
  return dict(
    guard=Guard(window=window, detector=detector) if guard else None,
    gate=Gate(**gate),
    jitter=Jitter(scale=jitter_scale, seed=seed) if jitter else None,
  )


def run_ars(values, **kwargs):
  """Feed a loss sequence; return per-step controller states (a list of dicts)."""
  tx = ars_adamw(1e-3, **ars_options(**kwargs))
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  out = []
  for v in values:
    _, state = update(grads, state, PARAMS, value=jnp.asarray(v, jnp.float32))
    c = state.controller
    out.append(
      {k: float(getattr(c, k)) for k in type(c).logged_fields}
      | {
        "inner_b1": float(state.inner.hyperparams["b1"]),
        "inner_lr": float(state.inner.hyperparams["learning_rate"]),
      }
    )
  return out, state


def reference_ars(
  values,
  window=100,
  alpha=1.0,
  phi_min=0.1,
  epsilon=1e-6,
  min_window=3,
  guard=True,
  b1=0.9,
  b2=0.999,
):
  """float64 NumPy reference of steps 1-5 and 7 (jitter checked separately)."""
  held, out = [], []
  psi_prev, phi_prev = 1.0, 1.0
  for v in values:
    if not np.isfinite(v):
      out.append(dict(psi=psi_prev, phi=phi_prev, b1=b1 * phi_prev, b2=b2 * phi_prev))
      continue
    held = (held + [v])[-window:]
    rho = reference_lag1(held)
    psi = max(epsilon, 1 - rho**2) if (guard and len(held) >= min_window) else 1.0
    phi = phi_min + (1 - phi_min) * np.exp(-alpha * v / psi)
    out.append(dict(rho1=rho, psi=psi, surprise_eff=v / psi, phi=phi, b1=b1 * phi, b2=b2 * phi))
    psi_prev, phi_prev = psi, phi
  return out


@pytest.mark.parametrize("kind", ["random", "periodic", "noisy", "constant", "with_nan"])
def test_formulas_against_float64_reference(kind):
  rng = np.random.default_rng(1)
  t = np.arange(40)
  values = {
    "random": rng.uniform(0.5, 3.0, 40),
    "periodic": 2.0 + np.sin(2 * np.pi * t / 6),
    "noisy": 2.0 + 0.3 * rng.normal(size=40),
    "constant": np.full(40, 1.5),
    "with_nan": np.where(t % 9 == 4, np.nan, 2.0 + np.cos(t)),
  }[kind]
  got, _ = run_ars(values, window=16, jitter=False)
  want = reference_ars(values, window=16)
  for step, (g, w) in enumerate(zip(got, want, strict=True)):
    for key, expected in w.items():
      assert abs(g[key] - expected) < 1e-4 * max(1.0, abs(expected)), (step, key, g[key], expected)
    assert abs(g["inner_b1"] - w["b1"]) < 1e-6  # the inner AdamW really sees β1·Φ


def test_guard_detects_periodic_and_relaxes_on_white_noise():
  t = np.arange(120)
  periodic, _ = run_ars(2.0 + np.sin(2 * np.pi * t / 40), window=100)
  noise, _ = run_ars(2.0 + np.random.default_rng(2).normal(size=120), window=100)
  assert periodic[-1]["psi"] < 0.05  # ρ₁ ≈ cos(2π/40) ≈ 0.988
  assert noise[-1]["psi"] > 0.9


def test_jitter_law_and_zero_without_guard():
  t = np.arange(60)
  values = 2.0 + np.sin(2 * np.pi * t / 10)
  got, _ = run_ars(values, window=30, jitter_scale=0.1)
  jit = np.array([g["jitter"] for g in got])
  bound = 0.1 * (1 - np.array([g["psi"] for g in got]))
  assert np.all(np.abs(jit) <= bound + 1e-7) and np.abs(jit).max() > 0.01
  lrs = np.array([g["inner_lr"] for g in got])
  np.testing.assert_allclose(lrs, 1e-3 * (1 + jit), rtol=1e-5)  # never accumulated
  no_guard, _ = run_ars(values, window=30, guard=False)
  assert all(g["jitter"] == 0.0 and g["psi"] == 1.0 for g in no_guard)
  no_jitter, _ = run_ars(values, window=30, jitter=False)
  assert all(g["jitter"] == 0.0 for g in no_jitter)


def test_reproducible_for_a_seed():
  values = 2.0 + np.sin(np.arange(30))
  a, _ = run_ars(values, window=10, seed=3)
  b, _ = run_ars(values, window=10, seed=3)
  c, _ = run_ars(values, window=10, seed=4)
  assert a == b and [x["jitter"] for x in a] != [x["jitter"] for x in c]


def test_relative_surprise_uses_running_baseline():
  values = [2.0] * 20 + [3.0]
  got, _ = run_ars(values, window=10, jitter=False, surprise="relative", baseline_decay=0.9)
  assert got[-2]["surprise_eff"] < 1e-6 and got[-2]["phi"] > 1 - 1e-6  # as expected: no surprise
  # 3 / EMA(2, 2, ...) - 1 = 0.5 excess; the window [2, ..., 2, 3] has a constant lagged half,
  # so ρ₁ = 0, Ψ = 1 and S̃ = 0.5.
  assert got[-1]["psi"] == 1.0
  assert abs(got[-1]["surprise_eff"] - 0.5) < 1e-5
  assert abs(got[-1]["phi"] - (0.1 + 0.9 * np.exp(-0.5))) < 1e-5


@pytest.mark.slow
def test_schedule_stays_source_of_truth_and_chain_and_apply_if_finite():
  schedule = optax.linear_schedule(1e-3, 0.0, 10)
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), ars_adamw(schedule, jitter=None, gate=Gate(surprise="relative"))
  )
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=5)
  state = guarded.init(PARAMS)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  lrs = []
  for _ in range(5):
    _, state = guarded.update(grads, state, PARAMS, value=jnp.asarray(2.0))
    lrs.append(float(regulator_metrics(state)["regulators/ars/learning_rate"]))
  np.testing.assert_allclose(lrs, [float(schedule(i)) for i in range(5)], rtol=1e-5)
  bad = jax.tree.map(lambda g: g * jnp.nan, grads)
  _, state = guarded.update(bad, state, PARAMS, value=jnp.asarray(2.0))
  assert int(state.notfinite_count) == 1


def test_missing_telemetry_is_a_clear_error():
  tx = ars_adamw(1e-3)
  with pytest.raises(ValueError, match="ars \\('ars'\\) reads 'value'"):
    tx.update(PARAMS, tx.init(PARAMS), PARAMS)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"guard": {"window": 2}}, "ars: window must be an int >= 3, got 2"),
    ({"gate": {"phi_min": 0.0}}, "ars: phi_min must be in \\(0, 1\\], got 0.0"),
    ({"gate": {"phi_min": 1.5}}, "phi_min must be in"),
    ({"gate": {"alpha": 0.0}}, "alpha must be > 0, got 0.0"),
    ({"gate": {"surprise": "zscore"}}, "surprise must be one of"),
    ({"gate": {"window": 10}}, "ars: gate.window is not a field of Gate"),
  ],
)
def test_bad_hyperparameters_rejected_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ars_adamw(1e-3, **kwargs)


@pytest.mark.parametrize("name", ["smooth decay + 1% noise", "period 4", "decay + period 16"])
def test_spectral_detector_drives_the_guard(name):
  values, _ = SYNTHETIC[name]
  got, _ = run_ars(values, window=100, jitter=False, detector="spectral")
  r = reference_spectral_resonance(values)
  assert got[-1]["resonance"] == pytest.approx(r, abs=2e-4)
  assert got[-1]["psi"] == pytest.approx(max(1e-6, 1 - r**2), abs=5e-4)
  assert all(g["psi"] == 1.0 for g in got[:15])  # 16 values before it measures
  lag1, _ = run_ars(values, window=100, jitter=False)
  assert lag1[-1]["resonance"] == lag1[-1]["rho1"]  # the default reads the seed's ρ₁


def test_unknown_detector_is_named():
  with pytest.raises(ValueError, match="ars: detector must be one of .*got 'fft'"):
    ars_adamw(1e-3, guard={"detector": "fft"})
