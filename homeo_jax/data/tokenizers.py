"""Tokenizers: character-level (vocabulary from the data) and a locally trained BPE.

Both expose the same small interface — ``encode(text) -> np.ndarray[int32]``,
``decode(ids) -> str``, ``vocab_size`` and ``token_strings`` (each token's characters,
which the Fourier token embedding needs) — so the rest of the library never asks
which one it has.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np

CHAR = "char"
BPE = "bpe"
TOKENIZERS = (CHAR, BPE)


class Tokenizer(Protocol):
  vocab_size: int

  def encode(self, text: str) -> np.ndarray: ...

  def decode(self, ids) -> str: ...

  @property
  def token_strings(self) -> list[str]: ...


class CharTokenizer:
  """One token per Unicode code point present in the training text (nanoGPT's shakespeare_char)."""

  def __init__(self, chars: str | list[str]):
    chars = sorted(set(chars))
    if not chars:
      raise ValueError("CharTokenizer needs at least one character")
    self._chars = chars
    self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)
    self.vocab_size = len(chars)

  @classmethod
  def from_text(cls, text: str) -> CharTokenizer:
    return cls(list(set(text)))

  def known(self, text: str) -> np.ndarray:
    """One bool per character of ``text``: whether the vocabulary holds it."""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.minimum(np.searchsorted(self._codepoints, codepoints), self.vocab_size - 1)
    return self._codepoints[ids] == codepoints

  def encode(self, text: str) -> np.ndarray:
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.searchsorted(self._codepoints, codepoints)
    ids = np.minimum(ids, self.vocab_size - 1)
    unknown = self._codepoints[ids] != codepoints
    if unknown.any():
      bad = chr(int(codepoints[np.argmax(unknown)]))
      raise ValueError(f"character {bad!r} is not in the tokenizer's vocabulary")
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    return "".join(self._chars[i] for i in np.asarray(ids).reshape(-1))

  @property
  def token_strings(self) -> list[str]:
    return list(self._chars)

  def to_json(self) -> str:
    return json.dumps({"type": CHAR, "chars": "".join(self._chars)})


class BPETokenizer:
  """Byte-level BPE trained locally with HuggingFace ``tokenizers``; handles any text."""

  def __init__(self, hf_tokenizer):
    self._tok = hf_tokenizer
    self.vocab_size = hf_tokenizer.get_vocab_size()
    self._strings: list[str] | None = None

  @classmethod
  def train(cls, text: str, vocab_size: int) -> BPETokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
    )
    tok.train_from_iterator(_chunks(text), trainer=trainer)
    return cls(tok)

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    return cls(HFTokenizer.from_file(str(path)))

  def save(self, path: str | os.PathLike) -> None:
    self._tok.save(str(path))

  def encode(self, text: str) -> np.ndarray:
    ids = [e.ids for e in self._tok.encode_batch(list(_chunks(text)))]
    return np.fromiter((i for chunk in ids for i in chunk), dtype=np.int32)

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)])

  @property
  def token_strings(self) -> list[str]:
    if self._strings is None:
      self._strings = [self._tok.decode([i]) for i in range(self.vocab_size)]
    return self._strings


def encode_prompt(tokenizer: Tokenizer, text: str, name: str) -> np.ndarray:
  """``text`` as int32 token ids to generate from; a ValueError naming ``name`` (the
  option or config key it came from) when it is empty or cannot be encoded."""
  if not text:
    raise ValueError(f"{name} is empty: give at least one character to continue")
  try:
    ids = tokenizer.encode(text)
  except (KeyError, ValueError) as e:
    raise ValueError(f"{name} cannot be encoded by the run's tokenizer: {e}") from None
  if len(ids) == 0:
    raise ValueError(f"{name} {text!r} encodes to no tokens")
  return np.asarray(ids, np.int32)


def cache_dir() -> Path:
  """Where trained tokenizers and encoded corpora are cached (``$HOMEO_JAX_CACHE``)."""
  default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "homeo_jax"
  path = Path(os.environ.get("HOMEO_JAX_CACHE", default))
  path.mkdir(parents=True, exist_ok=True)
  return path


def build_tokenizer(kind: str, text: str, *, bpe_vocab_size: int = 2048) -> Tokenizer:
  """Char tokenizer from ``text``, or a BPE trained on it (cached by content hash)."""
  if kind == CHAR:
    return CharTokenizer.from_text(text)
  if kind == BPE:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = cache_dir() / f"bpe-{digest}-{bpe_vocab_size}.json"
    if path.exists():
      return BPETokenizer.from_file(path)
    tok = BPETokenizer.train(text, bpe_vocab_size)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(tmp)
    os.replace(tmp, path)
    return tok
  raise ValueError(f"data.tokenizer must be one of {TOKENIZERS}, got {kind!r}")


def _chunks(text: str, size: int = 1 << 16):
  """Split at line boundaries into ~64K-char pieces: the unit of parallel BPE encoding.

  Splitting only at newlines keeps encode(a + b) == encode(a) + encode(b), since the
  byte-level pre-tokenizer never merges across a newline.
  """
  start = 0
  while start < len(text):
    end = text.find("\n", start + size)
    end = len(text) if end < 0 else end + 1
    yield text[start:end]
    start = end
