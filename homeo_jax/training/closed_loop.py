"""Closed-loop batches: the model trains on text it generates with its current parameters.

``SelfGeneratedBatches`` is a batch stream for ``train(..., train_batches=...)`` whose
batch depends on the training state (``batch_for(index, state)``): every ``every`` steps
it samples, with the parameters of that moment and the deployment controls, a block of
``every`` batches' worth of continuations (jitted, batched ``models.decode.generate``),
each prompted by the first ``prompt_len`` tokens of a fresh data window. Step ``i``'s batch
is ``round(fraction × B)`` generated rows followed by fresh rows of the base stream's batch
``i``. ``fraction=1`` is a fully closed loop: the model's own predictions are its input
(test-time training, continual learning on its own outputs).

Each generation is scored on the host and appended to ``generations.jsonl`` in the run
folder: the unigram entropy of the generated tokens (bits), the share of distinct 4-grams
among them, and a sample. A resumed run regenerates its current block from the restored
parameters (the keys depend on the step only), so it reads what an uninterrupted run would
whenever checkpoints fall on block boundaries.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from homeo_jax import regulators
from homeo_jax.models.decode import generate


def unigram_entropy_bits(tokens: np.ndarray) -> float:
  """Entropy of the token frequencies, in bits."""
  counts = np.bincount(np.asarray(tokens).ravel())
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())


def distinct_ngram_share(rows: np.ndarray, n: int = 4) -> float:
  """Distinct n-grams over all n-grams, pooled over the rows (1: no repetition)."""
  grams = Counter(
    tuple(row[i : i + n]) for row in np.asarray(rows) for i in range(len(row) - n + 1)
  )
  total = sum(grams.values())
  return len(grams) / total if total else math.nan


class SelfGeneratedBatches:
  """See the module docstring. ``fresh`` is a random-access stream of ``[B, T + 1]``."""

  def __init__(
    self,
    model: nnx.Module,
    fresh: Any,
    *,
    fraction: float,
    every: int,
    temperature: float,
    prompt_len: int,
    seed: int,
    top_k: int = 0,
    log_dir: str | Path | None = None,
    tokenizer: Any = None,
  ):
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if every < 1:
      raise ValueError(f"every must be >= 1, got {every}")
    first = np.asarray(fresh[0])
    self.rows, self.width = first.shape
    if not 1 <= prompt_len < self.width:
      raise ValueError(f"prompt_len must be in [1, {self.width - 1}], got {prompt_len}")
    self.fresh, self.fraction, self.every = fresh, fraction, every
    self.temperature, self.prompt_len, self.seed, self.top_k = temperature, prompt_len, seed, top_k
    self.generated_rows = round(fraction * self.rows)
    self.graphdef, _, self.rest = nnx.split(model, nnx.Param, ...)
    self.log_path = Path(log_dir) / "generations.jsonl" if log_dir is not None else None
    self.tokenizer = tokenizer
    self._block: tuple[int, np.ndarray] | None = None

  def __getitem__(self, index: int) -> np.ndarray:
    raise TypeError("SelfGeneratedBatches depends on the parameters: use batch_for(index, state)")

  def _generate_block(self, block: int, state: Any) -> np.ndarray:
    g = self.generated_rows
    start = block * self.every
    prompts = np.concatenate(
      [np.asarray(self.fresh[start + j])[:g, : self.prompt_len] for j in range(self.every)]
    )
    params, opt_state = jax.device_get((state.params, state.opt_state))
    tokens = generate(
      nnx.merge(self.graphdef, params, self.rest),
      prompts,
      self.width - self.prompt_len,
      key=jax.random.key(self.seed * 1_000_003 + block),
      temperature=self.temperature,
      top_k=self.top_k,
      controls=regulators.controls(opt_state, deployment=True),
    )
    tokens = np.asarray(tokens, np.int32)
    if self.log_path is not None:
      new = tokens[:, self.prompt_len :]
      record = {
        "step": start + 1,
        "sample_entropy_bits": unigram_entropy_bits(new),
        "distinct_4gram_share": distinct_ngram_share(new),
      }
      if self.tokenizer is not None:
        record["sample"] = self.tokenizer.decode(tokens[0])
      with self.log_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return tokens.reshape(self.every, g, self.width)

  def batch_for(self, index: int, state: Any) -> np.ndarray:
    """Step ``index``'s batch, generating the block it falls in from ``state`` if needed."""
    fresh = np.asarray(self.fresh[index])
    if self.generated_rows == 0:
      return fresh
    block = index // self.every
    if self._block is None or self._block[0] != block:
      self._block = (block, self._generate_block(block, state))
    generated = self._block[1][index % self.every]
    return np.concatenate([generated, fresh[self.generated_rows :]]).astype(fresh.dtype)
