"""Side-by-side timing: compiled variants run interleaved in one process.

Interleaving (A, B, C, A, B, C, ...) spreads machine noise over every variant
alike, so the ratios between medians are far steadier than absolute times.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import jax
import numpy as np
import optax
from flax import nnx


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
  return {
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "processor": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "python": platform.python_version(),
    "load_average": os.getloadavg(),  # other work on the machine at the start
    "commit": git_commit(),
  }


def git_commit() -> str | None:
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


def random_batch(shape, batch: int, seed: int = 0, num_classes: int = 10):
  """``(images, labels)``: a normal ``(batch, *shape)`` float32 batch and uniform labels."""
  rng = np.random.default_rng(seed)
  images = jax.numpy.asarray(rng.normal(size=(batch, *shape)), jax.numpy.float32)
  labels = jax.numpy.asarray(rng.integers(0, num_classes, size=(batch,)), jax.numpy.int32)
  return images, labels


def model_gradient(model: nnx.Module, images, labels):
  """``(params, stats, grad_fn)`` of ``model`` in training mode on one fixed batch:
  ``grad_fn(params, stats) -> (gradient of the mean cross-entropy, new BatchNorm stats)``."""
  model.train()
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

  def loss_fn(params, stats):
    m = nnx.merge(graphdef, params, stats, copy=True)  # fresh Variables at this trace level
    loss = optax.softmax_cross_entropy_with_integer_labels(m(images), labels).mean()
    return loss, nnx.state(m, nnx.BatchStat)

  return params, stats, jax.grad(loss_fn, has_aux=True)


def sgd_step(model: nnx.Module, images, labels, compile_context=contextlib.nullcontext()):
  """A zero-argument closure running one compiled training step of ``model``.

  The step: forward in training mode, cross-entropy, backward, SGD with momentum (0.1, 0.9),
  BatchNorm statistics carried; the carry is donated. It is compiled under
  ``compile_context`` (e.g. the conv path's environment switches, read at trace time).
  """
  params, stats, grad_fn = model_gradient(model, images, labels)
  tx = optax.sgd(0.1, momentum=0.9)

  def step(params, stats, opt_state):
    grads, stats = grad_fn(params, stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  carry = [params, stats, tx.init(params)]
  with compile_context:
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*carry).compile()

  def run():
    carry[:] = compiled(*carry)
    jax.block_until_ready(carry)

  return run
