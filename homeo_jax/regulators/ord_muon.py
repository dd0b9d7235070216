"""ORD-Muon: Muon with an orthogonal–radial decomposition of each matrix gradient.

For a matrix parameter W and the momentum-processed gradient G that Muon would
orthogonalise (Nesterov momentum with bias correction, exactly as
``optax.contrib.scale_by_muon``):

    ρ   = ⟨G, W⟩ / ‖W‖²              (0 when W = 0)
    G∥  = ρ·W                        the radial part: it only rescales W
    G⊥  = G − G∥                     the geometric part
    update = Polar(G⊥) + spectral_lr·G∥

With ``spectral_lr = 0`` and ``project_radial = False`` (the defaults) there is *no*
decomposition: G∥ is multiplied by zero, G⊥ = G, and the update is exactly Muon's
Polar(G). ``project_radial=True`` with ``spectral_lr = 0`` gives Polar(G⊥) alone (the
"geometric only" arm). One code path serves all three. Note that Polar(G⊥) alone
removes the one direction that changes ‖W‖, so it barely moves the weight norm (on a
quadratic whose target has 10x the initial norm it stalls where Muon converges); it
is an ablation arm rather than a complete optimizer.

Near-radial gradients: when ‖G⊥‖ ≤ ``radial_rtol``·‖G‖ (default 1e-3), G⊥ is
rounding noise that Polar would inflate into a full-size orthogonal update, so it is
set to zero and only the radial term (if any) moves W.

The orthogonalisation is ``homeo_jax.cores.polar.orthogonalize_many``: same-shape
matrices of the tree are stacked and orthogonalised in one batched call.

Diagnostics (state fields, per leaf, averaged over batch matrices): ``rho`` and
``spectral_frac`` = ‖ρW‖/‖G‖, computed in every mode, so a plain Muon run can answer
"are gradients naturally orthogonal to the weights?".

References:
  Jordan et al., Muon (modded-nanogpt, 2024); optax.contrib.muon; the ORD-Muon seed
  document (spectral learning).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

from homeo_jax.cores.polar import SCHEDULES, orthogonalize_many, resolve_schedule
from homeo_jax.regulators import registry
from homeo_jax.regulators.base import (
  RegulatorSpec,
  check,
  is_concrete,
  options,
  regulator_spec,
  static_int,
)

WeightDimNums = Any  # a tree of MuonDimensionNumbers / None, or a callable returning one


def _is_dim_nums(x: Any) -> bool:
  return isinstance(x, MuonDimensionNumbers)


def _axes(x: jax.Array, axes) -> tuple[int, ...]:
  return tuple(a % x.ndim for a in ((axes,) if isinstance(axes, int) else axes))


def matrix_view(x: jax.Array, dims: MuonDimensionNumbers):
  """``x`` as ``[batch, fan_in, fan_out]`` and the function that undoes it."""
  reduction, output = _axes(x, dims.reduction_axis), _axes(x, dims.output_axis)
  if set(reduction) & set(output):
    raise ValueError(f"reduction axes {reduction} and output axes {output} overlap")
  batch = tuple(a for a in range(x.ndim) if a not in reduction + output)
  order = batch + reduction + output
  sizes = [
    int(np.prod([x.shape[a] for a in group], dtype=np.int64))
    for group in (batch, reduction, output)
  ]
  transposed_shape = tuple(x.shape[a] for a in order)
  inverse_order = tuple(np.argsort(order))

  def undo(y: jax.Array) -> jax.Array:
    return y.reshape(transposed_shape).transpose(inverse_order)

  return x.transpose(order).reshape(sizes), undo


class ScaleByOrdMuonState(NamedTuple):
  """State of ``scale_by_ord_muon``."""

  spec: RegulatorSpec  # static: the instance name of its metrics
  count: jax.Array  # shape=(), int32: steps taken
  mu: optax.Updates  # first moment, like the params
  rho: Any  # per matrix leaf, shape=(), float32: ⟨G, W⟩ / ‖W‖²
  spectral_frac: Any  # per matrix leaf, shape=(), float32: ‖ρW‖ / ‖G‖

  logged_fields = ("rho", "spectral_frac")


def _resolve(weight_dimension_numbers: WeightDimNums, tree: Any) -> Any:
  dims = weight_dimension_numbers
  dims = dims(tree) if callable(dims) else dims
  if dims is None:
    dims = jax.tree.map(lambda _: MuonDimensionNumbers(), tree)
  return dims


@dataclasses.dataclass(frozen=True)
class Momentum:
  """Muon's momentum, as ``optax.contrib.muon``: Nesterov with bias correction."""

  beta: float = 0.95
  nesterov: bool = True
  mu_dtype: Any = None  # the momentum's dtype (None: the params')


@dataclasses.dataclass(frozen=True)
class NewtonSchulz:
  """The polar step: ``homeo_jax.cores.polar`` schedule, its input guard and precision."""

  coeffs: str | tuple = "standard"  # "standard", "dion", "polar_express" or coefficients
  steps: int = 5  # iterations for a fixed coefficient triple (a Python int)
  eps: float = 1e-8  # added to the norm before the iteration
  compute_dtype: Any = "float32"  # a name: inject_hyperparams calls dtype classes
  radial_rtol: float = 1e-3  # ‖G⊥‖/‖G‖ below which G⊥ counts as zero


@dataclasses.dataclass(frozen=True)
class Matrices:
  """Which leaves are matrices and how they are laid out, scaled and sharded."""

  dimension_numbers: Any = None  # tree/callable of MuonDimensionNumbers (None: AdamW leaf)
  consistent_rms: float | None = None  # optax's alternative shape scaling
  stack_mesh: Any = None  # a Mesh: orthogonalise same-shape stacks sharded on the stack axis


@dataclasses.dataclass(frozen=True)
class AdamLeaves:
  """The AdamW that takes the non-matrix leaves (optax.contrib.muon's ``adam_*``)."""

  b1: float = 0.9
  b2: float = 0.999
  eps_root: float = 0.0
  weight_decay: float = 0.0
  learning_rate: Any = None  # None: the Muon learning rate


def scale_by_ord_muon(
  spectral_lr: float = 0.0,
  *,
  project_radial: bool = False,
  momentum: Momentum | dict = Momentum(),
  newton_schulz: NewtonSchulz | dict = NewtonSchulz(),
  weight_dimension_numbers: WeightDimNums = None,
  stack_mesh: Any = None,
  name: str | None = None,
) -> optax.GradientTransformation:
  """Muon's direction with the ORD split; see the module docstring for the formula.

  Args:
    spectral_lr: weight of the radial part G∥ in the update (default 0: Muon).
    project_radial: remove G∥ before Polar even when ``spectral_lr == 0``.
    momentum: ``Momentum`` (β 0.95, Nesterov, dtype) or a dict of its fields.
    newton_schulz: ``NewtonSchulz`` (schedule, steps, eps, compute dtype, radial guard).
    weight_dimension_numbers: tree (or callable) of ``MuonDimensionNumbers`` saying which
      axes of each leaf form the matrix; None: every leaf is a 2-D matrix.
    stack_mesh: a ``jax.sharding.Mesh``: orthogonalize same-shape stacks sharded along
      the stack axis (whole matrices per device) instead of per sharded leaf.
    name: instance name of its metrics (default ``"ord_muon"``).

  ``spectral_lr`` may be traced (``optax.inject_hyperparams``).
  """
  kind = "ord_muon"
  momentum = options(kind, "momentum", momentum, Momentum())
  polar = options(kind, "newton_schulz", newton_schulz, NewtonSchulz())
  beta, nesterov, mu_dtype = momentum.beta, momentum.nesterov, momentum.mu_dtype
  ns_coeffs, ns_steps, eps = polar.coeffs, polar.steps, polar.eps
  compute_dtype, radial_rtol = polar.compute_dtype, polar.radial_rtol
  check(kind, "spectral_lr", spectral_lr, lambda v: v >= 0, ">= 0")
  check(kind, "newton_schulz.radial_rtol", radial_rtol, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
  check(kind, "momentum.beta", beta, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
  ns_steps = static_int(kind, "newton_schulz.steps", ns_steps)  # a tracer runs as a loop
  spec = regulator_spec(kind, name)
  schedule = resolve_schedule(ns_coeffs)
  # 0/1: at 0 the radial part is multiplied away, not branched around (a traced
  # spectral_lr decides it inside the computation).
  if is_concrete(spectral_lr):
    radial_weight = 1.0 if (project_radial or spectral_lr != 0.0) else 0.0
  else:
    radial_weight = jnp.where(jnp.logical_or(project_radial, spectral_lr != 0.0), 1.0, 0.0)
  mu_dtype = jax.dtypes.canonicalize_dtype(mu_dtype) if mu_dtype is not None else None

  def init_fn(params):
    def zeros():  # one buffer per leaf and field: the state may be donated
      return jax.tree.map(lambda _: jnp.zeros((), jnp.float32), params)

    return ScaleByOrdMuonState(
      spec=spec,
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params, dtype=mu_dtype),
      rho=zeros(),
      spectral_frac=zeros(),
    )

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_ord_muon needs params: the radial part is measured against W")
    mu = optax.tree.update_moment(updates, state.mu, beta, 1)
    count = optax.safe_increment(state.count)
    if nesterov:
      mu_hat = jax.tree.map(
        lambda m, g: beta * m + (1 - beta) * g,
        optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
        optax.tree.bias_correction(updates, beta, count),
      )
    else:
      mu_hat = optax.tree.bias_correction(mu, beta, count)

    dims = _resolve(weight_dimension_numbers, mu_hat)
    g_leaves, treedef = jax.tree.flatten(mu_hat)
    w_leaves = treedef.flatten_up_to(params)
    dim_leaves = treedef.flatten_up_to(dims)
    perps, radials, undos, rhos, fracs = [], [], [], [], []
    for g, w, d in zip(g_leaves, w_leaves, dim_leaves, strict=True):
      g3, undo = matrix_view(g, d)
      w3, _ = matrix_view(w, d)
      g3, w3 = g3.astype(jnp.float32), w3.astype(jnp.float32)
      w_sq = jnp.sum(jnp.square(w3), axis=(-2, -1), keepdims=True)
      rho = jnp.sum(g3 * w3, axis=(-2, -1), keepdims=True) / jnp.where(w_sq > 0, w_sq, 1.0)
      radial = rho * w3
      perp = g3 - radial_weight * radial
      g_norm = jnp.sqrt(jnp.sum(jnp.square(g3), axis=(-2, -1), keepdims=True))
      perp_norm = jnp.sqrt(jnp.sum(jnp.square(perp), axis=(-2, -1), keepdims=True))
      perps.append(jnp.where(perp_norm <= radial_rtol * g_norm, 0.0, perp).astype(g.dtype))
      radials.append(radial)
      undos.append(undo)
      rhos.append(jnp.mean(rho))
      fracs.append(jnp.mean(jnp.abs(rho) * jnp.sqrt(w_sq) / jnp.maximum(g_norm, 1e-30)))
    polars = orthogonalize_many(
      perps,
      coeffs=schedule,
      steps=ns_steps,
      eps=eps,
      dtype=jnp.dtype(compute_dtype),
      stack_mesh=stack_mesh,
    )
    in_dtypes = [u.dtype for u in treedef.flatten_up_to(updates)]
    new_updates = [
      undo((p.astype(jnp.float32) + spectral_lr * radial_weight * r).astype(dtype))
      for p, r, undo, dtype in zip(polars, radials, undos, in_dtypes, strict=True)
    ]
    state = ScaleByOrdMuonState(
      spec=spec,
      count=count,
      mu=optax.tree.cast(mu, mu_dtype),
      rho=treedef.unflatten(rhos),
      spectral_frac=treedef.unflatten(fracs),
    )
    return treedef.unflatten(new_updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_shape(
  weight_dimension_numbers: WeightDimNums = None, consistent_rms: float | None = None
) -> optax.GradientTransformation:
  """Muon's shape scaling: √max(1, fan_out/fan_in), or √max(fan_in, fan_out)·consistent_rms.

  The same rule as ``optax.contrib.muon`` (fan_in = the reduction axes).
  """

  def update_fn(updates, state, params=None):
    del params
    dims = _resolve(weight_dimension_numbers, updates)

    def scale(u, d):
      fan_in = np.prod([u.shape[a] for a in _axes(u, d.reduction_axis)])
      fan_out = np.prod([u.shape[a] for a in _axes(u, d.output_axis)])
      # Python floats are weakly typed: the update keeps its dtype.
      if consistent_rms is None:
        return u * float(np.sqrt(max(1.0, fan_out / fan_in)))
      return (u * (float(np.sqrt(max(fan_in, fan_out))) * consistent_rms)).astype(u.dtype)

    return jax.tree.map(scale, updates, dims, is_leaf=_is_dim_nums), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _muon_dims(params, weight_dimension_numbers: WeightDimNums):
  """Per leaf: its MuonDimensionNumbers, or None for leaves that go to AdamW."""
  if weight_dimension_numbers is None:
    return jax.tree.map(lambda x: MuonDimensionNumbers() if x.ndim == 2 else None, params)
  dims = weight_dimension_numbers
  dims = dims(params) if callable(dims) else dims
  is_leaf = lambda x: x is None or _is_dim_nums(x)  # noqa: E731
  return jax.tree.map(lambda d, sub: jax.tree.map(lambda _: d, sub), dims, params, is_leaf=is_leaf)


def ord_muon(
  learning_rate: optax.ScalarOrSchedule,
  spectral_lr: float = 0.0,
  *,
  project_radial: bool = False,
  momentum: Momentum | dict = Momentum(),
  newton_schulz: NewtonSchulz | dict = NewtonSchulz(),
  weight_decay: float = 0.0,
  weight_decay_mask: Any = None,
  matrices: Matrices | dict = Matrices(),
  adam: AdamLeaves | dict = AdamLeaves(),
  name: str | None = None,
) -> optax.GradientTransformation:
  """ORD-Muon for matrices, AdamW for everything else; ``spectral_lr=0`` is optax's Muon.

  Defaults and semantics follow ``optax.contrib.muon`` (momentum β 0.95 with Nesterov,
  shape scaling, weight decay and its mask, AdamW for non-matrix leaves), with optax's
  flat arguments gathered into groups: ``momentum`` (beta, nesterov, mu_dtype),
  ``newton_schulz`` (ns_coeffs, ns_steps, eps; plus the compute dtype and the radial
  guard), ``matrices`` (muon_weight_dimension_numbers, consistent_rms; plus the stack
  mesh) and ``adam`` (the ``adam_*`` arguments). ``spectral_lr`` and ``project_radial``
  are ``scale_by_ord_muon``'s.
  """
  kind = "ord_muon"
  momentum = options(kind, "momentum", momentum, Momentum())
  newton_schulz = options(kind, "newton_schulz", newton_schulz, NewtonSchulz())
  matrices = options(kind, "matrices", matrices, Matrices())
  adam = options(kind, "adam", adam, AdamLeaves())
  ns_coeffs = newton_schulz.coeffs
  muon_weight_dimension_numbers = matrices.dimension_numbers
  if isinstance(ns_coeffs, str) and ns_coeffs not in SCHEDULES:
    raise ValueError(
      f"{kind}: newton_schulz.coeffs must be one of {sorted(SCHEDULES)} or coefficients, "
      f"got {ns_coeffs!r}"
    )

  def labels(params):
    dims = _muon_dims(params, muon_weight_dimension_numbers)
    return jax.tree.map(
      lambda d: "muon" if d is not None else "adam",
      dims,
      is_leaf=lambda x: x is None or _is_dim_nums(x),
    )

  def muon_dims(updates):
    # Inside the partition AdamW leaves are empty MaskedNodes, which the mapping keeps.
    return _muon_dims(updates, muon_weight_dimension_numbers)

  muon_branch = optax.chain(
    scale_by_ord_muon(
      spectral_lr,
      project_radial=project_radial,
      momentum=momentum,
      newton_schulz=newton_schulz,
      weight_dimension_numbers=muon_dims,
      stack_mesh=matrices.stack_mesh,
      name=name,
    ),
    scale_by_shape(muon_dims, matrices.consistent_rms),
    optax.add_decayed_weights(weight_decay, weight_decay_mask),
    optax.scale_by_learning_rate(learning_rate),
  )
  adam_branch = optax.adamw(
    learning_rate=learning_rate if adam.learning_rate is None else adam.learning_rate,
    b1=adam.b1,
    b2=adam.b2,
    eps=newton_schulz.eps,
    eps_root=adam.eps_root,
    weight_decay=adam.weight_decay,
    mu_dtype=momentum.mu_dtype,
    nesterov=momentum.nesterov,
  )
  return optax.partition({"muon": muon_branch, "adam": adam_branch}, labels)


@registry.register_optimizer("ord_muon", ord_muon)
def _build(
  ctx: registry.BuildContext, muon_learning_rate: float = 0.02, **kwargs
) -> optax.GradientTransformation:
  """ORD-Muon on attention, MLP and expert matrices (lr ``muon_learning_rate`` on the
  config's schedule shape), AdamW at the config's lr on the rest. ``spectral_lr=0`` is
  Muon. On a mesh the same-shape stacks are sharded along the stack axis."""
  args = registry.muon_args(ctx, muon_learning_rate)
  kind = "ord_muon"
  run_adam = AdamLeaves(
    b1=args["adam_b1"], b2=args["adam_b2"], learning_rate=args["adam_learning_rate"]
  )
  run_matrices = Matrices(args["muon_weight_dimension_numbers"], stack_mesh=ctx.mesh)
  kwargs["adam"] = options(kind, "adam", kwargs.get("adam"), run_adam)
  kwargs["matrices"] = options(kind, "matrices", kwargs.get("matrices"), run_matrices)
  kwargs.setdefault("weight_decay", args["weight_decay"])
  return ord_muon(args["learning_rate"], **kwargs)
