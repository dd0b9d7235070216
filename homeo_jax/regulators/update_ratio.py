"""Update-ratio homeostat: hold each parameter group's relative update size at a setpoint.

This regulator is homeo_jax's own design; the seeds do not specify it. Its signal is the one
nanodo logs per leaf: how far one step moves the weights, relative to their size. For each
parameter group g (e.g. the roles of ``models/roles.py``), with the inner optimizer's update
u and the weights W before it:

    r_g   = ‖u_g‖ / ‖W_g‖                        (equal to RMS(u_g) / RMS(W_g))
    u_g   ← m_g · u_g                            (the step applies the current multiplier)
    e_g   = log(m_g · r_g) − log r*(t)           (the error of the update it applied)
    log m_g ← clip(log m_g − κ · e_g,  log m_min, log m_max)     (for the next step)

a slow integral controller (gain κ) on a per-group multiplier m of the learning rate,
bounded to [m_min, m_max]. With the setpoint r*(t) following the lr schedule's shape
(``setpoint`` may be a schedule of the step), the homeostat keeps the schedule's warm-up and
decay and removes only its scale: a run whose lr is ten times too large moves its weights
at the setpoint's pace all the same. LARS/LAMB scale each update by a trust ratio open loop;
this closes the loop on a setpoint (the folk value for ‖ΔW‖/‖W‖ per step is about 1e-3).

Leaves labelled ``"-"`` are not regulated; groups with no leaves are left out of the state.
Groups whose weights are all zero, and steps with a non-finite ratio, leave m unchanged.
Logged per group: ``ratio/<group>`` (r_g·m_g, the applied ratio) and
``multiplier/<group>`` (m_g).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from homeo_jax.regulators import registry
from homeo_jax.regulators.base import RegulatorSpec, check, fresh, regulator_spec

ALL = "all"
UNREGULATED = "-"  # a leaf labelled so keeps its update as it is


class UpdateRatioState(NamedTuple):
  spec: RegulatorSpec  # static: name
  count: jax.Array  # shape=(), int32: steps taken
  log_multiplier: dict[str, jax.Array]  # per group, float32 scalars: log m_g
  ratio: dict[str, jax.Array]  # per group: the applied ratio m_g · r_g of the last step
  multiplier: dict[str, jax.Array]  # per group: m_g (logged)

  logged_fields = ("ratio", "multiplier")


def group_norms(tree: Any, labels: Any, groups: Sequence[str]) -> dict[str, jax.Array]:
  """``{group: ‖leaves labelled group‖₂}`` (float32; 0 for a group with no leaves)."""
  squares = {g: jnp.zeros((), jnp.float32) for g in groups}
  for x, label in zip(jax.tree.leaves(tree), jax.tree.leaves(labels), strict=True):
    squares[label] = squares[label] + jnp.sum(jnp.square(x.astype(jnp.float32)))
  return {g: jnp.sqrt(s) for g, s in squares.items()}


def update_ratio_homeostat(
  setpoint: float | optax.Schedule = 1e-3,
  gain: float = 0.05,
  *,
  bounds: tuple[float, float] = (1e-2, 10.0),
  group_labels: Callable[[Any], Any] | None = None,
  group_names: Sequence[str] = (),
  name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Scale each group's update so that ‖u_g‖/‖W_g‖ tracks ``setpoint``; chain it after the
  optimizer (it reads ``params``).

  Args:
    setpoint: r*, the relative update size per step (1e-3), or a schedule of the step.
    gain: κ, the integral gain on log m per step (0.05, in (0, 1]).
    bounds: (m_min, m_max), the multiplier's range (0.01, 10; 0 < m_min <= 1 <= m_max).
    group_labels: ``params -> tree of group names``; None: one group, ``"all"``.
    group_names: every name ``group_labels`` can give (the state holds one m per name).
    name: instance name of its metrics (``"update_ratio"``).
  """
  kind = "update_ratio"
  if not callable(setpoint):
    check(kind, "setpoint", setpoint, lambda v: v > 0, "> 0")
  check(kind, "gain", gain, lambda v: 0 < v <= 1, "in (0, 1]")
  if len(bounds) != 2 or not 0 < bounds[0] <= 1 <= bounds[1]:
    raise ValueError(
      f"{kind}: bounds must be (m_min, m_max) with 0 < m_min <= 1 <= m_max, got {bounds}"
    )
  groups = tuple(group_names) if group_labels is not None else (ALL,)
  if not groups:
    raise ValueError(f"{kind}: group_labels needs group_names, the labels it can give")
  log_lo, log_hi = float(np.log(bounds[0])), float(np.log(bounds[1]))
  spec = regulator_spec(kind, name)

  def labels_of(params):
    if group_labels is None:
      return jax.tree.map(lambda _: ALL, params)
    labels = group_labels(params)
    unknown = set(jax.tree.leaves(labels)) - set(groups) - {UNREGULATED}
    if unknown:
      raise ValueError(f"{kind}: group_labels gave {sorted(unknown)}, not in {groups}")
    return labels

  def init_fn(params):
    present = set(jax.tree.leaves(labels_of(params)))  # fails on a label outside group_names
    held = [g for g in groups if g in present]
    return UpdateRatioState(
      spec=spec,
      count=fresh(0, jnp.int32),
      log_multiplier={g: fresh(0.0, jnp.float32) for g in held},
      ratio={g: fresh(0.0, jnp.float32) for g in held},
      multiplier={g: fresh(1.0, jnp.float32) for g in held},
    )

  def update_fn(updates, state: UpdateRatioState, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("update_ratio measures ‖u‖/‖W‖: pass tx.update(..., params)")
    labels = labels_of(params)
    target = setpoint(state.count) if callable(setpoint) else setpoint
    log_target = jnp.log(jnp.maximum(jnp.asarray(target, jnp.float32), 1e-30))
    held = tuple(state.log_multiplier)
    u_norm = group_norms(updates, labels, (*held, UNREGULATED))
    w_norm = group_norms(params, labels, (*held, UNREGULATED))
    log_m, ratio = {}, {}
    for g in held:
      raw = u_norm[g] / jnp.where(w_norm[g] > 0, w_norm[g], 1.0)
      measurable = (w_norm[g] > 0) & (u_norm[g] > 0) & jnp.isfinite(raw)
      applied = state.log_multiplier[g] + jnp.log(jnp.where(measurable, raw, 1.0))
      new = jnp.clip(state.log_multiplier[g] - gain * (applied - log_target), log_lo, log_hi)
      log_m[g] = jnp.where(measurable, new, state.log_multiplier[g]).astype(jnp.float32)
      ratio[g] = jnp.where(measurable, jnp.exp(applied), state.ratio[g])
    # This step applies the multiplier the last steps set; what it measures sets the next.
    old = {**state.log_multiplier, UNREGULATED: jnp.zeros((), jnp.float32)}
    scale = jax.tree.map(lambda label: jnp.exp(old[label]), labels)
    updates = jax.tree.map(lambda u, s: (u * s).astype(u.dtype), updates, scale)
    return updates, UpdateRatioState(
      spec=spec,
      count=optax.safe_increment(state.count),
      log_multiplier=log_m,
      ratio={g: r.astype(jnp.float32) for g, r in ratio.items()},
      multiplier={g: jnp.exp(v) for g, v in log_m.items()},
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@registry.register_regulator(
  "update_ratio", update_ratio_homeostat, order=20, supplied=("group_labels", "group_names")
)
def _wrap(
  inner,
  ctx: registry.BuildContext,
  follow_schedule: bool = True,
  exclude: tuple[str, ...] = ("norm",),
  **kwargs,
) -> optax.GradientTransformation:
  """``optimizer.regulators.update_ratio={'setpoint': 1e-2}``: groups are the parameter
  rule's roles but ``exclude`` (gains and biases move ~20× slower relative to their size
  than matrices, measured on the proving ground: one setpoint does not fit both); with
  ``follow_schedule`` the setpoint takes the lr schedule's shape (r* × lr(t) / peak lr)."""
  setpoint = kwargs.pop("setpoint", 1e-2)
  if follow_schedule and not callable(setpoint):
    peak, schedule, fixed = ctx.cfg.learning_rate, ctx.learning_rate, setpoint
    setpoint = lambda step: fixed * schedule(step) / peak  # noqa: E731
  roles_of, excluded = ctx.rules.group_labels, tuple(exclude)

  def labels(params):
    return jax.tree.map(lambda r: UNREGULATED if r in excluded else r, roles_of(params))

  names = tuple(n for n in ctx.rules.group_names if n not in excluded)
  homeostat = update_ratio_homeostat(setpoint, group_labels=labels, group_names=names, **kwargs)
  return optax.chain(inner, homeostat)
