"""Shakespeare interleaved with algorithmic snippets: a corpus where depth can matter.

Generated, not downloaded: ``load_corpus("shakespeare_algorithmic")`` builds it from the
shipped Shakespeare and a seeded generator, the same text on every machine. After every
``chunk_chars`` (≈ 100) characters of Shakespeare, cut at a line end, one snippet line is
inserted, drawn uniformly from five kinds, in the spirit of the Ouro-Spec seed's SYNTH
data (``"shakespeare_chains"`` and ``"shakespeare_copies"``: three chain or copy lines
after nearly every line; ``GENERATED``):

* ``add``: multi-digit addition, ``4821+3967=8788`` (3–5 digits; carries chain);
* ``parity``: ``parity 0110100 = 1`` (8–16 bits);
* ``copy``: copying at an offset, ``copy k7r2p9 from 2 = r2p9k7`` (a rotation);
* ``qa``: a question, its reasoning, its answer:
  ``Q: Ann has 3 figs, gets 4, gives 2. R: 3+4=7, 7-2=5. A: 5``;
* ``chain``: pointer chasing over 1–4 hops, ``chain k7 yq m3 qk ? y=7`` (y→q→k→7; each
  pair names its target, pairs shuffled, 0–2 distractors). Each hop is one attention
  lookup, so the hops one pass of an L-layer model can resolve are bounded by L: the
  kind on which recurrence (more passes of the same layers) has something to win.

``answer_span(line)`` locates a snippet's answer (the characters a model can only get
right by computing them); ``labelled(text)`` gives every character of an interleaved
text its class (``TOKEN_CLASSES``), for validation per token class.

``snippets(n, seed)`` gives snippets alone (one per line), for a validation set of the
algorithmic class; the Shakespeare validation split is the text class.
"""

from __future__ import annotations

import random

KINDS = ("add", "parity", "copy", "qa", "chain")
MAX_HOPS = 4
MAX_DISTRACTORS = 2
# Per-character classes: Shakespeare, snippet text that is not an answer, and each kind's
# answer (chain answers also per hop count).
TOKEN_CLASSES = (
  "text",
  "prompt",
  *(f"answer_{k}" for k in KINDS if k != "chain"),
  *(f"answer_chain{h}" for h in range(1, MAX_HOPS + 1)),
)
NAMES = ("Ann", "Ben", "Cleo", "Dion", "Edgar", "Fenton", "Gower", "Hero")
ITEMS = ("figs", "coins", "rings", "books", "swords", "crowns")
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# The generated corpora (``corpora.load_corpus`` names): Shakespeare with ``per_cut``
# snippets of ``kinds`` after every ~``chunk_chars`` characters. The chain corpus puts
# three chains after nearly every line (58% of the characters), so a small model sees
# enough lookups to learn them in a CPU-sized run. Measured (2 layers, one pass): at one
# snippet per ~100 characters, a fifth of them chains (width 64, 1,000 steps), and at one
# chain per line (31%; width 128, 2,000 steps), the lookup did not form (chain answers at
# ln 10); at three per line it left chance in 1 of 3 seeds, by copying a digit of the line
# rather than following links (README, Ouro-Spec). The copy corpus is the looped preset's:
# a copy at an unknown offset needs an induction head.
GENERATED = {
  "shakespeare_algorithmic": {"chunk_chars": 100, "kinds": KINDS},
  "shakespeare_chains": {"chunk_chars": 30, "kinds": ("chain",), "per_cut": 3},
  "shakespeare_copies": {"chunk_chars": 30, "kinds": ("copy",), "per_cut": 3},
}


def snippet(rng: random.Random, kind: str | None = None, kinds: tuple[str, ...] = KINDS) -> str:
  """One algorithmic line of ``kind`` (drawn uniformly from ``kinds`` when None)."""
  kind = kind or rng.choice(kinds)
  if kind == "add":
    a, b = (rng.randrange(10 ** (d - 1), 10**d) for d in (rng.randint(3, 5), rng.randint(3, 5)))
    return f"{a}+{b}={a + b}"
  if kind == "parity":
    bits = "".join(rng.choice("01") for _ in range(rng.randint(8, 16)))
    return f"parity {bits} = {bits.count('1') % 2}"
  if kind == "copy":
    s = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(5, 9)))
    k = rng.randrange(1, len(s))
    return f"copy {s} from {k} = {s[k:] + s[:k]}"
  if kind == "qa":
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    x, y = rng.randint(2, 9), rng.randint(2, 9)
    z = rng.randint(1, x + y - 1)
    return (
      f"Q: {name} has {x} {item}, gets {y}, gives {z}. "
      f"R: {x}+{y}={x + y}, {x + y}-{z}={x + y - z}. A: {x + y - z}"
    )
  if kind == "chain":
    hops = rng.randint(1, MAX_HOPS)
    names = rng.sample(LETTERS, hops + rng.randint(0, MAX_DISTRACTORS))
    path, distractors = names[:hops], names[hops:]
    answer = str(rng.randrange(10))
    pairs = [a + b for a, b in zip(path, [*path[1:], answer], strict=True)]
    pairs += [d + str(rng.randrange(10)) for d in distractors]
    rng.shuffle(pairs)
    return f"chain {' '.join(pairs)} ? {path[0]}={answer}"
  raise ValueError(f"snippet kind must be one of {KINDS}, got {kind!r}")


def kind_of(line: str) -> str:
  """The kind of a snippet line (``ValueError`` for a line that is not one)."""
  for prefix, kind in (
    ("parity ", "parity"),
    ("copy ", "copy"),
    ("Q: ", "qa"),
    ("chain ", "chain"),
  ):
    if line.startswith(prefix):
      return kind
  if line[:1].isdigit() and "+" in line and "=" in line:
    return "add"
  raise ValueError(f"not a snippet line: {line!r}")


def answer_span(line: str) -> tuple[int, int]:
  """[start, end) of the answer in a snippet line: after ``A: `` for qa, else after the
  last ``=``."""
  start = line.rindex("A: ") + 3 if kind_of(line) == "qa" else line.rindex("=") + 1
  return start, len(line)


def answer_class(line: str) -> str:
  kind = kind_of(line)
  if kind == "chain":
    return f"answer_chain{chain_hops(line)}"
  return f"answer_{kind}"


def chain_hops(line: str) -> int:
  """The hops of a chain line: links followed from the query letter to a digit."""
  pairs = dict(pair for pair in line.split("?")[0].split()[1:])
  node, hops = line.split("?")[1].strip()[0], 0
  while not node.isdigit():
    node, hops = pairs[node], hops + 1
  return hops


def snippets(n: int, seed: int = 0) -> str:
  """``n`` snippet lines (the algorithmic class on its own)."""
  rng = random.Random(seed)
  return "".join(snippet(rng) + "\n" for _ in range(n))


def interleave(
  text: str,
  *,
  chunk_chars: int = 100,
  kinds: tuple[str, ...] = KINDS,
  per_cut: int = 1,
  seed: int = 0,
) -> str:
  """``text`` with ``per_cut`` snippet lines (of ``kinds``) after every ~``chunk_chars``
  characters, cut at a line end."""
  return "".join(piece for piece, _ in _pieces(text, chunk_chars, kinds, per_cut, seed))


def labelled(
  text: str,
  *,
  chunk_chars: int = 100,
  kinds: tuple[str, ...] = KINDS,
  per_cut: int = 1,
  seed: int = 0,
) -> tuple[str, list[str]]:
  """``interleave(text)`` and the class of each of its characters (``TOKEN_CLASSES``)."""
  out, classes = [], []
  for piece, is_snippet in _pieces(text, chunk_chars, kinds, per_cut, seed):
    out.append(piece)
    if not is_snippet:
      classes += ["text"] * len(piece)
      continue
    start, end = answer_span(piece[:-1])
    classes += ["prompt"] * start + [answer_class(piece[:-1])] * (end - start) + ["prompt"]
  return "".join(out), classes


def _pieces(text: str, chunk_chars: int, kinds: tuple[str, ...], per_cut: int, seed: int):
  """(piece, is_snippet): the text cut at line ends, a snippet line after each cut."""
  rng = random.Random(seed)
  start = 0
  while start < len(text):
    end = text.find("\n", start + chunk_chars)
    if end < 0:  # the tail: no line end to put a snippet after
      yield text[start:], False
      return
    yield text[start : end + 1], False
    for _ in range(per_cut):
      yield snippet(rng, kinds=kinds) + "\n", True
    start = end + 1
