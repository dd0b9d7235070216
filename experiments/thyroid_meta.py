"""Meta-training the Spectral Thyroid by truncated backpropagation through an unroll.

Task families (each task is one seed; ``FAMILIES``): ``"mlp"``, a student MLP (8 → 16 → 1,
tanh) regressing a random teacher MLP of the same shape on a fresh batch of 32 Gaussian
inputs each step, trained by SGD with momentum 0.9, lr log-uniform in [0.003, 0.05],
weight decay in [1e-4, 1e-2], half the tasks with 2-bit weights (temperature 0.3·τ);
``"lm"`` and ``"lm_2bit"``, the deployed family: the library's byte-level Transformer /
QuantTransformer (1 layer, d_model 32, 2 heads, 32-byte windows, batch 8) trained by
AdamW (β = 0.9/0.99) on its own 16 KiB slice of a corpus, lr log-uniform in [1e-3, 3e-2],
weight decay in [1e-3, 0.1], the 2-bit model at base temperature 0.1·τ. Meta-training
draws LM slices from Shakespeare; the held-out LM tasks train on Python source (this
interpreter's standard library), a corpus meta-training never reads. Quantized tasks
train DSQ-style, through the soft staircase's *true* derivative rather than the
straight-through estimator the deployed LM uses: a meta-gradient has to differentiate
the inner gradients too, and ``stop_gradient`` inside the STE cuts how the quantized
forward moves with the weights. Measured on 32 held-out MLP tasks: with the STE the
meta-gradient of the quantized tasks had the opposite sign of the finite difference
(−0.0091 vs +0.0048); float tasks agreed (−0.00273 vs −0.00277).

Every task takes the step optax.adamw takes when the thyroid steers it: p ← p − lr·α·(u +
wd·λ·p), u the inner direction (momentum for the MLP, Adam's for the LM), α and λ of the
parameter's group (v0.3: the MLP's two layers, the LM's organelles; tied heads). The tiny
LMs decay every parameter, while ``thyroid_adamw`` in a training run leaves gains and
biases undecayed (the shipped weights were trained this way).

One meta-step, per task: 16 steps run with the multipliers at 1 to fill the windows
(no gradient flows through them), then the thyroid steers every step of a K = 32 step
unroll (``lax.scan``), lr·α, wd·λ, τ. The objective is computed on the unrolled log
relative losses, smoothly saturated: ℓ = 5·tanh(log(L / L_0) / 5) — relative to the first
unrolled loss so tasks of every scale weigh alike, and saturated *smoothly*: a hard clip
zeroes the gradient of exactly the tasks that diverge, which made the meta-gradient
blind to divergence and pushed α up (measured: it raised the held-out objective):

    J = var(ℓ[-8:]) − 0.1·progress + 0.01·mean|Δα|,   progress = ℓ[0] − ℓ[-1]

(progress is the improvement: the seed writes "L_last − L_first", which, subtracted,
would reward a rising loss). Gradients w.r.t. the thyroid weights come through the whole
32-step unroll (the truncation length) and are clipped to global norm 1; the meta
optimizer is Adam (1e-2) over the tasks of every family each meta-step, with early
stopping on validation tasks (see ``meta_train``). ``update_every`` is 1 during
meta-training: the network learns the window → multiplier map, which deployment queries
every ``update_every`` steps. For ``per_group`` the (α, λ) heads are tied while training,
so the shipped file holds one head that every group starts from.

``constant_policy`` replaces the network by fixed (α, λ, τ): the bar a learned thyroid
has to clear on the same tasks (``experiments/thyroid_meta_train.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from homeo_jax.cores import signals
from homeo_jax.cores.quantize import quantize
from homeo_jax.data.corpora import load_corpus
from homeo_jax.models import roles
from homeo_jax.models.layers import TransformerConfig
from homeo_jax.models.quant import QuantTransformer, QuantTransformerConfig
from homeo_jax.models.transformer import Transformer
from homeo_jax.regulators.thyroid import (
  WINDOW,
  init_thyroid_params,
  thyroid_forward,
  tie_group_heads,
)

FAMILIES = ("mlp", "lm", "lm_2bit")
D_IN, HIDDEN, BATCH, UNROLL = 8, 16, 32, 32
LM_BATCH, LM_SEQ, LM_SLICE = 8, 32, 16_384
LM_FLOAT = TransformerConfig(
  vocab_size=256, num_layers=1, num_heads=2, d_model=32, max_seq_len=LM_SEQ, dropout=0.0
)
LM_2BIT = QuantTransformerConfig(
  **{f.name: getattr(LM_FLOAT, f.name) for f in dataclasses.fields(LM_FLOAT)},
  temperature_from="thyroid",
  straight_through=False,
)
META_CORPUS, HELD_OUT_CORPUS = "shakespeare", "python_stdlib"

# A policy maps (loss window [16], grad windows [n, 16]) to (α [n], λ [n], τ []); a policy
# factory takes a task's number of parameter groups and returns (policy, n windows).
Policy = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
PolicyFactory = Callable[[int], tuple[Policy, int]]


def thyroid_policy(thyroid: dict, version: str) -> PolicyFactory:
  """The thyroid network; v0.3 reads one window per group with tied (α, λ) heads."""

  def factory(groups: int) -> tuple[Policy, int]:
    if version != "per_group":
      return functools.partial(thyroid_forward, thyroid, version), 1
    return functools.partial(thyroid_forward, tie_group_heads(thyroid, groups), version), groups

  return factory


def constant_policy(alpha: Any, lam: Any, tau: Any) -> PolicyFactory:
  """Fixed multipliers (numbers or traced scalars): the best-constant bar a learned
  thyroid has to clear."""

  def constant(loss_window, grad_windows):
    del loss_window, grad_windows
    return jnp.full((1,), alpha), jnp.full((1,), lam), jnp.asarray(tau, jnp.float32)

  return lambda groups: (constant, 1)


def corpus_bytes(name: str, max_chars: int = 1_000_000) -> jax.Array:
  """A built-in corpus as UTF-8 bytes (the tiny LMs' vocabulary is the 256 byte values)."""
  text = load_corpus(name, max_chars)
  return jnp.asarray(np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32))


def _log_uniform(key, lo, hi):
  return jnp.exp(jax.random.uniform(key, (), minval=jnp.log(lo), maxval=jnp.log(hi)))


def _mlp_task(seed: jax.Array, corpus: Any):
  """(initial params, loss(params, t, τ), group of each leaf, lr, wd, inner direction)."""
  del corpus
  k = jax.random.split(jax.random.key(seed), 6)
  teacher = [
    jax.random.normal(k[0], (D_IN, HIDDEN)) / D_IN**0.5,
    jax.random.normal(k[1], (HIDDEN, 1)) / HIDDEN**0.5,
  ]
  student = [
    jax.random.normal(k[2], (D_IN, HIDDEN)) / D_IN**0.5,
    jax.random.normal(k[3], (HIDDEN, 1)) / HIDDEN**0.5,
  ]
  quantized = (seed % 2) == 1
  data_key = jax.random.key(seed + 7919)

  def loss(params, t, tau):
    x = jax.random.normal(jax.random.fold_in(data_key, t), (BATCH, D_IN))
    w = [jnp.where(quantized, quantize(p, 0.3 * tau, straight_through=False), p) for p in params]
    y = jnp.tanh(x @ teacher[0]) @ teacher[1]
    return jnp.mean(jnp.square(jnp.tanh(x @ w[0]) @ w[1] - y))

  lr, wd = _log_uniform(k[4], 0.003, 0.05), _log_uniform(k[5], 1e-4, 1e-2)
  return student, loss, (0, 1), lr, wd, optax.trace(0.9)


def _lm_task(seed: jax.Array, corpus: jax.Array, quantized: bool):
  k = jax.random.split(jax.random.key(seed), 5)
  model = (QuantTransformer(LM_2BIT, rngs=nnx.Rngs(k[0])) if quantized
           else Transformer(LM_FLOAT, rngs=nnx.Rngs(k[0])))  # fmt: skip
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  start = jax.random.randint(k[1], (), 0, corpus.shape[0] - LM_SLICE)

  def loss(params, t, tau):
    offsets = start + jax.random.randint(
      jax.random.fold_in(k[2], t), (LM_BATCH, 1), 0, LM_SLICE - LM_SEQ - 1
    )
    window = corpus[offsets + jnp.arange(LM_SEQ + 1)]
    controls = {"thyroid": {"quant_temperature": tau}}
    logits, _ = nnx.merge(graphdef, params, rest)(
      window[:, :-1], controls=controls, deterministic=False
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, window[:, 1:]).mean()

  groups = tuple(roles.ORGANELLES.index(n) for n in jax.tree.leaves(roles.organelle_labels(params)))
  lr, wd = _log_uniform(k[3], 1e-3, 3e-2), _log_uniform(k[4], 1e-3, 0.1)
  # eps_root: the meta-gradient of √ν is infinite where a byte never occurs (ν = 0).
  return params, loss, groups, lr, wd, optax.scale_by_adam(b1=0.9, b2=0.99, eps_root=1e-16)


TASKS = {
  "mlp": _mlp_task,
  "lm": functools.partial(_lm_task, quantized=False),
  "lm_2bit": functools.partial(_lm_task, quantized=True),
}


def task_objective(
  policy_for: PolicyFactory, family: str, seed: jax.Array, corpus: Any = None
) -> jax.Array:
  """The meta-objective J of one task of ``family`` under a policy (module docstring)."""
  params, loss_fn, leaf_groups, lr, wd, direction = TASKS[family](seed, corpus)
  policy, n = policy_for(max(leaf_groups) + 1)
  group = jax.tree.structure(params).unflatten([g if n > 1 else 0 for g in leaf_groups])

  def inner_step(carry, t, steer: bool):
    params, inner_state, loss_buf, grad_buf = carry
    if steer:
      windows = jax.vmap(lambda b: signals.ring_ordered(b)[0])(grad_buf)
      alpha, lam, tau = policy(signals.ring_ordered(loss_buf)[0], windows)
    else:
      alpha, lam, tau = jnp.ones((n,)), jnp.ones((n,)), jnp.ones(())
    loss, grads = jax.value_and_grad(loss_fn)(params, t, tau)
    sq = jax.tree.map(lambda g: jnp.sum(jnp.square(g)), grads)
    norms = jnp.sqrt(
      jnp.zeros((n,)).at[jnp.asarray(jax.tree.leaves(group))].add(jnp.stack(jax.tree.leaves(sq)))
    )
    direction_updates, inner_state = direction.update(grads, inner_state, params)
    params = jax.tree.map(
      lambda p, u, g: p - lr * alpha[g] * (u + wd * lam[g] * p), params, direction_updates, group
    )
    loss_buf = signals.ring_push(loss_buf, loss)
    grad_buf = jax.vmap(signals.ring_push)(grad_buf, norms)
    return (params, inner_state, loss_buf, grad_buf), (loss, alpha[0])

  carry = (
    params,
    direction.init(params),
    signals.ring_init(WINDOW),
    jax.vmap(lambda _: signals.ring_init(WINDOW))(jnp.arange(n)),
  )
  carry, _ = jax.lax.scan(lambda c, t: inner_step(c, t, False), carry, jnp.arange(WINDOW))
  carry = jax.lax.stop_gradient(carry)  # truncation: no gradient into the warm-up
  _, (losses, alphas) = jax.lax.scan(
    lambda c, t: inner_step(c, t, True), carry, WINDOW + jnp.arange(UNROLL)
  )
  ratio = jnp.nan_to_num(losses / jax.lax.stop_gradient(losses[0]), nan=1e30, posinf=1e30)
  ell = 5.0 * jnp.tanh(jnp.log(jnp.maximum(ratio, 1e-30)) / 5.0)
  smoothness = jnp.mean(jnp.abs(jnp.diff(alphas)))
  return jnp.var(ell[-8:]) - 0.1 * (ell[0] - ell[-1]) + 0.01 * smoothness


def task_objectives(
  policy_for: PolicyFactory, family: str, seeds: jax.Array, corpus: Any = None
) -> jax.Array:
  """J of each task, ``[len(seeds)]``."""
  return jax.vmap(lambda s: task_objective(policy_for, family, s, corpus))(seeds)


def mean_objective(
  thyroid: dict, version: str, seeds: jax.Array, family: str = "mlp", corpus: Any = None
) -> jax.Array:
  return jnp.mean(task_objectives(thyroid_policy(thyroid, version), family, seeds, corpus))


TaskSet = Mapping[str, tuple[jax.Array, Any]]  # family -> (task seeds, corpus)


def mixture_objective(thyroid: dict, version: str, tasks: TaskSet) -> jax.Array:
  """The mean J over families (each family weighs alike, whatever its task count)."""
  return jnp.mean(
    jnp.stack([mean_objective(thyroid, version, s, f, c) for f, (s, c) in tasks.items()])
  )


def meta_train(
  version: str,
  *,
  iterations: int = 100,
  tasks_per_step: Mapping[str, int] | int = 32,
  learning_rate: float = 1e-2,
  seed: int = 0,
  init: dict | None = None,
  validation: TaskSet | None = None,
  corpus: Any = None,
  eval_every: int = 20,
  log_every: int = 0,
) -> tuple[dict, list[float]]:
  """Meta-train a thyroid; returns (weights, objective per iteration).

  ``tasks_per_step``: tasks of each family per meta-step (an int: MLP tasks only);
  ``corpus``: the LM families' training corpus (``corpus_bytes(META_CORPUS)``).
  With ``validation`` the weights returned are those with the lowest objective on those
  tasks among the starting point and every ``eval_every``-th iterate (early stopping):
  the meta-gradient of a few dozen noisy tasks wanders, and the starting point (the
  neutral thyroid) is a candidate, so the result is never worse than it on validation.
  """
  per_family = {"mlp": tasks_per_step} if isinstance(tasks_per_step, int) else tasks_per_step
  if any(f not in FAMILIES for f in per_family):
    raise ValueError(f"meta_train: task families must be among {FAMILIES}, got {per_family}")
  params = init if init is not None else init_thyroid_params(version, 1, seed)
  meta_opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))
  opt_state = meta_opt.init(params)

  @jax.jit
  def step(params, opt_state, tasks):
    value, grads = jax.value_and_grad(mixture_objective)(params, version, tasks)
    updates, opt_state = meta_opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  validate = jax.jit(mixture_objective, static_argnums=1)
  best, best_value = params, np.inf
  if validation is not None:
    best_value = float(validate(params, version, validation))
  rng = np.random.default_rng(seed)
  history = []
  for it in range(iterations):
    tasks = {
      f: (jnp.asarray(rng.integers(0, 1_000_000, n), jnp.int32), corpus)
      for f, n in per_family.items()
    }
    params, opt_state, value = step(params, opt_state, tasks)
    history.append(float(value))
    if validation is not None and (it + 1) % eval_every == 0:
      value = float(validate(params, version, validation))
      if value < best_value:
        best, best_value = params, value
    if log_every and (it + 1) % log_every == 0:
      print(f"meta step {it + 1}: objective {np.mean(history[-log_every:]):+.5f}", flush=True)
  return (best if validation is not None else params), history


def validation_seeds(n: int = 64) -> jax.Array:
  """Task seeds for early stopping, disjoint from training and held-out test seeds."""
  return jnp.arange(3_000_000, 3_000_000 + n, dtype=jnp.int32)


def held_out_seeds(n: int = 64) -> jax.Array:
  """Task seeds never drawn in training (training draws from [0, 1e6))."""
  return jnp.arange(2_000_000, 2_000_000 + n, dtype=jnp.int32)


def evaluate(
  thyroid: dict | PolicyFactory,
  version: str | None = None,
  seeds: Any = None,
  family: str = "mlp",
  corpus: Any = None,
) -> np.ndarray:
  """J of each task ``[len(seeds)]``: a thyroid's weights (with its version) or a policy."""
  seeds = held_out_seeds() if seeds is None else seeds
  if callable(thyroid):
    return np.asarray(jax.jit(functools.partial(task_objectives, thyroid, family))(seeds, corpus))

  def objectives(weights, seeds, corpus):
    return task_objectives(thyroid_policy(weights, version), family, seeds, corpus)

  return np.asarray(jax.jit(objectives)(thyroid, seeds, corpus))


def constant_grid(grid: Any, family: str, seeds: jax.Array, corpus: Any = None) -> np.ndarray:
  """J of each task under each constant (α, λ, τ) row of ``grid [K, 3]``: ``[K, len(seeds)]``
  (one compilation for the whole grid)."""

  def row(c):
    return task_objectives(constant_policy(c[0], c[1], c[2]), family, seeds, corpus)

  return np.asarray(jax.jit(jax.vmap(row))(jnp.asarray(grid, jnp.float32)))
