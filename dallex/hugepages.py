"""Transparent huge pages for XLA:CPU's buffers, by re-executing the process.

XLA:CPU takes each step's temporaries (about 100 MB for ``shapes32``) from
malloc, and glibc serves chunks that large from fresh mmaps that it returns
on free: every step faults each of their 4 KiB pages in again. With the
glibc tunable ``glibc.malloc.hugetlb=1`` (glibc 2.35+) malloc asks the kernel
for transparent huge pages for those chunks, and a step faults in 2 MiB pages
instead (docs/performance.md has the step times). The tunable is read only
when a process starts, so the entry points in ``experiments/`` call
``relaunch()`` before anything else: where the kernel gives huge pages only
when asked (``madvise``, the usual default) and ``GLIBC_TUNABLES`` does not
already set it, it adds the tunable and re-executes the same command line
(the same process id, so launchers see no difference). Set
``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` to keep 4 KiB pages.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None  # not glibc (macOS, musl)
  major, minor = version.split(".")[:2]
  return (int(major), int(minor)) if name == "glibc" else None


def read_thp_mode() -> str | None:
  """The kernel's transparent huge page mode line (``always [madvise]
  never``), or None where it has none."""
  try:
    with open(THP_MODE) as f:
      return f.read()
  except OSError:
    return None


def wanted(
    environ: Mapping[str, str],
    thp_mode: str | None,
    glibc: tuple[int, int] | None,
) -> bool:
  """Whether relaunching would turn huge pages on: glibc 2.35 or later,
  a kernel that gives them on request (``thp_mode``, the contents of
  ``THP_MODE``, selects ``[madvise]``), and no setting of the tunable in
  ``GLIBC_TUNABLES`` yet."""
  return (
      glibc is not None
      and glibc >= (2, 35)
      and thp_mode is not None
      and "[madvise]" in thp_mode
      and TUNABLE not in environ.get("GLIBC_TUNABLES", "")
  )


def relaunch() -> None:
  """Re-executes this command with ``glibc.malloc.hugetlb=1`` where that
  turns huge pages on; returns where it would not (or when the relaunched
  process calls it)."""
  if not wanted(os.environ, read_thp_mode(), _glibc_version()):
    return
  tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t]
  os.environ["GLIBC_TUNABLES"] = ":".join(tunables + [f"{TUNABLE}=1"])
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
