"""Gradual magnitude pruning (GMP).

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
for model compression", ICLR 2018 workshop, arXiv:1710.01878 (its eq. 1).
jaxpruner's ``PolynomialSchedule`` (google-research/jaxpruner
``jaxpruner/sparsity_schedules.py``) is the same cubic with ``s_i = 0``,
its progress counted from ``t + 1``.

Training starts dense (masks all True on the prunable leaves). Every
``update_every`` steps ``t`` in ``[begin_step, end_step]`` (and at
``end_step`` itself), each masked layer ``l`` is pruned by magnitude to the sparsity::

    s_l(t) = s_l + (s_i − s_l) · (1 − (t − t0) / (n Δt))³,   n Δt = end − t0

i.e. it keeps the ``round((1 − s_l(t)) N_l)`` active weights of largest ``|w|``
(never regrowing: counts only decrease). ``s_l`` is layer ``l``'s final
sparsity from ``distribution`` (Zhu & Gupta prune every layer to the same
``s_f``: ``'uniform'``, the default), ``s_i`` = ``initial_sparsity``. The
mask is frozen after ``end_step``. The inner state of pruned weights is
zeroed; the gradient step is taken on pruning steps, with the new masks.
Keep counts are exact: ``count_for_density(N_l, 1 − s_l(t))`` (round half
to even, float64), tabulated on the host for every pruning step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2sam_jax import _checks, _masks
from s2sam_jax.sparse import _wrapper, distributions


def gmp_remaining(t, begin_step: int, end_step: int, xp=np):
  """``(1 − p)³`` with ``p = clip((t − t0)/(end − t0), 0, 1)``: the part of
  the pruning still ahead at step ``t`` (1 up to ``t0``, 0 from ``end``).

  The one formula of the schedule: ``xp=numpy`` on the host in float64 (``t``
  a number or an array), ``xp=jax.numpy`` with a float32 ``t`` (may be traced).
  """
  p = xp.clip((t - begin_step) / float(end_step - begin_step), 0.0, 1.0)
  return (1.0 - p) ** 3


def gmp_pruning_steps(update_every: int, begin_step: int, end_step: int) -> list[int]:
  """The pruning steps ``t0, t0 + Δt, ... (< end), end``."""
  n_updates = -(-(end_step - begin_step) // update_every)  # ceil
  return [min(begin_step + j * update_every, end_step) for j in range(n_updates + 1)]


def check_gmp_schedule(initial_sparsity, begin_step, end_step, final_sparsity=None) -> None:
  """``ValueError`` unless the sparsities are in ``[0, 1)`` (``s_i <= s_f``
  when ``final_sparsity`` is given) and ``end_step > begin_step >= 0``."""
  if final_sparsity is not None:
    _checks.check_sparsity(final_sparsity, "final_sparsity")
  _checks.check_sparsity(initial_sparsity, "initial_sparsity")
  _checks.check_step_range(begin_step, end_step, end_required=True)


def gmp_sparsity(t, final_sparsity, initial_sparsity, begin_step, end_step):
  """``s_f + (s_i − s_f)(1 − p)³`` with ``p = clip((t − t0)/(end − t0), 0, 1)``.

  ``final_sparsity`` and ``initial_sparsity`` must be in ``[0, 1)`` and
  ``end_step > begin_step >= 0`` (integers), else ``ValueError`` (``end_step
  == begin_step`` would divide by zero); ``t`` may be traced.

  Example:
    >>> round(float(gmp_sparsity(50, 0.9, 0.0, 0, 100)), 4)
    0.7875
  """
  check_gmp_schedule(initial_sparsity, begin_step, end_step, final_sparsity)
  remaining = gmp_remaining(jnp.asarray(t, jnp.float32), begin_step, end_step, jnp)
  return final_sparsity + (initial_sparsity - final_sparsity) * remaining


def gmp_sparsity_np(t, final_sparsity, initial_sparsity, begin_step, end_step):
  """:func:`gmp_sparsity` in float64 on the host."""
  remaining = gmp_remaining(t, begin_step, end_step)
  return final_sparsity + (initial_sparsity - final_sparsity) * remaining


def gmp(
  inner: optax.GradientTransformation,
  sparsity: float,
  *,
  end_step: int,
  update_every: int = 100,
  begin_step: int = 0,
  initial_sparsity: float = 0.0,
  distribution: str = "uniform",
  power: float = 1.0,
  overrides: Mapping[str, float] | None = None,
  prunable: distributions.Prunable = distributions.default_prunable,
  mask_gradients: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Gradual magnitude pruning around any optax transformation.

  Args:
    inner: any optax transformation; extra args are forwarded to it.
    sparsity: final global sparsity ``s_f`` in ``[0, 1)``.
    end_step: step at which the final sparsity is reached (> begin_step).
    update_every: ``Δt >= 1`` steps between pruning steps.
    begin_step: ``t0 >= 0``, the first pruning step.
    initial_sparsity: ``s_i`` in ``[0, 1)``, ``<= sparsity``.
    distribution, power, overrides, prunable: per-layer final sparsities, see
      :func:`layer_densities`.
    mask_gradients: mask the gradient given to ``inner``.

  Returns:
    ``GradientTransformationExtraArgs`` with state :class:`SparseState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from s2sam_jax import sparse
    >>> params = {'w': jnp.arange(1., 101.).reshape(10, 10)}
    >>> tx = sparse.gmp(optax.sgd(0.0), 0.9, end_step=10, update_every=5)
    >>> state, p = tx.init(params), params
    >>> for _ in range(11):
    ...   u, state = tx.update({'w': jnp.zeros((10, 10))}, state, p)
    ...   p = optax.apply_updates(p, u)
    >>> int(state.masks['w'].sum()), float(p['w'][0, 9]), float(p['w'][9, 9])
    (10, 0.0, 100.0)
  """
  sparsity = _checks.check_sparsity(sparsity)
  initial_sparsity = _checks.check_sparsity(initial_sparsity, "initial_sparsity")
  if initial_sparsity > sparsity:
    raise ValueError(f"`initial_sparsity` must be <= sparsity={sparsity}; got {initial_sparsity}.")
  distributions.check_distribution(distribution)
  distributions.check_power(power)
  distributions.check_overrides(overrides)
  _checks.check_int(update_every, "update_every", 1)
  _checks.check_step_range(begin_step, end_step, end_required=True)

  schedule = _Pruning(update_every, begin_step, end_step, initial_sparsity)

  def final_densities(params):
    # From shapes only, so a state restored from a checkpoint needs nothing else.
    return distributions.layer_densities(
      params, sparsity, distribution, power=power, overrides=overrides, prunable=prunable
    )

  def init(params):
    all_true = lambda d, p: jnp.ones(jnp.shape(p), bool)  # d: the layer's final density
    return _masks.per_layer(all_true, final_densities(params), params), {}

  def update(old_masks, params, grads, count, extras):
    del grads
    return schedule.prune(old_masks, params, final_densities(params), count), extras

  topology = _wrapper.Topology(
    is_update_step=schedule.is_update_step, update=update, skip_inner_step=False
  )
  return _wrapper.sparse_wrapper(
    inner,
    state_cls=_wrapper.SparseState,
    init=init,
    topology=topology,
    mask_gradients=mask_gradients,
  )


class _Pruning(NamedTuple):
  """:func:`gmp`'s checked schedule: when to prune, and to how many weights."""

  update_every: int
  begin_step: int
  end_step: int
  initial_sparsity: float

  def is_update_step(self, t):
    in_range = (t >= self.begin_step) & (t <= self.end_step)
    on_period = (t - self.begin_step) % self.update_every == 0
    return in_range & (on_period | (t == self.end_step))

  def keep_table(self, size: int, density: float) -> jax.Array:
    """Exact keep counts on the host (float64, round half to even), one per
    pruning step, for a layer of ``size`` weights at final ``density``."""
    steps = gmp_pruning_steps(self.update_every, self.begin_step, self.end_step)
    s_i, t0, end = self.initial_sparsity, self.begin_step, self.end_step
    return jnp.asarray(
      [
        distributions.count_for_density(
          size, 1.0 - float(gmp_sparsity_np(t, 1.0 - density, s_i, t0, end))
        )
        for t in steps
      ],
      jnp.int32,
    )

  def prune(self, masks, params, final_densities, count):
    """Per layer: keep the active weights of largest ``|w|``, as many as the
    schedule allows at step ``count`` (never more than are active)."""
    n_updates = len(gmp_pruning_steps(self.update_every, self.begin_step, self.end_step)) - 1
    j = jnp.where(count >= self.end_step, n_updates, (count - self.begin_step) // self.update_every)

    def per_leaf(m, p, d):
      keep = self.keep_table(_wrapper.leaf_size(m), d)[j]
      return _wrapper.keep_largest(p, m, jnp.minimum(keep, jnp.sum(m, dtype=jnp.int32)))

    return _masks.per_layer(per_leaf, masks, params, final_densities)
