"""Run logging: per-epoch metrics as JSON lines and TensorBoard events.

Only the first process of a multi-host run writes (``jax.process_index() == 0``).

Example:
  >>> import json, os, tempfile
  >>> d = tempfile.mkdtemp()
  >>> with MetricsWriter(d, tensorboard=False) as w:
  ...   w.write(step=10, epoch=1, train_loss=0.5)
  >>> json.loads(open(os.path.join(d, 'metrics.jsonl')).read())['train_loss']
  0.5
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any

import jax
import numpy as np


def to_python(value):
  """JSON-friendly copy of numbers, arrays and nested containers."""
  if isinstance(value, dict):
    return {str(k): to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else str(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


class MetricsWriter:
  """Writes one JSON object per call to ``<out_dir>/metrics.jsonl`` and
  mirrors numeric values to TensorBoard (``<out_dir>/tb``).

  A fresh run (``history=None``) starts both anew, so it never mixes with an
  older run's rows. A resumed run passes the rows its checkpoint recorded
  (``history``, as returned by :meth:`write`) and the checkpoint's step: the
  file is rewritten to exactly those rows, and TensorBoard drops the events
  an interrupted run logged past that step, so every row appears once.
  """

  def __init__(
    self,
    out_dir: str,
    *,
    tensorboard: bool = True,
    history: list[dict[str, Any]] | None = None,
    resume_step: int | None = None,
  ):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "metrics.jsonl")
    with open(path + ".tmp", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in history or [])
    os.replace(path + ".tmp", path)
    self._file = open(path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter

      tb_dir = os.path.join(out_dir, "tb")
      if history is None:
        shutil.rmtree(tb_dir, ignore_errors=True)
      self._tb = SummaryWriter(tb_dir, purge_step=resume_step)

  def write(self, *, step: int, **values: Any) -> dict[str, Any]:
    """Writes one row; returns it as written (``step``, ``time``, values)."""
    record = to_python(dict(step=step, time=time.time(), **values))
    if not self.enabled:
      return record
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in record.items():
        if (
          name not in ("step", "time")
          and isinstance(value, (int, float))
          and not isinstance(value, bool)
        ):
          self._tb.add_scalar(name, value, step)
      self._tb.flush()
    return record

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_json(path: str, value: dict[str, Any]) -> None:
  """Writes ``value`` as indented JSON atomically (temp file + rename)."""
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(to_python(value), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


class Throughput:
  """Images per second over a window, excluding time spent outside it."""

  def __init__(self):
    self.images = 0
    self.seconds = 0.0
    self._start: float | None = None

  def start(self) -> None:
    self._start = time.perf_counter()

  def stop(self, images: int) -> None:
    if self._start is not None:
      self.seconds += time.perf_counter() - self._start
      self.images += images
      self._start = None

  @property
  def rate(self) -> float:
    return self.images / self.seconds if self.seconds > 0 else float("nan")
