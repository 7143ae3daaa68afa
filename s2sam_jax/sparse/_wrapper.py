"""Machinery shared by the sparse wrappers: masks kept in the optimizer state.

Every wrapper in :mod:`s2sam_jax.sparse` is built by :func:`sparse_wrapper`
from an initial mask tree and (for dynamic methods) a topology update. One
``update(grads, state, params, **extra_args)`` does, with masks ``m``:

1. If ``is_update_step(count)`` (a traced bool): new masks ``m'`` from the
   method's topology update, otherwise ``m' = m``; the inner optimizer's
   state is zeroed wherever the mask changed (dropped and newly grown weights;
   a weight dropped and regrown in the same update keeps its state), through
   ``optax.tree.map_params`` so that any optimizer's per-param state
   (momentum, Adam's ``mu``/``nu``, ...) is covered.
2. The inner step ``u = inner(m' ⊙ g)`` (``mask_gradients=False`` passes the
   dense ``g``); extra args are forwarded to ``inner``. Methods that skip the
   gradient step on update iterations (RigL, SET) return ``u = 0`` there and
   leave the inner state as it was (apart from the zeroing in 1).
3. The returned update is ``m' ⊙ (p + u) − p``, written as ``u`` on active
   weights and ``−p`` on masked ones, so ``optax.apply_updates`` leaves
   masked weights exactly ``0``. Newly grown weights start at ``0``
   (``u − p`` there).

Cost: only the topology update sits under a ``lax.cond``, whose result is
the *flips* ``m' ≠ m`` (all False off update steps) and the method's extra
state. Everything else (``m' = m ⊕ flips``, the zeroing, the inner step, the
masked update, and for RigL/SET the choice between stepping and not) is
elementwise outside it, so XLA fuses it with the inner optimizer into the one
pass a static mask costs. A branch that returned the masks or the inner state
unchanged would make XLA copy those buffers on every step, and an inner step
inside a branch could not fuse with the update around it.

Inner-state leaves whose shape differs from their param (e.g. Adafactor's
factored moments) cannot be zeroed elementwise and are left unchanged.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2sam_jax import _checks, _masks
from s2sam_jax.sparse import distributions

MaskTree = _masks.MaskTree
# A mask tree, or a function ``params -> mask tree`` called by ``init``.
MasksOrFn = MaskTree | Callable[[Any], MaskTree]


class SparseState(NamedTuple):
  """State of :func:`static_masks` and :func:`gmp`.

  Attributes:
    count: number of updates taken (int32 scalar).
    masks: mask tree (bool array per masked leaf, ``None`` for dense leaves).
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  masks: MaskTree
  inner_state: optax.OptState


class DynamicSparseState(NamedTuple):
  """State of :func:`set_` and :func:`rigl`: :class:`SparseState` plus ``key``
  (raw ``uint32`` PRNG key for random growth)."""

  count: jax.Array
  masks: MaskTree
  inner_state: optax.OptState
  key: jax.Array


# ---------------------------------------------------------------- mask setup


class MaskSource(NamedTuple):
  """A sparse method's initial masks and key, checked (:func:`mask_source`).

  Attributes:
    masks: a mask tree, a function ``params -> masks``, or a
      :class:`RandomInit`.
    key: the method's raw ``uint32`` PRNG key.
  """

  masks: MasksOrFn
  key: jax.Array

  @property
  def sparsity(self):
    """The sparsity of random initial masks; ``None`` for other masks."""
    return self.masks.sparsity if isinstance(self.masks, distributions.RandomInit) else None

  def init(self, params, mask_key: jax.Array) -> MaskTree:
    """The initial mask tree (``bool`` leaves) for ``params``.

    Random masks with no key of their own are drawn with ``mask_key``; other
    masks are checked against ``params``
    (:func:`s2sam_jax._masks.validate_masks`) and stored as ``bool``.
    """
    masks = self.masks
    if isinstance(masks, distributions.RandomInit):
      return masks.draw(params, mask_key if masks.key is None else masks.key)
    tree = masks(params) if callable(masks) else masks
    _masks.validate_masks(tree, params, "masks")
    return _masks.as_bool(tree)

  def init_with_state_key(self, params):
    """``(masks, state_key)`` of a dynamic method: its key split in two, the
    first half for random masks with no key of their own."""
    mask_key, state_key = jax.random.split(self.key)
    return self.init(params, mask_key), state_key


def mask_source(masks, sparsity, key, *, distribution: str) -> MaskSource:
  """The one way in for a sparse method's initial masks, checked here.

  Exactly one of ``masks`` (a mask tree, a function ``params -> masks`` such
  as :func:`random_init`'s) and ``sparsity`` (shorthand for
  ``masks=random_init(sparsity, distribution)``, ``distribution`` the
  method's customary one). A mask tree's values are checked now (``bool``, or
  numeric of exactly 0 and 1), its shapes at ``init``. ``ValueError`` naming
  the argument otherwise.
  """
  if (masks is None) == (sparsity is None):
    raise ValueError(
      "Give exactly one of `masks` (a mask tree, or a function params -> masks "
      "such as sparse.random_init(...)) and `sparsity` (random masks, shorthand "
      f"for masks=sparse.random_init(sparsity, {distribution!r})); got "
      f"masks={'given' if masks is not None else None}, sparsity={sparsity!r}."
    )
  if sparsity is not None:
    masks = distributions.random_init(sparsity, distribution)
  elif isinstance(masks, (numbers.Number, str)):
    raise ValueError(
      f"`masks` must be a mask tree or a function params -> masks; got {masks!r}. "
      f"For random masks pass sparsity={masks!r} or "
      f"masks=sparse.random_init({masks!r}, distribution)."
    )
  elif not callable(masks):
    _masks.check_mask_values(masks, "masks")
  return MaskSource(masks, _checks.raw_key(key))


# ----------------------------------------------------------- state handling


def _zero_where(x, reset):
  if reset is None or not hasattr(x, "shape") or x.shape != reset.shape:
    return x
  return jnp.where(reset, jnp.zeros_like(x), x)


def zero_inner_state(inner: optax.GradientTransformation, inner_state, reset: MaskTree):
  """Zeroes every per-param leaf of ``inner_state`` where ``reset`` is True.

  ``reset`` is a mask tree (``None`` leaves untouched). The per-param parts of
  the state are found by ``optax.tree.map_params`` (it calls ``inner.init``
  on a placeholder), so this works for any optimizer, including chains,
  ``optax.masked`` and ``optax.multi_transform``.
  """
  return optax.tree.map_params(
    inner, _zero_where, inner_state, reset, is_leaf=lambda x: isinstance(x, optax.MaskedNode)
  )


def _final_update(u, p, new_m, flipped):
  u = jnp.asarray(u)
  minus_p = -jnp.asarray(p).astype(u.dtype)
  if flipped is None:  # masks unchanged
    return jnp.where(new_m, u, minus_p)
  return jnp.where(new_m, jnp.where(flipped, u + minus_p, u), minus_p)


def masked_updates(updates, params, new_masks: MaskTree, flips: MaskTree | None = None):
  """``m' ⊙ (p + u) − p`` with grown weights (``m' ∧ flips``) started at 0.

  ``flips`` is ``m' ≠ m`` (None: no mask changed). Taking the flips rather
  than the old masks lets the new masks overwrite the old ones in place.
  """
  if flips is None:
    return _masks.map_masked(
      lambda m, u, p: _final_update(u, p, m, None), new_masks, updates, params
    )
  return _masks.map_masked(
    lambda m, u, p, f: _final_update(u, p, m, f), new_masks, updates, params, flips
  )


class Topology(NamedTuple):
  """A dynamic method, as used by :func:`sparse_wrapper`.

  Attributes:
    is_update_step: ``count -> bool`` (traced); when to change the topology.
    update: ``(masks, params, grads, count, extras) -> (masks, extras)``;
      ``extras`` is the dict of the state's method-specific fields.
    skip_inner_step: on update steps, return a zero update and leave the
      inner state unchanged (besides zeroing), as RigL's code does.
  """

  is_update_step: Callable[[jax.Array], jax.Array]
  update: Callable[..., Any]
  skip_inner_step: bool


def sparse_wrapper(
  inner: optax.GradientTransformation,
  *,
  state_cls,
  init: Callable[[Any], tuple],
  topology: Topology | None,
  mask_gradients: bool,
) -> optax.GradientTransformationExtraArgs:
  """Builds a sparse wrapper (see the module docstring for one step's math).

  Args:
    inner: any optax transformation.
    state_cls: NamedTuple whose first fields are ``count, masks, inner_state``;
      further fields are method-specific ("extras").
    init: ``params -> (masks, extras dict)``.
    topology: the dynamic part, or ``None`` for fixed masks.
    mask_gradients: pass ``m ⊙ g`` (True) or ``g`` to ``inner``.
  """
  inner = optax.with_extra_args_support(inner)
  extra_fields = state_cls._fields[3:]

  def init_fn(params):
    masks, extras = init(params)
    inner_state = inner.init(_masks.mask_tree(params, masks))
    return state_cls(count=jnp.zeros([], jnp.int32), masks=masks, inner_state=inner_state, **extras)

  def update_fn(grads, state, params=None, **extra_args):
    if params is None:
      raise ValueError("Sparse wrappers need `params` in update(grads, state, params).")
    old_masks = state.masks

    def inner_step(masks, inner_state):
      g = _masks.mask_tree(grads, masks) if mask_gradients else grads
      return inner.update(g, inner_state, params, **extra_args)

    if topology is None:
      u, inner_state = inner_step(old_masks, state.inner_state)
      updates = masked_updates(u, params, old_masks)
      return updates, state._replace(
        count=optax.safe_increment(state.count), inner_state=inner_state
      )

    extras = {f: getattr(state, f) for f in extra_fields}
    is_update = topology.is_update_step(state.count)
    flips, extras = topology_flips(topology, is_update, old_masks, params, grads, state, extras)
    masks = _masks.map_masked(jnp.not_equal, flips, old_masks)  # m' = m xor flips
    inner_state = zero_inner_state(inner, state.inner_state, flips)
    u, stepped_state = inner_step(masks, inner_state)
    if topology.skip_inner_step:  # u = 0, state as zeroed: selects, fused with the step
      u = jax.tree.map(lambda x: jnp.where(is_update, jnp.zeros_like(x), x), u)
      stepped_state = select_tree(is_update, inner_state, stepped_state)
    updates = masked_updates(u, params, masks, flips)
    return updates, state._replace(
      count=optax.safe_increment(state.count), masks=masks, inner_state=stepped_state, **extras
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def topology_flips(topology: Topology, is_update, old_masks, params, grads, state, extras):
  """``(m' ≠ m, extras')`` under a ``lax.cond``: the topology update's flips
  and extras on update steps, all-False flips and ``extras`` otherwise."""

  def update():
    masks, new_extras = topology.update(old_masks, params, grads, state.count, extras)
    return _masks.map_masked(jnp.not_equal, masks, old_masks), new_extras

  def keep():
    return _masks.per_layer(jnp.zeros_like, old_masks), extras

  return jax.lax.cond(is_update, update, keep)


def select_tree(pred, on_true, on_false):
  """``on_true`` if ``pred`` (a traced bool) else ``on_false``, leaf-wise with
  ``jnp.where`` (elementwise, so it fuses with the computation of both)."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


# ----------------------------------------------------------------- helpers


def apply_masks(params, state):
  """``m ⊙ params`` with the masks found anywhere in a (nested) ``state``.

  Returns ``params`` unchanged when the state holds no sparse wrapper.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> params = {'w': jnp.ones((2, 2))}
    >>> tx = sparse.static_masks(optax.sgd(0.1), {'w': jnp.eye(2, dtype=bool)})
    >>> sparse.apply_masks(params, tx.init(params))['w']
    Array([[1., 0.],
           [0., 1.]], dtype=float32)
  """
  return _masks.mask_tree(params, _masks.find_masks(state))


def get_masks(state) -> MaskTree | None:
  """The mask tree held anywhere in a (nested) optimizer ``state``, or None."""
  return _masks.find_masks(state)


# ------------------------------------------------ per-layer topology steps


def drop_scores(weights, mask):
  """``|w|`` on active entries, -1 on inactive ones (never kept before active)."""
  w = jnp.abs(jnp.asarray(weights, jnp.float32))
  return jnp.where(mask, jnp.nan_to_num(w, nan=0.0, posinf=jnp.finfo(jnp.float32).max), -1.0)


def grow_scores(scores, kept):
  """``scores`` (>= 0) on entries not kept, -1 on kept ones."""
  s = jnp.nan_to_num(jnp.asarray(scores, jnp.float32), nan=0.0, posinf=jnp.finfo(jnp.float32).max)
  return jnp.where(kept, -1.0, s)


def keep_largest(weights, mask, k):
  """The ``k`` active entries of largest ``|w|`` (a mask; NaN ranks as 0)."""
  return _masks.keep_top_k(drop_scores(weights, mask), k)


def grow(kept, scores, k):
  """The ``k`` entries outside ``kept`` of largest ``scores`` (>= 0)."""
  return _masks.keep_top_k(grow_scores(scores, kept), k)


def leaf_size(mask) -> int:
  return int(np.prod(jnp.shape(mask)))
