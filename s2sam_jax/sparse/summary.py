"""Inspection: sparsity per layer, nnz, mask overlap and training FLOPs.

Everything here runs on the host (NumPy) and returns plain frozen dataclasses
that print as tables, for logs and result tables.

Example:
  >>> import jax.numpy as jnp
  >>> params = {'w': jnp.array([[1., 0.], [0., 2.]]), 'b': jnp.ones(2)}
  >>> nnz(params)
  4
  >>> s = sparsity_summary(params)
  >>> s.layers[0].path, s.nnz, s.size, s.sparsity
  ('w', 2, 4, 0.5)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from s2sam_jax import _checks, _masks
from s2sam_jax._masks import path_str
from s2sam_jax.sparse.distributions import Prunable, default_prunable
from s2sam_jax.sparse.gmp import check_gmp_schedule, gmp_pruning_steps, gmp_remaining
from s2sam_jax.sparse.rigl import periodic_update_steps

SAM_OPTIMIZERS = ("base", "s2sam", "sam")
SPARSE_COST_METHODS = (
  "static",
  "random",
  "magnitude",
  "snip",
  "grasp",
  "set",
  "dsr",
  "mest",
  "lottery",
  "lrr",
)
METHODS = ("dense",) + SPARSE_COST_METHODS + ("rigl", "gmp")


def _flat_with_paths(tree):
  return [
    (path_str(p), x)
    for p, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_masks.is_none)[0]
  ]


def nnz(tree) -> int:
  """Number of non-zero (for masks: ``True``) entries over all array leaves.

  ``None`` leaves (dense entries of a mask tree) are skipped.
  """
  return sum(
    int(np.count_nonzero(np.asarray(x))) for _, x in _flat_with_paths(tree) if x is not None
  )


def _fraction(part: int, whole: int) -> float:
  """``part / whole``; ``1.0`` for an empty ``whole`` (nothing pruned, all shared)."""
  return part / whole if whole else 1.0


class _Density:
  """``density`` and ``sparsity`` of a record with ``nnz`` and ``size``."""

  nnz: int
  size: int

  @property
  def density(self) -> float:
    return _fraction(self.nnz, self.size)

  @property
  def sparsity(self) -> float:
    return 1.0 - self.density


@dataclasses.dataclass(frozen=True)
class LayerSparsity(_Density):
  """One leaf: ``nnz`` active entries out of ``size``."""

  path: str
  shape: tuple[int, ...]
  size: int
  nnz: int


@dataclasses.dataclass(frozen=True)
class SparsitySummary(_Density):
  """Per-layer and global sparsity.

  ``layers`` are the masked (or prunable) leaves and the headline numbers
  (``size``, ``nnz``, ``density``, ``sparsity``) are over them only, as the
  sparse-training papers report; ``total_size`` / ``total_nnz`` add every
  other leaf, counted as it is (dense leaves fully).
  """

  layers: tuple[LayerSparsity, ...]
  size: int
  nnz: int
  total_size: int
  total_nnz: int

  def as_dict(self) -> dict:
    """Plain dict (JSON-serialisable) with per-layer and global numbers."""
    return {
      "layers": {
        l.path: {"shape": list(l.shape), "size": l.size, "nnz": l.nnz, "density": l.density}
        for l in self.layers
      },
      "size": self.size,
      "nnz": self.nnz,
      "density": self.density,
      "sparsity": self.sparsity,
      "total_size": self.total_size,
      "total_nnz": self.total_nnz,
    }

  def __str__(self) -> str:
    width = max([len(l.path) for l in self.layers] + [13])
    rows = [f"{'layer':<{width}}  {'shape':<18} {'size':>10} {'nnz':>10} {'density':>8}"]
    for l in self.layers:
      rows.append(
        f"{l.path:<{width}}  {str(l.shape):<18} {l.size:>10} {l.nnz:>10} {l.density:>8.4f}"
      )
    rows.append(
      f"{'sparse layers':<{width}}  {'':<18} {self.size:>10} {self.nnz:>10} "
      f"{self.density:>8.4f}  (sparsity {self.sparsity:.4f})"
    )
    total_d = _fraction(self.total_nnz, self.total_size)
    rows.append(
      f"{'all leaves':<{width}}  {'':<18} {self.total_size:>10} "
      f"{self.total_nnz:>10} {total_d:>8.4f}"
    )
    return "\n".join(rows)


def sparsity_summary(
  params, masks=None, *, prunable: Prunable = default_prunable
) -> SparsitySummary:
  """Sparsity of a params tree, or of the masks held for it.

  Args:
    params: params tree (arrays). A mask tree may be passed here too: its
      ``None`` leaves then simply do not appear.
    masks: optional mask tree. If given, the layers are its non-``None``
      leaves and ``nnz`` counts ``True`` entries; the params' other leaves
      count as dense in the totals. If omitted, the layers are the ``prunable``
      leaves and ``nnz`` counts non-zero values.
    prunable: leaf predicate used when ``masks`` is omitted.

  Example:
    >>> import jax.numpy as jnp
    >>> p = {'w': jnp.ones((2, 3)), 'b': jnp.ones(3)}
    >>> m = {'w': jnp.array([[True, False, False], [True, True, False]]), 'b': None}
    >>> s = sparsity_summary(p, m)
    >>> s.nnz, s.size, s.total_nnz, s.total_size
    (3, 6, 6, 9)
  """
  if masks is not None:
    masks = _masks.conform(masks, params)  # e.g. an nnx.Optimizer's masks for nnx.Param state
    _masks.validate_masks(masks, params)
    mask_leaves = jax.tree.flatten(masks, is_leaf=_masks.is_none)
    selected = mask_leaves[1].flatten_up_to(params)
    pairs = list(zip(_flat_with_paths(masks), selected))
    layers, total_size, total_nnz = [], 0, 0
    for (path, m), p in pairs:
      size = int(np.size(p))
      count = int(np.count_nonzero(np.asarray(p))) if m is None else int(np.sum(np.asarray(m)))
      total_size += size
      total_nnz += size if m is None else count
      if m is not None:
        layers.append(LayerSparsity(path, tuple(np.shape(p)), size, count))
  else:
    layers, total_size, total_nnz = [], 0, 0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
      size, count = int(np.size(x)), int(np.count_nonzero(np.asarray(x)))
      total_size += size
      total_nnz += count
      if prunable(path, x):
        layers.append(LayerSparsity(path_str(path), tuple(np.shape(x)), size, count))
  return SparsitySummary(
    tuple(layers), sum(l.size for l in layers), sum(l.nnz for l in layers), total_size, total_nnz
  )


@dataclasses.dataclass(frozen=True)
class LayerOverlap:
  """Overlap of two boolean masks of one layer."""

  path: str
  active_a: int
  active_b: int
  intersection: int
  union: int

  @property
  def iou(self) -> float:
    """``|a ∧ b| / |a ∨ b|`` (Jaccard); ``1.0`` when both are empty."""
    return _fraction(self.intersection, self.union)

  @property
  def shared_fraction(self) -> float:
    """``|a ∧ b| / |a|``: the fraction of ``a``'s active weights also active in ``b``."""
    return _fraction(self.intersection, self.active_a)


@dataclasses.dataclass(frozen=True)
class MaskOverlap:
  """Per-layer and global (all masked layers pooled) mask overlap."""

  layers: tuple[LayerOverlap, ...]
  total: LayerOverlap

  @property
  def iou(self) -> float:
    return self.total.iou

  @property
  def shared_fraction(self) -> float:
    return self.total.shared_fraction

  def __str__(self) -> str:
    width = max([len(l.path) for l in self.layers] + [6])
    rows = [
      f"{'layer':<{width}}  {'|a|':>10} {'|b|':>10} {'|a&b|':>10} {'|a|b|':>10} "
      f"{'IoU':>7} {'shared':>7}"
    ]
    for l in self.layers + (self.total,):
      rows.append(
        f"{l.path:<{width}}  {l.active_a:>10} {l.active_b:>10} "
        f"{l.intersection:>10} {l.union:>10} {l.iou:>7.4f} "
        f"{l.shared_fraction:>7.4f}"
      )
    return "\n".join(rows)


def mask_overlap(masks_a, masks_b) -> MaskOverlap:
  """How much two mask trees agree, per layer and globally.

  Both trees must have the same structure with ``None`` (dense) at the same
  leaves; dense leaves are skipped. Leaves must be masks (``bool``, or
  numeric of exactly 0 and 1), else ``ValueError`` naming the leaf.
  Reports ``|a|``, ``|b|``, ``|a ∧ b|``, ``|a ∨ b|``, IoU
  ``|a ∧ b| / |a ∨ b|`` and the shared fraction ``|a ∧ b| / |a|``; the
  global row pools all masked layers.

  Example:
    >>> import jax.numpy as jnp
    >>> a = {'w': jnp.array([True, True, False, False])}
    >>> b = {'w': jnp.array([True, False, True, False])}
    >>> o = mask_overlap(a, b)
    >>> o.iou, o.shared_fraction
    (0.3333333333333333, 0.5)
  """
  _masks.check_mask_values(masks_a, "masks_a")
  _masks.check_mask_values(masks_b, "masks_b")
  masks_b = _masks.conform(masks_b, masks_a)
  flat_a, flat_b = _flat_with_paths(masks_a), _flat_with_paths(masks_b)
  def_a = jax.tree.structure(masks_a, is_leaf=_masks.is_none)
  def_b = jax.tree.structure(masks_b, is_leaf=_masks.is_none)
  if def_a != def_b:
    raise ValueError(f"`masks_b` must have the structure of `masks_a`; got {def_b} vs {def_a}.")
  layers = []
  for (path, a), (_, b) in zip(flat_a, flat_b):
    if (a is None) != (b is None):
      raise ValueError(f"`masks_a` and `masks_b` disagree on whether {path!r} is masked.")
    if a is None:
      continue
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
      raise ValueError(f"`masks_b` leaf {path!r} has shape {b.shape}, `masks_a` {a.shape}.")
    layers.append(
      LayerOverlap(path, int(a.sum()), int(b.sum()), int((a & b).sum()), int((a | b).sum()))
    )
  total = LayerOverlap(
    "global",
    *(
      sum(getattr(l, f) for l in layers) for f in ("active_a", "active_b", "intersection", "union")
    ),
  )
  return MaskOverlap(tuple(layers), total)


@dataclasses.dataclass(frozen=True)
class FlopsEstimate:
  """Training FLOPs estimate, in the unit of the ``forward_flops`` given.

  ``total`` sums ``steps`` training steps; ``per_step`` is its mean;
  ``relative_to_dense`` divides by dense training with the base optimizer
  (``3 · forward_dense · steps``), so dense SAM is ``2.0``.
  """

  method: str
  optimizer: str
  steps: int
  forward_dense: float
  forward_sparse: float
  total: float

  @property
  def per_step(self) -> float:
    return self.total / self.steps

  @property
  def relative_to_dense(self) -> float:
    return self.total / (3.0 * self.forward_dense * self.steps)

  def __str__(self) -> str:
    return (
      f"{self.method} + {self.optimizer}: {self.total:.4g} FLOPs over "
      f"{self.steps} steps ({self.per_step:.4g}/step, "
      f"{self.relative_to_dense:.4f}x dense training; forward dense "
      f"{self.forward_dense:.4g}, sparse {self.forward_sparse:.4g})"
    )


def _density_by_path(densities) -> dict:
  """``{path: density}`` from a flat mapping, a density tree or a mask tree."""
  items = _flat_with_paths(densities)  # a flat {path: d} dict flattens to itself
  out = {}
  for path, d in items:
    if d is None:
      continue
    if np.ndim(d):  # a mask leaf: its active fraction
      _masks.check_mask_values({path: d}, "densities")
      d = float(np.mean(np.asarray(d, np.float64)))
    else:
      d = _checks.as_real(d)
    if d is None or not 0.0 <= d <= 1.0:
      raise ValueError(f"`densities` entry {path!r} must be a float in [0, 1]; got {d}.")
    out[path] = d
  return out


def training_flops(
  forward_flops: Mapping[str, float],
  densities: Any = None,
  *,
  method: str = "static",
  optimizer: str = "base",
  steps: int = 1,
  update_every: int = 100,
  begin_step: int = 0,
  end_step: int | None = None,
  initial_sparsity: float = 0.0,
) -> FlopsEstimate:
  """Training FLOPs of a sparse-training method, dense vs sparse.

  With ``F_l`` the dense forward FLOPs of layer ``l`` (per example or per
  batch: the unit carries through) and ``d_l`` its density (layers without a
  density are dense), ``f_D = Σ F_l`` and ``f_S = Σ d_l F_l``. The backward
  pass costs twice the forward (input and weight gradients), so one step is:

  * ``'dense'``: ``3 f_D``.
  * sparse-cost methods (``static``, ``random``, ``magnitude``, ``snip``,
    ``grasp``, ``set``, ``dsr``, ``mest``, ``lottery``, ``lrr``): ``3 f_S``.
    One-shot scoring (SNIP/GraSP) and topology updates (magnitude sorts) are
    neglected; MEST EM&S's and DSR's transient density changes are not
    modelled. For lottery/LRR call once per round with that round's densities.
  * ``'rigl'``: ``3 f_S``, except on update steps ``t`` (``begin <= t < end``,
    ``(t - begin) % update_every == 0``) which take the dense weight gradient
    and no sparse step: ``2 f_S + f_D`` (RigL paper, appendix: on average
    ``(3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1)`` when the update step is extra;
    here it counts among ``steps``).
  * ``'gmp'``: ``3 Σ_l (1 - s_l(t)) F_l``, with ``s_l(t)`` the Zhu-Gupta
    sparsity ``s_l + (s_i - s_l)(1 - p)³`` set at the last pruning step
    ``t' < t`` (``p = (t' - begin) / (end - begin)``; pruning at
    ``begin + k·update_every <= end`` and at ``end``; dense before the first),
    ``s_l = 1 - d_l`` the final sparsities, ``s_i = initial_sparsity``.

  ``optimizer``: ``'base'`` and ``'s2sam'`` cost one forward-backward per
  step (S2-SAM's extra work is element-wise); ``'sam'`` costs two, so every
  step is doubled.

  Args:
    forward_flops: ``{path: dense forward FLOPs}`` (finite, ``>= 0``), paths
      as :func:`path_str` writes them; add e.g. ``'other'`` for non-layer
      FLOPs.
    densities: ``{path: density}``, a ``layer_densities`` tree or a mask tree
      (the active fraction per leaf; array leaves must be masks: ``bool`` or
      exactly 0 and 1); ``None`` entries and missing paths are dense. Every
      density must name a path in ``forward_flops``.
    method: one of :data:`METHODS`.
    optimizer: one of ``'base'``, ``'s2sam'``, ``'sam'``.
    steps: number of training steps ``>= 1``.
    update_every, begin_step, end_step: RigL's update schedule and GMP's
      pruning schedule (``end_step=None``: RigL updates to the last step;
      GMP requires it).
    initial_sparsity: GMP's ``s_i``.

  Example:
    >>> est = training_flops({'conv': 100.0, 'fc': 10.0}, {'conv': 0.1, 'fc': 1.0},
    ...                      method='static', optimizer='sam', steps=10)
    >>> est.forward_sparse, est.total, round(est.relative_to_dense, 4)
    (20.0, 1200.0, 0.3636)
  """
  flops = _check_flops_args(forward_flops, method, optimizer, steps, update_every, begin_step)
  dens = {} if densities is None or method == "dense" else _density_by_path(densities)
  unknown = sorted(set(dens) - set(flops))
  if unknown:
    raise ValueError(f"`densities` names layers missing from `forward_flops`: {unknown}.")
  f_dense = sum(flops.values())
  f_sparse = sum(f * dens.get(k, 1.0) for k, f in flops.items())

  if method in ("dense",) + SPARSE_COST_METHODS:
    per_step = 3.0 * (f_dense if method == "dense" else f_sparse)
    total = per_step * steps
  elif method == "rigl":
    total = _rigl_total(f_dense, f_sparse, steps, update_every, begin_step, end_step)
  else:
    total = _gmp_total(flops, dens, steps, update_every, begin_step, end_step, initial_sparsity)
  if optimizer == "sam":
    total *= 2.0
  return FlopsEstimate(method, optimizer, int(steps), f_dense, f_sparse, float(total))


def _check_flops_args(forward_flops, method, optimizer, steps, update_every, begin_step) -> dict:
  """Checks :func:`training_flops`' arguments; ``forward_flops`` as floats."""
  _checks.check_choice(method, "method", METHODS)
  _checks.check_choice(optimizer, "optimizer", SAM_OPTIMIZERS)
  _checks.check_int(steps, "steps", 1)
  _checks.check_int(update_every, "update_every", 1)
  _checks.check_int(begin_step, "begin_step", 0)
  flops = {k: _checks.as_real(v) for k, v in forward_flops.items()}
  if not flops or not all(v is not None and math.isfinite(v) and v >= 0 for v in flops.values()):
    raise ValueError(
      f"`forward_flops` must map layer paths to finite FLOPs >= 0; got {forward_flops!r}."
    )
  return flops


def _rigl_total(f_dense, f_sparse, steps, update_every, begin, end):
  """RigL: ``2 f_S + f_D`` on update steps (RigL's rule), ``3 f_S`` otherwise."""
  _checks.check_step_range(begin, end, end_required=False)
  t = np.arange(steps)
  stop = steps if end is None else end
  n_updates = int(np.sum(periodic_update_steps(update_every, begin, stop)(t)))
  return (steps - n_updates) * 3.0 * f_sparse + n_updates * (2.0 * f_sparse + f_dense)


def _gmp_total(flops, dens, steps, update_every, begin, end, initial_sparsity):
  """GMP: ``3 Σ_l (1 - s_l(t')) F_l``, ``t'`` the last pruning step before ``t``."""
  if end is None:
    raise ValueError(f"method='gmp' needs `end_step` (an integer > begin_step={begin}).")
  check_gmp_schedule(initial_sparsity, begin, end)
  prune_steps = np.asarray(gmp_pruning_steps(update_every, begin, end))
  t = np.arange(steps)
  last = np.searchsorted(prune_steps, t, side="left") - 1  # last pruning step < t
  pruned = last >= 0
  cube = gmp_remaining(prune_steps[np.maximum(last, 0)], begin, end)
  masked_flops = sum(flops[k] for k in dens)
  final_pruned_flops = sum(flops[k] * (1.0 - d) for k, d in dens.items())
  # Σ_l s_l(t) F_l = (1 - cube) Σ_l s_l F_l + cube · s_i Σ_l F_l over masked layers
  removed = np.where(
    pruned, (1 - cube) * final_pruned_flops + cube * initial_sparsity * masked_flops, 0.0
  )
  return float(np.sum(3.0 * (sum(flops.values()) - removed)))
