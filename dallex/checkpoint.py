"""Orbax checkpoints of a run: the train state, the input iterator's state and the config.

Saves are asynchronous and atomic: Orbax writes into a temporary directory
and renames it when complete, so a process killed mid-save leaves nothing
that is taken for a checkpoint. A finished checkpoint that was damaged later
(files removed or truncated) fails to restore and is skipped, with a warning,
in favour of the newest one that restores; when none restores, the error
names each one and why. Training and the readers (``dallex.load``) share
this one path.

    ckpt = Checkpointer(f"{workdir}/checkpoints", keep=3)
    ckpt.save(step, state, data_state, config_dict)
    restored = ckpt.restore_latest(abstract_state)   # None on a fresh run
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (full disk, permissions, quota)."""


class Restored(NamedTuple):
  """step: the checkpoint's step; state: the train state; data: the input
  iterator's state; config: the config the run was started with (a dict)."""

  step: int
  state: Any
  data: Any
  config: dict


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` with the items of a dallex run."""

  def __init__(
      self,
      directory: str,
      keep: int = 3,
      async_save: bool = True,
      read_only: bool = False,
  ):
    """``keep``: how many of the newest checkpoints to keep; 0 keeps all.
    ``read_only``: a reader's view, which never writes or removes anything
    (not even a leftover temporary directory of a save in progress)."""
    if keep < 0:
      raise ValueError(
          f"keep (train.keep_checkpoints) must be >= 0 (0 keeps all), got {keep}"
      )
    self.directory = os.path.abspath(directory)
    self._pending: int | None = None  # the step of the save in progress
    # Orbax reads max_to_keep=0 as "keep none" and would delete every checkpoint.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep or None,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "config")
    )

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data: Any, config: dict) -> None:
    """Starts saving (returns before the write ends; ``wait()`` to block).

    Raises:
      CheckpointWriteError: this save, or the one before it, failed. A failed
        save leaves no checkpoint behind (its temporary directory is removed
        when the directory is next opened for writing).
    """
    self.wait()
    self._pending = step
    with self._writing():
      self._manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=ocp.args.JsonSave(data),
              config=ocp.args.JsonSave(config),
          ),
          force=True,
      )

  def wait(self) -> None:
    """Blocks until every started save is on disk; raises
    ``CheckpointWriteError`` if one failed."""
    with self._writing():
      self._manager.wait_until_finished()
    self._pending = None

  @contextlib.contextmanager
  def _writing(self):
    """Orbax's errors while writing checkpoint ``_pending`` as one that names it."""
    try:
      yield
    # Orbax and TensorStore raise many types (ValueError for a full disk).
    except Exception as e:
      raise CheckpointWriteError(
          f"could not write checkpoint {self._pending} in {self.directory} "
          f"({write_cause(e)})"
      ) from e

  def restore(
      self, step: int, abstract_state: Any, partial: bool = False
  ) -> Restored:
    """Restores one step onto the structure (and shardings) of ``abstract_state``;
    with ``partial``, a subtree of the saved state (e.g. ``{"ema_params": ...}``).
    """
    if partial:
      state_args = ocp.args.PyTreeRestore(
          item=abstract_state,
          partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              abstract_state
          ),
      )
    else:
      state_args = ocp.args.StandardRestore(abstract_state)
    out = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=state_args,
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        ),
    )
    return Restored(step, out["state"], out["data"], out["config"])

  def restore_latest(
      self,
      abstract_state: Any,
      steps: list[int] | None = None,
      partial: bool = False,
  ) -> Restored | None:
    """The newest checkpoint (of ``steps``, default all) that restores; None
    if there is none.

    A damaged or incompatible checkpoint is skipped with a warning naming it.

    Raises:
      ValueError: there are checkpoints and none restores; names each one and why.
    """
    errors = []
    for step in sorted(
        self.all_steps() if steps is None else steps, reverse=True
    ):
      try:
        return self.restore(step, abstract_state, partial)
      # Orbax and TensorStore raise many types for damaged files.
      except Exception as e:
        errors.append(
            f"{self.directory}/{step}: {type(e).__name__}: {str(e)[:300]}"
        )
        warnings.warn(
            f"checkpoint {self.directory}/{step} could not be restored "
            f"({type(e).__name__}: {str(e)[:200]}); trying an older one",
            stacklevel=2,
        )
    if errors:
      raise ValueError(
          "no checkpoint could be restored (nothing was changed or deleted):\n"
          + "\n".join(errors)
      )
    return None

  def close(self, quiet: bool = False) -> None:
    """Waits for the saves in progress and closes; ``quiet``: a failed save
    raises no error (for cleaning up after one that was already reported)."""
    try:
      self.wait()
    except CheckpointWriteError:
      if not quiet:
        raise
    finally:
      self._manager.close()


def write_cause(e: BaseException) -> str:
  """A failed write's cause in a few words: full disks, permissions and quotas
  by name (Orbax reports them inside long TensorStore messages)."""
  if isinstance(e, OSError) and e.errno:
    return os.strerror(e.errno)
  text = str(e)
  for phrase in ("No space left on device", "Permission denied", "quota"):
    if phrase in text:
      return phrase
  return f"{type(e).__name__}: {text[:300]}"


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding placeholders of a pytree of arrays, for restoring."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
