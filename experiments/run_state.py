"""The state of a run, its work dir and its checkpoints.

A run's out dir is a work dir (as in flax's examples): the same command
started again resumes an interrupted run from its newest intact checkpoint,
bit for bit, or reports a finished run's results; settings that differ from
the saved run's are refused. A checkpoint holds everything the next step
depends on: params, batch statistics, optimizer state (masks, momentum,
S2-SAM's stored perturbation, the sparse methods' keys), the LT rewind
point, the base PRNG key and the position (round, step); its metadata the
metrics rows so far, a partial epoch's running sums and the throughput.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax

from experiments.checkpoint import Checkpointer, finished_steps
from experiments.configs import TrainConfig
from experiments.metrics import to_python

# Flags that may differ between a run and its resumption.
RUN_ONLY_FIELDS = frozenset(
  {
    "resume",
    "max_steps",
    "progress",
    "out_dir",
    "data_dir",
    "eval_every",
    "eval_batch_size",
    "checkpoint_every",
    "keep_checkpoints",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "extra_eval",
    "config",
  }
)


class RunState(NamedTuple):
  """Everything a training step reads, and where the run stands.

  ``step`` counts the steps of the current round (epoch and step in the
  epoch are ``divmod(step, steps_per_epoch)``); ``rewind`` holds the LT
  rewind point ``{params, stats}`` (empty for other methods); ``rng`` is the
  base key of the per-step keys.
  """

  params: Any
  stats: Any
  opt_state: Any
  rewind: dict
  rng: jax.Array
  round: int = 0
  step: int = 0

  def arrays(self) -> dict[str, Any]:
    """The checkpointed pytree (the position goes into the metadata)."""
    return dict(
      params=self.params,
      stats=self.stats,
      opt_state=self.opt_state,
      rewind=self.rewind,
      rng=self.rng,
    )


def checkpoint_id(round_index: int, step: int, total_steps: int) -> int:
  """One increasing id over the rounds: the checkpoint's step and the data
  of the step key (``fold_in(rng, id)``)."""
  return round_index * (total_steps + 1) + step


def config_changes(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
  """``'field: saved -> now'`` for each setting that differs from ``saved``."""
  now = to_python(dataclasses.asdict(cfg))
  return [
    f"{k}: {saved.get(k)!r} -> {now[k]!r}"
    for k in sorted(now)
    if k not in RUN_ONLY_FIELDS and saved.get(k) != now[k]
  ]


def finished_summary(out_dir: str, cfg: TrainConfig) -> dict[str, Any] | None:
  """The ``summary.json`` of a finished run of ``cfg`` in ``out_dir``, if any
  (a finished run of other settings is refused)."""
  path = os.path.join(out_dir, "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  if not summary.get("finished"):
    return None
  changed = config_changes(summary["config"], cfg)
  if changed:
    raise ValueError(
      f"--out-dir {out_dir} holds a finished run with other settings "
      f"({', '.join(changed)}); use the same flags to see its results, or "
      "another --out-dir."
    )
  return summary


def check_out_dir(out_dir: str, resume: bool) -> bool:
  """Whether to resume: the work dir holds a checkpoint. ``--resume`` insists
  on one (half-written checkpoints do not count)."""
  ckpt_dir = os.path.join(out_dir, "checkpoints")
  found = bool(finished_steps(ckpt_dir))
  if resume and not found:
    raise ValueError(
      f"--resume: {ckpt_dir} holds no checkpoint to resume from; run without --resume to start afresh."
    )
  return found


def saved_config(out_dir: str) -> dict[str, Any]:
  """The config a run in ``out_dir`` was started with (its ``config.json``)."""
  path = os.path.join(out_dir, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise ValueError(
      f"--resume: --out-dir {out_dir} holds no run (no config.json) to resume."
    ) from None
  except json.JSONDecodeError as e:
    raise ValueError(f"--resume: {path} is not valid JSON ({e}).") from None
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  fields -= {"max_steps", "resume"}  # where to stop is this command's
  return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields}


class Saved(NamedTuple):
  """What a checkpoint adds to the state: the metrics rows so far, a partial
  epoch's running sums, the throughput counters and the checkpoint's id."""

  history: list
  epoch_sums: dict | None
  throughput: list
  at: int | None


def save(
  ckpt: Checkpointer, state: RunState, total_steps: int, cfg: TrainConfig, saved: Saved
) -> None:
  """Writes ``state`` as checkpoint ``checkpoint_id(round, step)``."""
  meta = dict(
    round=state.round,
    step=state.step,
    history=saved.history,
    epoch_sums=saved.epoch_sums,
    throughput=saved.throughput,
    config=dataclasses.asdict(cfg),
  )
  ckpt.save(checkpoint_id(state.round, state.step, total_steps), state.arrays(), to_python(meta))


def restore(ckpt: Checkpointer, template: RunState, cfg: TrainConfig) -> tuple[RunState, Saved]:
  """The newest intact checkpoint, shaped as ``template``; refuses a run of
  other settings (:data:`RUN_ONLY_FIELDS` may differ)."""
  at, arrays, meta = ckpt.restore_latest_intact(template.arrays())
  changed = config_changes(meta["config"], cfg)
  if changed:
    raise ValueError(
      f"--resume: the checkpoint in {ckpt.directory} was written with other settings "
      f"({', '.join(changed)}); resume with the same flags or use another --out-dir."
    )
  history = list(meta["history"])
  if meta.get("epoch_sums") is not None:
    # stopped inside an epoch: its row is written again when it completes
    if history and not history[-1].get("epoch_complete", True):
      history.pop()
  state = RunState(**arrays, round=int(meta["round"]), step=int(meta["step"]))
  return state, Saved(history, meta.get("epoch_sums"), list(meta["throughput"]), at)
