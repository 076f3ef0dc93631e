import json
import os
import socket
import subprocess
import sys
import time

import pytest

from dallex import workdir_lock
from dallex.workdir_lock import WorkdirBusyError


def _holder(path):
  with open(path) as f:
    return json.loads(f.read() or "null")


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_a_second_holder_is_refused_by_name_and_a_release_frees_it(tmp_path):
  with workdir_lock.hold(str(tmp_path)) as path:
    me = _holder(path)
    assert me["pid"] == os.getpid() and me["host"] == socket.gethostname()
    # flock is per open file, so a second hold in this process conflicts too.
    with pytest.raises(WorkdirBusyError) as e:
      with workdir_lock.hold(str(tmp_path)):
        pass
    assert f"process {os.getpid()} on host {socket.gethostname()!r}" in str(
        e.value
    )
    assert _holder(path) == me  # the refused one changed nothing
  assert _holder(path) is None  # released: empty
  with workdir_lock.hold(str(tmp_path)) as path:
    assert _holder(path)["pid"] == os.getpid()


def test_a_dead_holder_is_taken_over_with_a_warning(tmp_path):
  path = tmp_path / "lock"
  dead = _dead_pid()
  path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead}))
  with pytest.warns(
      UserWarning, match=f"taking over the lock of process {dead}"
  ):
    with workdir_lock.hold(str(tmp_path)):
      assert _holder(path)["pid"] == os.getpid()


def test_a_live_holder_that_lost_its_flock_is_still_refused(tmp_path):
  """The lock file names a running process (its flock gone, e.g. the file was
  replaced): refused, with the way out."""
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    (tmp_path / "lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": live.pid})
    )
    with pytest.raises(WorkdirBusyError, match="may still be running"):
      with workdir_lock.hold(str(tmp_path)):
        pass
  finally:
    live.kill()
    live.wait()


def test_another_hosts_lock_counts_while_its_heartbeat_is_fresh(tmp_path):
  path = tmp_path / "lock"
  path.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
  with pytest.raises(WorkdirBusyError, match="on host 'elsewhere'"):
    with workdir_lock.hold(str(tmp_path)):
      pass
  old = time.time() - 2 * workdir_lock.STALE_AFTER_S
  os.utime(path, (old, old))
  with pytest.warns(UserWarning, match="taking over"):
    with workdir_lock.hold(str(tmp_path)):
      assert _holder(path)["host"] == socket.gethostname()
