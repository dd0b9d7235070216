"""Shakespeare interleaved with algorithmic snippets: a corpus where depth can matter.

Generated, not downloaded: ``load_corpus("shakespeare_algorithmic")`` builds it from the
shipped Shakespeare and a seeded generator, the same text on every machine. After every
``chunk_chars`` (≈ 100) characters of Shakespeare, cut at a line end, one snippet line is
inserted, drawn uniformly from four kinds, in the spirit of the Ouro-Spec seed's SYNTH
data:

* ``add``: multi-digit addition, ``4821+3967=8788`` (3–5 digits; carries chain);
* ``parity``: ``parity 0110100 = 1`` (8–16 bits);
* ``copy``: copying at an offset, ``copy k7r2p9 from 2 = r2p9k7`` (a rotation);
* ``qa``: a question, its reasoning, its answer:
  ``Q: Ann has 3 figs, gets 4, gives 2. R: 3+4=7, 7-2=5. A: 5``.

``snippets(n, seed)`` gives snippets alone (one per line), for a validation set of the
algorithmic class; the Shakespeare validation split is the text class.
"""

from __future__ import annotations

import random

KINDS = ("add", "parity", "copy", "qa")
NAMES = ("Ann", "Ben", "Cleo", "Dion", "Edgar", "Fenton", "Gower", "Hero")
ITEMS = ("figs", "coins", "rings", "books", "swords", "crowns")
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def snippet(rng: random.Random, kind: str | None = None) -> str:
  """One algorithmic line of ``kind`` (random when None)."""
  kind = kind or rng.choice(KINDS)
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
  raise ValueError(f"snippet kind must be one of {KINDS}, got {kind!r}")


def snippets(n: int, seed: int = 0) -> str:
  """``n`` snippet lines (the algorithmic class on its own)."""
  rng = random.Random(seed)
  return "".join(snippet(rng) + "\n" for _ in range(n))


def interleave(text: str, *, chunk_chars: int = 100, seed: int = 0) -> str:
  """``text`` with a snippet line after every ~``chunk_chars`` characters (at a line end)."""
  rng = random.Random(seed)
  out, start = [], 0
  while start < len(text):
    end = text.find("\n", start + chunk_chars)
    end = len(text) if end < 0 else end + 1
    out.append(text[start:end])
    out.append(snippet(rng) + "\n")
    start = end
  return "".join(out)
