"""Masks at initialisation: magnitude, SNIP and GraSP.

* SNIP: Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on
  Connection Sensitivity", ICLR 2019, arXiv:1810.02340; code
  namhoonlee/snip-public ``snip/model.py`` (``create_sparse_mask``).
* GraSP: Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by
  Preserving Gradient Flow", ICLR 2020, arXiv:2002.07376; code
  alecwangcq/GraSP ``pruner/GraSP.py``.
* Magnitude at init: one-shot ``|w|`` pruning of the initial weights, where
  MEST and the S2-SAM authors' runs start (jjsrf/SSAM-NEURIPS2024).

Each function returns a mask tree (bool array per prunable leaf, ``None``
elsewhere) to feed a static-mask wrapper. They run once, on the host side,
outside ``jit`` (the gradients inside are ordinary JAX calls).

Selection uses exact counts with ties going to the lower flat index (leaves in
``jax.tree`` flatten order for global ranking); scores are ranked in float32.

* **magnitude**: score ``|w|``. Layer-wise keeps ``count_for_density(n_l, d_l)``
  per leaf; global keeps ``count_for_density(N, 1 - S)`` over all prunable
  weights ranked together.
* **SNIP**: score ``|g ⊙ w|`` with ``g = ∇L(w; batch)`` on one batch; global
  top ``count_for_density(N, 1 - S)`` (``round((1-S) N)`` as in the SNIP
  code), or layer-wise with given densities (RigL's variant). The SNIP
  normalisation by ``Σ|g ⊙ w|`` does not change the ranking and is omitted.
* **GraSP**: signed score ``S = -w ⊙ (H g)`` with ``g = ∇L(w; batch)``
  (held fixed) and ``H g`` a Hessian-vector product computed forward-over-
  reverse (``jax.jvp`` of ``jax.grad``); the ``int(S N)`` *largest* scores are
  removed (GraSP's own count, which can keep one more weight than
  ``count_for_density``), the rest kept. GraSP's code splits the sample into
  two halves and sums ``∇L_half`` and ``H_half g``; with a per-example mean
  loss and equal halves that is ``2 ∇L`` and ``2 H g`` on the whole batch, a
  positive factor that leaves the ranking unchanged, so the whole batch is used
  here (BN batch statistics computed per half would differ slightly). GraSP's
  normalisation by ``|Σ S|`` is positive and omitted.

``loss_fn`` convention: ``loss_fn(params, batch) -> scalar`` for SNIP;
``loss_fn(params, batch, temperature) -> scalar`` for GraSP, where the loss
must divide its logits by ``temperature`` (GraSP uses ``T = 200``). One function
``def loss_fn(params, batch, temperature=1.0)`` serves both.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> def loss_fn(params, batch, temperature=1.0):
  ...   x, y = batch
  ...   logits = jnp.tanh(x @ params['w1']) @ params['w2'] / temperature
  ...   return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  >>> params = {'w1': jax.random.normal(k1, (8, 16)), 'w2': jax.random.normal(k2, (16, 3))}
  >>> batch = (jax.random.normal(k3, (32, 8)), jnp.arange(32) % 3)
  >>> m = grasp_masks(loss_fn, params, batch, 0.75)
  >>> int(m['w1'].sum() + m['w2'].sum())  # 176 weights, int(0.75 * 176) removed
  44
  >>> int(snip_masks(loss_fn, params, batch, 0.75)['w2'].size)
  48
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from s2sam_jax import _checks, _masks
from s2sam_jax.sparse.distributions import Prunable, count_for_density, default_prunable

# How masks are ranked: each leaf separately, or all leaves together.
SCOPES = ("layer", "global")


def _check_finite_loss(loss, what: str) -> None:
  """``ValueError`` if a concrete ``loss`` is NaN or ±inf: every score would
  be NaN, and NaN scores rank last, so whole layers would be cut."""
  if _checks.is_traced(loss):
    return
  value = float(np.asarray(loss))
  if not math.isfinite(value):
    raise ValueError(
      f"{what}: the loss is not finite ({value}) at the given params/batch; "
      f"the scores would be NaN and the masks meaningless (whole layers "
      f"cut). Check the params, the batch and `loss_fn`."
    )


def _check_finite_scores(scores, what: str, cause: str) -> None:
  """``ValueError`` naming the first leaf of concrete ``scores`` with a NaN or
  ±inf entry."""
  for path, s in jax.tree_util.tree_flatten_with_path(scores)[0]:
    if _checks.is_traced(s):
      continue
    values = np.asarray(s, np.float32)
    bad = int(np.sum(~np.isfinite(values)))
    if bad:
      raise ValueError(
        f"{what}: {bad} of {values.size} scores of leaf "
        f"{_masks.leaf_name(path)} are not finite: {cause} is not finite "
        f"at the given params/batch."
      )


def _prunable_flags(params, prunable: Prunable):
  """Tree of bools (prunable per leaf), via the key path."""
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  return jax.tree.unflatten(treedef, [bool(prunable(p, x)) for p, x in leaves_with_path])


def _total_size(params, selected) -> int:
  leaves, treedef = jax.tree.flatten(params)
  return sum(int(np.size(x)) for x, f in zip(leaves, treedef.flatten_up_to(selected)) if f)


def _layer_masks(scores, densities):
  """Per leaf, keeps the top ``count_for_density(n, d)`` scores."""
  _check_densities(densities, scores)

  def per_leaf(d, s):
    if d is None:
      return None
    return _masks.keep_top_k_host(s, count_for_density(int(np.size(s)), d))

  return jax.tree.map(per_leaf, densities, scores, is_leaf=_masks.is_none)


def _check_densities(densities, params) -> None:
  leaves, treedef = jax.tree.flatten(densities, is_leaf=_masks.is_none)
  try:
    treedef.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"`densities` must have the structure of `params` (a float in [0, 1] or "
      f"None per leaf); got a mismatch: {e}"
    ) from None
  for d in leaves:
    x = None if d is None else _checks.as_real(d)
    if d is not None and (x is None or not 0.0 <= x <= 1.0):
      raise ValueError(f"`densities` entries must be floats in [0, 1] or None; got {d!r}.")


def _layer_or_global(scores, params, sparsity, densities, prunable, what):
  if (sparsity is None) == (densities is None):
    raise ValueError(
      f"{what}: pass exactly one of `sparsity` (global ranking) or "
      f"`densities` (layer-wise); got sparsity={sparsity!r}, "
      f"densities={'None' if densities is None else 'a tree'}."
    )
  if densities is not None:
    return _layer_masks(scores, densities)
  sparsity = _checks.check_sparsity(sparsity)
  selected = _prunable_flags(params, prunable)
  keep = count_for_density(_total_size(params, selected), 1.0 - sparsity)
  return _masks.keep_top_k_global(scores, selected, keep)


def magnitude_masks(
  params,
  densities=None,
  *,
  sparsity: float | None = None,
  scope: str = "layer",
  prunable: Prunable = default_prunable,
):
  """Keeps the largest ``|w|``: per layer or ranked globally.

  Args:
    params: params tree (arrays).
    densities: for ``scope='layer'``: a tree from ``layer_densities`` (float
      or ``None`` per leaf). If omitted, ``sparsity`` gives every prunable leaf
      the uniform density ``1 - sparsity``.
    sparsity: for ``scope='global'``: the fraction in ``[0, 1)`` of all
      prunable weights removed (keeps ``count_for_density(N, 1 - sparsity)``).
    scope: ``'layer'`` or ``'global'``.
    prunable: which leaves are masked (global scope and uniform layer scope).

  A NaN or ±inf weight is a ``ValueError`` naming its leaf (NaN would rank
  last and inf first, silently).

  Example:
    >>> import jax.numpy as jnp
    >>> p = {'w': jnp.array([[3., -1.], [0.5, -4.]]), 'b': jnp.ones(2)}
    >>> magnitude_masks(p, sparsity=0.5, scope='global')['w']
    Array([[ True, False],
           [False,  True]], dtype=bool)
  """
  _checks.check_choice(scope, "scope", SCOPES)
  scores = jax.tree.map(lambda w: np.abs(np.asarray(w, np.float32)), params)
  _check_finite_scores(scores, "magnitude_masks", "`params` (|w|)")
  if scope == "global":
    if densities is not None:
      raise ValueError("`densities` is for scope='layer'; use `sparsity` for scope='global'.")
    if sparsity is None:
      raise ValueError("scope='global' needs `sparsity` in [0, 1).")
    return _layer_or_global(scores, params, sparsity, None, prunable, "magnitude_masks")
  if densities is None and sparsity is not None:
    sparsity = _checks.check_sparsity(sparsity)
    densities = jax.tree.map(
      lambda f: (1.0 - sparsity) if f else None, _prunable_flags(params, prunable)
    )
    sparsity = None
  return _layer_or_global(scores, params, sparsity, densities, prunable, "magnitude_masks")


def snip_scores(loss_fn, params, batch):
  """SNIP connection sensitivity ``|∂L/∂w ⊙ w|`` on one batch (a tree).

  Raises ``ValueError`` if the loss or a score is not finite (when concrete,
  i.e. outside ``jit``).
  """
  loss, grads = jax.value_and_grad(loss_fn)(params, batch)
  _check_finite_loss(loss, "SNIP")
  scores = jax.tree.map(lambda g, w: jnp.abs(g * w), grads, params)
  _check_finite_scores(scores, "SNIP", "the loss gradient (or a weight)")
  return scores


def snip_masks(
  loss_fn,
  params,
  batch,
  sparsity: float | None = None,
  *,
  densities=None,
  prunable: Prunable = default_prunable,
):
  """SNIP (Lee et al. 2019): keep the largest ``|g ⊙ w|``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params, batch: the initial params and one minibatch.
    sparsity: global ranking over the prunable leaves (the original SNIP);
      keeps ``count_for_density(N, 1 - sparsity)``.
    densities: instead of ``sparsity``, a ``layer_densities`` tree for
      per-layer selection (RigL's SNIP variant).
    prunable: which leaves are scored in the global ranking.

  The official SNIP scores with BN in eval mode (initial moving statistics)
  and ranks biases too; pass a ``prunable`` that selects them to match.

  A loss or score that is not finite is a ``ValueError`` (NaN scores would
  rank last and silently cut whole layers).
  """
  scores = snip_scores(loss_fn, params, batch)
  return _layer_or_global(scores, params, sparsity, densities, prunable, "snip_masks")


def grasp_scores(loss_fn, params, batch, temperature: float = 200.0):
  """GraSP scores ``-w ⊙ (H g)``, signed, with ``g = ∇L`` held fixed.

  ``loss_fn(params, batch, temperature)`` must divide its logits by
  ``temperature`` (finite, ``> 0``). ``H g`` is ``jax.jvp`` of ``jax.grad``
  (forward-over-reverse). Raises ``ValueError`` if the loss or a score is
  not finite (when concrete, i.e. outside ``jit``).
  """
  temperature = float(temperature)
  if not (temperature > 0.0 and math.isfinite(temperature)):
    raise ValueError(f"`temperature` must be finite and > 0; got {temperature}.")
  loss_at = lambda p: loss_fn(p, batch, temperature)
  grad_fn = jax.grad(loss_at)
  loss, g = jax.value_and_grad(loss_at)(params)
  _check_finite_loss(loss, "GraSP")
  g = jax.lax.stop_gradient(g)
  _, hg = jax.jvp(grad_fn, (params,), (g,))
  scores = jax.tree.map(lambda w, h: -w * h, params, hg)
  _check_finite_scores(scores, "GraSP", "the Hessian-gradient product (or a weight)")
  return scores


def grasp_masks(
  loss_fn,
  params,
  batch,
  sparsity: float,
  *,
  temperature: float = 200.0,
  prunable: Prunable = default_prunable,
):
  """GraSP (Wang et al. 2020): remove the ``int(sparsity * N)`` largest scores.

  Ranks ``-w ⊙ (H g)`` globally over the prunable leaves and removes the
  largest (signed, not absolute), keeping low and negative scores: exactly
  ``N - int(sparsity * N)`` weights stay; among equal scores the lower flat
  index is kept. See the module docstring for ``loss_fn`` and the batch.

  GraSP's protocol, the caller's part (alecwangcq/GraSP ``pruner/GraSP.py``,
  ``GraSP_fetch_data`` and the ``reinit`` branch; ``samples_per_class: 10``
  in its CIFAR configs, e.g. ``configs/cifar10/resnet32/GraSP_90.json``): a
  class-balanced sample of 10 images per class as ``batch``; BN in train
  mode (batch statistics) inside ``loss_fn``; scores taken on a copy of the
  params whose dense (linear) layers are re-initialised Xavier-normal, the
  masks then applied to the original params.

  A loss or score that is not finite is a ``ValueError`` (NaN scores would
  rank last and silently cut whole layers).
  """
  sparsity = _checks.check_sparsity(sparsity)
  scores = grasp_scores(loss_fn, params, batch, temperature)
  selected = _prunable_flags(params, prunable)
  n_total = _total_size(params, selected)
  negated = jax.tree.map(lambda s: -np.asarray(s, np.float32), scores)
  return _masks.keep_top_k_global(negated, selected, n_total - int(sparsity * n_total))
