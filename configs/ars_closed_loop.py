"""ARS in the closed loop it exists for (experiments/ars_closed_loop.py).

    python experiments/ars_closed_loop.py                 # CPU size, minutes per arm

Two phases per seed. ``pretrain``: the char LM (nanoGPT's CPU shape, 4 × 128, block 64)
on the shipped Shakespeare. ``cpu``: from that checkpoint, the model keeps training on
text it generates itself with its current parameters (``data/closed_loop.py``): every
``EVERY`` steps a block of continuations is sampled at ``TEMPERATURE`` from ``PROMPT_LEN``
real characters, and ``FRACTION`` of each batch's rows are those continuations. The
closed-loop learning rate is constant and there is no gradient clipping, so nothing but
the regulator stands between the loop and its failure.
"""

import dataclasses

from homeo_jax.models import TransformerConfig
from homeo_jax.training.config import Config, DataConfig, OptimizerConfig, TrainConfig

FRACTION = 0.5
EVERY = 10
TEMPERATURE = 0.7
PROMPT_LEN = 8


def get_config(arg: str | None = None) -> Config:
  pretrain = Config(
    name="ars_closed_loop_pretrain",
    model=TransformerConfig(
      vocab_size=0, num_layers=4, num_heads=4, d_model=128, max_seq_len=64, dropout=0.0
    ),
    data=DataConfig(corpus="shakespeare", tokenizer="char", seq_len=64, batch_size=12),
    optimizer=OptimizerConfig(
      name="adamw",
      learning_rate=2e-3,
      min_learning_rate=2e-4,
      warmup_steps=100,
      b1=0.9,
      b2=0.99,
      weight_decay=0.1,
      grad_clip=1.0,
    ),
    train=TrainConfig(
      steps=2000,
      eval_every=500,
      eval_batches=40,
      log_every=10,
      checkpoint_every=2000,
      run_dir="runs/ars_closed_loop_cpu/pretrain",
    ),
  )
  if arg == "pretrain":
    return pretrain
  if arg in (None, "cpu"):
    return dataclasses.replace(
      pretrain,
      name="ars_closed_loop_cpu",
      optimizer=dataclasses.replace(
        pretrain.optimizer, learning_rate=2e-3, schedule="constant", warmup_steps=0, grad_clip=0.0
      ),
      train=dataclasses.replace(
        pretrain.train,
        steps=600,
        eval_every=50,
        eval_batches=20,
        log_every=5,
        checkpoint_every=300,
        run_dir="runs/ars_closed_loop_cpu",
      ),
    )
  raise ValueError(f"unknown preset {arg!r} for ars_closed_loop (pretrain, cpu)")
