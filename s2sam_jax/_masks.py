"""Mask trees: the one representation of sparsity shared by every module.

A *mask tree* has the structure of the params tree. Each leaf is either

* a boolean array of the param leaf's shape (``True`` = active weight), or
* ``None`` for a dense leaf (biases, normalisation scales, layers kept dense).

Masks are stored as ``bool`` (one byte per weight) and applied with
``jnp.where`` so that masked entries are exactly ``0`` whatever the dtype.
Masks given by a user may also be numeric arrays of exactly 0 and 1
(:func:`validate_masks`); anything else (scores, NaN) is refused rather than
cast to ``bool``, which would make it (almost) dense.

Example:
  >>> import jax.numpy as jnp
  >>> from s2sam_jax import _masks
  >>> params = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
  >>> masks = {'w': jnp.array([[True, False], [False, True]]), 'b': None}
  >>> _masks.mask_tree(params, masks)['w']
  Array([[1., 0.],
         [0., 1.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2sam_jax._checks import is_traced

MaskTree = Any


def is_none(x) -> bool:
  """``is_leaf`` for mask trees: a ``None`` (dense) entry is a leaf."""
  return x is None


def map_masked(fn, masks: MaskTree, tree, *rest, dense_fn=None, key=None):
  """Maps ``fn(mask, leaf, *rest_leaves)`` over masked leaves.

  Dense leaves (mask ``None``) get ``dense_fn(leaf, *rest_leaves)``, by default
  the leaf itself unchanged. ``tree`` and ``rest`` are flattened up to the
  structure of ``masks``.

  With ``key`` (a PRNG key), ``fn`` also gets ``jax.random.fold_in(key, i)``
  as its last argument, ``i`` the leaf's position among the flattened mask
  leaves (dense leaves counted): independent randomness per layer.

  Example:
    >>> import jax.numpy as jnp
    >>> masks = {'w': jnp.array([True, False]), 'b': None}
    >>> map_masked(lambda m, x: jnp.where(m, x, 0.), masks, {'w': jnp.ones(2), 'b': 5.})
    {'b': 5.0, 'w': Array([1., 0.], dtype=float32)}
  """
  if dense_fn is None:
    dense_fn = lambda x, *_: x
  masks = conform(masks, tree)  # the output takes tree's containers (e.g. an nnx.State)
  mask_leaves, treedef = jax.tree.flatten(masks, is_leaf=is_none)
  others = [treedef.flatten_up_to(t) for t in (tree, *rest)]
  out = []
  for i, (m, *xs) in enumerate(zip(mask_leaves, *others)):
    if m is None:
      out.append(dense_fn(*xs))
    elif key is None:
      out.append(fn(m, *xs))
    else:
      out.append(fn(m, *xs, jax.random.fold_in(key, i)))
  return jax.tree.unflatten(treedef, out)


def per_layer(fn, masks: MaskTree, *trees, key=None):
  """``fn(mask, *leaves[, key])`` per masked leaf (as :func:`map_masked`),
  ``None`` where ``masks`` is dense: e.g. a topology update's new masks.

  Example:
    >>> import jax.numpy as jnp
    >>> masks = {'w': jnp.array([True, False, True]), 'b': None}
    >>> per_layer(lambda m: int(m.sum()), masks)
    {'b': None, 'w': 2}
  """
  per_leaf = lambda m, _, *xs: fn(m, *xs)
  return map_masked(per_leaf, masks, masks, *trees, dense_fn=lambda *_: None, key=key)


def fill_layers(masks: MaskTree, values):
  """A tree of ``masks``' structure with ``values[j]`` at the ``j``-th masked
  leaf (flatten order) and ``None`` at dense leaves."""
  values = iter(values)
  return per_layer(lambda m: next(values), masks)


def _is_value_key(key) -> bool:
  # Flax NNX variables (nnx.Param, nnx.Optimizer's OptVariable, ...) hold
  # their array under the attribute key ``.value``.
  return isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value"


def _plain(path) -> tuple[str, ...]:
  return tuple(_key_name(k) for k in path if not _is_value_key(k))


def conform(tree, reference):
  """``tree`` rebuilt in the containers of ``reference``.

  A tree derived from an optimizer state (masks, a perturbation) and the
  params it belongs to may hold their leaves at the same key paths in
  different containers: a Flax NNX ``nnx.Optimizer`` wraps each leaf of its
  state in an ``OptVariable`` where ``nnx.state(model, nnx.Param)`` has a
  ``Param``, and a plain dict of masks may meet an ``nnx.State``. When the
  two trees hold the same leaves (``None`` counts as one in ``tree``) at the
  same paths, ignoring the variables' ``.value``, the result has
  ``reference``'s structure; otherwise ``tree`` is returned unchanged (its
  user's own check then reports the mismatch).

  Example:
    >>> import jax.numpy as jnp
    >>> conform((jnp.array([True, False]), None), [jnp.ones(2), jnp.ones(3)])
    [Array([ True, False], dtype=bool), None]
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
  ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(reference, is_leaf=is_none)
  if treedef == ref_def or len(leaves) != len(ref_leaves):
    return tree
  if any(_plain(a) != _plain(b) for (a, _), (b, _) in zip(leaves, ref_leaves)):
    return tree
  return jax.tree_util.tree_unflatten(ref_def, [x for _, x in leaves])


def mask_tree(tree, masks: MaskTree | None):
  """Returns ``m ⊙ x`` leaf-wise; dense leaves and ``masks=None`` pass through."""
  if masks is None:
    return tree
  masks = conform(masks, tree)
  return map_masked(lambda m, x: jnp.where(m, x, jnp.zeros_like(x)), masks, tree)


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path) -> str:
  """``'/'``-joined keys of a JAX key path, e.g. ``'layer1/conv1/kernel'``.

  The ``.value`` of a Flax NNX variable is not a key of its own
  (``nnx.state(model)``'s ``conv1/kernel``, not ``conv1/kernel/value``).

  Example:
    >>> import jax
    >>> tree = {'layer1': {'conv1': {'kernel': 0}}, 'head': [0, 1]}
    >>> [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    ['head/0', 'head/1', 'layer1/conv1/kernel']
  """
  return "/".join(_plain(path))


def leaf_name(path) -> str:
  """:func:`path_str` quoted for messages; ``<root>`` for a bare leaf."""
  name = path_str(path)
  return repr(name) if name else "<root>"


def check_mask_values(masks: MaskTree, name: str = "masks") -> None:
  """Raises ``ValueError`` naming ``name`` and the leaf unless every mask leaf
  is ``None``, a ``bool`` array, or a numeric array of exactly 0 and 1.

  Anything else (scores in ``[0, 1)``, NaN, other values) is not a mask: a
  plain cast to ``bool`` would turn it into an (almost) dense mask. Numeric
  values must be concrete to be checked: a traced (``jit``) numeric leaf is
  refused, with a request for ``bool`` masks (``bool`` is always accepted).

  Example:
    >>> import jax.numpy as jnp
    >>> check_mask_values({'w': jnp.array([0., 1.]), 'b': None})
    >>> check_mask_values({'w': jnp.array([0.2, 0.9])})
    Traceback (most recent call last):
    ...
    ValueError: `masks` leaf 'w' is not a mask: ...
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)
  for path, m in flat:
    if m is None:
      continue
    where = f"`{name}` leaf {leaf_name(path)}"
    try:
      dtype = jnp.result_type(m) if hasattr(m, "dtype") else np.asarray(m).dtype
    except Exception:  # pylint: disable=broad-except
      dtype = None
    kinds = (jnp.bool_, jnp.integer, jnp.floating)
    if dtype is None or not any(jnp.issubdtype(dtype, k) for k in kinds):
      raise ValueError(
        f"{where} is not a mask: expected a bool array (True = active) or "
        f"a numeric array of exactly 0 and 1; got {type(m).__name__} of "
        f"dtype {dtype}."
      )
    if jnp.issubdtype(dtype, jnp.bool_):
      continue
    if is_traced(m):
      raise ValueError(
        f"{where} is a traced {dtype} array whose values cannot be checked "
        f"to be exactly 0 or 1 (e.g. under jit): give bool masks."
      )
    values = np.asarray(m, np.float64)
    bad = ~((values == 0) | (values == 1))
    if np.any(bad):
      raise ValueError(
        f"{where} is not a mask: its values must be exactly 0 or 1 (or "
        f"bool); {int(np.sum(bad))} of {values.size} entries are not, e.g. "
        f"{float(values[bad].ravel()[0])!r} (scores or densities are not "
        f"masks: select with a threshold or a top-k first)."
      )


def as_bool(masks: MaskTree) -> MaskTree:
  """Mask tree with ``bool`` leaves (after :func:`check_mask_values`)."""
  return jax.tree.map(lambda m: jnp.asarray(m, bool), masks)


def validate_masks(masks: MaskTree, params, name: str = "masks") -> None:
  """Raises ``ValueError`` naming ``name`` unless ``masks`` matches ``params``.

  Each leaf must be ``None`` or an array of the param leaf's shape whose
  values are a mask (:func:`check_mask_values`: ``bool``, or numeric of
  exactly 0 and 1). Leaves are named by their :func:`path_str`.
  """
  masks = conform(masks, params)
  mask_leaves, mask_def = jax.tree.flatten(masks, is_leaf=is_none)
  try:
    param_subtrees = mask_def.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"`{name}` must have the structure of the params tree (a bool array "
      f"or None per leaf); got a mismatch: {e}"
    ) from None
  for path_leaf, m, p in zip(
    jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)[0], mask_leaves, param_subtrees
  ):
    if m is None:
      continue
    if not hasattr(p, "shape") or tuple(jnp.shape(m)) != tuple(jnp.shape(p)):
      raise ValueError(
        f"`{name}` leaf {leaf_name(path_leaf[0])} has shape {jnp.shape(m)} "
        f"but the param there has shape "
        f"{getattr(p, 'shape', type(p).__name__)}."
      )
  check_mask_values(masks, name)


def find_masks(state) -> MaskTree | None:
  """Returns the mask tree held by a sparse wrapper anywhere in ``state``.

  Sparse wrappers keep their masks in a ``NamedTuple`` field named ``masks``;
  dict keys named ``masks`` (e.g. a param called so) are ignored. Returns
  ``None`` when no sparse wrapper is present.
  """
  found = optax.tree.get_all_with_path(
    state, "masks", filtering=lambda path, _: isinstance(path[-1], optax.tree_utils.NamedTupleKey)
  )
  if not found:
    return None
  if len(found) > 1:
    raise ValueError(
      "Several sparse wrappers hold masks in this optimizer state; nest at "
      "most one sparse wrapper per chain."
    )
  return found[0][1]


def _order_preserving_uint32(x):
  """float32 -> uint32 with the same order (NaN lowest, -0.0 == 0.0).

  Integer operations only: XLA:CPU flushes subnormal floats to zero in float
  compares, which would tie a subnormal score with 0.
  """
  i = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
  magnitude = i & jnp.uint32(0x7FFFFFFF)
  i = jnp.where(magnitude > 0x7F800000, jnp.uint32(0xFF800000), i)  # NaN -> -inf
  i = jnp.where(magnitude == 0, jnp.uint32(0), i)  # -0.0 -> +0.0
  negative = (i >> 31) == 1
  return jnp.where(negative, ~i, i | jnp.uint32(0x80000000))


def _count(x, dtype=jnp.int32):
  return jnp.sum(x, dtype=dtype)


def _kth_largest_code(codes, k):
  """The ``k``-th largest of ``codes`` (uint32), ``k >= 1``, by bisection on
  the value: 32 fused count passes, no sort and no temporary array."""

  def bisect(_, bounds):
    lo, hi = bounds  # the k-th largest code lies in [lo, hi]
    span = hi - lo
    mid = lo + span // 2 + (span & 1)  # ceil((lo + hi) / 2) without overflow
    enough = _count(codes >= mid) >= k
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)

  return jax.lax.fori_loop(0, 32, bisect, (jnp.uint32(0), jnp.uint32(0xFFFFFFFF)))[0]


def _first_ties_end(ties, need):
  """The smallest ``c`` with ``need`` True entries of ``ties`` before flat
  index ``c`` (``1 <= need <= sum(ties)``), by bisection on the index."""
  index = jnp.arange(ties.size, dtype=jnp.int32)

  def bisect(_, bounds):
    lo, hi = bounds  # count(ties[:lo]) < need <= count(ties[:hi])
    mid = lo + (hi - lo) // 2
    enough = _count(ties & (index < mid)) >= need
    return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

  steps = max(ties.size, 1).bit_length()
  return jax.lax.fori_loop(0, steps, bisect, (jnp.int32(0), jnp.int32(ties.size)))[1]


def keep_top_k(scores: jax.Array, k) -> jax.Array:
  """Boolean mask of ``scores``' shape with exactly ``k`` entries ``True``.

  Keeps the ``k`` largest scores; among equal scores the lower flat index
  wins, so the count is exact whatever the ties. ``k`` may be a traced
  integer (it is clipped to ``[0, scores.size]``). NaN scores rank last.

  No sort: with ``c`` the order-preserving uint32 codes of the scores, the
  k-th largest code ``c_k`` is found by bisection on the value (32 counting
  passes); the result is ``c > c_k`` plus the first ``k − #{c > c_k}``
  entries with ``c = c_k``, whose end is found by a second bisection on the
  flat index, run only when more entries tie at ``c_k`` than are needed.
  Linear work and no temporary beyond the codes, where sorting a 1M-entry
  layer takes about 0.5 s on a CPU.

  Example:
    >>> import jax.numpy as jnp
    >>> keep_top_k(jnp.array([1., 3., 3., 0.]), 2)
    Array([False,  True,  True, False], dtype=bool)
    >>> keep_top_k(jnp.array([3., 1., 3., 3.]), 2)
    Array([ True, False,  True, False], dtype=bool)
  """
  codes = jnp.ravel(_order_preserving_uint32(scores))
  k = jnp.clip(jnp.asarray(k, jnp.int32), 0, codes.size)
  kth = _kth_largest_code(codes, k)
  greater = codes > kth
  ties = codes == kth
  need = k - _count(greater)
  end = jax.lax.cond(
    _count(ties) > need, lambda: _first_ties_end(ties, need), lambda: jnp.int32(codes.size)
  )
  chosen = greater | (ties & (jnp.arange(codes.size, dtype=jnp.int32) < end))
  return chosen.reshape(jnp.shape(scores))


def bucket(n: int) -> int:
  """Next power of two >= n: one compilation serves many layer sizes."""
  return 1 << max(n - 1, 0).bit_length()


_jit_keep_top_k = jax.jit(keep_top_k)


def keep_top_k_host(scores, k: int):
  """:func:`keep_top_k` for one-shot host-side use (mask construction).

  Pads the flattened scores with ``-inf`` to a power-of-two length so that one
  compilation serves many layer sizes; ties still go to the lower flat index
  (padding comes last). Returns a bool array of ``scores``' shape.
  """
  flat = np.asarray(scores, dtype=np.float32).ravel()
  n = flat.size
  padded = np.full(bucket(n), -np.inf, np.float32)
  padded[:n] = flat
  keep = np.asarray(_jit_keep_top_k(padded, int(k)))[:n]
  return jnp.asarray(keep.reshape(np.shape(scores)))


def keep_top_k_global(scores, selected, k: int) -> MaskTree:
  """Keeps the ``k`` highest ``scores`` among the ``selected`` leaves, ranked
  together (leaves in ``jax.tree`` flatten order, so ties keep the lower
  position in that order); ``None`` for the leaves not selected.

  Args:
    scores: a tree of score arrays.
    selected: a tree of bools with the structure of ``scores``.
    k: number of entries kept over all selected leaves.
  """
  score_leaves, treedef = jax.tree.flatten(scores)
  flags = treedef.flatten_up_to(selected)
  chosen = [np.asarray(s, np.float32).ravel() for s, f in zip(score_leaves, flags) if f]
  if not chosen:
    raise ValueError("No prunable leaves: `prunable` selected none of the params.")
  kept = np.asarray(keep_top_k_host(np.concatenate(chosen), k))
  out, start = [], 0
  for s, f in zip(score_leaves, flags):
    if not f:
      out.append(None)
      continue
    size = int(np.size(s))
    out.append(jnp.asarray(kept[start : start + size].reshape(np.shape(s))))
    start += size
  return jax.tree.unflatten(treedef, out)


def count_active(masks: MaskTree):
  """Number of active entries per masked leaf (``None`` for dense leaves)."""
  return per_layer(lambda m: jnp.sum(m, dtype=jnp.int32), masks)
