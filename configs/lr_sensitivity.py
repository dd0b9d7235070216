"""The instability proving ground (experiments/lr_sensitivity.py).

    python experiments/lr_sensitivity.py        # CPU size: 5 arms × 7 lrs × 3 seeds

Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
instabilities", arXiv 2309.14322): at high learning rates even small Transformers show the
large-scale failures — attention logits grow until attention collapses, and output logits
drift. Their proxy is the final loss against the peak learning rate over several decades.
Here: the char LM (2 × 128, block 64) on the shipped Shakespeare, AdamW with linear warm-up
and cosine decay, no gradient clipping, ``attention_telemetry`` on. The experiment sweeps
the peak lr and the arms (AdamW, ARS, the thyroid, qk-layernorm, z-loss).
"""

from homeo_jax.models import TransformerConfig
from homeo_jax.training.config import Config, DataConfig, OptimizerConfig, TrainConfig

LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def get_config(arg: str | None = None) -> Config:
  if arg not in (None, "cpu"):
    raise ValueError(f"unknown preset {arg!r} for lr_sensitivity (cpu)")
  return Config(
    name="lr_sensitivity_cpu",
    model=TransformerConfig(
      vocab_size=0,
      num_layers=2,
      num_heads=4,
      d_model=128,
      max_seq_len=64,
      dropout=0.0,
      attention_telemetry=True,
    ),
    data=DataConfig(
      corpus="shakespeare", tokenizer="char", seq_len=64, batch_size=16, max_chars=1_000_000
    ),
    optimizer=OptimizerConfig(
      name="adamw",
      learning_rate=1e-2,
      min_learning_rate=1e-4,
      warmup_steps=30,
      b1=0.9,
      b2=0.95,
      weight_decay=0.1,
      grad_clip=0.0,
    ),
    train=TrainConfig(
      steps=300,
      eval_every=150,
      eval_batches=16,
      log_every=5,
      checkpoint_every=300,
      on_nonfinite="stop",
      run_dir="runs/lr_sensitivity_cpu",
    ),
  )
