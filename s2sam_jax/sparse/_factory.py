"""Sparse methods by name, as jaxpruner's ``create_updater_from_config``."""

from __future__ import annotations

import optax

from s2sam_jax.sparse.dsr import dsr
from s2sam_jax.sparse.gmp import gmp
from s2sam_jax.sparse.mest import mest
from s2sam_jax.sparse.rigl import rigl
from s2sam_jax.sparse.set_ import set_
from s2sam_jax.sparse.static import static_masks

# name -> (constructor, the keyword arguments a name fixes)
_METHODS = {
  "static": (static_masks, {}),
  "set": (set_, {}),
  "rigl": (rigl, {}),
  "dsr": (dsr, {}),
  "mest": (mest, {}),
  "mest-em": (mest, {"variant": "em"}),
  "mest-ems": (mest, {"variant": "ems"}),
  "gmp": (gmp, {}),
}
METHOD_NAMES = tuple(_METHODS)

# Names that are not a transformation of their own: where their masks come from.
_MASK_SOURCES = {
  "dense": "it is no sparse method: use the inner optimizer itself",
  "random": "use create('static', inner, sparsity=s) or masks=sparse.random_init(s, ...)",
  "magnitude": "use create('static', inner, masks=lambda p: sparse.magnitude_masks(p, ...))",
  "snip": "use create('static', inner, masks=sparse.snip_masks(loss_fn, params, batch, s))",
  "grasp": "use create('static', inner, masks=sparse.grasp_masks(loss_fn, params, batch, s))",
  "lt": "each round is create('static', inner, masks=...) with sparse.imp_next_round's masks",
  "lrr": "each round is create('static', inner, masks=...) with sparse.imp_next_round's masks",
}


def create(name: str, inner: optax.GradientTransformation, **kwargs):
  """The sparse method called ``name`` around ``inner``.

  ``create(name, inner, **kwargs)`` is ``constructor(inner, **kwargs)`` for
  the names of :data:`METHOD_NAMES`: ``'static'`` (:func:`static_masks`),
  ``'set'`` (:func:`set_`), ``'rigl'``, ``'dsr'``, ``'mest'`` (the variant
  by ``variant=``; ``'mest-em'`` and ``'mest-ems'`` fix it, as the training
  command names them) and ``'gmp'``. The initial masks are each method's
  ``masks=`` or ``sparsity=`` (see :func:`random_init`).

  Mask sources are no methods of their own: magnitude, SNIP and GraSP masks
  and lottery-ticket rounds are masks for ``'static'``
  (``create('static', inner, masks=sparse.snip_masks(...))``), and dense
  training is ``inner`` itself; these names, and any other, raise a
  ``ValueError`` listing the valid names. Unknown keyword arguments raise the
  constructor's ``TypeError``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> tx = sparse.create('rigl', optax.sgd(0.1), sparsity=0.9, end_step=1000)
    >>> int(tx.init({'w': jnp.ones((10, 10))}).masks['w'].sum())
    10
    >>> sparse.create('lasso', optax.sgd(0.1))
    Traceback (most recent call last):
    ...
    ValueError: Unknown sparse method 'lasso'; the names are ('static', 'set', 'rigl', 'dsr', 'mest', 'mest-em', 'mest-ems', 'gmp').
  """
  if not isinstance(name, str) or name not in _METHODS:
    hint = _MASK_SOURCES.get(name) if isinstance(name, str) else None
    raise ValueError(
      f"Unknown sparse method {name!r}; the names are {METHOD_NAMES}."
      + (f" For {name!r}, {hint}." if hint else "")
    )
  constructor, fixed = _METHODS[name]
  for arg, value in fixed.items():
    if kwargs.setdefault(arg, value) != value:
      raise ValueError(
        f"create({name!r}, ...) fixes {arg}={value!r}; got {arg}={kwargs[arg]!r} "
        f"(use create('mest', ..., {arg}=...))."
      )
  return constructor(inner, **kwargs)
