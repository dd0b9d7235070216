"""ARS data-shift ablation: Shakespeare, then abruptly Python source (experiments/ars_narcissus.py).

    python -m experiments.ars_narcissus                  # CPU size, minutes
    python -m experiments.ars_narcissus --scale gpu

The run trains on Shakespeare until ``SHIFT_FRACTION`` of the steps, then on the Python
standard library's sources, at a deliberately aggressive constant learning rate with no
gradient clipping (to give instability a chance). Char vocabulary over both corpora.
"""

import dataclasses

from homeo_jax.models import TransformerConfig
from homeo_jax.training.config import Config, DataConfig, OptimizerConfig, TrainConfig

SHIFT_FRACTION = 0.5
PYTHON_CHARS = 1_000_000


def get_config(arg: str | None = None) -> Config:
  cpu = Config(
    name="ars_narcissus_cpu",
    model=TransformerConfig(
      vocab_size=0, num_layers=2, num_heads=4, d_model=128, max_seq_len=64, dropout=0.0
    ),
    data=DataConfig(
      corpus="shakespeare", tokenizer="char", seq_len=64, batch_size=16, max_chars=1_000_000
    ),
    optimizer=OptimizerConfig(
      name="adamw",
      learning_rate=1e-2,
      schedule="constant",
      warmup_steps=0,
      b1=0.9,
      b2=0.99,
      weight_decay=0.1,
      grad_clip=0.0,
      kwargs={},
    ),
    train=TrainConfig(
      steps=400,
      eval_every=100,
      eval_batches=16,
      log_every=1,
      checkpoint_every=400,
      run_dir="runs/ars_narcissus",
    ),
  )
  if arg in (None, "cpu"):
    return cpu
  if arg == "gpu":
    return dataclasses.replace(
      cpu,
      name="ars_narcissus_gpu",
      model=TransformerConfig(
        vocab_size=0, num_layers=6, num_heads=6, d_model=384, max_seq_len=256, dropout=0.0
      ),
      data=DataConfig(corpus="shakespeare", tokenizer="char", seq_len=256, batch_size=64),
      optimizer=dataclasses.replace(cpu.optimizer, learning_rate=3e-3),
      train=dataclasses.replace(cpu.train, steps=2000, eval_every=250, eval_batches=50),
    )
  raise ValueError(f"unknown preset {arg!r} for ars_narcissus (cpu, gpu)")
