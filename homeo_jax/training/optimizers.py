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
from typing import Any

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
  cfg: OptimizerConfig, total_steps: int, model: Any = None, mesh: Any = None
) -> optax.GradientTransformationExtraArgs:
  """The optimizer ``cfg`` names. Builders with a ``model`` (``total_steps``, ``mesh``)
  parameter receive the model config (the run length, the device mesh when there is
  more than one device): regulators that steer the model need its shape."""
  if cfg.name not in OPTIMIZERS:
    raise ConfigError(f"optimizer.name must be one of {sorted(OPTIMIZERS)}, got {cfg.name!r}")
  builder = OPTIMIZERS[cfg.name]
  accepted = inspect.signature(builder).parameters
  reserved = ("cfg", "learning_rate", "model", "total_steps", "mesh")
  for key in cfg.kwargs:
    if key not in accepted or key in reserved:
      raise ConfigError(f"optimizer.kwargs.{key} is not an argument of optimizer {cfg.name!r}")
  context = {"model": model, "total_steps": total_steps, "mesh": mesh}
  extra = {k: v for k, v in context.items() if k in accepted}
  tx = builder(cfg, learning_rate_schedule(cfg, total_steps), **extra, **cfg.kwargs)
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


def hidden_matrices(params):
  """Muon dimension numbers for 2-D leaves outside the embeddings; None (AdamW) elsewhere.

  Embedding tables and 1-D gains go to AdamW, as in modded-nanogpt.
  """
  from optax.contrib import MuonDimensionNumbers

  def rule(path, x):
    is_embedding = "embed" in jax.tree_util.keystr(path)
    return MuonDimensionNumbers() if x.ndim == 2 and not is_embedding else None

  return jax.tree_util.tree_map_with_path(rule, params)


def _rescaled(schedule: optax.Schedule, factor: float) -> optax.Schedule:
  """The same schedule shape at another peak (Muon's lr on the config's warm-up/decay)."""
  return lambda step: schedule(step) * factor


@register_optimizer("ord_muon")
def _ord_muon(
  cfg: OptimizerConfig,
  learning_rate,
  spectral_lr: float = 0.0,
  project_radial: bool = False,
  muon_learning_rate: float = 0.02,
  ns_coeffs: str = "standard",
  compute_dtype: str = "float32",
  mesh=None,
) -> optax.GradientTransformation:
  """ORD-Muon on hidden matrices (lr ``muon_learning_rate`` on the config's schedule shape),
  AdamW at ``learning_rate`` on embeddings and gains. ``spectral_lr=0`` is Muon. On a
  mesh the same-shape stacks are sharded along the stack axis."""
  from homeo_jax.models.layers import DTYPES
  from homeo_jax.regulators.ord_muon import ord_muon

  return ord_muon(
    _rescaled(learning_rate, muon_learning_rate / cfg.learning_rate),
    spectral_lr=spectral_lr,
    project_radial=project_radial,
    ns_coeffs=ns_coeffs,
    compute_dtype=DTYPES[compute_dtype],
    weight_decay=cfg.weight_decay,
    adam_b1=cfg.b1,
    adam_b2=cfg.b2,
    adam_learning_rate=learning_rate,
    muon_weight_dimension_numbers=hidden_matrices,
    stack_mesh=mesh,
  )


@register_optimizer("optax_muon")
def _optax_muon(cfg: OptimizerConfig, learning_rate, muon_learning_rate: float = 0.02):
  """``optax.contrib.muon`` with the same split as ``ord_muon``, for comparisons."""
  return optax.contrib.muon(
    _rescaled(learning_rate, muon_learning_rate / cfg.learning_rate),
    weight_decay=cfg.weight_decay,
    adam_b1=cfg.b1,
    adam_b2=cfg.b2,
    adam_learning_rate=learning_rate,
    muon_weight_dimension_numbers=hidden_matrices,
  )


@register_optimizer("ars_adamw")
def _ars_adamw(
  cfg: OptimizerConfig,
  learning_rate,
  window: int = 100,
  alpha: float = 1.0,
  phi_min: float = 0.1,
  jitter_scale: float = 0.1,
  guard: bool = True,
  jitter: bool = True,
  seed: int = 0,
  surprise: str = "raw",
  surprise_key: str = "value",
) -> optax.GradientTransformation:
  """AdamW under ARS with the config's lr schedule, betas, eps and decay mask."""
  from homeo_jax.regulators.ars import ars_adamw

  return ars_adamw(
    learning_rate,
    b1=cfg.b1,
    b2=cfg.b2,
    eps=cfg.eps,
    weight_decay=cfg.weight_decay,
    window=window,
    alpha=alpha,
    phi_min=phi_min,
    jitter_scale=jitter_scale,
    guard=guard,
    jitter=jitter,
    seed=seed,
    surprise=surprise,
    surprise_key=surprise_key,
    mask=matrix_mask,
  )


def _moe_shape(model) -> tuple[int, int, int]:
  moe = getattr(model, "moe", None)
  if moe is None:
    raise ConfigError("this optimizer balances MoE load: use model_type=moe_transformer")
  return model.num_layers, moe.num_experts, model.d_model


@register_optimizer("adamw_deepseek")
def _adamw_deepseek(cfg: OptimizerConfig, learning_rate, model, update_rate: float = 1e-3):
  """AdamW + DeepSeek's auxiliary-loss-free selection bias (router="deepseek")."""
  from homeo_jax.regulators.load_balance import deepseek_balancer

  layers, experts, _ = _moe_shape(model)
  return optax.chain(
    _adamw(cfg, learning_rate), deepseek_balancer(layers, experts, update_rate=update_rate)
  )


@register_optimizer("adamw_spechorn")
def _adamw_spechorn(
  cfg: OptimizerConfig,
  learning_rate,
  model,
  total_steps: int,
  schedule: bool = True,
  orthogonality: bool = True,
  bias_scale: float = 8.0,
  cap_penalty_scale: float = 15.0,
  ortho_scale: float = 0.4,
  spec_update_every: int = 16,
):
  """AdamW + the SpecHorn load regulator and CV scheduler (router="spechorn")."""
  from homeo_jax.regulators.load_balance import spechorn_balancer

  layers, experts, d_model = _moe_shape(model)
  return optax.chain(
    _adamw(cfg, learning_rate),
    spechorn_balancer(
      layers,
      experts,
      d_model,
      total_steps=total_steps,
      schedule=schedule,
      orthogonality=orthogonality,
      bias_scale=bias_scale,
      cap_penalty_scale=cap_penalty_scale,
      ortho_scale=ortho_scale,
      spec_update_every=spec_update_every,
    ),
  )


ORGANELLES = ("embed", "attention", "mlp", "other")


def organelle_labels(params):
  """Per-group labels for the Thyroid's v0.3: embeddings, attention, MLP, the rest."""

  def label(path, _):
    name = jax.tree_util.keystr(path)
    for organelle, key in (("embed", "embed"), ("attention", "attn"), ("mlp", "mlp")):
      if key in name:
        return organelle
    return "other"

  return jax.tree_util.tree_map_with_path(label, params)


@register_optimizer("thyroid_adamw")
def _thyroid_adamw(
  cfg: OptimizerConfig,
  learning_rate,
  version: str = "alpha_lambda_tau",
  weights: str = "shipped",
  update_every: int = 10,
) -> optax.GradientTransformation:
  """AdamW steered by the Spectral Thyroid (``version="per_group"``: organelle groups)."""
  from homeo_jax.regulators.thyroid import thyroid

  common = dict(
    version=version, weights=weights, update_every=update_every, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps
  )
  if version == "per_group":
    return thyroid(
      optax.adamw,
      learning_rate,
      cfg.weight_decay,
      group_labels=organelle_labels,
      group_names=ORGANELLES,
      **common,
    )
  return thyroid(
    optax.adamw, learning_rate, cfg.weight_decay, static_args=("mask",), mask=matrix_mask, **common
  )


@register_optimizer("adamw_compute_price")
def _adamw_compute_price(
  cfg: OptimizerConfig,
  learning_rate,
  model,
  total_steps: int,
  target_k: float = 1.30,
  dual_lr: float = 5e-5,
  price_min: float = 1e-4,
  price_max: float = 5e-2,
  warmup_steps: int = 800,
  ponder_start: int = 1200,
  clamp_until: int = 4000,
  audit_start: int = 1200,
  audit_prob: float = 0.05,
  settle_steps: int = 100,
  reference_steps: int = 10_000,
  fixed_price: float | None = None,
  seed: int = 0,
):
  """AdamW + the Ouro-Spec compute price (model_type=adaptive_transformer).

  The step counts are the seed's; runs shorter than ``reference_steps`` scale them (and
  raise ``dual_lr`` by the same factor, so λ_p can cross its range in the same fraction
  of the run): see ``compute_price.scaled_schedule``.
  """
  from homeo_jax.regulators.compute_price import compute_price, scaled_schedule

  if not hasattr(model, "max_passes"):
    raise ConfigError("adamw_compute_price steers an adaptive model: use adaptive_transformer")
  steps = scaled_schedule(
    total_steps,
    reference_steps,
    warmup_steps=warmup_steps,
    ponder_start=ponder_start,
    clamp_until=clamp_until,
    audit_start=audit_start,
    settle_steps=settle_steps,
  )
  # Below ~20 steps "settled" would mean nothing: the settling window has a floor.
  steps["settle_steps"] = max(steps["settle_steps"], min(settle_steps, 20))
  speedup = max(1.0, reference_steps / max(total_steps, 1))
  try:
    controller = compute_price(
      max_passes=model.max_passes,
      target_k=target_k,
      dual_lr=dual_lr * speedup,
      price_min=price_min,
      price_max=price_max,
      audit_prob=audit_prob,
      fixed_price=fixed_price,
      seed=seed,
      **steps,
    )
  except ValueError as e:
    raise ConfigError(f"optimizer.kwargs: {e}") from None
  return optax.chain(_adamw(cfg, learning_rate), controller)
