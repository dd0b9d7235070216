"""The Ouro-Spec layer: 1..Kmax passes per token (adaptive recurrence), and its config.

Each ``AdaptiveDecoderLayer`` computes keys and values once from its input x (static KV)
and then refines a state h (h = x before the first pass). Pass k = 0..Kmax−1, for the
tokens still *alive* (survival s ≥ ``halt_threshold``):

    a   = Out(Attn(Q(norm(h)), K, V))               queries move, keys/values stay
    f   = FFN(norm(h + a))                          dense MLP, or the MoE layer
    dh  = α_k · (a + f),   α = (1.0, 0.7, 0.5, 0.35)
    p   = sigmoid(MLP_gate([features(5), layer_embedding(16)]))   the continue gate
    h  ← h + s·dh;   expected_k ← expected_k + s;   s ← s·p

Tokens that are not alive are left untouched (no update, no depth, s frozen), so a
token's executed passes are the passes it entered with s ≥ halt_threshold. The five
per-token gate features: normalized attention entropy H/log(n_keys) (0 for a one-key
row), top-16 attention mass, head agreement 1 − mean over keys of the std over heads of the
attention weights (``head_agreement="entropy"``: of the entropy),
relative update ‖dh‖/(‖h‖+ε), and cos(dh, dh_prev) (0 when either is zero). All are
averaged over heads where they are per head.

Control flow (static shapes throughout):

* training (``deterministic=False``): ``lax.scan`` over the passes, each wrapped in
  ``lax.cond`` that skips it when fewer than ``min_alive_fraction`` (2%) of the batch's
  tokens are alive; reverse-mode AD goes through both.
* inference (``deterministic=True``, evaluation): ``lax.while_loop`` that stops at that
  same condition. s only decreases, so once a pass is skipped every later pass is too:
  the two paths compute the same function (tested).
* decoding (``decode_step``, one new token against cached static keys/values): the
  token's own ``lax.while_loop`` stops when it halts — the forward's result when
  ``min_alive_fraction`` is 0, whose batch-level exit couples tokens otherwise (tested).
* ``gather_capacity`` c > 0: from the second pass on, each sequence's top-⌈c·T⌉ tokens
  by survival are gathered into a ``[B, C, d]`` block; queries, attention, output
  projection, FFN and gate run on the block only, so a pass costs c of a full one.
  When at most C tokens per row are alive this equals the full path (tested); alive
  tokens past C are treated as halted and counted in ``overflow``.
* ``kv_per_pass``: keys/values of the current state h before every pass instead of x's
  (a token's own after it changed; in the gathered path only the block's are recomputed),
  so pass k+1 reads what pass k wrote and one layer's passes compose lookups as a
  weight-tied stack does. Decoding caches one set of keys/values per pass.
* ``force_k`` (config, or the ``force_k`` control for audits and warm-up): every token
  runs exactly k passes (s = 1 for the first k, 0 after); ``hard_kill`` = one pass.
* the ``gate_clamp`` control clamps p to [0.01, 0.95] (early training); the ``halt_bias``
  control b shifts the gate's logit, p = sigmoid(z + b) (the ``gate_bias`` controller).
* the controls come from the regulator named by ``price_from`` (``"compute_price"``);
  with ``price_from=""`` the model reads none: price 0, no forcing, no clamp.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from homeo_jax.models.layers import MLP, TransformerConfig, dense, layer_norm
from homeo_jax.models.moe import MoEConfig, MoEFeedForward

EMBEDDINGS = ("hybrid_fourier", "learned")
FFNS = ("mlp", "moe")


class GateFeatures(NamedTuple):
  """The continue gate's per-token inputs ``[B, T]`` each, in the gate's input order."""

  entropy: jax.Array  # normalized attention entropy H / log(n_keys)
  top_mass: jax.Array  # attention mass on the top-k keys
  head_agreement: jax.Array  # 1 − std over heads of the entropy
  relative_update: jax.Array  # ‖dh‖ / (‖h‖ + ε)
  update_cosine: jax.Array  # cos(dh, dh_prev)

  def stacked(self) -> jax.Array:
    return jnp.stack(self, axis=-1)


NUM_FEATURES = len(GateFeatures._fields)


class PassStats(NamedTuple):
  """Per-pass sums over the batch accumulated in the loop carry, each ``[max_passes]``."""

  alive: jax.Array  # share of tokens alive entering the pass
  survival: jax.Array  # mean s entering the pass
  p_sum: jax.Array  # Σ p over the tokens the pass ran on
  p2_sum: jax.Array  # Σ p²
  entropy_sum: jax.Array  # Σ attention entropy
  drel_sum: jax.Array  # Σ relative update
  dp_sum: jax.Array  # Σ (p − p_prev), signed (from the second pass)
  p_low_sum: jax.Array  # number of gates ≤ 0.05
  overflow: jax.Array  # share of alive tokens past the gather capacity

  @classmethod
  def zeros(cls, passes: int) -> PassStats:
    return cls(*(jnp.zeros((passes,), jnp.float32) for _ in cls._fields))

  def record(self, k: jax.Array, **values: jax.Array) -> PassStats:
    """The stats with pass ``k``'s entry set to ``values`` (every field)."""
    return PassStats(*(getattr(self, f).at[k].set(values[f]) for f in self._fields))


AGREEMENTS = ("weights", "entropy")


@dataclasses.dataclass(frozen=True)
class AdaptiveConfig(TransformerConfig):
  """The baseline Transformer's shape plus the adaptive recurrence."""

  max_passes: int = 4
  pass_damping: tuple[float, ...] = (1.0, 0.7, 0.5, 0.35)
  halt_threshold: float = 0.1
  min_alive_fraction: float = 0.02
  layer_embed_dim: int = 16
  gate_hidden: int = 32
  top_mass_k: int = 16
  # Head agreement: "weights", the seed's 1 − mean over keys of the std over heads of the
  # attention weights; "entropy", 1 − std over heads of the normalized entropy (this
  # library's earlier form, which the CPU presets' measured runs used).
  head_agreement: str = "weights"
  gate_bias_init: float = 0.0
  # The seed's gate logit z is unbounded. Trained against the gate_bias controller, on a
  # task where depth lowers the loss, the CE gradient raises z past any clamp on the bias
  # (measured: z ≈ 30–40 for every token against b = −30, README). > 0: the logit is
  # bound·tanh(z/bound), so a bias beyond ±bound can always set the depth.
  gate_logit_bound: float = 0.0
  embedding: str = "hybrid_fourier"
  char_dim: int = 128
  pos_dim: int = 16
  baton: bool = True
  baton_init: float = -3.0
  # The seed's FFN is a mixture of experts (``moe``, the SpecHorn layer). "mlp": a dense
  # feed-forward, which the CPU presets use (configs/ouro_spec.py: every measured run).
  ffn: str = "moe"
  moe: MoEConfig = dataclasses.field(default_factory=MoEConfig)
  gather_capacity: float = 0.0  # 0: off; else the fraction of each row gathered per pass
  # The seed's keys/values come from the layer input once (static KV), so a later pass can
  # only re-read what the input held: one layer's passes cannot compose lookups (an
  # induction head needs keys that carry the previous token). True: keys/values of the
  # current state before every pass, so k passes of one layer are a weight-tied k-layer
  # stack (README, Ouro-Spec: the depth task).
  kv_per_pass: bool = False
  force_k: int = 0  # 0: adaptive; k: every token runs exactly k passes
  hard_kill: bool = False  # recurrence off: one pass (same as force_k=1)
  coupon: bool = True  # compute the one-pass logits in training for the coupon reward
  reward_eta: float = 2.0
  # The seed's coupon: its gradient flows through the final CE (models/losses.py).
  # False: a stop-gradient reward, this library's earlier form.
  coupon_gradient: bool = True
  # regulator publishing compute_price/force_k/gate_clamp/halt_bias ("": none)
  price_from: str = ""

  def validate(self, prefix: str = "model") -> None:
    super().validate(prefix)
    for name in ("qk_norm", "attention_telemetry"):
      if getattr(self, name):
        raise ValueError(f"{prefix}.{name} is not implemented for the adaptive model")
    if self.max_passes < 1:
      raise ValueError(f"{prefix}.max_passes must be >= 1, got {self.max_passes}")
    if len(self.pass_damping) < self.max_passes:
      raise ValueError(
        f"{prefix}.pass_damping has {len(self.pass_damping)} entries, needs "
        f"max_passes={self.max_passes}"
      )
    if self.head_agreement not in AGREEMENTS:
      raise ValueError(
        f"{prefix}.head_agreement must be one of {AGREEMENTS}, got {self.head_agreement!r}"
      )
    if not 0.0 < self.halt_threshold < 1.0:
      raise ValueError(f"{prefix}.halt_threshold must be in (0, 1), got {self.halt_threshold}")
    if not self.gate_logit_bound >= 0.0:
      raise ValueError(
        f"{prefix}.gate_logit_bound must be >= 0 (0: unbounded), got {self.gate_logit_bound}"
      )
    if not 0.0 <= self.min_alive_fraction < 1.0:
      raise ValueError(
        f"{prefix}.min_alive_fraction must be in [0, 1), got {self.min_alive_fraction}"
      )
    if not 0 <= self.force_k <= self.max_passes:
      raise ValueError(f"{prefix}.force_k must be in [0, max_passes], got {self.force_k}")
    if not 0.0 <= self.gather_capacity <= 1.0:
      raise ValueError(f"{prefix}.gather_capacity must be in [0, 1], got {self.gather_capacity}")
    if self.embedding not in EMBEDDINGS:
      raise ValueError(f"{prefix}.embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
    if self.ffn not in FFNS:
      raise ValueError(f"{prefix}.ffn must be one of {FFNS}, got {self.ffn!r}")
    if self.ffn == "moe":
      self.moe.validate(f"{prefix}.moe")

  @property
  def static_passes(self) -> int:
    """Passes the config fixes (hard_kill / force_k), 0 when adaptive."""
    return 1 if self.hard_kill else self.force_k


def forced_survival(s: jax.Array, k: jax.Array, force: jax.Array) -> jax.Array:
  """Survival entering pass k: 1 for k < force and 0 after when forcing, else s."""
  return jnp.where(force > 0, (k < force).astype(s.dtype), s)


def attention_features(
  probs: jax.Array, n_keys: jax.Array, top_k: int, agreement: str = "weights"
) -> tuple[jax.Array, ...]:
  """(normalized entropy, top-k mass, head agreement), each ``[B, Q]``.

  ``probs`` ``[B, H, Q, T]``; ``n_keys`` ``[B, Q]`` keys each query may see (≥ 1), the first
  ``n_keys`` of its row. Head agreement ``"weights"`` (the seed's): 1 − the std over heads
  of the attention weight, averaged over the query's visible keys (masked keys hold weight
  0 in every head; over all T keys they would dilute the early rows). ``"entropy"``: 1 − the
  std over heads of the normalized entropy.
  """
  # log of a clipped p, not xlogy: masked keys have p = 0 exactly and xlogy's gradient
  # there is 0/0.
  entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-30)), axis=-1)  # [B, H, Q]
  log_n = jnp.log(jnp.maximum(n_keys, 2.0))[:, None, :]
  norm_entropy = jnp.where(n_keys[:, None, :] > 1, entropy / log_n, 0.0)
  top_mass = jnp.sum(jax.lax.top_k(probs, min(top_k, probs.shape[-1]))[0], axis=-1)
  # sqrt(var + tiny): std's gradient is NaN where all heads agree exactly (position 0).
  if agreement == "entropy":
    agree = 1.0 - jnp.sqrt(jnp.var(norm_entropy, axis=1) + 1e-12)
  else:
    visible = jnp.arange(probs.shape[-1]) < n_keys[..., None]  # [B, Q, T]
    spread = jnp.sqrt(jnp.var(probs.astype(jnp.float32), axis=1) + 1e-12)  # [B, Q, T]
    agree = 1.0 - jnp.sum(jnp.where(visible, spread, 0.0), -1) / jnp.maximum(n_keys, 1.0)
  return jnp.mean(norm_entropy, axis=1), jnp.mean(top_mass, axis=1), agree


def safe_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """cos over the last axis; 0 when either vector is zero (no NaN, finite gradient)."""
  dot = jnp.sum(a * b, axis=-1)
  norms = jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1)
  ok = norms > 1e-24
  return jnp.where(ok, dot * jax.lax.rsqrt(jnp.where(ok, norms, 1.0)), 0.0)


class Carry(NamedTuple):
  """The loop state of one layer's recurrence (identical for scan and while_loop)."""

  k: jax.Array  # shape=(), int32: the next pass
  h: jax.Array  # [B, T, d] state
  s: jax.Array  # [B, T] survival entering pass k
  dh_prev: jax.Array  # [B, T, d] the token's last update
  p_prev: jax.Array  # [B, T] its last gate value
  expected: jax.Array  # [B, T] soft depth Σ s
  executed: jax.Array  # [B, T] passes executed
  stats: PassStats  # per-pass sums
  ffn_telemetry: dict  # summed over executed passes
  kv: tuple | None = None  # (keys, values) of h for the next pass (kv_per_pass), else None


class AdaptiveDecoderLayer(nnx.Module):
  """One layer with static (or per-pass) KV and 1..Kmax passes; see the module docstring."""

  def __init__(self, cfg: AdaptiveConfig, layer: int, *, rngs: nnx.Rngs):
    self.cfg, self.layer = cfg, layer
    d = cfg.d_model
    self.attn_norm = layer_norm(cfg, rngs)
    self.query = dense(d, d, cfg, rngs)
    self.key_value = dense(d, 2 * d, cfg, rngs)
    self.out = dense(d, d, cfg, rngs, scale=(2 * cfg.num_layers) ** -0.5)
    self.mlp_norm = layer_norm(cfg, rngs)
    self.mlp = MoEFeedForward(cfg, layer, rngs=rngs) if cfg.ffn == "moe" else MLP(cfg, rngs=rngs)
    self.layer_embedding = nnx.Param(
      nnx.initializers.normal(1.0)(rngs.params(), (cfg.layer_embed_dim,))
    )
    self.gate_hidden = nnx.Linear(NUM_FEATURES + cfg.layer_embed_dim, cfg.gate_hidden, rngs=rngs)
    self.gate_out = nnx.Linear(
      cfg.gate_hidden,
      1,
      kernel_init=nnx.initializers.normal(0.02),
      bias_init=nnx.initializers.constant(cfg.gate_bias_init),
      rngs=rngs,
    )
    self.damping = tuple(float(a) for a in cfg.pass_damping[: cfg.max_passes])

  def continue_gate(self, features: jax.Array, bias: jax.Array | float = 0.0) -> jax.Array:
    """``[..., 5]`` features -> p ∈ (0, 1) ``[...]``; ``bias`` shifts the logit."""
    embed = jnp.broadcast_to(
      self.layer_embedding[...], (*features.shape[:-1], self.cfg.layer_embed_dim)
    )
    inputs = jnp.concatenate([features, embed.astype(features.dtype)], axis=-1)
    logit = self.gate_out(jax.nn.gelu(self.gate_hidden(inputs)))[..., 0]
    bound = self.cfg.gate_logit_bound
    if bound > 0:
      logit = bound * jnp.tanh(logit / bound)
    return jax.nn.sigmoid(logit + bias)

  def _keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values ``[B, T, heads, head_dim]`` of the states ``x``."""
    b, t, d = x.shape
    heads = self.cfg.num_heads
    kv = self.key_value(self.attn_norm(x)).reshape(b, t, 2, heads, d // heads)
    return kv[:, :, 0], kv[:, :, 1]

  def _initial_carry(self, x: jax.Array, force: jax.Array, kv=None) -> Carry:
    """The recurrence state before pass 1 for ``x [B, T, d]`` (h = x, survival 1); ``kv``
    the keys/values of x when they follow the state (``kv_per_pass``)."""
    b, t, d = x.shape
    zeros = jnp.zeros((b, t), jnp.float32)
    return Carry(
      k=jnp.int32(0),
      h=x,
      s=forced_survival(jnp.ones((b, t), jnp.float32), jnp.int32(0), force),
      dh_prev=jnp.zeros((b, t, d), jnp.float32),
      p_prev=zeros,
      expected=zeros,
      executed=zeros,
      stats=PassStats.zeros(self.cfg.max_passes),
      ffn_telemetry=None,
      kv=kv,
    )

  def _capacity(self, t: int) -> int:
    return max(1, math.ceil(self.cfg.gather_capacity * t)) if self.cfg.gather_capacity else 0

  def _pass(
    self, carry: Carry, kv, force, clamp, halt_bias, controls, gather: bool, decode=None
  ) -> tuple[Carry, object]:
    """One pass. ``decode`` = (position ``[B, 1]``, FFN decode state) runs it for one new
    token against cached keys (``decode_step``); returns (carry, new FFN decode state).
    ``kv``: the keys/values to read, unless the carry holds the state's own."""
    cfg = self.cfg
    b, t, d = carry.h.shape
    heads = cfg.num_heads
    keys, values = kv if carry.kv is None else carry.kv
    n_keys = keys.shape[1]
    alive_all = carry.s >= cfg.halt_threshold
    if decode is not None:

      def take(x):
        return x

      positions = decode[0]
    elif gather:
      cap = self._capacity(t)
      _, idx = jax.lax.top_k(carry.s, cap)
      idx = jnp.sort(idx, axis=-1)  # keep sequence order (the GRU router reads it)

      def take(x):
        return jnp.take_along_axis(x, idx.reshape(b, cap, *([1] * (x.ndim - 2))), axis=1)

      positions = idx
    else:

      def take(x):
        return x

      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    h, s, dh_prev, p_prev = take(carry.h), take(carry.s), take(carry.dh_prev), take(carry.p_prev)
    alive = s >= cfg.halt_threshold

    q = self.query(self.attn_norm(h)).reshape(b, -1, heads, d // heads)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, keys).astype(jnp.float32) / math.sqrt(d // heads)
    causal = jnp.arange(n_keys)[None, None, :] <= positions[:, :, None]  # [B, Q, keys]
    scores = jnp.where(causal[:, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    attn = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(values.dtype), values)
    a = self.out(attn.reshape(b, -1, d))
    ffn_state = None
    if decode is None:
      f, ffn_telemetry = self.mlp(
        self.mlp_norm(h + a), deterministic=True, rngs=None, controls=controls
      )
    else:
      f, ffn_state = self.mlp.decode(self.mlp_norm(h + a), decode[1], controls=controls)
      ffn_telemetry = carry.ffn_telemetry
    dh = (jnp.asarray(self.damping)[carry.k] * (a + f)).astype(jnp.float32)

    entropy, top_mass, agreement = attention_features(
      probs, (positions + 1).astype(jnp.float32), cfg.top_mass_k, cfg.head_agreement
    )
    h32 = h.astype(jnp.float32)
    d_rel = jnp.sqrt(jnp.sum(dh * dh, -1) + 1e-12) / (
      jnp.sqrt(jnp.sum(h32 * h32, -1) + 1e-12) + 1e-6
    )
    cosine = safe_cosine(dh, dh_prev)
    features = GateFeatures(entropy, top_mass, agreement, d_rel, cosine)
    p = self.continue_gate(features.stacked(), halt_bias)
    p = jnp.where(clamp > 0, jnp.clip(p, 0.01, 0.95), p)

    w = jnp.where(alive, s, 0.0)
    new_h = h32 + w[..., None] * dh
    new_s = forced_survival(jnp.where(alive, s * p, s), carry.k + 1, force)
    new_dh = jnp.where(alive[..., None], dh, dh_prev)
    new_p = jnp.where(alive, p, p_prev)
    fa = alive.astype(jnp.float32)
    stats = carry.stats.record(
      carry.k,
      alive=jnp.mean(alive_all.astype(jnp.float32)),
      survival=jnp.mean(carry.s),
      p_sum=jnp.sum(p * fa),
      p2_sum=jnp.sum(p * p * fa),
      entropy_sum=jnp.sum(entropy * fa),
      drel_sum=jnp.sum(d_rel * fa),
      dp_sum=jnp.sum((p - p_prev) * fa * (carry.k > 0)),
      p_low_sum=jnp.sum((p <= 0.05) * fa),
      overflow=(jnp.sum(alive_all) - jnp.sum(alive)) / (b * t),
    )
    if gather:

      def put(full, part):
        return full.at[jnp.arange(b)[:, None], idx].set(part.astype(full.dtype))

      h_out = put(carry.h, new_h)
      kv_out = None
      if carry.kv is not None:
        kv_out = tuple(map(put, carry.kv, self._keys_values(new_h.astype(carry.h.dtype))))
      s_out = forced_survival(put(carry.s, new_s), carry.k + 1, force)
      dh_out, p_out = put(carry.dh_prev, new_dh), put(carry.p_prev, new_p)
      expected = put(carry.expected, take(carry.expected) + w)
      executed = put(carry.executed, take(carry.executed) + fa)
    else:
      h_out, s_out, dh_out, p_out = new_h.astype(carry.h.dtype), new_s, new_dh, new_p
      kv_out = None if carry.kv is None else self._keys_values(h_out)
      expected, executed = carry.expected + w, carry.executed + fa
    return Carry(
      k=carry.k + 1,
      h=h_out,
      s=s_out,
      dh_prev=dh_out,
      p_prev=p_out,
      expected=expected,
      executed=executed,
      stats=stats,
      ffn_telemetry=ffn_telemetry
      if carry.ffn_telemetry is None or decode is not None
      else jax.tree.map(jnp.add, carry.ffn_telemetry, ffn_telemetry),
      kv=kv_out,
    ), ffn_state

  def __call__(
    self,
    x: jax.Array,
    *,
    force: jax.Array,
    clamp: jax.Array,
    num_passes: int,
    path: str,
    controls: Mapping[str, jax.Array] | None = None,
    halt_bias: jax.Array | float = 0.0,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``x [B, T, d]`` -> (output ``[B, T, d]``, this layer's telemetry).

    ``force``/``clamp`` are traced int32 scalars (0 = off), ``halt_bias`` the gate-logit
    offset; ``num_passes`` the static pass limit; ``path`` "scan" (differentiable) or
    "while" (early exit).
    """
    cfg = self.cfg
    t = x.shape[1]
    kv = self._keys_values(x)
    carry = self._initial_carry(x, force, kv if cfg.kv_per_pass else None)
    # Pass 1 runs for every token, outside the loop: it fixes the FFN telemetry's
    # structure (the loop carry needs it) and is the one-pass state of the coupon.
    first, _ = self._pass(carry, kv, force, clamp, halt_bias, controls, gather=False)
    carry = first
    gather = self._capacity(t) > 0

    def alive_enough(c: Carry) -> jax.Array:
      frac = jnp.mean((c.s >= cfg.halt_threshold).astype(jnp.float32))
      return jnp.logical_and(frac > 0, frac >= cfg.min_alive_fraction)

    def run(c: Carry) -> Carry:
      return self._pass(c, kv, force, clamp, halt_bias, controls, gather)[0]

    def skip(c: Carry) -> Carry:
      return c._replace(k=c.k + 1)

    if num_passes > 1:
      if path == "while":
        carry = jax.lax.while_loop(
          lambda c: jnp.logical_and(c.k < num_passes, alive_enough(c)), run, carry
        )
      elif path == "scan":
        carry, _ = jax.lax.scan(
          lambda c, _: (jax.lax.cond(alive_enough(c), run, skip, c), None),
          carry,
          length=num_passes - 1,
        )
      else:
        raise ValueError(f"path must be 'scan' or 'while', got {path!r}")
    return carry.h.astype(x.dtype), self._telemetry(x, first, carry)

  def init_cache(self, batch: int, length: int, dtype) -> dict:
    """Keys/values of ``length`` positions (one set per pass with ``kv_per_pass``), and
    the FFN's decode state per pass."""
    cfg = self.cfg
    shape = (batch, length, cfg.num_heads, cfg.d_model // cfg.num_heads)
    if cfg.kv_per_pass:
      shape = (cfg.max_passes, *shape)
    ffn = [self.mlp.init_decode_state(batch) for _ in range(cfg.max_passes)]
    return {"keys": jnp.zeros(shape, dtype), "values": jnp.zeros(shape, dtype), "ffn": ffn}

  def decode(self, x, cache, pos, *, force, clamp, num_passes, controls=None, halt_bias=0.0):
    """One new token ``x [B, 1, d]`` at position ``pos``: (output, cache, passes executed
    ``[B]``). The same passes as the inference forward gives that position when
    ``min_alive_fraction`` is 0 (tested): a halted token stops here. A feed-forward that
    carries state from token to token (the MoE's GRU gate, its capacity slots) sees, in
    the full forward, every earlier token at every pass that runs, halted or not — so
    then all ``num_passes`` passes run and a halted token's state stays frozen.

    With ``kv_per_pass`` pass k reads the cache's k-th keys/values and writes the token's
    own there first; after its last pass the token's final state fills the passes it did
    not run, since the forward's later tokens read a halted token's frozen state."""
    cfg = self.cfg
    per_pass = cfg.kv_per_pass
    kv = (cache["keys"], cache["values"])
    if not per_pass:
      kv = tuple(_write(full, new, pos) for full, new in zip(kv, self._keys_values(x), strict=True))
    position = jnp.broadcast_to(pos, (x.shape[0], 1))
    states = list(cache["ffn"])

    def run(c: Carry, kv, state):
      if per_pass:  # this pass's keys/values, the token's own from its current state
        own = self._keys_values(c.h)
        kv = tuple(_write(full, new, pos, c.k) for full, new in zip(kv, own, strict=True))
        read = tuple(full[c.k] for full in kv)
      else:
        read = kv
      c, state = self._pass(c, read, force, clamp, halt_bias, controls, False, (position, state))
      return c, kv, state

    carry = self._initial_carry(x, force)
    if jax.tree.leaves(states):  # stateful FFN: every pass, as the full forward
      for k in range(num_passes):
        carry, kv, states[k] = run(carry, kv, states[k])
    else:
      carry, kv = jax.lax.while_loop(
        lambda ckv: (ckv[0].k < num_passes) & jnp.any(ckv[0].s >= cfg.halt_threshold),
        lambda ckv: run(*ckv, states[0])[:2],
        (carry, kv),
      )
    if per_pass:
      final = self._keys_values(carry.h)
      kv = tuple(
        _fill_from(full, new, pos, carry.k, cfg.max_passes)
        for full, new in zip(kv, final, strict=True)
      )
    cache = {"keys": kv[0], "values": kv[1], "ffn": states}
    return carry.h.astype(x.dtype), cache, carry.executed[:, 0]

  def _telemetry(self, x: jax.Array, first: Carry, last: Carry) -> dict[str, jax.Array]:
    stats = last.stats._asdict()
    n_alive = jnp.maximum(stats["alive"] * x.shape[0] * x.shape[1], 1.0)
    passes_run = jnp.sum((stats["alive"] > 0).astype(jnp.float32))  # the dense path's cost
    p_n = jnp.maximum(jnp.sum(stats["alive"]) * x.shape[0] * x.shape[1], 1.0)
    p_mu = jnp.sum(stats["p_sum"]) / p_n
    executed = last.executed
    # What the passes cost per token: pass 1 for every token, then each later pass the
    # batch ran costs a full pass (dense) or the gathered share C/T.
    share = self._capacity(x.shape[1]) / x.shape[1] if self.cfg.gather_capacity else 1.0
    paid = 1.0 + jnp.maximum(passes_run - 1.0, 0.0) * share
    telemetry = {
      "expected_k": jnp.mean(last.expected),  # differentiable: the ponder cost reads it
      "k_exec": jnp.mean(executed),
      "k_p95": jnp.percentile(executed, 95.0),
      "s_fin": jnp.mean(last.s),
      "p_mu": p_mu,
      "p_std": jnp.sqrt(jnp.maximum(jnp.sum(stats["p2_sum"]) / p_n - p_mu**2, 0.0)),
      "entropy": stats["entropy_sum"][0] / n_alive[0],
      "d_rel": jnp.sum(stats["drel_sum"]) / p_n,
      "p_low": jnp.sum(stats["p_low_sum"]) / p_n,  # share of gates ≤ 0.05
      "delta_p": jnp.sum(stats["dp_sum"]) / jnp.maximum(p_n - n_alive[0], 1.0),
      "delta_h": jnp.linalg.norm(last.h - first.h) / (jnp.linalg.norm(first.h) + 1e-6),
      "overflow": jnp.sum(stats["overflow"]),  # alive token-passes dropped, per token
      "passes_run": passes_run,
      # share of the paid pass-compute spent on tokens that were not alive
      "wasted_compute": 1.0 - jnp.mean(executed) / paid,
      "survival": stats["survival"],  # [max_passes]: mean s entering each pass
      "token_passes": executed,  # [B, T]; the model keeps it only when asked (per_token)
    }
    for n in range(2, self.cfg.max_passes + 1):
      telemetry[f"tail{n}"] = jnp.mean((executed >= n).astype(jnp.float32))
    ffn = dict(last.ffn_telemetry) if isinstance(last.ffn_telemetry, dict) else {}
    for key in ffn:  # the load is a count (summed over passes); the rest are averages
      if key not in ("moe_load", "aux_loss"):
        ffn[key] = ffn[key] / jnp.maximum(passes_run, 1.0)
    telemetry.update(ffn)
    return telemetry


def _write(full: jax.Array, new: jax.Array, pos, k=None) -> jax.Array:
  """``full [(P,) B, L, H, D]`` with ``new [B, 1, H, D]`` at position ``pos`` (of pass k)."""
  if k is None:
    return jax.lax.dynamic_update_slice_in_dim(full, new.astype(full.dtype), pos, 1)
  return jax.lax.dynamic_update_slice(full, new[None].astype(full.dtype), (k, 0, pos, 0, 0))


def _fill_from(full: jax.Array, new: jax.Array, pos, first, passes: int) -> jax.Array:
  """``full [P, B, L, H, D]`` with ``new`` at position ``pos`` of every pass ≥ ``first``."""
  for k in range(passes):
    old = jax.lax.dynamic_slice(full, (k, 0, pos, 0, 0), (1, *new.shape))[0]
    full = _write(full, jnp.where(k >= first, new.astype(full.dtype), old), pos, k)
  return full
