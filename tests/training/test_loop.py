import dataclasses
import json
import os
import signal
import threading
import time

import jax
import numpy as np
import optax
import pytest

from homeo_jax.training.checkpoint import Checkpointer, CheckpointError
from homeo_jax.training.loop import PAUSE_FILE, NonFiniteError, train
from tests.conftest import run_cli, tiny_config


def losses(run_dir):
  records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_data):
  run_dir = tmp_path_factory.mktemp("full")
  result = train(tiny_config(run_dir), data=tiny_data)
  return run_dir, result


@pytest.mark.slow
def test_run_folder_contents(uninterrupted):
  run_dir, result = uninterrupted
  assert result.status == "finished"
  for name in ("config.json", "metrics.jsonl", "stats.json", "report.md", "loss.png"):
    assert (run_dir / name).exists(), name
  stats = json.loads((run_dir / "stats.json").read_text())
  assert stats["step"] == 6 and stats["status"] == "finished"
  assert stats["best_val_loss"] <= stats["val_loss"] + 1e-9
  assert sorted(losses(run_dir)) == [1, 2, 3, 4, 5, 6]
  assert Checkpointer(run_dir / "checkpoints").steps() == [3, 6]


@pytest.mark.slow
def test_pause_and_exact_resume(tmp_path, tiny_data, uninterrupted):
  run_dir = tmp_path / "paused"
  run_dir.mkdir()
  (run_dir / PAUSE_FILE).touch()  # honoured after the step in flight: pauses at step 1
  first = train(tiny_config(run_dir), data=tiny_data)
  assert first.status == "paused" and first.stats["step"] == 1
  assert not (run_dir / PAUSE_FILE).exists()
  assert Checkpointer(run_dir / "checkpoints").steps() == [1]
  second = train(tiny_config(run_dir), data=tiny_data)
  assert second.status == "finished"
  expected = losses(uninterrupted[0])
  got = losses(run_dir)
  assert sorted(got) == sorted(expected)
  np.testing.assert_array_equal([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)])
  full_params = uninterrupted[1].state.params
  jax.tree.map(np.testing.assert_array_equal, second.state.params, full_params)


@pytest.mark.slow
def test_sigterm_pauses_and_saves(tmp_path, tiny_data):
  run_dir = tmp_path / "signalled"

  def signal_after_first_step():  # the handler is installed before step 1 runs
    while not (run_dir / "metrics.jsonl").exists():
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)

  cfg = tiny_config(run_dir, train={"steps": 400, "checkpoint_every": 400})
  threading.Thread(target=signal_after_first_step, daemon=True).start()
  result = train(cfg, data=tiny_data)
  assert result.status == "paused" and 1 <= result.stats["step"] < 400
  assert Checkpointer(run_dir / "checkpoints").steps() == [result.stats["step"]]


def corrupt(step_dir):
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and path.name != "commit_success.txt":
      path.write_bytes(b"\x00garbage")


@pytest.mark.slow
def test_corrupt_checkpoint_falls_back_with_named_error(tmp_path, tiny_data, uninterrupted, capfd):
  import shutil

  run_dir = tmp_path / "corrupt"
  shutil.copytree(uninterrupted[0], run_dir)
  corrupt(run_dir / "checkpoints" / "6")
  result = train(tiny_config(run_dir), data=tiny_data)
  err = capfd.readouterr().err
  assert f"checkpoint {run_dir.absolute() / 'checkpoints' / '6'} is unreadable" in err
  assert "resumed" in err and "at step 3" in err
  assert (run_dir / "corrupt_checkpoints").is_dir()  # moved aside, not deleted
  assert result.status == "finished"
  expected = losses(uninterrupted[0])
  np.testing.assert_array_equal(losses(run_dir)[6], expected[6])  # re-ran steps 4..6 exactly


def test_all_checkpoints_corrupt_never_starts_fresh(tmp_path, tiny_data, uninterrupted):
  import shutil

  run_dir = tmp_path / "all_corrupt"
  shutil.copytree(uninterrupted[0], run_dir)
  for step in (3, 6):
    corrupt(run_dir / "checkpoints" / str(step))
  with pytest.raises(
    CheckpointError, match=r"no readable checkpoint: .*checkpoints/6 .*checkpoints/3"
  ):
    train(tiny_config(run_dir), data=tiny_data)


@pytest.mark.slow
def test_new_transform_reading_loss_needs_no_loop_edit(tmp_path, tiny_data):
  # reduce_on_plateau reads value=loss from the extra args the step always passes.
  tx = optax.chain(
    optax.adam(3e-3),
    optax.contrib.reduce_on_plateau(
      factor=0.5, patience=1, cooldown=0, accumulation_size=1, rtol=0.0, atol=10.0
    ),  # every step counts as a plateau
  )
  result = train(tiny_config(tmp_path, train={"steps": 4}), tx=tx, data=tiny_data)
  plateau_state = result.state.opt_state[1]
  assert float(plateau_state.scale) < 1.0  # it saw the losses and reduced the scale
  assert int(plateau_state.count) == 0


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
  proc = run_cli(
    "--config", "configs/shakespeare_char.py:smoke", "--run_dir", str(tmp_path / "cli")
  )
  assert proc.returncode == 0, proc.stderr
  assert "val loss" in proc.stdout and "finished" in proc.stdout
  stats = json.loads((tmp_path / "cli" / "stats.json").read_text())
  assert stats["step"] == 6 and stats["val_loss"] < 4.4  # below log(84) after 6 steps
  assert (tmp_path / "cli" / "loss.png").stat().st_size > 10_000


@pytest.mark.slow
def test_cli_resume_continues_a_run_from_its_folder(tmp_path):
  run = tmp_path / "run"
  first = run_cli("--config", "configs/shakespeare_char.py:smoke", "--run_dir", str(run))
  assert first.returncode == 0, first.stderr
  # the run's own config.json is the config; --set extends it; a checkpoint path works too
  proc = run_cli("--resume", str(run / "checkpoints"), "--set", "train.steps=8", "--gen_every", "8")
  assert proc.returncode == 0, proc.stderr
  records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in records if "loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == 8 and steps.count(1) == 1  # continued
  assert [r["step"] for r in records if "sample" in r] == [8]
  missing = run_cli("--resume", str(tmp_path / "nowhere"))
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1].startswith("config error: --resume")


@pytest.mark.slow
def test_extra_eval_sets_and_custom_batch_stream(tmp_path, tiny_data):
  from homeo_jax.data import SwitchedBatches, window_batches

  shifted = SwitchedBatches(
    window_batches(tiny_data.train_tokens, seq_len=32, batch_size=8, seed=0),
    window_batches(tiny_data.val_tokens, seq_len=32, batch_size=8, seed=0),
    switch_at=2,
  )
  result = train(
    tiny_config(tmp_path, train={"steps": 3}),
    data=tiny_data,
    train_batches=shifted,
    eval_sets={"heldout": tiny_data.val_tokens[:5000]},
  )
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in records if "val/heldout/loss" in r]
  assert [r["step"] for r in evals] == [3]
  assert np.isfinite(evals[0]["val/heldout/loss"]) and "val_loss/heldout" in result.stats


@pytest.mark.slow
def test_fresh_start_drops_metrics_of_a_run_that_never_checkpointed(tmp_path, tiny_data):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n{"step": 2, "loss": 98.0}\n')
  train(tiny_config(tmp_path, train={"steps": 2}), data=tiny_data)
  assert sorted(losses(tmp_path)) == [1, 2]  # one line per step: only the new run's
  assert losses(tmp_path)[1] < 10


@pytest.mark.slow
def test_regulators_train_through_the_loop_with_donation(tmp_path, tiny_data):
  # ARS keeps effective hyperparameters in two places; jit returns them as one buffer.
  for name in ("ars_adamw", "ord_muon"):
    result = train(
      tiny_config(tmp_path / name, optimizer={"name": name}, train={"steps": 3}), data=tiny_data
    )
    assert result.status == "finished" and np.isfinite(result.stats["train_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("version", ["alpha_lambda_tau", "per_group"])
def test_quantized_lm_with_the_thyroid_trains_through_the_loop(tmp_path, tiny_data, version):
  from homeo_jax.models import QuantTransformerConfig

  cfg = tiny_config(
    tmp_path,
    train={"steps": 3},
    optimizer={
      "name": "thyroid_adamw",
      "kwargs": {"version": version, "weights": "random", "update_every": 1},
    },
  )
  model = QuantTransformerConfig(
    **{f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(cfg.model)}
  )
  cfg = dataclasses.replace(cfg, model_type="quant_transformer", model=model)
  result = train(cfg, data=tiny_data)
  assert result.status == "finished" and np.isfinite(result.stats["val_loss"])
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert "regulators/thyroid/tau" in records[0]


def adaptive_config(run_dir):
  from homeo_jax.models import AdaptiveConfig

  cfg = tiny_config(
    run_dir,
    train={"steps": 8, "eval_every": 4, "checkpoint_every": 4, "log_format": "ouro"},
    optimizer={
      "name": "adamw_compute_price",
      "kwargs": {
        "schedule": {"warmup_steps": 1, "ponder_start": 1, "audit_start": 2, "audit_prob": 0.3},
        # a wide tolerance and a high cap: λ_p settles off its clamps within 8 steps (a price
        # pinned at a clamp never engages the deadband)
        "deadband": {"settle_steps": 2, "settle_rtol": 10.0},
        "price_max": 1.0,
        "controller": {"kind": "seed", "dual_lr": 0.1},
        "reference_steps": 8,
      },
    },
  )
  model = AdaptiveConfig(
    vocab_size=0,
    num_layers=2,
    num_heads=2,
    d_model=32,
    max_seq_len=32,
    char_dim=8,
    pos_dim=4,
    ffn="mlp",
    price_from="compute_price",
  )
  return dataclasses.replace(cfg, model_type="adaptive_transformer", model=model)


@pytest.mark.slow
def test_adaptive_lm_resumes_price_and_deadband_exactly(tmp_path, tiny_data, capsys):
  full = train(adaptive_config(tmp_path / "full"), data=tiny_data)
  from homeo_jax.regulators import regulator_states

  (price,) = regulator_states(full.state.opt_state)
  assert int(price.deadband) == 1 and 1e-4 < float(price.price) < 1.0
  assert "λp" in capsys.readouterr().out  # the operators' per-step line
  records = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  assert {"telemetry/avg_k", "telemetry/layer1/survival2", "regulators/compute_price/price"} <= set(
    records[-2]
  )
  stats = json.loads((tmp_path / "full" / "stats.json").read_text())
  assert "telemetry/k_exec" in stats["last_metrics"]

  run_dir = tmp_path / "paused"
  run_dir.mkdir()
  (run_dir / PAUSE_FILE).touch()
  assert train(adaptive_config(run_dir), data=tiny_data).status == "paused"
  resumed = train(adaptive_config(run_dir), data=tiny_data)
  jax.tree.map(np.testing.assert_array_equal, regulator_states(resumed.state.opt_state)[0], price)
  np.testing.assert_array_equal(
    [losses(run_dir)[s] for s in range(1, 9)], [losses(tmp_path / "full")[s] for s in range(1, 9)]
  )


def test_throughput_leaves_out_compilation_and_new_shapes():
  """As the loop runs it: step n is dispatched, then step n − 1 is flushed. The first step
  compiles; a new batch shape compiles while the step before it flushes (dispatch blocks),
  and its first run allocates: none of those counts."""
  from homeo_jax.training.loop import Throughput

  timer = Throughput(measured_from=1, last=0.0)
  shapes = {1: (8, 65), 2: (8, 65), 3: (8, 65), 4: (16, 65), 5: (16, 65), 6: (16, 65)}
  clock = 0.0
  for step in range(1, 8):
    if step in shapes:
      timer.dispatched(step, shapes[step])
    if step > 1:  # flush the previous step; compiling a step shows in the flush before it
      clock += 10.0 if step in (2, 4) else 1.0
      timer.finished(step - 1, tokens=shapes[step - 1][0] * 64, now=clock)
  # Counted: 2 (8 rows) and 5, 6 (16 rows), 1 s each; 1 compiled, 3 flushed while the new
  # shape compiled, 4 was its first run.
  assert timer.steps == 3 and timer.seconds == 3.0
  assert timer.tokens == (8 + 16 + 16) * 64
  assert timer.tokens_per_second == timer.tokens / 3.0


def test_events_fall_on_their_steps_and_the_last():
  from homeo_jax.training.loop import due

  assert [s for s in range(1, 11) if due(s, 4, 10)] == [4, 8, 10]
  assert not any(due(s, 0, 10) for s in range(1, 11))


def test_non_finite_policy_decides_skip_rollback_or_stop():
  from homeo_jax.training.loop import NonFinitePolicy

  stop = NonFinitePolicy("stop")
  with pytest.raises(
    NonFiniteError, match="step 7: .*on_nonfinite=stop.*newest checkpoint: step 5"
  ):
    stop.decide(7, consecutive_skips=0, rollbacks=0, newest=5)
  skip = NonFinitePolicy("skip", max_consecutive_skips=2)
  assert skip.decide(7, consecutive_skips=1, rollbacks=0, newest=None) == "skip"
  with pytest.raises(NonFiniteError, match="step 8: 2 non-finite steps in a row were skipped"):
    skip.decide(8, consecutive_skips=2, rollbacks=0, newest=None)
  rollback = NonFinitePolicy("rollback", max_rollbacks=1)
  assert rollback.decide(9, consecutive_skips=1, rollbacks=0, newest=4) == "rollback"
  with pytest.raises(NonFiniteError, match="step 9: non-finite again after 1 rollbacks"):
    rollback.decide(9, consecutive_skips=1, rollbacks=1, newest=4)


class _Files:
  """The run files' metrics stream, in memory."""

  def __init__(self):
    self.records = []

  def append_metrics(self, record):
    self.records.append(record)


def test_step_log_writes_due_and_bad_steps_counts_skips_and_prices_mfu():
  from tqdm import tqdm

  from homeo_jax.training.config import TrainConfig
  from homeo_jax.training.loop import StepLog, Throughput

  t = TrainConfig(steps=5, log_every=2, on_nonfinite="skip", progress=False)
  files, stats = _Files(), {"skipped_steps": 0}
  timer = Throughput(measured_from=1, last=0.0)
  log = StepLog(t, files, stats, timer, tqdm(disable=True), lambda i: 1e-3 * (i + 1),
                flops_per_token=10.0, peak_flops=1e6)  # fmt: skip
  bad_steps = []
  for step, nonfinite in [(1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0), (5, 0.0)]:
    metrics = {"loss": float(step), "grads/norm": 1.0, "nonfinite": nonfinite, "regulators/r/x": 2}
    log.submit(step, metrics, 100)
    bad_steps.append(log.flush())
    if step == 4:
      assert log.consecutive_bad == 2
  assert bad_steps == [None, None, 3, 4, None] and log.consecutive_bad == 0
  assert stats["skipped_steps"] == 2 and stats["step"] == 5 and stats["train_loss"] == 5.0
  # logged: every 2nd step, each non-finite one and the last; lr from the schedule at step − 1
  assert [r["step"] for r in files.records] == [2, 3, 4, 5]
  assert [r["lr"] for r in files.records] == pytest.approx([2e-3, 3e-3, 4e-3, 5e-3])
  tok_s = timer.tokens_per_second
  assert tok_s > 0 and stats["mfu"] == pytest.approx(tok_s * 10.0 / 1e6)
  assert log.flush() is None  # nothing pending


def test_validation_is_recorded_with_the_best_step():
  from homeo_jax.training.loop import record_validation

  files, stats = _Files(), {"best_val_loss": None}
  record_validation(10, {"": 2.0, "python": 3.0}, stats, files)
  line = record_validation(20, {"": 2.5, "python": 2.9}, stats, files)
  assert stats["val_loss"] == 2.5 and stats["val_loss/python"] == 2.9
  assert (stats["best_val_loss"], stats["best_val_step"]) == (2.0, 10)
  assert files.records[-1] == {"step": 20, "val/loss": 2.5, "val/python/loss": 2.9}
  assert line == "step     20 | val loss 2.5000 (best 2.0000)"
