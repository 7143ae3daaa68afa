"""The process a run lives in: JAX's multi-process runtime and stop signals."""

from __future__ import annotations

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
