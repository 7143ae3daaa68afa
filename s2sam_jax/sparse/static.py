"""Static sparsity: a fixed mask tree kept in the optimizer state.

For masks computed once before training (random, magnitude at init, SNIP,
GraSP, a lottery ticket). Each step, with ``m`` fixed::

    u = inner(m ⊙ g)            (dense g with mask_gradients=False)
    return m ⊙ (p + u) − p      (masked weights exactly 0 after apply_updates)

The masks are made by ``init`` and never change, so there is no topology
update and no optimizer state to reset: masking the gradient is all the inner
optimizer needs (jaxpruner's ``StaticRandomSparse``,
google-research/jaxpruner ``jaxpruner/algorithms/sparse_trainers.py``).
"""

from __future__ import annotations

import jax
import optax

from s2sam_jax.sparse import _wrapper


def static_masks(
  inner: optax.GradientTransformation,
  masks: _wrapper.MasksOrFn | None = None,
  *,
  sparsity: float | None = None,
  key: int | jax.Array = 0,
  mask_gradients: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` with fixed masks.

  Args:
    inner: any optax transformation; extra args are forwarded to it.
    masks: the initial masks: a mask tree (bool array of the param's shape
      per masked leaf, None for dense leaves), or a function ``params -> mask
      tree`` called by ``init``: :func:`random_init` (random masks), a
      magnitude pruner, ... Checked against params at ``init``. Numeric leaves
      must be exactly 0 or 1 (stored as bool); anything else (scores, NaN) is
      a ``ValueError`` naming the leaf, and so is a numeric leaf that is
      traced (``init`` under ``jit``): give bool masks there.
    sparsity: instead of ``masks``, shorthand for
      ``masks=random_init(sparsity)`` (ERK random masks).
    key: int seed or JAX PRNG key for random masks that have none of their
      own (``sparsity=``, ``random_init(..., key=None)``), used as it is.
    mask_gradients: mask the gradient given to ``inner`` (``m ⊙ g``), so that
      the inner state (momentum, Adam moments) of masked weights stays 0, as
      jaxpruner's sparse trainers do (``is_sparse_gradients``); ``False``
      passes the dense ``g`` (the S2-SAM authors' code on its SAM path).

  Returns:
    ``GradientTransformationExtraArgs`` with state :class:`SparseState`;
    ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> params = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
    >>> tx = sparse.static_masks(optax.sgd(0.1),
    ...                          {'w': jnp.eye(2, dtype=bool), 'b': None})
    >>> state = tx.init(params)
    >>> params = sparse.apply_masks(params, state)
    >>> u, state = tx.update({'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}, state, params)
    >>> optax.apply_updates(params, u)['w']
    Array([[0.9, 0. ],
           [0. , 0.9]], dtype=float32)
    >>> tx = sparse.static_masks(optax.adam(1e-3), sparse.random_init(0.75, 'uniform'))
    >>> int(tx.init({'w': jnp.ones((4, 4))}).masks['w'].sum())
    4
  """
  source = _wrapper.mask_source(masks, sparsity, key, distribution="erk")

  def init(params):
    return source.init(params, source.key), {}

  return _wrapper.sparse_wrapper(
    inner, state_cls=_wrapper.SparseState, init=init, topology=None, mask_gradients=mask_gradients
  )
