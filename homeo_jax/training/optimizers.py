"""Optimizers by name, with the config's schedule, clipping and weight-decay mask.

``build_optimizer(config.optimizer, total_steps)`` returns a
``GradientTransformationExtraArgs``, so the train step can always call
``tx.update(grads, state, params, value=loss, grad_norm=..., **telemetry)`` and
transforms that do not read telemetry ignore it. A regulator registers its builder
with ``@register_optimizer("name")``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import optax

from homeo_jax.training.config import ConfigError, OptimizerConfig

Builder = Callable[..., optax.GradientTransformation]
OPTIMIZERS: dict[str, Builder] = {}


def register_optimizer(name: str) -> Callable[[Builder], Builder]:
  """Register ``builder(cfg, learning_rate, **cfg.kwargs) -> GradientTransformation``."""

  def decorator(builder: Builder) -> Builder:
    OPTIMIZERS[name] = builder
    return builder

  return decorator


def matrix_mask(params):
  """True for leaves with ndim >= 2: weight decay applies to matrices, not gains/biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Linear warm-up to ``learning_rate``, then cosine to ``min_learning_rate`` (or constant)."""
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.learning_rate)
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=cfg.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=cfg.min_learning_rate,
  )


def build_optimizer(
  cfg: OptimizerConfig, total_steps: int
) -> optax.GradientTransformationExtraArgs:
  if cfg.name not in OPTIMIZERS:
    raise ConfigError(f"optimizer.name must be one of {sorted(OPTIMIZERS)}, got {cfg.name!r}")
  builder = OPTIMIZERS[cfg.name]
  accepted = inspect.signature(builder).parameters
  for key in cfg.kwargs:
    if key not in accepted or key in ("cfg", "learning_rate"):
      raise ConfigError(f"optimizer.kwargs.{key} is not an argument of optimizer {cfg.name!r}")
  tx = builder(cfg, learning_rate_schedule(cfg, total_steps), **cfg.kwargs)
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return optax.with_extra_args_support(tx)


@register_optimizer("adamw")
def _adamw(cfg: OptimizerConfig, learning_rate) -> optax.GradientTransformation:
  return optax.adamw(
    learning_rate,
    b1=cfg.b1,
    b2=cfg.b2,
    eps=cfg.eps,
    weight_decay=cfg.weight_decay,
    mask=matrix_mask,
  )


@register_optimizer("adam")
def _adam(cfg: OptimizerConfig, learning_rate) -> optax.GradientTransformation:
  return optax.adam(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


@register_optimizer("sgd")
def _sgd(
  cfg: OptimizerConfig, learning_rate, nesterov: bool = False
) -> optax.GradientTransformation:
  return optax.sgd(learning_rate, momentum=cfg.b1 or None, nesterov=nesterov)
