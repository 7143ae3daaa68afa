"""RigL: drop by magnitude, grow by dense-gradient magnitude.

Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets
Winners", ICML 2020, arXiv:1911.11134; code google-research/rigl
``rigl/sparse_optimizers.py`` (``SparseRigLOptimizer``) and jaxpruner's
(google-research/jaxpruner ``jaxpruner/algorithms/sparse_trainers.py``,
``RigL``).

Every ``update_every`` steps ``t`` with ``begin_step <= t < end_step``, for each
masked layer independently, with ``n`` active weights::

    f_t   = α/2 · (1 + cos(π · min(t − begin, T) / T)),  T = end − begin   (cosine)
    k     = floor(f_t · n)           (float32, 1e-3 tolerance)
    keep  = the n − k active weights of largest |w|
    grow  = the k entries outside ``keep`` of largest |g|   (just-dropped ones
            are eligible; g is the dense gradient of the current minibatch)

so each layer keeps exactly ``n`` active weights. Ties are broken towards the
lower flat index (no noise). Grown weights start at 0 and their inner
optimizer state (momentum, Adam moments, ...) is zeroed, as is the state of
dropped weights; a weight dropped and regrown in the same update keeps its
value and state.

On update steps the gradient step is skipped (``skip_update_step=True``, as in
RigL's TF code and jaxpruner): the returned update only zeroes the dropped
weights, and the inner optimizer is not called, so its state (including its
own step count, e.g. Adam's bias correction or a schedule inside ``inner``)
does not advance on those steps.

Choices where RigL's TF code and jaxpruner differ:

* ``t − begin`` in the cosine (TF uses the global step ``t`` with
  ``T = end − begin``, jaxpruner ``t`` with ``T = end``; all agree for
  ``begin_step = 0``, the default of both).
* ``end_step`` is exclusive: at ``t = end`` the cosine fraction is 0 and the
  two codes would skip a gradient step for a no-op update.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from s2sam_jax import _checks, _masks
from s2sam_jax.sparse import _wrapper

DROP_SCHEDULES = ("cosine", "constant")


def drop_fraction_schedule(
  drop_fraction: float, begin_step: int, end_step: int | None, schedule: str = "cosine"
) -> Callable:
  """``t -> f_t``: ``α`` (constant) or ``α/2 (1 + cos(π min(t−b, T)/T))``.

  ``α`` must be in ``(0, 1)`` and, for the cosine, ``end_step > begin_step
  >= 0`` (integers), else ``ValueError`` (a NaN ``α`` or ``T = 0`` would give
  a NaN fraction, hence a meaningless swap count).

  Example:
    >>> f = drop_fraction_schedule(0.3, 0, 100)
    >>> round(float(f(50)), 4)
    0.15
  """
  _checks.check_choice(schedule, "drop_schedule", DROP_SCHEDULES)
  alpha = _checks.check_open_fraction(drop_fraction, "drop_fraction")
  if schedule == "constant":
    return lambda t: jnp.full([], alpha, jnp.float32)
  _checks.check_step_range(
    begin_step, end_step, end_required=True, why=" with drop_schedule='cosine'"
  )
  span = float(end_step - begin_step)

  def cosine(t):
    progress = jnp.clip(jnp.asarray(t, jnp.float32) - begin_step, 0.0, span)
    return 0.5 * alpha * (1.0 + jnp.cos(math.pi * progress / span))

  return cosine


def periodic_update_steps(update_every: int, begin_step: int, end_step: int | None) -> Callable:
  """``t -> (begin <= t < end) & ((t − begin) % update_every == 0)``."""

  def is_update_step(t):
    started = t >= begin_step
    on_period = (t - begin_step) % update_every == 0
    ok = started & on_period
    return ok if end_step is None else ok & (t < end_step)

  return is_update_step


def check_schedule_args(update_every, drop_fraction, begin_step, end_step, drop_schedule):
  _checks.check_int(update_every, "update_every", 1)
  _checks.check_open_fraction(drop_fraction, "drop_fraction")
  _checks.check_choice(drop_schedule, "drop_schedule", DROP_SCHEDULES)
  _checks.check_step_range(
    begin_step, end_step, end_required=drop_schedule == "cosine", why=" with drop_schedule='cosine'"
  )


def swap_count(fraction, n_active):
  """``floor(f · n)``, in float32 with a 1e-3 tolerance so that rounding of
  ``f`` (e.g. ``cos(π/2) ≠ 0`` in float32) never loses a weight at an exact
  product."""
  product = fraction * jnp.asarray(n_active, jnp.float32)
  return jnp.floor(product + 1e-3).astype(jnp.int32)


def prune_and_regrow(masks, params, grads, fraction, key, grow_score_fn):
  """Per layer: keep the ``n − k`` largest ``|w|``, grow ``k`` by ``grow_score_fn``.

  ``grow_score_fn(grad_leaf, key, shape) -> scores >= 0``; ``k =
  floor(fraction · n)``. Returns the new mask tree.
  """

  def per_leaf(m, p, g, k):
    n_active = jnp.sum(m, dtype=jnp.int32)
    n_swap = swap_count(fraction, n_active)
    kept = _wrapper.keep_largest(p, m, n_active - n_swap)
    return kept | _wrapper.grow(kept, grow_score_fn(g, k, m.shape), n_swap)

  return _masks.per_layer(per_leaf, masks, params, grads, key=key)


def prune_regrow_wrapper(
  grow_score_fn,
  inner,
  masks,
  *,
  sparsity,
  end_step,
  update_every,
  drop_fraction,
  drop_schedule,
  begin_step,
  key,
  mask_gradients,
  skip_update_step,
):
  """Shared constructor of :func:`rigl` and :func:`set_` (their arguments,
  and ``grow_score_fn`` of :func:`prune_and_regrow`)."""
  source = _wrapper.mask_source(masks, sparsity, key, distribution="erk")
  check_schedule_args(update_every, drop_fraction, begin_step, end_step, drop_schedule)
  fraction_fn = drop_fraction_schedule(drop_fraction, begin_step, end_step, drop_schedule)

  def init(params):
    tree, state_key = source.init_with_state_key(params)
    return tree, {"key": state_key}

  def update(old_masks, params, grads, count, extras):
    next_key, layer_key = jax.random.split(extras["key"])
    new = prune_and_regrow(old_masks, params, grads, fraction_fn(count), layer_key, grow_score_fn)
    return new, {"key": next_key}

  topology = _wrapper.Topology(
    is_update_step=periodic_update_steps(update_every, begin_step, end_step),
    update=update,
    skip_inner_step=skip_update_step,
  )
  return _wrapper.sparse_wrapper(
    inner,
    state_cls=_wrapper.DynamicSparseState,
    init=init,
    topology=topology,
    mask_gradients=mask_gradients,
  )


def _gradient_magnitude(grad, key, shape):
  del key, shape
  return jnp.abs(grad)


def rigl(
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
  """RigL around any optax transformation (math in the module docstring).

  Args:
    inner: any optax transformation; extra args are forwarded to it.
    masks: the initial masks, as :func:`static_masks` takes them: a mask
      tree, or a function ``params -> masks`` (e.g. :func:`random_init`).
    sparsity: instead of ``masks``, shorthand for
      ``masks=random_init(sparsity)`` (ERK random masks, RigL's default).
    end_step: first step with no more topology updates (> ``begin_step``);
      ``None`` is allowed with ``drop_schedule='constant'`` (never stop).
    update_every: ``ΔT >= 1`` steps between topology updates.
    drop_fraction: ``α`` in ``(0, 1)``.
    drop_schedule: ``'cosine'`` or ``'constant'``.
    begin_step: first update step (RigL updates at ``t = begin_step``).
    key: int seed or JAX PRNG key: ``jax.random.split(key)`` gives the key
      of random initial masks that have none of their own (``sparsity=``,
      ``random_init(..., key=None)``) and the state's key.
    mask_gradients: mask the gradient given to ``inner`` (``m ⊙ g``), so that
      the inner state (momentum, Adam moments) of masked weights stays 0, as
      jaxpruner's sparse trainers do (``is_sparse_gradients``); ``False``
      passes the dense ``g`` (the S2-SAM authors' code on its SAM path).
      Growth always uses the dense gradient received.
    skip_update_step: no gradient step on update iterations.

  Returns:
    ``GradientTransformationExtraArgs`` with state
    :class:`DynamicSparseState`; ``update`` needs ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> params = {'w': jnp.ones((8, 8)), 'b': jnp.zeros(8)}
    >>> tx = sparse.rigl(optax.sgd(0.1, momentum=0.9), sparse.random_init(0.75),
    ...                  end_step=100, update_every=10)
    >>> state = tx.init(params)
    >>> params = sparse.apply_masks(params, state)
    >>> g = jax.tree.map(jnp.ones_like, params)
    >>> u, state = tx.update(g, state, params)
    >>> int(state.masks['w'].sum())
    16
  """
  return prune_regrow_wrapper(_gradient_magnitude, **locals())  # the arguments above
