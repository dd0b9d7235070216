"""Ouro-Spec: a decoder whose layers run 1..Kmax passes per token (adaptive recurrence).

The layer, its passes, gate features and control flow (scan / while_loop / decoding /
the gathered block) are in ``adaptive_layer.py``; this file stacks the layers into the
language model: a hybrid Fourier embedding (``embeddings.py``) or a learned lookup,
baton injection x[t] += sigmoid(λ_e) ⊙ x[t−1] (position 0 gets nothing), and in
training the logits of the one-pass model (every layer stopped after its first pass,
under stop_gradient) for the coupon reward (``adaptive_lm_loss``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from homeo_jax.models.adaptive_layer import AdaptiveConfig, AdaptiveDecoderLayer
from homeo_jax.models.embeddings import HybridFourierEmbedding
from homeo_jax.models.layers import layer_norm, read_control
from homeo_jax.models.losses import adaptive_lm_loss
from homeo_jax.models.moe import MoETransformer, control_read
from homeo_jax.models.transformer import Transformer

__all__ = ["AdaptiveConfig", "AdaptiveTransformer", "BatonInjection"]


class BatonInjection(nnx.Module):
  """x[t] += sigmoid(λ_e) ⊙ x[t−1], λ_e a learned per-dimension vector; causal."""

  def __init__(self, d_model: int, init: float, *, rngs: nnx.Rngs):
    del rngs
    self.lam = nnx.Param(jnp.full((d_model,), init, jnp.float32))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    gate = jax.nn.sigmoid(self.lam[...]).astype(x.dtype)
    previous = jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0)))
    injection = gate * previous
    ratio = jnp.linalg.norm(injection.astype(jnp.float32)) / (
      jnp.linalg.norm(x.astype(jnp.float32)) + 1e-6
    )
    return x + injection, {"baton_rat": ratio, "lam_mu": jnp.mean(gate.astype(jnp.float32))}

  def decode(self, x: jax.Array, previous: jax.Array) -> jax.Array:
    """One position: ``x [B, 1, d]`` plus the gated embedding of the one before it."""
    return x + jax.nn.sigmoid(self.lam[...]).astype(x.dtype) * previous


class AdaptiveTransformer(nnx.Module):
  """The Ouro-Spec LM: embedding, baton, adaptive layers, final norm, tied head.

  ``token_strings`` (the tokenizer's, one string per id) feed the hybrid Fourier
  embedding; without them the config must ask for ``embedding="learned"``.
  """

  def __init__(
    self,
    cfg: AdaptiveConfig,
    *,
    rngs: nnx.Rngs,
    token_strings: Sequence[str] | None = None,
  ):
    cfg.validate()
    self.cfg = cfg
    init = nnx.initializers.normal(0.02)
    if cfg.embedding == "hybrid_fourier":
      if token_strings is None:
        raise ValueError(
          "model.embedding='hybrid_fourier' needs the tokenizer's token_strings "
          "(or set model.embedding='learned')"
        )
      if len(token_strings) != cfg.vocab_size:
        raise ValueError(
          f"got {len(token_strings)} token strings for model.vocab_size={cfg.vocab_size}"
        )
      self.token_embed = HybridFourierEmbedding(
        token_strings,
        cfg.d_model,
        char_dim=cfg.char_dim,
        pos_dim=cfg.pos_dim,
        dtype=cfg.compute_dtype,
        rngs=rngs,
      )
    else:
      self.token_embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, rngs=rngs)
    self.pos_embed = nnx.Embed(cfg.max_seq_len, cfg.d_model, embedding_init=init, rngs=rngs)
    self.embed_dropout = nnx.Dropout(cfg.dropout)
    self.baton = BatonInjection(cfg.d_model, cfg.baton_init, rngs=rngs) if cfg.baton else None
    self.layers = nnx.List([AdaptiveDecoderLayer(cfg, i, rngs=rngs) for i in range(cfg.num_layers)])
    self.final_norm = layer_norm(cfg, rngs)

  @property
  def loss_fn(self):
    """The Ouro-Spec objective for this model (the training loop picks it up)."""
    return functools.partial(
      adaptive_lm_loss,
      reward_eta=self.cfg.reward_eta,
      max_passes=self.cfg.max_passes,
      coupon_gradient=self.cfg.coupon_gradient,
    )

  def control_reads(self) -> tuple[tuple[str, str], ...]:
    cfg = self.cfg
    reads = []
    if cfg.price_from:
      reads += [(cfg.price_from, k) for k in ("compute_price", "gate_clamp", "halt_bias")]
      if not cfg.static_passes:
        reads.append((cfg.price_from, "force_k"))
    if cfg.ffn == "moe" and control_read(cfg.moe) is not None:
      reads.append(control_read(cfg.moe))
    return tuple(reads)

  def logits(self, x: jax.Array) -> jax.Array:
    return self.token_embed.attend(self.final_norm(x)).astype(jnp.float32)

  def _control(self, controls, key: str, neutral):
    """A compute-price control, or its neutral value when the model reads none."""
    if not self.cfg.price_from:
      return neutral
    return read_control(controls, self.cfg.price_from, key)

  def _depth_controls(self, controls) -> tuple[jax.Array, int, jax.Array, jax.Array]:
    """(forced passes, static pass limit, gate clamp, halting bias) from the config and
    the controls."""
    cfg = self.cfg
    if cfg.static_passes:
      force, num_passes = jnp.int32(cfg.static_passes), cfg.static_passes
    else:
      force = jnp.asarray(self._control(controls, "force_k", 0), jnp.int32)
      num_passes = cfg.max_passes
    clamp = jnp.asarray(self._control(controls, "gate_clamp", 0), jnp.int32)
    return force, num_passes, clamp, jnp.asarray(self._control(controls, "halt_bias", 0.0))

  def _depth(self, x, depth_controls, num_passes, path, controls):
    force, clamp, halt_bias = depth_controls
    per_layer = []
    for layer in self.layers:
      x, telemetry = layer(
        x,
        force=force,
        clamp=clamp,
        num_passes=num_passes,
        path=path,
        controls=controls,
        halt_bias=halt_bias,
      )
      per_layer.append(telemetry)
    return x, per_layer

  def __call__(
    self,
    tokens: jax.Array,
    *,
    controls: Mapping[str, jax.Array] | None = None,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
    path: str | None = None,
    per_token: bool = False,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``tokens [B, T]`` -> (logits ``[B, T, V]``, telemetry); see the module docstring.

    ``path`` overrides the recurrence path ("scan" in training, "while" otherwise);
    ``per_token`` adds ``token_passes`` ``[B, T]``, each token's executed passes averaged
    over layers (the depth the gate gave it).
    """
    cfg = self.cfg

    x = Transformer.embed(self, tokens)  # same token + position embedding and length check
    x = self.embed_dropout(x, deterministic=deterministic, rngs=rngs)
    telemetry: dict[str, jax.Array] = {}
    if self.baton is not None:
      x, baton_telemetry = self.baton(x)
      telemetry.update(baton_telemetry)
    force, num_passes, clamp, halt_bias = self._depth_controls(controls)
    path = path or ("while" if deterministic else "scan")
    h, per_layer = self._depth(x, (force, clamp, halt_bias), num_passes, path, controls)
    token_passes = [t.pop("token_passes") for t in per_layer]
    telemetry.update(self._merge(per_layer))
    if per_token:
      telemetry["token_passes"] = jnp.mean(jnp.stack(token_passes), axis=0)
    telemetry["compute_price"] = jnp.asarray(
      self._control(controls, "compute_price", 0.0), jnp.float32
    )
    telemetry["forced_k"] = force.astype(jnp.float32)
    if not deterministic and cfg.coupon:
      one_pass, _ = self._depth(x, (jnp.int32(1), clamp, halt_bias), 1, path, controls)
      telemetry["pass1_logits"] = jax.lax.stop_gradient(self.logits(one_pass))
    return self.logits(h), telemetry

  def decoder(self) -> AdaptiveTransformer:
    return self

  def init_cache(self, batch: int) -> dict:
    dtype = self.cfg.compute_dtype
    return {
      "layers": [layer.init_cache(batch, self.cfg.max_seq_len, dtype) for layer in self.layers],
      "previous": jnp.zeros((batch, 1, self.cfg.d_model), dtype),  # baton: x[t - 1]
    }

  def decode_step(self, tokens, cache, pos, *, controls=None):
    """``tokens [B, 1]`` at ``pos`` -> (logits ``[B, V]``, cache, {"passes": ``[B]``, the
    passes executed per layer, averaged over layers}); see ``AdaptiveDecoderLayer.decode``."""
    x = Transformer.embed_at(self, tokens, pos)
    previous = x
    if self.baton is not None:
      x = self.baton.decode(x, cache["previous"])
    force, num_passes, clamp, halt_bias = self._depth_controls(controls)
    layers, passes = [], []
    for layer, layer_cache in zip(self.layers, cache["layers"], strict=True):
      x, layer_cache, executed = layer.decode(
        x,
        layer_cache,
        pos,
        force=force,
        clamp=clamp,
        num_passes=num_passes,
        controls=controls,
        halt_bias=halt_bias,
      )
      layers.append(layer_cache)
      passes.append(executed)
    cache = {"layers": layers, "previous": previous}
    return self.logits(x)[:, 0], cache, {"passes": jnp.mean(jnp.stack(passes), axis=0)}

  def _merge(self, per_layer: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    ffn_keys = [k for k in per_layer[0] if k.startswith("moe_") or k == "aux_loss"]
    if ffn_keys:
      moe = MoETransformer.merge_layer_telemetry([{k: t[k] for k in ffn_keys} for t in per_layer])
    else:
      moe = {}
    merged = Transformer.merge_layer_telemetry(
      [{k: v for k, v in t.items() if k not in ffn_keys} for t in per_layer]
    )
    out = {**moe, "survival": merged["survival"]}  # [L, max_passes]
    for key, values in merged.items():
      if key == "survival":
        continue
      out[key] = jnp.mean(values)
      for i in range(len(per_layer)):
        out[f"layer{i}/{key}"] = values[i]
    for i in range(len(per_layer)):
      for k in range(self.cfg.max_passes):
        out[f"layer{i}/survival{k + 1}"] = merged["survival"][i, k]
    out["avg_k"] = out.pop("expected_k")  # soft depth, mean over layers and tokens
    # The seed's gap: passes the batch executed (what the dense path pays) − soft depth.
    out["gap"] = out["passes_run"] - out["avg_k"]
    return out
