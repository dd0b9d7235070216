"""The layers every homeo_jax model is built from: norm, causal attention, MLP, block.

Later models (MoE, adaptive depth, 2-bit) reuse these rather than writing their own.
All modules are Flax NNX; parameters are float32 (``param_dtype``), compute runs in
``dtype`` (float32 or bfloat16).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

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
  # LayerNorm on each head's queries and keys (Dehghani et al. 2023; Wortsman et al. 2023:
  # it keeps attention logits from growing at high learning rates).
  qk_norm: bool = False
  # Telemetry ``attn_head_logit_max`` [layers, heads], each head's largest attention logit
  # of the batch (QK-clip's signal), and ``attn_logit_max``, the largest of them (the
  # instability proxy of Wortsman et al. 2023); read from the scores the forward computes.
  attention_telemetry: bool = False

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


class Dense(nnx.Linear):
  """``nnx.Linear`` applied to ``[..., in]`` as one 2-D matmul over the flattened rows.

  Same parameters and math as ``nnx.Linear``. Why: XLA:CPU lays out the weight
  gradient of a 3-D ``dot_general`` as a transposed copy fused into the preceding
  elementwise backward (GELU, norm) — a strided loop that cost ~3 ms per MLP at
  nanoGPT's CPU shapes; over flattened rows the gradient is a plain ``x^T @ g``.
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    lead = inputs.shape[:-1]
    y = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
    return y.reshape(*lead, y.shape[-1])


def dense(
  in_features: int,
  out_features: int,
  cfg: TransformerConfig,
  rngs: nnx.Rngs,
  *,
  use_bias: bool = False,
  scale: float = 1.0,
) -> Dense:
  """A ``Dense`` with GPT-2 style init (normal, std 0.02 · scale)."""
  return Dense(
    in_features,
    out_features,
    use_bias=use_bias,
    dtype=cfg.compute_dtype,
    kernel_init=nnx.initializers.normal(0.02 * scale),
    rngs=rngs,
  )


def causal_attention(
  q: jax.Array, k_t: jax.Array, v: jax.Array, *, with_logit_max: bool = False
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Causal softmax attention: q, v ``[batch, heads, seq, head_dim]``, keys transposed
  ``k_t`` ``[batch, heads, head_dim, seq]``; returns ``[batch, heads, seq, head_dim]``, and
  with ``with_logit_max`` also each head's largest causal logit q·k/√d ``[heads]`` (float32,
  no gradient) — the signal of QK-clip.

  On the CPU: heads-first batched matmuls in their plain (no-transpose) form with a
  constant lower-triangular mask — forward + backward ~2x faster there than
  ``jax.nn.dot_product_attention`` at the CPU presets' shapes, and the same math; the
  logit maximum is a reduction of the scores this path computes anyway. On GPU/TPU:
  ``jax.nn.dot_product_attention``, which XLA lowers to cuDNN flash attention where the GPU
  supports it (no ``[seq, seq]`` scores in memory); the fused kernel does not return its
  scores, so the logit maximum costs one more forward-only q·k (about a third of the
  attention forward's matmul FLOPs, and a ``[batch, heads, seq, seq]`` buffer).
  """
  t = q.shape[-2]
  causal = jnp.tril(jnp.ones((t, t), dtype=bool))
  if jax.default_backend() != "cpu":
    swap = (0, 2, 1, 3)  # [b, h, t, hd] <-> [b, t, h, hd]
    out = jax.nn.dot_product_attention(
      q.transpose(swap), k_t.transpose(0, 3, 1, 2), v.transpose(swap), is_causal=True
    ).transpose(swap)
    if not with_logit_max:
      return out
    scores = jnp.einsum("bhqd,bhdk->bhqk", *jax.lax.stop_gradient((q, k_t)))
    scores = scores.astype(jnp.float32) / math.sqrt(q.shape[-1])
    return out, jnp.max(jnp.where(causal, scores, -jnp.inf), axis=(0, 2, 3))
  scores = jnp.einsum("bhqd,bhdk->bhqk", q, k_t) / math.sqrt(q.shape[-1])
  scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
  probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
  if not with_logit_max:
    return out
  # Masked entries hold the dtype's minimum and every row has its diagonal: the max is causal.
  logit_max = jnp.max(jax.lax.stop_gradient(scores).astype(jnp.float32), axis=(0, 2, 3))
  return out, logit_max


class KVCache(NamedTuple):
  """One attention layer's keys and values for decoding, ``length`` positions."""

  k_t: jax.Array  # [batch, heads, head_dim, length], keys transposed as in training
  v: jax.Array  # [batch, heads, length, head_dim]


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention (``causal_attention``)."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.num_heads = cfg.num_heads
    self.qkv = dense(cfg.d_model, 3 * cfg.d_model, cfg, rngs)
    self.out = dense(cfg.d_model, cfg.d_model, cfg, rngs, scale=(2 * cfg.num_layers) ** -0.5)
    self.dropout = nnx.Dropout(cfg.dropout)
    hd = cfg.d_model // cfg.num_heads
    norm = lambda: nnx.LayerNorm(hd, use_bias=False, dtype=cfg.compute_dtype, rngs=rngs)  # noqa: E731
    self.q_norm = norm() if cfg.qk_norm else None
    self.k_norm = norm() if cfg.qk_norm else None

  def project_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``[batch, seq, d]`` -> q, v ``[batch, heads, seq, head_dim]`` and k transposed,
    ``[batch, heads, head_dim, seq]``."""
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * self.num_heads, d // self.num_heads), 3, 2)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    return q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)

  def __call__(
    self,
    x: jax.Array,
    *,
    deterministic: bool,
    rngs: nnx.Rngs | None,
    with_logit_max: bool = False,
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Attention of ``x [batch, seq, d]``; with ``with_logit_max`` also each head's largest
    causal logit over the batch ``[heads]`` (``causal_attention``)."""
    y = causal_attention(*self.project_qkv(x), with_logit_max=with_logit_max)
    y, logit_max = y if with_logit_max else (y, None)  # [b, h, t, hd]
    y = self.out(y.transpose(0, 2, 1, 3).reshape(x.shape))
    y = self.dropout(y, deterministic=deterministic, rngs=rngs)
    return (y, logit_max) if with_logit_max else y

  def init_cache(self, batch: int, length: int, dtype) -> KVCache:
    hd = self.qkv.out_features // (3 * self.num_heads)
    return KVCache(
      k_t=jnp.zeros((batch, self.num_heads, hd, length), dtype),
      v=jnp.zeros((batch, self.num_heads, length, hd), dtype),
    )

  def decode(self, x: jax.Array, cache: KVCache, pos: jax.Array) -> tuple[jax.Array, KVCache]:
    """One new position: ``x [batch, 1, d]`` at index ``pos`` of the cache; attends to
    cache positions ``<= pos`` (the same math as ``causal_attention`` row ``pos``)."""
    q, k_t, v = self.project_qkv(x)
    k_all = jax.lax.dynamic_update_slice_in_dim(cache.k_t, k_t.astype(cache.k_t.dtype), pos, 3)
    v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), pos, 2)
    scores = jnp.einsum("bhqd,bhdk->bhqk", q, k_all) / math.sqrt(q.shape[-1])
    visible = jnp.arange(k_all.shape[-1]) <= pos
    scores = jnp.where(visible, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v_all.dtype)
    y = jnp.einsum("bhqk,bhkd->bhqd", probs, v_all)
    return self.out(y.transpose(0, 2, 1, 3).reshape(x.shape)), KVCache(k_all, v_all)


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

  def init_decode_state(self, batch: int) -> tuple:
    del batch
    return ()  # position-wise: nothing carries from one token to the next

  def decode(self, x: jax.Array, state: tuple, controls=None) -> tuple[jax.Array, tuple]:
    y, _ = self(x, deterministic=True, rngs=None, controls=controls)
    return y, state


def layer_norm(cfg: TransformerConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(cfg.d_model, use_bias=False, dtype=cfg.compute_dtype, rngs=rngs)


class Block(nnx.Module):
  """Pre-norm Transformer block: x + attn(norm(x)), then x + ffn(norm(x)).

  ``ffn`` is any module called as ``ffn(x, deterministic=, rngs=, controls=)`` returning
  ``(y, telemetry)``: the dense ``MLP`` by default, or a mixture of experts.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, ffn: nnx.Module | None = None):
    self.attention_telemetry = cfg.attention_telemetry
    self.attn_norm = layer_norm(cfg, rngs)
    self.attn = CausalSelfAttention(cfg, rngs=rngs)
    self.mlp_norm = layer_norm(cfg, rngs)
    self.mlp = ffn if ffn is not None else MLP(cfg, rngs=rngs)

  def __call__(
    self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None, controls=None
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    # Named scopes label the compiled ops, so a profile splits the step by component
    # (experiments/bench_cpu_step.py); they cost nothing at run time.
    with jax.named_scope("norm"):
      h = self.attn_norm(x)
    with jax.named_scope("attention"):
      a = self.attn(
        h, deterministic=deterministic, rngs=rngs, with_logit_max=self.attention_telemetry
      )
      a, logit_max = a if self.attention_telemetry else (a, None)
      x = x + a
    with jax.named_scope("norm"):
      h = self.mlp_norm(x)
    with jax.named_scope("ffn"):
      y, telemetry = self.mlp(h, deterministic=deterministic, rngs=rngs, controls=controls)
    if self.attention_telemetry:
      telemetry = {**telemetry, "attn_head_logit_max": logit_max}
    return x + y, telemetry

  def init_cache(self, batch: int, length: int, dtype) -> dict[str, Any]:
    return {
      "attn": self.attn.init_cache(batch, length, dtype),
      "ffn": self.mlp.init_decode_state(batch),
    }

  def decode(
    self, x: jax.Array, cache: dict[str, Any], pos: jax.Array, controls=None
  ) -> tuple[jax.Array, dict[str, Any]]:
    """``x [batch, 1, d]`` at position ``pos``: the block's output and updated cache.

    The feed-forward carries its own decode state (none for the MLP; the GRU state and
    the slots taken per expert for a mixture of experts)."""
    a, kv = self.attn.decode(self.attn_norm(x), cache["attn"], pos)
    x = x + a
    y, ffn_state = self.mlp.decode(self.mlp_norm(x), cache["ffn"], controls=controls)
    return x + y, {"attn": kv, "ffn": ffn_state}
