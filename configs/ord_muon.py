"""ORD-Muon ablation: does spectral learning help? (experiments/ord_muon_ablation.py)

    python -m experiments.ord_muon_ablation                 # CPU size, minutes
    python -m experiments.ord_muon_ablation --scale gpu     # the nanoGPT-sized recipe
    python -m experiments.ord_muon_ablation --scale seed    # the seed's schedule, GPU

The ``seed`` preset runs the seed's (modded-nanogpt's) schedule: three equal stages of
1,560 scheduled steps at 131,072 / 262,144 / 393,216 tokens per step (batch multipliers
1, 2, 3) and lr multipliers 1, 1.52, 1.73, a linear cooldown over the last 55% to 0.15×,
then 40 extension steps; validation every 50 steps; ORD-Muon with Polar Express as its
polar step. The model is GPT-2-small shaped (12 × 768, 6 heads of 128) over 1,024-token
windows. The seed trained on FineWeb; the shipped corpus is Shakespeare (byte-level BPE,
about 1.49M training tokens), which this schedule reads ~286 times over: point
``data.corpus`` at a larger local text file for the seed's regime.

The base is the char-level Shakespeare LM; arms differ only in the optimizer (AdamW at
``learning_rate`` for everything, or ORD-Muon at ``muon_learning_rate`` for hidden
matrices with AdamW for embeddings and gains).
"""

import dataclasses

from configs import base
from homeo_jax.models import TransformerConfig
from homeo_jax.training.config import Config, DataConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
  if arg in (None, "cpu"):
    return Config(
      name="ord_muon_cpu",
      model=TransformerConfig(vocab_size=0, **base.SMALL, dropout=0.0),
      data=base.char_data(),
      optimizer=base.adamw(2e-3, warmup_steps=30),
      train=base.run(300, "runs/ord_muon", eval_every=50),
    )
  if arg == "gpu":
    cpu = get_config("cpu")
    return dataclasses.replace(
      cpu,
      name="ord_muon_gpu",
      model=TransformerConfig(vocab_size=0, **base.NANOGPT_CHAR, dropout=0.2),
      data=base.char_data(256, 64, max_chars=0),
      optimizer=dataclasses.replace(
        cpu.optimizer, learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100
      ),
      train=base.run(
        2000,
        "runs/ord_muon_gpu",
        eval_every=250,
        eval_batches=50,
        log_every=25,
        checkpoint_every=1000,
      ),
    )
  if arg == "seed":
    cpu = get_config("cpu")
    return dataclasses.replace(
      cpu,
      name="ord_muon_seed",
      model=TransformerConfig(
        vocab_size=0, num_layers=12, num_heads=6, d_model=768, max_seq_len=1024, dropout=0.0
      ),
      data=DataConfig(
        corpus="shakespeare",
        tokenizer="bpe",
        bpe_vocab_size=4096,
        seq_len=1024,
        batch_size=128,  # 131,072 tokens per step in the first stage
        batch_multipliers=(1, 2, 3),
      ),
      optimizer=dataclasses.replace(
        cpu.optimizer,
        name="ord_muon",
        schedule="stages",
        stage_lr_multipliers=(1.0, 1.52, 1.73),
        cooldown_fraction=0.55,
        extension_steps=40,
        learning_rate=3e-3,  # AdamW on embeddings, head and gains
        min_learning_rate=4.5e-4,  # the cooldown's floor: 0.15 × learning_rate
        warmup_steps=0,
        kwargs={"newton_schulz": {"coeffs": "polar_express"}},
      ),
      train=TrainConfig(
        steps=1600,
        eval_every=50,
        eval_batches=20,
        log_every=10,
        checkpoint_every=200,
        run_dir="runs/ord_muon_seed",
      ),
    )
  raise ValueError(f"unknown preset {arg!r} for ord_muon (cpu, gpu, seed)")
