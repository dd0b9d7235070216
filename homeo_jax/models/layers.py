"""The layers every homeo_jax model is built from: norm, causal attention, MLP, block.

Later models (MoE, adaptive depth, 2-bit) reuse these rather than writing their own.
All modules are Flax NNX; parameters are float32 (``param_dtype``), compute runs in
``dtype`` (float32 or bfloat16).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

Controls = Mapping[str, Mapping[str, jax.Array]]  # {regulator name: {control: array}}


def read_control(controls: Controls | None, regulator: str, key: str) -> jax.Array:
  """The control ``key`` published by the regulator named ``regulator``.

  A model reads only what its config names (``control_reads``); a missing control is an
  error naming both, never a silent default. ``training.step.check_wiring`` raises the
  same error at setup, before anything compiles.
  """
  published = (controls or {}).get(regulator)
  if published is None or key not in published:
    have = sorted(controls or {})
    raise ValueError(
      f"the model reads control {key!r} from regulator {regulator!r}, which does not "
      f"publish it (regulators publishing controls: {have})"
    )
  return published[key]


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and regularisation of a decoder-only Transformer."""

  vocab_size: int = 65
  num_layers: int = 6
  num_heads: int = 6
  d_model: int = 384
  d_ff: int = 0  # 0 means 4 * d_model
  max_seq_len: int = 256
  dropout: float = 0.0
  tie_embeddings: bool = True
  dtype: str = "float32"  # compute dtype: "float32" or "bfloat16"

  @property
  def ff_dim(self) -> int:
    return self.d_ff or 4 * self.d_model

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def validate(self, prefix: str = "model") -> None:
    for name in ("vocab_size", "num_layers", "num_heads", "d_model", "max_seq_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"{prefix}.{name} must be >= 1, got {getattr(self, name)}")
    if self.d_model % self.num_heads:
      raise ValueError(
        f"{prefix}.d_model={self.d_model} is not divisible by {prefix}.num_heads={self.num_heads}"
      )
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"{prefix}.dropout must be in [0, 1), got {self.dropout}")
    if self.dtype not in DTYPES:
      raise ValueError(f"{prefix}.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")


def dense(
  in_features: int,
  out_features: int,
  cfg: TransformerConfig,
  rngs: nnx.Rngs,
  *,
  use_bias: bool = False,
  scale: float = 1.0,
) -> nnx.Linear:
  """A Linear with GPT-2 style init (normal, std 0.02 · scale)."""
  return nnx.Linear(
    in_features,
    out_features,
    use_bias=use_bias,
    dtype=cfg.compute_dtype,
    kernel_init=nnx.initializers.normal(0.02 * scale),
    rngs=rngs,
  )


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention through ``jax.nn.dot_product_attention``."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.num_heads = cfg.num_heads
    self.qkv = dense(cfg.d_model, 3 * cfg.d_model, cfg, rngs)
    self.out = dense(cfg.d_model, cfg.d_model, cfg, rngs, scale=(2 * cfg.num_layers) ** -0.5)
    self.dropout = nnx.Dropout(cfg.dropout)

  def project_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``[batch, seq, d]`` -> q, k, v each ``[batch, seq, heads, head_dim]``."""
    b, t, d = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def __call__(self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    q, k, v = self.project_qkv(x)
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    y = self.out(y.reshape(x.shape))
    return self.dropout(y, deterministic=deterministic, rngs=rngs)


class MLP(nnx.Module):
  """GELU MLP, d -> ff -> d."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.up = dense(cfg.d_model, cfg.ff_dim, cfg, rngs)
    self.down = dense(cfg.ff_dim, cfg.d_model, cfg, rngs, scale=(2 * cfg.num_layers) ** -0.5)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(
    self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None, controls=None
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    del controls
    y = self.down(jax.nn.gelu(self.up(x)))
    return self.dropout(y, deterministic=deterministic, rngs=rngs), {}


def layer_norm(cfg: TransformerConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(cfg.d_model, use_bias=False, dtype=cfg.compute_dtype, rngs=rngs)


class Block(nnx.Module):
  """Pre-norm Transformer block: x + attn(norm(x)), then x + ffn(norm(x)).

  ``ffn`` is any module called as ``ffn(x, deterministic=, rngs=, controls=)`` returning
  ``(y, telemetry)``: the dense ``MLP`` by default, or a mixture of experts.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, ffn: nnx.Module | None = None):
    self.attn_norm = layer_norm(cfg, rngs)
    self.attn = CausalSelfAttention(cfg, rngs=rngs)
    self.mlp_norm = layer_norm(cfg, rngs)
    self.mlp = ffn if ffn is not None else MLP(cfg, rngs=rngs)

  def __call__(
    self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None, controls=None
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    x = x + self.attn(self.attn_norm(x), deterministic=deterministic, rngs=rngs)
    y, telemetry = self.mlp(
      self.mlp_norm(x), deterministic=deterministic, rngs=rngs, controls=controls
    )
    return x + y, telemetry
