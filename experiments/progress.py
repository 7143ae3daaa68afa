"""Progress of a run: the epoch's running sums, throughput and the bar.

The train step returns device scalars; :class:`Progress` keeps them pending
and reads them back in batches (every ``sync_every`` steps and at epoch
ends), so the host never waits on the device inside a block of steps.
Throughput counts the images and wall time between reads, excluding the
first step of the command (compilation).

Example::

    progress = Progress(batch_size=128, total_steps=1000, label="train")
    for step in range(1000):
        progress.step(train_step(...)[-1])
    progress.end_epoch()  # -> {"train_loss": ..., "train_accuracy": ...}
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax


class Progress:
  """Running sums of one epoch, images/s of the command, a tqdm bar."""

  def __init__(
    self,
    batch_size: int,
    total_steps: int,
    *,
    initial_step: int = 0,
    label: str = "train",
    show: bool = True,
    sync_every: int = 25,
  ):
    from tqdm.auto import tqdm

    self.batch_size, self.sync_every = batch_size, sync_every
    self.images, self.seconds = 0, 0.0  # throughput, summed over the command
    self._pending: list[Any] = []
    self._unsynced, self._last = 0, time.perf_counter()
    self._compiled = False
    self.sums = dict(loss=0.0, correct=0.0, seen=0)
    self.shown = dict(test_acc="-")
    self.bar = tqdm(
      total=total_steps,
      initial=initial_step,
      desc=label,
      unit="step",
      disable=not show,
      dynamic_ncols=True,
      mininterval=1.0,
    )

  @property
  def rate(self) -> float | None:
    """Images per second so far, ``None`` before a timed step."""
    return self.images / self.seconds if self.seconds > 0 else None

  def start_epoch(self, sums: dict[str, float] | None = None) -> None:
    """Zeroes the running sums (or restores those of a resumed epoch)."""
    self.sums = dict(sums) if sums else dict(loss=0.0, correct=0.0, seen=0)
    self._last, self._unsynced = time.perf_counter(), 0

  def step(self, metrics: dict[str, jax.Array], epoch_label: str = "") -> None:
    """Records one step's ``{loss, correct}`` (device scalars)."""
    self._pending.append(metrics)
    if not self._compiled:  # keep compilation out of the throughput
      self._sync()
      self._compiled = True
    else:
      self._unsynced += self.batch_size
    if len(self._pending) >= self.sync_every:
      rate = self._sync()
      seen = max(self.sums["seen"], 1)
      self.bar.set_postfix(
        epoch=epoch_label,
        loss=f"{self.sums['loss'] / seen:.4f}",
        acc=f"{self.sums['correct'] / seen:.4f}",
        img_s="-" if rate is None else f"{rate:.0f}",
        **self.shown,
        refresh=False,
      )
    self.bar.update(1)

  def _sync(self) -> float | None:
    for m in jax.device_get(self._pending):
      self.sums["loss"] += float(m["loss"]) * self.batch_size
      self.sums["correct"] += float(m["correct"])
      self.sums["seen"] += self.batch_size
    now = time.perf_counter()
    rate = None
    if self._unsynced and now > self._last:
      rate = self._unsynced / (now - self._last)
      self.images += self._unsynced
      self.seconds += now - self._last
    self._pending, self._last, self._unsynced = [], now, 0
    return rate

  def end_epoch(self) -> dict[str, float]:
    """Reads back what is pending; the epoch's mean loss and accuracy."""
    self._sync()
    seen = max(self.sums["seen"], 1)
    return dict(train_loss=self.sums["loss"] / seen, train_accuracy=self.sums["correct"] / seen)

  def show_eval(self, epoch_label: str, accuracy: float) -> None:
    self.shown["test_acc"] = f"{accuracy:.4f}"
    self.bar.set_postfix(epoch=epoch_label, **self.shown, refresh=False)

  def write(self, line: str) -> None:
    self.bar.write(line)

  def state(self) -> list[float]:
    """The throughput counters, for the checkpoint."""
    return [self.images, self.seconds]

  def restore(self, counters) -> None:
    self.images, self.seconds = counters

  def close(self) -> None:
    self.bar.close()


def finite_or_none(x: float | None) -> float | None:
  """``x`` if it is a finite number, else ``None`` (never a NaN in outputs)."""
  return x if x is not None and math.isfinite(x) else None
