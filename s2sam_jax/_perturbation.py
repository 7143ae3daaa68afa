"""The sharpness-aware perturbation shared by S2-SAM and two-step SAM.

SAM (Foret et al., 2021) evaluates the gradient at ``w + ε`` with

    ε = ρ · g / (‖g‖ + eps)

and ASAM (Kwon et al., 2021) makes the radius scale-invariant with
``T = |w| + η``:

    ε = ρ · T² ⊙ g / (‖T ⊙ g‖ + eps).

The S2-SAM authors' code (jjsrf/SSAM-NEURIPS2024 ``sam.py``, ``--sam-v2
--adaptive``) computes neither: with ``g`` the stored gradient and ``u`` the
point it was taken at (the previous *perturbed* weights),

    ε = ρ · g ⊙ g ⊙ g / (‖|u| ⊙ g‖ + eps)        (``formula="authors"``)

(its ASAM numerator squares the stored gradient where ASAM squares the
weights), so ``‖ε‖`` is not ``ρ``; it is offered to reproduce their runs.

Norms are global L2 norms over every leaf, computed in float32. Under
sparsity the gradient is first masked (``g ← m ⊙ g``), so ``ε`` and its norm
cover active weights only and the perturbed network is as sparse as the
trained one. A zero gradient gives ``ε = 0`` (``eps > 0`` keeps 0/0 away).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

from s2sam_jax import _masks

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]


def perturbation(
    grads: optax.Updates,
    params: optax.Params,
    rho,
    *,
    adaptive: bool = False,
    eta=0.01,
    eps=1e-12,
    masks: Optional[_masks.MaskTree] = None,
    formula: str = "asam",
) -> optax.Updates:
  """Returns the ascent step ``ε`` (float32 leaves, the structure of ``grads``).

  Args:
    grads: gradient ``g`` at the point the perturbation is taken from.
    params: weights ``w`` (used by the adaptive variants only; for
      ``formula="authors"``, the point ``u`` where ``g`` was taken).
    rho: radius ``ρ >= 0`` (a scalar; may be traced).
    adaptive: use an adaptive (weight-scaled) radius.
    eta: ASAM's ``η``.
    eps: added to the norm.
    masks: optional mask tree; masked entries of ``g`` are dropped first.
    formula: the adaptive formula, ``"asam"`` or ``"authors"`` (module doc).

  Example:
    >>> import jax.numpy as jnp
    >>> perturbation({'w': jnp.array([3., 4.])}, None, 0.5)['w']
    Array([0.3, 0.4], dtype=float32)
  """
  g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32),
                   _masks.mask_tree(grads, masks))
  if adaptive and formula == "authors":
    scale = jax.tree.map(lambda w: jnp.abs(jnp.asarray(w, jnp.float32)), params)
    direction = jax.tree.map(jnp.multiply, scale, g)
    step = jax.tree.map(lambda x: x * x * x, g)
  elif adaptive:
    scale = jax.tree.map(lambda w: jnp.abs(jnp.asarray(w, jnp.float32)) + eta,
                         params)
    direction = jax.tree.map(jnp.multiply, scale, g)
    step = jax.tree.map(jnp.multiply, scale, direction)
  else:
    direction = step = g
  factor = rho / (optax.tree.norm(direction) + eps)
  return optax.tree.scale(factor, step)


def resolve_rho(rho: ScalarOrSchedule, count: jax.Array):
  """``rho(count)`` for a schedule, ``rho`` itself otherwise."""
  return rho(count) if callable(rho) else rho


def _is_concrete_number(x) -> bool:
  if isinstance(x, jax.core.Tracer):
    return False
  return isinstance(x, (numbers.Number, jax.Array)) or hasattr(x, "__array__")


def check_hyperparameters(rho: Any, eps: Any, eta: Any) -> None:
  """Raises ``ValueError`` for ``rho < 0``, ``eps <= 0`` or ``eta < 0``.

  Traced values (e.g. from ``optax.inject_hyperparams``) and schedules are
  not checked: they are only known inside ``jit``.
  """
  if not callable(rho) and _is_concrete_number(rho) and float(rho) < 0:
    raise ValueError(f"`rho` must be >= 0 (or a schedule); got {rho}.")
  if _is_concrete_number(eps) and not float(eps) > 0:
    raise ValueError(f"`eps` must be > 0; got {eps}.")
  if _is_concrete_number(eta) and float(eta) < 0:
    raise ValueError(f"`eta` must be >= 0; got {eta}.")


ADAPTIVE_FORMULAS = ("asam", "authors")


def check_adaptive_formula(adaptive: bool, formula: str) -> None:
  """``formula`` is one of :data:`ADAPTIVE_FORMULAS`; ``"authors"`` needs
  ``adaptive=True`` (it would otherwise be silently ignored)."""
  if formula not in ADAPTIVE_FORMULAS:
    raise ValueError(f"`adaptive_formula` must be one of {ADAPTIVE_FORMULAS}; "
                     f"got {formula!r}.")
  if formula == "authors" and not adaptive:
    raise ValueError("`adaptive_formula='authors'` needs `adaptive=True`.")


def mask_source(masks: Optional[_masks.MaskTree], inner_state,
                perturb_pruned: bool) -> Optional[_masks.MaskTree]:
  """The masks that confine ``ε``: given ones, else an inner sparse wrapper's.

  ``perturb_pruned=True`` reproduces the authors' dense perturbation.
  """
  if perturb_pruned:
    return None
  if masks is not None:
    return masks
  return _masks.find_masks(inner_state)
