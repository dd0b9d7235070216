"""The baseline decoder-only Transformer LM (GPT-2 style, nanoGPT-sized by default).

``model(tokens, controls=..., deterministic=..., rngs=...) -> (logits, telemetry)``.
The model is pure: it keeps no mutable state between calls, and what a controller
wants it to do arrives in ``controls``, ``{regulator name: {control: array}}``. A model
declares what it reads in ``control_reads()`` (the baseline reads none).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from homeo_jax.models.layers import Block, Controls, TransformerConfig, dense, layer_norm


class Transformer(nnx.Module):
  """Token + learned position embedding, pre-norm blocks, final norm, (tied) head."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    init = nnx.initializers.normal(0.02)
    self.token_embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, rngs=rngs)
    self.pos_embed = nnx.Embed(cfg.max_seq_len, cfg.d_model, embedding_init=init, rngs=rngs)
    self.embed_dropout = nnx.Dropout(cfg.dropout)
    self.blocks = nnx.List(
      [Block(cfg, rngs=rngs, ffn=self.make_ffn(cfg, i, rngs)) for i in range(cfg.num_layers)]
    )
    self.final_norm = layer_norm(cfg, rngs)
    self.head = None
    if not cfg.tie_embeddings:
      self.head = dense(cfg.d_model, cfg.vocab_size, cfg, rngs)

  def control_reads(self) -> tuple[tuple[str, str], ...]:
    """The (regulator name, control) pairs this model reads; checked at setup."""
    return ()

  def make_ffn(self, cfg: TransformerConfig, layer: int, rngs: nnx.Rngs) -> nnx.Module | None:
    """The feed-forward of layer ``layer``; None is the dense MLP. Subclasses override."""
    del cfg, layer, rngs
    return None

  def embed(self, tokens: jax.Array) -> jax.Array:
    t = tokens.shape[-1]
    if t > self.cfg.max_seq_len:
      raise ValueError(f"sequence length {t} exceeds model.max_seq_len={self.cfg.max_seq_len}")
    # A slice, not a gather: its gradient is a pad rather than a scatter-add.
    x = self.token_embed(tokens) + self.pos_embed.embedding[...][:t]
    return x.astype(self.cfg.compute_dtype)

  def embed_at(self, tokens: jax.Array, pos: jax.Array) -> jax.Array:
    """``tokens [batch, 1]`` at position ``pos`` (a traced scalar), as ``embed``."""
    x = self.token_embed(tokens) + self.pos_embed.embedding[...][pos]
    return x.astype(self.cfg.compute_dtype)

  def logits(self, x: jax.Array) -> jax.Array:
    x = self.final_norm(x)
    if self.head is None:  # over flattened rows, as ``layers.Dense`` (a 2-D weight gradient)
      flat = self.token_embed.attend(x.reshape(-1, x.shape[-1]))
      return flat.reshape(*x.shape[:-1], -1).astype(jnp.float32)
    return self.head(x).astype(jnp.float32)

  def __call__(
    self,
    tokens: jax.Array,
    *,
    controls: Controls | None = None,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``tokens`` int ``[batch, seq]`` -> float32 logits ``[batch, seq, vocab]``, telemetry."""
    with jax.named_scope("embed"):
      x = self.embed_dropout(self.embed(tokens), deterministic=deterministic, rngs=rngs)
    per_layer = []
    for block in self.blocks:
      x, layer_telemetry = block(x, deterministic=deterministic, rngs=rngs, controls=controls)
      per_layer.append(layer_telemetry)
    telemetry = {"hidden_rms": jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))}
    telemetry.update(self.merge_layer_telemetry(per_layer))
    if "attn_head_logit_max" in telemetry:  # [layers, heads], and the largest of them
      telemetry["attn_logit_max"] = jnp.max(telemetry["attn_head_logit_max"])
    with jax.named_scope("head"):
      return self.logits(x), telemetry

  def decoder(self) -> Transformer:
    """The model as generation runs it (evaluation mode); subclasses may transform it
    once here (the 2-bit model quantizes its weights)."""
    return self

  def init_cache(self, batch: int) -> list[dict]:
    """An empty decode cache of ``max_seq_len`` positions for ``batch`` rows."""
    dtype = self.cfg.compute_dtype
    return [block.init_cache(batch, self.cfg.max_seq_len, dtype) for block in self.blocks]

  def decode_step(
    self, tokens: jax.Array, cache: list[dict], pos: jax.Array, *, controls: Controls | None = None
  ) -> tuple[jax.Array, list[dict], dict[str, jax.Array]]:
    """``tokens [batch, 1]`` at position ``pos`` -> (float32 logits ``[batch, vocab]``,
    the updated cache, per-token decode telemetry — none here): the evaluation forward's
    logits at ``pos`` of the sequence the cache holds (``tests/models/test_decode.py``)."""
    x = self.embed_at(tokens, pos)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache, strict=True):
      x, layer_cache = block.decode(x, layer_cache, pos, controls=controls)
      new_cache.append(layer_cache)
    return self.logits(x)[:, 0], new_cache, {}

  @staticmethod
  def merge_layer_telemetry(per_layer: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """Stack each layer's telemetry on a leading layer axis; ``aux_loss`` is summed."""
    if not per_layer or not per_layer[0]:
      return {}
    merged = {k: jnp.stack([t[k] for t in per_layer]) for k in per_layer[0]}
    if "aux_loss" in merged:
      merged["aux_loss"] = jnp.sum(merged["aux_loss"])
    return merged
