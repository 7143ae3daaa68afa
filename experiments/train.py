"""One training command for every experiment: ``python -m experiments.train``.

With no flags it runs the offline default job: the MNIST-1D CNN at 90%
sparsity with RigL under S2-SAM (a few minutes on 2 CPU cores), and prints
the final JSON summary. Every other cell of the paper's tables is a named
config (``--config``, see :mod:`experiments.configs`) or a set of flags::

    python -m experiments.train                                  # default job
    python -m experiments.train --config table1/cifar10/resnet32/rigl-erk/0.9/s2sam \\
        --data-dir ../shared/data/cifar10-jpeg                   # image folder
    python -m experiments.train --model resnet32 --dataset cifar10 \\
        --method mest-ems --sparsity 0.95 --optimizer-mode original
    python -m experiments.train --list-configs

What one step does (a pure function, jitted once, data-parallel over every
visible device: the batch is sharded over a ``jax.sharding.Mesh`` axis,
params and optimizer state are replicated)::

    x  = normalize(augment(key_t, batch))                     # on device
    (L, new_bn), g = value_and_grad(loss)(params, bn, x, y)   # BN stats from this pass
    updates, opt   = tx.update(g, opt, params [, grad_fn])    # SAM: grad_fn(p) = ∇L(p) on x
    params         = apply_updates(params, updates)

``tx`` is ``mode(method(sgd))``: SGD with momentum and coupled weight decay
(PyTorch semantics), wrapped by the sparse method (masks in its state), wrapped
by ``s2sam_jax.s2sam`` (transparent mode: the loop holds ``w + ε``) or
``s2sam_jax.sam`` (two passes; the second pass's BN statistics are dropped).
Evaluation and the summary use ``s2sam_jax.unperturbed(params, opt_state)``.

Outputs in ``--out-dir`` (default ``runs/<model>-<dataset>-<method>-...``):
``metrics.jsonl`` (one line per epoch), ``tb/`` (TensorBoard events),
``checkpoints/`` (Orbax; the last ``--keep-checkpoints``), ``config.json`` and
``summary.json``. ``--resume`` continues from the latest checkpoint to the
result an uninterrupted run gives, bit for bit: the data order depends on
(seed, epoch) only, the step key on (base key, step) only, and the
checkpoint holds params, batch statistics, optimizer state (masks, momentum,
S2-SAM's stored perturbation, the sparse methods' keys), the base PRNG key
and the data position (round, step, epoch, step in epoch).

Lottery ticket (``lt``) and learning-rate rewinding (``lrr``) run all their
rounds inside the command: a dense round, then rounds that each prune
``--prune-fraction`` of the remaining weights (global magnitude) and retrain
(LT: weights rewound to step ``--rewind-steps``, fresh optimizer; LRR: the
trained weights and momentum kept, the learning-rate schedule replayed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import s2sam_jax
from experiments import configs as configs_lib
from experiments import data as data_lib
from experiments import models as models_lib
from experiments.checkpoint import Checkpointer, finished_steps
from experiments.configs import TrainConfig
from experiments.metrics import MetricsWriter, Throughput, to_python, write_json
from experiments.models import cpu_conv
from s2sam_jax import sparse

# -------------------------------------------------------------------------
# Command line


def _flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
  """Flags mirror :class:`TrainConfig`'s fields; every default is ``None`` so
  that only flags given explicitly override a named config."""
  parser = argparse.ArgumentParser(
    prog="python -m experiments.train",
    description="Train a (sparse) network with S2-SAM, SAM or the plain "
    "optimizer. With no flags: MNIST-1D CNN, RigL at 90% sparsity, S2-SAM. "
    "Precedence: defaults < --config < explicit flags.",
  )
  defaults = TrainConfig()
  choices = {
    "method": configs_lib.METHODS,
    "optimizer_mode": configs_lib.OPTIMIZER_MODES,
    "schedule": configs_lib.SCHEDULES,
    "distribution": configs_lib.DISTRIBUTION_CHOICES,
  }
  helps = {
    "model": "model name (experiments.models.MODEL_NAMES)",
    "dataset": "mnist1d, cifar10, cifar100, imagenet2012, "
    "imagenet2012_corrupted/<cfg>, imagefolder:<root>",
    "data_dir": "tfds data dir, or an image-folder root (<dir>/{train,test}/<class>/*.jpg)",
    "keep_dense": "'paper' (the model's dense layers in the authors' "
    "profiles), 'none', or a regex of param paths kept dense",
    "config": "named config (python -m experiments.train --list-configs)",
    "max_steps": "stop and checkpoint after this many steps (of the current "
    "round for lt/lrr; 0: no limit)",
    "lr_milestones": "step schedule: epochs (or fractions of the epochs if "
    "all < 1) where the lr is multiplied by --lr-gamma",
    "update_every": "topology update period ΔT in steps",
    "update_every_epochs": "MEST: ΔT in epochs (0: use --update-every)",
    "update_end": "fraction of training after which the topology is frozen",
    "adaptive_formula": "with --adaptive: 'asam' (ASAM's |w|+eta scaling) or "
    "'authors' (the S2-SAM authors' rho g^3/||u g||)",
    "mask_gradients": "mask the gradient before the optimizer (--no-mask-"
    "gradients: the authors' SAM path)",
    "perturb_pruned": "perturb pruned weights too (the authors' code)",
    "mest_prune_offsets": "MEST prune offsets dL per phase (fractions of the "
    "layer); empty: the authors' profile",
    "mest_grow_offsets": "MEST grow offsets dU per phase; empty: the authors' profile",
    "dsr_target": "DSR weights reallocated per rewire (N_target) as a count; "
    "0: --dsr-target-fraction",
    "dsr_target_fraction": "DSR N_target as a fraction of the initial active "
    "weights (DSR's WRN-28-2 value)",
    "dsr_period_doublings": "fractions of the epochs at which DSR's rewiring period doubles",
    "train_subset": "train on n evenly spaced examples only (0: all)",
    "test_subset": "evaluate on n evenly spaced test examples only (0: all)",
    "extra_eval": "further test sets evaluated at the end",
    "distributed": "call jax.distributed.initialize() (multi-host)",
    "bf16": "bf16 compute (params stay f32)",
    "image_size": "resize (shorter side) and centre-crop the images of an "
    "image folder to N x N (0: they must share one size)",
    "coordinator_address": "--distributed: host:port of process 0 (omit on "
    "TPU pods and SLURM, where JAX finds it)",
    "num_processes": "--distributed with --coordinator-address: number of processes",
    "process_id": "--distributed with --coordinator-address: this process's index",
  }
  for field in dataclasses.fields(TrainConfig):
    name, default = field.name, getattr(defaults, field.name)
    kwargs: dict[str, Any] = dict(default=None, help=helps.get(name, ""))
    if isinstance(default, bool):
      kwargs["action"] = argparse.BooleanOptionalAction
    elif isinstance(default, tuple):
      kwargs["nargs"] = "*"
      kwargs["type"] = (
        str if name == "extra_eval" else (int if name == "mest_decay_epochs" else float)
      )
    elif isinstance(default, float):
      kwargs["type"] = float
    elif isinstance(default, int):
      kwargs["type"] = int
    else:
      kwargs["type"] = str
    if name in choices:
      kwargs["choices"] = choices[name]
    kwargs["help"] = (kwargs["help"] + f" (default: {default!r})").strip().replace("%", "%%")
    parser.add_argument(_flag(name), dest=name, **kwargs)
  parser.add_argument(
    "--list-configs", action="store_true", help="print the named configs and exit"
  )
  parser.add_argument("--describe", action="store_true", help="print the resolved config and exit")
  return parser


def config_from_args(argv=None) -> tuple[TrainConfig, argparse.Namespace]:
  """Defaults < named config < explicit flags; with ``--resume --out-dir``
  the saved run's config stands in for the defaults."""
  args = build_parser().parse_args(argv)
  values: dict[str, Any] = {}
  if args.resume and args.out_dir:
    values.update(saved_config(args.out_dir))
  if args.config:
    values.update(configs_lib.get_config(args.config))
  for field in dataclasses.fields(TrainConfig):
    value = getattr(args, field.name)
    if value is not None:
      values[field.name] = tuple(value) if isinstance(value, list) else value
  cfg = TrainConfig(**values)
  configs_lib.validate(cfg)
  return configs_lib.resolve(cfg), args


# -------------------------------------------------------------------------
# Data


class _Subset:
  """``n`` examples of a source, evenly spaced over it (so a class-sorted
  image folder keeps every class)."""

  def __init__(self, source, n: int):
    self.source, self.info = source, source.info
    self.indices = np.linspace(0, len(source) - 1, min(n, len(source))).astype(np.int64)

  def __len__(self):
    return len(self.indices)

  def get_batch(self, indices):
    return self.source.get_batch(self.indices[np.asarray(indices)])


def _dataset_name(cfg: TrainConfig) -> str:
  """An image-folder root given as --data-dir is read as one."""
  if (
    cfg.data_dir
    and not cfg.dataset.startswith("imagefolder:")
    and cfg.dataset != "mnist1d"
    and os.path.isdir(os.path.join(cfg.data_dir, "train"))
  ):
    return "imagefolder:" + cfg.data_dir
  return cfg.dataset


_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}


def load_data(cfg: TrainConfig):
  if cfg.data_dir and cfg.dataset == "mnist1d":
    raise ValueError(
      "--data-dir: mnist1d is generated offline and reads no "
      "data folder; drop --data-dir, or pick a --dataset that "
      "reads one."
    )
  if cfg.data_dir and not os.path.isdir(os.path.expanduser(cfg.data_dir)):
    raise FileNotFoundError(f"--data-dir {cfg.data_dir} does not exist.")
  name = _dataset_name(cfg)
  data_dir = None if name.startswith("imagefolder:") else cfg.data_dir
  size = cfg.image_size or None
  train = data_lib.get_dataset(name, "train", data_dir=data_dir, image_size=size)
  test = data_lib.get_dataset(name, "test", data_dir=data_dir, image_size=size)
  expected = _NUM_CLASSES.get(cfg.dataset)
  if expected and name != cfg.dataset and train.info.num_classes != expected:
    raise ValueError(
      f"--data-dir {cfg.data_dir} is an image folder with "
      f"{train.info.num_classes} classes, but --dataset {cfg.dataset} has "
      f"{expected}."
    )
  if cfg.train_subset:
    train = _Subset(train, cfg.train_subset)
  if cfg.test_subset:
    test = _Subset(test, cfg.test_subset)
  return train, test


# -------------------------------------------------------------------------
# Model as pure functions over dicts of arrays


class ModelFns(NamedTuple):
  """Pure functions of one model; params and batch stats are plain dicts."""

  apply_train: Callable  # (params, stats, x) -> (logits, new_stats)
  apply_eval: Callable  # (params, stats, x) -> logits


def make_model(cfg: TrainConfig, num_classes: int, input_shape, key):
  """Creates the model; returns ``(ModelFns, params, stats, forward_flops)``
  with ``forward_flops = {kernel path: dense forward FLOPs per example}``
  (2 × multiply-accumulates)."""
  dtype = jnp.bfloat16 if cfg.bf16 else None
  model = models_lib.create_model(
    cfg.model, num_classes=num_classes, rngs=nnx.Rngs(key), dtype=dtype
  )
  example = (1,) + tuple(input_shape)
  flops = {k: 2.0 * v for k, v in models_lib.layer_macs(model, example).items()}
  model.train()
  g_train, p_state, s_state = nnx.split(model, nnx.Param, ...)
  model.eval()
  g_eval, _, _ = nnx.split(model, nnx.Param, ...)

  def merge(graphdef, params, stats):
    ps = jax.tree.map(lambda v: v, p_state)
    nnx.replace_by_pure_dict(ps, params)
    ss = jax.tree.map(lambda v: v, s_state)
    nnx.replace_by_pure_dict(ss, stats)
    return nnx.merge(graphdef, ps, ss)

  def apply_train(params, stats, x):
    model = merge(g_train, params, stats)
    logits = model(x)
    _, _, new_stats = nnx.split(model, nnx.Param, ...)
    return logits, nnx.to_pure_dict(new_stats)

  def apply_eval(params, stats, x):
    return merge(g_eval, params, stats)(x)

  return (
    ModelFns(apply_train, apply_eval),
    nnx.to_pure_dict(p_state),
    nnx.to_pure_dict(s_state),
    flops,
  )


def cross_entropy(logits, labels, num_classes: int, smoothing: float):
  logits = logits.astype(jnp.float32)
  if smoothing:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# -------------------------------------------------------------------------
# Optimizer


def learning_rate(cfg: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
  """The lr of update ``t`` (0-based).

  cosine: from ``lr`` to ``lr_end`` over all steps, evaluated at ``t + 1``
  as the authors' loop calls ``scheduler.step()`` before each update [code].
  step: ``lr · gamma^k`` after the k-th milestone (epochs). Optional linear
  warmup over ``warmup_epochs``.
  """
  total = cfg.epochs * steps_per_epoch
  warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
  if cfg.schedule == "cosine":
    cos = optax.cosine_decay_schedule(cfg.lr, max(total, 1), alpha=cfg.lr_end / cfg.lr)
    main = lambda t: cos(t + 1)
  elif cfg.schedule == "step":
    ms = cfg.lr_milestones
    if ms and all(m < 1 for m in ms):
      ms = tuple(m * cfg.epochs for m in ms)
    boundaries = {int(round(m * steps_per_epoch)): cfg.lr_gamma for m in ms}
    main = optax.piecewise_constant_schedule(cfg.lr, boundaries)
  else:
    main = optax.constant_schedule(cfg.lr)
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(cfg.lr / max(warmup, 1), cfg.lr, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def base_optimizer(cfg: TrainConfig, schedule) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay, as ``torch.optim.SGD``."""
  return optax.chain(
    optax.add_decayed_weights(cfg.weight_decay),
    optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
  )


def dense_patterns(cfg: TrainConfig):
  """Regexes of the param paths kept dense (``--keep-dense``)."""
  if cfg.keep_dense == "none":
    return ()
  if cfg.keep_dense == "paper":
    return tuple(models_lib.paper_dense_layers(cfg.model))
  return (cfg.keep_dense,)


def make_prunable(cfg: TrainConfig):
  """``prunable(path, leaf)``: kernels of rank >= 2 not kept dense."""
  patterns = [re.compile(p) for p in dense_patterns(cfg)]

  def prunable(path, leaf) -> bool:
    if not sparse.default_prunable(path, leaf):
      return False
    name = sparse.path_str(path)
    return not any(p.search(name) for p in patterns)

  return prunable


def wrap_mode(cfg: TrainConfig, tx) -> optax.GradientTransformationExtraArgs:
  kwargs = dict(
    rho=cfg.rho,
    adaptive=cfg.adaptive,
    eta=cfg.eta,
    adaptive_formula=cfg.adaptive_formula,
    perturb_pruned=cfg.perturb_pruned,
  )
  if cfg.optimizer_mode == "s2sam":
    return s2sam_jax.s2sam(tx, **kwargs)
  if cfg.optimizer_mode == "sam":
    return s2sam_jax.sam(tx, **kwargs)
  return optax.with_extra_args_support(tx)


class Schedule(NamedTuple):
  steps_per_epoch: int
  total_steps: int


def xavier_linear_copy(params, key):
  """``params`` with every dense kernel (rank 2, ``(n_in, n_out)``) redrawn
  from N(0, 2 / (n_in + n_out)) (xavier-normal), other leaves unchanged."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.fold_in(key, 7), len(leaves))
  return jax.tree_util.tree_unflatten(
    treedef,
    [
      jax.random.normal(k, x.shape, x.dtype) * np.sqrt(2.0 / sum(x.shape)) if np.ndim(x) == 2 else x
      for k, x in zip(keys, leaves)
    ],
  )


def dsr_periods(cfg: TrainConfig, sched: Schedule) -> dict[int, int]:
  """DSR's growing rewiring period: ``--update-every`` from step 0, doubled
  at the start of each epoch ``round(f · epochs)`` of ``--dsr-period-doublings``."""
  periods = {0: cfg.update_every}
  for i, f in enumerate(cfg.dsr_period_doublings, start=1):
    periods[max(1, round(f * cfg.epochs)) * sched.steps_per_epoch] = cfg.update_every * 2**i
  return periods


def sparse_method(
  cfg: TrainConfig,
  inner,
  params,
  sched: Schedule,
  key,
  mask_data: Callable | None = None,
  masks=None,
):
  """``inner`` wrapped by the sparse method of ``cfg`` (masks in its state).

  ``mask_data()`` returns ``(loss_fn, batch)`` for SNIP/GraSP; ``masks`` is
  the mask tree of an LT/LRR round.
  """
  method, s = cfg.method, cfg.sparsity
  prunable = make_prunable(cfg)
  end_step = max(int(cfg.update_end * sched.total_steps), 1)
  fixed = dict(mask_gradients=cfg.mask_gradients)
  if method == "dense":
    return inner
  if method in ("lt", "lrr"):
    return sparse.static_masks(inner, masks, **fixed)
  common = dict(distribution=cfg.distribution, prunable=prunable, **fixed)

  def magnitude_at_init(p):
    # one-shot per-layer magnitude pruning of the init (S2-SAM/MEST profiles)
    return sparse.magnitude_masks(
      p, sparse.layer_densities(p, s, cfg.distribution, prunable=prunable)
    )

  if method == "static":
    return sparse.static_random(inner, s, key=key, **common)
  if method == "magnitude":
    return sparse.static_masks(inner, magnitude_at_init, **fixed)
  if method == "snip":
    loss_fn, batch = mask_data()
    if cfg.snip_scope == "layer":  # RigL's per-layer SNIP
      masks = sparse.snip_masks(
        loss_fn,
        params,
        batch,
        densities=sparse.layer_densities(params, s, cfg.distribution, prunable=prunable),
      )
    else:  # SNIP: one global ranking
      masks = sparse.snip_masks(loss_fn, params, batch, s, prunable=prunable)
    return sparse.static_masks(inner, masks, **fixed)
  if method == "grasp":
    loss_fn, batch = mask_data()
    # GraSP scores a copy whose linear layers are re-initialised xavier-normal
    # [code]; the masks then apply to the original network.
    return sparse.static_masks(
      inner,
      sparse.grasp_masks(
        loss_fn,
        xavier_linear_copy(params, key),
        batch,
        s,
        temperature=cfg.grasp_temperature,
        prunable=prunable,
      ),
      **fixed,
    )
  if method in ("rigl", "set"):
    wrapper = sparse.rigl if method == "rigl" else sparse.set_
    return wrapper(
      inner,
      s,
      end_step=end_step,
      update_every=cfg.update_every,
      drop_fraction=cfg.drop_fraction,
      key=key,
      **common,
    )
  if method == "dsr":
    return sparse.dsr(
      inner,
      s,
      update_every=dsr_periods(cfg, sched),
      end_step=end_step,
      target_count=cfg.dsr_target or None,
      target_fraction=cfg.dsr_target_fraction,
      init_threshold=cfg.dsr_threshold,
      key=key,
      **common,
    )
  if method in ("mest-em", "mest-ems"):
    every = (
      int(round(cfg.update_every_epochs * sched.steps_per_epoch))
      if cfg.update_every_epochs
      else cfg.update_every
    )
    decay = tuple(int(e * sched.steps_per_epoch) for e in cfg.mest_decay_epochs)
    return sparse.mest(
      inner,
      variant="em" if method == "mest-em" else "ems",
      masks=magnitude_at_init,
      update_every=max(every, 1),
      decay_steps=decay,
      prune_offsets=cfg.mest_prune_offsets,
      grow_offsets=cfg.mest_grow_offsets,
      key=key,
      **common,
    )
  if method == "gmp":
    return sparse.gmp(inner, s, end_step=end_step, update_every=cfg.update_every, **common)
  raise ValueError(f"--method must be one of {configs_lib.METHODS}; got {method!r}.")


# -------------------------------------------------------------------------
# Steps


def make_steps(cfg: TrainConfig, fns: ModelFns, info, tx, mesh: Mesh):
  """The jitted train and eval steps (pure functions, compiled once)."""
  num_classes = info.num_classes
  compute_dtype = jnp.bfloat16 if cfg.bf16 else jnp.float32
  kind = info.augmentation
  size = info.input_shape[0] if kind == "imagenet" else None
  replicated = NamedSharding(mesh, P())
  sharded = NamedSharding(mesh, P("data"))

  def prepare(key, images, train: bool):
    x = data_lib.augment(key, images, kind, train=train, size=size)
    return data_lib.normalize(x, info).astype(compute_dtype)

  def train_step(params, stats, opt_state, batch, key):
    x = prepare(key, batch["image"], True)
    y = batch["label"]

    def loss_fn(p):
      logits, new_stats = fns.apply_train(p, stats, x)
      return cross_entropy(logits, y, num_classes, cfg.label_smoothing), (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    extra = {}
    if cfg.optimizer_mode == "sam":
      extra["grad_fn"] = lambda p: jax.grad(lambda q: loss_fn(q)[0])(p)
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    params = optax.apply_updates(params, updates)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    return params, new_stats, opt_state, {"loss": loss, "correct": correct}

  def eval_step(params, stats, opt_state, batch, valid):
    clean = s2sam_jax.unperturbed(params, opt_state)
    logits = fns.apply_eval(clean, stats, prepare(None, batch["image"], False))
    logits = logits.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    hits = jnp.argmax(logits, -1) == batch["label"]
    return {"loss": jnp.sum(jnp.where(valid, losses, 0.0)), "correct": jnp.sum(hits & valid)}

  train_jit = jax.jit(
    train_step,
    in_shardings=(replicated, replicated, replicated, sharded, replicated),
    out_shardings=(replicated, replicated, replicated, replicated),
    donate_argnums=(0, 1, 2),
  )
  eval_jit = jax.jit(
    eval_step,
    in_shardings=(replicated, replicated, replicated, sharded, sharded),
    out_shardings=replicated,
  )
  return train_jit, eval_jit


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """This process's slice of a global batch, as one sharded global array."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def evaluate(
  eval_step, params, stats, opt_state, source, batch_size: int, sharding
) -> dict[str, float]:
  """Loss and accuracy over the whole ``source`` (last batch padded)."""
  n = len(source)
  per_process = batch_size // jax.process_count()
  loss_sum = correct = 0.0
  totals = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    valid = np.zeros(batch_size, bool)
    valid[: len(idx)] = True
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
    lo = jax.process_index() * per_process
    local = source.get_batch(idx[lo : lo + per_process])
    local["valid"] = valid[lo : lo + per_process]
    batch = to_global(local, sharding)
    valid_arr = batch.pop("valid")
    totals.append(eval_step(params, stats, opt_state, batch, valid_arr))
  for t in totals:
    loss_sum += float(t["loss"])
    correct += float(t["correct"])
  return {"loss": loss_sum / n, "accuracy": correct / n}


# -------------------------------------------------------------------------
# The run


def default_out_dir(cfg: TrainConfig) -> str:
  sp = "dense" if cfg.method == "dense" else f"{cfg.method}{cfg.sparsity:g}"
  ds = _dataset_name(cfg).replace("imagefolder:", "").rstrip("/").split("/")[-1]
  return os.path.join("runs", f"{cfg.model}-{ds}-{sp}-{cfg.optimizer_mode}-seed{cfg.seed}")


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


# Flags that may differ between a run and its resumption.
_RUN_ONLY_FIELDS = frozenset(
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


class Interrupted(Exception):
  """SIGINT/SIGTERM arrived; the run was checkpointed at ``step``."""

  def __init__(self, signum: int, step: int, out_dir: str):
    super().__init__(signum, step, out_dir)
    self.signum, self.step, self.out_dir = signum, step, out_dir


class Position(NamedTuple):
  """Where a run stands: the checkpoint's JSON part."""

  round: int = 0
  global_step: int = 0  # steps taken in this round
  epoch: int = 0  # current (0-based) epoch
  step_in_epoch: int = 0  # steps of the current epoch already taken


def _check_out_dir(out_dir: str, resume: bool) -> None:
  """Refuses, before any work, to train into another run's checkpoints, or
  to resume a run that has none (half-written checkpoints do not count)."""
  ckpt_dir = os.path.join(out_dir, "checkpoints")
  steps = finished_steps(ckpt_dir)
  if not resume and steps:
    raise ValueError(
      f"--out-dir {out_dir} already holds checkpoints of an earlier run; "
      "pass --resume to continue it, or choose another --out-dir."
    )
  if resume and not steps:
    raise ValueError(
      f"--resume: {ckpt_dir} holds no checkpoint to resume "
      "from; run without --resume to start afresh."
    )


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


def initialize_distributed(cfg: TrainConfig) -> None:
  """Starts JAX's multi-controller runtime (one process per host or GPU).

  With ``--coordinator-address`` the processes meet there; without, JAX
  detects the cluster (Cloud TPU, SLURM, Open MPI, ...). On CPU the
  cross-process collectives use gloo.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if cfg.coordinator_address:
    jax.distributed.initialize(
      coordinator_address=cfg.coordinator_address,
      num_processes=cfg.num_processes,
      process_id=cfg.process_id,
    )
  else:
    jax.distributed.initialize()


class Runner:
  """Everything one command needs. ``__init__`` builds data, model, masks,
  optimizer and the initial (or resumed) state, so every user error shows
  before training starts; :meth:`run` trains."""

  def __init__(self, cfg: TrainConfig):
    if cfg.distributed:
      initialize_distributed(cfg)
    self.cfg = cfg
    self.out_dir = cfg.out_dir or default_out_dir(cfg)
    _check_out_dir(self.out_dir, cfg.resume)
    self.mesh = Mesh(np.array(jax.devices()), ("data",))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P("data"))
    n_dev = len(jax.devices())
    if cfg.batch_size % n_dev:
      raise ValueError(
        f"--batch-size ({cfg.batch_size}) must be divisible by the number of devices ({n_dev})."
      )
    self.eval_batch_size = _round_up(cfg.eval_batch_size, n_dev)
    self.train_source, self.test_source = load_data(cfg)
    # opened now, so that a bad name fails before training, not after it
    self.extra_sources = {
      name: data_lib.get_dataset(name, "test", data_dir=cfg.data_dir) for name in cfg.extra_eval
    }
    self.info = self.train_source.info
    steps = len(self.train_source) // cfg.batch_size
    if steps < 1:
      raise ValueError(
        f"--batch-size ({cfg.batch_size}) exceeds the {len(self.train_source)} training examples."
      )
    self.sched = Schedule(steps, steps * cfg.epochs)
    if cfg.method == "lt" and cfg.rewind_steps >= self.sched.total_steps:
      raise ValueError(
        f"--rewind-steps ({cfg.rewind_steps}) must be below the "
        f"{self.sched.total_steps} steps of a round (--epochs {cfg.epochs} x "
        f"{steps} steps per epoch): later rounds would train 0 steps."
      )
    root = jax.random.key(cfg.seed)
    self.init_key, self.mask_key, step_key = jax.random.split(root, 3)
    # A global (replicated) array, as everything the checkpoint holds must be
    # when several processes write it.
    self.step_key = jax.random.wrap_key_data(
      jax.device_put(np.asarray(jax.random.key_data(step_key)), self.replicated),
      impl=jax.random.key_impl(step_key),
    )
    self.fns, self.init_params, self.init_stats, self.forward_flops = make_model(
      cfg, self.info.num_classes, self.info.input_shape, self.init_key
    )
    self.prunable = make_prunable(cfg)
    self.history = []
    self.epoch_sums = None  # a resumed partial epoch's running sums
    self.images_per_sec = Throughput()
    self.train_step = self.eval_step = None
    self._signal = None
    self.ckpt = Checkpointer(os.path.join(self.out_dir, "checkpoints"), keep=cfg.keep_checkpoints)
    self.tx, template = self._initial_state()
    self.state, self.pos, self.resumed_at = self.restore(template)

  # -- optimizer and initial state -----------------------------------------
  def _mask_data(self, stats):
    """(loss_fn, batch) for SNIP / GraSP scoring on training data."""
    cfg, info = self.cfg, self.info
    if cfg.method == "grasp":
      idx = _balanced_indices(
        self.train_source, cfg.grasp_samples_per_class, info.num_classes, cfg.seed
      )
    else:  # the first training batch of epoch 0 (a random batch)
      idx = data_lib.epoch_order(len(self.train_source), seed=cfg.seed, epoch=0)[: cfg.snip_batch]
    raw = self.train_source.get_batch(idx)
    size = info.input_shape[0] if info.augmentation == "imagenet" else None
    x = data_lib.normalize(
      data_lib.augment(None, jnp.asarray(raw["image"]), info.augmentation, train=False, size=size),
      info,
    )
    batch = {"image": x, "label": jnp.asarray(raw["label"])}
    grasp = cfg.method == "grasp"  # GraSP: batch statistics; SNIP: eval-mode BN

    def loss_fn(p, b, temperature=1.0):
      if grasp:
        logits, _ = self.fns.apply_train(p, stats, b["image"])
      else:
        logits = self.fns.apply_eval(p, stats, b["image"])
      return cross_entropy(
        logits.astype(jnp.float32) / temperature, b["label"], info.num_classes, 0.0
      )

    return loss_fn, batch

  def build_tx(self, params, stats, masks=None):
    cfg = self.cfg
    inner = base_optimizer(cfg, learning_rate(cfg, self.sched.steps_per_epoch))
    tx = sparse_method(
      cfg,
      inner,
      params,
      self.sched,
      self.mask_key,
      mask_data=lambda: self._mask_data(stats),
      masks=masks,
    )
    return wrap_mode(cfg, tx)

  def init_state(self, tx, params, stats):
    opt_state = tx.init(params)
    params = sparse.apply_masks(params, opt_state)
    # Fresh global buffers (the train step donates its inputs), put from host
    # copies: device_put of a process-local array onto a sharding over
    # several processes' devices gives arrays Orbax cannot save.
    host = jax.tree.map(np.asarray, (params, stats, opt_state))
    return jax.device_put(host, self.replicated)

  def _initial_state(self):
    """The transformation and state of step 0 (LT/LRR: the dense round, with
    a copy of the weights as the rewind point)."""
    lottery = self.cfg.method in ("lt", "lrr")
    masks = sparse.dense_masks(self.init_params, self.prunable) if lottery else None
    tx = self.build_tx(self.init_params, self.init_stats, masks=masks)
    params, stats, opt_state = self.init_state(tx, self.init_params, self.init_stats)
    extra = jax.tree.map(jnp.copy, dict(params=params, stats=stats)) if lottery else {}
    return tx, dict(params=params, stats=stats, opt_state=opt_state, extra=extra)

  # -- interruption ----------------------------------------------------------
  def _on_signal(self, signum, frame):
    del frame
    self._signal = signum
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends at once

  def _stop_requested(self, step: int) -> bool:
    """Whether a signal asks to stop after ``step``: at once with one
    process; with several, all agree at the same step (every 25 steps)."""
    if jax.process_count() == 1:
      return self._signal is not None
    if step % 25:
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(self._signal or 0))
    self._signal = int(np.max(flags)) or None
    return self._signal is not None

  # -- one training run (one LT/LRR round) ---------------------------------
  def train(
    self, tx, state, pos: Position, *, writer: MetricsWriter, n_rounds: int = 1, capture_at=None
  ):
    """Trains from ``pos`` to the end of the schedule (or ``--max-steps``, or
    a signal).

    ``state`` is ``dict(params, stats, opt_state, extra)``; with
    ``capture_at=k`` the clean weights after step ``k`` are stored in
    ``state['extra']`` (the LT rewind point). Returns ``(state, pos,
    finished)``; raises :class:`Interrupted` after checkpointing on a signal.
    """
    from tqdm.auto import tqdm

    cfg, sched = self.cfg, self.sched
    if self.train_step is None:
      # One compile per command: LT/LRR rounds differ only in the masks,
      # which live in the optimizer state, so the step is reused.
      self.train_step, self.eval_step = make_steps(cfg, self.fns, self.info, tx, self.mesh)
    train_step = self.train_step
    params, stats, opt_state = state["params"], state["stats"], state["opt_state"]
    extra = state["extra"]
    step, epoch, in_epoch = pos.global_step, pos.epoch, pos.step_in_epoch
    n_proc, proc = jax.process_count(), jax.process_index()
    meter = self.images_per_sec
    label = f"round {pos.round + 1}/{n_rounds} " if n_rounds > 1 else ""
    lr_fn = learning_rate(cfg, sched.steps_per_epoch)
    eval_every = configs_lib.every(cfg.eval_every, cfg.epochs, 20)
    checkpoint_every = configs_lib.every(cfg.checkpoint_every, cfg.epochs, 50)
    compiled, stopped, interrupted = False, False, False
    bar = tqdm(
      total=sched.total_steps,
      initial=step,
      desc=label.strip() or "train",
      unit="step",
      disable=not cfg.progress or proc != 0,
      dynamic_ncols=True,
      mininterval=1.0,
    )
    shown = dict(test_acc="-")
    while epoch < cfg.epochs and not stopped:
      pending, sums = [], dict(loss=0.0, correct=0.0, seen=0)
      if self.epoch_sums is not None:  # resuming inside this epoch
        sums, self.epoch_sums = dict(self.epoch_sums), None
      last_sync, unsynced = time.perf_counter(), 0

      def sync():
        nonlocal pending, last_sync, unsynced
        for m in jax.device_get(pending):
          sums["loss"] += float(m["loss"]) * cfg.batch_size
          sums["correct"] += float(m["correct"])
          sums["seen"] += cfg.batch_size
        now = time.perf_counter()
        rate = unsynced / (now - last_sync) if unsynced and now > last_sync else None
        if rate is not None:
          meter.images += unsynced
          meter.seconds += now - last_sync
        pending, last_sync, unsynced = [], now, 0
        return rate

      for batch in data_lib.batches(
        self.train_source,
        cfg.batch_size,
        seed=cfg.seed,
        epoch=epoch,
        start_step=in_epoch,
        num_shards=n_proc,
        shard_index=proc,
      ):
        key = jax.random.fold_in(self.step_key, self._ckpt_step(pos.round, step))
        params, stats, opt_state, m = train_step(
          params, stats, opt_state, to_global(batch, self.sharded), key
        )
        pending.append(m)
        step, in_epoch = step + 1, in_epoch + 1
        if not compiled:  # keep compilation out of the throughput
          sync()
          compiled = True
        else:
          unsynced += cfg.batch_size
        if capture_at is not None and step == capture_at:
          extra = jax.tree.map(
            jnp.copy, dict(params=s2sam_jax.unperturbed(params, opt_state), stats=stats)
          )
        if len(pending) >= 25:
          rate = sync()
          bar.set_postfix(
            epoch=f"{epoch + 1}/{cfg.epochs}",
            loss=f"{sums['loss'] / max(sums['seen'], 1):.4f}",
            acc=f"{sums['correct'] / max(sums['seen'], 1):.4f}",
            img_s="-" if rate is None else f"{rate:.0f}",
            **shown,
            refresh=False,
          )
        bar.update(1)
        if self._stop_requested(step):
          stopped = interrupted = True
          break
        if cfg.max_steps and step >= cfg.max_steps:
          stopped = True
          break
      sync()
      epoch_done = in_epoch >= sched.steps_per_epoch
      record: dict[str, Any] = dict(
        round=pos.round,
        epoch=epoch + 1,
        epoch_complete=epoch_done,
        train_loss=sums["loss"] / max(sums["seen"], 1),
        train_accuracy=sums["correct"] / max(sums["seen"], 1),
        images_per_sec=meter.rate,
        lr=float(lr_fn(max(step - 1, 0))),
      )
      last = epoch_done and epoch + 1 == cfg.epochs
      if (stopped and not interrupted) or (epoch_done and ((epoch + 1) % eval_every == 0 or last)):
        ev = evaluate(
          self.eval_step,
          params,
          stats,
          opt_state,
          self.test_source,
          self.eval_batch_size,
          self.sharded,
        )
        record.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"])
        shown["test_acc"] = f"{ev['accuracy']:.4f}"
        bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", **shown, refresh=False)
        if proc == 0 and cfg.progress:
          bar.write(
            f"{label}epoch {epoch + 1}/{cfg.epochs}: train loss "
            f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f}"
            f" | test loss {ev['loss']:.4f} acc {ev['accuracy']:.4f}"
            f" | {meter.rate:.0f} images/s"
          )
      self.history.append(writer.write(step=self._ckpt_step(pos.round, step), **record))
      if proc == 0 and not cfg.progress:
        print(json.dumps(to_python(record)), flush=True)
      if epoch_done:
        epoch, in_epoch = epoch + 1, 0
      pos = Position(pos.round, step, epoch, in_epoch)
      state = dict(params=params, stats=stats, opt_state=opt_state, extra=extra)
      if stopped or epoch >= cfg.epochs or epoch % checkpoint_every == 0:
        self.save(state, pos, sums=None if epoch_done else sums)
    bar.close()
    if interrupted:
      raise Interrupted(self._signal, self._ckpt_step(pos.round, step), self.out_dir)
    return state, pos, epoch >= cfg.epochs

  def _ckpt_step(self, round_index: int, step: int) -> int:
    return round_index * (self.sched.total_steps + 1) + step

  def save(self, state, pos: Position, sums=None) -> None:
    meta = dict(
      pos._asdict(),
      history=self.history,
      epoch_sums=sums,
      throughput=[self.images_per_sec.images, self.images_per_sec.seconds],
      config=dataclasses.asdict(self.cfg),
    )
    self.ckpt.save(
      self._ckpt_step(pos.round, pos.global_step), dict(state, rng=self.step_key), to_python(meta)
    )

  def restore(self, template):
    """``(state, position, checkpoint step)``: the newest intact checkpoint
    with ``--resume`` (settings that differ from its run are refused), else
    ``(template, Position(), None)``."""
    if not self.cfg.resume:
      return template, Position(), None
    step, state, meta = self.ckpt.restore_latest_intact(dict(template, rng=self.step_key))
    saved = meta["config"]
    now = to_python(dataclasses.asdict(self.cfg))
    changed = sorted(k for k in now if k not in _RUN_ONLY_FIELDS and saved.get(k) != now[k])
    if changed:
      raise ValueError(
        f"--resume: the checkpoint in {self.ckpt.directory} was written with other "
        f"settings ({', '.join(f'{k}: {saved.get(k)!r} -> {now[k]!r}' for k in changed)}); "
        "resume with the same flags or use another --out-dir."
      )
    self.step_key = state.pop("rng")  # the base key of the per-step keys
    self.history = list(meta["history"])
    if meta.get("epoch_sums") is not None:
      # stopped inside an epoch: its row is written again when it completes
      self.epoch_sums = meta["epoch_sums"]
      if self.history and not self.history[-1].get("epoch_complete", True):
        self.history.pop()
    self.images_per_sec.images, self.images_per_sec.seconds = meta["throughput"]
    return state, Position(*(int(meta[f]) for f in Position._fields)), step

  # -- the whole command ---------------------------------------------------
  def run(self) -> dict[str, Any]:
    cfg = self.cfg
    os.makedirs(self.out_dir, exist_ok=True)
    write_json(os.path.join(self.out_dir, "config.json"), dataclasses.asdict(cfg))
    writer = MetricsWriter(
      self.out_dir,
      history=self.history if self.resumed_at is not None else None,
      resume_step=self.resumed_at,
    )
    handlers = {}
    if threading.current_thread() is threading.main_thread():
      handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.time()
    try:
      if cfg.method in ("lt", "lrr"):
        state, pos, finished, rounds = self._run_lottery(writer)
      else:
        state, pos, finished = self.train(self.tx, self.state, self.pos, writer=writer)
        rounds = 1
    finally:
      for s, h in handlers.items():
        signal.signal(s, h)
      writer.close()
      self.ckpt.close()
    self.final_state = state
    summary = self.summary(state, pos, finished, rounds, time.time() - t0)
    write_json(os.path.join(self.out_dir, "summary.json"), summary)
    return summary

  def _run_lottery(self, writer):
    """LT / LRR: a dense round, then prune-and-retrain rounds."""
    cfg = self.cfg
    schedule = sparse.imp_schedule(cfg.sparsity, cfg.prune_fraction)
    n_rounds = len(schedule) + 1
    state, pos, tx = self.state, self.pos, self.tx
    lt = cfg.method == "lt"
    k = cfg.rewind_steps if lt else 0
    while True:
      if pos.round > 0:  # the masks of this round live in the state
        tx = self.build_tx(
          self.init_params, self.init_stats, masks=sparse.get_masks(state["opt_state"])
        )
      capture = k if (lt and pos.round == 0 and k > 0) else None
      state, pos, finished = self.train(
        tx, state, pos, writer=writer, n_rounds=n_rounds, capture_at=capture
      )
      if not finished or pos.round + 1 >= n_rounds:
        return state, pos, finished, pos.round + 1
      state, pos = self._next_round(state, pos, k)
      self.save(state, pos)

  def _next_round(self, state, pos: Position, rewind_steps: int):
    """Prunes ``--prune-fraction`` of the remaining weights (global magnitude
    of the clean trained weights) and rewinds: LT to the weights of step
    ``rewind_steps`` with a fresh optimizer (OpenLTH); LRR keeps the trained
    weights and their momentum (Renda et al.) and replays the lr schedule."""
    cfg = self.cfg
    opt_state = state["opt_state"]
    clean = s2sam_jax.unperturbed(state["params"], opt_state)
    lt = cfg.method == "lt"
    masks, start = sparse.imp_next_round(
      jax.device_get(clean),
      jax.device_get(sparse.get_masks(opt_state)),
      prune_fraction=cfg.prune_fraction,
      scope="global",
      rewind_params=jax.device_get(state["extra"]["params"]) if lt else None,
      target_sparsity=cfg.sparsity,
    )
    tx = self.build_tx(self.init_params, self.init_stats, masks=masks)
    stats = state["extra"]["stats"] if lt else state["stats"]
    params, stats, fresh = self.init_state(tx, start, stats)
    if lt:
      steps = self.sched.steps_per_epoch
      pos = Position(pos.round + 1, rewind_steps, rewind_steps // steps, rewind_steps % steps)
      opt_state = fresh
    else:
      pos = Position(pos.round + 1, 0, 0, 0)
      opt_state = carry_momentum(opt_state, fresh, masks)
    return dict(params=params, stats=stats, opt_state=opt_state, extra=state["extra"]), pos

  # -- summary ---------------------------------------------------------------
  def summary(
    self, state, pos: Position, finished: bool, rounds: int, wall: float
  ) -> dict[str, Any]:
    cfg = self.cfg
    params, opt_state = state["params"], state["opt_state"]
    clean = s2sam_jax.unperturbed(params, opt_state)
    evals = [h for h in self.history if "test_accuracy" in h]
    last_round = [h for h in evals if h["round"] == pos.round]
    masks = sparse.get_masks(opt_state)
    final = evaluate(
      self.eval_step,
      params,
      state["stats"],
      opt_state,
      self.test_source,
      self.eval_batch_size,
      self.sharded,
    )
    summary = dict(
      config=dataclasses.asdict(cfg),
      finished=finished,
      rounds=rounds,
      steps=pos.global_step,
      # always the model this run ends with (also after --max-steps)
      final_test_accuracy=final["accuracy"],
      final_test_loss=final["loss"],
      best_test_accuracy=max((h["test_accuracy"] for h in last_round), default=None),
      images_per_sec=self.images_per_sec.rate,
      wall_seconds=wall,
      devices=len(jax.devices()),
      sparsity=dict(
        (
          sparse.sparsity_summary(clean, masks)
          if masks is not None
          else sparse.sparsity_summary(clean, prunable=self.prunable)
        ).as_dict(),
        counted_over=counted_over(cfg),
      ),
      training_flops=self.training_flops(masks),
      extra_eval={},
      out_dir=self.out_dir,
    )
    for name, source in self.extra_sources.items():
      summary["extra_eval"][name] = evaluate(
        self.eval_step,
        params,
        state["stats"],
        opt_state,
        source,
        self.eval_batch_size,
        self.sharded,
      )["accuracy"]
    return to_python(summary)

  def training_flops(self, masks) -> dict[str, Any]:
    """FLOPs of this run's training (the last round's masks for LT/LRR)."""
    cfg = self.cfg
    forward = self.forward_flops
    method = {"mest-em": "mest", "mest-ems": "mest", "lt": "lottery"}.get(cfg.method, cfg.method)
    optimizer = {"original": "base"}.get(cfg.optimizer_mode, cfg.optimizer_mode)
    est = sparse.training_flops(
      forward,
      masks,
      method=method,
      optimizer=optimizer,
      steps=self.sched.total_steps,
      update_every=cfg.update_every,
      end_step=max(int(cfg.update_end * self.sched.total_steps), 1)
      if method in ("rigl", "gmp")
      else None,
    )
    examples = cfg.batch_size
    return dict(
      total=est.total * examples,
      per_step=est.per_step * examples,
      relative_to_dense=est.relative_to_dense,
      forward_dense_per_example=est.forward_dense,
      forward_sparse_per_example=est.forward_sparse,
      method=method,
      optimizer=optimizer,
      steps=est.steps,
      note="per round" if cfg.method in ("lt", "lrr") else "",
    )


def counted_over(cfg: TrainConfig) -> str:
  """Which weights the reported ``sparsity`` counts (``--keep-dense``)."""
  kept = dense_patterns(cfg)
  if not kept:
    return "every kernel of rank >= 2 (every conv and linear kernel)"
  return (
    "the kernels of rank >= 2 except those kept dense (paths matching "
    + ", ".join(repr(p) for p in kept)
    + "); biases, norms and the "
    "dense kernels count only in total_size/total_nnz"
  )


def carry_momentum(old_state, fresh_state, masks):
  """``fresh_state`` with the momentum (``trace``) of ``old_state``, masked."""
  try:
    trace = optax.tree.get(old_state, "trace")
  except KeyError:  # no momentum
    return fresh_state
  trace = jax.tree.map(
    lambda m, t: t if m is None else jnp.where(m, t, jnp.zeros_like(t)),
    masks,
    trace,
    is_leaf=lambda x: x is None,
  )
  return optax.tree.set(fresh_state, trace=trace)


def _balanced_indices(source, per_class: int, num_classes: int, seed: int):
  """``per_class`` examples of each class (GraSP's sample), the first ones in
  a seeded random order; labels are read in chunks until every class is full
  (or from ``source.labels`` when the source holds them)."""
  order = np.random.default_rng([seed, 10**6]).permutation(len(source))
  held = getattr(source, "labels", None)
  picked = {c: [] for c in range(num_classes)}
  for start in range(0, len(order), 1024):
    chunk = order[start : start + 1024]
    labels = held[chunk] if held is not None else source.get_batch(chunk)["label"]
    for i, c in zip(chunk, labels):
      if len(picked[int(c)]) < per_class:
        picked[int(c)].append(int(i))
    if all(len(v) >= per_class for v in picked.values()):
      break
  return np.sort(np.concatenate([np.asarray(v, np.int64) for v in picked.values()]))


def run(cfg: TrainConfig) -> dict[str, Any]:
  """Trains as ``cfg`` says; returns the summary (also in ``summary.json``)."""
  configs_lib.validate(cfg)
  return Runner(configs_lib.resolve(cfg)).run()


def describe(cfg: TrainConfig) -> str:
  """Every resolved field, ``name = value``, with the source of derived ones."""
  notes = {}
  if cfg.method.startswith("mest-"):
    notes["mest_prune_offsets"] = notes["mest_grow_offsets"] = configs_lib.offsets_source(cfg)
  return "\n".join(
    f"{k} = {v!r}" + (f"   # {notes[k]}" if k in notes else "")
    for k, v in dataclasses.asdict(cfg).items()
  )


def _error(message: str) -> None:
  print(f"python -m experiments.train: error: {message}", file=sys.stderr)


def _exit_at_once_on_error(exc_type, exc, tb) -> None:
  """With several processes, an uncaught error ends this process at once: the
  normal exit waits in JAX's shutdown barrier for peers that wait in a
  collective for this one (minutes, then SIGABRT)."""
  import traceback

  traceback.print_exception(exc_type, exc, tb)
  sys.stderr.flush()
  os._exit(1)


def main(argv=None) -> int:
  # Before JAX allocates: reuse freed host memory instead of page-faulting
  # each step's temporaries in again (about 20% of a CPU step; see cpu_conv).
  cpu_conv.maybe_tune_glibc_malloc()
  try:
    cfg, args = config_from_args(argv)
  except ValueError as e:  # a bad --config name or flag value
    _error(e)
    return 2
  if cfg.distributed:
    sys.excepthook = _exit_at_once_on_error
  if args.list_configs:
    print("\n".join(configs_lib.list_configs()))
    return 0
  if args.describe:
    print(describe(cfg))
    return 0
  try:
    # data, model, masks, optimizer, resumed state: user errors show here
    runner = Runner(cfg)
  except (ValueError, FileNotFoundError) as e:
    _error(e)
    return 2
  try:
    summary = runner.run()
  except Interrupted as e:
    _error(
      f"interrupted by {signal.Signals(e.signum).name} at step {e.step}; "
      f"checkpoint saved. Resume with: python -m experiments.train "
      f"--out-dir {e.out_dir} --resume"
    )
    return 128 + e.signum
  except OSError as e:  # disk full, out dir removed, permissions
    # Orbax's abandoned writes leave futures and coroutines that report the
    # same error again at exit: noise after the message below.
    warnings.filterwarnings("ignore", "coroutine .* was never awaited")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    _error(
      f"writing to --out-dir {runner.out_dir} failed ({e.strerror or e}); "
      "the checkpoints already there are intact; free space and resume "
      "with --resume."
    )
    return 1
  if jax.process_index() == 0:
    brief = {
      k: summary[k]
      for k in (
        "final_test_accuracy",
        "best_test_accuracy",
        "images_per_sec",
        "wall_seconds",
        "steps",
        "out_dir",
      )
    }
    brief["sparsity"] = summary["sparsity"]["sparsity"]
    brief["training_flops_vs_dense"] = summary["training_flops"]["relative_to_dense"]
    print(json.dumps(brief, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
