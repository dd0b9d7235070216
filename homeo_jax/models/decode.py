"""Sampling from a trained LM with a KV cache: one compiled loop, no recompilation per token.

``generate(model, prompt, num_new, key=...)`` runs every model type through its
``decode_step(tokens [B, 1], cache, pos) -> (logits, cache, info)`` token by token against
a cache of ``max_seq_len`` positions, all inside one ``lax.fori_loop``: the Transformer,
its 2-bit and MoE variants (cached keys and values; the MoE's GRU state and capacity
slots), and the adaptive-depth model (cached static keys and values; each token runs its
own early-exit ``lax.while_loop`` over passes, reported per token in ``info["passes"]``).

When the sequence outgrows the model's positions (learned absolute embeddings stop at
``max_seq_len``), the cache is rebuilt from the last ``max_seq_len // 2`` tokens and
decoding continues from there: each token then sees between half and all of a window,
where nanoGPT's recompute-the-window sampler sees a full window at ``max_seq_len`` times
the cost per token.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx


def filter_logits(logits: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """Logits to sample from: the ``top_k`` largest kept (0 keeps all), divided by
  ``temperature``. Temperature 0 is greedy (``sample_token`` takes the argmax)."""
  if top_k > 0:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return logits / temperature if temperature > 0 else logits


def sample_token(key: jax.Array, logits: jax.Array, temperature: float, top_k: int) -> jax.Array:
  logits = filter_logits(logits, temperature, top_k)
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits).astype(jnp.int32)


def can_generate(model: nnx.Module) -> bool:
  return hasattr(model, "decode_step") and hasattr(model, "init_cache")


def generate(
  model: nnx.Module,
  prompt: jax.Array,
  num_new: int,
  *,
  key: jax.Array,
  temperature: float = 1.0,
  top_k: int = 0,
  controls: Mapping | None = None,
  with_info: bool = False,
):
  """``prompt [batch, P]`` (P >= 1) then ``num_new`` sampled tokens: ``[batch, P + num_new]``.

  ``controls`` are the deployment controls (``homeo_jax.controls(opt_state,
  deployment=True)``), never a training-only override. ``with_info=True`` also returns
  the model's per-token decode telemetry, ``{name: [batch, P + num_new]}`` (the adaptive
  model's ``passes``: entry i is what processing token i took; the last token is not fed).
  """
  if num_new < 0:
    raise ValueError(f"max_new_tokens must be >= 0, got {num_new}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {top_k}")
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be [batch, length >= 1] token ids, got shape {prompt.shape}")
  if not can_generate(model):
    raise TypeError(f"{type(model).__name__} has no decode_step/init_cache: it cannot generate")
  graphdef, state = nnx.split(model.decoder())
  tokens, info = _generate(graphdef, state, prompt, key, controls, num_new, temperature, top_k)
  return (tokens, info) if with_info else tokens


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _generate(graphdef, state, prompt, key, controls, num_new, temperature, top_k):
  model = nnx.merge(graphdef, state)
  b, p = prompt.shape
  window = model.cfg.max_seq_len
  keep = max(window // 2, 1)  # tokens kept when the cache is rebuilt
  total = p + num_new
  tokens = jnp.zeros((b, total), jnp.int32).at[:, :p].set(prompt)

  def decode(token, cache, fill):
    return model.decode_step(token, cache, fill, controls=controls)

  def rebuild(i, tokens):
    """A fresh cache holding tokens ``i - keep .. i - 1`` at positions ``0 .. keep - 1``."""

    def one(j, state):
      fill, cache = state
      token = jax.lax.dynamic_slice_in_dim(tokens, i - keep + j, 1, axis=1)
      return fill + 1, decode(token, cache, fill)[1]

    return jax.lax.fori_loop(0, keep, one, (jnp.int32(0), model.init_cache(b)))

  _, _, info_like = jax.eval_shape(decode, tokens[:, :1], model.init_cache(b), jnp.int32(0))
  info = {k: jnp.zeros((b, total), v.dtype) for k, v in info_like.items()}

  def step(i, state):
    tokens, fill, cache, key, info = state
    fill, cache = jax.lax.cond(fill == window, lambda: rebuild(i, tokens), lambda: (fill, cache))
    token = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
    logits, cache, token_info = decode(token, cache, fill)
    info = {k: v.at[:, i].set(token_info[k]) for k, v in info.items()}
    key, sub = jax.random.split(key)
    sampled = sample_token(sub, logits, temperature, top_k)
    # inside the prompt the next token is given; after it, sampled
    nxt = jnp.where(i + 1 < p, jax.lax.dynamic_slice_in_dim(tokens, i + 1, 1, 1)[:, 0], sampled)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i + 1, axis=1)
    return tokens, fill + 1, cache, key, info

  if total == p:
    return tokens, info
  state = (tokens, jnp.int32(0), model.init_cache(b), key, info)
  tokens, _, _, _, info = jax.lax.fori_loop(0, total - 1, step, state)
  return tokens, info
