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

from collections.abc import Mapping

import optax

from s2sam_jax import _checks
from s2sam_jax.sparse import _wrapper, distributions


def static_masks(
  inner: optax.GradientTransformation, masks: _wrapper.MasksOrFn, *, mask_gradients: bool = True
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` with fixed ``masks``.

  Args:
    inner: any optax transformation; extra args are forwarded to it.
    masks: mask tree (bool array of the param's shape per masked leaf, None
      for dense leaves), or a function ``params -> mask tree`` called by
      ``init`` (e.g. a magnitude pruner). Checked against params at ``init``.
      Numeric leaves must be exactly 0 or 1 (stored as bool); anything else
      (scores, NaN) is a ``ValueError`` naming the leaf, and so is a numeric
      leaf that is traced (``init`` under ``jit``): give bool masks there.
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
  """
  if masks is None:
    raise ValueError("`masks` must be a mask tree or a function params -> masks; got None.")
  _wrapper.check_user_masks(masks)

  def init(params):
    return _wrapper.initial_masks(
      params,
      masks,
      sparsity=None,
      distribution=None,
      key=None,
      power=None,
      overrides=None,
      prunable=None,
    ), {}

  return _wrapper.sparse_wrapper(
    inner, state_cls=_wrapper.SparseState, init=init, topology=None, mask_gradients=mask_gradients
  )


def static_random(
  inner: optax.GradientTransformation,
  sparsity: float,
  *,
  distribution: str = "erk",
  key=0,
  power: float = 1.0,
  overrides: Mapping[str, float] | None = None,
  prunable: distributions.Prunable = distributions.default_prunable,
  mask_gradients: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Static random masks: per-layer densities from ``distribution``.

  Each prunable layer of ``n`` weights at density ``d_l`` keeps exactly
  ``round(d_l n)`` uniformly random weights (jaxpruner's convention; RigL's
  ``n - floor(s n)`` can differ by one).

  Args:
    inner: any optax transformation.
    sparsity: global target in ``[0, 1)``.
    distribution: ``'uniform'``, ``'er'`` or ``'erk'``.
    key: int seed or JAX PRNG key for the masks.
    power, overrides, prunable: see :func:`layer_densities`.
    mask_gradients: mask the gradient given to ``inner``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> tx = sparse.static_random(optax.adam(1e-3), 0.75, distribution='uniform')
    >>> int(tx.init({'w': jnp.ones((4, 4))}).masks['w'].sum())
    4
  """
  sparsity = _checks.check_sparsity(sparsity)
  distributions.check_distribution(distribution)
  _wrapper.check_density_args(power, overrides)
  key = _checks.raw_key(key)

  def masks_fn(params):
    return _wrapper.initial_masks(
      params,
      None,
      sparsity=sparsity,
      distribution=distribution,
      key=key,
      power=power,
      overrides=overrides,
      prunable=prunable,
    )

  return static_masks(inner, masks_fn, mask_gradients=mask_gradients)
