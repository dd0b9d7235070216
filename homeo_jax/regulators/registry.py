"""Where optimizers and regulators plug into a run, by name.

A run's optimizer is named by its config (``optimizer.name``) and may be wrapped by any
number of regulators (``optimizer.regulators = {name: {kwarg: value}}``). Each module
registers what it provides, so the generic training layer names none of them:

    @register_optimizer("ars_adamw", ars_adamw)            # builder(ctx, **kwargs) -> tx
    def _build(ctx, **kwargs): ...

    @register_regulator("spike_guard", skip_spikes, order=100)  # wrap(inner, ctx, **kw)
    def _wrap(inner, ctx, **kwargs): ...

``ctx`` (``BuildContext``) carries what a builder may need from the run: the optimizer
config (lr, betas, eps, weight decay), the lr schedule, the parameter rules (weight-decay
mask, Muon's matrix view, parameter groups, query/key columns — passed down by the training
layer, since regulators never import models), the run length, the model config and the
device mesh. Keyword arguments from the config are forwarded to the builder and the
factories it names, and validated once against their signatures: an argument none of them
takes is a one-line error listing what they do take.

Regulators wrap the optimizer in ascending ``order`` (the smallest sits next to the
optimizer): spike-aware moments (10) read the inner Adam's second moment; the update-ratio
homeostat (20) scales the optimizer's update; the Fisher prox (50) projects it; QK-clip (90)
must see the final update, since it sets the new parameters exactly; the spike guard (100)
decides whether the step happens at all.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import optax

OptimizerBuilder = Callable[..., optax.GradientTransformation]
RegulatorWrapper = Callable[..., optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class ParamRules:
  """The parameter rule's functions of ``params`` (``models/roles.py`` provides them)."""

  weight_decay_mask: Callable[[Any], Any] | None = None  # True where decay applies
  muon_dimension_numbers: Callable[[Any], Any] | None = None  # Muon's matrix view, or None
  group_labels: Callable[[Any], Any] | None = None  # a role name per leaf
  group_names: tuple[str, ...] = ()  # every label group_labels can give
  organelle_labels: Callable[[Any], Any] | None = None  # the Thyroid's groups per leaf
  organelle_names: tuple[str, ...] = ()
  query_key_columns: Callable[[Any], Any] | None = None  # QK-clip's per-head columns


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What a builder may read from the run."""

  cfg: Any  # the optimizer section of the config (training.config.OptimizerConfig)
  learning_rate: optax.Schedule
  rules: ParamRules = ParamRules()
  total_steps: int = 1
  model: Any = None  # the model config (its shape: layers, heads, experts, passes)
  mesh: Any = None  # the device mesh when there is more than one device


@dataclasses.dataclass(frozen=True)
class Entry:
  build: Callable[..., optax.GradientTransformation]
  factories: tuple[Callable[..., Any], ...]
  order: int = 0
  supplied: tuple[str, ...] = ()  # factory arguments the builder fills from the context


OPTIMIZERS: dict[str, Entry] = {}
REGULATORS: dict[str, Entry] = {}
_RESERVED = ("ctx", "inner", "learning_rate")


def register_optimizer(
  name: str, *factories: Callable[..., Any]
) -> Callable[[OptimizerBuilder], OptimizerBuilder]:
  """Register ``builder(ctx, **kwargs)`` as optimizer ``name``; ``factories`` are what it
  forwards ``kwargs`` to (their arguments are valid ``optimizer.kwargs``)."""

  def decorator(builder: OptimizerBuilder) -> OptimizerBuilder:
    OPTIMIZERS[name] = Entry(builder, factories)
    return builder

  return decorator


def register_regulator(
  name: str, *factories: Callable[..., Any], order: int, supplied: tuple[str, ...] = ()
) -> Callable[[RegulatorWrapper], RegulatorWrapper]:
  """Register ``wrap(inner, ctx, **kwargs)`` as regulator ``name`` of ``optimizer.regulators``;
  ``order`` places it in the stack (smaller: nearer the optimizer); ``supplied`` names the
  factory arguments ``wrap`` fills from the context (not settable from a config)."""

  def decorator(wrap: RegulatorWrapper) -> RegulatorWrapper:
    REGULATORS[name] = Entry(wrap, factories, order, tuple(supplied))
    return wrap

  return decorator


def accepted_kwargs(entry: Entry) -> set[str]:
  """Every keyword the entry's builder or factories take (the reserved ones aside)."""
  keys: set[str] = set()
  for fn in (entry.build, *entry.factories):
    keys |= {
      p.name
      for p in inspect.signature(fn).parameters.values()
      if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
  return keys - set(_RESERVED) - set(entry.supplied)


def check_optimizer_config(name: str, kwargs: Mapping, regulators: Mapping) -> None:
  """One ``ValueError`` line for an unknown optimizer or regulator name or keyword."""
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
  _check_keys(f"optimizer {name!r}", "optimizer.kwargs", kwargs, OPTIMIZERS[name])
  for reg, reg_kwargs in regulators.items():
    if reg not in REGULATORS:
      raise ValueError(
        f"optimizer.regulators.{reg} is not a registered regulator (one of {sorted(REGULATORS)})"
      )
    if not isinstance(reg_kwargs, Mapping):
      raise ValueError(
        f"optimizer.regulators.{reg} must be a dict of its arguments, got {reg_kwargs!r}"
      )
    _check_keys(f"regulator {reg!r}", f"optimizer.regulators.{reg}", reg_kwargs, REGULATORS[reg])


def _check_keys(what: str, prefix: str, kwargs: Mapping, entry: Entry) -> None:
  accepted = accepted_kwargs(entry)
  for key in kwargs:
    if key not in accepted:
      raise ValueError(
        f"{prefix}.{key} is not an argument of {what} (it takes: {', '.join(sorted(accepted))})"
      )


def build(
  ctx: BuildContext, name: str, kwargs: Mapping, regulators: Mapping, grad_clip: float = 0.0
) -> optax.GradientTransformationExtraArgs:
  """Optimizer ``name`` (after global-norm clipping at ``grad_clip`` > 0), wrapped by
  ``regulators`` in their registered order. A builder's ``ValueError``/``TypeError`` comes
  back as one ``ValueError`` line naming the optimizer or regulator."""
  check_optimizer_config(name, kwargs, regulators)
  try:
    tx = OPTIMIZERS[name].build(ctx, **kwargs)
  except (ValueError, TypeError) as e:
    raise ValueError(f"optimizer {name!r}: {e}") from None
  if grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  for reg in sorted(regulators, key=lambda r: REGULATORS[r].order):
    try:
      tx = REGULATORS[reg].build(tx, ctx, **regulators[reg])
    except (ValueError, TypeError) as e:
      raise ValueError(f"optimizer.regulators.{reg}: {e}") from None
  return optax.with_extra_args_support(tx)


def adamw_args(ctx: BuildContext) -> dict[str, Any]:
  """The config's AdamW arguments, weight decay masked by the parameter rule."""
  cfg = ctx.cfg
  return dict(
    b1=cfg.b1,
    b2=cfg.b2,
    eps=cfg.eps,
    weight_decay=cfg.weight_decay,
    mask=ctx.rules.weight_decay_mask,
  )


def adamw(ctx: BuildContext, **kwargs) -> optax.GradientTransformation:
  """AdamW at the run's schedule with the config's betas, eps and masked decay."""
  return optax.adamw(ctx.learning_rate, **{**adamw_args(ctx), **kwargs})


@register_optimizer("adamw", optax.adamw)
def _adamw(ctx: BuildContext, **kwargs) -> optax.GradientTransformation:
  return adamw(ctx, **kwargs)


@register_optimizer("adam", optax.adam)
def _adam(ctx: BuildContext, **kwargs) -> optax.GradientTransformation:
  cfg = ctx.cfg
  return optax.adam(ctx.learning_rate, **{"b1": cfg.b1, "b2": cfg.b2, "eps": cfg.eps, **kwargs})


@register_optimizer("sgd", optax.sgd)
def _sgd(ctx: BuildContext, **kwargs) -> optax.GradientTransformation:
  return optax.sgd(ctx.learning_rate, **{"momentum": ctx.cfg.b1 or None, **kwargs})


def muon_args(ctx: BuildContext, muon_learning_rate: float) -> dict[str, Any]:
  """Muon's lr on the config's schedule shape; AdamW (config lr, betas) off the matrices."""
  cfg, schedule = ctx.cfg, ctx.learning_rate
  factor = muon_learning_rate / cfg.learning_rate
  return dict(
    learning_rate=lambda step: schedule(step) * factor,
    weight_decay=cfg.weight_decay,
    adam_b1=cfg.b1,
    adam_b2=cfg.b2,
    adam_learning_rate=schedule,
    muon_weight_dimension_numbers=ctx.rules.muon_dimension_numbers,
  )


@register_optimizer("optax_muon", optax.contrib.muon)
def _optax_muon(ctx: BuildContext, muon_learning_rate: float = 0.02, **kwargs):
  """``optax.contrib.muon`` with the same split as ``ord_muon``, for comparisons."""
  return optax.contrib.muon(**{**muon_args(ctx, muon_learning_rate), **kwargs})


def moe_shape(ctx: BuildContext) -> tuple[int, int, int]:
  """(layers, experts, width) of a mixture-of-experts model config."""
  moe = getattr(ctx.model, "moe", None)
  if moe is None:
    raise ValueError("this optimizer balances MoE load: use model_type=moe_transformer")
  return ctx.model.num_layers, moe.num_experts, ctx.model.d_model
