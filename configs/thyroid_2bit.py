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

from homeo_jax.models import QuantTransformerConfig
from homeo_jax.training.config import Config, DataConfig, OptimizerConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
  cpu = Config(
    name="thyroid_2bit_cpu",
    model_type="quant_transformer",
    model=QuantTransformerConfig(
      vocab_size=0,
      num_layers=2,
      num_heads=4,
      d_model=64,
      max_seq_len=64,
      dropout=0.0,
      temperature_from="thyroid",  # τ multiplier from the thyroid_adamw optimizer
    ),
    data=DataConfig(
      corpus="shakespeare", tokenizer="char", seq_len=64, batch_size=16, max_chars=1_000_000
    ),
    optimizer=OptimizerConfig(
      name="thyroid_adamw",
      learning_rate=3e-3,
      min_learning_rate=3e-4,
      warmup_steps=20,
      b2=0.99,
      weight_decay=0.1,
      grad_clip=1.0,
      kwargs={"version": "alpha_lambda_tau"},
    ),
    train=TrainConfig(
      steps=300,
      eval_every=50,
      eval_batches=16,
      log_every=1,
      checkpoint_every=300,
      run_dir="runs/thyroid_2bit",
    ),
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
      model=dataclasses.replace(cpu.model, num_layers=6, num_heads=6, d_model=384, max_seq_len=256),
      data=DataConfig(corpus="shakespeare", tokenizer="char", seq_len=256, batch_size=64),
      train=dataclasses.replace(cpu.train, steps=3000, eval_every=250, eval_batches=50),
    )
  raise ValueError(f"unknown preset {arg!r} for thyroid_2bit (cpu, stress, gpu)")
