"""Polar factor U·Vᵀ by Newton–Schulz iterations, batched over same-shape matrices.

For X with SVD U·S·Vᵀ, each iteration maps X ↦ a·X + (b·A + c·A²)·X with A = X·Xᵀ, an
odd polynomial in the singular values that drives them towards 1 while leaving U and
V alone. X is first normalised so its spectral norm is ≤ 1 (Frobenius norm, as optax
does) and transposed so that A is the smaller Gram matrix.

Coefficient schedules (``SCHEDULES``, selectable by name):

* ``"standard"``: Keller Jordan's fixed quintic (3.4445, −4.7750, 2.0315), repeated
  ``steps`` times; the default of ``optax.contrib.muon``. Singular values end in
  roughly [0.7, 1.2] — deliberately not converged, which trains as well.
* ``"dion"``: optax's per-iteration 'dion' preset (5 triples).
* ``"polar_express"``: the per-iteration Polar Express schedule (Amsel et al. 2025) as
  used in modded-nanogpt (5 triples, safety factor 2e-2): normalisation
  ``X / (‖X‖_F·(1 + 2e-2) + 1e-6)``.

``orthogonalize`` works on ``[..., m, n]`` (leading batch axes: one batched matmul per
iteration). ``orthogonalize_many`` takes a list of such arrays, stacks the ones with
equal ``(m, n)`` and runs one call per shape, the fast path for a parameter tree.

References:
  Jordan, modded-nanogpt (2024); Amsel, Persson, Musco, Gower, "The Polar Express:
  Optimal Matrix Sign Methods and Their Application to the Muon Algorithm" (2025);
  optax.contrib.muon.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Newton–Schulz coefficients and the normalisation that goes with them."""

  coeffs: tuple[tuple[float, float, float], ...]
  per_iteration: bool  # False: coeffs[0] is repeated `steps` times
  norm_safety: float = 0.0  # divide by ‖X‖_F·(1 + norm_safety) + eps


SCHEDULES = {
  "standard": Schedule(((3.4445, -4.7750, 2.0315),), per_iteration=False),
  "dion": Schedule(
    (
      (4.0848, -6.8946, 2.9270),
      (3.9505, -6.3029, 2.6377),
      (3.7418, -5.5913, 2.3037),
      (2.8769, -3.1427, 1.2046),
      (2.8366, -3.0525, 1.2012),
    ),
    per_iteration=True,
  ),
  "polar_express": Schedule(
    (
      (8.156554524902461, -22.48329292557795, 15.878769915207462),
      (4.042929935166739, -2.808917465908714, 0.5000178451051316),
      (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
      (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
      (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    ),
    per_iteration=True,
    norm_safety=2e-2,
  ),
}


def resolve_schedule(coeffs: str | Sequence) -> Schedule:
  """A schedule by name, or from a (3,) triple (fixed) or an (n, 3) array (per iteration)."""
  if isinstance(coeffs, Schedule):
    return coeffs
  if isinstance(coeffs, str):
    if coeffs not in SCHEDULES:
      raise ValueError(f"coeffs must be one of {sorted(SCHEDULES)} or an array, got {coeffs!r}")
    return SCHEDULES[coeffs]
  arr = np.asarray(coeffs, dtype=np.float64)
  if arr.shape == (3,):
    return Schedule((tuple(arr.tolist()),), per_iteration=False)
  if arr.ndim == 2 and arr.shape[1] == 3 and arr.shape[0] >= 1:
    return Schedule(tuple(tuple(r) for r in arr.tolist()), per_iteration=True)
  raise ValueError(f"coeffs must have shape (3,) or (n, 3), got {arr.shape}")


def _newton_schulz_step(x: jax.Array, a: float, b: float, c: float) -> jax.Array:
  """One quintic iteration x ← a·x + (b·A + c·A²)·x with A = x·xᵀ."""
  gram = x @ jnp.swapaxes(x, -1, -2)
  return a * x + (b * gram + c * (gram @ gram)) @ x


def orthogonalize(
  x: jax.Array,
  *,
  coeffs: str | Sequence = "standard",
  steps: int = 5,
  eps: float = 1e-8,
  dtype: jnp.dtype | None = jnp.float32,
) -> jax.Array:
  """Approximate polar factor of ``x`` ``[..., m, n]``; returns ``x``'s dtype.

  Args:
    x: a matrix or a stack of matrices (leading axes are batch axes).
    coeffs: a schedule name (``"standard"``, ``"dion"``, ``"polar_express"``), a
      coefficient triple, or an ``(n, 3)`` per-iteration array.
    steps: iterations for a fixed triple (ignored by per-iteration schedules, which run
      one iteration per row).
    eps: added to the norm; a zero matrix maps to zero.
    dtype: compute dtype (float32 default; bfloat16 for speed; None keeps x's dtype).
  """
  if x.ndim < 2:
    raise ValueError(f"orthogonalize needs a matrix [..., m, n], got shape {x.shape}")
  schedule = resolve_schedule(coeffs)
  out_dtype = x.dtype
  transposed = x.shape[-2] > x.shape[-1]
  if transposed:
    x = jnp.swapaxes(x, -1, -2)
  # Pre-scale by max|x| so that the Frobenius norm cannot overflow for huge gradients.
  x = x.astype(jnp.float32)
  peak = jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True)
  x = x / jnp.where(peak > 0, peak, 1.0)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
  x = x / (norm * (1.0 + schedule.norm_safety) + eps)
  x = x.astype(dtype or out_dtype)
  if schedule.per_iteration or isinstance(steps, int):
    rows = schedule.coeffs if schedule.per_iteration else schedule.coeffs * steps
    for a, b, c in rows:  # unrolled: a handful of large batched matmuls
      x = _newton_schulz_step(x, a, b, c)
  else:  # a traced step count (optax.inject_hyperparams): a loop instead of an unroll
    x = jax.lax.fori_loop(0, steps, lambda _, y: _newton_schulz_step(y, *schedule.coeffs[0]), x)
  if transposed:
    x = jnp.swapaxes(x, -1, -2)
  return x.astype(out_dtype)


def orthogonalize_many(
  xs: Sequence[jax.Array], *, stack_mesh: Mesh | None = None, **kwargs
) -> list[jax.Array]:
  """``orthogonalize`` each ``[b_i, m, n]`` array; same-shape arrays share one batched call.

  ``stack_mesh``: shard each stack along its matrix axis over all the mesh's devices
  (padded with zero matrices to a multiple of the device count), so every device
  orthogonalizes whole matrices locally. Newton–Schulz on a matrix that is itself
  sharded (FSDP) needs collectives inside every iteration instead.
  """
  groups: dict[tuple[int, int], list[int]] = {}
  for i, x in enumerate(xs):
    if x.ndim != 3:
      raise ValueError(f"orthogonalize_many takes [batch, m, n] arrays, got shape {x.shape}")
    groups.setdefault(x.shape[-2:], []).append(i)
  out: list[jax.Array | None] = [None] * len(xs)
  for indices in groups.values():
    sizes = [xs[i].shape[0] for i in indices]
    stacked = jnp.concatenate([xs[i] for i in indices])
    if stack_mesh is not None and stack_mesh.size > 1:
      n = stacked.shape[0]
      pad = -n % stack_mesh.size
      stacked = jnp.pad(stacked, ((0, pad), (0, 0), (0, 0)))
      spec = PartitionSpec(tuple(stack_mesh.axis_names), None, None)
      stacked = jax.lax.with_sharding_constraint(stacked, NamedSharding(stack_mesh, spec))
      stacked = orthogonalize(stacked, **kwargs)[:n]
    else:
      stacked = orthogonalize(stacked, **kwargs)
    for i, part in zip(indices, jnp.split(stacked, np.cumsum(sizes)[:-1]), strict=True):
      out[i] = part
  return out
