import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeo_jax.cores import signals


def push_all(values, window):
  buf = signals.ring_init(window)
  push = jax.jit(signals.ring_push)
  for v in values:
    buf = push(buf, jnp.asarray(v, jnp.float32))
  return buf


def reference_lag1(window_values):
  x = np.asarray(window_values, np.float64)
  if len(x) < 3:
    return 0.0
  a, b = x[:-1], x[1:]
  if a.std() < 1e-9 * (1 + np.abs(x).mean()) or b.std() < 1e-9 * (1 + np.abs(x).mean()):
    return 0.0
  return float(np.corrcoef(a, b)[0, 1])


def test_ring_buffer_order_and_nan_skipping():
  buf = push_all([1, 2, np.nan, 3, np.inf, 4, 5, 6], window=4)
  ordered, mask = signals.ring_ordered(buf)
  np.testing.assert_array_equal(ordered, [3, 4, 5, 6])
  assert mask.all() and int(buf.count) == 6
  part = push_all([7, 8], window=4)
  ordered, mask = signals.ring_ordered(part)
  np.testing.assert_array_equal(ordered[:2], [7, 8])
  np.testing.assert_array_equal(mask, [True, True, False, False])


@pytest.mark.parametrize("kind", ["random", "periodic", "noisy_trend", "partial"])
def test_lag1_against_numpy(kind):
  rng = np.random.default_rng(0)
  t = np.arange(50)
  seq = {
    "random": rng.normal(size=50),
    "periodic": np.sin(2 * np.pi * t / 7),
    "noisy_trend": 3.0 - 0.02 * t + 0.1 * rng.normal(size=50),
    "partial": rng.normal(size=12),
  }[kind]
  window = 30
  buf = push_all(seq, window)
  expected = reference_lag1(seq[-window:])
  assert abs(float(signals.lag1_autocorrelation(buf)) - expected) < 2e-5


def test_constant_window_gives_zero_not_nan():
  for value in (0.0, 2.5, 1e6):
    rho = signals.lag1_autocorrelation(push_all([value] * 20, 10))
    assert float(rho) == 0.0


@settings(max_examples=40, deadline=None)
@given(
  st.lists(
    st.one_of(st.floats(-1e6, 1e6), st.sampled_from([np.nan, np.inf, -np.inf])),
    min_size=0,
    max_size=40,
  )
)
def test_lag1_always_finite_and_bounded(values):
  rho = float(signals.lag1_autocorrelation(push_all(values, 16)))
  assert np.isfinite(rho) and -1.0 <= rho <= 1.0


def test_ema_debiased_against_numpy():
  xs = [2.0, np.nan, 4.0, 3.0]
  ema = signals.ema_init()
  for x in xs:
    ema = signals.ema_update(ema, jnp.asarray(x), 0.9)
  value = 0.0
  for x in (2.0, 4.0, 3.0):
    value = 0.9 * value + 0.1 * x
  np.testing.assert_allclose(float(signals.ema_debiased(ema, 0.9)), value / (1 - 0.9**3), rtol=1e-6)
  assert float(signals.ema_debiased(signals.ema_init(), 0.9)) == 0.0


def reference_spectral_resonance(values, trend_order=3, min_cycles=4.0, floor=1e-3):
  """float64 NumPy: cubic detrend, Hann taper, main-lobe share of the power spectrum,
  zero-padded to the window length like the ring buffer's transform."""
  x = np.asarray(values, np.float64)
  n, window = len(x), WINDOW_SPECTRAL
  t = np.linspace(-1.0, 1.0, n)
  basis = np.vander(t, trend_order + 1, increasing=True)
  coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / (n - 1))
  padded = np.zeros(window)
  padded[:n] = (x - basis @ coef) * hann
  power = np.abs(np.fft.rfft(padded)) ** 2
  power[np.arange(len(power)) * n / window < min_cycles] = 0.0
  lobe = power + np.r_[0.0, power[:-1]] + np.r_[power[1:], 0.0]
  noise_floor = (floor * np.mean(np.abs(x))) ** 2 * np.sum(hann**2)
  return lobe.max() / (power.sum() + noise_floor)


WINDOW_SPECTRAL = 100
T = np.arange(100.0)
SYNTHETIC = {  # name: (signal, resonant?)
  "smooth decay": (3 * np.exp(-T / 60) + 1, False),
  "smooth decay + 1% noise": (
    3 * np.exp(-T / 60) + 1 + 0.01 * np.random.default_rng(0).normal(size=100),
    False,
  ),
  "white noise": (2 + np.random.default_rng(1).normal(size=100), False),
  "period 2": (2 + np.cos(np.pi * T), True),
  "period 4": (2 + np.sin(np.pi * T / 2), True),
  "period 16": (2 + np.sin(2 * np.pi * T / 16), True),
  "decay + period 4": (3 * np.exp(-T / 60) + 1 + 0.1 * np.sin(np.pi * T / 2), True),
  "decay + period 16": (3 * np.exp(-T / 60) + 1 + 0.1 * np.sin(2 * np.pi * T / 16), True),
}


@pytest.mark.parametrize("name", list(SYNTHETIC))
@pytest.mark.parametrize("held", [100, 60])
def test_spectral_resonance_against_numpy(name, held):
  values = SYNTHETIC[name][0][:held]
  buffer = signals.ring_init(WINDOW_SPECTRAL)
  for v in values:
    buffer = signals.ring_push(buffer, v)
  got = float(jax.jit(signals.spectral_resonance)(buffer))
  np.testing.assert_allclose(got, reference_spectral_resonance(values), atol=2e-4)


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_spectral_detector_separates_resonance_from_trend(name):
  """The table in docs/systems/ars.md: lag-1 brakes on every trend; the spectral one does not."""
  values, resonant = SYNTHETIC[name]
  r = reference_spectral_resonance(values)
  assert (1 - r**2 < 0.05) if resonant else (1 - r**2 > 0.95), r


def test_spectral_resonance_waits_for_values():
  buffer = signals.ring_init(100)
  for v in np.sin(np.arange(15)):
    buffer = signals.ring_push(buffer, v)
  assert float(signals.spectral_resonance(buffer)) == 0.0


def test_tree_all_finite_reads_float_leaves_only():
  tree = {"w": jnp.ones((2, 2)), "step": jnp.asarray(3, jnp.int32), "b": jnp.zeros(3)}
  assert bool(signals.tree_all_finite(tree))
  assert not bool(signals.tree_all_finite({**tree, "b": jnp.array([0.0, jnp.inf, 0.0])}))
  assert not bool(signals.tree_all_finite({**tree, "w": jnp.full((2, 2), jnp.nan)}))
  assert bool(signals.tree_all_finite({"step": jnp.asarray(1)}))  # no float leaf: vacuous
