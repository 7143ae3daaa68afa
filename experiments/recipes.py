"""From a config to an optimizer: the schedule, the masks, then ``tx``.

A run's optimizer is ``mode(method(sgd))``: SGD with momentum and coupled
weight decay (PyTorch semantics), wrapped by the sparse method (its masks in
its state), wrapped by ``s2sam_jax.s2sam`` (transparent mode: the loop holds
``w + ε``) or ``s2sam_jax.sam`` (two passes). Masks come first
(:func:`initial_masks`), then the pure :func:`build_tx`::

    sched = recipes.Schedule.of(cfg, steps_per_epoch)
    masks = recipes.initial_masks(cfg, params, mask_key, scoring)
    tx = recipes.build_tx(cfg, sched, masks, mask_key)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import s2sam_jax
from experiments import models as models_lib
from experiments.configs import TrainConfig
from s2sam_jax import sparse

LOTTERY = ("lt", "lrr")


class Schedule(NamedTuple):
  """Steps of one training run (one LT/LRR round)."""

  steps_per_epoch: int
  total_steps: int

  @classmethod
  def of(cls, cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    return cls(steps_per_epoch, steps_per_epoch * cfg.epochs)


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


def dense_patterns(cfg: TrainConfig) -> tuple[str, ...]:
  """Regexes of the param paths kept dense (``--keep-dense``)."""
  if cfg.keep_dense == "none":
    return ()
  if cfg.keep_dense == "paper":
    return tuple(models_lib.paper_dense_layers(cfg.model))
  return (cfg.keep_dense,)


def make_prunable(cfg: TrainConfig) -> Callable[[Any, Any], bool]:
  """``prunable(path, leaf)``: kernels of rank >= 2 not kept dense."""
  patterns = [re.compile(p) for p in dense_patterns(cfg)]

  def prunable(path, leaf) -> bool:
    if not sparse.default_prunable(path, leaf):
      return False
    name = sparse.path_str(path)
    return not any(p.search(name) for p in patterns)

  return prunable


def counted_over(cfg: TrainConfig) -> str:
  """Which weights the reported ``sparsity`` counts (``--keep-dense``)."""
  kept = dense_patterns(cfg)
  if not kept:
    return "every kernel of rank >= 2 (every conv and linear kernel)"
  return (
    "the kernels of rank >= 2 except those kept dense (paths matching "
    + ", ".join(repr(p) for p in kept)
    + "); biases, norms and the dense kernels count only in total_size/total_nnz"
  )


def topology_end_step(cfg: TrainConfig, sched: Schedule) -> int:
  """The step after which the topology is frozen (``--update-end``)."""
  return max(int(cfg.update_end * sched.total_steps), 1)


def dsr_periods(cfg: TrainConfig, sched: Schedule) -> dict[int, int]:
  """DSR's growing rewiring period: ``--update-every`` from step 0, doubled
  at the start of each epoch ``round(f · epochs)`` of ``--dsr-period-doublings``."""
  periods = {0: cfg.update_every}
  for i, f in enumerate(cfg.dsr_period_doublings, start=1):
    periods[max(1, round(f * cfg.epochs)) * sched.steps_per_epoch] = cfg.update_every * 2**i
  return periods


def xavier_linear_copy(params, key):
  """``params`` with every dense kernel (rank 2, ``(n_in, n_out)``) redrawn
  from N(0, 2 / (n_in + n_out)) (xavier-normal), other leaves unchanged."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.fold_in(key, 7), len(leaves))
  redrawn = [
    jax.random.normal(k, x.shape, x.dtype) * np.sqrt(2.0 / sum(x.shape)) if np.ndim(x) == 2 else x
    for k, x in zip(keys, leaves)
  ]
  return jax.tree_util.tree_unflatten(treedef, redrawn)


# ----------------------------------------------------------------- masks


def _magnitude_at_init(cfg: TrainConfig, params, prunable):
  """One-shot per-layer magnitude pruning of the init (S2-SAM/MEST profiles)."""
  densities = sparse.layer_densities(params, cfg.sparsity, cfg.distribution, prunable=prunable)
  return sparse.magnitude_masks(params, densities)


def _snip(cfg: TrainConfig, params, prunable, scoring):
  loss_fn, batch = scoring
  if cfg.snip_scope == "layer":  # RigL's per-layer SNIP
    densities = sparse.layer_densities(params, cfg.sparsity, cfg.distribution, prunable=prunable)
    return sparse.snip_masks(loss_fn, params, batch, densities=densities)
  return sparse.snip_masks(loss_fn, params, batch, cfg.sparsity, prunable=prunable)


def _grasp(cfg: TrainConfig, params, prunable, scoring, key):
  # GraSP scores a copy whose linear layers are re-initialised xavier-normal
  # [code]; the masks then apply to the original network.
  loss_fn, batch = scoring
  copy = xavier_linear_copy(params, key)
  return sparse.grasp_masks(
    loss_fn, copy, batch, cfg.sparsity, temperature=cfg.grasp_temperature, prunable=prunable
  )


def initial_masks(cfg: TrainConfig, params, key, scoring: Callable | None = None):
  """The masks a run starts from, or ``None`` where the method draws random
  masks itself (static, SET, RigL, DSR, GMP) or has none (dense).

  ``scoring()`` returns ``(loss_fn, batch)`` for SNIP and GraSP
  (:func:`experiments.steps.scoring_loss`). LT/LRR start dense.
  """
  prunable = make_prunable(cfg)
  if cfg.method in LOTTERY:
    return sparse.dense_masks(params, prunable)
  if cfg.method in ("magnitude", "mest-em", "mest-ems"):
    return _magnitude_at_init(cfg, params, prunable)
  if cfg.method == "snip":
    return _snip(cfg, params, prunable, scoring())
  if cfg.method == "grasp":
    return _grasp(cfg, params, prunable, scoring(), key)
  return None


# ----------------------------------------------------------- optimizer


# The training command's methods by their s2sam_jax.sparse.create names: the
# mask sources train with fixed masks.
_FACTORY_NAMES = {m: "static" for m in ("static", "magnitude", "snip", "grasp") + LOTTERY}


def _knobs(cfg: TrainConfig, sched: Schedule) -> dict[str, Any]:
  """The keyword arguments of ``cfg.method``'s own knobs."""
  end_step = topology_end_step(cfg, sched)
  if cfg.method in ("rigl", "set"):
    return dict(end_step=end_step, update_every=cfg.update_every, drop_fraction=cfg.drop_fraction)
  if cfg.method == "dsr":
    return dict(
      update_every=dsr_periods(cfg, sched),
      end_step=end_step,
      target_count=cfg.dsr_target or None,
      target_fraction=cfg.dsr_target_fraction,
      init_threshold=cfg.dsr_threshold,
    )
  if cfg.method in ("mest-em", "mest-ems"):
    every = cfg.update_every
    if cfg.update_every_epochs:
      every = int(round(cfg.update_every_epochs * sched.steps_per_epoch))
    return dict(
      update_every=max(every, 1),
      decay_steps=tuple(int(e * sched.steps_per_epoch) for e in cfg.mest_decay_epochs),
      prune_offsets=cfg.mest_prune_offsets,
      grow_offsets=cfg.mest_grow_offsets,
    )
  return {}


def sparse_method(cfg: TrainConfig, inner, sched: Schedule, masks, key):
  """``inner`` wrapped by the sparse method of ``cfg`` (masks in its state),
  built by name with ``sparse.create``; ``masks`` from :func:`initial_masks`
  (``None``: random masks at ``--sparsity`` over ``--distribution``, drawn
  with the method's key)."""
  if cfg.method == "dense":
    return inner
  fixed = dict(mask_gradients=cfg.mask_gradients)
  if cfg.method == "gmp":  # dense at first; its masks come from magnitude pruning
    gmp = dict(end_step=topology_end_step(cfg, sched), update_every=cfg.update_every)
    gmp.update(sparsity=cfg.sparsity, distribution=cfg.distribution, prunable=make_prunable(cfg))
    return sparse.create("gmp", inner, **gmp, **fixed)
  if masks is None:
    masks = sparse.random_init(cfg.sparsity, cfg.distribution, prunable=make_prunable(cfg))
  name = _FACTORY_NAMES.get(cfg.method, cfg.method)
  return sparse.create(name, inner, masks=masks, key=key, **_knobs(cfg, sched), **fixed)


# The TrainConfig fields that s2sam_jax.s2sam and s2sam_jax.sam take as arguments of that name.
_PERTURBATION_ARGS = ("rho", "adaptive", "eta", "adaptive_formula", "perturb_pruned")


def wrap_mode(cfg: TrainConfig, tx) -> optax.GradientTransformationExtraArgs:
  """``tx`` under ``--optimizer-mode``: S2-SAM, two-step SAM, or as is."""
  kwargs = {name: getattr(cfg, name) for name in _PERTURBATION_ARGS}
  if cfg.optimizer_mode == "s2sam":
    return s2sam_jax.s2sam(tx, **kwargs)
  if cfg.optimizer_mode == "sam":
    return s2sam_jax.sam(tx, **kwargs)
  return optax.with_extra_args_support(tx)


def build_tx(cfg: TrainConfig, sched: Schedule, masks, key) -> optax.GradientTransformation:
  """``mode(method(sgd))`` for ``cfg``: a pure function of its arguments."""
  inner = base_optimizer(cfg, learning_rate(cfg, sched.steps_per_epoch))
  return wrap_mode(cfg, sparse_method(cfg, inner, sched, masks, key))


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


def training_flops(cfg: TrainConfig, sched: Schedule, forward_flops, masks) -> dict[str, Any]:
  """FLOPs of this run's training (the last round's masks for LT/LRR)."""
  method = {"mest-em": "mest", "mest-ems": "mest", "lt": "lottery"}.get(cfg.method, cfg.method)
  optimizer = {"original": "base"}.get(cfg.optimizer_mode, cfg.optimizer_mode)
  est = sparse.training_flops(
    forward_flops,
    masks,
    method=method,
    optimizer=optimizer,
    steps=sched.total_steps,
    update_every=cfg.update_every,
    end_step=topology_end_step(cfg, sched) if method in ("rigl", "gmp") else None,
  )
  return dict(
    total=est.total * cfg.batch_size,
    per_step=est.per_step * cfg.batch_size,
    relative_to_dense=est.relative_to_dense,
    forward_dense_per_example=est.forward_dense,
    forward_sparse_per_example=est.forward_sparse,
    method=method,
    optimizer=optimizer,
    steps=est.steps,
    note="per round" if cfg.method in LOTTERY else "",
  )
