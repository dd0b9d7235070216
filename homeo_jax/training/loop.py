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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from homeo_jax.data import TextData, load_text_data, window_batches
from homeo_jax.models import MODEL_TYPES
from homeo_jax.training import config as config_lib
from homeo_jax.training.checkpoint import Checkpointer
from homeo_jax.training.metrics import RunFiles, atomic_write_text, to_python
from homeo_jax.training.optimizers import build_optimizer
from homeo_jax.training.report import write_report
from homeo_jax.training.step import (
  LossFn,
  functional_model,
  init_train_state,
  lm_loss,
  make_eval_step,
  make_train_step,
)

PAUSE_FILE = ".pause"


@dataclasses.dataclass
class RunResult:
  status: str  # "finished" or "paused"
  stats: dict[str, Any]
  run_dir: Path
  state: Any = None


def hardware_description() -> str:
  device = jax.devices()[0]
  desc = (
    f"{jax.device_count()}x {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}"
  )
  if jax.default_backend() == "cpu":
    desc += f", {os.cpu_count()} CPU cores"
  return desc


def load_data(config: config_lib.Config) -> TextData:
  d = config.data
  return load_text_data(
    d.corpus,
    tokenizer=d.tokenizer,
    val_fraction=d.val_fraction,
    bpe_vocab_size=d.bpe_vocab_size,
    max_chars=d.max_chars or None,
  )


def check_data_fits(config: config_lib.Config, data: TextData) -> None:
  for split, tokens in (("training", data.train_tokens), ("validation", data.val_tokens)):
    if len(tokens) <= config.data.seq_len:
      raise config_lib.ConfigError(
        f"data.seq_len={config.data.seq_len} is larger than the {split} split "
        f"({len(tokens)} tokens)"
      )


def model_config(config: config_lib.Config, vocab_size: int):
  """``config.model`` with the vocabulary size filled in from the tokenizer."""
  if config.model.vocab_size == 0:
    return dataclasses.replace(config.model, vocab_size=vocab_size)
  return config.model


def build_model(config: config_lib.Config, vocab_size: int) -> nnx.Module:
  return MODEL_TYPES[config.model_type](
    model_config(config, vocab_size), rngs=nnx.Rngs(params=config.train.seed)
  )


def distinct_buffers(tree: Any) -> Any:
  """Copy leaves that share a buffer with an earlier leaf.

  jit returns one buffer for outputs that are the same value (e.g. a regulator that
  keeps an effective hyperparameter in its own state and in the inner optimizer's), and
  a donated argument must not hold one buffer twice.
  """
  leaves, treedef = jax.tree.flatten(tree)
  seen: set[int] = set()
  out = []
  for leaf in leaves:
    if id(leaf) in seen:
      leaf = jnp.array(leaf, copy=True)
    seen.add(id(leaf))
    out.append(leaf)
  return treedef.unflatten(out)


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


def train(
  config: config_lib.Config,
  *,
  tx: optax.GradientTransformation | None = None,
  data: TextData | None = None,
  model: nnx.Module | None = None,
  loss_fn: LossFn = lm_loss,
  train_batches: Any = None,
  eval_sets: Mapping[str, np.ndarray] | None = None,
) -> RunResult:
  """Train (or resume) the run described by ``config``; see the module docstring.

  Args:
    config: the run; validated before anything is loaded or compiled.
    tx: an optax transform to use instead of ``config.optimizer``.
    data: pre-loaded ``TextData`` (default: loaded from ``config.data``).
    model: an NNX module to use instead of ``config.model_type``.
    loss_fn: ``(logits, targets, telemetry) -> (loss, telemetry)``.
    train_batches: a random-access batch stream (item i = batch i, int ``[B, T + 1]``)
      instead of seeded windows of ``data.train_tokens``, e.g. a distribution shift.
    eval_sets: extra validation token arrays, logged as ``val/<name>/loss``.
  """
  config_lib.validate_config(config)
  t = config.train
  data = data if data is not None else load_data(config)
  check_data_fits(config, data)
  model = model if model is not None else build_model(config, data.vocab_size)
  apply_fn, params = functional_model(model)
  if tx is None:
    tx = build_optimizer(config.optimizer, t.steps, model=model_config(config, data.vocab_size))
  tx = optax.with_extra_args_support(tx)
  state = init_train_state(params, tx, t.seed)

  run_dir = Path(t.run_dir)
  files = RunFiles(run_dir)
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
  stats["total_steps"] = t.steps

  d = config.data
  if train_batches is None:
    train_batches = window_batches(
      data.train_tokens, seq_len=d.seq_len, batch_size=d.batch_size, seed=d.seed
    )

  def fixed_batches(tokens):
    stream = window_batches(tokens, seq_len=d.seq_len, batch_size=d.batch_size, seed=d.seed + 1)
    return [stream[i] for i in range(t.eval_batches)]

  val_sets = {"": fixed_batches(data.val_tokens)}
  val_sets.update({name: fixed_batches(tokens) for name, tokens in (eval_sets or {}).items()})
  train_step = jax.jit(make_train_step(apply_fn, tx, loss_fn), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(apply_fn, loss_fn))
  tokens_per_step = d.batch_size * d.seq_len

  def evaluate(state) -> dict[str, float]:
    return {
      name: float(
        np.mean(jax.device_get([eval_step(state.params, state.opt_state, b) for b in batches]))
      )
      for name, batches in val_sets.items()
    }

  def save(state) -> None:
    checkpointer.save(
      int(state.step), state, {"data_position": position, "stats": to_python(stats)}
    )

  start = int(state.step)
  pending: tuple[int, dict] | None = None
  timer = {"tokens": 0, "seconds": 0.0, "last": time.perf_counter(), "measured_from": start + 1}
  bar = tqdm(
    total=t.steps, initial=start, disable=not t.progress, dynamic_ncols=True, file=sys.stdout
  )
  status = "finished"

  def flush() -> None:
    nonlocal pending
    if pending is None:
      return
    step, metrics = pending
    pending = None
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    if step > timer["measured_from"]:  # the first step includes compilation
      timer["tokens"] += tokens_per_step
      timer["seconds"] += now - timer["last"]
    timer["last"] = now
    tok_s = timer["tokens"] / timer["seconds"] if timer["seconds"] else 0.0
    stats.update(step=step, train_loss=metrics["loss"], tokens_per_second=tok_s)
    headline = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("regulators/")}
    bar.set_postfix(
      loss=f"{metrics['loss']:.4f}",
      tok_s=f"{tok_s:,.0f}",
      **{k: f"{v:.3g}" for k, v in list(headline.items())[:3]},
    )
    bar.update(step - bar.n)
    if step % t.log_every == 0 or step == t.steps:
      files.append_metrics({"step": step, **metrics, "tokens_per_second": tok_s})
      regs = " | ".join(f"{k} {v:.4g}" for k, v in headline.items())
      bar.write(
        f"step {step:6d} | loss {metrics['loss']:.4f} | grad {metrics['grads/norm']:.3f}"
        f" | tok/s {tok_s:,.0f}" + (f" | {regs}" if regs else "")
      )

  with _PauseRequest(run_dir) as pause:
    for step in range(start + 1, t.steps + 1):
      state, metrics = train_step(distinct_buffers(state), train_batches[position])
      position += 1
      flush()
      pending = (step, metrics)
      if step % t.eval_every == 0 or step == t.steps:
        flush()
        val = evaluate(state)
        val_loss = val.pop("")
        stats["val_loss"] = val_loss
        stats.update({f"val_loss/{name}": v for name, v in val.items()})
        if stats["best_val_loss"] is None or val_loss < stats["best_val_loss"]:
          stats.update(best_val_loss=val_loss, best_val_step=step)
        files.append_metrics(
          {"step": step, "val/loss": val_loss, **{f"val/{name}/loss": v for name, v in val.items()}}
        )
        bar.write(f"step {step:6d} | val loss {val_loss:.4f} (best {stats['best_val_loss']:.4f})")
        timer["last"] = time.perf_counter()
      paused = pause.requested()
      if step % t.checkpoint_every == 0 or step == t.steps or paused:
        flush()
        stats["status"] = "paused" if paused and step < t.steps else "running"
        save(state)
        files.write_stats(stats)
        timer["last"] = time.perf_counter()
      if paused and step < t.steps:
        pause.consume()
        status = "paused"
        break
    flush()
  bar.close()
  checkpointer.close()
  stats["status"] = status
  files.write_stats(stats)
  if status == "finished":
    write_report(run_dir, files.read_metrics(), stats)
  else:
    print(f"paused at step {stats['step']}; launch again to resume", file=sys.stderr)
  return RunResult(status=status, stats=stats, run_dir=run_dir, state=state)
