"""The run's optimizer: its lr schedule, and the registered optimizer and regulators.

``build_optimizer(config.optimizer, total_steps)`` returns a
``GradientTransformationExtraArgs``, so the train step can always call
``tx.update(grads, state, params, value=loss, grad_norm=..., **telemetry)`` and
transforms that do not read telemetry ignore it.

Optimizers and regulators are registered by their own modules
(``regulators/registry.py``): ``optimizer.name`` picks the optimizer, ``optimizer.kwargs``
go to it, and ``optimizer.regulators = {name: {kwarg: value}}`` wraps it in regulators
(``--set optimizer.regulators.qk_clip.threshold=100``). This module names none of them: it
gives the builders the schedule and the parameter rules of ``models/roles.py``.
"""

from __future__ import annotations

from typing import Any

import optax

import homeo_jax.regulators  # noqa: F401  (the built-in optimizers and regulators register)
from homeo_jax.models import roles
from homeo_jax.regulators import registry
from homeo_jax.training import stages as stages_lib
from homeo_jax.training.config import ConfigError, OptimizerConfig

register_optimizer = registry.register_optimizer
register_regulator = registry.register_regulator

PARAM_RULES = registry.ParamRules(
  weight_decay_mask=roles.weight_decay_mask,
  muon_dimension_numbers=roles.muon_dimension_numbers,
  group_labels=roles.param_roles,
  group_names=roles.ROLES,
  organelle_labels=roles.organelle_labels,
  organelle_names=roles.ORGANELLES,
  query_key_columns=roles.query_key_columns,
)


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Linear warm-up to ``learning_rate``, then cosine to ``min_learning_rate``; constant;
  or modded-nanogpt's stages with a linear cooldown (``training/stages.py``)."""
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.learning_rate)
  if cfg.schedule == "stages":
    return stages_lib.staged_schedule(
      cfg.learning_rate,
      cfg.stage_lr_multipliers,
      total_steps - cfg.extension_steps,
      cooldown_fraction=cfg.cooldown_fraction,
      floor=cfg.min_learning_rate / cfg.learning_rate,
      warmup_steps=cfg.warmup_steps,
    )
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=cfg.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=cfg.min_learning_rate,
  )


def build_optimizer(
  cfg: OptimizerConfig, total_steps: int, model: Any = None, mesh: Any = None
) -> optax.GradientTransformationExtraArgs:
  """The optimizer ``cfg`` names, clipped and wrapped by its regulators. Builders receive
  the model config, the run length and the device mesh (more than one device) in their
  ``BuildContext``: regulators that steer the model need its shape."""
  ctx = registry.BuildContext(
    cfg=cfg,
    learning_rate=learning_rate_schedule(cfg, total_steps),
    rules=PARAM_RULES,
    total_steps=total_steps,
    model=model,
    mesh=mesh,
  )
  try:
    return registry.build(ctx, cfg.name, cfg.kwargs, cfg.regulators, cfg.grad_clip)
  except ValueError as e:
    raise ConfigError(str(e)) from None
