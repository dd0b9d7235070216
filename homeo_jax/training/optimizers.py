"""Optimizers by name, with the config's schedule, clipping and weight-decay mask.

``build_optimizer(config.optimizer, total_steps)`` returns a
``GradientTransformationExtraArgs``, so the train step can always call
``tx.update(grads, state, params, value=loss, grad_norm=..., **telemetry)`` and
transforms that do not read telemetry ignore it.

A builder is registered with ``@register_optimizer("name", factory, ...)``: it fills the
factory's arguments from the config (lr schedule, betas, eps, weight decay and its mask)
and forwards ``config.optimizer.kwargs`` wholesale, so every argument of the factory is
reachable with ``--set optimizer.kwargs.X=...`` (a kwarg overrides the config's value);
an argument that neither the builder nor its factories take fails with one line.
Parameter groups (Muon vs AdamW, the weight-decay mask, the Thyroid's organelles) come
from the one parameter rule, ``models/roles.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import optax

from homeo_jax.models import roles
from homeo_jax.regulators import ars as ars_lib
from homeo_jax.regulators import compute_price as price_lib
from homeo_jax.regulators import load_balance as balance_lib
from homeo_jax.regulators import ord_muon as ord_muon_lib
from homeo_jax.regulators import spike_guard as spike_lib
from homeo_jax.regulators import thyroid as thyroid_lib
from homeo_jax.regulators import update_prox as prox_lib
from homeo_jax.training import stages as stages_lib
from homeo_jax.training.config import ConfigError, OptimizerConfig

Builder = Callable[..., optax.GradientTransformation]
OPTIMIZERS: dict[str, Builder] = {}
FACTORIES: dict[str, tuple[Callable[..., Any], ...]] = {}
CONTEXT = ("model", "total_steps", "mesh")  # what build_optimizer passes when asked
RESERVED = ("cfg", "learning_rate", *CONTEXT)


def register_optimizer(name: str, *factories: Callable[..., Any]) -> Callable[[Builder], Builder]:
  """Register ``builder(cfg, learning_rate, [model, total_steps, mesh], **kwargs)``;
  ``factories`` are what it forwards ``kwargs`` to (their arguments are valid kwargs)."""

  def decorator(builder: Builder) -> Builder:
    OPTIMIZERS[name] = builder
    FACTORIES[name] = factories
    return builder

  return decorator


def accepted_kwargs(name: str) -> set[str]:
  """Every ``optimizer.kwargs`` key optimizer ``name`` accepts."""
  keys: set[str] = set()
  for fn in (OPTIMIZERS[name], *FACTORIES[name]):
    keys |= {
      p.name
      for p in inspect.signature(fn).parameters.values()
      if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
  return keys - set(RESERVED)


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


def check_kwargs(cfg: OptimizerConfig) -> None:
  """One line for a kwarg no part of the optimizer takes (run before anything is built)."""
  if cfg.name not in OPTIMIZERS:
    raise ConfigError(f"optimizer.name must be one of {sorted(OPTIMIZERS)}, got {cfg.name!r}")
  accepted = accepted_kwargs(cfg.name)
  for key in cfg.kwargs:
    if key not in accepted:
      raise ConfigError(
        f"optimizer.kwargs.{key} is not an argument of optimizer {cfg.name!r} "
        f"(it takes: {', '.join(sorted(accepted))})"
      )


def build_optimizer(
  cfg: OptimizerConfig, total_steps: int, model: Any = None, mesh: Any = None
) -> optax.GradientTransformationExtraArgs:
  """The optimizer ``cfg`` names. Builders with a ``model`` (``total_steps``, ``mesh``)
  parameter receive the model config (the run length, the device mesh when there is
  more than one device): regulators that steer the model need its shape."""
  check_kwargs(cfg)
  builder = OPTIMIZERS[cfg.name]
  accepted = inspect.signature(builder).parameters
  context = {"model": model, "total_steps": total_steps, "mesh": mesh}
  extra = {k: v for k, v in context.items() if k in accepted}
  try:
    tx = builder(cfg, learning_rate_schedule(cfg, total_steps), **extra, **cfg.kwargs)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"optimizer {cfg.name!r}: {e}") from None
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  if cfg.update_prox:
    try:
      tx = prox_lib.fisher_subspace_prox(tx, **cfg.update_prox)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"optimizer.update_prox: {e}") from None
  if cfg.spike_threshold > 0:
    tx = spike_lib.skip_spikes(tx, threshold=cfg.spike_threshold, mode=cfg.spike_mode)
  return optax.with_extra_args_support(tx)


def _adamw_args(cfg: OptimizerConfig) -> dict[str, Any]:
  """The config's AdamW arguments, weight decay masked by the one parameter rule."""
  return dict(
    b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=roles.weight_decay_mask
  )


@register_optimizer("adamw", optax.adamw)
def _adamw(cfg: OptimizerConfig, learning_rate, **kwargs) -> optax.GradientTransformation:
  return optax.adamw(learning_rate, **{**_adamw_args(cfg), **kwargs})


@register_optimizer("adam", optax.adam)
def _adam(cfg: OptimizerConfig, learning_rate, **kwargs) -> optax.GradientTransformation:
  return optax.adam(learning_rate, **{"b1": cfg.b1, "b2": cfg.b2, "eps": cfg.eps, **kwargs})


@register_optimizer("sgd", optax.sgd)
def _sgd(cfg: OptimizerConfig, learning_rate, **kwargs) -> optax.GradientTransformation:
  return optax.sgd(learning_rate, **{"momentum": cfg.b1 or None, **kwargs})


def _rescaled(schedule: optax.Schedule, factor: float) -> optax.Schedule:
  """The same schedule shape at another peak (Muon's lr on the config's warm-up/decay)."""
  return lambda step: schedule(step) * factor


def _muon_args(cfg: OptimizerConfig, learning_rate, muon_learning_rate: float) -> dict:
  """Muon's lr on the config's schedule shape; AdamW (config lr, betas) off the matrices."""
  return dict(
    learning_rate=_rescaled(learning_rate, muon_learning_rate / cfg.learning_rate),
    weight_decay=cfg.weight_decay,
    adam_b1=cfg.b1,
    adam_b2=cfg.b2,
    adam_learning_rate=learning_rate,
    muon_weight_dimension_numbers=roles.muon_dimension_numbers,
  )


@register_optimizer("ord_muon", ord_muon_lib.ord_muon)
def _ord_muon(
  cfg: OptimizerConfig,
  learning_rate,
  muon_learning_rate: float = 0.02,
  mesh=None,
  **kwargs,
) -> optax.GradientTransformation:
  """ORD-Muon on attention, MLP and expert matrices (lr ``muon_learning_rate`` on the
  config's schedule shape), AdamW at ``learning_rate`` on the rest. ``spectral_lr=0`` is
  Muon. On a mesh the same-shape stacks are sharded along the stack axis."""
  args = _muon_args(cfg, learning_rate, muon_learning_rate)
  args.update(stack_mesh=mesh)
  return ord_muon_lib.ord_muon(**{**args, **kwargs})


@register_optimizer("optax_muon", optax.contrib.muon)
def _optax_muon(cfg: OptimizerConfig, learning_rate, muon_learning_rate: float = 0.02, **kwargs):
  """``optax.contrib.muon`` with the same split as ``ord_muon``, for comparisons."""
  return optax.contrib.muon(**{**_muon_args(cfg, learning_rate, muon_learning_rate), **kwargs})


@register_optimizer("ars_adamw", ars_lib.ars_adamw)
def _ars_adamw(cfg: OptimizerConfig, learning_rate, **kwargs) -> optax.GradientTransformation:
  """AdamW under ARS with the config's lr schedule, betas, eps and decay mask."""
  return ars_lib.ars_adamw(learning_rate, **{**_adamw_args(cfg), **kwargs})


def _moe_shape(model) -> tuple[int, int, int]:
  moe = getattr(model, "moe", None)
  if moe is None:
    raise ConfigError("this optimizer balances MoE load: use model_type=moe_transformer")
  return model.num_layers, moe.num_experts, model.d_model


@register_optimizer("adamw_deepseek", balance_lib.deepseek_balancer)
def _adamw_deepseek(cfg: OptimizerConfig, learning_rate, model, **kwargs):
  """AdamW + DeepSeek's auxiliary-loss-free selection bias (router="deepseek")."""
  layers, experts, _ = _moe_shape(model)
  return optax.chain(
    _adamw(cfg, learning_rate), balance_lib.deepseek_balancer(layers, experts, **kwargs)
  )


@register_optimizer("adamw_spechorn", balance_lib.spechorn_balancer)
def _adamw_spechorn(cfg: OptimizerConfig, learning_rate, model, total_steps: int, **kwargs):
  """AdamW + the SpecHorn load regulator and CV scheduler (router="spechorn")."""
  layers, experts, d_model = _moe_shape(model)
  balancer = balance_lib.spechorn_balancer(
    layers, experts, d_model, **{"total_steps": total_steps, **kwargs}
  )
  return optax.chain(_adamw(cfg, learning_rate), balancer)


@register_optimizer("thyroid_adamw", thyroid_lib.thyroid, optax.adamw)
def _thyroid_adamw(cfg: OptimizerConfig, learning_rate, **kwargs) -> optax.GradientTransformation:
  """AdamW steered by the Spectral Thyroid (``version="per_group"``: organelle groups,
  ``models/roles.py``); the weight-decay mask is the one parameter rule's in every version."""
  args = {"weight_decay": cfg.weight_decay, "b1": cfg.b1, "b2": cfg.b2, "eps": cfg.eps}
  if kwargs.get("version") == "per_group":
    # Each group's AdamW gets the mask too: gains and biases are never decayed.
    args.update(
      group_labels=roles.organelle_labels,
      group_names=roles.ORGANELLES,
      mask=roles.weight_decay_mask,
    )
  else:
    args.update(static_args=("mask",), mask=roles.weight_decay_mask)
  return thyroid_lib.thyroid(optax.adamw, learning_rate, **{**args, **kwargs})


SCHEDULED_STEPS = ("warmup_steps", "ponder_start", "clamp_until", "audit_start", "settle_steps")


@register_optimizer("adamw_compute_price", price_lib.compute_price)
def _adamw_compute_price(
  cfg: OptimizerConfig, learning_rate, model, total_steps: int, reference_steps=10_000, **kwargs
):
  """AdamW + the Ouro-Spec compute price (model_type=adaptive_transformer).

  The step counts are the seed's; runs shorter than ``reference_steps`` scale them (and
  raise ``dual_lr`` by the same factor, so λ_p can cross its range in the same fraction
  of the run): see ``compute_price.scaled_schedule``.
  """
  if not hasattr(model, "max_passes"):
    raise ConfigError("adamw_compute_price steers an adaptive model: use adaptive_transformer")
  defaults = {
    k: p.default for k, p in inspect.signature(price_lib.compute_price).parameters.items()
  }
  args = {**defaults, **kwargs, "max_passes": model.max_passes}
  steps = price_lib.scaled_schedule(
    total_steps, reference_steps, **{k: args[k] for k in SCHEDULED_STEPS}
  )
  # Below ~20 steps "settled" would mean nothing: the settling window has a floor.
  steps["settle_steps"] = max(steps["settle_steps"], min(args["settle_steps"], 20))
  speedup = max(1.0, reference_steps / max(total_steps, 1))
  args.update(steps, dual_lr=args["dual_lr"] * speedup)
  return optax.chain(_adamw(cfg, learning_rate), price_lib.compute_price(**args))
