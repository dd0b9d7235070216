"""What the configs share: the model shapes, the shipped corpus read by characters, AdamW
with cosine decay to a tenth of its peak, and a run's schedule of evals and checkpoints.

Each experiment config builds its presets from these and states only what differs, so a
reader sees at a glance where two experiments part ways. A config imports this module as
``from configs import base`` (``load_config`` makes the folder importable as a package).
"""

from __future__ import annotations

from typing import Any

from homeo_jax.training.config import DataConfig, OptimizerConfig, TrainConfig

# (layers, heads, width, block) of the shapes the experiments use
NANOGPT_CHAR = dict(num_layers=6, num_heads=6, d_model=384, max_seq_len=256)  # its GPU recipe
NANOGPT_CPU = dict(num_layers=4, num_heads=4, d_model=128, max_seq_len=64)  # its CPU recipe
SMALL = dict(num_layers=2, num_heads=4, d_model=128, max_seq_len=64)  # the 2-core ablations
TINY = dict(num_layers=2, num_heads=4, d_model=64, max_seq_len=64)  # MoE and 2-bit ablations


def char_data(seq_len: int = 64, batch_size: int = 16, **fields: Any) -> DataConfig:
  """The shipped Shakespeare, one token per character (``max_chars`` 1M unless given)."""
  fields.setdefault("max_chars", 1_000_000)
  return DataConfig(
    corpus="shakespeare", tokenizer="char", seq_len=seq_len, batch_size=batch_size, **fields
  )


def adamw(
  learning_rate: float,
  *,
  warmup_steps: int,
  b2: float = 0.99,
  weight_decay: float = 0.1,
  grad_clip: float = 1.0,
  **fields: Any,
) -> OptimizerConfig:
  """AdamW with warm-up and cosine decay to a tenth of the peak (``min_learning_rate``
  unless given); ``name`` and ``kwargs`` pick another optimizer of the same schedule."""
  fields.setdefault("name", "adamw")
  fields.setdefault("min_learning_rate", round(learning_rate / 10, 12))
  fields.setdefault("kwargs", {})
  return OptimizerConfig(
    learning_rate=learning_rate,
    warmup_steps=warmup_steps,
    b2=b2,
    weight_decay=weight_decay,
    grad_clip=grad_clip,
    **fields,
  )


def run(
  steps: int,
  run_dir: str,
  *,
  eval_every: int,
  eval_batches: int = 16,
  log_every: int = 10,
  checkpoint_every: int | None = None,
  **fields: Any,
) -> TrainConfig:
  """A run of ``steps`` into ``run_dir``; one checkpoint at the end unless given."""
  return TrainConfig(
    steps=steps,
    eval_every=eval_every,
    eval_batches=eval_batches,
    log_every=log_every,
    checkpoint_every=steps if checkpoint_every is None else checkpoint_every,
    run_dir=run_dir,
    **fields,
  )
