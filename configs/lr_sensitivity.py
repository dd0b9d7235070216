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

from configs import base
from homeo_jax.models import TransformerConfig
from homeo_jax.training.config import Config


def get_config(arg: str | None = None) -> Config:
  if arg not in (None, "cpu", "smoke"):
    raise ValueError(f"unknown preset {arg!r} for lr_sensitivity (cpu, smoke)")
  config = Config(
    name="lr_sensitivity_cpu",
    model=TransformerConfig(
      vocab_size=0, **base.NANOGPT_CPU, dropout=0.0, attention_telemetry=True
    ),
    data=base.char_data(64, 12, max_chars=0),
    optimizer=base.adamw(1e-2, warmup_steps=100, b2=0.95, grad_clip=0.0),
    train=base.run(
      1000,
      "runs/lr_sensitivity_cpu",
      eval_every=500,
      eval_batches=40,
      keep_checkpoints=1,
      on_nonfinite="stop",
      tensorboard=False,
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
