from pathlib import Path

import pytest

from homeo_jax.training import config as config_lib
from homeo_jax.training.config import ConfigError, apply_overrides, load_config, validate_config
from homeo_jax.training.loop import train
from tests.conftest import run_cli, tiny_config


def test_overrides_parse_by_field_type(tmp_path):
  cfg = apply_overrides(
    tiny_config(tmp_path),
    [
      "optimizer.learning_rate=3e-4",
      "train.steps=12",
      "train.progress=false",
      "model.dtype=bfloat16",
      "optimizer.kwargs={'nesterov': True}",
    ],
  )
  assert cfg.optimizer.learning_rate == 3e-4 and cfg.train.steps == 12
  assert cfg.train.progress is False and cfg.model.dtype == "bfloat16"
  assert cfg.optimizer.kwargs == {"nesterov": True}
  cfg = apply_overrides(cfg, ["optimizer.kwargs.window=50"])
  assert cfg.optimizer.kwargs == {"nesterov": True, "window": 50}


@pytest.mark.parametrize(
  "override, message",
  [
    ("optimizer.learning_rate=-1e-3", "optimizer.learning_rate must be > 0, got -0.001"),
    ("optimizer.name=adamx", "optimizer.name must be one of .* got 'adamx'"),
    ("train.stepz=5", "unknown config key 'train.stepz'"),
    ("train.steps=many", "train.steps='many' is not a valid int"),
    ("data.seq_len=64", "data.seq_len=64 exceeds model.max_seq_len=32"),
    ("data.tokenizer=words", "data.tokenizer must be one of"),
    ("model.dropout=1.5", "model.dropout must be in"),
    ("optimizer.b2=1.0", "optimizer.b2 must be in"),
    ("data.corpus=/no/such/file.txt", "data.corpus must be one of"),
  ],
)
def test_bad_values_name_the_key(tmp_path, override, message):
  with pytest.raises(ConfigError, match=message):
    validate_config(apply_overrides(tiny_config(tmp_path), [override]))


def test_seq_len_larger_than_data(tmp_path):
  small = tmp_path / "small.txt"
  small.write_text("tiny corpus " * 4)
  cfg = apply_overrides(tiny_config(tmp_path / "run"), [f"data.corpus={small}"])
  with pytest.raises(ConfigError, match=r"validation tokens, fewer than one batch row of data"):
    train(cfg)


def test_unknown_optimizer_kwarg(tmp_path):
  cfg = apply_overrides(tiny_config(tmp_path), ["optimizer.kwargs.windw=3"])
  with pytest.raises(ConfigError, match="optimizer.kwargs.windw is not an argument"):
    train(cfg)


SHIPPED_PRESETS = {
  "shakespeare_char": (None, "cpu", "smoke"),
  "ars_closed_loop": ("pretrain", "cpu"),
  "ars_narcissus": ("cpu", "gpu"),
  "lr_sensitivity": ("cpu",),
  "ord_muon": ("cpu", "gpu", "seed"),
  "ouro_spec": ("tiny", "tiny_algorithmic", "depth", "looped", "seed"),
  "spechorn": ("cpu", "cpu_long", "gpu"),
  "thyroid_2bit": ("cpu", "stress", "gpu"),
}


@pytest.mark.parametrize(
  "spec",
  [
    f"configs/{name}.py" + (f":{preset}" if preset else "")
    for name, presets in SHIPPED_PRESETS.items()
    for preset in presets
  ],
)
def test_shipped_configs_load_and_validate(spec):
  validate_config(config_lib.load_config(spec))


@pytest.mark.slow
def test_cli_rejects_bad_value_with_one_line():
  proc = run_cli(
    "--config",
    "configs/shakespeare_char.py:smoke",
    "--set",
    "optimizer.learning_rate=-1",
    timeout=120,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("config error: optimizer.learning_rate must be > 0, got -1.0")


def test_cli_shorthands_are_overrides():
  """--seed, --hard_kill, --set_control and --gen_every are --set overrides, checked alike."""
  from homeo_jax import train as train_cli

  args = train_cli.parse_args(
    ["--config", "configs/ouro_spec.py:tiny", "--seed", "42", "--hard_kill",
     "--set_control", "compute_price.compute_price=0.02", "--gen_every", "5"]
  )  # fmt: skip
  overrides = train_cli.cli_overrides(args)
  assert overrides == [
    "train.pinned_controls.compute_price.compute_price=0.02",
    "train.seed=42",
    "data.seed=42",
    "model.hard_kill=true",
    "train.sample_every=5",
  ]
  cfg = apply_overrides(config_lib.load_config("configs/ouro_spec.py:tiny"), overrides)
  assert cfg.train.seed == cfg.data.seed == 42 and cfg.model.hard_kill
  assert cfg.train.pinned_controls == {"compute_price": {"compute_price": 0.02}}
  validate_config(cfg)


def test_configs_in_a_package_share_modules_from_any_directory(tmp_path, monkeypatch):
  package = tmp_path / "lab_presets"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "shared.py").write_text("STEPS = 17\n")
  (package / "run.py").write_text(
    "import dataclasses\n"
    "from homeo_jax.training.config import Config\n"
    "from lab_presets import shared\n\n"
    "def get_config(arg=None):\n"
    "  c = Config()\n"
    "  return dataclasses.replace(c, train=dataclasses.replace(c.train, steps=shared.STEPS))\n"
  )
  monkeypatch.chdir("/")  # the package's parent is not on sys.path
  assert load_config(str(package / "run.py")).train.steps == 17
  # the library's own configs import their base the same way
  root = Path(__file__).resolve().parents[2]
  assert load_config(f"{root}/configs/spechorn.py:cpu").model.d_model == 64
