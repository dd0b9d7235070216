"""The one train step: model -> loss + telemetry -> regulators -> controls.

``make_train_step`` is generic over the model (any NNX module returning
``(logits, telemetry)``), the loss and the optax transform. Telemetry flows into
``tx.update(..., value=loss, grad_norm=..., **telemetry)`` so a new regulator plugs in
without touching the step; controls published by the regulators are read from the
optimizer state at the start of the next step, inside the jit. Evaluation reads the
regulators' *deployment* controls (no forced depth, no audit, no clamp).

``check_wiring`` runs once at setup, before anything compiles: every telemetry key a
regulator reads must be emitted by the model (or the step: ``value``, ``grad_norm``),
every control the model reads must be published by the regulator it names, and every
control a regulator publishes must be read — each failure is one line naming both sides.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from homeo_jax.models.losses import LossFn, lm_loss
from homeo_jax.regulators import base as regulators
from homeo_jax.training.config import ConfigError

STEP_TELEMETRY = ("value", "grad_norm")  # what the step itself passes to tx.update


class TrainState(NamedTuple):
  step: jax.Array  # shape=(), int32: optimizer steps taken
  params: Any  # nnx.State of the model's nnx.Param variables
  opt_state: Any
  rng: jax.Array  # PRNG key (uint32[2]); the step's dropout key is fold_in(rng, step)
  update_scale: jax.Array  # shape=(), float32: multiplies every update; a rollback lowers it


ApplyFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def functional_model(model: nnx.Module) -> tuple[ApplyFn, Any]:
  """Split an NNX module into a pure ``apply_fn(params, tokens, ...)`` and its params."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def apply_fn(params, tokens, *, controls=None, deterministic=True, rng=None):
    module = nnx.merge(graphdef, params, rest)
    rngs = None if rng is None else nnx.Rngs(dropout=rng)
    return module(tokens, controls=controls, deterministic=deterministic, rngs=rngs)

  return apply_fn, params


def init_train_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.key_data(jax.random.key(seed)),
    update_scale=jnp.ones((), jnp.float32),
  )


def pin_controls(
  controls: dict[str, dict[str, jax.Array]], pinned: Mapping[str, Mapping[str, float]] | None
) -> dict[str, dict[str, jax.Array]]:
  """``controls`` with each pinned ``{regulator: {control: value}}`` put in its place (in the
  dtype and shape the regulator publishes)."""
  if not pinned:
    return controls
  out = {name: dict(fields) for name, fields in controls.items()}
  for name, fields in pinned.items():
    for field, value in fields.items():
      like = out[name][field]
      out[name][field] = jnp.full(jnp.shape(like), value, jnp.asarray(like).dtype)
  return out


def _scalars(prefix: str, tree: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  return {f"{prefix}/{k}": v for k, v in tree.items() if jnp.ndim(v) == 0}


def make_train_step(
  apply_fn: ApplyFn,
  tx: optax.GradientTransformationExtraArgs,
  loss_fn: LossFn = lm_loss,
  *,
  guard_nonfinite: bool = True,
  pinned_controls: Mapping[str, Mapping[str, float]] | None = None,
):
  """``train_step(state, batch) -> (state, metrics)``; ``batch`` is int ``[B, T + 1]``.

  ``pinned_controls`` replace what the regulators publish (``pin_controls``).

  The update is scaled by ``state.update_scale`` (1 until a rollback lowers it). A step
  whose loss, gradient norm or new parameters are not finite is flagged in
  ``metrics["nonfinite"]`` — inside the jit, no host sync — and, with
  ``guard_nonfinite``, dropped: parameters and optimizer state stay as they were
  (``optax.apply_if_finite`` semantics over the whole state), so nothing non-finite ever
  enters the state or a checkpoint. The loop reads the flag one step late and applies the
  run's policy (``train.on_nonfinite``).
  """

  def train_step(state: TrainState, batch: jax.Array):
    inputs, targets = batch[:, :-1], batch[:, 1:]
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    controls = pin_controls(regulators.controls(state.opt_state), pinned_controls)

    def objective(params):
      logits, telemetry = apply_fn(
        params, inputs, controls=controls, deterministic=False, rng=dropout_rng
      )
      return loss_fn(logits, targets, telemetry)

    (loss, telemetry), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    with jax.named_scope("optimizer"):
      grad_norm = optax.tree.norm(grads)
      updates, opt_state = tx.update(
        grads, state.opt_state, state.params, value=loss, grad_norm=grad_norm, **telemetry
      )
      updates = jax.tree.map(lambda u: (u * state.update_scale).astype(u.dtype), updates)
      params = optax.apply_updates(state.params, updates)
    with jax.named_scope("nonfinite_guard"):
      param_norm = optax.tree.norm(params)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
      if guard_nonfinite:
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree.map(keep, params, state.params)
        opt_state = jax.tree.map(keep, opt_state, state.opt_state)
    metrics = {
      "loss": loss,
      "grads/norm": grad_norm,
      "params/norm": param_norm,
      "nonfinite": (~finite).astype(jnp.float32),
      **_scalars("telemetry", telemetry),
      **regulators.regulator_metrics(opt_state),
    }
    new_state = state._replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(
  apply_fn: ApplyFn,
  loss_fn: LossFn = lm_loss,
  pinned_controls: Mapping[str, Mapping[str, float]] | None = None,
):
  """``eval_step(params, opt_state, batch) -> mean cross entropy`` (deterministic, with
  the regulators' deployment controls, and the pinned ones)."""

  def eval_step(params, opt_state, batch):
    controls = pin_controls(regulators.controls(opt_state, deployment=True), pinned_controls)
    logits, telemetry = apply_fn(params, batch[:, :-1], controls=controls, deterministic=True)
    return loss_fn(logits, batch[:, 1:], telemetry)[1]["ce_loss"]

  return eval_step


def as_extra_args(tx: Any) -> optax.GradientTransformationExtraArgs:
  """``tx`` as a transform whose ``update`` takes telemetry as keyword arguments.

  ``optax.with_extra_args_support`` drops the extra args of anything that is not typed
  ``GradientTransformationExtraArgs``; ``optax.MultiSteps`` (and any transform whose
  ``update`` takes ``**kwargs``) forwards them, so it is kept as it is.
  """
  if isinstance(tx, optax.GradientTransformationExtraArgs):
    return tx
  update = getattr(tx, "update", None)
  if update is None or not callable(getattr(tx, "init", None)):
    raise TypeError(f"tx must be an optax transform with init and update, got {tx!r}")
  kinds = {p.kind for p in inspect.signature(update).parameters.values()}
  if inspect.Parameter.VAR_KEYWORD in kinds:
    return optax.GradientTransformationExtraArgs(tx.init, update)
  return optax.with_extra_args_support(tx)


def check_wiring(
  model: Any,
  apply_fn: ApplyFn,
  loss_fn: LossFn,
  tx: optax.GradientTransformation,
  params: Any,
  batch_shape: tuple[int, int],
  pinned_controls: Mapping[str, Mapping[str, float]] | None = None,
) -> None:
  """Match the regulators' declared telemetry and controls against the model's.

  Traces (never compiles) ``tx.init`` and the model's loss with ``jax.eval_shape``.
  Raises ``ConfigError`` with one line naming the regulator and the key.
  """
  opt_state = jax.eval_shape(tx.init, params)
  try:
    specs = regulators.regulator_specs(opt_state)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  model_name = type(model).__name__
  offered = {s.name: set(s.publishes) | set(s.offers) for s in specs}
  for regulator, fields in (pinned_controls or {}).items():
    for key in fields:
      if key not in offered.get(regulator, ()):
        have = sorted(f"{n}.{k}" for n, keys in offered.items() for k in keys)
        raise ConfigError(
          f"--set_control {regulator}.{key}: no regulator publishes it (published: "
          f"{', '.join(have) or 'none'})"
        )
  reads = tuple(getattr(model, "control_reads", tuple)())
  for regulator, key in reads:
    if key not in offered.get(regulator, ()):
      found = "no regulator has that name" if regulator not in offered else "it does not"
      raise ConfigError(
        f"model {model_name} reads control {key!r} from regulator {regulator!r}, but "
        f"{found} (regulators: {sorted(offered) or 'none'})"
      )
  for spec in specs:
    for key in spec.publishes:
      if (spec.name, key) not in reads:
        raise ConfigError(
          f"regulator {spec.name!r} ({spec.kind}) publishes control {key!r}, but model "
          f"{model_name} does not read it: name the regulator in the model config"
        )

  def telemetry_of(params, opt_state, tokens):
    controls = regulators.controls(opt_state)
    logits, telemetry = apply_fn(
      params, tokens[:, :-1], controls=controls, deterministic=False, rng=jax.random.key(0)
    )
    return loss_fn(logits, tokens[:, 1:], telemetry)[1]

  tokens = jax.ShapeDtypeStruct(batch_shape, jnp.int32)
  emitted = set(jax.eval_shape(telemetry_of, params, opt_state, tokens)) | set(STEP_TELEMETRY)
  for spec in specs:
    for key in spec.reads:
      if key not in emitted:
        raise ConfigError(
          f"regulator {spec.name!r} ({spec.kind}) reads telemetry {key!r}, which model "
          f"{model_name} does not emit"
        )
