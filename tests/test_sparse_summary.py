"""Sparsity summary, nnz, mask overlap and FLOPs vs hand computations."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sam_jax import sparse


def test_nnz_params_and_masks():
  params = {"w": jnp.array([[1.0, 0.0, -2.0], [0.0, 0.0, 3.0]]), "b": jnp.array([0.0, 1.0])}
  assert sparse.nnz(params) == 4
  masks = {"w": jnp.array([[True, False, True], [False, False, True]]), "b": None}
  assert sparse.nnz(masks) == 3


def test_summary_without_masks_counts_nonzeros_of_prunable_leaves():
  params = {
    "conv": {"kernel": jnp.zeros((2, 2, 1, 3)).at[0, 0, 0].set(1.0)},
    "fc": {"kernel": jnp.eye(4), "bias": jnp.zeros(4)},
  }
  s = sparse.sparsity_summary(params)
  got = {l.path: (l.size, l.nnz) for l in s.layers}
  assert got == {"conv/kernel": (12, 3), "fc/kernel": (16, 4)}
  assert (s.size, s.nnz) == (28, 7)
  assert s.sparsity == pytest.approx(21 / 28)
  assert (s.total_size, s.total_nnz) == (32, 7)
  d = s.as_dict()
  assert d["layers"]["fc/kernel"]["density"] == 0.25 and d["nnz"] == 7
  text = str(s)
  assert "conv/kernel" in text and "0.2500" in text


def test_summary_with_masks_counts_dense_leaves_fully():
  params = {"a": jnp.ones((3, 4)), "b": jnp.ones((2, 2)), "c": jnp.ones(5)}
  masks = {"a": jnp.arange(12).reshape(3, 4) < 5, "b": None, "c": None}
  s = sparse.sparsity_summary(params, masks)
  assert [l.path for l in s.layers] == ["a"]
  assert (s.size, s.nnz, s.density) == (12, 5, 5 / 12)
  assert (s.total_size, s.total_nnz) == (21, 5 + 4 + 5)
  with pytest.raises(ValueError, match="masks"):
    sparse.sparsity_summary(params, {"a": jnp.ones((4, 3), bool), "b": None, "c": None})


def test_mask_overlap_hand_example():
  a = {"x": jnp.array([True, True, False, False]), "y": jnp.array([[True, False]]), "z": None}
  b = {"x": jnp.array([True, False, True, False]), "y": jnp.array([[True, False]]), "z": None}
  o = sparse.mask_overlap(a, b)
  x, y = o.layers
  assert (x.path, x.intersection, x.union, x.iou, x.shared_fraction) == ("x", 1, 3, 1 / 3, 0.5)
  assert (y.iou, y.shared_fraction) == (1.0, 1.0)
  assert (o.total.intersection, o.total.union, o.total.active_a) == (2, 4, 3)
  assert o.iou == 0.5 and o.shared_fraction == pytest.approx(2 / 3)
  assert "IoU" in str(o)
  with pytest.raises(ValueError, match="masks"):
    sparse.mask_overlap(a, {"x": b["x"], "y": None, "z": None})


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(1, 50))
def test_mask_overlap_random_vs_numpy(seed, size):
  r = np.random.default_rng(seed)
  a, b = r.random(size) < 0.4, r.random(size) < 0.6
  o = sparse.mask_overlap({"w": a}, {"w": b})
  inter, union = np.sum(a & b), np.sum(a | b)
  assert o.iou == (inter / union if union else 1.0)
  assert o.shared_fraction == (inter / a.sum() if a.sum() else 1.0)


FLOPS = {"a": 100.0, "b": 50.0}


def test_flops_dense_static_and_sam():
  dense = sparse.training_flops(FLOPS, method="dense", steps=4)
  assert dense.total == 4 * 3 * 150 and dense.relative_to_dense == 1.0
  static = sparse.training_flops(FLOPS, {"a": 0.2}, method="static", steps=4)
  assert static.forward_sparse == 70.0 and static.total == 4 * 3 * 70
  sam = sparse.training_flops(FLOPS, {"a": 0.2}, method="set", optimizer="sam", steps=4)
  s2 = sparse.training_flops(FLOPS, {"a": 0.2}, method="set", optimizer="s2sam", steps=4)
  assert sam.total == 2 * static.total and s2.total == static.total
  assert sparse.training_flops(FLOPS, method="dense", optimizer="sam").relative_to_dense == 2.0


def test_flops_rigl_update_steps():
  # update steps t = 0, 3, 6, 9: 2 f_S + f_D there, 3 f_S elsewhere
  est = sparse.training_flops(FLOPS, {"a": 0.2}, method="rigl", steps=10, update_every=3)
  assert est.total == 6 * 210 + 4 * (140 + 150)
  # begin 2, end 8 (exclusive): updates at t = 2, 5
  est = sparse.training_flops(
    FLOPS, {"a": 0.2}, method="rigl", steps=10, update_every=3, begin_step=2, end_step=8
  )
  assert est.total == 8 * 210 + 2 * 290
  # long runs approach the paper's (3 f_S (ΔT - 1) + 2 f_S + f_D) / ΔT per step
  est = sparse.training_flops(FLOPS, {"a": 0.2}, method="rigl", steps=100_000, update_every=100)
  assert est.per_step == pytest.approx((3 * 70 * 99 + 2 * 70 + 150) / 100)


def test_flops_gmp_hand_computed():
  # prune at t = 0, 2, 4 (end); s(t') = 0.8 (1 - (1 - t'/4)^3)
  # t=0: dense; t=1,2: s=0; t=3,4: s=0.7; t=5: s=0.8  (F = 100)
  est = sparse.training_flops(
    {"a": 100.0}, {"a": 0.2}, method="gmp", steps=6, update_every=2, end_step=4
  )
  assert est.total == pytest.approx(3 * (100 * 3 + 30 * 2 + 20))
  # initial sparsity 0.5 at t'=0: s = 0.5 for t = 1, 2; 0.8*0.875 + 0.5*0.125 at t = 3, 4
  est = sparse.training_flops(
    {"a": 100.0, "o": 10.0},
    {"a": 0.2},
    method="gmp",
    steps=6,
    update_every=2,
    end_step=4,
    initial_sparsity=0.5,
  )
  s34 = 0.8 * 0.875 + 0.5 * 0.125
  want = 3 * (110 + 2 * (10 + 50) + 2 * (10 + 100 * (1 - s34)) + (10 + 20))
  assert est.total == pytest.approx(want)


def test_flops_accepts_density_and_mask_trees():
  params = {"a": jnp.zeros((10, 10)), "b": jnp.zeros(10)}
  masks = {"a": jnp.arange(100).reshape(10, 10) < 30, "b": None}
  est = sparse.training_flops({"a": 100.0, "b": 1.0}, masks)
  assert est.forward_sparse == pytest.approx(31.0)
  dens = sparse.layer_densities(params, 0.75, "uniform")
  assert sparse.training_flops({"a": 100.0, "b": 1.0}, dens).forward_sparse == 26.0


def test_flops_bad_inputs():
  with pytest.raises(ValueError, match="method"):
    sparse.training_flops(FLOPS, method="prune")
  with pytest.raises(ValueError, match="optimizer"):
    sparse.training_flops(FLOPS, optimizer="adam")
  with pytest.raises(ValueError, match="missing from `forward_flops`"):
    sparse.training_flops(FLOPS, {"c": 0.5})
  with pytest.raises(ValueError, match="end_step"):
    sparse.training_flops(FLOPS, {"a": 0.5}, method="gmp", steps=3)
  with pytest.raises(ValueError, match="steps"):
    sparse.training_flops(FLOPS, steps=0)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    sparse.training_flops(FLOPS, {"a": 1.5})
