"""MEST: elastic mutation (EM) and EM with soft memory bound (EM&S).

Yuan et al., "MEST: Accurate and Fast Memory-Economic Sparse Training
Framework on the Edge", NeurIPS 2021, arXiv:2110.14032.

Each masked layer ``l`` (``N_l`` weights, target count ``c_l``, the number of
active weights at init) is mutated every ``update_every`` steps, **including
step 0** (MEST's ``prune_utils/retrain.py``, ``SparseTraining.update_mask``;
the S2-SAM copy in jjsrf/SSAM-NEURIPS2024). The bounds move in phases: phase
``k`` is the number of ``decay_steps`` already reached. With sparsity offsets
``δL_k`` (prune-to) and ``δU_k`` (grow-to), as fractions of the **layer size**::

    prune: keep the  min(n_active, c_l − round(δL_k N_l))  active weights of largest |w|
    grow:  add random inactive entries (just-pruned ones included) until
           c_l − round(δU_k N_l) weights are active; new weights start at 0

The offsets are the S2-SAM authors' profiles (jjsrf/SSAM-NEURIPS2024,
``profiles/{resnet32_LTH,vgg19_LTH}/irregular/*.yaml``), kept in
:data:`PROFILES` as the yaml writes them (sparsity ``s`` -> lower bounds
``L_k``, upper bounds ``U_k``; ``δL = L − s``, ``δU = U − s``):

* ``variant='em'`` (MEST EM, profile ``without``): prune below the target,
  regrow back to it; at 90 % ``δL = (0.02, 0.01, 0)``, ``δU = 0``.
* ``variant='ems'`` (EM&S, profile ``with``): prune to the target, grow above
  it (the soft memory bound); at 90 % ``δL = 0``, ``δU = (−0.05, −0.025, 0)``.

The offsets shrink at high sparsity (ResNet-32 at 98 %: ``δL = (0.002,
0.001, 0)``, 10 % of the active weights): the 90 % offsets would prune a
2 %-dense layer to nothing. Without explicit offsets :func:`mest` takes
:func:`profile_offsets` for its sparsity, and ``init`` refuses offsets that
would leave a layer with no active weight or more than it has.

Choices: exact top-k counts instead of MEST's percentile threshold (which can
be off by ties); "active" is the stored mask, not ``w != 0``; the gradient
step is taken on update iterations, after the mutation (MEST mutates before an
epoch's first batch); the inner state of dropped and grown weights is zeroed
(MEST leaves it: under its masked-gradient SGD the buffers of inactive weights
decay).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from s2sam_jax import _checks, _masks
from s2sam_jax.sparse import _wrapper

VARIANTS = ("em", "ems")
PROFILE_MODELS = ("resnet32", "vgg19")
_PROFILE_SUFFIX = {"em": "without", "ems": "with"}
_PROFILE_STEM = {"resnet32": "resnet32_LTH/irregular/resnet", "vgg19": "vgg19_LTH/irregular/vgg"}


def _pattern(variant: str, s: float):
  """The bounds most profiles follow (every level up to 0.95)."""
  if variant == "em":
    low, up = (s + 0.02, s + 0.01, s), (s, s, s)
  else:
    low, up = (s, s, s), (s - 0.05, s - 0.025, s)
  return tuple(round(v, 4) for v in low), tuple(round(v, 4) for v in up)


def _build_profiles():
  table = {}
  for model in PROFILE_MODELS:
    for variant in VARIANTS:
      for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        table[model, variant, s] = _pattern(variant, s)
  table["resnet32", "em", 0.98] = ((0.982, 0.981, 0.98), (0.98, 0.98, 0.98))
  table["resnet32", "ems", 0.98] = ((0.98, 0.98, 0.98), (0.93, 0.96, 0.98))
  table["vgg19", "em", 0.98] = ((0.99, 0.985, 0.98), (0.98, 0.98, 0.98))
  table["vgg19", "ems", 0.98] = ((0.98, 0.98, 0.98), (0.93, 0.955, 0.98))
  return table


# ``(model, variant, sparsity) -> (lower bounds, upper bounds)``, three phases.
# The repository has no ``resnet_0.9_{with,without}.yaml`` (the ones its
# scripts name) and no VGG-19 ``with`` profile below 0.95; those entries
# follow the pattern of all the others (:func:`profile_file` returns None).
PROFILES = _build_profiles()


def profile_file(model: str, variant: str, sparsity: float) -> str | None:
  """The authors' yaml a :data:`PROFILES` entry was read from, or None where
  the repository has no such file (the entry follows the pattern)."""
  if (model == "resnet32" and sparsity == 0.9) or (
    model == "vgg19" and variant == "ems" and sparsity < 0.95
  ):
    return None
  return f"profiles/{_PROFILE_STEM[model]}_{sparsity:g}_{_PROFILE_SUFFIX[variant]}.yaml"


def profile_offsets(variant: str, sparsity: float, model: str = "resnet32"):
  """``(prune_offsets, grow_offsets)`` of the authors' profile nearest to
  ``sparsity`` (on a tie, the sparser one) for ``model``.

  Example:
    >>> from s2sam_jax import sparse
    >>> sparse.mest_profile_offsets("em", 0.98)
    ((0.002, 0.001, 0.0), (0.0, 0.0, 0.0))
    >>> sparse.mest_profile_offsets("ems", 0.98, model="vgg19")
    ((0.0, 0.0, 0.0), (-0.05, -0.025, 0.0))
  """
  _checks.check_choice(variant, "variant", VARIANTS)
  _checks.check_choice(model, "model", PROFILE_MODELS)
  sparsity = _checks.check_sparsity(sparsity)
  levels = sorted(s for (m, v, s) in PROFILES if m == model and v == variant)
  nearest = min(levels, key=lambda s: (abs(s - sparsity), -s))
  low, up = PROFILES[model, variant, nearest]
  return (
    tuple(round(b - nearest, 6) + 0.0 for b in low),
    tuple(round(b - nearest, 6) + 0.0 for b in up),
  )


class MESTState(NamedTuple):
  """State of :func:`mest`.

  Attributes:
    count, masks, inner_state: as :class:`SparseState`.
    key: raw ``uint32`` PRNG key for random growth.
    target_counts: ``c_l`` per masked leaf (int32 scalar; None for dense).
    bound_deltas: per masked leaf, int32 ``(2, phases)``: ``round(δL_k N_l)``
      and ``round(δU_k N_l)`` (None for dense).
  """

  count: jax.Array
  masks: _masks.MaskTree
  inner_state: optax.OptState
  key: jax.Array
  target_counts: _masks.MaskTree
  bound_deltas: _masks.MaskTree


def _check_offsets(offsets, name, n_phases):
  try:
    values = tuple(float(v) for v in offsets)
  except TypeError:
    raise ValueError(f"`{name}` must be a sequence of floats; got {offsets!r}.") from None
  if len(values) != n_phases:
    raise ValueError(
      f"`{name}` must have len(decay_steps) + 1 = {n_phases} "
      f"entries (one per phase); got {len(values)}."
    )
  if any(not -1.0 <= v <= 1.0 for v in values):
    raise ValueError(f"`{name}` entries must be in [-1, 1]; got {values}.")
  return values


def phase(count, decay_steps: Sequence[int]):
  """Number of ``decay_steps`` reached at step ``count`` (int32)."""
  k = jnp.zeros([], jnp.int32)
  for s in decay_steps:
    k = k + (count >= s).astype(jnp.int32)
  return k


def bound_deltas(size: int, prune_offsets, grow_offsets) -> jax.Array:
  """``[[round(δL_k N)], [round(δU_k N)]]`` for a layer of ``N = size``."""
  return jnp.asarray(
    [[round(d * size) for d in prune_offsets], [round(d * size) for d in grow_offsets]], jnp.int32
  )


def bounds(target_count, size: int, k, deltas):
  """``(prune-to count, grow-to count)`` of a layer in phase ``k``."""
  keep = jnp.clip(target_count - deltas[0, k], 0, size)
  grow_to = jnp.clip(target_count - deltas[1, k], 0, size)
  return keep, grow_to


def _realised_sparsity(masks) -> float:
  """Overall sparsity of the masked leaves of a concrete mask tree."""
  leaves = jax.tree.leaves(masks)
  if any(isinstance(m, jax.core.Tracer) for m in leaves):
    raise ValueError(
      "mest: with `masks=` and no `prune_offsets`/`grow_offsets`, the default "
      "offsets depend on the masks' sparsity, which is unknown while `init` "
      "is traced (jit): call `init` outside jit or pass the offsets."
    )
  size = sum(m.size for m in leaves)
  return 1.0 - sum(int(jnp.sum(m)) for m in leaves) / max(size, 1)


def check_layer_bounds(masks, prune_offsets, grow_offsets) -> None:
  """Raises ``ValueError`` if a phase would leave a masked layer with no
  active weight (``c − round(δL_k N) < 1``) or more than it has
  (``c − round(δU_k N) > N``), ``c`` its active weights. Traced masks
  (``init`` under jit) cannot be checked; their counts are clipped."""
  flat, _ = jax.tree_util.tree_flatten_with_path(masks, is_leaf=_masks.is_none)
  for path, m in flat:
    if m is None or isinstance(m, jax.core.Tracer):
      continue
    size, count = _wrapper.leaf_size(m), int(jnp.sum(m))
    name = _masks.path_str(path)
    for k, (low, up) in enumerate(zip(prune_offsets, grow_offsets)):
      keep, grow_to = count - round(low * size), count - round(up * size)
      if keep < 1:
        raise ValueError(
          f"mest: prune_offsets[{k}] = {low} would prune layer {name!r} "
          f"({count} of {size} weights active) to {max(keep, 0)} active "
          f"weights; it must be below the layer's density {count / size:.4g} "
          "(sparse.mest_profile_offsets gives the authors' offsets per sparsity)."
        )
      if grow_to > size:
        raise ValueError(
          f"mest: grow_offsets[{k}] = {up} would grow layer {name!r} "
          f"({count} of {size} weights active) to {grow_to} > {size} "
          "active weights."
        )


def mest(
  inner: optax.GradientTransformation,
  masks: _wrapper.MasksOrFn | None = None,
  *,
  sparsity: float | None = None,
  variant: str = "em",
  update_every: int,
  decay_steps: Sequence[int] = (),
  prune_offsets: Sequence[float] | None = None,
  grow_offsets: Sequence[float] | None = None,
  end_step: int | None = None,
  key: int | jax.Array = 0,
  mask_gradients: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """MEST EM / EM&S around any optax transformation (math in the module doc).

  Args:
    inner: any optax transformation; extra args are forwarded to it.
    masks: the initial masks, as :func:`rigl` takes them (MEST and S2-SAM
      start from magnitude pruning of the init: a function ``params ->
      masks`` calling :func:`magnitude_masks`).
    sparsity: instead of ``masks``, shorthand for
      ``masks=random_init(sparsity, 'uniform')``.
    variant: ``'em'`` or ``'ems'``.
    update_every: steps between mutations (S2-SAM: 5 epochs), ``>= 1``.
    decay_steps: increasing steps where the next phase starts (S2-SAM: epochs
      100 and 130, in steps). The default offsets need exactly two.
    prune_offsets: ``δL_k``, one per phase, fractions of the layer size.
      ``None``: :func:`profile_offsets` (ResNet-32 profiles) of the random
      masks' ``sparsity``, or else of the masks' overall sparsity at ``init``
      (``δU`` limited to ``-sparsity``: EM&S grows at most to dense).
    grow_offsets: ``δU_k``, one per phase, ``δU_k <= δL_k``; ``None`` as
      ``prune_offsets``.
    end_step: last mutation step (inclusive); ``None``: never stop (updates
      in the last phase of EM are no-ops once the bounds are equal).
    key, mask_gradients: as :func:`rigl` (``key``'s second half seeds the
      growth).

  Returns:
    ``GradientTransformationExtraArgs`` with state :class:`MESTState`. Its
    ``init`` raises ``ValueError`` naming the offset and the layer where a
    phase would leave a layer with no active weight or more than it has.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> params = {'w': jnp.ones((10, 10))}
    >>> tx = sparse.mest(optax.sgd(0.1), sparsity=0.9, variant='ems',
    ...                  update_every=5, decay_steps=(10, 20))
    >>> state = tx.init(params)
    >>> u, state = tx.update({'w': jnp.ones((10, 10))}, state,
    ...                      sparse.apply_masks(params, state))
    >>> int(state.masks['w'].sum())   # 10 + 5% of 100 above the target
    15
  """
  source = _wrapper.mask_source(masks, sparsity, key, distribution="uniform")
  _checks.check_choice(variant, "variant", VARIANTS)
  schedule = _check_schedule(
    variant, update_every, decay_steps, end_step, prune_offsets, grow_offsets
  )
  # Known now, unless the defaults depend on the masks that init makes.
  level = source.sparsity
  offsets = schedule.offsets(level) if level is not None or not schedule.defaults else None

  def init(params):
    tree, state_key = source.init_with_state_key(params)
    low, up = offsets or schedule.offsets(_realised_sparsity(tree))
    return tree, _initial_extras(tree, low, up, state_key)

  topology = _wrapper.Topology(
    is_update_step=schedule.is_update_step,
    update=functools.partial(_mutate, schedule.decay_steps),
    skip_inner_step=False,
  )
  return _wrapper.sparse_wrapper(
    inner, state_cls=MESTState, init=init, topology=topology, mask_gradients=mask_gradients
  )


class _Schedule(NamedTuple):
  """:func:`mest`'s checked schedule: when to mutate, and the bounds."""

  variant: str
  update_every: int
  decay_steps: tuple[int, ...]
  end_step: int | None
  prune_offsets: Sequence[float] | None
  grow_offsets: Sequence[float] | None

  @property
  def n_phases(self) -> int:
    return len(self.decay_steps) + 1

  @property
  def defaults(self) -> bool:
    """Whether an offset comes from the authors' profiles."""
    return self.prune_offsets is None or self.grow_offsets is None

  def is_update_step(self, t):
    ok = t % self.update_every == 0
    return ok if self.end_step is None else ok & (t <= self.end_step)

  def offsets(self, level: float | None):
    """``(δL, δU)``: the given offsets, else the profile's at sparsity
    ``level``, growing at most to dense; checked."""
    default_prune = default_grow = None
    if self.defaults:
      default_prune, default_grow = profile_offsets(self.variant, level)
      default_grow = tuple(max(u, -level) for u in default_grow)
    low = self.prune_offsets if self.prune_offsets is not None else default_prune
    up = self.grow_offsets if self.grow_offsets is not None else default_grow
    low = _check_offsets(low, "prune_offsets", self.n_phases)
    up = _check_offsets(up, "grow_offsets", self.n_phases)
    if any(u > l for l, u in zip(low, up)):
      raise ValueError(
        f"`grow_offsets` must be <= `prune_offsets` phase-wise "
        f"(grow back at most to the pruned level); got "
        f"{up} vs {low}."
      )
    return low, up


def _check_schedule(variant, update_every, decay_steps, end_step, prune_offsets, grow_offsets):
  _checks.check_int(update_every, "update_every", 1)
  decay_steps = tuple(decay_steps)
  for s in decay_steps:
    _checks.check_int(s, "decay_steps", 0)
  if list(decay_steps) != sorted(set(decay_steps)):
    raise ValueError(f"`decay_steps` must be strictly increasing; got {decay_steps}.")
  if end_step is not None:
    _checks.check_int(end_step, "end_step", 0)
  schedule = _Schedule(variant, update_every, decay_steps, end_step, prune_offsets, grow_offsets)
  if schedule.defaults and schedule.n_phases != 3:
    raise ValueError(
      f"The default offsets of variant={variant!r} have 3 phases: give "
      f"`decay_steps` two steps, or give `prune_offsets` and `grow_offsets` "
      f"with len(decay_steps) + 1 = {schedule.n_phases} entries; got "
      f"decay_steps={decay_steps}."
    )
  return schedule


def _initial_extras(masks, prune_offsets, grow_offsets, state_key) -> dict:
  """:class:`MESTState`'s own fields at init, the bounds checked per layer."""
  check_layer_bounds(masks, prune_offsets, grow_offsets)
  return {
    "key": state_key,
    "target_counts": _masks.count_active(masks),
    "bound_deltas": _masks.per_layer(
      lambda m: bound_deltas(_wrapper.leaf_size(m), prune_offsets, grow_offsets), masks
    ),
  }


def _mutate(decay_steps, old_masks, params, grads, count, extras):
  """One mutation: per layer, prune to the phase's lower bound by ``|w|``, then
  grow at random (just-pruned entries included) to its upper bound."""
  del grads
  next_key, sub = jax.random.split(extras["key"])
  k = phase(count, decay_steps)

  def per_leaf(m, p, c, d, leaf_key):
    keep, grow_to = bounds(c, _wrapper.leaf_size(m), k, d)
    keep = jnp.minimum(keep, jnp.sum(m, dtype=jnp.int32))
    kept = _wrapper.keep_largest(p, m, keep)
    u = jax.random.uniform(leaf_key, m.shape)
    return kept | _wrapper.grow(kept, u, jnp.maximum(grow_to - keep, 0))

  new = _masks.per_layer(
    per_leaf, old_masks, params, extras["target_counts"], extras["bound_deltas"], key=sub
  )
  return new, dict(extras, key=next_key)
