"""The CPU-fast layer forms compute the same numbers as their textbook references.

``Dense`` (one 2-D matmul over flattened rows) against ``nnx.Linear`` on 3-D input;
``causal_attention`` (heads-first, pre-transposed keys) against a float64 NumPy
attention and against ``jax.nn.dot_product_attention``, values and gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from homeo_jax.models.layers import CausalSelfAttention, Dense, TransformerConfig, causal_attention
from homeo_jax.models.losses import lm_loss, with_z_loss

B, H, T, HD = 2, 3, 7, 4


def numpy_causal_attention(q, k, v):
  """float64 reference: q, k, v [b, h, t, hd]."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
  future = np.triu(np.ones((T, T), bool), 1)
  scores = np.where(future, -np.inf, scores)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return probs @ v


def qkv(seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(k, (B, H, T, HD), jnp.float32) for k in keys]


@pytest.mark.slow
def test_dense_matches_nnx_linear_values_and_gradients():
  dense = Dense(5, 6, use_bias=True, rngs=nnx.Rngs(0))
  linear = nnx.Linear(5, 6, use_bias=True, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 3, 5))
  np.testing.assert_allclose(dense(x), linear(x), rtol=1e-6, atol=1e-6)
  assert dense(x).shape == (2, 3, 6)

  def loss(module, x):
    return jnp.sum(jnp.sin(module(x)))

  g_dense = nnx.grad(loss, argnums=(0, 1))(dense, x)
  g_linear = nnx.grad(loss, argnums=(0, 1))(linear, x)
  for a, b in zip(jax.tree.leaves(g_dense), jax.tree.leaves(g_linear), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_causal_attention_matches_float64_reference():
  q, k, v = qkv()
  got = causal_attention(q, k.transpose(0, 1, 3, 2), v)
  np.testing.assert_allclose(got, numpy_causal_attention(q, k, v), rtol=1e-5, atol=1e-6)
  # position 0 attends only to itself
  np.testing.assert_allclose(got[:, :, 0], v[:, :, 0], rtol=1e-6)


@pytest.mark.slow
def test_causal_attention_gradients_match_dot_product_attention():
  q, k, v = qkv(1)
  w = jax.random.normal(jax.random.key(2), (B, H, T, HD))

  def ours(q, k, v):
    return jnp.sum(w * causal_attention(q, k.transpose(0, 1, 3, 2), v))

  def reference(q, k, v):  # jax wants [b, t, h, hd]
    swap = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
    out = jax.nn.dot_product_attention(swap(q), swap(k), swap(v), is_causal=True)
    return jnp.sum(w * swap(out))

  np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), rtol=1e-5)
  grads = jax.grad(ours, (0, 1, 2))(q, k, v), jax.grad(reference, (0, 1, 2))(q, k, v)
  for a, b in zip(*grads, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_causal_attention_in_bfloat16_keeps_dtype_and_stays_close():
  q, k, v = qkv(3)
  got = causal_attention(*(a.astype(jnp.bfloat16) for a in (q, k.transpose(0, 1, 3, 2), v)))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(got, np.float64), numpy_causal_attention(q, k, v), rtol=0.05, atol=0.05
  )


def test_accelerator_path_is_the_same_attention(monkeypatch):
  """On GPU/TPU ``causal_attention`` hands over to ``jax.nn.dot_product_attention``."""
  q, k, v = qkv(4)
  k_t = k.transpose(0, 1, 3, 2)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  jaxpr = str(jax.make_jaxpr(lambda q, k, v: causal_attention(q, k, v))(q, k_t, v))
  got = causal_attention(q, k_t, v)
  monkeypatch.undo()
  cpu_jaxpr = str(jax.make_jaxpr(lambda q, k, v: causal_attention(q, k, v))(q, k_t, v))
  assert jaxpr != cpu_jaxpr  # the other implementation really ran
  np.testing.assert_allclose(got, numpy_causal_attention(q, k, v), rtol=1e-5, atol=1e-6)


def _numpy_qkv(attn, x):
  """float64 q, k of one ``CausalSelfAttention`` [b, h, t, hd], with qk-norm if it has one."""
  w = np.asarray(attn.qkv.kernel.value, np.float64)
  b, t, d = x.shape
  h = attn.num_heads
  q, k, _ = np.split((np.asarray(x, np.float64) @ w).reshape(b, t, 3 * h, d // h), 3, 2)
  if attn.q_norm is not None:

    def norm(a, gain):
      a = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-6)
      return a * np.asarray(gain, np.float64)

    q, k = norm(q, attn.q_norm.scale.value), norm(k, attn.k_norm.scale.value)
  return q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)


@pytest.mark.slow
@pytest.mark.parametrize("qk_norm", [False, True])
def test_max_attention_logit_matches_numpy(qk_norm):
  cfg = TransformerConfig(vocab_size=11, num_layers=1, num_heads=2, d_model=8, max_seq_len=T,
                          qk_norm=qk_norm)  # fmt: skip
  attn = CausalSelfAttention(cfg, rngs=nnx.Rngs(3))
  if qk_norm:  # non-trivial gains, so the test sees them
    attn.q_norm.scale.value = jnp.linspace(0.5, 2.0, 4)
    attn.k_norm.scale.value = jnp.linspace(2.0, 0.5, 4)
  x = 3 * jax.random.normal(jax.random.key(4), (2, T, 8))
  q, k = _numpy_qkv(attn, x)
  scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(4)
  want = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf).max(axis=(0, 2, 3))  # [h]
  y, got = attn(x, deterministic=True, rngs=None, with_logit_max=True)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4)
  np.testing.assert_array_equal(y, attn(x, deterministic=True, rngs=None))  # same output
  if qk_norm:  # with unit gains every |q·k|/√d is at most √hd: the logits are bounded
    attn.q_norm.scale.value = attn.k_norm.scale.value = jnp.ones(4)
    _, bounded = attn(100 * x, deterministic=True, rngs=None, with_logit_max=True)
    assert float(jnp.max(bounded)) <= np.sqrt(4) * (1 + 1e-4)


def test_z_loss_and_logit_telemetry_by_hand():
  logits = jax.random.normal(jax.random.key(5), (2, 3, 7)) * 4 - 2
  targets = jnp.array([[1, 2, 3], [4, 5, 6]])
  loss, telemetry = with_z_loss(lm_loss, 1e-2)(logits, targets, {})
  x = np.asarray(logits, np.float64)
  log_z = np.log(np.exp(x).sum(-1))
  ce = np.mean(log_z - np.take_along_axis(x, np.asarray(targets)[..., None], -1)[..., 0])
  np.testing.assert_allclose(float(telemetry["ce_loss"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(telemetry["z_loss"]), 1e-2 * np.mean(log_z**2), rtol=1e-5)
  np.testing.assert_allclose(float(loss), ce + 1e-2 * np.mean(log_z**2), rtol=1e-5)
  np.testing.assert_allclose(float(telemetry["output_logit_mean"]), x.mean(), rtol=1e-5)
