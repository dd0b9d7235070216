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
    elif kind == "chain":
      pairs, start, answer = re.fullmatch(r"chain ((?:\w\w ?)+) \? (\w)=(\d)", line).groups()
      targets = dict(p for p in pairs.split())  # each letter names one target
      assert len(targets) == len(pairs.split())
      node, hops = start, 0
      while not node.isdigit():
        node, hops = targets[node], hops + 1
      assert node == answer and 1 <= hops <= algorithmic.MAX_HOPS
      assert hops <= len(targets) <= hops + algorithmic.MAX_DISTRACTORS
      assert algorithmic.answer_class(line) == f"answer_chain{hops}"
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


def test_labels_mark_each_answer_and_nothing_else():
  """Every snippet's answer characters carry its class, the rest of the snippet is prompt,
  and the Shakespeare is text; the labelled text is the interleaved one."""
  plain = load_corpus("shakespeare", 5_000)
  text, classes = algorithmic.labelled(plain, seed=3)
  assert text == algorithmic.interleave(plain, seed=3) and len(classes) == len(text)
  assert set(classes) <= set(algorithmic.TOKEN_CLASSES)
  answers = "".join(c for c, k in zip(text, classes, strict=True) if k.startswith("answer"))
  expected = ""
  for line in text.split("\n"):
    try:
      kind = algorithmic.kind_of(line)
    except ValueError:
      continue
    expected += line.split("A: ")[-1] if kind == "qa" else line.split("=")[-1]
  assert answers == expected and len(expected) > 20
  assert "".join(c for c, k in zip(text, classes, strict=True) if k == "text") == plain


@pytest.mark.parametrize(
  "corpus, kind", [("shakespeare_chains", "chain"), ("shakespeare_copies", "copy")]
)
def test_single_kind_corpus_puts_snippets_after_nearly_every_line(corpus, kind):
  """The chain and copy corpora: only their kind's snippets, about one per Shakespeare
  line, and the held-out labelling (``labelled`` with the same settings) matches them."""
  settings = algorithmic.GENERATED[corpus]
  text = load_corpus(corpus, 20_000)
  lines = [line for line in text.split("\n") if line]
  kinds = []
  for line in lines:
    try:
      kinds.append(algorithmic.kind_of(line))
    except ValueError:
      continue
  assert set(kinds) == {kind} and len(kinds) > 0.3 * len(lines)
  plain = load_corpus("shakespeare")
  labelled, classes = algorithmic.labelled(plain[:5_000], **settings)
  assert labelled == text[: len(labelled)]
  expected = (
    {f"answer_chain{h}" for h in range(1, algorithmic.MAX_HOPS + 1)}
    if kind == "chain"
    else {f"answer_{kind}"}
  )
  assert {c for c in classes if c.startswith("answer")} == expected
