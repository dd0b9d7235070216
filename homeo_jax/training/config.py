"""Experiment configuration: small dataclasses, Python config files, ``--set`` overrides.

A config file in ``configs/`` defines ``get_config(arg: str | None) -> Config``; ``arg``
selects a preset (``--config configs/shakespeare_char.py:cpu``). Overrides such as
``--set optimizer.learning_rate=3e-4`` are parsed by the type of the field they replace.
Every check runs here, before data is tokenized or anything is compiled, and fails
with a one-line ``ConfigError`` naming the key.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import sys
import typing
from pathlib import Path
from typing import Any

from homeo_jax.data import corpora
from homeo_jax.data import tokenizers as tokenizers_lib
from homeo_jax.models.layers import TransformerConfig
from homeo_jax.training.sharding import MeshConfig

SCHEDULES = ("cosine", "constant", "stages")


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the key."""


NONFINITE_POLICIES = ("rollback", "skip", "stop")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  corpus: str = corpora.SHAKESPEARE  # a built-in name or a path to a file/folder
  tokenizer: str = tokenizers_lib.CHAR
  bpe_vocab_size: int = 2048
  val_fraction: float = 0.1
  max_chars: int = 0  # 0: the whole corpus
  seq_len: int = 256
  batch_size: int = 64
  seed: int = 0
  # Staged batch: stage s reads batch_multipliers[s] × batch_size sequences per step over
  # equal stages of the scheduled steps (training/stages.py); () keeps batch_size.
  batch_multipliers: tuple = ()


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adamw"
  learning_rate: float = 1e-3
  # "cosine" (warm-up then cosine to min), "constant", or "stages" (training/stages.py:
  # stage_lr_multipliers over equal stages, linear cooldown to min over cooldown_fraction)
  schedule: str = "cosine"
  min_learning_rate: float = 1e-4
  warmup_steps: int = 100
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-8
  weight_decay: float = 0.1
  grad_clip: float = 1.0  # 0 disables global-norm clipping
  # Regulators wrapping the optimizer, by registered name, with their arguments
  # (regulators/registry.py): {"qk_clip": {"threshold": 100.0}, "spike_guard": {}}.
  regulators: dict = dataclasses.field(default_factory=dict)
  stage_lr_multipliers: tuple = ()  # schedule="stages": one multiplier per stage
  cooldown_fraction: float = 0.55  # schedule="stages": of the scheduled steps
  extension_steps: int = 0  # schedule="stages": steps after the schedule, at the floor lr
  kwargs: dict = dataclasses.field(default_factory=dict)  # optimizer-specific arguments


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 5000
  eval_every: int = 250
  eval_batches: int = 20
  log_every: int = 10
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  seed: int = 0
  run_dir: str = "runs/default"
  progress: bool = True
  log_format: str = "default"  # console lines: "default" or "ouro" (training/console.py)
  # A non-finite loss, gradient or update (training/loop.py): "rollback" to the newest
  # checkpoint with the update scaled by rollback_lr_scale and the offending data skipped,
  # "skip" the update, or "stop" with an error. The update never enters the state.
  on_nonfinite: str = "rollback"
  rollback_lr_scale: float = 0.5
  max_rollbacks: int = 3
  max_consecutive_skips: int = 20  # "skip": a run that only skips stops
  tensorboard: bool = True  # event files in <run_dir>/tensorboard beside metrics.jsonl
  # Text generated with the current parameters every sample_every steps (0: never), into
  # metrics.jsonl, TensorBoard, the console and the report (models/decode.py).
  # > 0 adds z_loss · mean(logsumexp(logits)²) to the loss (models/losses.py:with_z_loss).
  z_loss: float = 0.0
  # {regulator name: {control: value}}: the model reads these values instead of what the
  # regulator publishes, in training and evaluation alike (--set_control NAME.FIELD=VALUE).
  pinned_controls: dict = dataclasses.field(default_factory=dict)
  sample_every: int = 0
  sample_tokens: int = 200
  sample_prompt: str = "\n"
  sample_temperature: float = 0.8
  sample_top_k: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
  name: str = "default"
  model_type: str = "transformer"
  model: TransformerConfig = TransformerConfig(vocab_size=0)  # vocab 0: from the tokenizer
  data: DataConfig = DataConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()  # data/fsdp/expert axis sizes (training/sharding.py)


def _import_config_package(directory: Path) -> None:
  """Make a config folder that is a package (``configs/__init__.py``) importable by its
  name, so its presets can share modules (``from configs import base``) from any working
  directory, without touching ``sys.path``."""
  name = directory.name
  if not (directory / "__init__.py").is_file() or not name.isidentifier():
    return
  if name in sys.modules:  # imported already (this folder, or another package of that name)
    return
  spec = importlib.util.spec_from_file_location(
    name, directory / "__init__.py", submodule_search_locations=[str(directory)]
  )
  package = importlib.util.module_from_spec(spec)
  sys.modules[name] = package
  spec.loader.exec_module(package)


def load_config(spec: str) -> Config:
  """Load ``path/to/config.py`` or ``path/to/config.py:preset``."""
  path, _, arg = spec.partition(":")
  if not Path(path).is_file():
    raise ConfigError(f"--config file {path!r} does not exist")
  _import_config_package(Path(path).resolve().parent)
  module_spec = importlib.util.spec_from_file_location(f"homeo_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config()")
  return module.get_config(arg or None)


def apply_overrides(config: Config, overrides: list[str]) -> Config:
  """Apply ``key.path=value`` overrides; an unknown key or unparsable value is an error."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ConfigError(f"--set expects key=value, got {item!r}")
    config = _replace_path(config, key.strip().split("."), raw.strip(), key.strip())
  return config


def _replace_path(node: Any, path: list[str], raw: str, full_key: str) -> Any:
  head, rest = path[0], path[1:]
  if isinstance(node, dict):
    # Below a dict the path builds nested dicts: optimizer.regulators.qk_clip.threshold=100
    if rest:
      child = node.get(head, {})
      if not isinstance(child, dict):
        raise ConfigError(f"config key {full_key!r} goes below {head}={child!r}, not a dict")
      return {**node, head: _replace_path(child, rest, raw, full_key)}
    return {**node, head: _parse_literal(raw)}
  if not dataclasses.is_dataclass(node) or head not in {f.name for f in dataclasses.fields(node)}:
    raise ConfigError(f"unknown config key {full_key!r}")
  current = getattr(node, head)
  if rest:
    value = _replace_path(current, rest, raw, full_key)
  else:
    value = _parse_like(current, raw, full_key)
  return dataclasses.replace(node, **{head: value})


def _parse_like(current: Any, raw: str, key: str) -> Any:
  try:
    if isinstance(current, bool):
      if raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError
      return raw.lower() in ("true", "1")
    if isinstance(current, int):
      return int(raw)
    if isinstance(current, float):
      return float(raw)
    if isinstance(current, str):
      return raw
    if isinstance(current, dict):
      value = ast.literal_eval(raw)
      if not isinstance(value, dict):
        raise ValueError
      return value
    if isinstance(current, tuple):
      value = ast.literal_eval(raw)
      if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
      ):
        raise ValueError
      return tuple(value)
  except (ValueError, SyntaxError):
    raise ConfigError(f"{key}={raw!r} is not a valid {type(current).__name__}") from None
  raise ConfigError(f"config key {key!r} cannot be set from the command line")


def _parse_literal(raw: str) -> Any:
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def _check_stages(config: Config) -> None:
  d, o, t = config.data, config.optimizer, config.train
  if o.schedule not in SCHEDULES:
    raise ConfigError(f"optimizer.schedule must be one of {SCHEDULES}, got {o.schedule!r}")
  staged = o.schedule == "stages"
  if staged and not o.stage_lr_multipliers:
    raise ConfigError("optimizer.schedule='stages' needs optimizer.stage_lr_multipliers")
  if not staged and (o.stage_lr_multipliers or o.extension_steps):
    raise ConfigError(
      f"optimizer.stage_lr_multipliers and optimizer.extension_steps need "
      f"optimizer.schedule='stages', got schedule={o.schedule!r}"
    )
  if any(m <= 0 for m in o.stage_lr_multipliers):
    raise ConfigError(f"optimizer.stage_lr_multipliers must be > 0, got {o.stage_lr_multipliers}")
  if not 0.0 <= o.cooldown_fraction <= 1.0:
    raise ConfigError(f"optimizer.cooldown_fraction must be in [0, 1], got {o.cooldown_fraction}")
  if not 0 <= o.extension_steps < t.steps:
    raise ConfigError(
      f"optimizer.extension_steps={o.extension_steps} must be in [0, train.steps={t.steps})"
    )
  if any(int(m) != m or m < 1 for m in d.batch_multipliers):
    raise ConfigError(f"data.batch_multipliers must be integers >= 1, got {d.batch_multipliers}")
  if d.batch_multipliers and staged and len(d.batch_multipliers) != len(o.stage_lr_multipliers):
    raise ConfigError(
      f"data.batch_multipliers {d.batch_multipliers} and optimizer.stage_lr_multipliers "
      f"{o.stage_lr_multipliers} must have one entry per stage"
    )


def validate_config(config: Config) -> None:
  """Check every value that can be checked without data or compilation."""
  import homeo_jax.regulators  # noqa: F401  (the built-in optimizers and regulators register)
  from homeo_jax.models import MODEL_TYPES
  from homeo_jax.regulators import registry

  d, o, t = config.data, config.optimizer, config.train
  if config.model_type not in MODEL_TYPES:
    raise ConfigError(f"model_type must be one of {sorted(MODEL_TYPES)}, got {config.model_type!r}")
  if d.tokenizer not in tokenizers_lib.TOKENIZERS:
    raise ConfigError(
      f"data.tokenizer must be one of {tokenizers_lib.TOKENIZERS}, got {d.tokenizer!r}"
    )
  if d.corpus not in corpora.BUILTIN_CORPORA and not Path(d.corpus).exists():
    raise ConfigError(
      f"data.corpus must be one of {corpora.BUILTIN_CORPORA} or an existing path, got {d.corpus!r}"
    )
  if not 0.0 < d.val_fraction < 1.0:
    raise ConfigError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
  _positive(d, "data", "seq_len", "batch_size", "bpe_vocab_size")
  _nonnegative(d, "data", "max_chars")
  if d.seq_len > config.model.max_seq_len:
    raise ConfigError(
      f"data.seq_len={d.seq_len} exceeds model.max_seq_len={config.model.max_seq_len}"
    )
  model = config.model
  if model.vocab_size == 0:  # 0 means "from the tokenizer", known only after loading data
    model = dataclasses.replace(model, vocab_size=1)
  try:
    model.validate()
  except ValueError as e:
    raise ConfigError(str(e)) from None
  try:
    registry.check_optimizer_config(o.name, o.kwargs, o.regulators)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _positive(o, "optimizer", "learning_rate")
  _nonnegative(o, "optimizer", "min_learning_rate", "warmup_steps", "weight_decay", "grad_clip")
  _nonnegative(o, "optimizer", "eps")
  for name in ("b1", "b2"):
    if not 0.0 <= getattr(o, name) < 1.0:
      raise ConfigError(f"optimizer.{name} must be in [0, 1), got {getattr(o, name)}")
  _check_stages(config)
  _nonnegative(t, "train", "z_loss")
  for name, fields in t.pinned_controls.items():
    if not isinstance(fields, dict) or not fields:
      raise ConfigError(f"train.pinned_controls.{name} must be a dict of controls, got {fields!r}")
    for field, value in fields.items():
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"train.pinned_controls.{name}.{field} must be a number, got {value!r}")
  _positive(
    t,
    "train",
    "steps",
    "eval_every",
    "eval_batches",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
  )
  _check_log_format(t)
  if t.on_nonfinite not in NONFINITE_POLICIES:
    raise ConfigError(
      f"train.on_nonfinite must be one of {NONFINITE_POLICIES}, got {t.on_nonfinite!r}"
    )
  if not 0.0 < t.rollback_lr_scale <= 1.0:
    raise ConfigError(f"train.rollback_lr_scale must be in (0, 1], got {t.rollback_lr_scale}")
  _nonnegative(t, "train", "max_rollbacks")
  _positive(t, "train", "max_consecutive_skips")
  _nonnegative(t, "train", "sample_every", "sample_tokens", "sample_temperature", "sample_top_k")
  if t.sample_every and not t.sample_prompt:
    raise ConfigError("train.sample_prompt is empty: sampling needs at least one character")
  try:
    config.mesh.validate()
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check_log_format(t: TrainConfig) -> None:
  from homeo_jax.training.console import LINE_FORMATS

  if t.log_format not in LINE_FORMATS:
    raise ConfigError(
      f"train.log_format must be one of {sorted(LINE_FORMATS)}, got {t.log_format!r}"
    )


def _positive(section: Any, prefix: str, *names: str) -> None:
  for name in names:
    value = getattr(section, name)
    if not value > 0:
      raise ConfigError(f"{prefix}.{name} must be > 0, got {value}")


def _nonnegative(section: Any, prefix: str, *names: str) -> None:
  for name in names:
    value = getattr(section, name)
    if value < 0:
      raise ConfigError(f"{prefix}.{name} must be >= 0, got {value}")


def to_json(config: Config) -> str:
  return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def from_json(text: str) -> Config:
  """The ``Config`` that ``to_json`` wrote (a run folder's ``config.json``); an unknown key
  or model type — a file from another version or another program — is a ConfigError."""
  from homeo_jax.models import MODEL_CONFIGS

  raw = json.loads(text)
  model_type = raw.get("model_type", Config.model_type)
  if model_type not in MODEL_CONFIGS:
    raise ConfigError(f"model_type {model_type!r} is not one of {sorted(MODEL_CONFIGS)}")
  sections = {"model": MODEL_CONFIGS[model_type]}
  return _dataclass_from_dict(Config, raw, "", sections)


def _dataclass_from_dict(cls: type, raw: dict, prefix: str, override: dict | None = None) -> Any:
  hints = typing.get_type_hints(cls)
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(raw) - fields)
  if unknown:
    raise ConfigError(f"unknown config key {prefix}{unknown[0]} (not a field of {cls.__name__})")
  kwargs = {}
  for name, value in raw.items():
    kind = (override or {}).get(name, hints[name])
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):
      value = _dataclass_from_dict(kind, value, f"{prefix}{name}.")
    elif isinstance(value, list):  # JSON has no tuples; frozen configs hold tuples
      value = tuple(value)
    kwargs[name] = value
  return cls(**kwargs)
