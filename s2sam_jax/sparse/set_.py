"""SET: drop by magnitude, grow uniformly at random.

Mocanu, Mocanu, Stone, Nguyen, Gibescu & Liotta, "Scalable training of
artificial neural networks with adaptive sparse connectivity inspired by
network science", Nature Communications 9, 2383 (2018), arXiv:1707.04780.
The schedule and the drop are RigL's, as in RigL's code
(google-research/rigl ``rigl/sparse_optimizers.py``, ``SparseSETOptimizer``)
and jaxpruner's (google-research/jaxpruner
``jaxpruner/algorithms/sparse_trainers.py``, ``SET``): every ``update_every`` steps ``t`` in
``[begin_step, end_step)``, for each masked layer with ``n`` active weights,
``k = floor(f_t n)`` active weights of smallest ``|w|`` are dropped and ``k``
entries are grown uniformly at random among those not kept (just-dropped
entries are eligible). Counts per layer are exact; grown weights start at 0
with zeroed inner state; dropped weights' inner state is zeroed too.

Choices: the magnitude drop (RigL lineage) rather than the paper's
"fraction nearest zero" of positive and negative weights separately; the
cosine drop fraction ``f_t`` of :func:`rigl` by default
(``drop_schedule='constant'`` for the original constant ζ); the gradient step
is skipped on update iterations as jaxpruner does (RigL's TF SET takes it:
``skip_update_step=False``).
"""

from __future__ import annotations

import jax
import optax

from s2sam_jax.sparse import _wrapper
from s2sam_jax.sparse.rigl import prune_regrow_wrapper


def _uniform_scores(grad, key, shape):
  del grad
  return jax.random.uniform(key, shape)


def set_(
  inner: optax.GradientTransformation,
  masks: _wrapper.MasksOrFn | None = None,
  *,
  sparsity: float | None = None,
  end_step: int | None,
  update_every: int = 100,
  drop_fraction: float = 0.3,
  drop_schedule: str = "cosine",
  begin_step: int = 0,
  key: int | jax.Array = 0,
  mask_gradients: bool = True,
  skip_update_step: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """SET around any optax transformation; arguments as :func:`rigl`.

  ``key``'s second half (``jax.random.split(key)[1]``) seeds the random
  growth (kept in :class:`DynamicSparseState` ``.key``).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> params = {'w': jnp.ones((8, 8))}
    >>> tx = sparse.set_(optax.adam(1e-3), sparse.random_init(0.5, 'uniform'),
    ...                  end_step=100, update_every=10)
    >>> state = tx.init(params)
    >>> u, state = tx.update({'w': jnp.ones((8, 8))}, state,
    ...                      sparse.apply_masks(params, state))
    >>> int(state.masks['w'].sum())
    32
  """
  return prune_regrow_wrapper(_uniform_scores, **locals())  # the arguments above
