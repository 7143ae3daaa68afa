"""DSR: dynamic sparse reparameterization.

Mostafa & Wang, "Parameter Efficient Training of Deep Convolutional Neural
Networks by Dynamic Sparse Reparameterization", ICML 2019, arXiv:1902.05967.

Every ``P_t`` steps ``t > 0`` (never at step 0; until ``end_step``), with
one global threshold ``H`` (Mostafa & Wang's code, IntelAI/dynamic-reparameterization
``main.py``, ``parameterized_tensors.py``):

1. **Drop.** In every masked layer remove the active weights with
   ``|w| < H``, keeping at least the one of largest ``|w|`` in a non-empty layer.
   ``K`` = total removed; ``n_l`` = survivors of layer ``l``.
2. **Reallocate.** Layer ``l`` gets ``q_l = round(K n_l / Σ n)`` new weights;
   the rounding residual ``K − Σ q`` goes to one random layer. Where a layer
   lacks room (``q_l > N_l − n_l``) the excess is moved to layers with room,
   visited in random order, so exactly ``K`` weights are grown: the global
   count is kept, per-layer counts drift.
3. **Grow.** ``q_l`` positions uniformly at random among the inactive ones,
   excluding the weights just dropped in that layer (they are used only if a
   layer has no other room). New weights start at 0.
4. **Adapt H.** ``H ← H/2`` if ``K > 1.1 N_target``, ``H ← 2H`` if
   ``K < 0.9 N_target``.

Choices: the inner optimizer state of dropped and grown weights is zeroed
(DSR's code leaves the buffers to decay; with gradients masked, a dropped
weight's momentum is then frozen until regrowth, so zeroing is the clean
equivalent). The topology is updated before the step of iteration ``t``
(DSR rewires after the step of ``t − 1``: the same weights) and the gradient
step is taken with the new masks.

The rewiring period may grow during training, as in DSR's schedules (WRN-28-2
on CIFAR-10: ``P = 100`` iterations, 200 from epoch 25, 400 from 80, 800 from
140 of 200; ``learning_schedules/wrnet_schedule.yaml``): pass
``update_every={0: 100, s1: 200, ...}`` (start step -> period). A rewire
happens at step ``t > 0`` when ``t % P_t == 0``, ``P_t`` the period of the
last start ``<= t``, as DSR's ``(i + current_iteration) % rewire_period``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from s2sam_jax import _checks, _masks
from s2sam_jax.sparse import _wrapper

# DSR's N_target is 20,000 weights for WRN-28-2 on CIFAR-10 at 90% sparsity
# (IntelAI/dynamic-reparameterization experiments/wrnet_experiments.yaml,
# --n-prune-params). Its sparse layers are the 3x3 block convs (widths
# 32/64/128, 4 blocks per group; stem, 1x1 shortcuts and fc dense): 69,120 +
# 276,480 + 1,105,920 = 1,451,520 weights, 145,152 active at 90%. The default
# ``target_fraction`` carries that fraction to other models and sparsities.
TARGET_FRACTION = 20_000 / 145_152  # 0.1378


class DSRState(NamedTuple):
  """State of :func:`dsr`.

  Attributes:
    count, masks, inner_state: as :class:`SparseState`.
    key: raw ``uint32`` PRNG key for growth and the residual layer.
    threshold: the global pruning threshold ``H`` (float32 scalar).
    target_count: ``N_target`` (int32 scalar), the number of weights to
      reallocate per update that ``H`` adapts to.
  """

  count: jax.Array
  masks: _masks.MaskTree
  inner_state: optax.OptState
  key: jax.Array
  threshold: jax.Array
  target_count: jax.Array


def _fill_in_order(amount, room, order):
  """Adds up to ``room[l]`` to layers in ``order`` until ``amount`` is placed.

  Vectorised greedy fill: returns ``add`` with ``0 <= add <= room`` and
  ``sum(add) = min(amount, sum(room))``.
  """
  room_in_order = room[order]
  before = jnp.cumsum(room_in_order) - room_in_order
  add_in_order = jnp.clip(amount - before, 0, room_in_order)
  return jnp.zeros_like(room).at[order].set(add_in_order)


def reallocate(removed, survivors, sizes, key):
  """Per-layer grow counts summing exactly to ``removed`` (see module doc).

  Args:
    removed: ``K`` (int32 scalar).
    survivors: ``n_l`` (int32 vector).
    sizes: ``N_l`` (int32 vector).
    key: PRNG key for the residual layer and the fill order.
  """
  residual_key, order_key = jax.random.split(key)
  total = jnp.maximum(jnp.sum(survivors), 1).astype(jnp.float32)
  quota = jnp.round(removed.astype(jnp.float32) * survivors / total).astype(jnp.int32)
  lucky = jax.random.randint(residual_key, [], 0, survivors.shape[0])
  quota = quota.at[lucky].add(removed - jnp.sum(quota))
  room = sizes - survivors
  quota = jnp.clip(quota, 0, room)
  order = jax.random.permutation(order_key, survivors.shape[0])
  missing = removed - jnp.sum(quota)
  quota = quota + _fill_in_order(missing, room - quota, order)
  excess = jnp.sum(quota) - removed  # > 0 only if the residual overshot
  return quota - _fill_in_order(excess, quota, order)


def adapt_threshold(threshold, removed, target_count):
  """``H/2`` if ``K > 1.1 N_target``; ``2H`` if ``K < 0.9 N_target``."""
  k = removed.astype(jnp.float32)
  target = target_count.astype(jnp.float32)
  return jnp.where(
    k > 1.1 * target, threshold / 2, jnp.where(k < 0.9 * target, threshold * 2, threshold)
  )


def _survivors(m, w, threshold):
  """DSR's drop in one layer: the active ``|w| >= H`` survive, and at least
  the one of largest ``|w|`` in a non-empty layer."""
  w = jnp.abs(jnp.asarray(w, jnp.float32))
  keep = m & (w >= threshold)
  largest = _wrapper.keep_largest(w, m, 1) & m
  return keep | (largest & ~jnp.any(keep))


def _regrow(m, survivors, dropped, quota, key):
  """``quota`` random inactive positions of one layer, the just-dropped ones
  only if the layer has no other room."""
  u = jax.random.uniform(key, m.shape)
  # Inactive, not just dropped: [0, 1); just dropped: [-1, 0); kept: -2.
  scores = jnp.where(survivors, -2.0, jnp.where(dropped, u - 1.0, u))
  return survivors | _masks.keep_top_k(scores, quota)


def dsr_topology_update(masks, params, threshold, target_count, key):
  """One DSR rewire; returns ``(masks, new_threshold, K)``."""
  if not jax.tree.leaves(masks):
    return masks, threshold, jnp.zeros([], jnp.int32)
  grow_key, alloc_key = jax.random.split(key)
  survivors = _masks.per_layer(lambda m, w: _survivors(m, w, threshold), masks, params)
  dropped = _masks.per_layer(lambda m, s: m & ~s, masks, survivors)
  n = jnp.stack([jnp.sum(s, dtype=jnp.int32) for s in jax.tree.leaves(survivors)])
  removed = sum(jnp.sum(d, dtype=jnp.int32) for d in jax.tree.leaves(dropped))
  sizes = jnp.asarray([_wrapper.leaf_size(m) for m in jax.tree.leaves(masks)], jnp.int32)
  quota = reallocate(removed, n, sizes, alloc_key)
  quotas = _masks.fill_layers(masks, [quota[j] for j in range(len(sizes))])
  new = _masks.per_layer(_regrow, masks, survivors, dropped, quotas, key=grow_key)
  new_threshold = adapt_threshold(threshold, removed, target_count)
  return new, new_threshold, removed


def _check_period_schedule(update_every) -> dict:
  """``update_every`` (int or start step -> period) as a checked dict."""
  if not isinstance(update_every, Mapping):
    return {0: _checks.check_int(update_every, "update_every", 1)}
  if 0 not in update_every:
    raise ValueError(
      "`update_every` as a schedule must map step 0 to the "
      f"first period; got {dict(update_every)!r}."
    )
  return {
    _checks.check_int(s, "update_every (start step)", 0): _checks.check_int(
      p, "update_every (period)", 1
    )
    for s, p in sorted(update_every.items())
  }


def rewire_period(count, schedule: Mapping[int, int]):
  """``P_t``: the period of the last start step ``<= count`` (int32)."""
  period = jnp.asarray(schedule[0], jnp.int32)
  for start, value in sorted(schedule.items()):
    if start > 0:
      period = jnp.where(count >= start, jnp.int32(value), period)
  return period


def dsr(
  inner: optax.GradientTransformation,
  masks: _wrapper.MasksOrFn | None = None,
  *,
  sparsity: float | None = None,
  update_every: int | Mapping[int, int] = 100,
  end_step: int | None = None,
  target_fraction: float = TARGET_FRACTION,
  target_count: int | None = None,
  init_threshold: float = 1e-3,
  key: int | jax.Array = 0,
  mask_gradients: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """DSR around any optax transformation (math in the module docstring).

  Args:
    inner: any optax transformation; extra args are forwarded to it.
    masks: the initial masks, as :func:`rigl` takes them.
    sparsity: instead of ``masks``, shorthand for
      ``masks=random_init(sparsity, 'uniform')`` (DSR starts every sparse
      layer at the same sparsity).
    update_every: rewire period ``P >= 1`` (rewires at ``t = P, 2P, ...``),
      or a growing period as a dict ``{0: P_0, start_1: P_1, ...}`` (start
      step -> period, see the module docstring).
    end_step: no rewire after this step (inclusive); ``None``: never stop.
    target_fraction: ``N_target`` as a fraction in ``(0, 1)`` of the initial
      number of active weights (used when ``target_count`` is None). The
      default is DSR's WRN-28-2 value, 20,000 of 145,152 (module constant
      ``TARGET_FRACTION``).
    target_count: ``N_target`` as an absolute count ``>= 1``.
    init_threshold: ``H_0 > 0`` (DSR: 1e-3).
    key, mask_gradients: as :func:`rigl` (``key``'s second half seeds the
      growth and the residual layer).

  Returns:
    ``GradientTransformationExtraArgs`` with state :class:`DSRState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> params = {'a': jnp.ones((6, 6)), 'b': jnp.ones((4, 4))}
    >>> tx = sparse.dsr(optax.sgd(0.1), sparsity=0.5, update_every=1)
    >>> state = tx.init(params)
    >>> p = sparse.apply_masks(params, state)
    >>> for _ in range(3):
    ...   u, state = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
    ...   p = optax.apply_updates(p, u)
    >>> sum(int(m.sum()) for m in jax.tree.leaves(state.masks))
    26
  """
  source = _wrapper.mask_source(masks, sparsity, key, distribution="uniform")
  periods = _check_period_schedule(update_every)
  _check_rewiring(end_step, target_fraction, target_count, init_threshold)

  def init(params):
    tree, state_key = source.init_with_state_key(params)
    if target_count is None:
      active = sum(jnp.sum(m, dtype=jnp.int32) for m in jax.tree.leaves(tree))
      target = jnp.maximum(jnp.round(target_fraction * jnp.asarray(active, jnp.float32)), 1)
    else:
      target = target_count
    return tree, {
      "key": state_key,
      "threshold": jnp.asarray(init_threshold, jnp.float32),
      "target_count": jnp.asarray(target, jnp.int32),
    }

  topology = _wrapper.Topology(
    is_update_step=functools.partial(_is_rewire_step, periods, end_step),
    update=_rewire,
    skip_inner_step=False,
  )
  return _wrapper.sparse_wrapper(
    inner, state_cls=DSRState, init=init, topology=topology, mask_gradients=mask_gradients
  )


def _check_rewiring(end_step, target_fraction, target_count, init_threshold) -> None:
  if end_step is not None:
    _checks.check_int(end_step, "end_step", 1)
  if target_count is None:
    _checks.check_open_fraction(target_fraction, "target_fraction")
  else:
    _checks.check_int(target_count, "target_count", 1)
  threshold = _checks.as_real(init_threshold)
  if threshold is None or not (threshold > 0 and math.isfinite(threshold)):
    raise ValueError(f"`init_threshold` must be a finite float > 0; got {init_threshold!r}.")


def _is_rewire_step(periods, end_step, t):
  """``t > 0`` with ``t % P_t == 0``, up to ``end_step`` (inclusive)."""
  ok = (t > 0) & (t % rewire_period(t, periods) == 0)
  return ok if end_step is None else ok & (t <= end_step)


def _rewire(old_masks, params, grads, count, extras):
  """:func:`dsr_topology_update` on the state's key, threshold and target."""
  del grads, count
  next_key, sub = jax.random.split(extras["key"])
  new, threshold, _ = dsr_topology_update(
    old_masks, params, extras["threshold"], extras["target_count"], sub
  )
  return new, dict(extras, key=next_key, threshold=threshold)
