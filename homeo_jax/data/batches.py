"""Seeded random windows of ``seq_len + 1`` tokens, batched, with a resumable position.

The batch stream is a ``grain.MapDataset``: random access by batch index, so the
*position* of the stream is a single integer (the number of batches consumed) and a
resumed run reads exactly the batches an uninterrupted one would. Window starts are a
per-epoch shuffle of every valid offset (grain reshuffles each epoch with a derived
seed), i.e. sampling without replacement within an epoch.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from homeo_jax.data import corpora
from homeo_jax.data import tokenizers as tokenizers_lib


def window_batches(
  tokens: np.ndarray,
  *,
  seq_len: int,
  batch_size: int,
  seed: int,
  shard_index: int = 0,
  shard_count: int = 1,
) -> grain.MapDataset:
  """Infinite ``MapDataset`` whose item ``i`` is batch ``i``: int32 ``[batch_size, seq_len + 1]``.

  ``shard_index``/``shard_count`` give each host a disjoint slice of the window starts
  (multi-host data parallelism); with the defaults the host reads every window.
  """
  tokens = np.asarray(tokens, dtype=np.int32)
  n_windows = len(tokens) - seq_len
  if n_windows < 1:
    raise ValueError(
      f"data.seq_len={seq_len} needs at least {seq_len + 1} tokens, the split has {len(tokens)}"
    )
  starts = grain.MapDataset.range(n_windows)
  if shard_count > 1:
    starts = starts[shard_index::shard_count]
  return (
    starts.shuffle(seed=seed)
    .repeat()
    .map(lambda start: tokens[start : start + seq_len + 1])
    .batch(batch_size)
  )


@dataclasses.dataclass(frozen=True)
class TextData:
  """A tokenized corpus split into train/validation token arrays."""

  tokenizer: tokenizers_lib.Tokenizer
  train_tokens: np.ndarray
  val_tokens: np.ndarray

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size


def load_text_data(
  corpus: str,
  *,
  tokenizer: str = tokenizers_lib.CHAR,
  val_fraction: float = 0.1,
  bpe_vocab_size: int = 2048,
  max_chars: int | None = None,
  tokenizer_corpus: str | None = None,
) -> TextData:
  """Load, tokenize and split a corpus.

  ``tokenizer_corpus`` builds the vocabulary from another corpus (e.g. the union of
  two corpora in a distribution-shift experiment); by default it is ``corpus`` itself.
  """
  text = corpora.load_corpus(corpus, max_chars)
  vocab_text = text if tokenizer_corpus is None else tokenizer_corpus
  tok = tokenizers_lib.build_tokenizer(tokenizer, vocab_text, bpe_vocab_size=bpe_vocab_size)
  train, val = corpora.split_train_val(tok.encode(text), val_fraction)
  return TextData(tokenizer=tok, train_tokens=train, val_tokens=val)


class SwitchedBatches:
  """Batch ``i`` from ``before`` for ``i < switch_at``, from ``after`` from then on.

  Random access like the streams it joins, so a run resumed across the switch still
  reads exactly the batches of an uninterrupted run (a distribution shift).
  """

  def __init__(self, before, after, switch_at: int):
    if switch_at < 0:
      raise ValueError(f"switch_at must be >= 0, got {switch_at}")
    self.before, self.after, self.switch_at = before, after, switch_at

  def __getitem__(self, index: int) -> np.ndarray:
    return self.before[index] if index < self.switch_at else self.after[index - self.switch_at]
