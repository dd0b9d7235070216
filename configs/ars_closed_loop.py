"""ARS in the closed loop it exists for (experiments/ars_closed_loop.py).

    python -m experiments.ars_closed_loop                 # CPU size, minutes per arm

Two phases per seed. ``pretrain``: the char LM (nanoGPT's CPU shape, 4 × 128, block 64)
on the shipped Shakespeare. ``cpu``: from that checkpoint, the model keeps training on
text it generates itself with its current parameters (``training/closed_loop.py``): every
``EVERY`` steps a block of continuations is sampled at ``TEMPERATURE`` from ``PROMPT_LEN``
real characters, and ``FRACTION`` of each batch's rows are those continuations. The
closed-loop learning rate is constant and there is no gradient clipping, so nothing but
the regulator stands between the loop and its failure.
"""

import dataclasses
from pathlib import Path

from homeo_jax.training.config import Config, load_config

FRACTION = 0.5
EVERY = 10
TEMPERATURE = 0.7
PROMPT_LEN = 8


def get_config(arg: str | None = None) -> Config:
  # Pretraining is the char LM's CPU preset (nanoGPT's CPU shape), half as long.
  cpu_lm = load_config(f"{Path(__file__).with_name('shakespeare_char.py')}:cpu")
  pretrain = dataclasses.replace(
    cpu_lm,
    name="ars_closed_loop_pretrain",
    train=dataclasses.replace(
      cpu_lm.train,
      steps=2000,
      eval_every=500,
      checkpoint_every=2000,
      sample_every=0,
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
