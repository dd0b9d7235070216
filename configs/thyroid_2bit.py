"""2-bit LM under the Spectral Thyroid (experiments/thyroid_2bit.py).

    python -m homeo_jax.train --config configs/thyroid_2bit.py:cpu
    python -m homeo_jax.train --config configs/thyroid_2bit.py:stress
    python -m homeo_jax.train --config configs/thyroid_2bit.py:gpu

A QuantTransformer (block matrices in 2 bits, absmean scale, soft rounding at
temperature base_temperature·τ with a straight-through gradient) on char-level
Shakespeare; AdamW steered by the shipped, meta-trained thyroid (α, λ, τ). The
experiment's arms change the optimizer (manual sweep / thyroid versions) and the model
type (float).
"""

import dataclasses

from configs import base
from homeo_jax.models import QuantTransformerConfig
from homeo_jax.training.config import Config


def get_config(arg: str | None = None) -> Config:
  cpu = Config(
    name="thyroid_2bit_cpu",
    model_type="quant_transformer",
    model=QuantTransformerConfig(
      vocab_size=0,
      **base.TINY,
      dropout=0.0,
      temperature_from="thyroid",  # τ multiplier from the thyroid_adamw optimizer
    ),
    data=base.char_data(),
    optimizer=base.adamw(
      3e-3, warmup_steps=20, name="thyroid_adamw", kwargs={"version": "alpha_lambda_tau"}
    ),
    train=base.run(300, "runs/thyroid_2bit", eval_every=50, log_every=1),
  )
  if arg in (None, "cpu"):
    return cpu
  if arg == "stress":
    # The harshest of the settings searched for quantization cliffs (README): an untuned lr
    # 10× the cpu preset's, β2 = 0.999 (a second moment that lags sudden gradients), no
    # gradient clip, one absmean scale per matrix, 1,000 steps.
    return dataclasses.replace(
      cpu,
      name="thyroid_2bit_stress",
      model=dataclasses.replace(cpu.model, scale="tensor"),
      optimizer=dataclasses.replace(
        cpu.optimizer, learning_rate=3e-2, min_learning_rate=3e-3, b2=0.999, grad_clip=0.0
      ),
      train=dataclasses.replace(
        cpu.train, steps=1000, eval_every=100, checkpoint_every=1000, run_dir="runs/thyroid_stress"
      ),
    )
  if arg == "gpu":
    return dataclasses.replace(
      cpu,
      name="thyroid_2bit_gpu",
      model=dataclasses.replace(cpu.model, **base.NANOGPT_CHAR),
      data=base.char_data(256, 64, max_chars=0),
      train=dataclasses.replace(cpu.train, steps=3000, eval_every=250, eval_batches=50),
    )
  raise ValueError(f"unknown preset {arg!r} for thyroid_2bit (cpu, stress, gpu)")
