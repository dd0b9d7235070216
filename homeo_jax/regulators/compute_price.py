"""The Ouro-Spec compute price: dual ascent on λ_p that holds the mean depth at a target.

An optax transform that passes updates through unchanged, reads the adaptive model's
telemetry (``avg_k``: soft depth, mean over layers and tokens) and publishes the
controls the model reads at the next step:

* ``compute_price`` — λ_p (0 before ``ponder_start``), priced into the loss by
  ``adaptive_lm_loss`` as relu(λ_p·relu(avg_k − 1)/(Kmax − 1) − coupon);
* ``force_k`` — 2 during the force-2 warm-up (steps < ``warmup_steps``), 2 on an audit
  step, 0 (adaptive) otherwise;
* ``gate_clamp`` — 1 while steps < ``clamp_until`` (the model clamps p to [0.01, 0.95]);
* ``halt_bias`` — b, added to the continue gate's logit, p = sigmoid(z + b): 0 unless
  ``controller="gate_bias"``.

Per step t (its batch ran with the controls published at t − 1):

1. dual ascent, when t ≥ ``warmup_steps``, the step was not an audit and avg_k is
   finite:  λ_p ← clip(λ_p + r·dual_lr·(avg_k − target_k), price_min, price_max),
   r = 1 before the deadband engages;
2. deadband: once engaged, r = 0 inside [0.98·target_k, 1.05·target_k] and, as the
   seed, outside it the step is measured from the band's nearer *edge* (avg_k − 1.05·
   target_k above, avg_k − 0.98·target_k below) at r = ``Deadband.rate`` (½). The seed's
   trigger "λ_p > 0.50 for 100 steps" can never fire under price_max = 0.05, so the
   trigger here is *settling*: λ_p has stayed within ±``settle_rtol`` (5%) of a reference
   value for ``settle_steps`` (100) consecutive control steps, away from its clamps (a
   price pinned at price_min or price_max is saturated, not settled: those steps do not
   count). The reference resets whenever λ_p leaves that range. Once engaged it stays
   engaged (it is part of the state and of the checkpoint);
   ``deadband_steps_since_trigger`` counts the steps since;
3. audit: with probability ``audit_prob`` (5%), from ``audit_start`` on, the next step
   is an audit: the model runs force_k = 2 and the step's avg_k is not fed to the dual
   ascent; its ΔCE is logged as ``audit_delta_ce`` (regular steps: ``delta_ce``).

``fixed_price`` pins λ_p inside the regulator (its schedule still starts pricing at
``ponder_start``); ``--set_control compute_price.compute_price=V`` pins what the model reads.

``controller="log_pi"`` (a documented variant; the default ``"seed"`` is step 1 above)
replaces the additive dual step with a proportional-integral step on log λ_p over the
relative error e = (avg_k − target_k)/target_k:

    log λ_p ← clip(log λ_p + r·(κ_i·e_t + κ_p·(e_t − e_{t−1})), log price_min, log price_max)

(κ_i = ``integral_gain``, κ_p = ``proportional_gain``; r the deadband rate). Why: with the
seed's constants the price cannot reach its target (measured,
``experiments/ouro_price_target.py``): λ_p sits at its 0.05 cap while the coupon (≈ 0.16)
exceeds the largest raw cost (≈ 0.017), so nothing pushes depth down to 1.3. A
multiplicative step crosses decades in tens of steps, so a wide range (``price_max`` 10 in
the experiments) costs no settling time, and the proportional term damps the overshoot an
integral-only loop has on a lagging depth.

``controller="gate_bias"`` (a documented variant) steers the gate instead of pricing the
loss: λ_p stays at its initial value (``fixed_price``, else ``price_min``) and the dual
variable is the halting bias b,

    b ← clip(b − r·κ_b·(e_t + κ_p·(e_t − e_{t−1})), −bias_max, bias_max),   e = avg_k − target_k

(κ_b = ``bias_gain``, κ_p = ``proportional_gain``, r the deadband rate). Why (measured): a
price in the loss acts only through the gate's gradient, so it is one-sided (relu(ponder) ≥
0 can lower depth, never raise it: targets above the model's own depth are out of reach) and
k = 1 is absorbing (once p → 0 the sigmoid's gradient vanishes with it). Depth is monotone
in b, which needs no gradient: the same actuator as the loss-free balancing bias of an MoE
router (DeepSeek-V3; ``load_balance.py``). The learned gate still decides *which* tokens go
deeper; b sets *how many*.

``price_gain`` κ_m > 0 adds the price back as a slow second actuator that re-centres the
bias (mid-ranging, or valve-position control, in process control):

    log λ_p ← clip(log λ_p − κ_m·(b_t + τ_m·(b_t − b_{t−1})), log price_min, log price_max)

Why (measured on the looped task): with b alone nothing in the loss opposes
depth, so where depth lowers the loss the gate's own logit climbs step after step, and b
follows it down until its clamp binds (the logit reached 30–40 against b = −30, and depth
overshot the target by 0.4–0.5). A sustained b < 0 says the gate wants more depth than the
target; raising λ_p then charges the loss for it, until the gate's gradient balances at
the target and b can return to 0. The price also gives the gate a reason to choose: a token
keeps its depth only where its loss gain exceeds λ_p. The damping term τ_m (``price_damping``,
100) is needed: the gate integrates the price, λ_p integrates b and b follows the gate,
so without it the two slow loops ring (on a plant with a diminishing return of depth,
κ_m = 0.03 and τ_m = 100 settle for plant rates 0.01–0.2 logit per step and returns
0.3–3, tested). The step is on log λ_p, so the price it finds needs no known scale.

Deployment (``deployment_controls()``, used by evaluation and generation): the current
λ_p and halting bias, no forced depth, no audit, no gate clamp — the model runs as it will
be deployed.

Reads ``avg_k`` (and ``delta_ce`` when present); publishes ``compute_price``, ``force_k``,
``gate_clamp`` and ``halt_bias`` under its ``name`` (default ``"compute_price"``).

Arguments: the target, λ_p's clamp and pin are plain numbers, which may be traced
(``optax.inject_hyperparams``); ``max_passes`` and ``seed`` are Python ints. The rest come
in option groups, small frozen dataclasses with the seed's defaults: the controller
(``DualAscent``, ``LogPI``, ``GateBias``), the ``PriceSchedule`` and the ``Deadband``. A
config gives each group as a dict of its fields (``optimizer.kwargs.schedule.warmup_steps=0``,
``optimizer.kwargs.controller.kind=gate_bias``); the fields named in this docstring
(``dual_lr``, ``integral_gain``, ``bias_gain``, ``settle_steps``, ...) live in those groups.

Bad telemetry (NaN/Inf avg_k) skips the dual step; λ_p stays finite and in its clamp.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from homeo_jax.regulators import registry
from homeo_jax.regulators.base import (
  RegulatorSpec,
  check,
  fresh,
  options,
  read_telemetry,
  regulator_spec,
  static_int,
)

PUBLISHED = ("compute_price", "force_k", "gate_clamp", "halt_bias")
# The settling test is relative (|Δ| > settle_rtol·|ref|); near b = 0 that would call any
# change a move, so the bias's reference is floored at 0.1 logit: settled means b stayed
# within 0.005 logit (≈ 0.1% of p at p = 0.5) when |b| < 0.1.
BIAS_SETTLE_FLOOR = 0.1


class ComputePriceState(NamedTuple):
  logged_fields = (
    "price",
    "halt_bias",
    "avg_k",
    "ctrl_err",
    "deadband",
    "audit",
    "delta_ce",
    "audit_delta_ce",
    "audits",
    "deadband_steps_since_trigger",
  )

  spec: RegulatorSpec  # static: name, telemetry read, controls published
  step: jax.Array  # shape=(), int32: steps seen
  price: jax.Array  # shape=(), float32: λ_p
  halt_bias: jax.Array  # shape=(), float32: b, the gate-logit offset ("gate_bias")
  settle_ref: jax.Array  # shape=(), float32: reference value of the settling test
  settle_count: jax.Array  # shape=(), int32: control steps λ_p stayed near settle_ref
  deadband: jax.Array  # shape=(), int32: 1 once the deadband has engaged
  deadband_steps_since_trigger: jax.Array  # shape=(), int32: steps since it engaged
  audit: jax.Array  # shape=(), int32: 1 when the step about to run is an audit
  audits: jax.Array  # shape=(), int32: audits run so far
  avg_k: jax.Array  # shape=(), float32: last soft depth seen
  ctrl_err: jax.Array  # shape=(), float32: last avg_k − target_k on a control step
  delta_ce: jax.Array  # shape=(), float32: last regular step's ΔCE
  audit_delta_ce: jax.Array  # shape=(), float32: last audit step's ΔCE
  key: jax.Array  # uint32[2]: PRNG key data for the audit draws
  controls: dict  # compute_price, force_k, gate_clamp, halt_bias for the next step

  def deployment_controls(self) -> dict:
    """The current price and halting bias with no forced depth and no gate clamp
    (evaluation, generation)."""
    return {
      "compute_price": self.controls["compute_price"],
      "force_k": jnp.zeros((), jnp.int32),
      "gate_clamp": jnp.zeros((), jnp.int32),
      "halt_bias": self.controls["halt_bias"],
    }


@dataclasses.dataclass(frozen=True)
class DualAscent:
  """The seed's controller: λ_p ← clip(λ_p + r·dual_lr·(avg_k − target_k))."""

  dual_lr: float = 5e-5


@dataclasses.dataclass(frozen=True)
class LogPI:
  """PI on log λ_p over the relative depth error (module docstring)."""

  integral_gain: float = 0.05  # κ_i
  proportional_gain: float = 0.5  # κ_p


@dataclasses.dataclass(frozen=True)
class GateBias:
  """The halting bias b as the dual variable; λ_p optionally re-centres it (module
  docstring). ``bias_gain=0`` keeps b at ``initial_bias``: the best-constant baseline."""

  bias_gain: float = 0.1  # κ_b
  proportional_gain: float = 0.5  # κ_p
  bias_max: float = 8.0  # |b| clamp
  initial_bias: float = 0.0  # b before the first step
  price_gain: float = 0.0  # κ_m: 0 leaves λ_p where it starts
  price_damping: float = 100.0  # τ_m


@dataclasses.dataclass(frozen=True)
class PriceSchedule:
  """The seed's step counts (for a 10,000-step run) and its audits."""

  warmup_steps: int = 800  # force ``warmup_force`` passes before this step
  warmup_force: int = 2
  ponder_start: int = 1200  # λ_p is published from this step (0 before)
  clamp_until: int = 4000  # the gate clamp holds until this step
  audit_start: int = 1200
  audit_prob: float = 0.05  # chance that a step is an audit
  audit_force: int = 2  # passes an audit runs


@dataclasses.dataclass(frozen=True)
class Deadband:
  """The deadband around the target and the settling test that engages it."""

  band: tuple[float, float] = (0.98, 1.05)  # fractions of target_k
  rate: float = 0.5  # step rate outside the band once engaged
  settle_steps: int = 100
  settle_rtol: float = 0.05


CONTROLLER_KINDS = {"seed": DualAscent, "log_pi": LogPI, "gate_bias": GateBias}


def compute_price(
  *,
  max_passes: int = 4,
  target_k: float = 1.30,
  controller: DualAscent | LogPI | GateBias | str | dict = DualAscent(),
  price_min: float = 1e-4,
  price_max: float = 5e-2,
  fixed_price: float | None = None,
  schedule: PriceSchedule | dict = PriceSchedule(),
  deadband: Deadband | dict = Deadband(),
  seed: int = 0,
  name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """The compute-price controller; the formula and defaults are in the module docstring.

  Args:
    max_passes: Kmax of the model (4, a Python int).
    target_k: the mean depth to hold (1.30, in [1, Kmax]).
    controller: ``DualAscent(dual_lr)`` (the seed's), ``LogPI(...)`` or ``GateBias(...)``;
      a config gives a name (``"seed"``, ``"log_pi"``, ``"gate_bias"``) or a dict with
      ``"kind"`` and fields.
    price_min, price_max: λ_p's clamp (1e-4, 5e-2).
    fixed_price: pin λ_p (None: the controller moves it).
    schedule: ``PriceSchedule`` (warm-up, ponder start, gate clamp, audits) or a dict.
    deadband: ``Deadband`` (band, rate, settling test) or a dict.
    seed: PRNG seed of the audit draws; name: instance name (``"compute_price"``).

  State: ``ComputePriceState`` (fields commented in the class).
  """
  kind = "compute_price"
  controller = options(kind, "controller", controller, DualAscent(), CONTROLLER_KINDS)
  mode = next(k for k, cls in CONTROLLER_KINDS.items() if isinstance(controller, cls))
  schedule = options(kind, "schedule", schedule, PriceSchedule())
  deadband = options(kind, "deadband", deadband, Deadband())
  warmup_steps, warmup_force = schedule.warmup_steps, schedule.warmup_force
  ponder_start, clamp_until = schedule.ponder_start, schedule.clamp_until
  audit_start, audit_prob, audit_force = (
    schedule.audit_start,
    schedule.audit_prob,
    schedule.audit_force,
  )
  band, band_rate = deadband.band, deadband.rate
  settle_steps, settle_rtol = deadband.settle_steps, deadband.settle_rtol
  dual_lr = getattr(controller, "dual_lr", 0.0)
  integral_gain = getattr(controller, "integral_gain", 0.0)
  proportional_gain = getattr(controller, "proportional_gain", 0.0)
  bias_gain = getattr(controller, "bias_gain", 0.0)
  bias_max = getattr(controller, "bias_max", GateBias.bias_max)
  initial_bias = getattr(controller, "initial_bias", 0.0)
  price_gain = getattr(controller, "price_gain", 0.0)
  price_damping = getattr(controller, "price_damping", 0.0)

  max_passes = static_int(kind, "max_passes", max_passes)
  check(kind, "target_k", target_k, lambda v: 1.0 <= v <= max_passes, f"in [1, {max_passes}]")
  check(kind, "price_min", price_min, lambda v: v > 0, "> 0")
  if all(isinstance(v, int | float) for v in (price_min, price_max)) and price_max < price_min:
    raise ValueError(f"{kind}: price_max must be >= price_min={price_min}, got {price_max}")
  check(kind, "audit_prob", audit_prob, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
  for arg, k in (("warmup_force", warmup_force), ("audit_force", audit_force)):
    check(kind, arg, k, lambda v: 1 <= v <= max_passes, f"in [1, {max_passes}]")
  if not band[0] <= 1.0 <= band[1]:
    raise ValueError(f"{kind}: deadband.band must bracket 1 (fractions of target_k), got {band}")
  if fixed_price is not None:
    check(kind, "fixed_price", fixed_price, lambda v: v >= 0, ">= 0")
  check(kind, "integral_gain", integral_gain, lambda v: v >= 0, ">= 0")
  check(kind, "proportional_gain", proportional_gain, lambda v: v >= 0, ">= 0")
  check(kind, "bias_gain", bias_gain, lambda v: v >= 0, ">= 0")
  check(kind, "bias_max", bias_max, lambda v: v > 0, "> 0")
  check(
    kind, "initial_bias", initial_bias, lambda v: abs(v) <= bias_max, "in [-bias_max, bias_max]"
  )
  check(kind, "price_gain", price_gain, lambda v: v >= 0, ">= 0")
  check(kind, "price_damping", price_damping, lambda v: v >= 0, ">= 0")
  if isinstance(price_gain, int | float) and price_gain > 0 and fixed_price is not None:
    raise ValueError(f"{kind}: price_gain moves λ_p, so fixed_price must be None")
  spec = regulator_spec(kind, name, reads=("avg_k",), publishes=PUBLISHED)

  def publish(next_step, price, audit, bias):
    force = jnp.where(next_step < warmup_steps, warmup_force, jnp.where(audit > 0, audit_force, 0))
    return {
      "compute_price": jnp.where(next_step >= ponder_start, price, 0.0).astype(jnp.float32),
      "force_k": force.astype(jnp.int32),
      "gate_clamp": (next_step < clamp_until).astype(jnp.int32),
      "halt_bias": jnp.asarray(bias, jnp.float32),
    }

  def init_fn(params):
    del params
    price = price_min if fixed_price is None else fixed_price
    zero_i = jnp.zeros((), jnp.int32)
    return ComputePriceState(
      spec=spec,
      step=fresh(0, jnp.int32),
      price=fresh(price, jnp.float32),
      halt_bias=fresh(initial_bias, jnp.float32),
      settle_ref=fresh(initial_bias if mode == "gate_bias" else price, jnp.float32),
      settle_count=fresh(0, jnp.int32),
      deadband=fresh(0, jnp.int32),
      deadband_steps_since_trigger=fresh(0, jnp.int32),
      audit=fresh(0, jnp.int32),
      audits=fresh(0, jnp.int32),
      avg_k=fresh(1.0, jnp.float32),
      ctrl_err=fresh(0.0, jnp.float32),
      delta_ce=fresh(0.0, jnp.float32),
      audit_delta_ce=fresh(0.0, jnp.float32),
      key=jax.random.key_data(jax.random.key(seed)),
      controls=publish(zero_i, jnp.asarray(price, jnp.float32), zero_i, initial_bias),
    )

  def update_fn(updates, state: ComputePriceState, params=None, **extra_args):
    del params
    avg_k = read_telemetry(spec, extra_args)["avg_k"]
    delta_ce = jnp.asarray(extra_args.get("delta_ce", jnp.nan), jnp.float32)
    was_audit = state.audit > 0
    finite = jnp.isfinite(avg_k)
    control = (state.step >= warmup_steps) & ~was_audit & finite
    err = jnp.where(finite, avg_k - target_k, 0.0)
    lo_edge, hi_edge = band[0] * target_k, band[1] * target_k
    inside = (avg_k >= lo_edge) & (avg_k <= hi_edge)
    engaged_now = state.deadband > 0
    rate = jnp.where(engaged_now, jnp.where(inside, 0.0, band_rate), 1.0)
    edge_err = jnp.where(avg_k > hi_edge, avg_k - hi_edge, avg_k - lo_edge)
    step_err = jnp.where(engaged_now & finite, edge_err, err)
    bias, price = state.halt_bias, state.price
    if mode == "gate_bias":
      # the bias is the dual variable; the settling test below watches it instead of λ_p
      bias_step = bias_gain * (step_err + proportional_gain * (err - state.ctrl_err))
      stepped = jnp.clip(bias - rate * bias_step, -bias_max, bias_max)
      bias = jnp.where(control, stepped, bias)
      drive = bias + price_damping * (bias - state.halt_bias)
      recentred = jnp.clip(price * jnp.exp(-price_gain * drive), price_min, price_max)
      price = jnp.where(control & (price_gain > 0), recentred, price)
      dual, lo, hi, floor = bias, -bias_max, bias_max, BIAS_SETTLE_FLOOR
    else:
      if fixed_price is None:
        if mode == "log_pi":
          # integral on the (edge) error, proportional on the change of the error
          rel, change = step_err / target_k, (err - state.ctrl_err) / target_k
          log_step = rate * (integral_gain * rel + proportional_gain * change)
          stepped = jnp.clip(state.price * jnp.exp(log_step), price_min, price_max)
        else:
          stepped = jnp.clip(state.price + rate * dual_lr * step_err, price_min, price_max)
        price = jnp.where(control, stepped, state.price)
      dual, lo, hi, floor = price, price_min, price_max, price_min
    moved = jnp.abs(dual - state.settle_ref) > settle_rtol * jnp.maximum(
      jnp.abs(state.settle_ref), floor
    )
    settle_ref = jnp.where(control & moved, dual, state.settle_ref)
    clamped = (dual <= lo) | (dual >= hi)
    settle_count = jnp.where(
      control, jnp.where(moved | clamped, 0, state.settle_count + 1), state.settle_count
    )
    engaged = jnp.maximum(state.deadband, (settle_count >= settle_steps).astype(jnp.int32))

    key, draw = jax.random.split(jax.random.wrap_key_data(state.key))
    next_step = state.step + 1
    audit = ((next_step >= audit_start) & (jax.random.uniform(draw) < audit_prob)).astype(jnp.int32)
    ok_ce = jnp.isfinite(delta_ce)
    new_state = ComputePriceState(
      spec=spec,
      step=next_step,
      price=price,
      halt_bias=bias,
      settle_ref=settle_ref,
      settle_count=settle_count,
      deadband=engaged,
      deadband_steps_since_trigger=state.deadband_steps_since_trigger + state.deadband,
      audit=audit,
      audits=state.audits + was_audit.astype(jnp.int32),
      avg_k=jnp.where(finite, avg_k, state.avg_k),
      ctrl_err=jnp.where(control, err, state.ctrl_err),
      delta_ce=jnp.where(~was_audit & ok_ce, delta_ce, state.delta_ce),
      audit_delta_ce=jnp.where(was_audit & ok_ce, delta_ce, state.audit_delta_ce),
      key=jax.random.key_data(key),
      controls=publish(next_step, price, audit, bias),
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scaled_schedule(
  total_steps: int, reference_steps: int = 10_000, **steps: int
) -> dict[str, int]:
  """The seed's step counts scaled by total_steps/reference_steps for runs shorter than
  ``reference_steps`` (the seed's schedule assumes a run of that length); unchanged
  otherwise."""
  factor = min(1.0, total_steps / reference_steps)
  return {name: round(value * factor) for name, value in steps.items()}


SCHEDULED_STEPS = ("warmup_steps", "ponder_start", "clamp_until", "audit_start")


@registry.register_optimizer("adamw_compute_price", compute_price)
def _build(
  ctx: registry.BuildContext,
  reference_steps: int = 10_000,
  controller=None,
  schedule=None,
  deadband=None,
  **kwargs,
) -> optax.GradientTransformation:
  """AdamW + the Ouro-Spec compute price (model_type=adaptive_transformer).

  The step counts are the seed's; runs shorter than ``reference_steps`` scale them (and
  raise the seed controller's ``dual_lr`` by the same factor, so λ_p can cross its range in
  the same fraction of the run): see ``scaled_schedule``.
  """
  if not hasattr(ctx.model, "max_passes"):
    raise ValueError("adamw_compute_price steers an adaptive model: use adaptive_transformer")
  kind = "adamw_compute_price"
  controller = options(kind, "controller", controller, DualAscent(), CONTROLLER_KINDS)
  schedule = options(kind, "schedule", schedule, PriceSchedule())
  deadband = options(kind, "deadband", deadband, Deadband())
  total_steps = ctx.total_steps
  steps = scaled_schedule(
    total_steps,
    reference_steps,
    settle_steps=deadband.settle_steps,
    **{k: getattr(schedule, k) for k in SCHEDULED_STEPS},
  )
  # Below ~20 steps "settled" would mean nothing: the settling window has a floor.
  settle_steps = max(steps.pop("settle_steps"), min(deadband.settle_steps, 20))
  speedup = max(1.0, reference_steps / max(total_steps, 1))
  if isinstance(controller, DualAscent):
    controller = dataclasses.replace(controller, dual_lr=controller.dual_lr * speedup)
  given = kwargs.pop("max_passes", ctx.model.max_passes)  # the model's, always
  if given != ctx.model.max_passes:
    raise ValueError(
      f"{kind}: max_passes={given!r} disagrees with the model's max_passes="
      f"{ctx.model.max_passes}; leave it out (the model's is used)"
    )
  price = compute_price(
    **kwargs,
    max_passes=ctx.model.max_passes,
    controller=controller,
    schedule=dataclasses.replace(schedule, **steps),
    deadband=dataclasses.replace(deadband, settle_steps=settle_steps),
  )
  return optax.chain(registry.adamw(ctx), price)
