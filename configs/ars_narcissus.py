"""ARS data-shift ablation: Shakespeare, then abruptly Python source (experiments/ars_narcissus.py).

    python -m experiments.ars_narcissus                  # CPU size, minutes
    python -m experiments.ars_narcissus --scale gpu

The run trains on Shakespeare until ``SHIFT_FRACTION`` of the steps, then on the Python
standard library's sources, at a deliberately aggressive constant learning rate with no
gradient clipping (to give instability a chance). Char vocabulary over both corpora.
"""

import dataclasses

from configs import base
from homeo_jax.models import TransformerConfig
from homeo_jax.training.config import Config

SHIFT_FRACTION = 0.5
PYTHON_CHARS = 1_000_000


def get_config(arg: str | None = None) -> Config:
  cpu = Config(
    name="ars_narcissus_cpu",
    model=TransformerConfig(vocab_size=0, **base.SMALL, dropout=0.0),
    data=base.char_data(),
    optimizer=base.adamw(1e-2, warmup_steps=0, schedule="constant", grad_clip=0.0),
    train=base.run(400, "runs/ars_narcissus", eval_every=100, log_every=1),
  )
  if arg in (None, "cpu"):
    return cpu
  if arg == "gpu":
    return dataclasses.replace(
      cpu,
      name="ars_narcissus_gpu",
      model=TransformerConfig(vocab_size=0, **base.NANOGPT_CHAR, dropout=0.0),
      data=base.char_data(256, 64, max_chars=0),
      optimizer=dataclasses.replace(cpu.optimizer, learning_rate=3e-3),
      train=dataclasses.replace(cpu.train, steps=2000, eval_every=250, eval_batches=50),
    )
  raise ValueError(f"unknown preset {arg!r} for ars_narcissus (cpu, gpu)")
