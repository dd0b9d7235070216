"""ORD-Muon ablation: does spectral learning help? (experiments/ord_muon_ablation.py)

    python experiments/ord_muon_ablation.py                 # CPU size, minutes
    python experiments/ord_muon_ablation.py --scale gpu     # the nanoGPT-sized recipe

The base is the char-level Shakespeare LM; arms differ only in the optimizer (AdamW at
``learning_rate`` for everything, or ORD-Muon at ``muon_learning_rate`` for hidden
matrices with AdamW for embeddings and gains).
"""

import dataclasses

from homeo_jax.models import TransformerConfig
from homeo_jax.training.config import Config, DataConfig, OptimizerConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
  if arg in (None, "cpu"):
    return Config(
      name="ord_muon_cpu",
      model=TransformerConfig(
        vocab_size=0, num_layers=2, num_heads=4, d_model=128, max_seq_len=64, dropout=0.0
      ),
      data=DataConfig(
        corpus="shakespeare", tokenizer="char", seq_len=64, batch_size=16, max_chars=1_000_000
      ),
      optimizer=OptimizerConfig(
        name="adamw",
        learning_rate=2e-3,
        min_learning_rate=2e-4,
        warmup_steps=30,
        b2=0.99,
        weight_decay=0.1,
        grad_clip=1.0,
        kwargs={},
      ),
      train=TrainConfig(
        steps=300,
        eval_every=50,
        eval_batches=16,
        log_every=10,
        checkpoint_every=300,
        run_dir="runs/ord_muon",
      ),
    )
  if arg == "gpu":
    base = get_config("cpu")
    return dataclasses.replace(
      base,
      name="ord_muon_gpu",
      model=TransformerConfig(
        vocab_size=0, num_layers=6, num_heads=6, d_model=384, max_seq_len=256, dropout=0.2
      ),
      data=DataConfig(corpus="shakespeare", tokenizer="char", seq_len=256, batch_size=64),
      optimizer=dataclasses.replace(
        base.optimizer, learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100
      ),
      train=TrainConfig(
        steps=2000,
        eval_every=250,
        eval_batches=50,
        log_every=25,
        checkpoint_every=1000,
        run_dir="runs/ord_muon_gpu",
      ),
    )
  raise ValueError(f"unknown preset {arg!r} for ord_muon (cpu, gpu)")
