"""QK-clip: a float64 reference of the rescale, and a plant whose attention logits run away."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from homeo_jax.models.roles import QueryKeyColumns, query_key_columns
from homeo_jax.regulators.qk_clip import qk_clip

H, HD, D = 2, 3, 6  # heads, head dim, width: qkv kernel [D, 3D]


def fused_columns(params):
  return {"['qkv']": QueryKeyColumns(layer=0, query=0, key=D, width=D)}


def numpy_qk_clip(w, u, logit_max, tau, alpha):
  """float64: W + u, then head h's query columns × η^α and key columns × η^(1−α)."""
  new = np.asarray(w, np.float64) + np.asarray(u, np.float64)
  for h in range(H):
    s = float(logit_max[0, h])
    eta = tau / s if s > tau else 1.0
    new[:, h * HD : (h + 1) * HD] *= eta**alpha
    new[:, D + h * HD : D + (h + 1) * HD] *= eta ** (1 - alpha)
  return new


@pytest.mark.parametrize("alpha", [0.5, 0.25, 1.0])
def test_rescale_matches_float64_reference(alpha):
  k = jax.random.split(jax.random.key(0), 2)
  params = {"qkv": jax.random.normal(k[0], (D, 3 * D)), "b": jnp.ones(3)}
  grads = {"qkv": jax.random.normal(k[1], (D, 3 * D)), "b": jnp.ones(3)}
  logit_max = jnp.array([[250.0, 40.0]])  # head 0 over τ = 100, head 1 under
  tx = optax.chain(optax.sgd(0.1), qk_clip(100.0, alpha, columns=fused_columns))
  state = tx.init(params)
  updates, state = tx.update(grads, state, params, attn_head_logit_max=logit_max)
  got = optax.apply_updates(params, updates)
  sgd = jax.tree.map(lambda g: -0.1 * g, grads)
  want = numpy_qk_clip(params["qkv"], sgd["qkv"], np.asarray(logit_max), 100.0, alpha)
  np.testing.assert_allclose(np.asarray(got["qkv"], np.float64), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["b"], params["b"] + sgd["b"], rtol=1e-6)  # not a q/k leaf
  np.testing.assert_allclose(got["qkv"][:, 2 * D :], (params["qkv"] + sgd["qkv"])[:, 2 * D :],
                             rtol=1e-6)  # values untouched  # fmt: skip
  clip = state[1]
  assert int(clip.clipped_heads) == 1
  np.testing.assert_allclose(float(clip.min_scale), 0.4)
  np.testing.assert_allclose(float(clip.max_logit), 250.0)


def test_scaled_head_logit_is_exactly_tau():
  """With a zero update, the clipped head's largest logit on the same inputs is τ."""
  k = jax.random.split(jax.random.key(1), 2)
  w = 3 * jax.random.normal(k[0], (D, 3 * D))
  x = jax.random.normal(k[1], (5, D))

  def head_max(w):
    q = (x @ w[:, :D]).reshape(5, H, HD)
    kk = (x @ w[:, D : 2 * D]).reshape(5, H, HD)
    s = jnp.einsum("qhd,khd->hqk", q, kk) / np.sqrt(HD)
    return jnp.max(jnp.where(jnp.tril(jnp.ones((5, 5), bool)), s, -jnp.inf), axis=(1, 2))

  before = head_max(w)
  tau = 0.5 * float(jnp.max(before))
  tx = qk_clip(tau, columns=fused_columns)
  zero = {"qkv": jnp.zeros_like(w)}
  updates, _ = tx.update(zero, tx.init({"qkv": w}), {"qkv": w}, attn_head_logit_max=before[None])
  after = head_max(w + updates["qkv"])
  want = np.where(np.asarray(before) > tau, tau, np.asarray(before))
  np.testing.assert_allclose(np.asarray(after), want, rtol=1e-5)


def test_columns_of_the_fused_qkv_layout():
  params = {"blocks": [{"attn": {"qkv": {"kernel": jnp.zeros((8, 24))}}} for _ in range(2)]}
  cols = query_key_columns(params)
  assert cols == {
    "['blocks'][0]['attn']['qkv']['kernel']": QueryKeyColumns(0, 0, 8, 8),
    "['blocks'][1]['attn']['qkv']['kernel']": QueryKeyColumns(1, 0, 8, 8),
  }


def test_bad_arguments_and_telemetry():
  with pytest.raises(ValueError, match="qk_clip: threshold must be > 0, got 0"):
    qk_clip(0.0, columns=fused_columns)
  with pytest.raises(ValueError, match=r"qk_clip: alpha must be in \[0, 1\], got 1.5"):
    qk_clip(alpha=1.5, columns=fused_columns)
  tx = qk_clip(columns=fused_columns)
  params = {"qkv": jnp.ones((D, 3 * D))}
  with pytest.raises(ValueError, match="reads 'attn_head_logit_max'"):
    tx.update(params, tx.init(params), params)
  with pytest.raises(ValueError, match=r"must be \[layers, heads\]"):
    tx.update(params, tx.init(params), params, attn_head_logit_max=jnp.ones(2))


def test_closed_loop_holds_the_logits_the_plain_optimizer_lets_grow():
  """The plant: one attention whose loss rewards sharp attention (−mean of the diagonal
  logits), so Adam grows W_q and W_k without bound; QK-clip at τ holds every head's largest
  logit near τ (it can overshoot by one step's growth)."""
  k = jax.random.split(jax.random.key(2), 2)
  x = jax.random.normal(k[0], (8, D))
  w0 = 0.3 * jax.random.normal(k[1], (D, 3 * D))
  tau = 10.0

  def loss_and_logits(w):
    q = (x @ w[:, :D]).reshape(8, H, HD)
    kk = (x @ w[:, D : 2 * D]).reshape(8, H, HD)
    s = jnp.einsum("qhd,khd->hqk", q, kk) / np.sqrt(HD)
    causal = jnp.tril(jnp.ones((8, 8), bool))
    head_max = jnp.max(jnp.where(causal, s, -jnp.inf), axis=(1, 2))
    return -jnp.mean(jnp.diagonal(s, axis1=1, axis2=2)), jax.lax.stop_gradient(head_max)

  def run(clip):
    tx = optax.adam(0.05)
    if clip:
      tx = optax.chain(tx, qk_clip(tau, columns=fused_columns))
    tx = optax.with_extra_args_support(tx)

    def step(carry, _):
      params, state = carry
      (_, head_max), grads = jax.value_and_grad(lambda p: loss_and_logits(p["qkv"]), has_aux=True)(
        params
      )
      updates, state = tx.update(grads, state, params, attn_head_logit_max=head_max[None])
      return (optax.apply_updates(params, updates), state), jnp.max(head_max)

    params = {"qkv": w0}
    _, logits = jax.lax.scan(step, (params, tx.init(params)), length=300)
    return np.asarray(logits)

  plain, clipped = run(False), run(True)
  assert plain[-1] > 10 * tau  # the failure: the logits run away
  assert clipped[-100:].max() < 1.5 * tau  # held near τ
  assert clipped[-100:].max() > 0.5 * tau  # not by collapsing attention
