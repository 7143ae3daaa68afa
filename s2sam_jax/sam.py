"""Two-step SAM (Foret et al., 2021): the baseline S2-SAM is compared with.

Each update takes a second gradient at the ascent point::

    ε_t     = ρ · g_t / (‖g_t‖ + eps),     g_t = ∇L(w_t)   (given by the loop)
    g̃_t     = ∇L(w_t + ε_t)                               (``grad_fn``)
    w_{t+1} = w_t + inner(g̃_t; w_t)

so a step costs two forward-backward passes. The perturbation (plain or
ASAM-adaptive, masked to active weights under sparsity) is the same code as
:func:`s2sam_jax.s2sam`'s. With ``adaptive=False`` this equals
``optax.contrib.sam(inner, optax.chain(normalize(), optax.sgd(rho)),
opaque_mode=True)`` except that the norm has ``eps`` added (no NaN at a zero
gradient).

Non-finite gradients: if ``g_t`` has any NaN or ±inf entry (after masking),
``ε_t = 0`` and the second gradient is taken at ``w_t`` itself
(:mod:`s2sam_jax._perturbation`): ``ε_t`` is never NaN or inf. What
``inner`` does with a non-finite ``g̃_t`` is its own business: wrap it (or
the whole ``sam``) in ``optax.apply_if_finite`` to skip such steps. Weights
masked by an inner sparse wrapper stay exactly 0 whatever the gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from s2sam_jax import _masks, _perturbation


class SAMState(NamedTuple):
  """State of :func:`sam`: the step count (for a ``rho`` schedule) and the
  wrapped optimizer's state."""

  count: jax.Array
  inner_state: optax.OptState


def sam(
  inner: optax.GradientTransformation,
  rho: _perturbation.ScalarOrSchedule = 0.05,
  *,
  adaptive: bool = False,
  adaptive_formula: str = "asam",
  eta: float = 0.01,
  eps: float = 1e-12,
  masks: _masks.MaskTree | None = None,
  perturb_pruned: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` with two-step sharpness-aware minimization.

  ``update(grads, state, params, *, grad_fn, **extra)``: ``grads`` is the
  gradient at ``params``; ``grad_fn(perturbed_params) -> grads`` evaluates the
  loss gradient on the same batch at the ascent point. Other extra args are
  forwarded to ``inner``.

  Args:
    inner: any optax transformation (possibly a sparse wrapper).
    rho: radius ``ρ``, finite and ``>= 0``, or a schedule of the step count.
    adaptive: use an adaptive radius (``adaptive_formula``).
    adaptive_formula: ``"asam"``: ASAM's ``T = |w| + η``; ``"authors"``: the
      two-step adaptive branch of the S2-SAM authors' ``sam.py`` (from
      davda54/sam), ``T = |w|``, i.e. ASAM with ``η = 0``. Needs ``adaptive``.
    eta: ASAM's ``η``, finite and ``>= 0``.
    eps: finite and ``> 0``, added to the gradient norm.
    masks: mask tree confining ``ε``: ``bool`` leaves (or numeric ones of
      exactly 0 and 1; anything else is a ``ValueError`` naming the leaf) or
      ``None`` for dense leaves. ``None`` uses an inner sparse wrapper's
      masks if there is one. They do not mask the weights.
    perturb_pruned: perturb masked weights too.

  ``rho``, ``eta`` and ``eps`` are checked as :func:`s2sam_jax.s2sam` checks
  them (finite, ``rho, eta >= 0``, ``eps > 0``, else ``ValueError`` naming
  the argument; schedules and traced values are not checked).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import s2sam_jax as ss
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 4)
    >>> tx = ss.sam(optax.sgd(0.1), rho=0.05)
    >>> w = jnp.zeros(3); state = tx.init(w)
    >>> updates, state = tx.update(jax.grad(loss)(w), state, w,
    ...                            grad_fn=jax.grad(loss))
    >>> optax.apply_updates(w, updates).shape
    (3,)
  """
  masks = _perturbation.check_wrapper_args(rho, eps, eta, adaptive, adaptive_formula, masks)
  if adaptive and adaptive_formula == "authors":
    eta = 0.0  # the authors' two-step branch: ASAM with η = 0
  inner = optax.with_extra_args_support(inner)
  radius = _perturbation.Radius(adaptive, "asam", eta, eps)

  def init_fn(params):
    if masks is not None:
      _masks.validate_masks(masks, params)
    return SAMState(count=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

  def update_fn(grads, state, params=None, *, grad_fn: Callable | None = None, **extra_args):
    if grad_fn is None:
      raise ValueError(
        "sam needs the extra argument `grad_fn` (perturbed params -> grads) in update()."
      )
    if params is None:
      raise ValueError("sam needs `params` in update(grads, state, params).")
    eps_t = radius.perturbation(
      grads,
      params,
      _perturbation.resolve_rho(rho, state.count),
      _perturbation.mask_source(masks, state.inner_state, perturb_pruned),
    )
    ascent_point = jax.tree.map(lambda p, e: p + e.astype(p.dtype), params, eps_t)
    ascent_grads = grad_fn(ascent_point)
    updates, inner_state = inner.update(ascent_grads, state.inner_state, params, **extra_args)
    return updates, SAMState(optax.safe_increment(state.count), inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
