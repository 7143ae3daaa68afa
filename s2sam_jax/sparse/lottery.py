"""Iterative magnitude pruning: lottery tickets (LT) and LR rewinding (LRR).

LT: Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse,
Trainable Neural Networks", ICLR 2019, arXiv:1803.03635, with rewinding to an
early step ``k`` from Frankle, Dziugaite, Roy & Carbin, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", ICML 2020, arXiv:1912.05671;
code facebookresearch/open_lth ``pruning/sparse_global.py``. LRR: Renda,
Frankle & Carbin, "Comparing Rewinding and Fine-tuning in Neural Network
Pruning", ICLR 2020, arXiv:2003.02389; code
lottery-ticket/rewinding-iclr20-public ``vision/lottery/lottery/prune_functions.py``.

Both are multi-run procedures: train, prune the trained weights by magnitude,
restart, repeat. This module holds the pure steps between runs; the training
loop is the caller's::

    masks, params = None, theta_k            # theta_k: weights at rewind step k
    for sparsity in [0.0] + imp_schedule(0.9):
      trained = train(params, masks)         # e.g. with sparse.static_masks(..., masks=masks)
      if sparsity == imp_schedule(0.9)[-1]:
        break
      masks, params = imp_next_round(trained, masks, target_sparsity=0.9,
                                     rewind_params=theta_k)   # LT
      # LRR: rewind_params=None keeps the trained weights; restart only the LR
      # schedule (a fresh optimizer state has count 0, i.e. t = 0)

Pruning rule (exact counts): each round removes ``prune_fraction`` of the
*remaining* weights by ``|w|`` of the trained weights, keeping
``round((1 - p) · n_active)`` (``count_for_density(n_active, 1 - p)``), never
fewer than the target's ``count_for_density(N, 1 - target_sparsity)``.
Ranking is global over all masked leaves (OpenLTH, Renda) or per layer; only
active weights compete (pruned weights never come back); ties keep the lower
flat index. OpenLTH instead removes ``ceil(p · n_active) + 1`` plus ties, and
Renda's LRR prunes to a percentile directly: both differ by a few weights.

Optimizer state is not part of this driver: OpenLTH starts each round with a
fresh optimizer (no momentum at the rewind point), which is what a fresh
``tx.init`` gives; Renda's code restores the momentum of the checkpoint.

Example:
  >>> import jax.numpy as jnp
  >>> trained = {'w': jnp.arange(1., 11.).reshape(2, 5), 'b': jnp.ones(5)}
  >>> init = {'w': -jnp.ones((2, 5)), 'b': jnp.zeros(5)}
  >>> masks, start = imp_next_round(trained, prune_fraction=0.2, rewind_params=init)
  >>> int(masks['w'].sum()), masks['b'] is None, float(start['w'][0, 0]), float(start['w'][1, 0])
  (8, True, 0.0, -1.0)
  >>> imp_schedule(0.9)[-2:], len(imp_schedule(0.9))
  ([0.8926258176, 0.9], 11)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from s2sam_jax import _checks, _masks
from s2sam_jax.sparse.distributions import Prunable, count_for_density, default_prunable
from s2sam_jax.sparse.pruning_at_init import SCOPES


def imp_schedule(target_sparsity: float, prune_fraction: float = 0.2) -> list[float]:
  """Sparsity after each pruning round: ``1 - (1-p)^r``, last one clipped.

  The number of rounds is the smallest ``R`` with ``1 - (1-p)^R >=
  target_sparsity`` (90% / 95% / 98% at ``p = 0.2``: 11 / 14 / 18 rounds); the
  last entry is ``target_sparsity`` itself instead of overshooting.

  Example:
    >>> [round(s, 4) for s in imp_schedule(0.5)]
    [0.2, 0.36, 0.488, 0.5]
  """
  target = _checks.check_sparsity(target_sparsity, "target_sparsity")
  p = _checks.check_open_fraction(prune_fraction, "prune_fraction")
  if target == 0.0:
    return []
  rounds = math.ceil(math.log(1.0 - target) / math.log(1.0 - p) - 1e-9)
  out = [round(1.0 - (1.0 - p) ** r, 10) for r in range(1, rounds)]
  return out + [target]


def dense_masks(params, prunable: Prunable = default_prunable):
  """All-``True`` masks on the ``prunable`` leaves, ``None`` elsewhere.

  The masks of round 0 (dense training), where IMP starts.
  """
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  return jax.tree.unflatten(
    treedef,
    [jnp.ones(np.shape(x), bool) if prunable(path, x) else None for path, x in leaves_with_path],
  )


def imp_next_round(
  trained_params,
  masks=None,
  *,
  prune_fraction: float = 0.2,
  scope: str = "global",
  rewind_params=None,
  target_sparsity: float | None = None,
  prunable: Prunable = default_prunable,
):
  """One IMP step: prune the trained weights, return the next round's start.

  Args:
    trained_params: weights at the end of the round just trained.
    masks: that round's mask tree; ``None`` means the dense first round
      (:func:`dense_masks` over ``prunable``).
    prune_fraction: ``p`` in ``(0, 1)``, the fraction of the remaining weights
      removed (OpenLTH and Renda: 0.2).
    scope: ``'global'`` (one ranking over all masked leaves, as LT and LRR
      do) or ``'layer'`` (each leaf separately).
    rewind_params: weights to restart from, masked: ``θ_0`` (original LT),
      ``θ_k`` (rewinding to step ``k``). ``None`` keeps ``trained_params``
      (LRR: only the learning-rate schedule is rewound, by the caller).
    target_sparsity: final sparsity in ``[0, 1)``; the keep count never goes
      below its ``count_for_density(N, 1 - target_sparsity)`` (per leaf for
      ``scope='layer'``), so the last round lands on the target.
    prunable: selects the leaves when ``masks`` is ``None``.

  Returns:
    ``(next_masks, start_params)`` with ``start_params = next_masks ⊙ (rewind
    or trained params)``.
  """
  p = _checks.check_open_fraction(prune_fraction, "prune_fraction")
  _checks.check_choice(scope, "scope", SCOPES)
  target = (
    None if target_sparsity is None else _checks.check_sparsity(target_sparsity, "target_sparsity")
  )
  if masks is None:
    masks = dense_masks(trained_params, prunable)
  _masks.validate_masks(masks, trained_params)
  if rewind_params is not None:
    if jax.tree.structure(rewind_params) != jax.tree.structure(trained_params):
      raise ValueError("`rewind_params` must have the structure of `trained_params`.")
    _masks.validate_masks(masks, rewind_params, "masks (vs rewind_params)")

  keep_count = functools.partial(_keep_count, p, target)
  scores = _masks.map_masked(_active_magnitudes, masks, trained_params, dense_fn=lambda x: None)
  if scope == "global":
    next_masks = _prune_globally(masks, scores, trained_params, keep_count)
  else:
    next_masks = _masks.per_layer(
      lambda m, s: _masks.keep_top_k_host(
        s, keep_count(int(np.sum(np.asarray(m))), int(np.size(m)))
      ),
      masks,
      scores,
    )
  start = trained_params if rewind_params is None else rewind_params
  return next_masks, _masks.mask_tree(start, next_masks)


def _active_magnitudes(m, w):
  """``|w|`` on active entries, ``-inf`` elsewhere (pruned weights never return)."""
  w = np.abs(np.asarray(w, np.float32))
  m = np.asarray(m, bool)
  if not np.all(np.isfinite(w[m])):
    raise ValueError("`trained_params` has non-finite active weights.")
  return np.where(m, w, -np.inf)


def _keep_count(p, target, n_active, size) -> int:
  """``round((1 − p) n_active)``, at least the target's count, at most ``n_active``."""
  keep = count_for_density(n_active, 1.0 - p)
  if target is not None:
    keep = max(keep, count_for_density(size, 1.0 - target))
  return min(keep, n_active)


def _prune_globally(masks, scores, trained_params, keep_count):
  """One ranking of the active weights of every masked leaf."""
  mask_leaves = jax.tree.leaves(masks)
  n_active = sum(int(np.sum(np.asarray(m))) for m in mask_leaves)
  size = sum(int(np.size(m)) for m in mask_leaves)
  selected = jax.tree.map(lambda m: m is not None, masks, is_leaf=_masks.is_none)
  return _masks.keep_top_k_global(
    jax.tree.map(
      lambda s, w: np.zeros(np.shape(w)) if s is None else s,
      scores,
      trained_params,
      is_leaf=_masks.is_none,
    ),
    selected,
    keep_count(n_active, size),
  )
