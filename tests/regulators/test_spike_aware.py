"""Spike-aware moments: a float64 reference of the clip, resets, and a spiking plant."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from homeo_jax.regulators.spike_aware import spike_aware


def numpy_adam_with_spike_clip(grads, theta, lr=0.1, b1=0.9, b2=0.999, eps=1e-8):
  """float64 Adam whose gradient entries with g² > θ·v̂ (v̂ > 0, bias-corrected over the steps
  before) are clipped to ±√(θ·v̂)."""
  m = np.zeros_like(grads[0])
  v = np.zeros_like(grads[0])
  updates, shares = [], []
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64).copy()
    v_seen = v / (1 - b2 ** (t - 1)) if t > 1 else v
    spike = (v_seen > 0) & (g**2 > theta * v_seen)
    g[spike] = np.sign(g[spike]) * np.sqrt(theta * v_seen[spike])
    shares.append(spike.mean())
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    updates.append(-lr * m_hat / (np.sqrt(v_hat) + eps))
  return updates, shares


def test_matches_float64_reference_reading_adams_second_moment():
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=(4, 3)) for _ in range(6)]
  grads[3][1, 2] = 500.0  # a spike: 500² ≫ θ·v
  grads[4][0, 0] = -800.0
  theta = 50.0
  tx = spike_aware(optax.adam(0.1), theta)
  params = {"w": jnp.zeros((4, 3))}
  state = tx.init(params)
  want, want_shares = numpy_adam_with_spike_clip(grads, theta)
  shares = []
  for g, w in zip(grads, want, strict=True):
    u, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    np.testing.assert_allclose(np.asarray(u["w"], np.float64), w, rtol=1e-4, atol=1e-7)
    shares.append(float(state.clipped_fraction))
  np.testing.assert_allclose(shares, want_shares, rtol=1e-6)
  assert want_shares[3] >= 1 / 12 and want_shares[4] >= 1 / 12  # the two spikes among them
  assert state.nu["w"].shape == ()  # the inner's moment was read, no copy kept


def test_own_ema_where_the_inner_has_no_adam_state():
  rng = np.random.default_rng(1)
  grads = [rng.normal(size=(5,)) for _ in range(4)]
  grads[2][3] = 1e3
  theta, b2 = 20.0, 0.9
  tx = spike_aware(optax.sgd(1.0), theta, b2=b2)
  params = {"w": jnp.zeros(5)}
  state = tx.init(params)
  v = np.zeros(5)
  clipped = []
  for t, g in enumerate(grads):
    u, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    want = g.copy()
    v_hat = v / (1 - b2**t) if t else v
    spike = (v_hat > 0) & (want**2 > theta * v_hat)
    want[spike] = np.sign(want[spike]) * np.sqrt(theta * v_hat[spike])
    np.testing.assert_allclose(-np.asarray(u["w"]), want, rtol=1e-5)
    v = b2 * v + (1 - b2) * want**2
    clipped.append(int(spike.sum()))
  assert clipped == [0, 0, 1, 0]  # the spike alone, and the clipped value is what v saw
  np.testing.assert_allclose(np.asarray(state.nu["w"]), v, rtol=1e-5)


def test_reset_zeroes_the_moments_and_warms_up():
  tx = spike_aware(optax.adam(1.0), reset_interval=3, warmup=2)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  g = {"w": jnp.array([1.0, -2.0])}
  sizes = []
  for _ in range(6):
    u, state = tx.update(g, state, params)
    sizes.append(float(jnp.abs(u["w"][0])))
  adam = state.inner[0]
  assert int(state.resets) == 2 and int(adam.count) == 0  # reset after steps 3 and 6
  np.testing.assert_allclose(np.asarray(adam.mu["w"]), 0.0)
  # Steps 1-3 are plain Adam on a constant gradient (|u| = 1); step 4, the first after the
  # reset, is scaled by ½(1 − cos(π/2)) = ½; step 5 by 1.
  np.testing.assert_allclose(sizes, [1.0, 1.0, 1.0, 0.5, 1.0, 1.0], rtol=1e-4)


def test_bad_arguments():
  with pytest.raises(ValueError, match="spike_aware: threshold must be > 0, got -1"):
    spike_aware(optax.adam(0.1), -1)
  with pytest.raises(ValueError, match="spike_aware: reset_interval must be an int >= 0"):
    spike_aware(optax.adam(0.1), reset_interval=-2)


def test_closed_loop_a_gradient_spike_does_not_derail_adam():
  """The plant: a noisy quadratic where, at step 200, one batch's gradient is 1000× (a bad
  batch). Plain Adam's moments absorb it: the first moment carries the spike, the second
  grows ~10⁶× and freezes every later step, so the loss jumps and stays up for the rest of
  the run. With spike-aware moments (SPAM's θ = 5000) the spike enters clipped to
  √θ·√v̂ ≈ 70 typical sizes: a smaller jump, and the run recovers."""
  target = jnp.linspace(-1.0, 1.0, 16)

  def run(tx):
    def step(carry, inputs):
      params, state = carry
      t, key = inputs
      noise = 0.1 * jax.random.normal(key, (16,))
      grads = 2 * (params - target) + noise
      grads = jnp.where(t == 200, 1000.0 * jnp.abs(grads) + 1000.0, grads)
      updates, state = tx.update(grads, state, params)
      return (params + updates, state), jnp.sum(jnp.square(params - target))

    params = jnp.zeros(16)
    keys = jax.random.split(jax.random.key(0), 400)
    _, losses = jax.lax.scan(step, (params, tx.init(params)), (jnp.arange(400), keys))
    return np.asarray(losses)

  plain = run(optax.adam(0.01))
  guarded = run(spike_aware(optax.adam(0.01), 5000.0))
  before = plain[150:200].mean()
  assert np.allclose(plain[:200], guarded[:200], rtol=1e-4)  # no spike, no change
  assert plain[201:260].max() > 20 * before  # the failure
  # Measured: before 0.0046; 60-100 steps after, plain 0.29 and guarded 0.069; over the
  # last 50 steps plain 0.27 and guarded 0.014.
  assert plain[-50:].mean() > 30 * before  # the failure lasts
  assert guarded[260:300].mean() < 0.4 * plain[260:300].mean()
  assert guarded[-50:].mean() < 0.1 * plain[-50:].mean()  # recovered


def test_uncorrected_is_spams_raw_second_moment():
  """corrected=False compares with Adam's raw v: after one step v = (1 − β2)·g₁², so with
  θ = 5000 and β2 = 0.999 an entry clips once g₂² > 5·g₁²."""
  params = {"w": jnp.zeros(3)}
  tx = spike_aware(optax.adam(0.1), 5000.0, corrected=False)
  state = tx.init(params)
  _, state = tx.update({"w": jnp.ones(3)}, state, params)
  _, state = tx.update({"w": jnp.array([2.0, 2.3, 3.0])}, state, params)  # g² = 4, 5.29, 9
  assert float(state.clipped_fraction) == pytest.approx(2 / 3)
  corrected = spike_aware(optax.adam(0.1), 5000.0)
  state = corrected.init(params)
  _, state = corrected.update({"w": jnp.ones(3)}, state, params)
  _, state = corrected.update({"w": jnp.array([2.0, 2.3, 3.0])}, state, params)
  assert float(state.clipped_fraction) == 0.0
