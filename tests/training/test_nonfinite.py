"""A run that meets non-finite values keeps its good checkpoints: stop, skip, rollback."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from homeo_jax.data import window_batches
from homeo_jax.models.losses import lm_loss
from homeo_jax.training.checkpoint import Checkpointer
from homeo_jax.training.config import ConfigError
from homeo_jax.training.loop import NonFiniteError, train
from tests.conftest import run_cli, tiny_config

POISON = 0  # a batch of this token only makes the fake loss NaN


def poisoned_loss(logits, targets, telemetry):
  """Cross entropy, NaN on a batch whose targets are all POISON (a chosen step)."""
  loss, telemetry = lm_loss(logits, targets, telemetry)
  return loss + jnp.where(jnp.all(targets == POISON), jnp.nan, 0.0), telemetry


class PoisonedBatches:
  """The usual seeded windows, with the batches at ``positions`` replaced by POISON."""

  def __init__(self, tokens, positions, every_from=None):
    self.stream = window_batches(tokens, seq_len=32, batch_size=8, seed=0)
    self.positions, self.every_from = set(positions), every_from

  def __len__(self):
    return len(self.stream)

  def __getitem__(self, i):
    bad = i in self.positions or (self.every_from is not None and i >= self.every_from)
    return np.full((8, 33), POISON, np.int32) if bad else self.stream[i]


def config(run_dir, policy, steps=12, **train):
  return tiny_config(
    run_dir,
    train={
      "steps": steps,
      "checkpoint_every": 3,
      "eval_every": 100,
      "keep_checkpoints": 2,
      "on_nonfinite": policy,
      **train,
    },
  )


def all_checkpoints_finite(run_dir, like):
  checkpointer = Checkpointer(run_dir / "checkpoints")
  steps = checkpointer.steps()
  restored = checkpointer.restore_latest(like)[0]
  checkpointer.close()
  finite = all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(restored.params))
  return steps, finite


@pytest.mark.slow
def test_skip_drops_the_update_and_counts_it(tmp_path, tiny_data):
  batches = PoisonedBatches(tiny_data.train_tokens, positions=[5])  # step 6
  result = train(
    config(tmp_path, "skip"), data=tiny_data, loss_fn=poisoned_loss, train_batches=batches
  )
  assert result.status == "finished"
  assert result.stats["skipped_steps"] == 1 and result.stats["rollbacks"] == 0
  steps, finite = all_checkpoints_finite(tmp_path, result.state)
  assert steps == [9, 12] and finite
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r.get("nonfinite")] == [6]


@pytest.mark.slow
def test_rollback_restores_scales_and_skips_the_window(tmp_path, tiny_data):
  batches = PoisonedBatches(tiny_data.train_tokens, positions=[5])  # step 6
  result = train(
    config(tmp_path, "rollback"), data=tiny_data, loss_fn=poisoned_loss, train_batches=batches
  )
  stats = result.stats
  assert result.status == "finished" and stats["step"] == 12
  # back to the step-3 checkpoint: steps 4, 5, 6 are undone and re-run on fresh data
  assert (stats["rollbacks"], stats["rolled_back_steps"], stats["skipped_steps"]) == (1, 3, 0)
  assert float(result.state.update_scale) == 0.5
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  events = [r for r in records if r.get("event") == "rollback"]
  assert events == [{"step": 3, "event": "rollback", "from_step": 6, "update_scale": 0.5}]
  assert all(r["step"] <= 12 for r in records) and not any(r.get("nonfinite") for r in records)
  steps, finite = all_checkpoints_finite(tmp_path, result.state)
  assert steps == [9, 12] and finite
  assert (tmp_path / "report.md").read_text().count("3 steps undone by 1 rollbacks") == 1


@pytest.mark.slow
def test_rollback_before_the_first_checkpoint_restarts_from_init(tmp_path, tiny_data):
  batches = PoisonedBatches(tiny_data.train_tokens, positions=[1])  # step 2
  result = train(
    config(tmp_path, "rollback", steps=4),
    data=tiny_data,
    loss_fn=poisoned_loss,
    train_batches=batches,
  )
  assert (result.stats["rollbacks"], result.stats["rolled_back_steps"]) == (1, 2)


@pytest.mark.slow
def test_stop_raises_naming_the_step_and_saves_nothing_bad(tmp_path, tiny_data):
  batches = PoisonedBatches(tiny_data.train_tokens, positions=[4])  # step 5
  with pytest.raises(NonFiniteError, match="step 5: non-finite loss or gradient"):
    train(config(tmp_path, "stop"), data=tiny_data, loss_fn=poisoned_loss, train_batches=batches)
  assert Checkpointer(tmp_path / "checkpoints").steps() == [3]
  assert json.loads((tmp_path / "stats.json").read_text())["status"] == "stopped: non-finite"


@pytest.mark.slow
def test_rollbacks_are_bounded(tmp_path, tiny_data):
  batches = PoisonedBatches(tiny_data.train_tokens, positions=[], every_from=4)
  with pytest.raises(NonFiniteError, match="non-finite again after 2 rollbacks"):
    train(
      config(tmp_path, "rollback", max_rollbacks=2),
      data=tiny_data,
      loss_fn=poisoned_loss,
      train_batches=batches,
    )
  stats = json.loads((tmp_path / "stats.json").read_text())
  assert stats["rollbacks"] == 2


@pytest.mark.slow
def test_real_divergence_never_destroys_good_checkpoints(tmp_path, tiny_data):
  """lr 1e4 without clipping: the run diverges, rolls back until max_rollbacks, stops, and
  the newest checkpoint is finite and restorable."""
  cfg = config(tmp_path, "rollback", steps=30, max_rollbacks=2)
  cfg = dataclasses.replace(
    cfg,
    optimizer=dataclasses.replace(cfg.optimizer, learning_rate=1e4, grad_clip=0.0, warmup_steps=0),
  )
  with pytest.raises(NonFiniteError, match="after 2 rollbacks"):
    train(cfg, data=tiny_data)
  from homeo_jax.training.build import setup

  like = setup(cfg, tiny_data).state
  steps, finite = all_checkpoints_finite(tmp_path, like)
  assert steps and finite


def test_bad_inputs_are_one_line_before_compilation(tmp_path, tiny_data):
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(ConfigError, match="data.corpus=.*empty.txt' cannot be used"):
    train(tiny_config(tmp_path / "a", data={"corpus": str(empty), "max_chars": 0}))
  short = tmp_path / "short.txt"
  short.write_text("to be or not to be, that is the question")
  with pytest.raises(ConfigError, match="fewer than one batch row of data.seq_len \\+ 1 = 33"):
    train(tiny_config(tmp_path / "b", data={"corpus": str(short), "max_chars": 0}))
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(ConfigError, match="train.run_dir=.*a_file/run' cannot be created"):
    train(tiny_config(blocker / "run"), data=tiny_data)


@pytest.mark.slow
def test_cli_bad_input_is_one_line(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  proc = run_cli(
    "--config",
    "configs/shakespeare_char.py:smoke",
    "--run_dir",
    str(tmp_path / "run"),
    "--set",
    f"data.corpus={empty}",
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and "cannot be used" in proc.stderr
