"""The process a run lives in: JAX's multi-process runtime, stop signals and
glibc's allocator."""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np

from experiments.configs import TrainConfig


def initialize_distributed(cfg: TrainConfig) -> None:
  """Starts JAX's multi-controller runtime (one process per host or GPU).

  With ``--coordinator-address`` the processes meet there; without, JAX
  detects the cluster (Cloud TPU, SLURM, Open MPI, ...). On CPU the
  cross-process collectives use gloo.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if cfg.coordinator_address:
    jax.distributed.initialize(
      coordinator_address=cfg.coordinator_address,
      num_processes=cfg.num_processes,
      process_id=cfg.process_id,
    )
  else:
    jax.distributed.initialize()


class Interrupted(Exception):
  """SIGINT/SIGTERM arrived; the run was checkpointed at ``step``."""

  def __init__(self, signum: int, step: int, out_dir: str):
    super().__init__(signum, step, out_dir)
    self.signum, self.step, self.out_dir = signum, step, out_dir


class StopSignal:
  """Records SIGINT/SIGTERM; the loop stops after the current step."""

  def __init__(self):
    self.signum, self._old = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = {s: signal.signal(s, self._on) for s in (signal.SIGINT, signal.SIGTERM)}
    return self

  def __exit__(self, *exc):
    for s, handler in self._old.items():
      signal.signal(s, handler)

  def _on(self, signum, frame):
    del frame
    self.signum = signum
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends at once

  def requested(self, step: int) -> bool:
    """With one process, at once; with several, all agree at the same step
    (every 25 steps)."""
    if jax.process_count() == 1:
      return self.signum is not None
    if step % 25:
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    self.signum = int(np.max(flags)) or None
    return self.signum is not None


def tune_glibc_malloc() -> None:
  """Makes glibc keep freed memory for reuse instead of unmapping it (process-wide, CPU speed).

  XLA:CPU allocates each execution's temporaries (hundreds of MB for a training step) with
  malloc. Blocks above glibc's mmap threshold are fresh mmaps, so every step page-faults its
  whole working set in again: measured ~40k page faults and ~70 ms of kernel time per CIFAR
  ResNet-20 step (batch 64) on 2 cores, about a quarter of the step. This sets one malloc arena,
  no mmap and no trimming (``mallopt``), after which steps reuse the same memory (the process
  keeps its peak heap). The trim threshold is SIZE_MAX, not mallopt's usual INT_MAX: with a
  2 GiB threshold a working set above 2 GiB (MobileNetV2 at batch 64) was still given back and
  faulted in again every step (650k faults per step; 1.32 s -> 0.73 s without). Call it at
  program start, before JAX runs anything (so JAX's threads attach to the single arena);
  equivalent to starting Python with ``GLIBC_TUNABLES=glibc.malloc.arena_max=1:``
  ``glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615``.
  Raises OSError where glibc's ``mallopt`` is unavailable (non-glibc platforms).
  """
  import ctypes

  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError) as e:
    raise OSError("tune_glibc_malloc needs glibc (libc.so.6 with mallopt)") from e
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
  # mallopt takes an int; glibc stores the trim threshold as size_t, so -1 means SIZE_MAX
  ok = (mallopt(m_arena_max, 1), mallopt(m_mmap_max, 0), mallopt(m_trim_threshold, -1))
  if not all(ok):
    raise OSError(f"mallopt refused a setting: {ok}")


def maybe_tune_glibc_malloc() -> bool:
  """:func:`tune_glibc_malloc` for command-line entry points, unless opted out.

  Skipped (returns ``False``) when ``S2SAM_TUNE_MALLOC`` is ``0``/``false``/``off``/``no``
  or glibc is not there; numerics are unaffected, only allocation.
  """
  if os.environ.get("S2SAM_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "off", "no"):
    return False
  try:
    tune_glibc_malloc()
  except OSError:
    return False
  return True
