"""MEST (Yuan et al., 2021): elastic mutation (EM) and EM with soft memory bound (EM&S).

Each masked layer ``l`` (``N_l`` weights, target count ``c_l``, the number of
active weights at init) is mutated every ``update_every`` steps, **including
step 0** (reference §3.5, §4). The bounds move in phases: phase ``k`` is the
number of ``decay_steps`` already reached. With sparsity offsets ``δL_k``
(prune-to) and ``δU_k`` (grow-to), as fractions of the **layer size**:

    prune: keep the  min(n_active, c_l − round(δL_k N_l))  active weights of largest |w|
    grow:  add random inactive entries (just-pruned ones included) until
           c_l − round(δU_k N_l) weights are active; new weights start at 0

Defaults, from the S2-SAM profiles (two decay steps, three phases):

* ``variant='em'`` (MEST EM, profile ``without``): ``δL = (0.02, 0.01, 0)``,
  ``δU = (0, 0, 0)``: prune below the target, regrow back to it, so every
  update swaps 2 %, then 1 % of the layer; the count stays ``c_l``.
* ``variant='ems'`` (EM&S, profile ``with``): ``δL = (0, 0, 0)``,
  ``δU = (−0.05, −0.025, 0)``: prune to the target, grow 5 %, then 2.5 % of
  the layer above it (the soft memory bound); back at ``c_l`` in the last
  phase.

Choices: exact top-k counts instead of MEST's percentile threshold (which can
be off by ties); "active" is the stored mask, not ``w != 0``; the gradient
step is taken on update iterations, after the mutation (MEST mutates before an
epoch's first batch); the inner state of dropped and grown weights is zeroed
(MEST leaves it: under its masked-gradient SGD the buffers of inactive weights
decay, see reference §1.2).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from s2sam_jax import _masks
from s2sam_jax.sparse import _wrapper
from s2sam_jax.sparse import distributions

VARIANTS = ("em", "ems")
_DEFAULT_OFFSETS = {
    "em": ((0.02, 0.01, 0.0), (0.0, 0.0, 0.0)),
    "ems": ((0.0, 0.0, 0.0), (-0.05, -0.025, 0.0)),
}


class MESTState(NamedTuple):
  """State of :func:`mest`.

  Attributes:
    count, masks, inner_state: as :class:`SparseState`.
    key: raw ``uint32`` PRNG key for random growth.
    target_counts: ``c_l`` per masked leaf (int32 scalar; None for dense).
  """
  count: jax.Array
  masks: _masks.MaskTree
  inner_state: optax.OptState
  key: jax.Array
  target_counts: _masks.MaskTree


def _check_offsets(offsets, name, n_phases):
  try:
    values = tuple(float(v) for v in offsets)
  except TypeError:
    raise ValueError(f"`{name}` must be a sequence of floats; got {offsets!r}.") from None
  if len(values) != n_phases:
    raise ValueError(f"`{name}` must have len(decay_steps) + 1 = {n_phases} "
                     f"entries (one per phase); got {len(values)}.")
  if any(not -1.0 <= v <= 1.0 for v in values):
    raise ValueError(f"`{name}` entries must be in [-1, 1]; got {values}.")
  return values


def phase(count, decay_steps: Sequence[int]):
  """Number of ``decay_steps`` reached at step ``count`` (int32)."""
  k = jnp.zeros([], jnp.int32)
  for s in decay_steps:
    k = k + (count >= s).astype(jnp.int32)
  return k


def bounds(target_count, size: int, k, prune_offsets, grow_offsets):
  """``(prune-to count, grow-to count)`` of a layer in phase ``k``."""
  prune_delta = jnp.asarray([round(d * size) for d in prune_offsets], jnp.int32)
  grow_delta = jnp.asarray([round(d * size) for d in grow_offsets], jnp.int32)
  keep = jnp.clip(target_count - prune_delta[k], 0, size)
  grow_to = jnp.clip(target_count - grow_delta[k], 0, size)
  return keep, grow_to


def mest(
    inner: optax.GradientTransformation,
    sparsity: Optional[float] = None,
    *,
    variant: str = "em",
    update_every: int,
    decay_steps: Sequence[int] = (),
    prune_offsets: Optional[Sequence[float]] = None,
    grow_offsets: Optional[Sequence[float]] = None,
    end_step: Optional[int] = None,
    distribution: str = "uniform",
    masks: Optional[_wrapper.MasksOrFn] = None,
    key: Union[int, jax.Array] = 0,
    power: float = 1.0,
    overrides: Optional[Mapping[str, float]] = None,
    prunable: distributions.Prunable = distributions.default_prunable,
    mask_gradients: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """MEST EM / EM&S around any optax transformation (math in the module doc).

  Args:
    inner: any optax transformation; extra args are forwarded to it.
    sparsity: global target in ``[0, 1)`` for random masks at init (MEST and
      S2-SAM start from magnitude pruning of the init: pass ``masks=`` a
      function ``params -> masks`` for that); or give ``masks``.
    variant: ``'em'`` or ``'ems'`` (picks the default offsets).
    update_every: steps between mutations (S2-SAM: 5 epochs), ``>= 1``.
    decay_steps: increasing steps where the next phase starts (S2-SAM: epochs
      100 and 130, in steps). The defaults need exactly two.
    prune_offsets: ``δL_k``, one per phase, fractions of the layer size.
    grow_offsets: ``δU_k``, one per phase; ``δU_k <= δL_k``.
    end_step: last mutation step (inclusive); ``None``: never stop (updates
      in the last phase of EM are no-ops once the bounds are equal).
    distribution, masks, key, power, overrides, prunable, mask_gradients:
      as :func:`rigl`.

  Returns:
    ``GradientTransformationExtraArgs`` with state :class:`MESTState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> params = {'w': jnp.ones((10, 10))}
    >>> tx = sparse.mest(optax.sgd(0.1), 0.9, variant='ems', update_every=5,
    ...                  decay_steps=(10, 20))
    >>> state = tx.init(params)
    >>> u, state = tx.update({'w': jnp.ones((10, 10))}, state,
    ...                      sparse.apply_masks(params, state))
    >>> int(state.masks['w'].sum())   # 10 + 5% of 100 above the target
    15
  """
  _wrapper.check_mask_source(sparsity, masks)
  _wrapper.check_choice(variant, "variant", VARIANTS)
  _wrapper.check_distribution(distribution)
  _wrapper.check_int(update_every, "update_every", 1)
  decay_steps = tuple(decay_steps)
  for s in decay_steps:
    _wrapper.check_int(s, "decay_steps", 0)
  if list(decay_steps) != sorted(set(decay_steps)):
    raise ValueError(f"`decay_steps` must be strictly increasing; got {decay_steps}.")
  if end_step is not None:
    _wrapper.check_int(end_step, "end_step", 0)
  n_phases = len(decay_steps) + 1
  if (prune_offsets is None or grow_offsets is None) and n_phases != 3:
    raise ValueError(
        f"The default offsets of variant={variant!r} have 3 phases: give "
        f"`decay_steps` two steps, or give `prune_offsets` and `grow_offsets` "
        f"with len(decay_steps) + 1 = {n_phases} entries; got "
        f"decay_steps={decay_steps}.")
  default_prune, default_grow = _DEFAULT_OFFSETS[variant]
  prune_offsets = _check_offsets(
      default_prune if prune_offsets is None else prune_offsets,
      "prune_offsets", n_phases)
  grow_offsets = _check_offsets(
      default_grow if grow_offsets is None else grow_offsets,
      "grow_offsets", n_phases)
  if any(u > l for l, u in zip(prune_offsets, grow_offsets)):
    raise ValueError(f"`grow_offsets` must be <= `prune_offsets` phase-wise "
                     f"(grow back at most to the pruned level); got "
                     f"{grow_offsets} vs {prune_offsets}.")
  key = _wrapper.raw_key(key)

  def init(params):
    mask_key, state_key = jax.random.split(key)
    tree = _wrapper.initial_masks(
        params, masks, sparsity=sparsity, distribution=distribution,
        key=mask_key, power=power, overrides=overrides, prunable=prunable)
    counts = _masks.count_active(tree)
    return tree, {"key": state_key, "target_counts": counts}

  def is_update_step(t):
    ok = t % update_every == 0
    return ok if end_step is None else ok & (t <= end_step)

  def update(old_masks, params, grads, count, extras):
    del grads
    next_key, sub = jax.random.split(extras["key"])
    k = phase(count, decay_steps)
    treedef, mask_leaves, (param_leaves, targets) = _wrapper.flatten_masked(
        old_masks, params, extras["target_counts"])
    new = []
    for i, (m, p, c) in enumerate(zip(mask_leaves, param_leaves, targets)):
      if m is None:
        new.append(None)
        continue
      keep, grow_to = bounds(c, _wrapper.leaf_size(m), k, prune_offsets,
                             grow_offsets)
      keep = jnp.minimum(keep, jnp.sum(m, dtype=jnp.int32))
      kept = _masks.keep_top_k(_wrapper.drop_scores(p, m), keep)
      u = jax.random.uniform(jax.random.fold_in(sub, i), m.shape)
      grown = _masks.keep_top_k(_wrapper.grow_scores(u, kept),
                                jnp.maximum(grow_to - keep, 0))
      new.append(kept | grown)
    return jax.tree.unflatten(treedef, new), dict(extras, key=next_key)

  topology = _wrapper.Topology(is_update_step=is_update_step, update=update,
                               skip_inner_step=False)
  return _wrapper.sparse_wrapper(inner, state_cls=MESTState, init=init,
                                 topology=topology,
                                 mask_gradients=mask_gradients)
