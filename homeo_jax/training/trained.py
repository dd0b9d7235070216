"""A finished (or paused) run folder read back for use: its config, tokenizer and the model
with the newest readable checkpoint's parameters, plus the regulators' deployment controls.

What ``homeo_jax.sample`` and ``homeo_jax.evaluate`` start from. Reading never changes
the folder (an unreadable newer checkpoint is reported and skipped, not moved).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from flax import nnx

from homeo_jax import regulators
from homeo_jax.data import TextData
from homeo_jax.training import config as config_lib
from homeo_jax.training.checkpoint import Checkpointer, CheckpointError


class RunFolderError(ValueError):
  """A run folder cannot be used; the message names the path and what is wrong."""


@dataclasses.dataclass
class TrainedRun:
  run_dir: Path
  config: config_lib.Config
  data: TextData  # the run's corpus and tokenizer
  model: nnx.Module  # holding the checkpoint's parameters
  state: Any  # the restored TrainState
  controls: dict  # the regulators' deployment controls

  @property
  def step(self) -> int:
    return int(self.state.step)


def read_config(run_dir: str | os.PathLike) -> config_lib.Config:
  path = Path(run_dir) / "config.json"
  if not Path(run_dir).is_dir():
    raise RunFolderError(f"{run_dir}: no such run folder")
  try:
    return config_lib.from_json(path.read_text())
  except OSError as e:
    raise RunFolderError(f"{path}: cannot be read ({e.strerror}); not a run folder?") from None
  except (json.JSONDecodeError, TypeError, config_lib.ConfigError) as e:
    raise RunFolderError(f"{path}: not a homeo_jax config ({str(e).splitlines()[0]})") from None


def restore_state(
  config: config_lib.Config, data: TextData, *, quarantine: bool = True
) -> tuple[nnx.Module, Any]:
  """The config's model and the newest readable checkpoint of its run folder, as
  (model with the restored parameters, TrainState)."""
  from homeo_jax.training.build import assemble

  parts = assemble(config, data, check=False)
  model, like = parts.model, parts.state
  folder = Path(config.train.run_dir) / "checkpoints"
  if not folder.is_dir():
    raise RunFolderError(f"{folder}: no such folder, the run saved no checkpoint")
  try:
    restored = Checkpointer(folder).restore_latest(like, quarantine=quarantine)
  except CheckpointError as e:
    raise RunFolderError(f"{folder}: {str(e).splitlines()[0]}") from None
  if restored is None:
    raise RunFolderError(f"{folder}: holds no checkpoint")
  state = restored[0]
  nnx.update(model, state.params)
  return model, state


def load_run(run_dir: str | os.PathLike) -> TrainedRun:
  """Read ``run_dir`` for use (see the module docstring); bad input is a one-line
  ``RunFolderError`` (or ``ConfigError`` for an unusable corpus)."""
  from homeo_jax.training.build import load_data

  config = read_config(run_dir)
  config = dataclasses.replace(
    config, train=dataclasses.replace(config.train, run_dir=str(run_dir))
  )
  data = load_data(config)
  model, state = restore_state(config, data, quarantine=False)
  controls = regulators.controls(state.opt_state, deployment=True)
  return TrainedRun(Path(run_dir), config, data, model, state, controls)
