"""Mixture-of-experts feed-forward with the SpecHorn router, and the MoE Transformer LM.

``MoEFeedForward`` replaces a block's dense MLP: E GELU experts (weights stacked on a
leading expert axis, ``[E, d, ff]``, so the axis shards on a mesh), top-k routing, and
one of three routers (``MoEConfig.router``):

* ``"softmax_aux"``: linear gate, softmax, top-k; the Switch/GShard auxiliary loss
  E·Σ_i f_i·P_i (f = fraction of assignments, P = mean gate probability) times
  ``aux_loss_weight`` is returned as telemetry ``aux_loss`` and enters the objective.
* ``"deepseek"``: linear gate; the ``moe_selection_bias`` control of the balancer named
  by ``balancer`` is added to the scores used for the top-k *selection* only, never to
  the gate weights (Wang et al. 2024). Loss-free.
* ``"spechorn"``: (1) Gram gating: a GRU runs causally along the sequence over the
  token representations (hidden ``router_dim``), and a linear map of its state gives E
  logits, LayerNorm-ed (``logit_norm``). ``gating="linear"`` replaces the GRU by the
  linear gate of the other routers (an ablation: the GRU carries sequence context into
  the gate weights, which is extra model capacity, not only routing); (2–4) the
  ``moe_logit_adjust`` control of the balancer named by ``balancer`` (EMA load bias −
  capacity penalty − orthogonality penalty + the Sinkhorn bias, see
  ``regulators/load_balance.py``) is added, and each token takes its top-k; (5) Sinkhorn
  (eps ``sinkhorn_eps``, ``sinkhorn_iter`` iterations) runs over the adjusted logits of
  the whole batch under ``stop_gradient`` and reports its expert (column) potentials as
  telemetry ``moe_sinkhorn_dual`` — the per-expert shift that would balance this batch —
  which the balancer accumulates into the bias for the next step. Loss-free.

  **Causal by design.** Routing Sinkhorn's *plan* (the seed's "direct Sinkhorn routing")
  makes token t's expert depend on every other token of the batch, later ones included:
  the model would not be causal and single-token decoding could not reproduce training.
  Here Sinkhorn balances the batch through its duals while the routing itself stays per
  token, so training, evaluation and decoding route identically (tested).

Gate weights are always the softmax of the router's own (unadjusted) logits at the
selected experts, renormalised over the k: the controllers change *which* experts a
token uses, the gradient trains the router through the weights.

Dispatch (causal capacity): each expert has C = max(1, ⌈capacity_factor·k·T_max/E⌉) slots
per sequence, T_max = ``max_seq_len`` (the model's context, not the input's length); each
sequence's assignments are ranked in token order (a token's k choices at its position;
one-hot cumsum) and those ranked C or later are dropped (they contribute nothing). Whether
token t keeps its slot depends only on tokens ≤ t of its own row — not on later tokens,
other rows or the input length — so a prefix evaluated alone routes and drops exactly as
inside the full batch. GShard's batch-wide capacity (all first choices before any second
choice) would let later tokens and other rows take a token's slot.
``dropless=True`` sorts the N·k assignments by expert and runs the experts with
``jax.lax.ragged_dot`` on the ragged groups: nothing is dropped. Both paths give the
same output when nothing is dropped (tested).

Telemetry per layer (stacked over layers by the model): ``moe_load`` [E] assignments
per expert (before drops), ``moe_mean_input`` [E, d] the mean routed input of each
expert, ``moe_drop_rate``, ``moe_router_entropy``, ``moe_sinkhorn_dual`` [E] (spechorn with
Sinkhorn), and the scalar summaries the loop logs
(``moe_load_cv`` = std/mean of the load, ``moe_max_vio`` = max/mean − 1).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from homeo_jax.cores.sinkhorn import sinkhorn_potentials
from homeo_jax.models.layers import TransformerConfig, read_control
from homeo_jax.models.transformer import Transformer

ROUTERS = ("softmax_aux", "deepseek", "spechorn")
GATINGS = ("auto", "gru", "linear")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  num_experts: int = 8
  top_k: int = 2
  capacity_factor: float = 1.25
  dropless: bool = False
  router: str = "spechorn"
  gating: str = "auto"  # "gru", "linear", or "auto": GRU for spechorn, linear otherwise
  router_dim: int = 32  # GRU hidden size
  logit_norm: bool = True
  use_sinkhorn: bool = True
  sinkhorn_eps: float = 0.05
  sinkhorn_iter: int = 4
  aux_loss_weight: float = 0.01  # softmax_aux only
  # ST-MoE's router z-loss, weight · mean over tokens of logsumexp(router logits)², any
  # router (0: off; ST-MoE uses 1e-3): keeps the logits small, a stability aid.
  router_z_loss_weight: float = 0.0
  balancer: str = ""  # regulator whose control the deepseek/spechorn router reads ("": none)

  def validate(self, prefix: str = "model.moe") -> None:
    if self.num_experts < 1:
      raise ValueError(f"{prefix}.num_experts must be >= 1, got {self.num_experts}")
    if not 1 <= self.top_k <= self.num_experts:
      raise ValueError(
        f"{prefix}.top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}"
      )
    if not self.capacity_factor > 0:
      raise ValueError(f"{prefix}.capacity_factor must be > 0, got {self.capacity_factor}")
    if self.balancer and self.router not in BALANCER_CONTROLS:
      raise ValueError(
        f"{prefix}.balancer={self.balancer!r} needs router deepseek or spechorn, got "
        f"{self.router!r}"
      )
    if self.router not in ROUTERS:
      raise ValueError(f"{prefix}.router must be one of {ROUTERS}, got {self.router!r}")
    if self.gating not in GATINGS:
      raise ValueError(f"{prefix}.gating must be one of {GATINGS}, got {self.gating!r}")
    if self.router_dim < 1:
      raise ValueError(f"{prefix}.router_dim must be >= 1, got {self.router_dim}")
    if not self.sinkhorn_eps > 0 or self.sinkhorn_iter < 1:
      raise ValueError(
        f"{prefix}.sinkhorn_eps must be > 0 and sinkhorn_iter >= 1, got "
        f"{self.sinkhorn_eps}, {self.sinkhorn_iter}"
      )
    for name in ("aux_loss_weight", "router_z_loss_weight"):
      if getattr(self, name) < 0:
        raise ValueError(f"{prefix}.{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class MoETransformerConfig(TransformerConfig):
  moe: MoEConfig = MoEConfig()

  def validate(self, prefix: str = "model") -> None:
    super().validate(prefix)
    self.moe.validate(f"{prefix}.moe")


BALANCER_CONTROLS = {"deepseek": "moe_selection_bias", "spechorn": "moe_logit_adjust"}


def control_read(cfg: MoEConfig) -> tuple[str, str] | None:
  """(balancer name, control) the router reads, or None (no balancer, or softmax_aux)."""
  if not cfg.balancer or cfg.router not in BALANCER_CONTROLS:
    return None
  return cfg.balancer, BALANCER_CONTROLS[cfg.router]


def capacity(cfg: MoEConfig, seq_len: int) -> int:
  """Slots per expert and sequence: max(1, ⌈capacity_factor·k·T/E⌉)."""
  return max(1, math.ceil(cfg.capacity_factor * cfg.top_k * seq_len / cfg.num_experts))


def capacity_slots(choice: jax.Array, cap: int) -> tuple[jax.Array, jax.Array]:
  """Slot of each assignment in its expert's per-sequence buffer, and whether it fits.

  ``choice`` is the one-hot ``[..., T, k, E]`` of each token's k experts (leading axes are
  independent sequences). Assignments are ranked in token order, a token's k choices at
  its own position, and the first ``cap`` of each expert are kept: a token's slot depends
  on earlier tokens of its sequence only. Returns (position ``[..., T, k]``, kept).
  """
  *lead, t, k, e = choice.shape
  ranked = choice.reshape(*lead, t * k, e)
  position = ((jnp.cumsum(ranked, axis=-2) - 1.0) * ranked).sum(-1)
  position = position.reshape(*lead, t, k)
  return position, (position < cap).astype(jnp.float32)


class GRUGate(nnx.Module):
  """A GRU run causally along the sequence: ``[B, T, d] -> [B, T, hidden]``."""

  def __init__(self, d_in: int, hidden: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(d_in**-0.5)
    self.input_proj = nnx.Linear(d_in, 3 * hidden, kernel_init=init, rngs=rngs)
    self.hidden_proj = nnx.Linear(
      hidden, 3 * hidden, use_bias=False, kernel_init=nnx.initializers.orthogonal(), rngs=rngs
    )
    self.hidden = hidden

  def cell(self, h: jax.Array, x_proj: jax.Array) -> jax.Array:
    """One step: state ``h [B, hidden]``, projected input ``x_proj [B, 3·hidden]``."""
    r_x, z_x, n_x = jnp.split(x_proj, 3, axis=-1)
    r_h, z_h, n_h = jnp.split(h @ self.hidden_proj.kernel[...], 3, axis=-1)
    r = jax.nn.sigmoid(r_x + r_h)
    z = jax.nn.sigmoid(z_x + z_h)
    n = jnp.tanh(n_x + r * n_h)
    return (1.0 - z) * n + z * h

  def initial_state(self, batch: int) -> jax.Array:
    return jnp.zeros((batch, self.hidden), jnp.float32)

  def __call__(self, x: jax.Array) -> jax.Array:
    xs = jnp.swapaxes(self.input_proj(x.astype(jnp.float32)), 0, 1)  # [T, B, 3h]

    def step(h, x_t):
      h = self.cell(h, x_t)
      return h, h

    _, hs = jax.lax.scan(step, self.initial_state(x.shape[0]), xs)
    return jnp.swapaxes(hs, 0, 1)

  def decode(self, h: jax.Array, x: jax.Array) -> jax.Array:
    """The next state after ``x [B, d]``."""
    return self.cell(h, self.input_proj(x.astype(jnp.float32)))


class MoEFeedForward(nnx.Module):
  """E stacked GELU experts behind a top-k router; see the module docstring."""

  def __init__(self, cfg: MoETransformerConfig, layer: int, *, rngs: nnx.Rngs):
    m = cfg.moe
    self.moe, self.layer, self.dtype = m, layer, cfg.compute_dtype
    self.max_seq_len = cfg.max_seq_len  # capacity is per sequence of the model's context
    e, d, ff = m.num_experts, cfg.d_model, cfg.ff_dim
    self.w_up = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (e, d, ff)))
    down_std = 0.02 * (2 * cfg.num_layers) ** -0.5
    self.w_down = nnx.Param(nnx.initializers.normal(down_std)(rngs.params(), (e, ff, d)))
    use_gru = m.gating == "gru" or (m.gating == "auto" and m.router == "spechorn")
    self.gru = GRUGate(d, m.router_dim, rngs=rngs) if use_gru else None
    gate_in = m.router_dim if self.gru is not None else d
    self.gate = nnx.Linear(
      gate_in, e, use_bias=False, kernel_init=nnx.initializers.normal(gate_in**-0.5), rngs=rngs
    )
    self.logit_norm = (
      nnx.LayerNorm(e, rngs=rngs) if m.router == "spechorn" and m.logit_norm else None
    )
    self.dropout = nnx.Dropout(cfg.dropout)

  def router_logits(self, x: jax.Array) -> jax.Array:
    """float32 ``[B, T, E]`` router logits."""
    return self.gate_logits(self.gru(x) if self.gru is not None else x)

  def gate_logits(self, h: jax.Array) -> jax.Array:
    """The logits from the gate's input (the GRU state, or the token itself)."""
    logits = self.gate(h.astype(jnp.float32)).astype(jnp.float32)
    if self.logit_norm is not None:
      logits = self.logit_norm(logits)
    return logits

  def route(self, logits: jax.Array, controls) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(finite logits, the k experts ``[..., k]``, their renormalised gates ``[..., k]``):
    top-k of ``select``, gates from the router's own softmax."""
    # A token with non-finite logits routes uniformly instead of poisoning its neighbours.
    logits = jnp.where(jnp.isfinite(logits).all(-1, keepdims=True), logits, 0.0)
    probs = jax.nn.softmax(logits, axis=-1)
    _, expert_idx = jax.lax.top_k(self.select(logits, controls), self.moe.top_k)
    gate = jnp.take_along_axis(probs, expert_idx, axis=-1)
    return logits, expert_idx, gate / jnp.sum(gate, axis=-1, keepdims=True)

  def select(self, logits: jax.Array, controls) -> jax.Array:
    """Per-token scores whose top-k picks the experts, ``[..., E]``: the router logits plus
    the balancer's control (nothing that couples tokens)."""
    read = control_read(self.moe)
    if read is None:
      return logits
    return logits + read_control(controls, *read)[self.layer]

  def sinkhorn_dual(self, scores: jax.Array) -> jax.Array:
    """``[E]``: eps·g, Sinkhorn's column potential on the batch's scores, centred — the
    per-expert logit shift that would balance this batch (telemetry, no gradient)."""
    m = self.moe
    _, g = sinkhorn_potentials(
      jax.lax.stop_gradient(scores), n_iter=m.sinkhorn_iter, eps=m.sinkhorn_eps
    )
    return m.sinkhorn_eps * (g - jnp.mean(g))

  def __call__(
    self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None, controls=None
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    m = self.moe
    b, t, d = x.shape
    e, k = m.num_experts, m.top_k
    logits, expert_idx, gate = self.route(self.router_logits(x), controls)  # [B, T, k]
    probs = jax.nn.softmax(logits, axis=-1)
    choice = jax.nn.one_hot(expert_idx, e, dtype=jnp.float32)  # [B, T, k, E]
    if m.dropless:
      y, kept = self._dropless(x, expert_idx, gate), jnp.ones((b, t, k), jnp.float32)
    else:
      y, kept = self._with_capacity(x, choice, gate)
    load = jnp.sum(choice, axis=(0, 1, 2))
    routed = jnp.sum(choice, axis=2).reshape(b * t, e)  # 1 where the token chose the expert
    tokens = x.reshape(b * t, d).astype(jnp.float32)
    mean_input = (routed.T @ tokens) / jnp.maximum(load, 1.0)[:, None]
    telemetry = {
      "moe_load": load,
      "moe_mean_input": mean_input,
      "moe_drop_rate": 1.0 - jnp.mean(kept),
      "moe_router_entropy": -jnp.mean(jnp.sum(probs * jnp.log(probs + 1e-9), axis=-1)),
    }
    if m.router == "spechorn" and m.use_sinkhorn:
      scores = self.select(logits, controls).reshape(b * t, e)
      telemetry["moe_sinkhorn_dual"] = self.sinkhorn_dual(scores)
    if m.router == "softmax_aux":
      fraction = load / (b * t * k)
      mean_probs = jnp.mean(probs.reshape(b * t, e), 0)
      telemetry["aux_loss"] = m.aux_loss_weight * e * jnp.sum(fraction * mean_probs)
    if m.router_z_loss_weight > 0:
      z_loss = jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))
      telemetry["moe_router_z_loss"] = z_loss
      telemetry["aux_loss"] = telemetry.get("aux_loss", 0.0) + m.router_z_loss_weight * z_loss
    y = self.dropout(y.astype(x.dtype), deterministic=deterministic, rngs=rngs)
    return y, telemetry

  def init_decode_state(self, batch: int) -> dict[str, jax.Array]:
    """What routing carries from token to token: the GRU state and, per row, the
    capacity slots each expert has handed out so far."""
    state = {"slots": jnp.zeros((batch, self.moe.num_experts), jnp.float32)}
    if self.gru is not None:
      state["gru"] = self.gru.initial_state(batch)
    return state

  def decode(self, x: jax.Array, state: dict[str, jax.Array], controls=None):
    """One token, ``x [B, 1, d]``: the same routing, slots and expert MLPs as a full
    evaluation forward gives that position (``tests/models/test_decode.py``)."""
    m, state = self.moe, dict(state)
    token = x[:, 0]
    if self.gru is not None:
      state["gru"] = self.gru.decode(state["gru"], token)
    _, expert_idx, gate = self.route(self.gate_logits(state.get("gru", token)), controls)
    choice = jax.nn.one_hot(expert_idx, m.num_experts, dtype=jnp.float32)  # [B, k, E]
    if m.dropless:
      kept = jnp.ones_like(gate)
    else:  # the slot = the assignments this expert took earlier in the sequence
      position = jnp.take_along_axis(state["slots"], expert_idx, axis=-1)
      kept = (position < capacity(m, self.max_seq_len)).astype(jnp.float32)
    state["slots"] = state["slots"] + jnp.sum(choice, axis=1)
    w_up = self.w_up[...].astype(self.dtype)[expert_idx]  # [B, k, d, ff]
    w_down = self.w_down[...].astype(self.dtype)[expert_idx]
    hidden = jax.nn.gelu(jnp.einsum("bd,bkdf->bkf", token.astype(self.dtype), w_up))
    out = jnp.einsum("bkf,bkfd->bkd", hidden, w_down).astype(jnp.float32)
    y = jnp.sum(out * (gate * kept)[..., None], axis=1)[:, None]
    return y.astype(x.dtype), state

  def _experts(self, h: jax.Array) -> jax.Array:
    """``[E, C, d] -> [E, C, d]``: each expert's MLP on its slots."""
    w_up, w_down = self.w_up[...].astype(self.dtype), self.w_down[...].astype(self.dtype)
    hidden = jax.nn.gelu(jnp.einsum("ecd,edf->ecf", h.astype(self.dtype), w_up))
    return jnp.einsum("ecf,efd->ecd", hidden, w_down)

  def _with_capacity(self, x, choice, gate):
    """Per-sequence slots: ``[B, T, d]`` -> (output ``[B, T, d]``, kept ``[B, T, k]``)."""
    b, t, k, e = choice.shape
    cap = capacity(self.moe, self.max_seq_len)  # the context's, so a prefix drops alike
    position, kept = capacity_slots(choice, cap)
    slot = jax.nn.one_hot(position.astype(jnp.int32), cap, dtype=jnp.float32)  # [B,T,k,C]
    combine = jnp.einsum("btke,btkc->btec", choice * (kept * gate)[..., None], slot)
    dispatch = jnp.einsum("btke,btkc->btec", choice * kept[..., None], slot)
    expert_in = jnp.einsum("btec,btd->ebcd", dispatch, x.astype(jnp.float32))
    expert_out = self._experts(expert_in.reshape(e, b * cap, -1)).astype(jnp.float32)
    y = jnp.einsum("btec,ebcd->btd", combine, expert_out.reshape(e, b, cap, -1))
    return y, kept

  def _dropless(self, x, expert_idx, gate):
    b, t, k = expert_idx.shape
    n = b * t
    flat = expert_idx.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    group_sizes = jnp.bincount(flat, length=self.moe.num_experts).astype(jnp.int32)
    tokens = x.reshape(n, -1)[order // k].astype(self.dtype)
    w_up, w_down = self.w_up[...].astype(self.dtype), self.w_down[...].astype(self.dtype)
    hidden = jax.nn.gelu(jax.lax.ragged_dot(tokens, w_up, group_sizes))
    out = jax.lax.ragged_dot(hidden, w_down, group_sizes).astype(jnp.float32)
    out = jnp.zeros_like(out).at[order].set(out).reshape(n, k, -1)
    return jnp.sum(out * gate.reshape(n, k)[..., None], axis=1).reshape(b, t, -1)


class MoETransformer(Transformer):
  """The baseline LM with every block's MLP replaced by ``MoEFeedForward``."""

  def make_ffn(self, cfg: MoETransformerConfig, layer: int, rngs: nnx.Rngs) -> nnx.Module:
    return MoEFeedForward(cfg, layer, rngs=rngs)

  def control_reads(self) -> tuple[tuple[str, str], ...]:
    read = control_read(self.cfg.moe)
    return () if read is None else (read,)

  @staticmethod
  def merge_layer_telemetry(per_layer):
    merged = Transformer.merge_layer_telemetry(per_layer)
    load = merged["moe_load"]  # [L, E]
    mean = jnp.mean(load, axis=-1)
    merged["moe_load_cv"] = jnp.mean(jnp.std(load, axis=-1) / mean)
    merged["moe_max_vio"] = jnp.mean(jnp.max(load, axis=-1) / mean - 1.0)
    merged["moe_drop_rate"] = jnp.mean(merged["moe_drop_rate"])
    merged["moe_router_entropy"] = jnp.mean(merged["moe_router_entropy"])
    if "moe_router_z_loss" in merged:
      merged["moe_router_z_loss"] = jnp.mean(merged["moe_router_z_loss"])
    share = jnp.mean(load / jnp.sum(load, axis=-1, keepdims=True), axis=0)
    merged.update({f"moe_load_share/{e}": share[e] for e in range(load.shape[-1])})
    return merged
