"""Iterative magnitude pruning driver (lottery tickets, LR rewinding) vs NumPy re-derivations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sam_jax import sparse


@pytest.mark.parametrize("target, rounds", [(0.9, 11), (0.95, 14), (0.98, 18)])
def test_schedule_round_counts_match_reference(target, rounds):
  sched = sparse.imp_schedule(target)
  assert len(sched) == rounds
  for r, s in enumerate(sched[:-1], start=1):
    assert s == pytest.approx(1 - 0.8**r)
    assert s < target
  assert sched[-1] == target and 1 - 0.8**rounds >= target


def test_schedule_exact_and_other_fractions():
  assert sparse.imp_schedule(0.36) == pytest.approx([0.2, 0.36])
  assert sparse.imp_schedule(0.75, prune_fraction=0.5) == pytest.approx([0.5, 0.75])
  assert sparse.imp_schedule(0.0) == []


def tree(r, shapes, levels=None):
  if levels is None:
    return {k: jnp.asarray(r.normal(size=s), jnp.float32) for k, s in shapes.items()}
  return {
    k: jnp.asarray(r.integers(-levels, levels + 1, s), jnp.float32) for k, s in shapes.items()
  }


SHAPES = {"a": (4, 6), "b": (3, 3, 2, 2), "bias": (6,)}
MASKED = ("a", "b")  # jax.tree flatten order


def np_prune_global(w, m, p, target=None):
  absw = np.concatenate([np.abs(np.asarray(w[k])).ravel() for k in MASKED])
  act = np.concatenate([np.asarray(m[k]).ravel() for k in MASKED])
  n_act, size = int(act.sum()), act.size
  keep = int(np.rint((1 - p) * n_act))
  if target is not None:
    keep = min(max(keep, int(np.rint((1 - target) * size))), n_act)
  score = np.where(act, absw, -np.inf).astype(np.float32)
  out = np.zeros(size, bool)
  out[np.argsort(-score, kind="stable")[:keep]] = True
  return out, keep


def flat(m):
  return np.concatenate([np.asarray(m[k]).ravel() for k in MASKED])


@settings(max_examples=30, deadline=None)
@given(
  seed=st.integers(0, 10_000),
  p=st.floats(0.05, 0.95),
  levels=st.sampled_from([None, 2, 5]),
  density=st.floats(0.1, 1.0),
  target=st.sampled_from([None, 0.5, 0.9]),
)
def test_global_round_matches_numpy(seed, p, levels, density, target):
  r = np.random.default_rng(seed)
  trained = tree(r, SHAPES, levels)
  masks = {k: jnp.asarray(r.random(SHAPES[k]) < density) for k in MASKED}
  masks["bias"] = None
  rewind = tree(r, SHAPES)
  nxt, start = sparse.imp_next_round(
    trained, masks, prune_fraction=p, rewind_params=rewind, target_sparsity=target
  )
  want, keep = np_prune_global(trained, masks, p, target)
  np.testing.assert_array_equal(flat(nxt), want)
  assert int(flat(nxt).sum()) == keep
  assert not np.any(flat(nxt) & ~flat(masks))  # pruned weights never return
  assert nxt["bias"] is None
  for k in MASKED:
    np.testing.assert_array_equal(start[k], np.where(nxt[k], rewind[k], 0.0))
  np.testing.assert_array_equal(start["bias"], rewind["bias"])


def test_layer_scope_and_lrr_keeps_trained_weights():
  r = np.random.default_rng(0)
  trained = tree(r, SHAPES)
  nxt, start = sparse.imp_next_round(trained, prune_fraction=0.3, scope="layer")
  for k in MASKED:
    n = math.prod(SHAPES[k])
    s = np.abs(np.asarray(trained[k])).ravel()
    want = np.zeros(n, bool)
    want[np.argsort(-s, kind="stable")[: int(np.rint(0.7 * n))]] = True
    np.testing.assert_array_equal(np.asarray(nxt[k]).ravel(), want)
    np.testing.assert_array_equal(start[k], np.where(nxt[k], trained[k], 0.0))
  assert nxt["bias"] is None


def test_rounds_reach_target_exactly():
  r = np.random.default_rng(1)
  shapes = {"a": (20, 30), "b": (10, 10)}
  theta0 = tree(r, shapes)
  masks, params = None, theta0
  n, count = 700, 700
  sched = sparse.imp_schedule(0.9)
  for s in sched:
    trained = jax.tree.map(
      lambda w: w + 0.1 * jnp.asarray(r.normal(size=w.shape), jnp.float32), params
    )
    masks, params = sparse.imp_next_round(trained, masks, target_sparsity=0.9, rewind_params=theta0)
    count = max(int(np.rint(0.8 * count)), int(np.rint(0.1 * n)))
    assert sparse.nnz(masks) == count
    assert abs(count / n - (1 - s)) <= 0.01  # tracks 0.8^r up to compounded rounding
  assert sparse.nnz(masks) == 70 and sparse.nnz(params) == 70


def test_bad_inputs():
  params = {"w": jnp.ones((3, 3))}
  for bad in (0.0, 1.0, 1.5):
    with pytest.raises(ValueError, match=r"prune_fraction.*\(0, 1\)"):
      sparse.imp_next_round(params, prune_fraction=bad)
  with pytest.raises(ValueError, match=r"target_sparsity.*\[0, 1\)"):
    sparse.imp_next_round(params, target_sparsity=1.0)
  with pytest.raises(ValueError, match="scope"):
    sparse.imp_next_round(params, scope="row")
  with pytest.raises(ValueError, match="masks"):
    sparse.imp_next_round(params, {"w": jnp.ones((2, 2), bool)})
  with pytest.raises(ValueError, match="rewind_params"):
    sparse.imp_next_round(params, rewind_params={"v": jnp.ones((3, 3))})
  with pytest.raises(ValueError, match="non-finite"):
    sparse.imp_next_round({"w": jnp.ones((3, 3)).at[0, 0].set(jnp.nan)})
  with pytest.raises(ValueError, match="target_sparsity"):
    sparse.imp_schedule(1.0)
