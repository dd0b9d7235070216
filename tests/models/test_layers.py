"""The CPU-fast layer forms compute the same numbers as their textbook references.

``Dense`` (one 2-D matmul over flattened rows) against ``nnx.Linear`` on 3-D input;
``causal_attention`` (heads-first, pre-transposed keys) against a float64 NumPy
attention and against ``jax.nn.dot_product_attention``, values and gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from homeo_jax.models.layers import Dense, causal_attention

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


def test_causal_attention_matches_float64_reference():
  q, k, v = qkv()
  got = causal_attention(q, k.transpose(0, 1, 3, 2), v)
  np.testing.assert_allclose(got, numpy_causal_attention(q, k, v), rtol=1e-5, atol=1e-6)
  # position 0 attends only to itself
  np.testing.assert_allclose(got[:, :, 0], v[:, :, 0], rtol=1e-6)


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
