"""The one training loop: jit, eval, checkpoints, pause/resume, metrics, report.

    result = train(config)            # or train(config, tx=my_optax_transform)

A run folder holds ``config.json``, ``metrics.jsonl``, ``stats.json`` (rewritten
atomically as the run goes), ``checkpoints/``, and at the end ``report.md`` with
``loss.png`` (and ``regulators.png`` when regulators log). Launching again on the same
folder resumes from the newest readable checkpoint. SIGINT/SIGTERM or a ``.pause`` file
in the run folder finishes the current step, saves and returns ``status="paused"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from homeo_jax import regulators
from homeo_jax.cores import signals
from homeo_jax.data import TextData, window_batches
from homeo_jax.data.tokenizers import encode_prompt
from homeo_jax.models.decode import can_generate, generate
from homeo_jax.models.losses import LossFn
from homeo_jax.training import config as config_lib
from homeo_jax.training import flops as flops_lib
from homeo_jax.training.build import check_data_fits, hardware_description, load_data, setup
from homeo_jax.training.checkpoint import Checkpointer
from homeo_jax.training.console import LINE_FORMATS, layer_rows
from homeo_jax.training.metrics import RunFiles, atomic_write_text, to_python
from homeo_jax.training.report import write_report
from homeo_jax.training.stages import StagedBatches

PAUSE_FILE = ".pause"


@dataclasses.dataclass
class RunResult:
  status: str  # "finished" or "paused"
  stats: dict[str, Any]
  run_dir: Path
  state: Any = None


@dataclasses.dataclass
class Throughput:
  """Tokens per second over the measured steps: the first step (compilation) is left out,
  and so are the step flushed while a new batch shape (a staged batch) compiled and that
  shape's first run (buffer allocation)."""

  measured_from: int  # steps after this one count
  tokens: int = 0
  seconds: float = 0.0
  steps: int = 0
  last: float = dataclasses.field(default_factory=time.perf_counter)
  compiled_during: int = -2  # the step flushed while a new shape compiled
  shape: tuple | None = None

  def dispatched(self, step: int, shape: tuple) -> None:
    """A step is about to run on a batch of ``shape``."""
    if self.shape is not None and shape != self.shape:
      self.compiled_during = step - 1
    self.shape = shape

  def finished(self, step: int, tokens: int, now: float | None = None) -> float:
    """Account for ``step``'s ``tokens``; returns the step's wall time."""
    now = time.perf_counter() if now is None else now
    seconds = now - self.last
    if step > self.measured_from and step - self.compiled_during not in (0, 1):
      self.tokens += tokens
      self.seconds += seconds
      self.steps += 1
    self.last = now
    return seconds

  def restart_clock(self) -> None:
    """Evaluation, sampling or saving ran since the last step: not a step's time."""
    self.last = time.perf_counter()

  @property
  def tokens_per_second(self) -> float:
    return self.tokens / self.seconds if self.seconds else 0.0


@dataclasses.dataclass
class StepLog:
  """Each step's record. A step's metrics are read one step late (``pending``), so the host
  never waits on the device: ``flush`` writes them to ``metrics.jsonl`` (every ``log_every``
  steps, the last step and every non-finite one) and the console, updates ``stats`` with the
  throughput and MFU, and counts the non-finite steps in a row."""

  train: config_lib.TrainConfig
  files: RunFiles
  stats: dict[str, Any]
  timer: Throughput
  bar: Any  # a tqdm progress bar
  lr_schedule: Callable[[int], Any] | None = None
  flops_per_token: float = 0.0
  peak_flops: float | None = None
  pending: tuple[int, Any, int] | None = None  # (step, metrics on the device, tokens)
  consecutive_bad: int = 0

  def submit(self, step: int, metrics: Mapping[str, Any], tokens: int) -> None:
    self.pending = (step, metrics, tokens)

  def discard(self) -> None:
    """A rollback undid the pending step."""
    self.pending = None

  def flush(self) -> int | None:
    """Log the pending step; return that step if its update was non-finite."""
    if self.pending is None:
      return None
    t, stats = self.train, self.stats
    step, metrics, step_tokens = self.pending
    self.pending = None
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    step_seconds = self.timer.finished(step, step_tokens)
    tok_s = self.timer.tokens_per_second
    bad = metrics.get("nonfinite", 0.0) > 0
    self.consecutive_bad = self.consecutive_bad + 1 if bad else 0
    if bad and t.on_nonfinite == "skip":
      stats["skipped_steps"] += 1
    stats.update(step=step, train_loss=metrics["loss"], tokens_per_second=tok_s)
    if self.timer.steps:
      stats["seconds_per_step"] = self.timer.seconds / self.timer.steps
    if self.peak_flops and tok_s:
      stats["mfu"] = metrics["mfu"] = tok_s * self.flops_per_token / self.peak_flops
    headline = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("regulators/")}
    metrics.update(dt=step_seconds, tok_s=tok_s)
    self.bar.set_postfix(
      loss=f"{metrics['loss']:.4f}",
      tok_s=f"{tok_s:,.0f}",
      **{k: f"{v:.3g}" for k, v in list(headline.items())[:3]},
    )
    self.bar.update(step - self.bar.n)
    if step % t.log_every == 0 or step == t.steps or bad:
      if self.lr_schedule is not None:  # evaluated on the host only for logged steps
        metrics["lr"] = float(self.lr_schedule(step - 1))
      self.files.append_metrics({"step": step, **metrics, "tokens_per_second": tok_s})
      stats["last_metrics"] = metrics
      if layers := layer_rows(metrics):
        stats["layers"] = layers
      for line in LINE_FORMATS[t.log_format](step, metrics):
        self.bar.write(line)
    return step if bad else None


def record_validation(step: int, losses: dict[str, float], stats: dict, files: RunFiles) -> str:
  """Put an evaluation's losses (``""``: the validation split; names: ``eval_sets``) in
  ``stats`` and ``metrics.jsonl``, track the best; returns the console line."""
  losses = dict(losses)
  val_loss = losses.pop("")
  stats["val_loss"] = val_loss
  stats.update({f"val_loss/{name}": v for name, v in losses.items()})
  if stats["best_val_loss"] is None or val_loss < stats["best_val_loss"]:
    stats.update(best_val_loss=val_loss, best_val_step=step)
  files.append_metrics(
    {"step": step, "val/loss": val_loss, **{f"val/{n}/loss": v for n, v in losses.items()}}
  )
  return f"step {step:6d} | val loss {val_loss:.4f} (best {stats['best_val_loss']:.4f})"


def due(step: int, every: int, last: int) -> bool:
  """Whether an every-``every``-steps event (eval, sample, checkpoint) falls on ``step``; the
  run's ``last`` step always has one (``every`` 0: never)."""
  return bool(every) and (step % every == 0 or step == last)


class NonFiniteError(RuntimeError):
  """The run met non-finite values its ``train.on_nonfinite`` policy could not absorb."""


@dataclasses.dataclass(frozen=True)
class NonFinitePolicy:
  """``train.on_nonfinite`` as a decision: what a non-finite step does to the run.

  ``"stop"`` ends it; ``"skip"`` drops the update (the guarded step already did) until
  ``max_consecutive_skips`` in a row; ``"rollback"`` restores the newest checkpoint with
  the update scale times ``lr_scale``, at most ``max_rollbacks`` times.
  """

  mode: str
  max_consecutive_skips: int = 20
  max_rollbacks: int = 3
  lr_scale: float = 0.5

  @classmethod
  def from_config(cls, t: config_lib.TrainConfig) -> NonFinitePolicy:
    return cls(t.on_nonfinite, t.max_consecutive_skips, t.max_rollbacks, t.rollback_lr_scale)

  def decide(
    self, bad_step: int, consecutive_skips: int, rollbacks: int, newest: int | None
  ) -> str:
    """``"skip"`` or ``"rollback"`` for non-finite step ``bad_step``; raises
    ``NonFiniteError`` when the run must stop (``newest``: the newest checkpoint's step)."""
    if self.mode == "stop":
      raise NonFiniteError(
        f"step {bad_step}: non-finite loss or gradient (train.on_nonfinite=stop); nothing "
        f"non-finite was saved, newest checkpoint: step {newest}"
      )
    if self.mode == "skip":
      if consecutive_skips >= self.max_consecutive_skips:
        raise NonFiniteError(
          f"step {bad_step}: {consecutive_skips} non-finite steps in a row were skipped "
          f"(train.max_consecutive_skips); lower the learning rate or use on_nonfinite=rollback"
        )
      return "skip"
    if rollbacks >= self.max_rollbacks:
      raise NonFiniteError(
        f"step {bad_step}: non-finite again after {rollbacks} rollbacks "
        f"(train.max_rollbacks); newest checkpoint: step {newest}"
      )
    return "rollback"


@dataclasses.dataclass
class Recovery:
  """What a non-finite step does to the run, carried out: nothing on ``"skip"`` (the guarded
  step already dropped the update), ``NonFiniteError`` on ``"stop"`` or past a limit, and on
  ``"rollback"`` the newest checkpoint (or the initial state, before the first) restored with
  its update scale multiplied by ``rollback_lr_scale``, the metrics after it truncated and the
  data seen since skipped."""

  policy: NonFinitePolicy
  checkpointer: Checkpointer
  initial: Any  # the host copy of the step-0 state (rollback before any checkpoint), or None
  log: StepLog  # its run files, stats, progress bar and clock are the run's

  def __call__(self, bad_step: int | None, state: Any) -> Any | None:
    """The state to continue from after a rollback, or None (no fault, or skipped)."""
    if bad_step is None:
      return None
    stats = self.log.stats
    saved = self.checkpointer.steps()
    newest = saved[-1] if saved else None
    decision = self.policy.decide(bad_step, self.log.consecutive_bad, stats["rollbacks"], newest)
    if decision == "skip":
      print(f"step {bad_step}: non-finite loss or gradient; update skipped", file=sys.stderr)
      return None
    restored = self.checkpointer.restore_latest(state)
    if restored is not None:
      target = restored[0]
    else:
      target = jax.tree.map(lambda h, d: jax.device_put(h, d.sharding), self.initial, state)
    scale = float(target.update_scale) * self.policy.lr_scale
    state = target._replace(
      update_scale=jax.device_put(np.float32(scale), target.update_scale.sharding)
    )
    back_to = int(state.step)
    stats["rollbacks"] += 1
    stats["rolled_back_steps"] += bad_step - back_to
    self.log.files.truncate_after(back_to)
    self.log.files.append_metrics(
      {"step": back_to, "event": "rollback", "from_step": bad_step, "update_scale": scale}
    )
    print(
      f"step {bad_step}: non-finite loss or gradient; rolled back to step {back_to} with "
      f"update scale {scale:g}, skipping the data seen since",
      file=sys.stderr,
    )
    self.log.discard()
    self.log.bar.n = back_to
    self.log.bar.refresh()
    self.log.timer.restart_clock()
    return state


def prepare_run_dir(run_dir: Path, *, tensorboard: bool = True) -> RunFiles:
  """Create the run folder and prove it writable, before any data is loaded or compiled."""
  try:
    files = RunFiles(run_dir, tensorboard=tensorboard)
    probe = run_dir / f".write_test{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise config_lib.ConfigError(
      f"train.run_dir={str(run_dir)!r} cannot be created or written: {e.strerror or e}"
    ) from None
  return files


class _PauseRequest:
  """Set by SIGINT/SIGTERM or by a ``.pause`` file in the run folder."""

  def __init__(self, run_dir: Path):
    self.pause_file = run_dir / PAUSE_FILE
    self.signalled = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      with contextlib.suppress(ValueError):  # off the main thread only the pause file works
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    self.signalled = True

  def requested(self) -> bool:
    return self.signalled or self.pause_file.exists()

  def consume(self) -> None:
    self.signalled = False
    self.pause_file.unlink(missing_ok=True)


def make_sampler(model: nnx.Module, prompt: np.ndarray, t: config_lib.TrainConfig, tokenizer):
  """``sample(state, step) -> text``: ``t.sample_tokens`` tokens after the encoded
  ``prompt`` from the state's parameters, with the regulators' deployment controls
  (seeded by step)."""
  if not can_generate(model):
    raise config_lib.ConfigError(
      f"train.sample_every={t.sample_every} but {type(model).__name__} has no decode_step"
    )
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  def sample(state, step: int) -> str:
    params, opt_state = jax.device_get((state.params, state.opt_state))
    tokens = generate(
      nnx.merge(graphdef, params, rest),
      prompt[None],
      t.sample_tokens,
      key=jax.random.key(t.seed + step),
      temperature=t.sample_temperature,
      top_k=t.sample_top_k,
      controls=regulators.controls(opt_state, deployment=True),
    )
    return tokenizer.decode(np.asarray(tokens)[0])

  return sample


def train(
  config: config_lib.Config,
  *,
  tx: optax.GradientTransformation | None = None,
  data: TextData | None = None,
  model: nnx.Module | None = None,
  loss_fn: LossFn | None = None,
  train_batches: Any = None,
  eval_sets: Mapping[str, np.ndarray] | None = None,
) -> RunResult:
  """Train (or resume) the run described by ``config``; see the module docstring.

  Args:
    config: the run; validated before anything is loaded or compiled.
    tx: an optax transform to use instead of ``config.optimizer``.
    data: pre-loaded ``TextData`` (default: loaded from ``config.data``).
    model: an NNX module to use instead of ``config.model_type``.
    loss_fn: ``(logits, targets, telemetry) -> (loss, telemetry)``; default: the model's
      ``loss_fn`` attribute if it has one, else next-token cross entropy.
    train_batches: a random-access batch stream (item i = batch i, int ``[B, T + 1]``)
      instead of seeded windows of ``data.train_tokens``, e.g. a distribution shift; or
      one with ``batch_for(i, state)``, whose batches depend on the training state (the
      closed loop of ``training/closed_loop.py``).
    eval_sets: extra validation token arrays, logged as ``val/<name>/loss``.
  """
  config_lib.validate_config(config)
  t = config.train
  run_dir = Path(t.run_dir)
  files = prepare_run_dir(run_dir, tensorboard=t.tensorboard)
  data = data if data is not None else load_data(config)
  check_data_fits(config, data)
  prompt = None
  if t.sample_every:  # checked before anything compiles
    try:
      prompt = encode_prompt(data.tokenizer, t.sample_prompt, "train.sample_prompt")
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from None
  run = setup(config, data, tx=tx, model=model, loss_fn=loss_fn)
  state, params, put = run.state, run.state.params, run.put

  atomic_write_text(run_dir / "config.json", config_lib.to_json(config))
  checkpointer = Checkpointer(run_dir / "checkpoints", keep=t.keep_checkpoints)
  stats: dict[str, Any] = {
    "name": config.name,
    "hardware": hardware_description(),
    "seed": t.seed,
    "num_params": sum(x.size for x in jax.tree.leaves(params)),
    "total_steps": t.steps,
    "best_val_loss": None,
    "best_val_step": None,
    "tokens_per_second": 0.0,
    # Wasted compute, measured: updates dropped, steps undone by rollbacks, rollbacks.
    "skipped_steps": 0,
    "rolled_back_steps": 0,
    "rollbacks": 0,
  }
  position = 0
  restored = checkpointer.restore_latest(state)
  if restored is not None:
    state, metadata = restored
    position = int(metadata["data_position"])
    stats.update(metadata.get("stats", {}))
    print(f"resumed {run_dir} at step {int(state.step)}", file=sys.stderr)
  # Records past the restored step (or all, on a fresh start) came from a run that did
  # not reach its next checkpoint; the steps are re-run and re-logged.
  files.truncate_after(int(state.step))
  files.open_events()
  stats["total_steps"] = t.steps

  d = config.data
  hosts = jax.process_count()  # each host reads its own windows of the global batch
  host_rows = dict(
    batch_size=d.batch_size // hosts, shard_index=jax.process_index(), shard_count=hosts
  )
  if train_batches is None:
    train_batches = window_batches(data.train_tokens, seq_len=d.seq_len, seed=d.seed, **host_rows)
    if d.batch_multipliers:
      scheduled = t.steps - config.optimizer.extension_steps
      train_batches = StagedBatches(train_batches, d.batch_multipliers, scheduled)
  elif d.batch_multipliers:
    raise config_lib.ConfigError(
      "data.batch_multipliers stages the default batch stream; a train_batches stream sets "
      "its own batch sizes"
    )

  def fixed_batches(tokens):
    stream = window_batches(tokens, seq_len=d.seq_len, seed=d.seed + 1, **host_rows)
    return [put(stream[i]) for i in range(t.eval_batches)]

  val_sets = {"": fixed_batches(data.val_tokens)}
  val_sets.update({name: fixed_batches(tokens) for name, tokens in (eval_sets or {}).items()})
  train_step, eval_step, lr_schedule = run.train_step, run.eval_step, run.lr_schedule
  if lr_schedule is not None:  # compiled once, here, so no timed step pays for it
    lr_schedule = jax.jit(lr_schedule)
    lr_schedule(0)

  # MFU: the step's FLOPs from XLA's cost analysis of the lowered program (no compile)
  # over the device peak (a table, or a measured matmul probe on the CPU).
  def batch_at(index: int) -> np.ndarray:
    # A closed-loop stream (training/closed_loop.py) generates from the current state.
    if hasattr(train_batches, "batch_for"):
      return train_batches.batch_for(index, state)
    return train_batches[index]

  first = batch_at(position)
  step_flops = flops_lib.step_cost(train_step.lower(state, put(first)))["flops"]
  # Per token: a staged batch scales the step's FLOPs.
  flops_per_token = step_flops / (first.shape[0] * hosts * (first.shape[1] - 1))
  peak, peak_source = flops_lib.device_peak()
  stats.update(flops_per_step=step_flops, peak_flops=peak, peak_source=peak_source)
  sample = make_sampler(run.model, prompt, t, data.tokenizer) if t.sample_every else None

  def evaluate(state) -> dict[str, float]:
    return {
      name: float(
        np.mean(jax.device_get([eval_step(state.params, state.opt_state, b) for b in batches]))
      )
      for name, batches in val_sets.items()
    }

  all_finite = jax.jit(signals.tree_all_finite)

  def save(state) -> None:
    # Guarded steps keep the state finite; this check is what keeps rotation from ever
    # deleting the last good checkpoint in favour of a non-finite one.
    if not bool(all_finite(state)):
      print(
        f"not saving step {int(state.step)}: the state holds non-finite values", file=sys.stderr
      )
      return
    checkpointer.save(
      int(state.step), state, {"data_position": position, "stats": to_python(stats)}
    )

  start = int(state.step)
  # Rollback target before the first checkpoint: the initial state, kept on the host.
  initial = jax.device_get(state) if t.on_nonfinite == "rollback" and start == 0 else None
  timer = Throughput(measured_from=start + 1)
  bar = tqdm(
    total=t.steps, initial=start, disable=not t.progress, dynamic_ncols=True, file=sys.stdout
  )
  log = StepLog(t, files, stats, timer, bar, lr_schedule, flops_per_token, peak)
  status = "finished"

  recovery = Recovery(NonFinitePolicy.from_config(t), checkpointer, initial, log)

  def on_fault(bad_step: int | None) -> bool:
    """True if a non-finite step rolled the run back (``state``, ``step`` restored)."""
    nonlocal state, step
    restored = recovery(bad_step, state)
    if restored is None:
      return False
    state, step = restored, int(restored.step)
    return True

  step = start
  try:
    with _PauseRequest(run_dir) as pause:
      while step < t.steps:
        step += 1
        batch = batch_at(position)
        timer.dispatched(step, batch.shape)
        state, metrics = train_step(state, put(batch))
        position += 1  # a rollback keeps the position: the data that diverged is skipped
        if on_fault(log.flush()):
          continue
        log.submit(step, metrics, batch.shape[0] * hosts * (batch.shape[1] - 1))
        if due(step, t.eval_every, t.steps):
          if on_fault(log.flush()):
            continue
          bar.write(record_validation(step, evaluate(state), stats, files))
          timer.restart_clock()
        if t.sample_every and step % t.sample_every == 0:
          if on_fault(log.flush()):
            continue
          text = sample(state, step)
          stats["last_sample"] = {"step": step, "text": text}
          files.append_metrics({"step": step, "sample": text})
          bar.write(f"step {step:6d} | sample:\n{text}")
          timer.restart_clock()
        paused = pause.requested()
        if due(step, t.checkpoint_every, t.steps) or paused:
          if on_fault(log.flush()):
            continue
          stats["status"] = "paused" if paused and step < t.steps else "running"
          save(state)
          files.write_stats(stats)
          timer.restart_clock()
        if paused and step < t.steps:
          pause.consume()
          status = "paused"
          break
      log.flush()
  except NonFiniteError:
    stats["status"] = "stopped: non-finite"
    files.write_stats(stats)
    raise
  finally:
    bar.close()
    checkpointer.close()
    files.close()
  stats["status"] = status
  files.write_stats(stats)
  if status == "finished":
    write_report(run_dir, files.read_metrics(), stats)
  else:
    print(f"paused at step {stats['step']}; launch again to resume", file=sys.stderr)
  return RunResult(status=status, stats=stats, run_dir=run_dir, state=state)
