"""The generated algorithmic snippets are correct, and the corpus is reproducible."""

import random
import re

import pytest

from homeo_jax.data import algorithmic
from homeo_jax.data.corpora import BUILTIN_CORPORA, load_corpus


@pytest.mark.parametrize("kind", algorithmic.KINDS)
def test_every_snippet_states_a_true_answer(kind):
  rng = random.Random(0)
  for _ in range(200):
    line = algorithmic.snippet(rng, kind)
    if kind == "add":
      a, b, c = map(int, re.fullmatch(r"(\d+)\+(\d+)=(\d+)", line).groups())
      assert a + b == c and 100 <= a < 100_000
    elif kind == "parity":
      bits, p = re.fullmatch(r"parity ([01]+) = ([01])", line).groups()
      assert bits.count("1") % 2 == int(p)
    elif kind == "copy":
      s, k, r = re.fullmatch(r"copy (\w+) from (\d+) = (\w+)", line).groups()
      assert r == s[int(k) :] + s[: int(k)] and 0 < int(k) < len(s)
    else:
      x, y, z, s1, d1, r1, ans = map(
        int,
        re.fullmatch(
          r"Q: \w+ has (\d+) \w+, gets (\d+), gives (\d+)\. R: \d+\+\d+=(\d+), (\d+)-\d+=(\d+)\. "
          r"A: (\d+)",
          line,
        ).groups(),
      )
      assert s1 == d1 == x + y and r1 == ans == x + y - z > 0


def test_corpus_is_shakespeare_with_snippets_and_reproducible():
  assert "shakespeare_algorithmic" in BUILTIN_CORPORA
  text = load_corpus("shakespeare_algorithmic", 20_000)
  assert text == load_corpus("shakespeare_algorithmic", 20_000)
  assert text.startswith(load_corpus("shakespeare", 100)[:100])
  assert re.search(r"\n\d+\+\d+=\d+\n", text) and "parity " in text and "Q: " in text
  assert algorithmic.snippets(5, seed=1) != algorithmic.snippets(5, seed=2)
