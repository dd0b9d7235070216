"""The one train step: model -> loss + telemetry -> regulators -> controls.

``make_train_step`` is generic over the model (any NNX module returning
``(logits, telemetry)``), the loss and the optax transform. Telemetry flows into
``tx.update(..., value=loss, grad_norm=..., **telemetry)`` so a new regulator plugs in
without touching the step; controls published by the regulators are read from the
optimizer state at the start of the next step, inside the jit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from homeo_jax.regulators import base as regulators


class TrainState(NamedTuple):
  step: jax.Array  # shape=(), int32: optimizer steps taken
  params: Any  # nnx.State of the model's nnx.Param variables
  opt_state: Any
  rng: jax.Array  # PRNG key (uint32[2]); the step's dropout key is fold_in(rng, step)


ApplyFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
LossFn = Callable[[jax.Array, jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, dict]]


def functional_model(model: nnx.Module) -> tuple[ApplyFn, Any]:
  """Split an NNX module into a pure ``apply_fn(params, tokens, ...)`` and its params."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def apply_fn(params, tokens, *, controls=None, deterministic=True, rng=None):
    module = nnx.merge(graphdef, params, rest)
    rngs = None if rng is None else nnx.Rngs(dropout=rng)
    return module(tokens, controls=controls, deterministic=deterministic, rngs=rngs)

  return apply_fn, params


def lm_loss(logits, targets, telemetry):
  """Next-token cross entropy (+ ``telemetry["aux_loss"]`` when a model adds one)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  loss = ce + telemetry.get("aux_loss", 0.0)
  return loss, {**telemetry, "ce_loss": ce}


def init_train_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.key_data(jax.random.key(seed)),
  )


def _scalars(prefix: str, tree: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  return {f"{prefix}/{k}": v for k, v in tree.items() if jnp.ndim(v) == 0}


def make_train_step(
  apply_fn: ApplyFn, tx: optax.GradientTransformationExtraArgs, loss_fn: LossFn = lm_loss
):
  """``train_step(state, batch) -> (state, metrics)``; ``batch`` is int ``[B, T + 1]``."""

  def train_step(state: TrainState, batch: jax.Array):
    inputs, targets = batch[:, :-1], batch[:, 1:]
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    controls = regulators.controls(state.opt_state)

    def objective(params):
      logits, telemetry = apply_fn(
        params, inputs, controls=controls, deterministic=False, rng=dropout_rng
      )
      return loss_fn(logits, targets, telemetry)

    (loss, telemetry), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(
      grads, state.opt_state, state.params, value=loss, grad_norm=grad_norm, **telemetry
    )
    params = optax.apply_updates(state.params, updates)
    metrics = {
      "loss": loss,
      "grads/norm": grad_norm,
      "params/norm": optax.tree.norm(params),
      **_scalars("telemetry", telemetry),
      **regulators.regulator_metrics(opt_state),
    }
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng)
    return new_state, metrics

  return train_step


def make_eval_step(apply_fn: ApplyFn, loss_fn: LossFn = lm_loss):
  """``eval_step(params, opt_state, batch) -> mean cross entropy`` (deterministic)."""

  def eval_step(params, opt_state, batch):
    controls = regulators.controls(opt_state)
    logits, telemetry = apply_fn(params, batch[:, :-1], controls=controls, deterministic=True)
    return loss_fn(logits, batch[:, 1:], telemetry)[1]["ce_loss"]

  return eval_step
