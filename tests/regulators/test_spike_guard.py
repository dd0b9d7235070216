"""Spike guard against a NumPy float64 reference of the skip/clip rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from homeo_jax.regulators.spike_guard import skip_spikes

WINDOW, K, MIN_HISTORY, MAX_CONSECUTIVE = 8, 3.0, 4, 3


def reference(losses, norms, mode):
  """(per step: skipped, clipped, gradient scale) from the module docstring's rule, float64."""
  held_l, held_g, consecutive, out = [], [], 0, []
  for loss, norm in zip(losses, norms, strict=True):
    finite = np.isfinite(loss) and np.isfinite(norm)
    judged = min(len(held_l), len(held_g)) >= MIN_HISTORY
    limit = np.mean(held_g) + K * np.std(held_g) if held_g else np.inf
    outlier = judged and (loss > np.mean(held_l) + K * np.std(held_l) or norm > limit)
    spike = (outlier and consecutive < MAX_CONSECUTIVE) or not finite
    skip = spike if mode == "skip" else not finite
    clip = spike and finite and mode == "clip"
    out.append((skip, clip, min(1.0, limit / norm) if clip else 1.0))
    if not skip and not clip:
      held_l, held_g = (held_l + [loss])[-WINDOW:], (held_g + [norm])[-WINDOW:]
    consecutive = consecutive + 1 if spike else 0
  return out


LOSSES = [2.0, 2.1, 1.9, 2.0, 2.05, 9.0, 2.0, np.nan, 1.95, 8.0, 8.1, 8.2, 8.0, 2.0]
NORMS = [1.0, 1.1, 0.9, 1.0, 1.05, 1.0, 30.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("mode", ["skip", "clip"])
def test_matches_float64_reference_with_sgd(mode):
  tx = skip_spikes(
    optax.sgd(0.1),
    window=WINDOW,
    threshold=K,
    min_history=MIN_HISTORY,
    max_consecutive=MAX_CONSECUTIVE,
    mode=mode,
  )
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  want = reference(LOSSES, NORMS, mode)
  for (loss, norm), (skip, _, scale) in zip(zip(LOSSES, NORMS, strict=True), want, strict=True):
    grads = {"w": jnp.full(3, norm / np.sqrt(3))}
    updates, state = update(grads, state, params, value=jnp.float32(loss), grad_norm=norm)
    expected = 0.0 if skip else -0.1 * scale * norm / np.sqrt(3)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5, atol=1e-7)
  assert int(state.skipped) == sum(s for s, _, _ in want)
  assert int(state.clipped) == sum(c for _, c, _ in want)
  if mode == "clip":  # the gradient spike at step 6 is scaled down to the window's limit
    assert want[6][2] < 0.1
  # the spike at 5, the grad spike at 6, the NaN at 7, then a level shift accepted at step 12
  assert [s for s, _, _ in want] == (
    [False] * 5 + [True, True, True, False, True, True, True, False, False]
    if mode == "skip"
    else [False] * 7 + [True] + [False] * 6
  )


def test_skip_keeps_the_inner_state():
  tx = skip_spikes(optax.adam(0.1), window=4, min_history=2, threshold=1.0)
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  for loss in (1.0, 1.1, 1.0):
    _, state = tx.update({"w": jnp.ones(2)}, state, params, value=loss, grad_norm=1.0)
  before = state.inner
  updates, state = tx.update({"w": jnp.ones(2)}, state, params, value=50.0, grad_norm=1.0)
  assert int(state.spike) == 1 and float(jnp.abs(updates["w"]).max()) == 0.0
  jax.tree.map(np.testing.assert_array_equal, state.inner, before)


def test_bad_arguments_and_missing_telemetry():
  with pytest.raises(ValueError, match="spike_guard: mode must be one of"):
    skip_spikes(optax.sgd(0.1), mode="halve")
  with pytest.raises(ValueError, match="spike_guard: min_history must be in \\[2, 8\\]"):
    skip_spikes(optax.sgd(0.1), window=8, min_history=9)
  tx = skip_spikes(optax.sgd(0.1))
  with pytest.raises(ValueError, match="spike_guard \\('spike_guard'\\) reads 'grad_norm'"):
    tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), value=1.0)
