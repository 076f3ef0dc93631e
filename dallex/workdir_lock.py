"""One trainer per workdir: an exclusive lock held for as long as a run trains.

The lock is the file ``<workdir>/lock``, held with ``flock`` and naming its
holder (host, process id and the process's start time, in JSON). The kernel
drops an ``flock`` when its process ends, however it ends, so on one host a
dead holder never blocks; a holder that ended without clearing the file
(``kill -9``, a lost machine) is taken over with a warning. Where ``flock``
does not reach across hosts (some network filesystems), the holder's
heartbeat (the file's mtime, renewed every ``HEARTBEAT_S``) decides: a lock
of another host renewed within ``STALE_AFTER_S`` is refused. Readers
(``dallex.load``, evaluation, sampling) take no lock: checkpoints appear on
disk only when complete.

    with workdir_lock.hold(workdir):
      ...  # train
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class WorkdirBusyError(RuntimeError):
  """Another trainer holds the workdir."""


def _start_ticks(pid: int) -> int | None:
  """The process's start time in clock ticks since boot (Linux), which tells a
  live holder from a later process given the same id; None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      # The command name (field 2) may hold spaces; it ends at the last ')'.
      return int(f.read().rsplit(")", 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process: alive
    return True
  return True


def _describe(holder: dict) -> str:
  return (
      f"process {holder.get('pid')} on host {holder.get('host')!r} (since "
      f"{holder.get('since')})"
  )


def _read(fd: int) -> dict | None:
  """The holder recorded in the lock file; None if it is empty (released)."""
  os.lseek(fd, 0, os.SEEK_SET)
  data = os.read(fd, 1 << 16)
  if not data.strip():
    return None
  try:
    holder = json.loads(data)
  except ValueError:
    return {"pid": None, "host": "unknown (unreadable lock file)"}
  return holder if isinstance(holder, dict) else {"host": "unknown"}


def _still_running(holder: dict, path: str) -> bool:
  """Whether the recorded holder may still be training."""
  if holder.get("host") != socket.gethostname():
    return time.time() - os.path.getmtime(path) < STALE_AFTER_S
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid == os.getpid() or not _alive(pid):
    return False
  recorded = holder.get("start_ticks")
  return recorded is None or _start_ticks(pid) in (None, recorded)


def _heartbeat(path: str, stop: threading.Event) -> None:
  while not stop.wait(HEARTBEAT_S):
    with contextlib.suppress(OSError):
      os.utime(path)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[str]:
  """Holds ``<workdir>/lock`` for the body; yields its path.

  Raises:
    WorkdirBusyError: another trainer holds it; the message names the holder.
  """
  path = os.path.join(workdir, "lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read(fd) or {}
      raise WorkdirBusyError(
          f"{workdir} is being trained by {_describe(holder)}: one trainer per "
          "workdir. Wait for it to end or stop it, or train in another workdir."
      ) from None
    previous = _read(fd)
    if previous is not None:
      if _still_running(previous, path):
        raise WorkdirBusyError(
            f"{workdir} is locked by {_describe(previous)}, which may still be "
            f"running (its lock was renewed in the last {STALE_AFTER_S:g} s). "
            f"If it is not, remove {path} and run again."
        )
      warnings.warn(
          f"{path}: taking over the lock of {_describe(previous)}, which is no "
          "longer running",
          stacklevel=3,
      )
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start_ticks": _start_ticks(os.getpid()),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
  except BaseException:
    os.close(fd)
    raise
  stop = threading.Event()
  beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True)
  beat.start()
  try:
    yield path
  finally:
    stop.set()
    beat.join()
    # An empty file is a released lock; removing it instead would let a
    # waiting process lock the removed file while a third creates a new one.
    os.ftruncate(fd, 0)
    os.close(fd)
