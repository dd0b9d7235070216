import numpy as np
import pytest
from flax import nnx

from homeo_jax.models.embeddings import (
  HybridFourierEmbedding,
  char_code,
  position_features,
  semantic_vectors,
)


def cosine(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_semantic_vector_matches_the_hand_construction():
  table = semantic_vectors(["ab", ""], char_dim=8, pos_dim=4)
  phi = position_features(2, 4)
  v = np.outer(char_code("a", 8), phi[0]) + np.outer(char_code("b", 8), phi[1])
  np.testing.assert_allclose(table[0], v.reshape(-1) / np.linalg.norm(v), atol=1e-6)
  np.testing.assert_array_equal(table[1], 0.0)  # a special token's empty string
  np.testing.assert_allclose(np.linalg.norm(position_features(5, 16), axis=1), 1.0, atol=1e-12)


def test_similar_strings_get_similar_vectors():
  words = ["token", "tokens", " token", "toke", "zebra", "queen", "QUEEN"]
  t = dict(zip(words, semantic_vectors(words, char_dim=128, pos_dim=16), strict=True))
  assert cosine(t["token"], t["tokens"]) > 0.85  # same prefix, one more char
  assert cosine(t["token"], t["toke"]) > 0.85
  assert cosine(t["token"], t[" token"]) > 0.3  # shifted by one: Fourier features overlap
  for other in ("zebra", "QUEEN"):  # no character in common
    assert abs(cosine(t["token"], t[other])) < 0.3, other
  # "queen" shares "en" at the same positions: in between
  assert 0.3 < cosine(t["token"], t["queen"]) < cosine(t["token"], t["tokens"])
  assert cosine(t["token"], t["tokens"]) > cosine(t["token"], t[" token"])


def test_embedding_table_is_not_a_parameter():
  strings = ["a", "b", "ab", ""]
  emb = HybridFourierEmbedding(strings, 16, char_dim=8, pos_dim=4, rngs=nnx.Rngs(0))
  params = nnx.state(emb, nnx.Param)
  assert "table" not in params
  out = emb(np.array([[0, 1, 2, 3]]))
  assert out.shape == (1, 4, 16) and np.all(np.isfinite(out))


def test_bad_dimensions_are_named():
  with pytest.raises(ValueError, match="pos_dim must be an even number >= 2, got 3"):
    semantic_vectors(["a"], pos_dim=3)
