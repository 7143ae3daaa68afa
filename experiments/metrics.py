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
import time
from typing import Any, Dict, Optional

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
  """Appends one JSON object per call to ``<out_dir>/metrics.jsonl`` and
  mirrors numeric values to TensorBoard (``<out_dir>/tb``)."""

  def __init__(self, out_dir: str, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(out_dir, exist_ok=True)
    self._file = open(os.path.join(out_dir, "metrics.jsonl"), "a")
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(out_dir, "tb"))

  def write(self, *, step: int, **values: Any) -> None:
    if not self.enabled:
      return
    record = to_python(dict(step=step, time=time.time(), **values))
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in record.items():
        if name not in ("step", "time") and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
          self._tb.add_scalar(name, value, step)
      self._tb.flush()

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


def write_json(path: str, value: Dict[str, Any]) -> None:
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
    self._start: Optional[float] = None

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
