"""A context-local list that traced code appends to: what a model does while it is traced.

:func:`experiments.models.layers.record_shapes` (layer shapes, for the FLOP counts) and
:func:`experiments.models.conv_paths.record_choices` (each conv's CPU path) are two of them.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator


class Recorder:
  """``with recorder.collect() as records:`` gathers every :meth:`add` made inside the block."""

  def __init__(self, name: str):
    self._records: contextvars.ContextVar[list | None] = contextvars.ContextVar(name, default=None)

  @contextlib.contextmanager
  def collect(self) -> Iterator[list]:
    records: list = []
    token = self._records.set(records)
    try:
      yield records
    finally:
      self._records.reset(token)

  def add(self, item) -> None:
    """Appends ``item`` to the innermost active :meth:`collect` list, if any."""
    records = self._records.get()
    if records is not None:
      records.append(item)
