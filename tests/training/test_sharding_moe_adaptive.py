"""The MoE and adaptive-depth LMs on 8 fake devices: every mesh, the one-device trajectory."""

import pytest

from tests.conftest import assert_script_passes_on_fake_devices
from tests.training.mesh_script import PRELUDE


@pytest.mark.parametrize(
  "cases",
  [
    '[("moe_transformer", "adamw_spechorn"), ("moe_transformer", "adamw_deepseek")]',
    '[("adaptive_transformer", "adamw_compute_price",'
    ' {"schedule": {"warmup_steps": 1, "ponder_start": 1}, "reference_steps": 3})]',
  ],
  ids=["moe", "adaptive"],
)
@pytest.mark.slow
def test_every_mesh_gives_the_single_device_trajectory(cases):
  assert_script_passes_on_fake_devices(
    PRELUDE + f"\nfor case in {cases}:\n  check(*case)\nprint('ok')", devices=8
  )
