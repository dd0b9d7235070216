"""SpecHorn routing ablation: an MoE variant of the baseline LM (experiments/spechorn_ablation.py).

    python -m experiments.spechorn_ablation                 # CPU size, minutes
    python -m experiments.spechorn_ablation --scale cpu_long --arms spechorn deepseek_u0.01
    python -m experiments.spechorn_ablation --scale gpu

8 experts, top-2, capacity factor 1.25 in training, char-level Shakespeare. The arms set
``model.moe.router`` and the optimizer (AdamW alone, or AdamW chained with a balancer).
"""

import dataclasses

from configs import base
from homeo_jax.models import MoEConfig, MoETransformerConfig
from homeo_jax.training.config import Config


def get_config(arg: str | None = None) -> Config:
  cpu = Config(
    name="spechorn_cpu",
    model_type="moe_transformer",
    model=MoETransformerConfig(
      vocab_size=0,
      **base.TINY,
      dropout=0.0,
      moe=MoEConfig(num_experts=8, top_k=2, capacity_factor=1.25),
    ),
    data=base.char_data(),
    optimizer=base.adamw(3e-3, warmup_steps=30),
    train=base.run(300, "runs/spechorn", eval_every=100, log_every=5),
  )
  if arg in (None, "cpu"):
    return cpu
  if arg == "cpu_long":  # long enough to judge balance: 2,000 steps
    return dataclasses.replace(
      cpu,
      name="spechorn_cpu_long",
      optimizer=dataclasses.replace(cpu.optimizer, warmup_steps=100),
      train=dataclasses.replace(
        cpu.train, steps=2000, eval_every=250, log_every=10, checkpoint_every=1000
      ),
    )
  if arg == "gpu":
    return dataclasses.replace(
      cpu,
      name="spechorn_gpu",
      model=dataclasses.replace(
        cpu.model, **base.NANOGPT_CHAR, moe=dataclasses.replace(cpu.model.moe, num_experts=16)
      ),
      data=base.char_data(256, 32, max_chars=0),
      train=dataclasses.replace(
        cpu.train, steps=3000, eval_every=250, eval_batches=50, log_every=10, checkpoint_every=1000
      ),
    )
  raise ValueError(f"unknown preset {arg!r} for spechorn (cpu, cpu_long, gpu)")
