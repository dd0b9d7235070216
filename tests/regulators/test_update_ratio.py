"""Update-ratio homeostat: a float64 reference of the controller, and a plant whose lr is
ten to a thousand times too large."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from homeo_jax.regulators.update_ratio import update_ratio_homeostat

GROUPS = ("matrix", "vector")


def labels(params):
  return {"w": "matrix", "v": "matrix", "b": "vector"}


def numpy_homeostat(updates_seq, params_seq, setpoint, gain, lo, hi):
  """float64: per group, apply m, then log m ← clip(log m − κ(log(m·r) − log r*))."""
  log_m = {g: 0.0 for g in GROUPS}
  out = []
  for u, w in zip(updates_seq, params_seq, strict=True):
    norms = {}
    for g in GROUPS:
      keys = [k for k in u if labels(None)[k] == g]
      un = np.sqrt(sum(np.sum(np.asarray(u[k], np.float64) ** 2) for k in keys))
      wn = np.sqrt(sum(np.sum(np.asarray(w[k], np.float64) ** 2) for k in keys))
      norms[g] = un / wn
    out.append({k: np.asarray(u[k], np.float64) * np.exp(log_m[labels(None)[k]]) for k in u})
    for g in GROUPS:
      err = log_m[g] + np.log(norms[g]) - np.log(setpoint)
      log_m[g] = float(np.clip(log_m[g] - gain * err, np.log(lo), np.log(hi)))
  return out, log_m


def test_matches_float64_reference():
  rng = np.random.default_rng(0)
  shapes = {"w": (4, 3), "v": (3, 2), "b": (3,)}
  updates_seq = [{k: rng.normal(size=s) * 0.1 for k, s in shapes.items()} for _ in range(5)]
  params_seq = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(5)]
  tx = update_ratio_homeostat(
    1e-2, 0.3, bounds=(0.05, 2.0), group_labels=labels, group_names=GROUPS
  )
  state = tx.init({k: jnp.zeros(s) for k, s in shapes.items()})
  want, log_m = numpy_homeostat(updates_seq, params_seq, 1e-2, 0.3, 0.05, 2.0)
  for u, w, expected in zip(updates_seq, params_seq, want, strict=True):
    as32 = lambda t: {k: jnp.asarray(x, jnp.float32) for k, x in t.items()}  # noqa: E731
    got, state = tx.update(as32(u), state, as32(w))
    for k in u:
      np.testing.assert_allclose(np.asarray(got[k], np.float64), expected[k], rtol=1e-5)
  for g in GROUPS:
    np.testing.assert_allclose(float(state.log_multiplier[g]), log_m[g], rtol=1e-5)
  for _ in range(60):  # the same update again and again: the applied ratio settles on r*
    _, state = tx.update(as32(updates_seq[0]), state, as32(params_seq[0]))
  assert float(state.ratio["matrix"]) == pytest.approx(1e-2, rel=0.01)
  low = update_ratio_homeostat(1e-4, 0.3, bounds=(0.05, 2.0), group_labels=labels,
                               group_names=GROUPS)  # fmt: skip
  low_state = low.init(as32(params_seq[0]))
  for _ in range(60):  # r* needs m ≈ 0.01: it stops at its bound
    _, low_state = low.update(as32(updates_seq[0]), low_state, as32(params_seq[0]))
  assert float(low_state.multiplier["matrix"]) == pytest.approx(0.05, rel=1e-5)


def test_nonfinite_and_zero_weights_leave_the_multiplier():
  tx = update_ratio_homeostat(1e-3, 0.5)
  params = {"w": jnp.zeros(4)}
  state = tx.init(params)
  _, state = tx.update({"w": jnp.ones(4)}, state, params)  # ‖W‖ = 0: nothing to measure
  assert float(state.log_multiplier["all"]) == 0.0
  _, state = tx.update({"w": jnp.full(4, jnp.nan)}, state, {"w": jnp.ones(4)})
  assert float(state.log_multiplier["all"]) == 0.0


def test_bad_arguments():
  with pytest.raises(ValueError, match="update_ratio: setpoint must be > 0, got 0"):
    update_ratio_homeostat(0.0)
  with pytest.raises(ValueError, match=r"update_ratio: gain must be in \(0, 1\], got 2"):
    update_ratio_homeostat(gain=2)
  with pytest.raises(ValueError, match="update_ratio: bounds must be"):
    update_ratio_homeostat(bounds=(2.0, 3.0))
  tx = update_ratio_homeostat(group_labels=lambda p: {"w": "odd"}, group_names=("even",))
  with pytest.raises(ValueError, match=r"group_labels gave \['odd'\]"):
    tx.init({"w": jnp.ones(2)})


@pytest.mark.slow
def test_closed_loop_makes_the_loss_flat_in_the_learning_rate():
  """The plant: a noisy quadratic ‖W − T‖² under Adam with a constant lr. At lr 0.05 to 5
  plain Adam bounces around the target with an amplitude ~lr (the failure of a too-large
  lr: the loss grows ~7× a decade); the homeostat at r* = 3e-3 brings every lr to the same
  update size, and the final loss no longer depends on the lr."""
  target = jax.random.normal(jax.random.key(0), (64,))

  def final_loss(lr, homeostat):
    tx = optax.adam(lr)
    if homeostat:
      tx = optax.chain(tx, update_ratio_homeostat(3e-3, 0.05, bounds=(1e-4, 10.0)))

    def step(carry, key):
      w, state = carry
      grads = 2 * (w - target) + 0.1 * jax.random.normal(key, (64,))
      updates, state = tx.update(grads, state, w)
      return (w + updates, state), jnp.sum(jnp.square(w - target))

    w = jnp.full((64,), 0.1)
    _, losses = jax.lax.scan(step, (w, tx.init(w)), jax.random.split(jax.random.key(1), 3000))
    return float(np.mean(np.asarray(losses)[-200:]))

  lrs = (0.05, 0.5, 5.0)
  plain = [final_loss(lr, False) for lr in lrs]
  held = [final_loss(lr, True) for lr in lrs]
  # Measured: plain 0.065 / 0.46 / 3.7, held 0.019 / 0.021 / 0.021.
  assert plain[-1] > 30 * plain[0]  # the failure grows with the lr
  assert max(held) < 0.5 * plain[0]  # every lr trains, better than the best plain lr
  assert max(held) < 1.2 * min(held)  # flat in the lr


def test_unregulated_leaves_and_absent_groups():
  """Leaves labelled "-" keep their update; a group no leaf has is not held in the state."""
  tx = update_ratio_homeostat(
    1e-3,
    1.0,
    bounds=(1e-4, 10.0),
    group_labels=lambda p: {"w": "matrix", "b": "-"},
    group_names=("matrix", "vector"),
  )
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  state = tx.init(params)
  assert set(state.log_multiplier) == {"matrix"}
  grads = {"w": jnp.full((2, 2), 0.5), "b": jnp.full(2, 0.5)}
  _, state = tx.update(grads, state, params)
  updates, state = tx.update(grads, state, params)
  # ‖u‖/‖W‖ = 0.5 for "w": with κ = 1 one step sets m = 1e-3 / 0.5.
  np.testing.assert_allclose(updates["w"], 0.5 * 2e-3, rtol=1e-5)
  np.testing.assert_allclose(updates["b"], 0.5)
