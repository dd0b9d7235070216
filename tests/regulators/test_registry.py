"""Regulators plug in by name: registered from outside the package, built from a config."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from homeo_jax.regulators import registry
from homeo_jax.training.config import Config, ConfigError, OptimizerConfig, apply_overrides
from homeo_jax.training.optimizers import build_optimizer


def scale_updates(factor: float = 0.5) -> optax.GradientTransformation:
  """A user's regulator: every update times ``factor``."""
  return optax.scale(factor)


@registry.register_regulator("test_scale", scale_updates, order=95)
def _wrap(inner, ctx, **kwargs):
  return optax.chain(inner, scale_updates(**kwargs))


def test_a_regulator_registered_outside_the_package_wraps_the_optimizer():
  cfg = OptimizerConfig(name="sgd", learning_rate=0.1, b1=0.0, schedule="constant",
                        grad_clip=0.0, regulators={"test_scale": {"factor": 0.25}})  # fmt: skip
  tx = build_optimizer(cfg, total_steps=10)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.25 * np.ones(3), rtol=1e-6)


def test_regulators_stack_in_their_registered_order():
  """spike_aware (10) next to the optimizer, update_ratio (20), qk_clip (90), the spike
  guard (100) outside: the state tree nests in that order."""
  cfg = OptimizerConfig(
    regulators={"spike_guard": {}, "qk_clip": {}, "update_ratio": {}, "spike_aware": {}}
  )
  tx = build_optimizer(cfg, total_steps=100)
  params = {"blocks": [{"attn": {"qkv": {"kernel": jnp.ones((4, 12))}}}]}
  state = tx.init(params)
  guard = state
  assert type(guard).__name__ == "SpikeGuardState"
  outer_chain = guard.inner  # chain(chain(spike_aware, update_ratio), qk_clip)
  assert type(outer_chain[1]).__name__ == "QKClipState"
  assert type(outer_chain[0][1]).__name__ == "UpdateRatioState"
  assert type(outer_chain[0][0]).__name__ == "SpikeAwareState"
  telemetry = {"value": 1.0, "grad_norm": 1.0, "attn_head_logit_max": jnp.ones((1, 2))}
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params, **telemetry)
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize(
  ("regulators", "message"),
  [
    ({"nope": {}}, "optimizer.regulators.nope is not a registered regulator"),
    (
      {"qk_clip": {"tau": 1.0}},
      r"optimizer.regulators.qk_clip.tau is not an argument of regulator 'qk_clip' "
      r"\(it takes: alpha, name, threshold\)",
    ),
    ({"qk_clip": 100}, "optimizer.regulators.qk_clip must be a dict of its arguments, got 100"),
    (
      {"qk_clip": {"threshold": -1.0}},
      "optimizer.regulators.qk_clip: qk_clip: threshold must be > 0, got -1.0",
    ),  # noqa: E501
  ],
)
def test_one_line_errors(regulators, message):
  with pytest.raises(ConfigError, match=message):
    build_optimizer(OptimizerConfig(regulators=regulators), total_steps=10)


def test_set_reaches_below_a_dict():
  config = apply_overrides(
    Config(),
    ["optimizer.regulators.qk_clip.threshold=50", "optimizer.regulators.spike_aware={}"],
  )
  assert config.optimizer.regulators == {"qk_clip": {"threshold": 50}, "spike_aware": {}}
  with pytest.raises(ConfigError, match="goes below"):
    apply_overrides(
      dataclasses.replace(config, optimizer=OptimizerConfig(regulators={"a": 1})),
      ["optimizer.regulators.a.b=2"],
    )


def test_the_design_docs_example_regulator_plugs_in():
  """docs/design.md's ten-line regulator, executed as written, then named by a config."""
  import pathlib
  import re

  text = (pathlib.Path(__file__).parents[2] / "docs" / "design.md").read_text()
  block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  namespace: dict = {}
  exec(compile(block, "docs/design.md", "exec"), namespace)  # noqa: S102
  cfg = OptimizerConfig(name="sgd", learning_rate=1.0, b1=0.0, schedule="constant",
                        grad_clip=0.0, regulators={"halve": {"factor": 0.25}})  # fmt: skip
  tx = build_optimizer(cfg, total_steps=3)
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.ones(2)}, state, params)
  np.testing.assert_allclose(updates["w"], -0.25)
  from homeo_jax.regulators.base import regulator_metrics

  assert float(regulator_metrics(state)["regulators/halve/steps"]) == 1.0
