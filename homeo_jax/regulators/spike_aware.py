"""Spike-aware moments: clip gradient entries that spike against Adam's second moment.

SPAM (Huang et al. 2025, arXiv 2501.06842; Stable-SPAM, arXiv 2502.17055). Gradient spikes
reach ~1000× the typical entry and then sit in Adam's moments for hundreds of steps. Before
the inner optimizer sees the gradient, every entry whose square exceeds θ times the second
moment v̂ (the bias-corrected EMA of g² over the steps before this one, v / (1 − β2^t)) is
clipped to that bound:

    g_i ← sign(g_i) · √(θ · v̂_i)      where g_i² > θ · v̂_i         (θ = ``threshold``)

Entries with no history (the first step, or the step after a reset) are left as they are.
v is the inner optimizer's own second moment when its state holds exactly one
``optax.ScaleByAdamState`` shaped like the gradients (``optax.adam``, ``optax.adamw``, and
chains around them; ``b2`` must then be the inner's β2, for the bias correction); otherwise
this transform keeps its own EMA with decay ``b2``. SPAM compares with the uncorrected v
(``corrected=False``), which early in a run is (1 − β2^t) times smaller and clips ordinary
entries too; the corrected form clips only spikes from the first steps on, and θ keeps its
meaning.

Optionally (``reset_interval`` ΔT > 0), after every ΔT-th step the inner Adam's moments
and step count are zeroed (and the own EMA with them), and the updates of the following
steps are scaled by a cosine warm-up ½(1 − cos(π·min(1, s/``warmup``))), s = 1, 2, … the
steps since the reset.

Logged: ``clipped_fraction`` (share of entries clipped this step), ``resets`` (so far).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from homeo_jax.regulators import registry
from homeo_jax.regulators.base import RegulatorSpec, check, fresh, regulator_spec, static_int


class SpikeAwareState(NamedTuple):
  spec: RegulatorSpec  # static: name
  inner: Any  # the wrapped optimizer's state
  nu: Any  # own EMA of g² (zeros, unused, when the inner's second moment is read)
  count: jax.Array  # shape=(), int32: steps taken
  ema_count: jax.Array  # shape=(), int32: steps in the own EMA (since the start or a reset)
  since_reset: jax.Array  # shape=(), int32: steps since the last reset (``warmup`` at start)
  resets: jax.Array  # shape=(), int32: resets so far
  clipped_fraction: jax.Array  # shape=(), float32: share of entries clipped this step

  logged_fields = ("clipped_fraction", "resets")


def _is_adam(node: Any) -> bool:
  return isinstance(node, optax.ScaleByAdamState)


def _inner_adam(inner_state: Any, updates: Any) -> optax.ScaleByAdamState | None:
  """The inner state's one Adam state whose ``nu`` is shaped like ``updates``, or None."""
  want = jax.tree.structure(updates)
  found = [
    node
    for node in jax.tree.leaves(inner_state, is_leaf=_is_adam)
    if _is_adam(node) and jax.tree.structure(node.nu) == want
  ]
  return found[0] if len(found) == 1 else None


def _reset_adam(inner_state: Any) -> Any:
  """``inner_state`` with every Adam state's moments and count zeroed."""

  def reset(node):
    if not _is_adam(node):
      return node
    return node._replace(
      count=jnp.zeros_like(node.count),
      mu=jax.tree.map(jnp.zeros_like, node.mu),
      nu=jax.tree.map(jnp.zeros_like, node.nu),
    )

  return jax.tree.map(reset, inner_state, is_leaf=_is_adam)


def spike_clip(updates: Any, nu: Any, threshold: float) -> tuple[Any, jax.Array]:
  """``updates`` with entries g² > θ·v clipped to ±√(θ·v) (v > 0 only), and the share clipped."""
  # v = 0 is no history (the first step, a reset, a zero gradient so far): nothing to compare.

  def clip(g, v):
    v = v.astype(jnp.float32)
    bound = jnp.sqrt(threshold * v)
    spike = (v > 0) & (jnp.square(g.astype(jnp.float32)) > threshold * v)
    return jnp.where(spike, jnp.sign(g) * bound, g).astype(g.dtype), spike

  pairs = jax.tree.map(clip, updates, nu)
  is_pair = lambda x: isinstance(x, tuple) and len(x) == 2  # noqa: E731
  clipped = jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair)
  masks = [p[1] for p in jax.tree.leaves(pairs, is_leaf=is_pair)]
  total = sum(m.size for m in masks)
  share = sum(jnp.sum(m) for m in masks) / max(total, 1)
  return clipped, jnp.asarray(share, jnp.float32)


def cosine_warmup(steps: jax.Array, warmup: int) -> jax.Array:
  """½(1 − cos(π·min(1, steps/warmup))); 1 for ``warmup`` 0."""
  if warmup <= 0:
    return jnp.ones((), jnp.float32)
  frac = jnp.minimum(1.0, steps.astype(jnp.float32) / warmup)
  return 0.5 * (1.0 - jnp.cos(math.pi * frac))


def spike_aware(
  inner: optax.GradientTransformation,
  threshold: float = 5000.0,
  *,
  reset_interval: int = 0,
  warmup: int = 150,
  b2: float = 0.999,
  corrected: bool = True,
  name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``inner`` (an Adam-family optimizer) fed spike-clipped gradients; see the module docstring.

  Args:
    inner: the optimizer; its Adam second moment is read when it has exactly one.
    threshold: θ, clip entries with g² > θ·v (5000, SPAM's default; > 0).
    reset_interval: ΔT, steps between moment resets (0: never).
    warmup: steps of cosine lr warm-up after a reset (150, SPAM's default; >= 0).
    b2: the inner Adam's β2 (its second moment's bias correction), or the decay of the own
      EMA of g² where the inner has no Adam state (0.999).
    corrected: compare with the bias-corrected v̂ (True) or, as SPAM does, the raw v.
    name: instance name of its metrics (``"spike_aware"``).
  """
  kind = "spike_aware"
  check(kind, "threshold", threshold, lambda v: v > 0, "> 0")
  check(kind, "b2", b2, lambda v: 0 <= v < 1, "in [0, 1)")
  reset_interval = static_int(kind, "reset_interval", reset_interval, minimum=0)
  warmup = static_int(kind, "warmup", warmup, minimum=0)
  spec = regulator_spec(kind, name)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    inner_state = inner.init(params)
    # Only the shape matters here: is there one Adam second moment to read?
    own = _inner_adam(inner_state, params) is None
    return SpikeAwareState(
      spec=spec,
      inner=inner_state,
      nu=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32) if own else fresh(0.0), params),
      count=fresh(0, jnp.int32),
      ema_count=fresh(0, jnp.int32),
      since_reset=fresh(warmup, jnp.int32),  # the start is no reset: no warm-up
      resets=fresh(0, jnp.int32),
      clipped_fraction=fresh(0.0, jnp.float32),
    )

  def update_fn(updates, state: SpikeAwareState, params=None, **extra_args):
    adam = _inner_adam(state.inner, updates)
    nu, seen = (state.nu, state.ema_count) if adam is None else (adam.nu, adam.count)
    correction = jnp.where(corrected & (seen > 0), 1.0 - b2 ** seen.astype(jnp.float32), 1.0)
    nu_hat = jax.tree.map(lambda v: v.astype(jnp.float32) / correction, nu)
    clipped, share = spike_clip(updates, nu_hat, threshold)
    new_updates, inner_state = inner.update(clipped, state.inner, params, **extra_args)
    own_nu, ema_count = state.nu, state.ema_count
    if adam is None:
      ema_count = optax.safe_increment(
        ema_count
      )  # the own EMA sees the clipped gradient, as Adam's would
      own_nu = jax.tree.map(
        lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(jnp.float32)), state.nu, clipped
      )
    count = optax.safe_increment(state.count)
    since = optax.safe_increment(state.since_reset)
    resets = state.resets
    if reset_interval > 0:
      # This step's update still uses the old moments, scaled by the warm-up of the last
      # reset; the reset then zeroes them for the next step.
      scale = cosine_warmup(since, warmup)
      new_updates = jax.tree.map(lambda u: (u * scale).astype(u.dtype), new_updates)
      reset = count % reset_interval == 0
      zeroed = _reset_adam(inner_state)
      inner_state = jax.tree.map(lambda z, s: jnp.where(reset, z, s), zeroed, inner_state)
      own_nu = jax.tree.map(lambda v: jnp.where(reset, jnp.zeros_like(v), v), own_nu)
      ema_count = jnp.where(reset, 0, ema_count).astype(jnp.int32)
      since = jnp.where(reset, 0, since)
      resets = jnp.where(reset, resets + 1, resets)
    return new_updates, SpikeAwareState(
      spec=spec,
      inner=inner_state,
      nu=own_nu,
      count=count,
      ema_count=ema_count,
      since_reset=since.astype(jnp.int32),
      resets=resets.astype(jnp.int32),
      clipped_fraction=share,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@registry.register_regulator("spike_aware", spike_aware, order=10)
def _wrap(inner, ctx: registry.BuildContext, **kwargs) -> optax.GradientTransformation:
  """``optimizer.regulators.spike_aware={'threshold': 5000}``; the own EMA decays at the
  config's β2 unless ``b2`` is given."""
  return spike_aware(inner, **{"b2": ctx.cfg.b2, **kwargs})
