"""The instability proving ground (``python -m experiments.lr_sensitivity``).

    python -m experiments.lr_sensitivity            # the sweep, resumable arm by arm

Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
instabilities", arXiv 2309.14322): at high learning rates even small Transformers show the
large-scale failures — attention logits grow until attention collapses, and output logits
drift. Their proxy is the final loss against the peak learning rate over several decades.
Here: nanoGPT's CPU shape (4 layers × 128, 4 heads, block 64, batch 12) on the shipped
Shakespeare, 1,000 steps — long enough that the best arm reaches a trained model — AdamW
with linear warm-up (100 steps) and cosine decay to a tenth of the peak, β2 0.95, weight
decay 0.1, no gradient clipping, ``attention_telemetry`` on (each head's largest logit).
"""

from homeo_jax.models import TransformerConfig
from homeo_jax.training.config import Config, DataConfig, OptimizerConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
  if arg not in (None, "cpu", "smoke"):
    raise ValueError(f"unknown preset {arg!r} for lr_sensitivity (cpu, smoke)")
  config = Config(
    name="lr_sensitivity_cpu",
    model=TransformerConfig(
      vocab_size=0,
      num_layers=4,
      num_heads=4,
      d_model=128,
      max_seq_len=64,
      dropout=0.0,
      attention_telemetry=True,
    ),
    data=DataConfig(corpus="shakespeare", tokenizer="char", seq_len=64, batch_size=12),
    optimizer=OptimizerConfig(
      name="adamw",
      learning_rate=1e-2,
      min_learning_rate=1e-3,
      warmup_steps=100,
      b1=0.9,
      b2=0.95,
      weight_decay=0.1,
      grad_clip=0.0,
    ),
    train=TrainConfig(
      steps=1000,
      eval_every=500,
      eval_batches=40,
      log_every=10,
      checkpoint_every=1000,
      keep_checkpoints=1,
      on_nonfinite="stop",
      tensorboard=False,
      run_dir="runs/lr_sensitivity_cpu",
    ),
  )
  if arg == "smoke":  # seconds: for the experiment's own test
    import dataclasses

    return dataclasses.replace(
      config,
      name="lr_sensitivity_smoke",
      model=dataclasses.replace(config.model, num_layers=1, num_heads=2, d_model=16),
      data=dataclasses.replace(config.data, seq_len=16, batch_size=4, max_chars=50_000),
      optimizer=dataclasses.replace(config.optimizer, warmup_steps=2),
      train=dataclasses.replace(
        config.train, steps=6, eval_every=6, eval_batches=2, log_every=2, checkpoint_every=6
      ),
    )
  return config
