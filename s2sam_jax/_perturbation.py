"""The sharpness-aware perturbation shared by S2-SAM and two-step SAM.

SAM (Foret et al., 2021) evaluates the gradient at ``w + ε`` with::

    ε = ρ · g / (‖g‖ + eps)

and ASAM (Kwon et al., 2021) makes the radius scale-invariant with
``T = |w| + η``::

    ε = ρ · T² ⊙ g / (‖T ⊙ g‖ + eps).

The S2-SAM authors' code (jjsrf/SSAM-NEURIPS2024 ``sam.py``, ``--sam-v2
--adaptive``) computes neither: with ``g`` the stored gradient and ``u`` the
point it was taken at (the previous *perturbed* weights), it computes::

    ε = ρ · g ⊙ g ⊙ g / (‖|u| ⊙ g‖ + eps)        (``formula="authors"``)

(its ASAM numerator squares the stored gradient where ASAM squares the
weights), so ``‖ε‖`` is not ``ρ``; it is offered to reproduce their runs.

Norms are global L2 norms over every leaf, computed in float32. Under
sparsity the gradient is first masked (``g ← m ⊙ g``), so ``ε`` and its norm
cover active weights only and the perturbed network is as sparse as the
trained one. A zero gradient gives ``ε = 0`` (``eps > 0`` keeps 0/0 away).

Non-finite values: if the (masked) gradient has any NaN or ±inf entry, or
the result would not be finite (a non-finite norm or weight, an overflow),
``ε = 0`` on every leaf: the next gradient is taken unperturbed, and one bad
gradient cannot turn every weight (masked ones included) into NaN through
the global norm. The zeroing is a ``jnp.where`` per leaf (``NaN · 0`` would
be NaN). NaN or inf at masked entries is dropped by the masking first and
does not matter. For finite inputs the result is unchanged, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from s2sam_jax import _checks, _masks

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


def perturbation(
  grads: optax.Updates,
  params: optax.Params,
  rho,
  *,
  adaptive: bool = False,
  eta=0.01,
  eps=1e-12,
  masks: _masks.MaskTree | None = None,
  formula: str = "asam",
  check: bool = True,
) -> optax.Updates:
  """Returns the ascent step ``ε`` (float32 leaves, the structure of ``grads``).

  ``ε = 0`` on every leaf when the masked gradient has a non-finite entry or
  the result would not be finite (module docstring): the stored perturbation
  is never NaN or inf.

  Args:
    grads: gradient ``g`` at the point the perturbation is taken from.
    params: weights ``w`` (used by the adaptive variants only; for
      ``formula="authors"``, the point ``u`` where ``g`` was taken).
    rho: radius ``ρ``, finite and ``>= 0`` (a scalar; may be traced).
    adaptive: use an adaptive (weight-scaled) radius.
    eta: ASAM's ``η``, finite and ``>= 0``.
    eps: added to the norm, finite and ``> 0``.
    masks: optional mask tree; masked entries of ``g`` are dropped first.
    formula: the adaptive formula, ``"asam"`` or ``"authors"`` (module doc).
    check: check ``rho``, ``eta``, ``eps`` (where concrete) and ``formula``
      (:func:`check_hyperparameters`, ``ValueError``). :func:`s2sam_jax.s2sam`
      and :func:`s2sam_jax.sam` check theirs at construction and pass
      ``False``, so that a ``rho`` schedule is treated alike in and out of
      ``jit`` (unchecked; a non-finite value gives ``ε = 0``).

  Example:
    >>> import jax.numpy as jnp
    >>> perturbation({'w': jnp.array([3., 4.])}, None, 0.5)['w']
    Array([0.3, 0.4], dtype=float32)
    >>> perturbation({'w': jnp.array([3., jnp.nan])}, None, 0.5)['w']
    Array([0., 0.], dtype=float32)
  """
  if check:
    check_hyperparameters(rho, eps, eta)
    check_adaptive_formula(adaptive, formula, name="formula")
  g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _masks.mask_tree(grads, masks))
  if adaptive and formula == "authors":
    scale = jax.tree.map(lambda w: jnp.abs(jnp.asarray(w, jnp.float32)), params)
    direction = jax.tree.map(jnp.multiply, scale, g)
    step = jax.tree.map(lambda x: x * x * x, g)
  elif adaptive:
    scale = jax.tree.map(lambda w: jnp.abs(jnp.asarray(w, jnp.float32)) + eta, params)
    direction = jax.tree.map(jnp.multiply, scale, g)
    step = jax.tree.map(jnp.multiply, scale, direction)
  else:
    direction = step = g
  norm = optax.tree.norm(direction)
  factor = rho / (norm + eps)
  # Plain SAM: a finite norm bounds every |g_i|, and |factor g_i| < ρ, so two
  # scalar checks suffice (no extra pass over the leaves on the hot path).
  # Adaptive: T² g or g³ may overflow although the norm is finite.
  return zero_unless_finite(optax.tree.scale(factor, step), norm, factor, check_leaves=adaptive)


def all_finite(tree) -> jax.Array:
  """Bool scalar: every entry of every leaf of ``tree`` is finite."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]).all()


def zero_unless_finite(tree, *scalars, check_leaves: bool = True):
  """``tree`` if ``scalars`` (and, with ``check_leaves``, its leaves) are all
  finite, else zeros of its leaves.

  A ``jnp.where`` per leaf, so that no NaN survives (``NaN · 0 = NaN``).
  """
  ok = all_finite(tree) if check_leaves else jnp.asarray(True)
  for x in scalars:
    ok = ok & jnp.isfinite(x)
  return jax.tree.map(lambda x: jnp.where(ok, x, jnp.zeros_like(x)), tree)


def resolve_rho(rho: ScalarOrSchedule, count: jax.Array):
  """``rho(count)`` for a schedule, ``rho`` itself otherwise."""
  return rho(count) if callable(rho) else rho


def _concrete_float(x, name: str) -> float | None:
  """``float(x)`` for a concrete real scalar, ``None`` for a traced one;
  ``ValueError`` naming ``name`` for anything else."""
  if _checks.is_traced(x):
    return None
  value = _checks.as_real(x)
  if value is None:
    raise ValueError(f"`{name}` must be a real scalar; got {x!r}.")
  return value


def check_hyperparameters(rho: Any, eps: Any, eta: Any) -> None:
  """Raises ``ValueError`` naming the argument unless ``rho`` is finite and
  ``>= 0``, ``eps`` finite and ``> 0`` and ``eta`` finite and ``>= 0``
  (NaN and ±inf are refused; non-numbers and non-scalars too).

  Traced values (e.g. from ``optax.inject_hyperparams`` inside ``jit``) and
  ``rho`` schedules are not checked: their values are only known inside
  ``jit``. A schedule or traced value that turns out non-finite gives
  ``ε = 0`` (module docstring), not NaN weights.
  """
  if not callable(rho):
    value = _concrete_float(rho, "rho")
    if value is not None and not (math.isfinite(value) and value >= 0):
      raise ValueError(f"`rho` must be finite and >= 0 (or a schedule); got {rho!r}.")
  value = _concrete_float(eps, "eps")
  if value is not None and not (math.isfinite(value) and value > 0):
    raise ValueError(f"`eps` must be finite and > 0; got {eps!r}.")
  value = _concrete_float(eta, "eta")
  if value is not None and not (math.isfinite(value) and value >= 0):
    raise ValueError(f"`eta` must be finite and >= 0; got {eta!r}.")


ADAPTIVE_FORMULAS = ("asam", "authors")


def check_adaptive_formula(adaptive: bool, formula: str, name: str = "adaptive_formula") -> None:
  """``formula`` is one of :data:`ADAPTIVE_FORMULAS`; ``"authors"`` needs
  ``adaptive=True`` (it would otherwise be silently ignored)."""
  if not isinstance(formula, str) or formula not in ADAPTIVE_FORMULAS:
    raise ValueError(f"`{name}` must be one of {ADAPTIVE_FORMULAS}; got {formula!r}.")
  if formula == "authors" and not adaptive:
    raise ValueError(f"`{name}='authors'` needs `adaptive=True`.")


def check_wrapper_args(rho, eps, eta, adaptive, formula, masks):
  """:func:`s2sam_jax.s2sam`'s and :func:`s2sam_jax.sam`'s shared checks at
  construction: the hyperparameters, the adaptive formula and the masks'
  values. Returns ``masks`` as ``bool`` (or ``None``)."""
  check_hyperparameters(rho, eps, eta)
  check_adaptive_formula(adaptive, formula)
  if masks is not None:
    _masks.check_mask_values(masks)
    masks = _masks.as_bool(masks)
  return masks


class Radius(NamedTuple):
  """The checked hyperparameters of :func:`perturbation` but ``rho``."""

  adaptive: bool
  formula: str
  eta: Any
  eps: Any

  def perturbation(self, grads, params, rho, masks):
    """:func:`perturbation` with these hyperparameters (not re-checked)."""
    return perturbation(
      grads,
      params,
      rho,
      adaptive=self.adaptive,
      eta=self.eta,
      eps=self.eps,
      formula=self.formula,
      masks=masks,
      check=False,
    )


def mask_source(
  masks: _masks.MaskTree | None, inner_state, perturb_pruned: bool
) -> _masks.MaskTree | None:
  """The masks that confine ``ε``: given ones, else an inner sparse wrapper's.

  ``perturb_pruned=True`` reproduces the authors' dense perturbation.
  """
  if perturb_pruned:
    return None
  if masks is not None:
    return masks
  return _masks.find_masks(inner_state)
