"""glibc's allocator tuning for the command-line entry points (experiments.runtime)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from experiments import runtime

_FAULTS_SCRIPT = """
import ctypes, resource, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
if sys.argv[1] == "1":
    from experiments import runtime
    runtime.tune_glibc_malloc()
def temporary(size=int(sys.argv[2])):
    p = libc.malloc(size)
    libc.memset(p, 1, size)
    libc.free(p)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
temporary()
before = faults()
for _ in range(int(sys.argv[3])):
    temporary()
print(faults() - before)
"""


# 64 MiB: above glibc's largest mmap threshold (32 MiB); 2.25 GiB: above mallopt's INT_MAX trim
# threshold (working sets that large are trimmed and faulted in again every step).
@pytest.mark.parametrize("size,repeats", [(64 << 20, 5), (9 << 28, 2)], ids=["64MiB", "2.25GiB"])
def test_tune_glibc_malloc_stops_refaulting_freed_memory(size, repeats):
  """Untuned, each temporary is faulted in afresh (a page fault per 4 KiB); tuned, reused."""

  def faults(tuned):
    out = subprocess.run(
      [sys.executable, "-c", _FAULTS_SCRIPT, "1" if tuned else "0", str(size), str(repeats)],
      capture_output=True,
      text=True,
      check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])

  pages = repeats * size // 4096
  assert faults(tuned=False) > pages // 2
  assert faults(tuned=True) < pages // 20


def test_entry_points_can_opt_out_of_malloc_tuning(monkeypatch):
  called = []
  monkeypatch.setattr(runtime, "tune_glibc_malloc", lambda: called.append(1))
  monkeypatch.setenv("S2SAM_TUNE_MALLOC", "0")
  assert runtime.maybe_tune_glibc_malloc() is False and not called
  monkeypatch.setenv("S2SAM_TUNE_MALLOC", "1")
  assert runtime.maybe_tune_glibc_malloc() is True and called == [1]
