"""Loss-free MoE load balancing as optax regulators: SpecHorn and DeepSeek's bias.

Both pass the gradient updates through unchanged; they read the MoE telemetry
(``moe_load`` ``[L, E]``, ``moe_mean_input`` ``[L, E, d]``) from the extra args, keep
their statistics in optax state and publish a control the router reads at the next
step. Chain them after the optimizer: ``optax.chain(optax.adamw(...), spechorn_balancer(...))``.

SpecHorn (``spechorn_balancer``), per layer l and expert e, with relative load
r = load / mean(load) (1 = balanced):

* load EMA           L̄ ← EMA(r)                       (decay ``Stages.load_decay``, 0.9)
* EMA load bias      bias = −bias_scale·(L̄ − 1)          overloaded experts are pushed down
* capacity use       U = load / target of *this* batch ("real-time", as the seed's stage
                     4), target = routed_scaling_factor·k·N/E (the k·N assignments spread
                     evenly; the seed writes tokens/E for k=1), i.e. U = r / rsf
* capacity penalty   cap = cap_penalty_scale·relu(U − 1)² (published for the next step:
                     a batch's own routing cannot depend on its load and stay causal)
* spectral vectors   s_e ← EMA(P·mean routed input of e), P a fixed random projection
                     d → ``SpectralVectors.dim`` (128) from its ``seed``, refreshed
                     every ``update_every`` (16) steps (``spectral=None``: no vectors)
* orthogonality      ortho_e = mean_{j≠e} relu(cos(s_e, s_j))
* Sinkhorn bias      sb ← sb + ``sinkhorn_rate``·d, d = the router's telemetry
                     ``moe_sinkhorn_dual`` [L, E]: eps × Sinkhorn's column potentials on
                     this batch's adjusted scores (centred), the shift that would have
                     balanced it. Sinkhorn balances through this bias; routing stays per
                     token and causal (``models/moe.py``). ``sinkhorn_rate=None`` drops it.
* published control  moe_logit_adjust = bias − cap − ortho_scale·ortho + sb

``Stages(mode="integral")`` (a documented variant; the default ``"shift"`` is the seed's form
above) feeds the load-bias and capacity terms into the same integral as the duals instead:
sb ← sb + sinkhorn_rate·d + ``Stages.rate``·(bias − cap), published as sb −
ortho_scale·ortho. Why: added as a shift, the stages are a lagging proportional term on top
of the duals' integral; with converged duals (16–64 iterations) the loop oscillates (hard
load CV 0.73, ``experiments/bench_spechorn_balance.py``). Integrated, they add their error
signals to the duals' and vanish only when the loads are balanced.

The scheduler (``CVScheduler``; ``scheduler=None`` turns it off) moves cap_penalty_scale
multiplicatively by its ``rate`` (5%) per step, up when the load CV = std/mean of the load
(mean over layers) is above ``cv_band[1]`` and down when below ``cv_band[0]``, within
``cap_penalty_range``; bias_scale rises linearly over ``total_steps`` through
``bias_scale_range`` and ortho_scale through ``ortho_scale_range``. Without it the
scales stay at the ``Stages`` values ``bias_scale``, ``cap_penalty_scale``, ``ortho_scale``.

DeepSeek (``deepseek_balancer``): b_i ← b_i + u·sign(mean load − load_i), u = 0.001,
published as ``moe_selection_bias`` (selection only). Wang et al. 2024, arXiv 2408.15664.

Both take ``name`` (default ``"spechorn"`` / ``"deepseek"``): their metrics and controls
are keyed by it, so two MoE stacks can each have a balancer; the router names the instance
it reads (``MoEConfig.balancer``). SpecHorn's options come in groups (``Stages``,
``CVScheduler``, ``SpectralVectors``: frozen dataclasses; a config gives dicts, e.g.
``optimizer.kwargs.stages.mode=integral``). DeepSeek's ``update_rate`` and SpecHorn's
``sinkhorn_rate`` may be injected with ``optax.inject_hyperparams``; the shape arguments
(layers, experts) must then be concrete when ``init`` runs (eagerly, or listed in
``static_args``).

Bad telemetry (a non-finite load) skips the update; the state stays finite.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from homeo_jax.cores import signals
from homeo_jax.regulators import registry
from homeo_jax.regulators.base import (
  RegulatorSpec,
  check,
  fresh,
  options,
  read_telemetry,
  regulator_spec,
  shape_int,
  static_int,
)

STAGE_MODES = ("shift", "integral")


def load_stats(load: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(relative load load/mean ``[L, E]``, CV, MaxVio), CV and MaxVio averaged over layers."""
  mean = jnp.mean(load, axis=-1, keepdims=True)
  rel = load / jnp.maximum(mean, 1e-9)
  cv = jnp.mean(jnp.std(load, axis=-1) / jnp.maximum(mean[..., 0], 1e-9))
  max_vio = jnp.mean(jnp.max(rel, axis=-1) - 1.0)
  return rel, cv, max_vio


def orthogonality_penalty(spec: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(per-expert mean positive off-diagonal cosine ``[L, E]``, mean off-diagonal cosine)."""
  unit = spec / jnp.maximum(jnp.linalg.norm(spec, axis=-1, keepdims=True), 1e-9)
  cos = jnp.einsum("led,lfd->lef", unit, unit)
  e = spec.shape[-2]
  off = 1.0 - jnp.eye(e)
  penalty = jnp.sum(jax.nn.relu(cos) * off, axis=-1) / max(e - 1, 1)
  return penalty, jnp.sum(cos * off) / (spec.shape[0] * max(e * (e - 1), 1))


class SpecHornState(NamedTuple):
  spec: RegulatorSpec  # static: name, telemetry read, controls published
  step: jax.Array  # shape=(), int32
  load_ema: signals.EMA  # [L, E]: relative load
  spec_ema: signals.EMA  # [L, E, spec_dim]: spectral vectors
  sinkhorn_bias: jax.Array  # [L, E], float32: accumulated Sinkhorn duals
  bias_scale: jax.Array  # shape=(), float32
  cap_penalty_scale: jax.Array  # shape=(), float32
  ortho_scale: jax.Array  # shape=(), float32
  cv: jax.Array  # shape=(), float32: this batch's load CV
  max_vio: jax.Array  # shape=(), float32: this batch's MaxVio
  ortho_similarity: jax.Array  # shape=(), float32: mean off-diagonal cosine of s_e
  controls: dict  # {"moe_logit_adjust": [L, E]}

  logged_fields = (
    "cv",
    "max_vio",
    "bias_scale",
    "cap_penalty_scale",
    "ortho_scale",
    "ortho_similarity",
  )


@dataclasses.dataclass(frozen=True)
class Stages:
  """Stages 2–4: the EMA load bias, the capacity penalty and how they reach the router."""

  mode: str = "shift"  # "shift": added to the logits (the seed's); "integral": into the duals
  rate: float = 0.1  # the "integral" mode's rate
  bias_scale: float = 0.5  # fixed scales when the scheduler is off; 1/16 of the seed's 8
  cap_penalty_scale: float = 0.5  # also the scheduler's start; 1/16 of the seed's 15
  ortho_scale: float = 0.4
  load_decay: float = 0.9  # EMA decay of the relative load
  routed_scaling_factor: float = 1.0  # capacity target scale


@dataclasses.dataclass(frozen=True)
class CVScheduler:
  """The seed's SpecHornScheduler: cap_penalty_scale × (1 ± rate) per step outside the CV
  band; bias and ortho scales ramped linearly over ``total_steps``."""

  total_steps: int = 1000
  cv_band: tuple[float, float] = (0.03, 0.08)
  cap_penalty_range: tuple[float, float] = (0.1, 0.5)  # the seed's 5–30, /16 (docstring)
  bias_scale_range: tuple[float, float] = (0.25, 0.75)  # the seed's 4–12, /16
  ortho_scale_range: tuple[float, float] = (0.1, 0.6)
  rate: float = 0.05


@dataclasses.dataclass(frozen=True)
class SpectralVectors:
  """Per-expert spectral vectors: EMA of a fixed random projection of the mean routed input."""

  dim: int = 128
  update_every: int = 16
  decay: float = 0.9
  seed: int = 0  # of the random projection


def spechorn_balancer(
  num_layers: int,
  num_experts: int,
  d_model: int,
  *,
  stages: Stages | dict = Stages(),
  scheduler: CVScheduler | dict | None = CVScheduler(),
  spectral: SpectralVectors | dict | None = SpectralVectors(),
  sinkhorn_rate: float | None = 0.5,
  name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SpecHorn's load state, penalties and CV scheduler; see the module docstring.

  Args:
    num_layers, num_experts, d_model: the MoE stack's shape (Python ints).
    stages: ``Stages`` (mode, scales, load EMA, capacity target) or a dict of its fields.
      The seed's scales 8 and 15 (scheduler ranges 4–12, 5–30) were set for a router that
      took top-k of Sinkhorn's plan, where a per-expert shift barely matters; with per-token
      routing they drive the loop bang-bang into collapse (measured in
      ``experiments/bench_spechorn_balance.py``), so the defaults are 1/16 of the seed's.
    scheduler: ``CVScheduler`` or a dict; None keeps the scales fixed at ``stages``'.
    spectral: ``SpectralVectors`` or a dict; None drops the orthogonality penalty.
    sinkhorn_rate: rate at which the router's Sinkhorn duals accumulate into the bias (0.5,
      in (0, 1]); None drops them.
    name: instance name (``"spechorn"``).

  State: ``SpecHornState`` (fields commented in the class).
  """
  kind = "spechorn"
  stage = options(kind, "stages", stages, Stages())
  sched = options(kind, "scheduler", scheduler, CVScheduler())
  vectors = options(kind, "spectral", spectral, SpectralVectors())
  schedule, orthogonality, sinkhorn = (
    scheduler is not None,
    spectral is not None,
    sinkhorn_rate is not None,
  )
  stage_mode, stage_rate = stage.mode, stage.rate
  bias_scale, cap_penalty_scale, ortho_scale = (
    stage.bias_scale,
    stage.cap_penalty_scale,
    stage.ortho_scale,
  )
  load_decay, routed_scaling_factor = stage.load_decay, stage.routed_scaling_factor
  total_steps, cv_band, scheduler_rate = sched.total_steps, sched.cv_band, sched.rate
  cap_penalty_range, bias_scale_range = sched.cap_penalty_range, sched.bias_scale_range
  ortho_scale_range = sched.ortho_scale_range
  spec_dim, spec_update_every, spec_decay, seed = (
    vectors.dim,
    vectors.update_every,
    vectors.decay,
    vectors.seed,
  )
  for arg, (lo, hi) in (
    ("scheduler.cv_band", cv_band),
    ("scheduler.cap_penalty_range", cap_penalty_range),
    ("scheduler.bias_scale_range", bias_scale_range),
    ("scheduler.ortho_scale_range", ortho_scale_range),
  ):
    if not 0 <= lo <= hi:
      raise ValueError(f"{kind}: {arg} must satisfy 0 <= low <= high, got {(lo, hi)}")
  for arg, value in (("stages.load_decay", load_decay), ("spectral.decay", spec_decay)):
    check(kind, arg, value, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
  num_layers = static_int(kind, "num_layers", num_layers)
  num_experts = static_int(kind, "num_experts", num_experts)
  d_model = static_int(kind, "d_model", d_model)
  spec_dim = static_int(kind, "spectral.dim", spec_dim)
  check(kind, "spectral.update_every", spec_update_every, lambda v: v >= 1, ">= 1")
  check(kind, "scheduler.total_steps", total_steps, lambda v: v >= 1, ">= 1")
  check(kind, "stages.routed_scaling_factor", routed_scaling_factor, lambda v: v > 0, "> 0")
  if sinkhorn:
    check(kind, "sinkhorn_rate", sinkhorn_rate, lambda v: 0.0 < v <= 1.0, "in (0, 1]")
  check(kind, "stages.rate", stage_rate, lambda v: v >= 0, ">= 0")
  if stage_mode not in STAGE_MODES:
    raise ValueError(f"{kind}: stages.mode must be one of {STAGE_MODES}, got {stage_mode!r}")
  reads = ("moe_load",) + ("moe_mean_input",) * orthogonality + ("moe_sinkhorn_dual",) * sinkhorn
  spec = regulator_spec(kind, name, reads=reads, publishes=("moe_logit_adjust",))

  def projection(d: int, dim: int) -> jax.Array:
    # Built from static shapes at use: under inject_hyperparams the arguments are traced.
    return jax.random.normal(jax.random.key(seed), (d, dim)) / d**0.5

  def init_fn(params):
    del params
    shape = tuple(
      shape_int(kind, a, v) for a, v in (("num_layers", num_layers), ("num_experts", num_experts))
    )
    dim = shape_int(kind, "spec_dim", spec_dim)
    f = lambda v: fresh(v, jnp.float32)  # noqa: E731
    return SpecHornState(
      spec=spec,
      step=jnp.zeros((), jnp.int32),
      load_ema=signals.ema_init(shape),
      spec_ema=signals.ema_init((*shape, dim)),
      sinkhorn_bias=jnp.zeros(shape, jnp.float32),
      bias_scale=f(bias_scale_range[0] if schedule else bias_scale),
      cap_penalty_scale=f(cap_penalty_scale),
      ortho_scale=f((ortho_scale_range[0] if schedule else ortho_scale) * orthogonality),
      cv=f(0.0),
      max_vio=f(0.0),
      ortho_similarity=f(0.0),
      controls={"moe_logit_adjust": jnp.zeros(shape, jnp.float32)},
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params
    telemetry = read_telemetry(spec, extra_args)
    load = telemetry["moe_load"]
    ok = jnp.all(jnp.isfinite(load))
    rel, cv, max_vio = load_stats(jnp.where(ok, load, 1.0))
    load_ema = signals.ema_update(state.load_ema, rel, load_decay, ok)
    spec_ema = state.spec_ema
    if orthogonality:
      mean_input = telemetry["moe_mean_input"]
      spectral = mean_input @ projection(mean_input.shape[-1], spec_ema.value.shape[-1])
      refresh = jnp.logical_and(state.step % spec_update_every == 0, ok)
      spec_ema = signals.ema_update(spec_ema, spectral, spec_decay, refresh)
    ortho, similarity = orthogonality_penalty(signals.ema_debiased(spec_ema, spec_decay))
    if schedule:
      progress = jnp.minimum(state.step.astype(jnp.float32) / total_steps, 1.0)
      lerp = lambda r: r[0] + (r[1] - r[0]) * progress  # noqa: E731
      factor = jnp.where(
        cv > cv_band[1], 1 + scheduler_rate, jnp.where(cv < cv_band[0], 1 - scheduler_rate, 1.0)
      )
      cap_scale = jnp.clip(state.cap_penalty_scale * jnp.where(ok, factor, 1.0), *cap_penalty_range)
      b_scale, o_scale = lerp(bias_scale_range), lerp(ortho_scale_range) * orthogonality
    else:
      cap_scale, b_scale, o_scale = state.cap_penalty_scale, state.bias_scale, state.ortho_scale
    bias = -b_scale * (signals.ema_debiased(load_ema, load_decay) - 1.0)
    cap = cap_scale * jnp.square(jax.nn.relu(rel / routed_scaling_factor - 1))
    sinkhorn_bias = state.sinkhorn_bias
    if sinkhorn:
      dual = telemetry["moe_sinkhorn_dual"]
      good = jnp.logical_and(ok, jnp.all(jnp.isfinite(dual)))
      sinkhorn_bias = sinkhorn_bias + jnp.where(good, sinkhorn_rate * dual, 0.0)
    if stage_mode == "integral":
      sinkhorn_bias = sinkhorn_bias + jnp.where(ok, stage_rate * (bias - cap), 0.0)
      adjust = sinkhorn_bias - o_scale * ortho
    else:
      adjust = bias - cap - o_scale * ortho + sinkhorn_bias
    adjust = jnp.where(ok, adjust, state.controls["moe_logit_adjust"])  # bad load: hold
    return updates, SpecHornState(
      spec=spec,
      step=optax.safe_increment(state.step),
      load_ema=load_ema,
      spec_ema=spec_ema,
      sinkhorn_bias=sinkhorn_bias,
      bias_scale=jnp.asarray(b_scale, jnp.float32),
      cap_penalty_scale=jnp.asarray(cap_scale, jnp.float32),
      ortho_scale=jnp.asarray(o_scale, jnp.float32),
      cv=jnp.where(ok, cv, state.cv),
      max_vio=jnp.where(ok, max_vio, state.max_vio),
      ortho_similarity=similarity,
      controls={"moe_logit_adjust": adjust},
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class DeepSeekBalancerState(NamedTuple):
  spec: RegulatorSpec  # static: name, telemetry read, controls published
  selection_bias: jax.Array  # [L, E], float32
  cv: jax.Array  # shape=(), float32
  max_vio: jax.Array  # shape=(), float32
  controls: dict  # {"moe_selection_bias": [L, E]}

  logged_fields = ("cv", "max_vio")


def deepseek_balancer(
  num_layers: int, num_experts: int, *, update_rate: float = 1e-3, name: str | None = None
) -> optax.GradientTransformationExtraArgs:
  """Auxiliary-loss-free balancing: b_i ← b_i + u·sign(mean load − load_i), selection only.

  Args:
    num_layers, num_experts: the MoE stack's shape (Python ints).
    update_rate: u (1e-3, > 0).
    name: instance name (``"deepseek"``).

  State: ``DeepSeekBalancerState``. Reads ``moe_load``; publishes ``moe_selection_bias``.
  References: Wang et al. 2024, auxiliary-loss-free load balancing, arXiv 2408.15664.
  """
  kind = "deepseek"
  check(kind, "update_rate", update_rate, lambda v: v > 0, "> 0")
  num_layers = static_int(kind, "num_layers", num_layers)
  num_experts = static_int(kind, "num_experts", num_experts)
  spec = regulator_spec(kind, name, reads=("moe_load",), publishes=("moe_selection_bias",))

  def init_fn(params):
    del params
    shape = tuple(
      shape_int(kind, a, v) for a, v in (("num_layers", num_layers), ("num_experts", num_experts))
    )
    return DeepSeekBalancerState(
      spec=spec,
      selection_bias=fresh(jnp.zeros(shape, jnp.float32)),
      cv=fresh(0.0, jnp.float32),
      max_vio=fresh(0.0, jnp.float32),
      controls={"moe_selection_bias": fresh(jnp.zeros(shape, jnp.float32))},
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params
    load = read_telemetry(spec, extra_args)["moe_load"]
    ok = jnp.all(jnp.isfinite(load))
    safe = jnp.where(ok, load, 1.0)
    _, cv, max_vio = load_stats(safe)
    step = update_rate * jnp.sign(jnp.mean(safe, -1, keepdims=True) - safe)
    bias = state.selection_bias + jnp.where(ok, step, 0.0)
    return updates, DeepSeekBalancerState(
      spec=spec,
      selection_bias=bias,
      cv=jnp.where(ok, cv, state.cv),
      max_vio=jnp.where(ok, max_vio, state.max_vio),
      # A copy: the bias is also the state's own field, and leaves must not share buffers.
      controls={"moe_selection_bias": jnp.array(bias, copy=True)},
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@registry.register_optimizer("adamw_deepseek", deepseek_balancer)
def _build_deepseek(ctx: registry.BuildContext, **kwargs) -> optax.GradientTransformation:
  """AdamW + DeepSeek's auxiliary-loss-free selection bias (router="deepseek")."""
  layers, experts, _ = registry.moe_shape(ctx)
  return optax.chain(registry.adamw(ctx), deepseek_balancer(layers, experts, **kwargs))


@registry.register_optimizer("adamw_spechorn", spechorn_balancer)
def _build_spechorn(ctx: registry.BuildContext, **kwargs) -> optax.GradientTransformation:
  """AdamW + the SpecHorn load regulator and CV scheduler (router="spechorn")."""
  layers, experts, d_model = registry.moe_shape(ctx)
  scheduler = kwargs.pop("scheduler", {})
  if isinstance(scheduler, dict):  # the ramps span the run unless the config says otherwise
    scheduler = {"total_steps": ctx.total_steps, **scheduler}
  balancer = spechorn_balancer(layers, experts, d_model, scheduler=scheduler, **kwargs)
  return optax.chain(registry.adamw(ctx), balancer)
