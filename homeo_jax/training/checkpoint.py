"""Orbax checkpoints of (params, opt_state, step, rng) plus JSON metadata (data position).

Orbax writes each step into a temporary folder and renames it when complete, so a
crash mid-save leaves no half checkpoint among the steps. A checkpoint that is there
but unreadable (truncated or corrupted files, a tree that does not match) is reported
on stderr with its path, and the previous one is tried. Once an older one restores,
the unreadable newer ones are moved (never deleted) to ``<run>/corrupt_checkpoints/``
so the resumed run can save those steps again. If none can be read the restore raises
``CheckpointError`` and touches nothing — a run never silently starts fresh over a
folder that holds checkpoints.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No checkpoint in the folder could be restored."""


class Checkpointer:
  def __init__(self, directory: str | os.PathLike, keep: int = 3):
    self.directory = Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
      ),
    )

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, metadata: dict[str, Any]) -> None:
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)
      ),
      force=True,
    )
    self._manager.wait_until_finished()

  def restore_latest(
    self, like: Any, *, quarantine: bool = True
  ) -> tuple[Any, dict[str, Any]] | None:
    """Restore the newest readable checkpoint into the structure of ``like``.

    Returns ``None`` when the folder holds no checkpoint at all. ``quarantine=False``
    leaves unreadable newer checkpoints where they are (a reader such as
    ``homeo_jax.sample`` must not change the run folder).
    """
    steps = self.steps()
    if not steps:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    failures = []
    for step in reversed(steps):
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()
          ),
        )
        if quarantine:
          self._quarantine([path for path, _ in failures])
        return restored.state, dict(restored.metadata)
      except Exception as e:  # orbax raises many types for unreadable data
        path = self.directory / str(step)
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        failures.append((path, reason))
        print(
          f"checkpoint {path} is unreadable ({reason}); trying the previous one", file=sys.stderr
        )
    raise CheckpointError(
      "no readable checkpoint: " + "; ".join(f"{path} ({reason})" for path, reason in failures)
    )

  def _quarantine(self, paths: list[Path]) -> None:
    if not paths:
      return
    target = self.directory.parent / "corrupt_checkpoints"
    target.mkdir(exist_ok=True)
    for path in paths:
      dest = target / f"{path.name}-{os.getpid()}"
      shutil.move(path, dest)
      print(f"moved unreadable checkpoint {path} to {dest}", file=sys.stderr)
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()
