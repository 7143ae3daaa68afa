"""Deterministic epoch iteration over a `Source`, with a background prefetch thread.

The order of epoch e under seed s is `np.random.default_rng([s, e]).permutation(n)`
(or 0..n-1 without shuffling): it depends on (seed, epoch) only, so a run resumed at
(epoch, step) sees exactly the batches an uninterrupted run would (`start_step`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

_END = object()


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Batches per epoch: floor(n / b) when dropping the remainder, else ceil(n / b)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def epoch_order(num_examples: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """Example indices of one epoch: a permutation drawn from (seed, epoch), or 0..n-1."""
  if seed < 0 or epoch < 0:
    raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(
  num_examples: int,
  batch_size: int,
  *,
  seed: int,
  epoch: int,
  shuffle: bool = True,
  drop_remainder: bool = True,
) -> list[np.ndarray]:
  """The index arrays of one epoch's batches (the last may be short unless dropped)."""
  order = epoch_order(num_examples, seed=seed, epoch=epoch, shuffle=shuffle)
  count = num_batches(num_examples, batch_size, drop_remainder)
  return [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]


def _prefetched(items: Iterator, size: int) -> Iterator:
  """Runs `items` on a daemon thread, `size` ahead of the consumer."""
  buffer: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in items:
        if not put(item):
          return
      put(_END)
    except BaseException as error:  # handed to the consumer, raised there
      put(_Failure(error))

  thread = threading.Thread(target=produce, name="batches-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is _END:
        return
      if isinstance(item, _Failure):
        raise item.error
      yield item
  finally:
    stop.set()
    thread.join(timeout=5.0)


def batches(
  source,
  batch_size: int,
  *,
  seed: int,
  epoch: int,
  shuffle: bool = True,
  drop_remainder: bool = True,
  start_step: int = 0,
  prefetch: int = 2,
  num_shards: int = 1,
  shard_index: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields one epoch of batches `source.get_batch(indices)`, deterministic in (seed, epoch).

  Args:
    source: a `Source`.
    batch_size: global batch size.
    seed, epoch: select the permutation (see module docstring).
    shuffle: permute (True) or keep the source order.
    drop_remainder: skip the last short batch (True) or yield it.
    start_step: skip the first `start_step` batches of the epoch (for resuming).
    prefetch: batches prepared ahead on a background thread; 0 reads synchronously.
    num_shards, shard_index: multi-host data loading. Each global batch is cut into
      `num_shards` equal contiguous slices and this process gets slice `shard_index`
      (batch_size / num_shards examples). Needs drop_remainder=True.

  Example:
    >>> for batch in batches(source, 128, seed=0, epoch=3):
    ...     images, labels = batch["image"], batch["label"]
  """
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(
      f"need num_shards >= 1 and 0 <= shard_index < num_shards, got {num_shards}, {shard_index}"
    )
  if batch_size % num_shards:
    raise ValueError(f"batch_size ({batch_size}) must be divisible by num_shards ({num_shards})")
  if num_shards > 1 and not drop_remainder:
    raise ValueError("drop_remainder must be True when num_shards > 1 (equal shard shapes)")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  all_indices = batch_indices(
    len(source), batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_remainder=drop_remainder
  )[start_step:]
  per_shard = batch_size // num_shards
  if num_shards > 1:
    all_indices = [
      idx[shard_index * per_shard : (shard_index + 1) * per_shard] for idx in all_indices
    ]
  items = (source.get_batch(idx) for idx in all_indices)
  if prefetch > 0:
    items = _prefetched(items, prefetch)
  return items
