"""Scale-out on 8 fake CPU devices: same trajectories on every mesh, real sharding, resharding
restores. Each test runs in its own interpreter (XLA fixes the device count at start-up)."""

import pytest

from homeo_jax.training.config import ConfigError
from homeo_jax.training.sharding import MeshConfig, logical_axes
from tests.conftest import assert_script_passes_on_fake_devices
from tests.training.mesh_script import PRELUDE


@pytest.mark.parametrize(
  "cases",
  [
    '[("transformer", "adamw"), ("transformer", "ars_adamw"), ("transformer", "ord_muon")]',
    '[("transformer", "thyroid_adamw", {"weights": "random", "update_every": 1})]',
  ],
  ids=["baseline", "thyroid"],
)
@pytest.mark.slow
def test_every_mesh_gives_the_single_device_trajectory(cases):
  assert_script_passes_on_fake_devices(
    PRELUDE + f"\nfor case in {cases}:\n  check(*case)\nprint('ok')", devices=8
  )


@pytest.mark.slow
def test_expert_axis_shards_the_expert_stacks():
  script = (
    PRELUDE
    + """
_, state, run = trajectory("moe_transformer", "adamw_spechorn", {}, MeshConfig(2, 1, 4))
w_up = state.params["blocks"][0]["mlp"]["w_up"][...]
assert w_up.sharding.spec[0] == "expert", w_up.sharding.spec
assert w_up.addressable_shards[0].data.shape[0] == 2  # 8 experts over 4 devices
print('ok')
"""
  )
  assert_script_passes_on_fake_devices(script, devices=8)


@pytest.mark.slow
def test_checkpoint_saved_on_8_devices_restores_on_4_and_1(tmp_path):
  script = (
    PRELUDE
    + f"""
from homeo_jax.training.checkpoint import Checkpointer
_, state, _ = trajectory("transformer", "ars_adamw", {{}}, MeshConfig(2, 4, 1), steps=2)
ckpt = Checkpointer("{tmp_path}/ckpt")
ckpt.save(2, state, {{"data_position": 2}})
ckpt.close()
for mesh, devices in ((MeshConfig(1, 4, 1), 4), (MeshConfig(1, 1, 1), 1)):
  cfg = dataclasses.replace(base, mesh=mesh, optimizer=OptimizerConfig(name="ars_adamw"))
  like = setup(cfg, data).state
  restored, meta = Checkpointer("{tmp_path}/ckpt").restore_latest(like)
  assert meta["data_position"] == 2
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  big = max(jax.tree.leaves(restored.params), key=lambda x: x.size)
  assert len(big.sharding.device_set) == devices, (devices, big.sharding)
print('ok')
"""
  )
  assert_script_passes_on_fake_devices(script, devices=8)


def test_mesh_shapes_and_errors():
  assert MeshConfig().shape(8) == (8, 1, 1)
  assert MeshConfig(2, -1, 1).shape(8) == (2, 4, 1)
  assert MeshConfig(1, 4, 1).shape(8) == (1, 4, 1)  # the first 4 devices
  with pytest.raises(ValueError, match="needs 12 devices, there are 8"):
    MeshConfig(2, 6, 1).shape(8)
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    MeshConfig(-1, -1, 1).shape(8)


def test_bad_mesh_config_is_a_named_config_error(tmp_path):
  import dataclasses

  from homeo_jax.training.config import validate_config
  from tests.conftest import tiny_config

  cfg = dataclasses.replace(tiny_config(tmp_path), mesh=MeshConfig(0, 1, 1))
  with pytest.raises(ConfigError, match="mesh.data must be >= 1 or -1"):
    validate_config(cfg)


def test_logical_axes_of_parameters_and_moments():
  assert logical_axes("['token_embed']['embedding']", (65, 32)) == ("vocab", "embed")
  assert logical_axes("[0].mu['blocks'][0]['attn']['qkv']['kernel']", (32, 96)) == (
    "embed",
    "mlp",
  )
  assert logical_axes("['blocks'][1]['mlp']['w_down']", (8, 128, 32)) == (
    "expert",
    "mlp",
    "embed",
  )
  assert logical_axes(".controller.loss_buffer.values", (16,)) == (None,)


@pytest.mark.slow
def test_sharded_train_step_exports_for_tpu():
  """The train step on a 2 × 4 (data × fsdp) mesh lowers for TPU with its shardings."""
  script = (
    PRELUDE
    + """
from jax import export
cfg = dataclasses.replace(base, mesh=MeshConfig(2, 4, 1))
run = setup(cfg, data)
spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
state = jax.tree.map(spec, run.state)
batch = spec(run.put(np.zeros((8, 33), np.int32)))
exported = export.export(run.train_step, platforms=("tpu",))(state, batch)
assert exported.nr_devices == 8, exported.nr_devices
module = exported.mlir_module()  # sharding annotations (Shardy, or GSPMD's), partitioned on TPU
assert "sdy.sharding" in module or "mhlo.sharding" in module
print('ok')
"""
  )
  assert_script_passes_on_fake_devices(script, devices=8)
