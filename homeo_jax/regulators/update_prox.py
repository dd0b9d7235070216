"""The ARS seed's update regularizer Φ(W, ΔW), as a proximal step on any optimizer's update.

The seed penalises an update ΔW by

    Φ(W, ΔW) = ½·Σᵢ Ωᵢᵢ·ΔWᵢ²  +  γ·‖(I − P_s)·ΔW‖²_F

with Ω a diagonal Fisher (moving sensitive weights costs more) and P_s the projection on
a "safe" subspace (moving outside it costs more). ``fisher_subspace_prox(inner)`` takes
the update u the inner optimizer proposes and returns the proximal point of each term in
turn (the two quadratics do not commute, so the exact joint minimiser would need a
linear solve per matrix; the split is one shrink each and is what the tests check):

    u₁ = u / (1 + Ω)                        Ω = c · v̂ / mean(v̂)   (per tensor)
    u₂ = P_s·u₁ + (I − P_s)·u₁ / (1 + 2γ)   (matrices; other tensors keep u₁)

* Ω: v̂ is the bias-corrected EMA (decay ``fisher_decay``) of the squared gradients, the
  diagonal empirical Fisher, normalised by its mean over the tensor so ``fisher_weight``
  (c) is scale-free: a weight at the tensor's mean sensitivity has its step divided by
  1 + c, a ten times more sensitive one by 1 + 10c.
* P_s = U_r·U_rᵀ, U_r the top-``rank`` left singular vectors of each matrix parameter
  when the optimizer state is initialised (a 2-D leaf, ``[in, out]``, projected on its
  input side): the directions the weights already use, e.g. those a pretrained model
  learned before a closed loop starts. ``refresh_every`` > 0 recomputes U_r from the
  current weights every that many steps (a slowly learned safe subspace).

A non-finite gradient never enters the Fisher EMA. The state holds ``shrink`` (the
update norm kept, ‖u₂‖/‖u‖, logged as ``regulators/<name>/shrink``).

References: the ARS seed document (Φ(W, ΔW)); Kirkpatrick et al. 2017 (EWC, a diagonal
Fisher penalty on weight changes); Parikh & Boyd, Proximal Algorithms (2014).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from homeo_jax.cores import signals
from homeo_jax.regulators import registry
from homeo_jax.regulators.base import RegulatorSpec, check, regulator_spec, static_int


class FisherSubspaceState(NamedTuple):
  spec: RegulatorSpec  # static: the instance name
  inner: Any  # the wrapped optimizer's state
  fisher: Any  # tree of signals.EMA of squared gradients, one per parameter
  basis: Any  # tree: [in, r] top-r left singular vectors of each matrix, a 0 scalar otherwise
  count: jax.Array  # shape=(), int32: steps taken
  shrink: jax.Array  # shape=(), float32: ‖u₂‖ / ‖u‖ this step

  logged_fields = ("shrink",)


def _is_matrix(p: jax.Array, rank: int) -> bool:
  return p.ndim == 2 and min(p.shape) > rank


def safe_basis(params: Any, rank: int) -> Any:
  """Top-``rank`` left singular vectors of every matrix leaf (float32); others: a scalar 0
  (a placeholder with a size: checkpoints cannot hold empty arrays)."""

  def one(p):
    if not _is_matrix(p, rank):
      return jnp.zeros((), jnp.float32)
    u, _, _ = jnp.linalg.svd(jnp.asarray(p, jnp.float32), full_matrices=False)
    return u[:, :rank]

  return jax.tree.map(one, params)


def fisher_subspace_prox(
  inner: optax.GradientTransformation,
  *,
  fisher_weight: float = 1.0,
  gamma: float = 1.0,
  rank: int = 8,
  fisher_decay: float = 0.99,
  refresh_every: int = 0,
  name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``inner`` with its update passed through the prox of Φ(W, ΔW); see the module docstring.

  Args:
    inner: any optax transform, e.g. ``ars_adamw(...)`` (telemetry is passed on to it).
    fisher_weight: c, the Fisher term's strength at mean sensitivity (1.0, >= 0).
    gamma: γ, the off-subspace penalty (1.0, >= 0): off-subspace steps shrink by 1 + 2γ.
    rank: r, the safe subspace's dimension per matrix (8, a Python int >= 1); matrices
      with a side of at most r get only the Fisher term.
    fisher_decay: EMA decay of the squared gradients (0.99, in [0, 1)).
    refresh_every: recompute the subspace from the current weights every this many steps
      (0: keep the one from ``init``).
    name: instance name of its metrics (``"fisher_subspace"``).
  """
  kind = "fisher_subspace"
  check(kind, "fisher_weight", fisher_weight, lambda v: v >= 0, ">= 0")
  check(kind, "gamma", gamma, lambda v: v >= 0, ">= 0")
  check(kind, "fisher_decay", fisher_decay, lambda v: 0 <= v < 1, "in [0, 1)")
  rank = static_int(kind, "rank", rank, minimum=1)
  refresh_every = static_int(kind, "refresh_every", refresh_every, minimum=0)
  spec = regulator_spec(kind, name)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return FisherSubspaceState(
      spec=spec,
      inner=inner.init(params),
      fisher=jax.tree.map(lambda p: signals.ema_init(p.shape), params),
      basis=safe_basis(params, rank),
      count=jnp.zeros((), jnp.int32),
      shrink=jnp.ones((), jnp.float32),
    )

  def update_fn(updates, state: FisherSubspaceState, params=None, **extra_args):
    grads = updates
    finite = signals.tree_all_finite(grads)
    is_ema = lambda x: isinstance(x, signals.EMA)  # noqa: E731
    fisher = jax.tree.map(
      lambda e, g: signals.ema_update(e, jnp.square(g.astype(jnp.float32)), fisher_decay, finite),
      state.fisher,
      grads,
      is_leaf=is_ema,
    )
    proposed, inner_state = inner.update(grads, state.inner, params, **extra_args)
    basis = state.basis
    if refresh_every and params is not None:
      refresh = (state.count + 1) % refresh_every == 0
      basis = jax.lax.cond(refresh, lambda: safe_basis(params, rank), lambda: basis)

    def prox(u, ema, b):
      v = signals.ema_debiased(ema, fisher_decay)
      omega = fisher_weight * v / (jnp.mean(v) + 1e-30)
      out = u.astype(jnp.float32) / (1.0 + omega)
      if b.ndim == 2:  # a matrix: shrink what lies outside span(U_r)
        inside = b @ (b.T @ out)
        out = inside + (out - inside) / (1.0 + 2.0 * gamma)
      return out.astype(u.dtype)

    new_updates = jax.tree.map(prox, proposed, fisher, basis, is_leaf=is_ema)
    before, after = optax.tree.norm(proposed), optax.tree.norm(new_updates)
    return new_updates, FisherSubspaceState(
      spec=spec,
      inner=inner_state,
      fisher=fisher,
      basis=basis,
      count=optax.safe_increment(state.count),
      shrink=jnp.where(before > 0, after / jnp.where(before > 0, before, 1.0), 1.0),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@registry.register_regulator("update_prox", fisher_subspace_prox, order=50)
def _wrap(inner, ctx: registry.BuildContext, **kwargs) -> optax.GradientTransformation:
  """``optimizer.regulators.update_prox={'gamma': 1.0, 'rank': 8, ...}``."""
  del ctx
  return fisher_subspace_prox(inner, **kwargs)
