"""Text corpora: the shipped Shakespeare, the Python standard library, and user text.

Everything here is offline. ``load_corpus`` takes a name (``"shakespeare"``,
``"python_stdlib"``, ``"shakespeare_algorithmic"`` and ``"shakespeare_chains"`` —
generated from the first, see ``data/algorithmic.py``) or a path to a text file or a
folder of text files, and returns one string. Folders are read in sorted path order so
the corpus, and every split and batch derived from it, is deterministic across machines.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from homeo_jax.data import algorithmic

SHAKESPEARE = "shakespeare"
PYTHON_STDLIB = "python_stdlib"
BUILTIN_CORPORA = (SHAKESPEARE, PYTHON_STDLIB, *algorithmic.GENERATED)

# Files in a user folder that are read as text; anything else is skipped.
TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ".py", ".text", ""})


def shakespeare_text() -> str:
  """The complete works of Shakespeare (Project Gutenberg, public domain), ~5.06M chars."""
  resource = importlib.resources.files("homeo_jax.data").joinpath("shakespeare_complete.txt.gz")
  with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
    return f.read()


def python_stdlib_text(max_chars: int | None = None) -> str:
  """The ``.py`` sources of this interpreter's standard library, concatenated.

  Files are taken in sorted relative-path order (tests and site-packages excluded) so
  the corpus is the same on every machine with the same Python version. Each file is
  preceded by a ``# file: <relative path>`` line.
  """
  root = Path(sysconfig.get_paths()["stdlib"])
  paths = sorted(
    p
    for p in root.rglob("*.py")
    if "site-packages" not in p.parts and "test" not in p.parts and "tests" not in p.parts
  )
  return _concatenate(((p.relative_to(root), p) for p in paths), max_chars)


def text_from_path(path: str | os.PathLike, max_chars: int | None = None) -> str:
  """A text file, or every text file below a folder in sorted order, as one string."""
  path = Path(path)
  if path.is_file():
    return _read(path)[:max_chars] if max_chars else _read(path)
  if not path.is_dir():
    raise FileNotFoundError(f"corpus path {str(path)!r} is neither a file nor a folder")
  paths = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
  if not paths:
    raise ValueError(f"corpus folder {str(path)!r} holds no text files")
  return _concatenate(((p.relative_to(path), p) for p in paths), max_chars)


def load_corpus(name_or_path: str, max_chars: int | None = None) -> str:
  """Load a built-in corpus by name or a user corpus from a file or folder path."""
  if name_or_path == SHAKESPEARE:
    text = shakespeare_text()
  elif name_or_path in algorithmic.GENERATED:
    text = algorithmic.interleave(shakespeare_text(), **algorithmic.GENERATED[name_or_path])
  elif name_or_path == PYTHON_STDLIB:
    return python_stdlib_text(max_chars)
  else:
    return text_from_path(name_or_path, max_chars)
  return text[:max_chars] if max_chars else text


def split_train_val(tokens, val_fraction: float):
  """Deterministic split: the contiguous tail ``val_fraction`` of the tokens is validation."""
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
  n_train = int(round(len(tokens) * (1.0 - val_fraction)))
  return tokens[:n_train], tokens[n_train:]


def _read(path: Path) -> str:
  return path.read_text(encoding="utf-8", errors="replace")


def _concatenate(named_paths: Iterable[tuple[Path, Path]], max_chars: int | None) -> str:
  parts, total = [], 0
  for rel, path in named_paths:
    part = f"# file: {rel.as_posix()}\n{_read(path)}\n"
    parts.append(part)
    total += len(part)
    if max_chars and total >= max_chars:
      break
  text = "".join(parts)
  return text[:max_chars] if max_chars else text
