"""Side-by-side timing: compiled variants run interleaved in one process.

Interleaving (A, B, C, A, B, C, ...) spreads machine noise over every variant
alike, so the ratios between medians are far steadier than absolute times.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import jax


def interleaved_medians(
  step_fns: dict[str, Callable[[], object]], *, steps: int, warmup: int = 3
) -> dict[str, dict]:
  """Times each zero-argument ``step_fn`` ``steps`` times, interleaved.

  Each call must run one complete step and return its outputs; they are
  blocked on (``jax.block_until_ready``) so the time covers the computation.
  Returns ``{name: {"median_s", "p10_s", "p90_s", "samples"}}``.
  """
  for fn in step_fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  samples = {name: [] for name in step_fns}
  for _ in range(steps):
    for name, fn in step_fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      samples[name].append(time.perf_counter() - start)
  return {name: _stats(s) for name, s in samples.items()}


def _stats(samples):
  ordered = sorted(samples)
  pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
  return {
    "median_s": statistics.median(ordered),
    "p10_s": pick(0.1),
    "p90_s": pick(0.9),
    "samples": len(ordered),
  }


def machine_info() -> dict:
  """Where a benchmark ran: backend, devices, CPU, library versions."""
  import optax  # pylint: disable=g-import-not-at-top

  return {
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "processor": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "python": platform.python_version(),
    "load_average": os.getloadavg(),  # other work on the machine at the start
    "commit": _commit(),
  }


def _commit() -> str | None:
  """The repository's HEAD commit, with ``+dirty`` when tracked files differ from it."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=root,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ("+dirty" if dirty else "")
