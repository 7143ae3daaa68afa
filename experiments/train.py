"""One training command for every experiment: ``python -m experiments.train``.

With no flags it runs the offline default job: the MNIST-1D CNN at 90%
sparsity with RigL under S2-SAM (a few minutes on 2 CPU cores), and prints
the final JSON summary. Every other cell of the paper's tables is a named
config (``--config``, see :mod:`experiments.configs`) or a set of flags::

    python -m experiments.train                                  # default job
    python -m experiments.train --config table1/cifar10/resnet32/rigl-erk/0.9/s2sam \\
        --data-dir /path/to/cifar10                              # image folder or tfds dir
    python -m experiments.train --model resnet32 --dataset cifar10 \\
        --method mest-ems --sparsity 0.95 --optimizer-mode original
    python -m experiments.train --list-configs

A run, stage by stage, each handing its output to the next once::

    cfg    = flags.config_from_args(argv)                   # defaults < --config < flags
    exp    = setup(cfg)                                     # data, model, masks, tx, steps, state
    state  = train_round(exp, state, ...)                   # the flat step loop (per LT/LRR round)
    summary(exp, state, ...)                                # clean-weight evaluation, sparsity, FLOPs

The pieces live in :mod:`experiments.recipes` (schedule, masks, optimizer),
:mod:`experiments.steps` (model functions, jitted steps, evaluation),
:mod:`experiments.run_state` (state, work dir, checkpoints) and
:mod:`experiments.progress` (running sums, throughput, progress bar).

Outputs in ``--out-dir``, a work dir (default ``runs/<model>-<dataset>-<method>-...``):
``metrics.jsonl`` (one line per epoch), ``tb/`` (TensorBoard events),
``checkpoints/`` (Orbax; the last ``--keep-checkpoints``), ``config.json`` and
``summary.json``. The same command run again resumes an interrupted run to
the result an uninterrupted run gives, bit for bit (the data order depends on
(seed, epoch) only, the step key on (base key, step) only), or reports a
finished run's results.
LT and LRR run all their rounds inside the command (:func:`next_round`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import s2sam_jax
from experiments import configs as configs_lib
from experiments import data as data_lib
from experiments import datasets, recipes, runtime
from experiments import run_state as run_state_lib
from experiments import steps as steps_lib
from experiments.checkpoint import Checkpointer
from experiments.configs import TrainConfig
from experiments.flags import config_from_args, describe
from experiments.metrics import MetricsWriter, to_python, write_json
from experiments.progress import Progress
from experiments.run_state import RunState
from s2sam_jax import sparse

# ---------------------------------------------------------------- setup


class Experiment(NamedTuple):
  """Everything a run is built from (:func:`setup`), read-only afterwards."""

  cfg: TrainConfig
  out_dir: str
  mesh: Mesh
  train_source: Any
  test_source: Any
  extra_sources: dict
  sched: recipes.Schedule
  model: steps_lib.Model
  mask_key: jax.Array
  steps: steps_lib.Steps
  ckpt: Checkpointer
  eval_batch_size: int

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())

  @property
  def sharded(self):
    return NamedSharding(self.mesh, P("data"))


def _check_sizes(cfg: TrainConfig, n_train: int) -> int:
  """Steps per epoch; bad batch sizes and rewind points are refused."""
  n_dev = len(jax.devices())
  if cfg.batch_size % n_dev:
    raise ValueError(
      f"--batch-size ({cfg.batch_size}) must be divisible by the number of devices ({n_dev})."
    )
  steps = n_train // cfg.batch_size
  if steps < 1:
    raise ValueError(f"--batch-size ({cfg.batch_size}) exceeds the {n_train} training examples.")
  if cfg.method == "lt" and cfg.rewind_steps >= steps * cfg.epochs:
    raise ValueError(
      f"--rewind-steps ({cfg.rewind_steps}) must be below the {steps * cfg.epochs} steps of a "
      f"round (--epochs {cfg.epochs} x {steps} steps per epoch): later rounds would train 0 steps."
    )
  return steps


def initial_state(tx, params, stats, rng, sharding, rewind: bool = False) -> RunState:
  """Step 0: ``tx.init``, the masks applied, as fresh global buffers (the
  train step donates its inputs), put from host copies (``device_put`` of a
  process-local array onto several processes' devices gives arrays Orbax
  cannot save). ``rewind``: keep a copy of the weights (LT/LRR)."""
  opt_state = tx.init(params)
  params = sparse.apply_masks(params, opt_state)
  host = jax.tree.map(np.asarray, (params, stats, opt_state))
  params, stats, opt_state = jax.device_put(host, sharding)
  copy = jax.tree.map(jnp.copy, dict(params=params, stats=stats)) if rewind else {}
  return RunState(params, stats, opt_state, copy, rng)


def setup(cfg: TrainConfig) -> tuple[Experiment, RunState, run_state_lib.Saved | None]:
  """Data, model, masks, optimizer, compiled steps and the initial (or
  resumed) state, so every user error shows before training starts."""
  if cfg.distributed:
    runtime.initialize_distributed(cfg)
  out_dir = cfg.out_dir or datasets.default_out_dir(cfg)
  resume = run_state_lib.check_out_dir(out_dir, cfg.resume)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  train_source, test_source = datasets.load_data(cfg)
  # opened now, so that a bad name fails before training, not after it
  extra = {n: data_lib.get_dataset(n, "test", data_dir=cfg.data_dir) for n in cfg.extra_eval}
  info = train_source.info
  sched = recipes.Schedule.of(cfg, _check_sizes(cfg, len(train_source)))
  init_key, mask_key, step_key = jax.random.split(jax.random.key(cfg.seed), 3)
  replicated = NamedSharding(mesh, P())
  rng = jax.random.wrap_key_data(
    jax.device_put(np.asarray(jax.random.key_data(step_key)), replicated),
    impl=jax.random.key_impl(step_key),
  )
  model = steps_lib.make_model(cfg, info.num_classes, info.input_shape, init_key)
  scoring = lambda: steps_lib.scoring_loss(cfg, model, info, train_source)
  masks = recipes.initial_masks(cfg, model.params, mask_key, scoring)
  tx = recipes.build_tx(cfg, sched, masks, mask_key)
  lottery = cfg.method in recipes.LOTTERY
  state = initial_state(tx, model.params, model.stats, rng, replicated, rewind=lottery)
  ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"), keep=cfg.keep_checkpoints)
  saved = None
  if resume:
    state, saved = run_state_lib.restore(ckpt, state, cfg)
  # One compile per command: LT/LRR rounds differ only in the masks, which
  # live in the optimizer state, so round 0's step serves every round.
  steps = steps_lib.make_steps(cfg, model, info, tx, mesh)
  n_dev = len(jax.devices())
  eval_batch = -(-cfg.eval_batch_size // n_dev) * n_dev
  exp = Experiment(
    cfg, out_dir, mesh, train_source, test_source, extra, sched, model, mask_key, steps, ckpt,
    eval_batch,
  )  # fmt: skip
  return exp, state, saved


# -------------------------------------------------------------- training


class Logbook(NamedTuple):
  """Where a run's results go: metrics rows (kept for the checkpoint), the
  metrics file and TensorBoard, and the progress counters."""

  history: list
  writer: MetricsWriter
  progress: Progress
  evals: dict  # checkpoint id -> the test evaluation made there


def evaluate(exp: Experiment, state: RunState, source=None) -> dict[str, float]:
  """Test loss and accuracy of the clean weights of ``state``."""
  source = exp.test_source if source is None else source
  args = (state.params, state.stats, state.opt_state, source, exp.eval_batch_size, exp.sharded)
  return steps_lib.evaluate(exp.steps.eval, *args)


def _densities(state: RunState) -> dict[str, Any]:
  """``{"density": {layer: active fraction}}`` of a sparse run's masks."""
  masks = sparse.get_masks(state.opt_state)
  if masks is None:
    return {}
  layers = sparse.sparsity_summary(jax.device_get(state.params), jax.device_get(masks)).layers
  return {"density": {layer.path: layer.density for layer in layers}}


def end_epoch(exp: Experiment, state: RunState, log: Logbook, stopped: bool, interrupted: bool):
  """The epoch's metrics row (evaluated every ``--eval-every`` epochs, at the
  last epoch and at ``--max-steps``) and, when due, a checkpoint."""
  cfg, (spe, total) = exp.cfg, exp.sched
  epoch, epoch_done = (state.step - 1) // spe, state.step % spe == 0
  lr = recipes.learning_rate(cfg, spe)(max(state.step - 1, 0))
  row: dict[str, Any] = dict(round=state.round, epoch=epoch + 1, epoch_complete=epoch_done)
  row.update(log.progress.end_epoch(), images_per_sec=log.progress.rate, lr=float(lr))
  eval_every = configs_lib.every(cfg.eval_every, cfg.epochs, 20)
  due = epoch_done and ((epoch + 1) % eval_every == 0 or epoch + 1 == cfg.epochs)
  label = f"{epoch + 1}/{cfg.epochs}"
  at = run_state_lib.checkpoint_id(state.round, state.step, total)
  if due or (stopped and not interrupted):
    ev = log.evals[at] = evaluate(exp, state)
    row.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"], **_densities(state))
    log.progress.show_eval(label, ev["accuracy"])
    if jax.process_index() == 0 and cfg.progress:
      rate = log.progress.rate
      log.progress.write(
        f"epoch {label}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
        f" | test loss {ev['loss']:.4f} acc {ev['accuracy']:.4f}"
        + ("" if rate is None else f" | {rate:.0f} images/s")
      )
  log.history.append(log.writer.write(step=at, **row))
  if jax.process_index() == 0 and not cfg.progress:
    print(json.dumps(to_python(row)), flush=True)
  every = configs_lib.every(cfg.checkpoint_every, cfg.epochs, 50)
  next_epoch = state.step // spe
  if stopped or next_epoch >= cfg.epochs or next_epoch % every == 0:
    sums = None if epoch_done else log.progress.sums
    save(exp, state, log, sums)


def save(exp: Experiment, state: RunState, log: Logbook, sums=None) -> None:
  saved = run_state_lib.Saved(log.history, sums, log.progress.state(), None)
  run_state_lib.save(exp.ckpt, state, exp.sched.total_steps, exp.cfg, saved)


def train_round(
  exp: Experiment, state: RunState, log: Logbook, stop: runtime.StopSignal
) -> RunState:
  """Trains from ``state.step`` to the end of the round, ``--max-steps`` or
  a signal; one metrics row per epoch (and at a stop)."""
  cfg, (spe, total) = exp.cfg, exp.sched
  lt_capture = cfg.method == "lt" and state.round == 0 and cfg.rewind_steps > 0
  params, stats, opt_state, rewind = state.params, state.stats, state.opt_state, state.rewind
  batches, n_proc, proc = None, jax.process_count(), jax.process_index()
  for step in range(state.step, total):
    epoch, in_epoch = divmod(step, spe)
    if batches is None:
      batches = data_lib.batches(
        exp.train_source, cfg.batch_size, seed=cfg.seed, epoch=epoch, start_step=in_epoch,
        num_shards=n_proc, shard_index=proc,
      )  # fmt: skip
    key = jax.random.fold_in(state.rng, run_state_lib.checkpoint_id(state.round, step, total))
    batch = steps_lib.to_global(next(batches), exp.sharded)
    params, stats, opt_state, metrics = exp.steps.train(params, stats, opt_state, batch, key)
    log.progress.step(metrics, f"{epoch + 1}/{cfg.epochs}")
    if lt_capture and step + 1 == cfg.rewind_steps:
      clean = s2sam_jax.unperturbed(params, opt_state)
      rewind = jax.tree.map(jnp.copy, dict(params=clean, stats=stats))
    interrupted = stop.requested(step + 1)
    stopped = interrupted or bool(cfg.max_steps and step + 1 >= cfg.max_steps)
    if (step + 1) % spe == 0 or stopped:
      state = state._replace(
        params=params, stats=stats, opt_state=opt_state, rewind=rewind, step=step + 1
      )
      end_epoch(exp, state, log, stopped, interrupted)
      batches = None
      log.progress.start_epoch()
    if interrupted:
      at = run_state_lib.checkpoint_id(state.round, state.step, total)
      raise runtime.Interrupted(stop.signum, at, exp.out_dir)
    if stopped:
      break
  return state


def next_round(exp: Experiment, state: RunState) -> RunState:
  """Prunes ``--prune-fraction`` of the remaining weights (global magnitude
  of the clean trained weights) and rewinds: LT to the weights of step
  ``--rewind-steps`` with a fresh optimizer (OpenLTH); LRR keeps the trained
  weights and their momentum (Renda et al.) and replays the lr schedule."""
  cfg, lt = exp.cfg, exp.cfg.method == "lt"
  clean = s2sam_jax.unperturbed(state.params, state.opt_state)
  masks, start = sparse.imp_next_round(
    jax.device_get(clean),
    jax.device_get(sparse.get_masks(state.opt_state)),
    prune_fraction=cfg.prune_fraction,
    scope="global",
    rewind_params=jax.device_get(state.rewind["params"]) if lt else None,
    target_sparsity=cfg.sparsity,
  )
  # Only tx.init reads the new masks; the compiled step takes them from the state.
  tx = recipes.build_tx(cfg, exp.sched, masks, exp.mask_key)
  stats = state.rewind["stats"] if lt else state.stats
  fresh = initial_state(tx, start, stats, state.rng, exp.replicated)
  opt_state = (
    fresh.opt_state if lt else recipes.carry_momentum(state.opt_state, fresh.opt_state, masks)
  )
  step = cfg.rewind_steps if lt else 0
  return fresh._replace(opt_state=opt_state, rewind=state.rewind, round=state.round + 1, step=step)


class Result(NamedTuple):
  """What a run ends with: its summary, final state and metrics rows."""

  summary: dict
  state: RunState
  history: list


def train_and_evaluate(exp: Experiment, state: RunState, saved=None) -> Result:
  """Trains every round of ``exp`` from ``state``; the summary is also
  written to ``summary.json``."""
  cfg = exp.cfg
  os.makedirs(exp.out_dir, exist_ok=True)
  write_json(os.path.join(exp.out_dir, "config.json"), dataclasses.asdict(cfg))
  rounds = 1
  if cfg.method in recipes.LOTTERY:
    rounds += len(sparse.imp_schedule(cfg.sparsity, cfg.prune_fraction))
  history = list(saved.history) if saved else []
  writer = MetricsWriter(
    exp.out_dir, history=history if saved else None, resume_step=saved and saved.at
  )
  label = f"round {state.round + 1}/{rounds}" if rounds > 1 else "train"
  show = cfg.progress and jax.process_index() == 0
  progress = Progress(
    cfg.batch_size, exp.sched.total_steps, initial_step=state.step, label=label, show=show
  )
  if saved:
    progress.restore(saved.throughput)
  progress.start_epoch(saved.epoch_sums if saved else None)
  log, t0 = Logbook(history, writer, progress, {}), time.time()
  try:
    with runtime.StopSignal() as stop:
      while True:
        state = train_round(exp, state, log, stop)
        finished = state.step >= exp.sched.total_steps
        if not finished or state.round + 1 >= rounds:
          break
        state = next_round(exp, state)
        save(exp, state, log)
        progress.bar.reset(exp.sched.total_steps)
        progress.bar.set_description(f"round {state.round + 1}/{rounds}")
  finally:
    progress.close()
    writer.close()
    exp.ckpt.close()
  summary = summarize(exp, state, log, finished, state.round + 1, time.time() - t0)
  write_json(os.path.join(exp.out_dir, "summary.json"), summary)
  return Result(summary, state, history)


def summarize(exp: Experiment, state: RunState, log: Logbook, finished, rounds, wall) -> dict:
  """Final test accuracy of the final clean weights, the best over the last
  round's evaluations (test-set selection, reported beside), sparsity, FLOPs."""
  cfg = exp.cfg
  clean = s2sam_jax.unperturbed(state.params, state.opt_state)
  masks = sparse.get_masks(state.opt_state)
  at = run_state_lib.checkpoint_id(state.round, state.step, exp.sched.total_steps)
  final = log.evals.get(at) or evaluate(exp, state)  # the last row's, when it scored this state
  evals = [
    h["test_accuracy"] for h in log.history if "test_accuracy" in h and h["round"] == state.round
  ]
  if masks is not None:
    density = sparse.sparsity_summary(clean, masks)
  else:
    density = sparse.sparsity_summary(clean, prunable=recipes.make_prunable(cfg))
  summary = dict(
    config=dataclasses.asdict(cfg),
    finished=finished,
    rounds=rounds,
    steps=state.step,
    final_test_accuracy=final["accuracy"],
    final_test_loss=final["loss"],
    best_test_accuracy=max(evals, default=None),
    images_per_sec=log.progress.rate,
    wall_seconds=wall,
    devices=len(jax.devices()),
    sparsity=dict(density.as_dict(), counted_over=recipes.counted_over(cfg)),
    training_flops=recipes.training_flops(cfg, exp.sched, exp.model.forward_flops, masks),
    extra_eval={n: evaluate(exp, state, s)["accuracy"] for n, s in exp.extra_sources.items()},
    out_dir=exp.out_dir,
  )
  return to_python(summary)


def run(cfg: TrainConfig) -> dict[str, Any]:
  """Trains as ``cfg`` says; returns the summary (also in ``summary.json``).
  A finished run of ``cfg`` in its work dir is reported, not retrained."""
  configs_lib.validate(cfg)
  cfg = configs_lib.resolve(cfg)
  done = run_state_lib.finished_summary(cfg.out_dir or datasets.default_out_dir(cfg), cfg)
  if done is not None:
    return done
  return train_and_evaluate(*setup(cfg)).summary


# -------------------------------------------------------------------- CLI


def _error(message) -> None:
  print(f"python -m experiments.train: error: {message}", file=sys.stderr)


def _exit_at_once_on_error(exc_type, exc, tb) -> None:
  """With several processes, an uncaught error ends this process at once: the
  normal exit waits in JAX's shutdown barrier for peers that wait in a
  collective for this one (minutes, then SIGABRT)."""
  import traceback

  traceback.print_exception(exc_type, exc, tb)
  sys.stderr.flush()
  os._exit(1)


def _announce(exp: Experiment, state: RunState) -> str:
  """One line: what this command trains, how long, and where it writes."""
  cfg, sched = exp.cfg, exp.sched
  method = (
    "dense" if cfg.method == "dense" else f"{cfg.method} at {cfg.sparsity:.0%} ({cfg.distribution})"
  )
  where = (
    f"resuming at step {state.step} of round {state.round + 1}"
    if state.step or state.round
    else "from step 0"
  )
  return (
    f"{cfg.model} on {cfg.dataset} ({len(exp.train_source)} training examples), {method}, "
    f"{cfg.optimizer_mode}: {cfg.epochs} epochs x {sched.steps_per_epoch} steps = "
    f"{sched.total_steps} steps, {where}; writing to {exp.out_dir}"
  )


def _train(cfg: TrainConfig) -> tuple[int, dict | None]:
  """``(exit status, summary)``; user errors, signals and full disks end
  with one line on stderr."""
  try:
    done = run_state_lib.finished_summary(cfg.out_dir or datasets.default_out_dir(cfg), cfg)
    if done is not None:
      print(f"finished earlier: results from {done['out_dir']}/summary.json", file=sys.stderr)
      return 0, done
    exp, state, saved = setup(cfg)  # user errors show here, before training
  except (ValueError, FileNotFoundError) as e:
    _error(e)
    return 2, None
  if cfg.progress and jax.process_index() == 0:
    print(_announce(exp, state), file=sys.stderr, flush=True)
  try:
    return 0, train_and_evaluate(exp, state, saved).summary
  except runtime.Interrupted as e:
    name = signal.Signals(e.signum).name
    _error(
      f"interrupted by {name} at step {e.step}; checkpoint saved. Resume with: python -m "
      f"experiments.train --out-dir {e.out_dir} --resume (or the same command again)"
    )
    return 128 + e.signum, None
  except OSError as e:  # disk full, out dir removed, permissions
    # Orbax's abandoned writes leave futures and coroutines that report the
    # same error again at exit: noise after the message below.
    warnings.filterwarnings("ignore", "coroutine .* was never awaited")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    _error(
      f"writing to --out-dir {exp.out_dir} failed ({e.strerror or e}); the checkpoints "
      "already there are intact; free space and run the same command again to resume."
    )
    return 1, None


def main(argv=None) -> int:
  # Before JAX allocates: reuse freed host memory instead of page-faulting
  # each step's temporaries in again (about 20% of a CPU step; see runtime).
  runtime.maybe_tune_glibc_malloc()
  try:
    cfg, args = config_from_args(argv)
  except ValueError as e:  # a bad --config name or flag value
    _error(e)
    return 2
  if cfg.distributed:
    sys.excepthook = _exit_at_once_on_error
  if args.list_configs:
    print(configs_lib.config_listing())
    return 0
  if args.describe:
    print(describe(cfg))
    return 0
  status, summary = _train(cfg)
  if summary is not None and jax.process_index() == 0:
    keys = ("final_test_accuracy", "best_test_accuracy", "images_per_sec", "wall_seconds", "steps")
    brief = {k: summary[k] for k in keys + ("out_dir",)}
    brief["sparsity"] = summary["sparsity"]["sparsity"]
    brief["training_flops_vs_dense"] = summary["training_flops"]["relative_to_dense"]
    print(json.dumps(brief, indent=2))
  return status


if __name__ == "__main__":
  sys.exit(main())
