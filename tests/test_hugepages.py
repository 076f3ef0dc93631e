"""The relaunch with glibc's huge-page tunable: when it applies, that the
process relaunched is the same command, and that the tunable removes the page
faults of large buffers that XLA:CPU pays each step."""

import os
import subprocess
import sys
import textwrap

import pytest

from dallex import hugepages

MADVISE = "always [madvise] never\n"


def test_wanted_only_where_it_turns_huge_pages_on():
  assert hugepages.wanted({}, MADVISE, (2, 36))
  assert hugepages.wanted(
      {"GLIBC_TUNABLES": "glibc.rtld.x=1"}, MADVISE, (2, 35)
  )
  # The kernel already gives them, or never does.
  assert not hugepages.wanted({}, "[always] madvise never\n", (2, 36))
  assert not hugepages.wanted({}, "always madvise [never]\n", (2, 36))
  assert not hugepages.wanted({}, None, (2, 36))
  # A glibc without the tunable, or none.
  assert not hugepages.wanted({}, MADVISE, (2, 34))
  assert not hugepages.wanted({}, MADVISE, None)
  # Set already, on or off: the relaunched process, or the user's choice.
  for value in ("0", "1"):
    env = {"GLIBC_TUNABLES": f"glibc.rtld.x=1:glibc.malloc.hugetlb={value}"}
    assert not hugepages.wanted(env, MADVISE, (2, 36))


needs_madvise = pytest.mark.skipif(
    not hugepages.wanted(
        {}, hugepages.read_thp_mode(), hugepages._glibc_version()
    ),
    reason="huge pages are not given on request here",
)


def _run(code: str, *args: str, tunables: str | None = None) -> list[str]:
  """The words `python -c code args` prints, with GLIBC_TUNABLES unset or
  set to ``tunables``."""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  out = subprocess.run(
      [sys.executable, "-c", textwrap.dedent(code), *args],
      env=env,
      capture_output=True,
      text=True,
      check=True,
      timeout=120,
  )
  return out.stdout.split()


@needs_madvise
def test_relaunch_runs_the_same_command_once_with_the_tunable():
  lines = _run(
      """
      import os, sys
      from dallex import hugepages
      print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES", "-"))
      hugepages.relaunch()
      print("main", os.getpid(), os.environ["GLIBC_TUNABLES"], *sys.argv[1:])
      """,
      "--flag=x",
      "last",
  )
  # Printed before the relaunch (flushed), in the relaunched process, and then
  # its main; the relaunched one does not relaunch again.
  assert lines[0::3][:3] == ["start", "start", "main"]
  pid = lines[1]
  assert lines[2] == "-"
  assert lines[3:6] == ["start", pid, "glibc.malloc.hugetlb=1"]
  assert lines[6:] == [
      "main",
      pid,
      "glibc.malloc.hugetlb=1",
      "--flag=x",
      "last",
  ]


@needs_madvise
def test_the_tunable_removes_the_page_faults_of_a_large_buffer():
  """A 64 MiB buffer allocated, written and freed four times, as XLA:CPU's
  temporaries are each step: with 4 KiB pages each round faults 16,384
  pages in again."""
  # Through libc itself: numpy asks for huge pages for its own arrays.
  code = """
      import ctypes, resource
      libc = ctypes.CDLL(None)
      libc.malloc.restype = ctypes.c_void_p
      libc.free.argtypes = [ctypes.c_void_p]
      def touch():
        p = libc.malloc(64 << 20)
        ctypes.memset(p, 1, 64 << 20)
        libc.free(p)
      touch()
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      for _ in range(4):
        touch()
      print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
      """
  plain = int(_run(code)[0])
  tuned = int(_run(code, tunables="glibc.malloc.hugetlb=1")[0])
  assert plain >= 4 * 16_000
  assert tuned < plain / 8
