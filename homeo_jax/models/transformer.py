"""The baseline decoder-only Transformer LM (GPT-2 style, nanoGPT-sized by default).

``model(tokens, controls=..., deterministic=..., rngs=...) -> (logits, telemetry)``.
The model is pure: it keeps no mutable state between calls, and what a controller
wants it to do arrives in ``controls`` (the baseline reads none).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from homeo_jax.models.layers import Block, TransformerConfig, layer_norm


class Transformer(nnx.Module):
  """Token + learned position embedding, pre-norm blocks, final norm, (tied) head."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    init = nnx.initializers.normal(0.02)
    self.token_embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, rngs=rngs)
    self.pos_embed = nnx.Embed(cfg.max_seq_len, cfg.d_model, embedding_init=init, rngs=rngs)
    self.embed_dropout = nnx.Dropout(cfg.dropout)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = layer_norm(cfg, rngs)
    self.head = None
    if not cfg.tie_embeddings:
      self.head = nnx.Linear(
        cfg.d_model,
        cfg.vocab_size,
        use_bias=False,
        kernel_init=init,
        dtype=cfg.compute_dtype,
        rngs=rngs,
      )

  def embed(self, tokens: jax.Array) -> jax.Array:
    t = tokens.shape[-1]
    if t > self.cfg.max_seq_len:
      raise ValueError(f"sequence length {t} exceeds model.max_seq_len={self.cfg.max_seq_len}")
    x = self.token_embed(tokens) + self.pos_embed(jnp.arange(t))
    return x.astype(self.cfg.compute_dtype)

  def logits(self, x: jax.Array) -> jax.Array:
    x = self.final_norm(x)
    if self.head is None:
      return self.token_embed.attend(x).astype(jnp.float32)
    return self.head(x).astype(jnp.float32)

  def __call__(
    self,
    tokens: jax.Array,
    *,
    controls: Mapping[str, jax.Array] | None = None,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``tokens`` int ``[batch, seq]`` -> float32 logits ``[batch, seq, vocab]``, telemetry."""
    del controls  # the baseline has nothing to steer
    x = self.embed_dropout(self.embed(tokens), deterministic=deterministic, rngs=rngs)
    for block in self.blocks:
      x = block(x, deterministic=deterministic, rngs=rngs)
    telemetry = {"hidden_rms": jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))}
    return self.logits(x), telemetry
