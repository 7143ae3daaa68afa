"""S2-SAM: single-step sharpness-aware minimization (Ji et al., NeurIPS 2024).

SAM needs two forward-backward passes per update. S2-SAM perturbs the weights
with the previous step's normalised gradient instead, so every step costs one
forward-backward pass, like the base optimizer::

    ε_t     = ρ · g_{t-1} / (‖g_{t-1}‖ + eps)          (ε_0 = 0)
    g_t     = ∇L(w_t + ε_t)                            (the only gradient)
    w_{t+1} = w_t + inner(g_t; w_t)                    (inner sees clean w_t)

The transformation stores ``ε_{t+1}`` (one params-sized buffer) at the end of
step ``t``. With ``adaptive=True`` it uses ASAM's scale-invariant radius,
``ε = ρ T² g / ‖T g‖`` with ``T = |w_{t+1}| + η``. The authors' PyTorch
``--adaptive --sam-v2`` (jjsrf/SSAM-NEURIPS2024 ``sam.py``) computes
``ε_{t+1} = ρ g_t³ / ‖|w_t + ε_t| g_t‖`` instead, which is neither SAM nor
ASAM; ``adaptive_formula="authors"`` reproduces it (with
``perturb_pruned=True`` and the sparse wrapper's ``mask_gradients=False``, the
authors' protocol), ``"asam"`` (the default) is ASAM's.

Two modes:

* ``"transparent"`` (default): the params the training loop holds are the
  perturbed point ``w_t + ε_t``; the returned update moves them straight to
  ``w_{t+1} + ε_{t+1}``. The loop is unchanged (``update`` + ``apply_updates``,
  flax ``TrainState``, ``nnx.Optimizer``). Use :func:`unperturbed` for the
  clean weights (evaluation, export).
* ``"explicit"``: the loop holds clean ``w_t`` and takes its gradient at
  :func:`perturbed` ``(params, state)``.

Under sparsity the perturbation covers active weights only: the masks of an
inner sparse wrapper (``s2sam(rigl(...))``) are found in its state, or given
with ``masks=``. ``perturb_pruned=True`` reproduces the authors' dense
perturbation.

Non-finite gradients: a gradient with any NaN or ±inf entry (after masking)
gives ``ε_{t+1} = 0`` (also when ``ε_{t+1}`` would overflow its buffer
dtype), so the next step is taken unperturbed and the stored perturbation is
never non-finite (:mod:`s2sam_jax._perturbation`). The weights are then
whatever ``inner`` makes of that gradient: wrap ``inner`` (or any part of
it, or the whole ``s2sam``) in ``optax.apply_if_finite`` to skip such steps;
the run recovers on the next finite gradient. Weights masked by an inner
sparse wrapper stay exactly 0 whatever the gradient (the clean weights;
with ``perturb_pruned=True`` the held point carries ``ε`` there).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from s2sam_jax import _checks, _masks, _perturbation

MODES = ("transparent", "explicit")


class S2SAMState(NamedTuple):
  """State of :func:`s2sam`.

  Attributes:
    count: number of updates taken (int32 scalar).
    perturbation: ``ε_t``, the perturbation of the next gradient evaluation,
      in the params' structure (dtype ``buffer_dtype``).
    in_params: bool scalar; ``True`` when ``ε_t`` is part of the params the
      loop holds (transparent mode).
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  perturbation: optax.Updates
  in_params: jax.Array
  inner_state: optax.OptState


def s2sam(
  inner: optax.GradientTransformation,
  rho: _perturbation.ScalarOrSchedule = 0.05,
  *,
  adaptive: bool = False,
  adaptive_formula: str = "asam",
  eta: float = 0.01,
  eps: float = 1e-12,
  mode: str = "transparent",
  buffer_dtype=None,
  masks: _masks.MaskTree | None = None,
  perturb_pruned: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` with single-step sharpness-aware minimization.

  Args:
    inner: any optax transformation (the base optimizer, possibly a sparse
      wrapper). Extra args given to ``update`` are forwarded to it.
    rho: perturbation radius ``ρ``, finite and ``>= 0``, or a schedule of
      the step count (``ε_{t+1}`` uses ``rho(t + 1)``).
    adaptive: use an adaptive radius (``adaptive_formula``).
    adaptive_formula: ``"asam"``: ASAM's ``T = |w| + η`` scaling;
      ``"authors"``: the authors' ``ρ g³ / ‖|u| g‖``, ``u = w_t + ε_t`` the
      point where ``g`` was taken (module docstring). Needs ``adaptive``.
    eta: ASAM's ``η``, finite and ``>= 0``.
    eps: finite and ``> 0``, added to the gradient norm (a zero gradient
      gives ``ε = 0``).
    mode: ``"transparent"`` or ``"explicit"`` (see the module docstring).
    buffer_dtype: a floating dtype for the stored perturbation (e.g.
      ``jnp.bfloat16``, which halves the extra memory of f32 params, or its
      name ``"bfloat16"``); ``None`` keeps each param's dtype. Integer, bool
      and complex dtypes, and names that are not dtypes, are refused
      (``ValueError``): an integer buffer would store ``ε = 0``. The stored
      (rounded) value is exactly what is applied.
    masks: mask tree confining ``ε`` to active weights (``bool`` leaves, or
      numeric ones of exactly 0 and 1, else ``ValueError`` naming the leaf;
      ``None`` for dense leaves). ``None`` uses the masks of an inner sparse
      wrapper if there is one. They confine ``ε`` only; they do not mask the
      weights (an inner sparse wrapper does).
    perturb_pruned: perturb masked weights too (the authors' code).

  ``rho``, ``eta`` and ``eps`` are checked as
  :func:`s2sam_jax._perturbation.check_hyperparameters` says (finite, ``rho,
  eta >= 0``, ``eps > 0``, else ``ValueError`` naming the argument; a
  schedule or a traced value is not checked, and a non-finite one gives
  ``ε = 0`` for that step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import s2sam_jax as ss
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 4)
    >>> tx = ss.s2sam(optax.sgd(0.1), rho=0.05)
    >>> w = jnp.zeros(3); state = tx.init(w)
    >>> for _ in range(3):
    ...   updates, state = tx.update(jax.grad(loss)(w), state, w)
    ...   w = optax.apply_updates(w, updates)
    >>> ss.unperturbed(w, state).shape
    (3,)
  """
  masks = _perturbation.check_wrapper_args(rho, eps, eta, adaptive, adaptive_formula, masks)
  _checks.check_choice(mode, "mode", MODES)
  cfg = _Config(
    optax.with_extra_args_support(inner),
    rho,
    _perturbation.Radius(adaptive, adaptive_formula, eta, eps),
    mode == "transparent",
    _check_buffer_dtype(buffer_dtype),
    masks,
    perturb_pruned,
  )
  return optax.GradientTransformationExtraArgs(
    functools.partial(_init, cfg), functools.partial(_update, cfg)
  )


class _Config(NamedTuple):
  """:func:`s2sam`'s checked arguments."""

  inner: optax.GradientTransformationExtraArgs
  rho: _perturbation.ScalarOrSchedule
  radius: _perturbation.Radius
  transparent: bool
  buffer_dtype: jnp.dtype | None
  masks: _masks.MaskTree | None
  perturb_pruned: bool


def _init(cfg: _Config, params) -> S2SAMState:
  if cfg.masks is not None:
    _masks.validate_masks(cfg.masks, params)
  buffer = jax.tree.map(
    lambda p: jnp.zeros(jnp.shape(p), cfg.buffer_dtype or jnp.asarray(p).dtype), params
  )
  return S2SAMState(
    count=jnp.zeros([], jnp.int32),
    perturbation=buffer,
    in_params=jnp.asarray(cfg.transparent),
    inner_state=cfg.inner.init(params),
  )


def _update(cfg: _Config, grads, state: S2SAMState, params=None, **extra_args):
  """One S2-SAM step (module docstring): the inner step at the clean
  weights, then ``ε_{t+1}`` from ``grads``."""
  if params is None:
    raise ValueError("s2sam needs `params` in update(grads, state, params).")
  old_eps = state.perturbation
  clean = (
    jax.tree.map(lambda p, e: p - e.astype(p.dtype), params, old_eps) if cfg.transparent else params
  )
  inner_updates, inner_state = cfg.inner.update(grads, state.inner_state, clean, **extra_args)
  next_clean = jax.tree.map(lambda w, u: w + u.astype(w.dtype), clean, inner_updates)

  count = optax.safe_increment(state.count)
  # ASAM scales by the weights the next gradient is taken around; the
  # authors' formula by the point where ``grads`` was taken.
  scale_point = next_clean
  if cfg.radius.adaptive and cfg.radius.formula == "authors":
    scale_point = (
      params
      if cfg.transparent
      else jax.tree.map(lambda p, e: p + e.astype(p.dtype), params, old_eps)
    )
  new_eps = cfg.radius.perturbation(
    grads,
    scale_point,
    _perturbation.resolve_rho(cfg.rho, count),
    _perturbation.mask_source(cfg.masks, inner_state, cfg.perturb_pruned),
  )
  new_eps = _stored(new_eps, old_eps)
  if cfg.transparent:
    # Aim at the target point itself: where it is exactly 0 (masked), the
    # update is exactly -params and apply_updates yields an exact 0.
    updates = jax.tree.map(lambda w, e, p: (w + e.astype(w.dtype)) - p, next_clean, new_eps, params)
  else:
    updates = jax.tree.map(lambda u, p: u.astype(p.dtype), inner_updates, params)
  return updates, S2SAMState(count, new_eps, state.in_params, inner_state)


def _stored(new_eps, old_eps):
  """``ε_{t+1}`` in the buffer's dtypes; zero if it overflows a float16 buffer."""
  new_eps = jax.tree.map(lambda e, old: e.astype(old.dtype), new_eps, old_eps)
  if any(
    jnp.issubdtype(e.dtype, jnp.floating) and jnp.finfo(e.dtype).max < jnp.finfo(jnp.float32).max
    for e in jax.tree.leaves(old_eps)
  ):
    # float16 buffers: a finite float32 ε may overflow when stored.
    new_eps = _perturbation.zero_unless_finite(new_eps)
  return new_eps


def _check_buffer_dtype(buffer_dtype):
  """``None`` or a floating dtype, else ``ValueError`` naming the argument."""
  if buffer_dtype is None:
    return None
  try:
    dtype = jnp.dtype(buffer_dtype)
  except (TypeError, ValueError):
    raise ValueError(
      f"`buffer_dtype` must be None or a floating dtype (e.g. jnp.bfloat16); got {buffer_dtype!r}."
    ) from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
      f"`buffer_dtype` must be None or a floating dtype (e.g. jnp.bfloat16); "
      f"got {dtype}, which cannot hold ε (S2-SAM would be silently off)."
    )
  return dtype


def _find_state(state) -> S2SAMState | None:
  found = [
    s
    for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, S2SAMState))
    if isinstance(s, S2SAMState)
  ]
  if len(found) > 1:
    raise ValueError("The optimizer state holds more than one S2SAMState.")
  return found[0] if found else None


def _paired_leaves(params, s: S2SAMState):
  """``(leaves, treedef, eps_leaves)``, checked to pair up one to one.

  Leaves are paired in flattening order, so ``params`` may use other
  container types than the state (e.g. an ``nnx.State`` of ``Param`` against
  the ``OptVariable`` leaves of ``nnx.Optimizer.opt_state``); the number of
  leaves and each leaf's shape must match the stored perturbation (no
  broadcasting), else ``ValueError`` naming the params' leaf.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  eps_leaves = jax.tree.leaves(s.perturbation)
  if len(flat) != len(eps_leaves):
    raise ValueError(
      f"`params` has {len(flat)} leaves but the S2-SAM state perturbs "
      f"{len(eps_leaves)}: pass the params this optimizer state was "
      f"initialised with."
    )
  for (path, p), e in zip(flat, eps_leaves):
    if tuple(jnp.shape(p)) != tuple(jnp.shape(e)):
      raise ValueError(
        f"`params` leaf {_masks.leaf_name(path)} has shape "
        f"{tuple(jnp.shape(p))} but the S2-SAM state's perturbation there "
        f"has shape {tuple(jnp.shape(e))}."
      )
  return [p for _, p in flat], treedef, eps_leaves


def _shift(params, state, sign_if_in_params: float, sign_if_explicit: float):
  """``params + sign · ε_t`` with the sign chosen by the state's mode.

  Pairs leaves as :func:`_paired_leaves` (checked counts and shapes).
  """
  s = _find_state(state)
  if s is None:
    return params
  leaves, treedef, eps_leaves = _paired_leaves(params, s)
  in_params = jax.tree.leaves(s.in_params)[0]
  sign = jnp.where(in_params, sign_if_in_params, sign_if_explicit)
  return treedef.unflatten([p + (sign * e).astype(p.dtype) for p, e in zip(leaves, eps_leaves)])


def unperturbed(params, state):
  """The clean weights ``w_t``, for evaluation and export.

  Finds the :class:`S2SAMState` anywhere in a nested ``state``. In
  transparent mode returns ``params - ε_t`` (masked by an inner sparse
  wrapper's masks, so that pruned weights are exactly 0 also when
  ``perturb_pruned=True`` put ``ε ≠ 0`` there); in explicit mode, or with no
  S2-SAM in the state, returns ``params`` unchanged.

  ``params`` may use other container types than the state (leaves are
  paired in flattening order), but must have as many leaves as the state's
  perturbation, each of the same shape: else ``ValueError`` naming the leaf.
  """
  s = _find_state(state)
  if s is None:
    return params
  clean = _shift(params, state, -1.0, 0.0)
  masks = _masks.find_masks(s.inner_state)
  if masks is None:
    return clean
  # Paired by flattening order, as in _shift (params may be an nnx.State).
  leaves, treedef = jax.tree.flatten(clean)
  mask_leaves = jax.tree.leaves(masks, is_leaf=_masks.is_none)
  return treedef.unflatten(
    [x if m is None else jnp.where(m, x, jnp.zeros_like(x)) for x, m in zip(leaves, mask_leaves)]
  )


def perturbed(params, state):
  """The point ``w_t + ε_t`` at which S2-SAM takes the next gradient.

  In explicit mode returns ``params + ε_t``; in transparent mode ``params``
  already is that point and is returned unchanged. Leaf counts and shapes
  are checked as in :func:`unperturbed`.
  """
  return _shift(params, state, 0.0, 1.0)
