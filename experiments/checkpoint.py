"""Orbax checkpoints of a whole training state, restored bit for bit.

A checkpoint holds one pytree of arrays (params, batch statistics, optimizer
state, anything else the loop carries) plus a small JSON dict (data position,
step counters, metric history). Orbax writes each step to a temporary folder
and renames it when complete, so a killed run never leaves a half-written
checkpoint behind; the manager keeps the last ``keep`` steps.

The tree is saved as its flat list of leaves and rebuilt on restore from the
structure of a freshly initialised state (``template``), so optimizer states
with ``None`` leaves (mask trees), empty states and NamedTuples need no
special handling, and typed PRNG keys round-trip through their key data.

Each checkpoint's JSON part holds a SHA-256 digest of its leaves, checked on
restore, so flipped bytes are caught rather than trained on;
:meth:`Checkpointer.restore_latest_intact` falls back, with a warning naming
the bad step, to the newest checkpoint that reads back whole.

Example:
  >>> import tempfile, jax.numpy as jnp
  >>> d = tempfile.mkdtemp()
  >>> ckpt = Checkpointer(d, keep=2)
  >>> ckpt.save(3, {'w': jnp.arange(3.0)}, {'epoch': 1})
  >>> tree, meta = ckpt.restore({'w': jnp.zeros(3)})
  >>> tree['w'].tolist(), meta['epoch']
  ([0.0, 1.0, 2.0], 1)
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_DIGEST = "leaf_sha256"


class CorruptCheckpoint(ValueError):
  """No intact checkpoint could be read back."""


def finished_steps(directory: str) -> list[int]:
  """Steps of the complete checkpoints under ``directory`` (Orbax writes a
  step to ``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>`` when
  done, so a half-written one is not listed)."""
  if not os.path.isdir(directory):
    return []
  return sorted(
    int(n)
    for n in os.listdir(directory)
    if n.isdigit() and os.path.isdir(os.path.join(directory, n))
  )


def _as_os_error(err: Exception) -> Exception:
  """TensorStore reports a failed write (disk full, permissions) as a
  ``ValueError`` carrying ``os_error_code='N'``; give it back its OSError."""
  found = re.search(r"os_error_code='(\d+)'", str(err))
  if found is None:
    return err
  code = int(found.group(1))
  return OSError(code, os.strerror(code))


def _check_free_space(directory: str, saveable: dict[str, Any]) -> None:
  """Raises ``OSError(ENOSPC)`` before writing when the disk cannot hold
  another uncompressed copy of the state (plus 512 KiB of metadata): a write
  that fails half-way in Orbax's threads reports itself many times over."""
  need = sum(
    np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes for x in saveable.values()
  ) + (512 << 10)
  free = shutil.disk_usage(directory).free
  if free < need:
    raise OSError(
      errno.ENOSPC,
      f"{os.strerror(errno.ENOSPC)}: {free} bytes "
      f"free in {directory}, a checkpoint needs up to {need}",
    )


def digest(saveable: dict[str, Any]) -> str:
  """SHA-256 over every leaf's dtype, shape and bytes, in name order."""
  h = hashlib.sha256()
  for name in sorted(saveable):
    x = np.asarray(jax.device_get(saveable[name]))
    h.update(f"{name}:{x.dtype.str}:{x.shape}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(tree) -> dict[str, Any]:
  leaves = jax.tree.leaves(tree)
  return {
    f"leaf_{i:05d}": jax.random.key_data(x) if _is_key(x) else x for i, x in enumerate(leaves)
  }


def _abstract(x):
  if _is_key(x):
    x = jax.random.key_data(x)
  sharding = getattr(x, "sharding", None)
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


class Checkpointer:
  """Saves and restores ``(tree, meta)`` pairs under ``directory``.

  Args:
    directory: the checkpoint folder (created if missing).
    keep: number of most recent checkpoints kept (older ones are deleted).
  """

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, tree, meta: dict[str, Any]) -> None:
    """Writes checkpoint ``step`` and waits until it is complete on disk."""
    saveable = _to_saveable(tree)
    _check_free_space(self.directory, saveable)
    # A failed write is raised here as one OSError; Orbax's background
    # threads would also log it, traceback and all, once per thread.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.CRITICAL)
    try:
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(saveable),
          meta=ocp.args.JsonSave(dict(meta, **{_DIGEST: digest(saveable)})),
        ),
        force=True,
      )
      self._manager.wait_until_finished()
    except OSError:
      raise
    except Exception as err:  # pylint: disable=broad-except
      raise _as_os_error(err) from err
    finally:
      absl_logger.setLevel(level)

  def restore(self, template, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` (default: the latest) into ``template``'s structure.

    ``template`` is a state of the same structure, shapes and dtypes (e.g.
    the freshly initialised one); its arrays' shardings are reused.
    """
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    leaves, treedef = jax.tree.flatten(template)
    target = {f"leaf_{i:05d}": _abstract(x) for i, x in enumerate(leaves)}
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
    )
    state, meta = restored["state"], dict(restored["meta"])
    if meta.pop(_DIGEST, None) != digest(state):
      raise CorruptCheckpoint(
        f"checkpoint {step} in {self.directory}: its arrays do not match the "
        "digest written with them"
      )
    new_leaves = []
    for i, x in enumerate(leaves):
      value = state[f"leaf_{i:05d}"]
      if _is_key(x):
        value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(x))
      new_leaves.append(value)
    return jax.tree.unflatten(treedef, new_leaves), meta

  def restore_latest_intact(self, template) -> tuple[int, Any, dict[str, Any]]:
    """``(step, tree, meta)`` of the newest checkpoint that reads back whole.

    A checkpoint that fails (truncated or missing files, flipped bytes, bad
    metadata) is skipped with a warning naming its step.

    Raises:
      CorruptCheckpoint: there are checkpoints but none is intact.
      FileNotFoundError: there is no checkpoint.
    """
    steps = finished_steps(self.directory)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    for step in reversed(steps):
      try:
        tree, meta = self.restore(template, step)
        return step, tree, meta
      except Exception as err:  # pylint: disable=broad-except
        # Orbax/TensorStore raise many types for damaged files; each one only
        # means "this step is unusable".
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        warnings.warn(
          f"checkpoint {step} in {self.directory} cannot be read "
          f"({type(err).__name__}: {first_line}); trying an older one"
        )
    raise CorruptCheckpoint(
      f"none of the checkpoints in {self.directory} (steps {steps}) can be "
      "read back intact; start afresh in another --out-dir"
    )

  def close(self) -> None:
    self._manager.close()
