"""Log-domain Sinkhorn for routing: an entropic transport plan of tokens onto experts.

For scores ``logits`` ``[..., T, E]`` the plan is P = diag(u)·exp(logits/eps)·diag(v)
with row sums ``row_marginal`` (default 1/T each) and column sums ``col_marginal``
(default 1/E each). In the log domain with potentials f, g:

    f ← log a − logsumexp(logits/eps + g, axis=E)
    g ← log b − logsumexp(logits/eps + f, axis=T)

for a fixed, jit-static ``n_iter``. Ending on the column update makes the expert
(column) marginals exact up to rounding after any number of iterations, which is what
a load balancer needs; row marginals converge with the iterations. Stable for large
logits (no exp outside logsumexp) and small ``eps``; differentiable by unrolling.

References:
  Cuturi, "Sinkhorn Distances" (2013); Clark et al., "Unified Scaling Laws for Routed
  Language Models" (2022, Sinkhorn routing); ott-jax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp


def sinkhorn_potentials(
  logits: jax.Array,
  *,
  n_iter: int = 4,
  eps: float = 0.05,
  row_marginal: jax.Array | None = None,
  col_marginal: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The log-domain potentials (f ``[..., T]``, g ``[..., E]``) after ``n_iter`` iterations.

  log P = logits/eps + f + g. A router that must stay per token uses eps·g as a per-expert
  bias: it is the shift of the scores that balances the columns.
  """
  if n_iter < 1:
    raise ValueError(f"n_iter must be >= 1, got {n_iter}")
  if not eps > 0:
    raise ValueError(f"eps must be > 0, got {eps}")
  t, e = logits.shape[-2:]
  scores = logits.astype(jnp.float32) / eps
  log_a = (
    jnp.full(logits.shape[:-1], -jnp.log(t)) if row_marginal is None else jnp.log(row_marginal)
  )
  log_b = (
    jnp.full(logits.shape[:-2] + (e,), -jnp.log(e))
    if col_marginal is None
    else jnp.log(col_marginal)
  )

  def iteration(potentials, _):
    _, g = potentials
    f = log_a - logsumexp(scores + g[..., None, :], axis=-1)
    g = log_b - logsumexp(scores + f[..., :, None], axis=-2)
    return (f, g), None

  init = (jnp.zeros(logits.shape[:-1], jnp.float32), jnp.zeros(log_b.shape, jnp.float32))
  (f, g), _ = jax.lax.scan(iteration, init, None, length=n_iter)
  return f, g


def sinkhorn(
  logits: jax.Array,
  *,
  n_iter: int = 4,
  eps: float = 0.05,
  row_marginal: jax.Array | None = None,
  col_marginal: jax.Array | None = None,
  return_log: bool = False,
) -> jax.Array:
  """Entropic plan ``[..., T, E]`` (or its log with ``return_log=True``).

  Args:
    logits: scores, higher is more preferred; leading axes are batch axes.
    n_iter: Sinkhorn iterations (row update then column update), static.
    eps: entropic temperature (> 0); smaller is closer to a hard assignment.
    row_marginal: ``[..., T]`` token masses (default uniform 1/T).
    col_marginal: ``[..., E]`` expert masses (default uniform 1/E).
    return_log: return log P instead of P.
  """
  f, g = sinkhorn_potentials(
    logits, n_iter=n_iter, eps=eps, row_marginal=row_marginal, col_marginal=col_marginal
  )
  log_plan = logits.astype(jnp.float32) / eps + f[..., :, None] + g[..., None, :]
  return log_plan if return_log else jnp.exp(log_plan)
