"""Layer-wise sparsity distributions: uniform, Erdős–Rényi (ER) and ERK.

Densities are computed on the host with NumPy from shapes alone, so they work
on arrays and on ``jax.ShapeDtypeStruct`` leaves alike, before any mask exists.

ER is SET's distribution (Mocanu et al., "Scalable training of artificial
neural networks with adaptive sparse connectivity inspired by network
science", Nature Communications 2018, arXiv:1707.04780) and ERK its extension
to convolutions in RigL (Evci et al., "Rigging the Lottery: Making All Tickets
Winners", ICML 2020, arXiv:1911.11134); the solver below is RigL's
(google-research/rigl ``rigl/sparse_utils.py``, ``get_sparsities_erdos_renyi``).
Notation: ``N_l`` weights in layer ``l``, global target sparsity ``S``,
density ``d_l = 1 - s_l``.

* **uniform**: ``d_l = 1 - S`` for every non-custom prunable layer.
* **ER**: raw score ``p_l = ((n_in + n_out) / (n_in * n_out)) ** power`` from
  the last two dims of the kernel (Flax layout ``(kh, kw, c_in, c_out)`` or
  ``(n_in, n_out)``).
* **ERK**: ``p_l = (sum(shape) / prod(shape)) ** power``.

For ER/ERK the scale ``eps`` solves, with a set ``D`` of layers capped at
density 1 (start ``D = {}``)::

    rhs = sum_{l free} (N_l - floor(S N_l)) - sum_{l in D} floor(S N_l)
    eps = rhs / sum_{l free} p_l N_l
    if max_{l free} eps p_l > 1: add every free layer with p_l == max to D; repeat

and ``d_l = eps p_l`` for free layers, ``1`` for layers in ``D``. ``power=1``
is RigL's ERK; RigL's code applies ``power`` (``erk_power_scale``) to ERK
only, here it scales the ER score too (``power=0`` gives uniform in both).

*Custom layers* (``overrides``) get ``d_l = 1 - C_l`` and are excluded from the
budget. A custom sparsity of exactly ``0.0`` means *not masked*: the density is
``None``, like a non-prunable leaf, so sparse wrappers leave that layer dense.

Counts: a layer of ``n`` weights at density ``d`` keeps exactly
``count_for_density(n, d) = round(d * n)`` weights (round half to even).
The budget check: the kept counts of the non-custom layers sum to the uniform
budget ``sum_l count_for_density(N_l, 1 - S)`` up to per-layer rounding (at
most ``1.5`` weights per layer: ``0.5`` for rounding ``d_l N_l`` and ``1`` for
RigL's ``floor(S N_l)`` in ``rhs``); :func:`layer_densities` checks it.

Example:
  >>> import jax, jax.numpy as jnp
  >>> params = {'conv': jnp.zeros((3, 3, 16, 32)), 'bias': jnp.zeros(32),
  ...           'fc': jnp.zeros((32, 10))}
  >>> d = layer_densities(params, 0.9, 'erk')
  >>> d['bias'] is None, round(d['conv'], 4), round(d['fc'], 4)
  (True, 0.0602, 0.674)
  >>> masks = random_masks(jax.random.key(0), params, d)
  >>> int(masks['conv'].sum()) == count_for_density(3 * 3 * 16 * 32, d['conv'])
  True
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from s2sam_jax import _checks, _masks

DISTRIBUTIONS = ("uniform", "er", "erk")

Prunable = Callable[[Any, Any], bool]

path_str = _masks.path_str


def default_prunable(path, leaf) -> bool:
  """``True`` for array leaves of rank >= 2 (conv and dense kernels)."""
  del path
  return hasattr(leaf, "shape") and len(leaf.shape) >= 2


def count_for_density(n: int, density: float) -> int:
  """Exact number of weights kept in a layer of ``n`` weights at ``density``.

  ``round(density * n)`` with round half to even (Python's ``round``), computed
  in float64; e.g. ``count_for_density(5, 0.5) == 2``, ``(7, 0.5) -> 4``.
  """
  n = int(n)
  if n < 0:
    raise ValueError(f"`n` must be >= 0; got {n}.")
  density = _checks.check_density(density)
  return int(round(density * n))


def check_distribution(distribution) -> str:
  """One of :data:`DISTRIBUTIONS`, else ``ValueError`` naming `distribution`."""
  return _checks.check_choice(distribution, "distribution", DISTRIBUTIONS)


def compile_pattern(pattern, name: str) -> "re.Pattern":
  """``re.compile(pattern)``, or ``ValueError`` naming ``name`` and the pattern."""
  if not isinstance(pattern, str):
    raise ValueError(
      f"`{name}` keys must be regex strings; got {pattern!r} ({type(pattern).__name__})."
    )
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"`{name}` has an invalid regex {pattern!r}: {e}.") from None


def check_overrides(overrides, name: str = "overrides") -> dict:
  """``overrides`` as ``{compiled regex: sparsity}``, checked.

  Raises ``ValueError`` naming ``name`` for a mapping that is not one, a key
  that is not a valid regex, or a sparsity outside ``[0, 1)``. ``None`` is
  ``{}``.
  """
  if overrides is None:
    return {}
  try:
    items = list(dict(overrides).items())
  except (TypeError, ValueError):
    raise ValueError(
      f"`{name}` must be a mapping {{regex: sparsity}}; got {overrides!r}."
    ) from None
  return {
    compile_pattern(pattern, name): _checks.check_sparsity(value, f"{name}[{pattern!r}]")
    for pattern, value in items
  }


def check_power(power) -> float:
  """``power`` as a finite float ``>= 0``, else ``ValueError``."""
  value = _checks.as_real(power)
  if value is None or not (value >= 0.0 and math.isfinite(value)):
    raise ValueError(f"`power` must be a finite float >= 0; got {power!r}.")
  return value


def _override_for(path: str, overrides) -> float | None:
  for pattern, value in overrides.items():
    if pattern.search(path):
      return value
  return None


def _raw_score(shape, distribution: str, power: float, path: str) -> float:
  if distribution == "er":
    if len(shape) < 2:
      raise ValueError(
        f"distribution='er' needs kernels of rank >= 2 (it reads the last two "
        f"dims); the prunable leaf {path!r} has shape {tuple(shape)}."
      )
    n_in, n_out = shape[-2], shape[-1]
    score = (n_in + n_out) / (n_in * n_out)
  else:
    score = float(np.sum(shape)) / float(np.prod(shape, dtype=np.float64))
  return float(score) ** power


def _solve_scale(sizes, scores, sparsity):
  """Returns (eps, set of capped indices) for the ER/ERK budget equation."""
  capped = set()
  while True:
    free = [i for i in range(len(sizes)) if i not in capped]
    if not free:
      return 0.0, capped
    rhs = sum(sizes[i] - math.floor(sparsity * sizes[i]) for i in free) - sum(
      math.floor(sparsity * sizes[i]) for i in capped
    )
    div = sum(scores[i] * sizes[i] for i in free)
    eps = rhs / div
    max_score = max(scores[i] for i in free)
    if eps * max_score > 1.0:
      capped.update(i for i in free if scores[i] == max_score)
    else:
      return eps, capped


def layer_densities(
  params,
  sparsity: float,
  distribution: str = "erk",
  *,
  power: float = 1.0,
  overrides: Mapping[str, float] | None = None,
  prunable: Prunable = default_prunable,
):
  """Per-layer densities: a float per prunable leaf, ``None`` elsewhere.

  Args:
    params: params tree (arrays or ``jax.ShapeDtypeStruct``); only shapes are read.
    sparsity: global target ``S`` in ``[0, 1)`` over the non-custom prunable leaves.
    distribution: ``'uniform'``, ``'er'`` or ``'erk'`` (see module docstring).
    power: exponent on the ER/ERK raw scores (``erk_power_scale``), >= 0.
    overrides: ``{regex: sparsity}``; a prunable leaf whose :func:`path_str`
      matches a regex (``re.search``, first match in mapping order wins) gets
      that fixed sparsity and is excluded from the budget. ``0.0`` leaves it
      unmasked (density ``None``). An invalid regex (or a key that is not a
      string) is a ``ValueError`` naming ``overrides`` and the pattern.
    prunable: predicate ``prunable(path, leaf)``; default: rank >= 2 leaves.

  Returns:
    A tree of params' structure with Python floats in ``[0, 1]`` or ``None``
    (flatten it with ``is_leaf=lambda x: x is None``).

  Example:
    >>> import jax.numpy as jnp
    >>> p = {'stem': jnp.zeros((3, 3, 3, 16)), 'fc': jnp.zeros((16, 10))}
    >>> layer_densities(p, 0.5, 'uniform', overrides={'stem': 0.0})
    {'fc': 0.5, 'stem': None}
  """
  sparsity = _checks.check_sparsity(sparsity)
  check_distribution(distribution)
  power = check_power(power)
  overrides = check_overrides(overrides)

  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  densities = [None] * len(leaves_with_path)
  free_idx, sizes, scores = [], [], []
  for i, (path, leaf) in enumerate(leaves_with_path):
    if not prunable(path, leaf):
      continue
    name = path_str(path)
    shape = tuple(leaf.shape)
    custom = _override_for(name, overrides)
    if custom is not None:
      densities[i] = None if custom == 0.0 else 1.0 - float(custom)
      continue
    if len(shape) == 0:
      raise ValueError(
        f"`prunable` selected the scalar leaf {name!r}; prunable leaves must have rank >= 1."
      )
    free_idx.append(i)
    sizes.append(int(np.prod(shape)))
    scores.append(
      1.0 if distribution == "uniform" else _raw_score(shape, distribution, power, name)
    )

  if distribution == "uniform":
    for i in free_idx:
      densities[i] = 1.0 - sparsity
  else:
    eps, capped = _solve_scale(sizes, scores, sparsity)
    for j, i in enumerate(free_idx):
      densities[i] = 1.0 if j in capped else float(eps * scores[j])
  _check_budget([densities[i] for i in free_idx], sizes, sparsity)
  return jax.tree.unflatten(treedef, densities)


def _check_budget(densities, sizes, sparsity) -> None:
  kept = sum(count_for_density(n, d) for n, d in zip(sizes, densities))
  budget = sum(count_for_density(n, 1.0 - sparsity) for n in sizes)
  if abs(kept - budget) > 1.5 * len(sizes):
    raise RuntimeError(  # an invariant of the solver, not a user error
      f"layer densities keep {kept} weights, the uniform budget is {budget}."
    )


def random_masks(key, params, densities):
  """Uniformly random masks with exactly ``count_for_density(n, d)`` active.

  Args:
    key: a JAX PRNG key; each leaf gets its own subkey.
    params: params tree (arrays or shape structs).
    densities: tree from :func:`layer_densities` (float or ``None`` per leaf).

  Returns:
    Mask tree: bool array of the leaf's shape per float density, ``None``
    where the density is ``None``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> m = random_masks(jax.random.key(0), {'w': jnp.zeros((4, 5))}, {'w': 0.25})
    >>> int(m['w'].sum())
    5
  """
  density_leaves, density_def = jax.tree.flatten(densities, is_leaf=_masks.is_none)
  try:
    param_leaves = density_def.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"`densities` must have the structure of `params`; got a mismatch: {e}"
    ) from None
  keys = jax.random.split(key, max(len(density_leaves), 1))
  masks = []
  for k, d, p in zip(keys, density_leaves, param_leaves):
    if d is None:
      masks.append(None)
      continue
    shape = tuple(p.shape)
    n = int(np.prod(shape))
    keep = _random_top_k(k, _masks.bucket(n), n, count_for_density(n, d))
    masks.append(keep[:n].reshape(shape))  # jnp: traceable (init under jit, eval_shape)
  return jax.tree.unflatten(density_def, masks)


@functools.partial(jax.jit, static_argnums=1)
def _random_top_k(key, size, n, k):
  # uniform scores lie in [0, 1); the padding (index >= n) scores -1, ranks last
  scores = jnp.where(jnp.arange(size) < n, jax.random.uniform(key, (size,)), -1.0)
  return _masks.keep_top_k(scores, k)


@dataclasses.dataclass(frozen=True, eq=False)
class RandomInit:
  """Random initial masks as a function ``params -> mask tree`` (made by
  :func:`random_init`, which checks the fields).

  Calling it draws :func:`random_masks` with ``key`` (seed 0 when ``key`` is
  ``None``). Given as the initial masks of a sparse method with ``key=None``,
  the method's own ``key`` draws them instead (see :func:`random_init`).
  """

  sparsity: float
  distribution: str = "erk"
  key: jax.Array | None = None
  power: float = 1.0
  overrides: Mapping[str, float] | None = None
  prunable: Prunable = default_prunable

  def __call__(self, params):
    return self.draw(params, jax.random.PRNGKey(0) if self.key is None else self.key)

  def draw(self, params, key):
    """The masks for ``params`` with ``key`` (ignoring the stored one)."""
    densities = layer_densities(
      params,
      self.sparsity,
      self.distribution,
      power=self.power,
      overrides=self.overrides,
      prunable=self.prunable,
    )
    return random_masks(key, params, densities)


def random_init(
  sparsity: float,
  distribution: str = "erk",
  *,
  key=None,
  power: float = 1.0,
  overrides: Mapping[str, float] | None = None,
  prunable: Prunable = default_prunable,
) -> RandomInit:
  """Random initial masks at ``sparsity``: a function ``params -> masks``.

  Each prunable layer of ``n`` weights at density ``d_l`` (from
  :func:`layer_densities`) keeps exactly ``round(d_l n)`` uniformly random
  weights. Pass the result as the initial masks of any sparse method, or call
  it on params. Every argument is checked here (``ValueError`` naming it).

  Args:
    sparsity: global target in ``[0, 1)``.
    distribution: ``'uniform'``, ``'er'`` or ``'erk'``.
    key: int seed or JAX PRNG key for the masks. ``None`` (the default): the
      key of the sparse method the masks are given to, derived as with its
      ``sparsity=`` shorthand (:func:`static_masks` uses its ``key`` itself,
      the dynamic methods the first half of ``jax.random.split(key)``), so
      ``sparse.rigl(tx, sparse.random_init(0.9), key=k)`` is
      ``sparse.rigl(tx, sparsity=0.9, key=k)``; called directly, seed 0.
    power, overrides, prunable: see :func:`layer_densities`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> init = sparse.random_init(0.75, 'uniform', key=1)
    >>> int(init({'w': jnp.ones((4, 4))})['w'].sum())
    4
    >>> tx = sparse.static_masks(optax.sgd(0.1), init)
  """
  _checks.check_sparsity(sparsity)
  check_distribution(distribution)
  check_power(power)
  check_overrides(overrides)
  if not callable(prunable):
    raise ValueError(f"`prunable` must be a function (path, leaf) -> bool; got {prunable!r}.")
  key = None if key is None else _checks.raw_key(key)
  return RandomInit(sparsity, distribution, key, power, overrides, prunable)
