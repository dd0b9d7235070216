"""Staged schedule and batch ramp (training/stages.py), the ORD ``seed`` preset."""

import json
import re

import numpy as np
import pytest

from homeo_jax import plan as plan_lib
from homeo_jax.training import stages
from homeo_jax.training.config import ConfigError, apply_overrides, load_config, validate_config
from homeo_jax.training.loop import train
from tests.conftest import tiny_config


def reference_lr(step: int, scheduled: int, muls, cooldown: float, floor: float) -> float:
  """modded-nanogpt's rule, written out by hand."""
  stage = min(step * len(muls) // scheduled, len(muls) - 1)
  start = int(scheduled * (1 - cooldown))
  t = min(max((step - start) / (scheduled - start), 0.0), 1.0)
  return muls[stage] * (1 - t) + floor * t


def test_staged_schedule_matches_the_rule_by_hand():
  muls = (1.0, 1.52, 1.73)
  schedule = stages.staged_schedule(2.0, muls, 1560, cooldown_fraction=0.55, floor=0.15)
  for step in (0, 519, 520, 701, 702, 703, 1039, 1040, 1300, 1559, 1560, 1599):
    expected = 2.0 * reference_lr(step, 1560, muls, 0.55, 0.15)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-6), step
  # the boundary steps, by hand: stage 2 starts at 520 at 1.52; cooldown starts at 702
  assert float(schedule(520)) == pytest.approx(2 * 1.52)
  assert float(schedule(1600)) == pytest.approx(2 * 0.15)  # extension steps: the floor


def test_warmup_multiplies_the_staged_schedule():
  schedule = stages.staged_schedule(1.0, (1.0, 2.0), 100, cooldown_fraction=0.0, floor=0.1,
                                    warmup_steps=4)  # fmt: skip
  assert [float(schedule(i)) for i in (0, 1, 3, 50)] == pytest.approx([0.25, 0.5, 1.0, 2.0])


def test_staged_batches_read_every_base_batch_once_in_order():
  base = [np.full((2, 5), i, np.int32) for i in range(200)]
  stream = stages.StagedBatches(base, (1, 2, 3), scheduled_steps=9)
  sizes = [stream[i].shape[0] for i in range(12)]  # 3 extension steps at the last stage
  assert sizes == [2] * 3 + [4] * 3 + [6] * 6
  read = np.concatenate([stream[i][:, 0] for i in range(12)])
  np.testing.assert_array_equal(read, np.repeat(np.arange(3 + 6 + 18), 2))
  # random access agrees with the cumulative count
  counts = np.cumsum([0] + [s // 2 for s in sizes])
  assert [stages.base_batches_before(i, (1, 2, 3), 9) for i in range(13)] == list(counts)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (["optimizer.schedule=stages"], "optimizer.schedule='stages' needs optimizer.stage_lr"),
    (["optimizer.stage_lr_multipliers=(1, 2)"], "need optimizer.schedule='stages'"),
    (
      ["optimizer.schedule=stages", "optimizer.stage_lr_multipliers=(1, 2)",
       "data.batch_multipliers=(1, 2, 3)"],
      "must have one entry per stage",
    ),
    (["data.batch_multipliers=(1, 1.5)"], "data.batch_multipliers must be integers >= 1"),
    (
      ["optimizer.schedule=stages", "optimizer.stage_lr_multipliers=(1,)",
       "optimizer.extension_steps=6"],
      "optimizer.extension_steps=6 must be in [0, train.steps=6)",
    ),
    (["optimizer.schedule=linear"], "optimizer.schedule must be one of"),
  ],
)  # fmt: skip
def test_bad_stages_are_named(tmp_path, overrides, message):
  config = apply_overrides(tiny_config(tmp_path), overrides)
  with pytest.raises(ConfigError, match=re.escape(message)):
    validate_config(config)


def test_tuple_overrides_parse_and_reject_words(tmp_path):
  config = apply_overrides(tiny_config(tmp_path), ["data.batch_multipliers=[1, 2]"])
  assert config.data.batch_multipliers == (1, 2)
  with pytest.raises(ConfigError, match="data.batch_multipliers='abc' is not a valid tuple"):
    apply_overrides(config, ["data.batch_multipliers=abc"])


@pytest.mark.slow
def test_a_staged_run_steps_through_its_batches_and_lrs(tmp_path, tiny_data):
  config = apply_overrides(
    tiny_config(tmp_path, train={"steps": 8, "eval_every": 8, "checkpoint_every": 8}),
    [
      "optimizer.schedule=stages",
      "optimizer.stage_lr_multipliers=(1.0, 2.0)",
      "optimizer.extension_steps=2",
      "optimizer.cooldown_fraction=0.5",
      "optimizer.warmup_steps=0",
      "data.batch_multipliers=(1, 2)",
    ],
  )
  result = train(config, data=tiny_data)
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
  floor = config.optimizer.min_learning_rate / config.optimizer.learning_rate
  for step, lr in lrs.items():
    expected = reference_lr(step - 1, 6, (1.0, 2.0), 0.5, floor) * config.optimizer.learning_rate
    assert lr == pytest.approx(expected, rel=1e-5), step
  stats = result.stats
  assert stats["step"] == 8 and stats["seconds_per_step"] > 0
  # Timed: steps 2 (stage 1, 8 rows) and 5-8 (stage 2, 16 rows). Step 1 compiles, step 3
  # is flushed after step 4's new batch shape compiled, step 4 is that shape's first run.
  mean_tokens = (1 * 8 * 32 + 4 * 16 * 32) / 5
  assert stats["tokens_per_second"] * stats["seconds_per_step"] == pytest.approx(mean_tokens)


def test_seed_preset_is_the_seeds_schedule():
  config = load_config("configs/ord_muon.py:seed")
  o, d = config.optimizer, config.data
  assert o.stage_lr_multipliers == (1.0, 1.52, 1.73) and o.cooldown_fraction == 0.55
  assert (config.train.steps - o.extension_steps, o.extension_steps) == (1560, 40)
  assert [m * d.batch_size * d.seq_len for m in d.batch_multipliers] == [131072, 262144, 393216]
  assert config.train.eval_every == 50 and o.kwargs["newton_schulz"]["coeffs"] == "polar_express"
  assert o.min_learning_rate / o.learning_rate == pytest.approx(0.15)


@pytest.mark.slow
def test_plan_counts_every_stage(tmp_path):
  config = apply_overrides(
    load_config("configs/shakespeare_char.py:smoke"),
    [
      "optimizer.schedule=stages",
      "optimizer.stage_lr_multipliers=(1.0, 1.5)",
      "data.batch_multipliers=(1, 3)",
    ],
  )
  flat = plan_lib.plan(apply_overrides(config, ["data.batch_size=24", "data.batch_multipliers=()",
                                                "optimizer.schedule=cosine",
                                                "optimizer.stage_lr_multipliers=()"]))  # fmt: skip
  p = plan_lib.plan(config)
  assert p.tokens_per_step == 3 * 8 * 32  # planned at the largest stage
  assert p.flops_per_step == pytest.approx(flat.flops_per_step, rel=1e-6)
  steps = config.train.steps
  base_batches = stages.base_batches_before(steps, (1, 3), steps)
  assert p.run_flops == pytest.approx(p.flops_per_step * base_batches / 3, rel=1e-9)
