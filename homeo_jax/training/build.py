"""The one run assembly: data → model → loss → optimizer → state → jitted steps.

    parts = assemble(config, data)                  # concrete: a model to train
    parts = assemble(config, data, abstract=True)   # shapes only: planning, lowering
    run = compile_steps(parts, config)              # jitted steps on the config's mesh

``setup(config, data)`` does both. The training loop, a finished run read back
(``training/trained.py``) and the planner (``homeo_jax/plan.py``) all build here, so a run is
assembled one way: the model of ``config.model_type`` (or one given), its loss (the model's
own objective, plus z-loss), the config's optimizer with its regulators (or a given optax
transform), the wiring check between the regulators and the model, the initial
``TrainState``, and, on a mesh, every leaf laid out by the one sharding rule.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

import jax
import optax
from flax import nnx

from homeo_jax.data import TextData, load_text_data
from homeo_jax.models import MODEL_TYPES
from homeo_jax.models.losses import LossFn, lm_loss, with_z_loss
from homeo_jax.training import config as config_lib
from homeo_jax.training import sharding as sharding_lib
from homeo_jax.training.optimizers import build_optimizer, learning_rate_schedule
from homeo_jax.training.step import (
  as_extra_args,
  check_wiring,
  functional_model,
  init_train_state,
  make_eval_step,
  make_train_step,
)


def hardware_description() -> str:
  device = jax.devices()[0]
  desc = (
    f"{jax.device_count()}x {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}"
  )
  if jax.default_backend() == "cpu":
    desc += f", {os.cpu_count()} CPU cores"
  return desc


def load_data(config: config_lib.Config) -> TextData:
  """The config's corpus, tokenized; an empty or unreadable one is a one-line ConfigError."""
  d = config.data
  try:
    return load_text_data(
      d.corpus,
      tokenizer=d.tokenizer,
      val_fraction=d.val_fraction,
      bpe_vocab_size=d.bpe_vocab_size,
      max_chars=d.max_chars or None,
    )
  except (OSError, ValueError, UnicodeError) as e:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
    raise config_lib.ConfigError(f"data.corpus={d.corpus!r} cannot be used: {reason}") from None


def check_data_fits(config: config_lib.Config, data: TextData) -> None:
  """Each split must hold one window of seq_len + 1 tokens (a batch row)."""
  for split, tokens in (("training", data.train_tokens), ("validation", data.val_tokens)):
    if len(tokens) <= config.data.seq_len:
      raise config_lib.ConfigError(
        f"data.corpus={config.data.corpus!r} has {len(tokens)} {split} tokens, fewer than "
        f"one batch row of data.seq_len + 1 = {config.data.seq_len + 1}"
      )


def model_config(config: config_lib.Config, vocab_size: int):
  """``config.model`` with the vocabulary size filled in from the tokenizer."""
  if config.model.vocab_size == 0:
    return dataclasses.replace(config.model, vocab_size=vocab_size)
  return config.model


def build_model(
  config: config_lib.Config, vocab_size: int, token_strings: list[str] | None = None
) -> nnx.Module:
  """The configured model; one that takes ``token_strings`` (the hybrid Fourier
  embedding) gets the tokenizer's."""
  cls = MODEL_TYPES[config.model_type]
  extra = {}
  if token_strings is not None and "token_strings" in inspect.signature(cls.__init__).parameters:
    extra["token_strings"] = token_strings
  return cls(model_config(config, vocab_size), rngs=nnx.Rngs(params=config.train.seed), **extra)


def build_mesh(config: config_lib.Config):
  """The config's device mesh, or None on one device (the unsharded path)."""
  try:
    mesh = sharding_lib.make_mesh(config.mesh)
  except ValueError as e:
    raise config_lib.ConfigError(f"mesh: {e}") from None
  if mesh.size == 1:
    return None
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.data.batch_size % rows:
    raise config_lib.ConfigError(
      f"data.batch_size={config.data.batch_size} does not split over mesh data×fsdp={rows}"
    )
  return mesh


@dataclasses.dataclass
class Parts:
  """A run's pieces before compilation (abstract: shapes, no buffers)."""

  model: nnx.Module  # the NNX module (abstract when ``abstract``)
  graphdef: Any  # the module's structure
  rest: Any  # its non-parameter variables (buffers, rng counters)
  apply_fn: Any  # pure (params, tokens, ...) -> (logits, telemetry)
  loss_fn: LossFn
  tx: optax.GradientTransformationExtraArgs
  state: Any  # the initial TrainState (jax.ShapeDtypeStruct leaves when abstract)
  mesh: Any  # the device mesh, None on one device
  lr_schedule: Any  # the config's learning-rate schedule, None for a user's tx
  pinned_controls: dict  # {regulator: {control: value}} the model reads instead


def assemble(
  config: config_lib.Config,
  data: TextData,
  *,
  tx: optax.GradientTransformation | None = None,
  model: nnx.Module | None = None,
  loss_fn: LossFn | None = None,
  abstract: bool = False,
  check: bool = True,
) -> Parts:
  """The model, loss, optimizer and initial state of ``config`` (see the module docstring).

  ``abstract`` builds shapes only (``nnx.eval_shape``, ``jax.eval_shape``); ``check`` runs
  the regulator ↔ model wiring check (traced, never compiled) before anything compiles.
  """
  t = config.train
  if model is None:
    build = lambda: build_model(config, data.vocab_size, data.tokenizer.token_strings)  # noqa: E731
    model = nnx.eval_shape(build) if abstract else build()
  if loss_fn is None:  # a model may define its own objective (the adaptive LM's ponder cost)
    loss_fn = getattr(model, "loss_fn", lm_loss)
  if t.z_loss > 0:
    loss_fn = with_z_loss(loss_fn, t.z_loss)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  apply_fn = None if abstract else functional_model(model)[0]
  mesh = None if abstract else build_mesh(config)
  lr_schedule = None
  if tx is None:
    tx = build_optimizer(
      config.optimizer, t.steps, model=model_config(config, data.vocab_size), mesh=mesh
    )
    lr_schedule = learning_rate_schedule(config.optimizer, t.steps)
  tx = as_extra_args(tx)
  pinned = t.pinned_controls
  if check and not abstract:
    batch_shape = (config.data.batch_size, config.data.seq_len + 1)
    check_wiring(model, apply_fn, loss_fn, tx, params, batch_shape, pinned)
  if abstract:
    state = jax.eval_shape(lambda p: init_train_state(p, tx, t.seed), params)
  else:
    state = init_train_state(params, tx, t.seed)
  return Parts(model, graphdef, rest, apply_fn, loss_fn, tx, state, mesh, lr_schedule, pinned)


@dataclasses.dataclass
class Setup:
  """What a run compiles and starts from: the one place the mesh is applied."""

  state: Any  # TrainState, sharded when there is a mesh
  train_step: Any  # jitted (state, batch) -> (state, metrics), state donated
  eval_step: Any  # jitted (params, opt_state, batch) -> mean cross entropy
  put: Any  # host batch -> device batch (sharded over data × fsdp on a mesh)
  lr_schedule: Any  # the config's learning-rate schedule, None for a user's tx
  model: Any = None  # the NNX module whose parameters the state holds


def compile_steps(parts: Parts) -> Setup:
  """The jitted train and eval steps of ``parts`` (concrete), on its mesh if it has one."""
  pinned = parts.pinned_controls
  step_fn = make_train_step(parts.apply_fn, parts.tx, parts.loss_fn, pinned_controls=pinned)
  eval_fn = make_eval_step(parts.apply_fn, parts.loss_fn, pinned)
  mesh, state = parts.mesh, parts.state
  if mesh is None:
    return Setup(
      state=state,
      train_step=jax.jit(step_fn, donate_argnums=0),
      eval_step=jax.jit(eval_fn),
      put=lambda batch: batch,
      lr_schedule=parts.lr_schedule,
      model=parts.model,
    )
  # Every leaf is laid out by the one rule; a restore into this state reshards onto it.
  shardings = sharding_lib.state_shardings(state, mesh)
  batch = sharding_lib.batch_sharding(mesh)
  return Setup(
    state=jax.device_put(state, shardings),
    train_step=jax.jit(
      step_fn, in_shardings=(shardings, batch), out_shardings=(shardings, None), donate_argnums=0
    ),
    eval_step=jax.jit(eval_fn, in_shardings=(shardings.params, shardings.opt_state, batch)),
    put=lambda b: sharding_lib.global_batch(b, mesh),
    lr_schedule=parts.lr_schedule,
    model=parts.model,
  )


def setup(
  config: config_lib.Config,
  data: TextData,
  *,
  tx: optax.GradientTransformation | None = None,
  model: nnx.Module | None = None,
  loss_fn: LossFn | None = None,
) -> Setup:
  """Build the model, optimizer and initial state and jit the steps, on the config's mesh."""
  return compile_steps(assemble(config, data, tx=tx, model=model, loss_fn=loss_fn))
