"""Token embeddings that know how a token is spelled: the hybrid Fourier embedding.

For a token whose string is c_0 c_1 … c_{n−1} the *semantic vector* is

    v(s) = Σ_j  u(c_j) ⊗ φ(j)   ∈ R^{char_dim · pos_dim},   then v ← v / ‖v‖

* u(c) ∈ R^{char_dim}: a fixed random unit vector per character, drawn from a NumPy
  generator seeded by (``seed``, code point), so it is the same in every vocabulary;
* φ(j) ∈ R^{pos_dim}: Fourier features of the character position,
  φ(j) = [cos(ω_m j), sin(ω_m j)]_{m < pos_dim/2} / √(pos_dim/2), ω_m = base^(−2m/pos_dim),
  base 16 (periods from 6 to ~70 characters), so nearby positions have similar features;
* ⊗ the outer product, flattened: D = char_dim · pos_dim (128 · 16 = 2048 at seed size).

Strings sharing characters at the same or nearby positions get a large cosine
(``token`` vs ``tokens`` ≈ 0.9, vs an unrelated word ≈ 0, tested); the empty string
(a special token) gets the zero vector. The table ``[V, D]`` is precomputed once per
vocabulary with NumPy and held as a non-trainable ``FourierTable`` variable (it is never
in the optimizer state or the checkpoint: it is a function of the vocabulary).

The embedding of token i is ``RMSNorm(lookup[i] + W_sem · v(s_i))``: a learned lookup
(``nnx.Embed``, also the tied output head) plus a learned projection of the semantic
vector to the model width.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class FourierTable(nnx.Variable):
  """A constant, vocabulary-derived array: not a parameter, not optimized."""


def char_code(char: str, char_dim: int, seed: int = 0) -> np.ndarray:
  """The fixed random unit vector u(c) of one character."""
  rng = np.random.default_rng([seed, ord(char)])
  u = rng.standard_normal(char_dim)
  return u / np.linalg.norm(u)


def position_features(length: int, pos_dim: int, base: float = 16.0) -> np.ndarray:
  """φ(j) for j < length: ``[length, pos_dim]`` cos/sin features, unit norm per row."""
  if pos_dim < 2 or pos_dim % 2:
    raise ValueError(f"pos_dim must be an even number >= 2, got {pos_dim}")
  half = pos_dim // 2
  omega = base ** (-2.0 * np.arange(half) / pos_dim)
  angle = np.arange(length)[:, None] * omega[None, :]
  return np.concatenate([np.cos(angle), np.sin(angle)], axis=1) / np.sqrt(half)


def semantic_vectors(
  token_strings: Sequence[str], char_dim: int = 128, pos_dim: int = 16, seed: int = 0
) -> np.ndarray:
  """The ``[V, char_dim · pos_dim]`` float32 table of unit semantic vectors (0 for "")."""
  if char_dim < 1:
    raise ValueError(f"char_dim must be >= 1, got {char_dim}")
  longest = max((len(s) for s in token_strings), default=0)
  phi = position_features(max(longest, 1), pos_dim)
  codes: dict[str, np.ndarray] = {}
  table = np.zeros((len(token_strings), char_dim * pos_dim), np.float64)
  for i, string in enumerate(token_strings):
    if not string:
      continue
    for c in string:
      if c not in codes:
        codes[c] = char_code(c, char_dim, seed)
    u = np.stack([codes[c] for c in string])  # [n, char_dim]
    v = np.einsum("nc,np->cp", u, phi[: len(string)]).reshape(-1)
    table[i] = v / max(np.linalg.norm(v), 1e-12)
  return table.astype(np.float32)


class HybridFourierEmbedding(nnx.Module):
  """``tokens [B, T] -> [B, T, d_model]``: RMSNorm(lookup + projected semantic vector)."""

  def __init__(
    self,
    token_strings: Sequence[str],
    d_model: int,
    *,
    char_dim: int = 128,
    pos_dim: int = 16,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    table = semantic_vectors(token_strings, char_dim, pos_dim)
    self.table = FourierTable(jnp.asarray(table))
    init = nnx.initializers.normal(0.02)
    self.lookup = nnx.Embed(len(token_strings), d_model, embedding_init=init, rngs=rngs)
    self.project = nnx.Linear(
      table.shape[1], d_model, use_bias=False, kernel_init=init, dtype=dtype, rngs=rngs
    )
    self.norm = nnx.RMSNorm(d_model, dtype=dtype, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    semantic = jnp.take(self.table[...], tokens, axis=0)
    return self.norm(self.lookup(tokens) + self.project(semantic))

  def attend(self, x: jax.Array) -> jax.Array:
    """The tied output head: logits against the learned lookup table."""
    return self.lookup.attend(x)
