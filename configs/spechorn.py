"""SpecHorn routing ablation: an MoE variant of the baseline LM (experiments/spechorn_ablation.py).

    python -m experiments.spechorn_ablation                 # CPU size, minutes
    python -m experiments.spechorn_ablation --scale cpu_long --arms spechorn deepseek_u0.01
    python -m experiments.spechorn_ablation --scale gpu

8 experts, top-2, capacity factor 1.25 in training, char-level Shakespeare. The arms set
``model.moe.router`` and the optimizer (AdamW alone, or AdamW chained with a balancer).
"""

import dataclasses

from homeo_jax.models import MoEConfig, MoETransformerConfig
from homeo_jax.training.config import Config, DataConfig, OptimizerConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
  cpu = Config(
    name="spechorn_cpu",
    model_type="moe_transformer",
    model=MoETransformerConfig(
      vocab_size=0,
      num_layers=2,
      num_heads=4,
      d_model=64,
      max_seq_len=64,
      dropout=0.0,
      moe=MoEConfig(num_experts=8, top_k=2, capacity_factor=1.25),
    ),
    data=DataConfig(
      corpus="shakespeare", tokenizer="char", seq_len=64, batch_size=16, max_chars=1_000_000
    ),
    optimizer=OptimizerConfig(
      name="adamw",
      learning_rate=3e-3,
      min_learning_rate=3e-4,
      warmup_steps=30,
      b2=0.99,
      weight_decay=0.1,
      grad_clip=1.0,
      kwargs={},
    ),
    train=TrainConfig(
      steps=300,
      eval_every=100,
      eval_batches=16,
      log_every=5,
      checkpoint_every=300,
      run_dir="runs/spechorn",
    ),
  )
  if arg in (None, "cpu"):
    return cpu
  if arg == "cpu_long":  # long enough to judge balance (issue 13): 2,000 steps
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
        cpu.model,
        num_layers=6,
        num_heads=6,
        d_model=384,
        max_seq_len=256,
        moe=dataclasses.replace(cpu.model.moe, num_experts=16),
      ),
      data=DataConfig(corpus="shakespeare", tokenizer="char", seq_len=256, batch_size=32),
      train=dataclasses.replace(
        cpu.train, steps=3000, eval_every=250, eval_batches=50, log_every=10, checkpoint_every=1000
      ),
    )
  raise ValueError(f"unknown preset {arg!r} for spechorn (cpu, cpu_long, gpu)")
