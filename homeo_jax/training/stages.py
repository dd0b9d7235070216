"""Staged training (modded-nanogpt's schedule): batch size and learning rate by stage.

The ``train.steps - optimizer.extension_steps`` scheduled steps are split into equal stages.
Stage ``s`` reads ``data.batch_multipliers[s] × data.batch_size`` sequences per step and
runs at ``optimizer.stage_lr_multipliers[s] × learning_rate``. Over the last
``cooldown_fraction`` of the scheduled steps the multiplier is blended linearly into the
floor ``min_learning_rate / learning_rate``; the extension steps run at the last stage's
batch and the floor. modded-nanogpt's record (Jordan et al., track 1, 2025) uses three
stages of 8/16/24 × 2048 × 8 tokens, multipliers 1, 1.52, 1.73, cooldown 0.55 to 0.15,
1,560 + 40 steps: ``configs/ord_muon.py:seed``.

A step's batch shape changes at a stage boundary, so the jitted train step compiles once
per stage. The batch stream stays random access by step (item ``i`` = the batch of step
``i``), so a resumed or rolled-back run reads what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import optax


def stage_starts(scheduled_steps: int, num_stages: int) -> np.ndarray:
  """First step index (0-based) of each of ``num_stages`` equal stages."""
  return np.round(np.arange(num_stages) * scheduled_steps / num_stages).astype(np.int64)


def stage_of(step, scheduled_steps: int, num_stages: int):
  """Stage index of 0-based ``step`` (traceable: works on a jnp scalar under jit)."""
  starts = stage_starts(scheduled_steps, num_stages)
  return sum((step >= int(s)) * 1 for s in starts[1:])


def staged_schedule(
  learning_rate: float,
  multipliers: Sequence[float],
  scheduled_steps: int,
  *,
  cooldown_fraction: float,
  floor: float,
  warmup_steps: int = 0,
) -> optax.Schedule:
  """``lr(step) = learning_rate · [m_s·(1 − t) + floor·t]`` with ``m_s`` the stage's
  multiplier and ``t`` the cooldown's progress (0 before it starts, 1 from the last
  scheduled step on); a linear warm-up from 0 over ``warmup_steps`` multiplies it."""
  table = jnp.asarray(multipliers, jnp.float32)
  cooldown_start = int(scheduled_steps * (1.0 - cooldown_fraction))
  cooldown_len = max(scheduled_steps - cooldown_start, 1)

  def schedule(step):
    stage = stage_of(step, scheduled_steps, len(multipliers))
    t = jnp.clip((step - cooldown_start) / cooldown_len, 0.0, 1.0)
    lr = learning_rate * (table[stage] * (1.0 - t) + floor * t)
    if warmup_steps:
      lr = lr * jnp.minimum((step + 1) / warmup_steps, 1.0)
    return lr

  return schedule


def base_batches_before(index: int, multipliers: Sequence[int], scheduled_steps: int) -> int:
  """Base batches a staged stream has read before 0-based step ``index`` (closed form)."""
  starts = [int(x) for x in stage_starts(scheduled_steps, len(multipliers))]
  ends = starts[1:] + [max(index, starts[-1])]
  return sum(
    int(m) * max(0, min(index, end) - start)
    for start, end, m in zip(starts, ends, multipliers, strict=True)
  )


class StagedBatches:
  """Item ``i`` is step ``i``'s batch: ``multipliers[stage(i)]`` consecutive base batches
  of ``base`` (a random-access stream) stacked, so every base batch is read once."""

  def __init__(self, base, multipliers: Sequence[int], scheduled_steps: int):
    if any(int(m) != m or m < 1 for m in multipliers):
      raise ValueError(f"batch multipliers must be integers >= 1, got {tuple(multipliers)}")
    self.base, self.multipliers = base, [int(m) for m in multipliers]
    self.scheduled_steps = scheduled_steps

  def __getitem__(self, index: int) -> np.ndarray:
    first = base_batches_before(index, self.multipliers, self.scheduled_steps)
    count = base_batches_before(index + 1, self.multipliers, self.scheduled_steps) - first
    return np.concatenate([self.base[first + j] for j in range(count)])
