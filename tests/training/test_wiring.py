"""Setup-time contracts: declared telemetry and controls, optimizer kwargs, MultiSteps."""

import dataclasses

import optax
import pytest

from homeo_jax.models import MoEConfig, MoETransformerConfig
from homeo_jax.regulators.ars import ars_adamw
from homeo_jax.training.build import setup
from homeo_jax.training.config import ConfigError, OptimizerConfig, validate_config
from homeo_jax.training.loop import train
from homeo_jax.training.optimizers import build_optimizer
from tests.conftest import tiny_config


def moe_config(tmp_path, balancer, optimizer):
  cfg = tiny_config(tmp_path)
  fields = {f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(cfg.model)}
  moe = MoEConfig(num_experts=4, top_k=2, router="spechorn", balancer=balancer)
  return dataclasses.replace(
    cfg,
    model_type="moe_transformer",
    model=MoETransformerConfig(**fields, moe=moe),
    optimizer=OptimizerConfig(name=optimizer, learning_rate=1e-3),
  )


def test_published_control_nobody_reads(tmp_path, tiny_data):
  with pytest.raises(
    ConfigError,
    match="regulator 'spechorn' \\(spechorn\\) publishes control 'moe_logit_adjust', but model "
    "MoETransformer does not read it",
  ):
    setup(moe_config(tmp_path, "", "adamw_spechorn"), tiny_data)


def test_control_read_from_a_missing_regulator(tmp_path, tiny_data):
  with pytest.raises(
    ConfigError, match="reads control 'moe_logit_adjust' from regulator 'spechorn', but no "
  ):
    setup(moe_config(tmp_path, "spechorn", "adamw"), tiny_data)


def test_telemetry_the_model_does_not_emit(tmp_path, tiny_data):
  tx = ars_adamw(1e-3, gate={"surprise_key": "moe_load"})
  with pytest.raises(
    ConfigError, match="regulator 'ars' \\(ars\\) reads telemetry 'moe_load', which model "
  ):
    setup(tiny_config(tmp_path), tiny_data, tx=tx)


def test_matching_wiring_builds(tmp_path, tiny_data):
  run = setup(moe_config(tmp_path, "spechorn", "adamw_spechorn"), tiny_data)
  assert run.state is not None


def test_optimizer_kwargs_are_forwarded_wholesale():
  cfg = OptimizerConfig(
    name="ars_adamw",
    kwargs={"gate": {"baseline_decay": 0.9}, "guard": {"min_window": 5}, "name": "guard"},
  )
  tx = build_optimizer(cfg, total_steps=10)
  assert tx is not None
  bad = OptimizerConfig(name="ars_adamw", kwargs={"bogus": 1})
  with pytest.raises(ConfigError, match="optimizer.kwargs.bogus is not an argument of optimizer "):
    build_optimizer(bad, total_steps=10)
  with pytest.raises(ConfigError, match="optimizer.kwargs.bogus"):
    validate_config(dataclasses.replace(tiny_config("/tmp/x"), optimizer=bad))
  with pytest.raises(ConfigError, match="optimizer 'ars_adamw': ars: phi_min must be in"):
    build_optimizer(
      OptimizerConfig(name="ars_adamw", kwargs={"gate": {"phi_min": 2.0}}), total_steps=10
    )


@pytest.mark.slow
def test_train_with_multi_steps_around_a_regulator(tmp_path, tiny_data):
  """train(cfg, tx=MultiSteps(ars_adamw)) hands the loss to ARS (it would raise otherwise)."""
  tx = optax.MultiSteps(ars_adamw(1e-3, guard={"window": 3}), every_k_schedule=2)
  result = train(tiny_config(tmp_path, train={"steps": 4}), data=tiny_data, tx=tx)
  ars_state = result.state.opt_state.inner_opt_state.controller
  assert int(ars_state.surprise_buffer.count) == 2  # two emitted steps of four mini-steps
  assert 0.0 < result.stats["train_loss"] < 10.0


@pytest.mark.slow
def test_a_pinned_control_reaches_the_model_and_must_exist(tmp_path, tiny_data):
  """--set_control NAME.FIELD=VALUE: the value replaces what the regulator publishes, in the
  train and eval steps; a control nobody publishes is a one-line error before compiling."""
  import jax
  import jax.numpy as jnp

  from homeo_jax.training.step import pin_controls

  published = {"spechorn": {"moe_logit_adjust": jnp.zeros((1, 4)), "other": jnp.ones(2)}}
  pinned = pin_controls(published, {"spechorn": {"moe_logit_adjust": 0.5}})
  assert pinned["spechorn"]["moe_logit_adjust"].shape == (1, 4)
  assert float(pinned["spechorn"]["moe_logit_adjust"][0, 3]) == 0.5
  assert pinned["spechorn"]["other"] is published["spechorn"]["other"]
  cfg = moe_config(tmp_path, "spechorn", "adamw_spechorn")
  bad = dataclasses.replace(
    cfg, train=dataclasses.replace(cfg.train, pinned_controls={"spechorn": {"bias": 1.0}})
  )
  with pytest.raises(ConfigError, match=r"--set_control spechorn.bias: no regulator publishes"):
    setup(bad, tiny_data)
  good = dataclasses.replace(
    cfg,
    train=dataclasses.replace(cfg.train, pinned_controls={"spechorn": {"moe_logit_adjust": 0.0}}),
  )
  run = setup(good, tiny_data)
  state, metrics = run.train_step(
    run.state, jnp.zeros((cfg.data.batch_size, cfg.data.seq_len + 1), jnp.int32)
  )
  assert bool(jnp.isfinite(metrics["loss"]))
  jax.block_until_ready(state)
