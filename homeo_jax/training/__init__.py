"""One train step, one loop: jit, checkpoints, pause/resume, metrics and reports."""

from homeo_jax.training.checkpoint import Checkpointer as Checkpointer
from homeo_jax.training.checkpoint import CheckpointError as CheckpointError
from homeo_jax.training.config import Config as Config
from homeo_jax.training.config import ConfigError as ConfigError
from homeo_jax.training.config import DataConfig as DataConfig
from homeo_jax.training.config import OptimizerConfig as OptimizerConfig
from homeo_jax.training.config import TrainConfig as TrainConfig
from homeo_jax.training.config import apply_overrides as apply_overrides
from homeo_jax.training.config import load_config as load_config
from homeo_jax.training.config import validate_config as validate_config
from homeo_jax.training.loop import NonFiniteError as NonFiniteError
from homeo_jax.training.loop import RunResult as RunResult
from homeo_jax.training.loop import train as train
from homeo_jax.training.optimizers import build_optimizer as build_optimizer
from homeo_jax.training.optimizers import register_optimizer as register_optimizer
from homeo_jax.training.step import TrainState as TrainState
from homeo_jax.training.step import as_extra_args as as_extra_args
from homeo_jax.training.step import check_wiring as check_wiring
from homeo_jax.training.step import functional_model as functional_model
from homeo_jax.training.step import make_train_step as make_train_step
