"""Masks at init (magnitude, SNIP, GraSP) vs NumPy derivations of the scores."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sam_jax import sparse

D_IN, HIDDEN, CLASSES, BATCH = 6, 5, 3, 16


def mlp_loss(params, batch, temperature=1.0):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] / temperature
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def np_mlp_grad(p, x, y, t):
  """Hand-derived gradient of mlp_loss in float64."""
  h = np.tanh(x @ p["w1"] + p["b1"])
  z = h @ p["w2"] / t
  e = np.exp(z - z.max(1, keepdims=True))
  prob = e / e.sum(1, keepdims=True)
  dz = (prob - np.eye(CLASSES)[y]) / len(y) / t
  da = (dz @ p["w2"].T) * (1 - h**2)
  return {"w1": x.T @ da, "b1": da.sum(0), "w2": h.T @ dz}


def np_hvp(p, v, x, y, t, eps=1e-4):
  """H v by central differences of the analytic gradient (error O(eps^2))."""
  scale = math.sqrt(sum(np.sum(a**2) for a in v.values()))
  shift = lambda s: {k: p[k] + s * eps * v[k] / scale for k in p}
  gp, gm = np_mlp_grad(shift(1), x, y, t), np_mlp_grad(shift(-1), x, y, t)
  return {k: (gp[k] - gm[k]) / (2 * eps) * scale for k in p}


def setup(seed=0):
  r = np.random.default_rng(seed)
  p = {
    "w1": r.normal(size=(D_IN, HIDDEN)),
    "b1": r.normal(size=HIDDEN) * 0.1,
    "w2": r.normal(size=(HIDDEN, CLASSES)),
  }
  x, y = r.normal(size=(BATCH, D_IN)), r.integers(0, CLASSES, BATCH)
  jp = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
  return p, (x, y), jp, (jnp.asarray(x, jnp.float32), jnp.asarray(y))


def flat_np(tree, keys=("w1", "w2")):
  return np.concatenate([np.asarray(tree[k], np.float64).ravel() for k in keys])


def test_snip_scores_match_numpy_and_global_topk():
  p, (x, y), jp, batch = setup()
  g = np_mlp_grad(p, x, y, 1.0)
  scores = sparse.snip_scores(mlp_loss, jp, batch)
  for k in p:
    np.testing.assert_allclose(scores[k], np.abs(g[k] * p[k]), rtol=1e-4, atol=1e-6)
  masks = sparse.snip_masks(mlp_loss, jp, batch, 0.7)
  assert masks["b1"] is None
  s = flat_np({k: np.asarray(scores[k], np.float32) for k in scores})
  keep = int(np.rint(0.3 * s.size))
  want = np.zeros(s.size, bool)
  want[np.argsort(-s, kind="stable")[:keep]] = True
  np.testing.assert_array_equal(flat_np(masks).astype(bool), want)


def test_snip_layerwise_with_densities():
  p, _, jp, batch = setup(1)
  dens = {"w1": 0.5, "b1": None, "w2": 0.2}
  masks = sparse.snip_masks(mlp_loss, jp, batch, densities=dens)
  scores = sparse.snip_scores(mlp_loss, jp, batch)
  for k, n in (("w1", 30), ("w2", 15)):
    s = np.asarray(scores[k], np.float32).ravel()
    keep = int(np.rint(dens[k] * n))
    want = np.zeros(n, bool)
    want[np.argsort(-s, kind="stable")[:keep]] = True
    np.testing.assert_array_equal(np.asarray(masks[k]).ravel(), want)
  assert masks["b1"] is None


@pytest.mark.parametrize("temperature", [1.0, 5.0, 200.0])
def test_grasp_scores_match_numpy_hessian(temperature):
  p, (x, y), jp, batch = setup(2)
  g = np_mlp_grad(p, x, y, temperature)
  hg = np_hvp(p, g, x, y, temperature)
  want = {k: -p[k] * hg[k] for k in p}
  got = sparse.grasp_scores(mlp_loss, jp, batch, temperature)
  scale = max(np.abs(v).max() for v in want.values())
  for k in p:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-3, atol=2e-4 * scale)


def test_grasp_scores_logistic_regression_exact_hessian():
  r = np.random.default_rng(3)
  x, y = r.normal(size=(40, 4)), r.integers(0, 2, 40).astype(float)
  w = r.normal(size=(4, 1))
  t = 3.0

  def loss(params, batch, temperature):
    xb, yb = batch
    z = (xb @ params["w"])[:, 0] / temperature
    return jnp.mean(jax.nn.softplus(z) - yb * z)

  z = (x @ w)[:, 0] / t
  s = 1 / (1 + np.exp(-z))
  g = x.T @ (s - y)[:, None] / (len(y) * t)
  hess = x.T @ (x * (s * (1 - s))[:, None]) / (len(y) * t * t)
  want = -w * (hess @ g)
  got = sparse.grasp_scores(
    loss,
    {"w": jnp.asarray(w, jnp.float32)},
    (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)),
    t,
  )
  np.testing.assert_allclose(got["w"], want, rtol=1e-4, atol=1e-7)


def test_grasp_removes_largest_signed_scores():
  p, _, jp, batch = setup(4)
  sparsity = 0.6
  scores = sparse.grasp_scores(mlp_loss, jp, batch, 200.0)
  s = flat_np({k: np.asarray(v, np.float32) for k, v in scores.items()})
  masks = sparse.grasp_masks(mlp_loss, jp, batch, sparsity)
  assert masks["b1"] is None
  kept = flat_np(masks).astype(bool)
  n_remove = int(sparsity * s.size)
  removed = np.argsort(-s, kind="stable")[:n_remove]
  want = np.ones(s.size, bool)
  want[removed] = False
  np.testing.assert_array_equal(kept, want)
  assert kept[np.argmin(s)] and not kept[np.argmax(s)]
  by_abs = set(np.argsort(-np.abs(s), kind="stable")[:n_remove])
  assert by_abs != set(removed)  # the sign matters on this case


@settings(max_examples=15, deadline=None)
@given(sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 1000))
def test_grasp_and_snip_exact_counts(sparsity, seed):
  _, _, jp, batch = setup(seed % 5)
  jp = jax.tree.map(lambda w: w * (1 + seed % 3), jp)
  n = D_IN * HIDDEN + HIDDEN * CLASSES
  grasp = sparse.grasp_masks(mlp_loss, jp, batch, sparsity, temperature=10.0)
  assert int(grasp["w1"].sum() + grasp["w2"].sum()) == n - int(sparsity * n)
  snip = sparse.snip_masks(mlp_loss, jp, batch, sparsity)
  assert int(snip["w1"].sum() + snip["w2"].sum()) == int(np.rint((1 - sparsity) * n))


def np_topk_mask(scores, keep):
  flat = np.asarray(scores, np.float32).ravel()
  out = np.zeros(flat.size, bool)
  out[np.argsort(-flat, kind="stable")[:keep]] = True
  return out


shape_st = st.lists(st.integers(1, 7), min_size=2, max_size=3).map(tuple)


@settings(max_examples=25, deadline=None)
@given(
  shapes=st.lists(shape_st, min_size=1, max_size=3),
  sparsity=st.floats(0.0, 0.99),
  seed=st.integers(0, 2**16),
  levels=st.integers(2, 50),
)
def test_magnitude_masks_vs_numpy_argsort(shapes, sparsity, seed, levels):
  r = np.random.default_rng(seed)
  # few distinct magnitudes: many ties, counts must stay exact
  params = {
    f"l{i}": jnp.asarray(r.integers(-levels, levels, s), jnp.float32) for i, s in enumerate(shapes)
  }
  params["bias"] = jnp.ones(3)
  layer = sparse.magnitude_masks(params, sparsity=sparsity)
  glob = sparse.magnitude_masks(params, sparsity=sparsity, scope="global")
  assert layer["bias"] is None and glob["bias"] is None
  names = [f"l{i}" for i in range(len(shapes))]
  for k in names:
    n = int(np.prod(params[k].shape))
    want = np_topk_mask(np.abs(params[k]), int(np.rint((1 - sparsity) * n)))
    np.testing.assert_array_equal(np.asarray(layer[k]).ravel(), want)
  total = sum(int(np.prod(params[k].shape)) for k in names)
  all_abs = np.concatenate([np.abs(np.asarray(params[k])).ravel() for k in sorted(names)])
  want = np_topk_mask(all_abs, int(np.rint((1 - sparsity) * total)))
  got = np.concatenate([np.asarray(glob[k]).ravel() for k in sorted(names)])
  np.testing.assert_array_equal(got, want)


def test_magnitude_layerwise_with_erk_densities():
  r = np.random.default_rng(0)
  params = {
    "a": jnp.asarray(r.normal(size=(3, 3, 4, 8)), jnp.float32),
    "b": jnp.asarray(r.normal(size=(8, 10)), jnp.float32),
    "c": jnp.zeros(10),
  }
  dens = sparse.layer_densities(params, 0.8, "erk")
  masks = sparse.magnitude_masks(params, dens)
  for k in ("a", "b"):
    n = params[k].size
    np.testing.assert_array_equal(
      np.asarray(masks[k]).ravel(), np_topk_mask(np.abs(params[k]), int(np.rint(dens[k] * n)))
    )
  assert masks["c"] is None


def test_bad_inputs():
  _, _, jp, batch = setup()
  with pytest.raises(ValueError, match=r"sparsity.*\[0, 1\)"):
    sparse.grasp_masks(mlp_loss, jp, batch, 1.0)
  with pytest.raises(ValueError, match=r"sparsity.*\[0, 1\)"):
    sparse.snip_masks(mlp_loss, jp, batch, -0.5)
  with pytest.raises(ValueError, match="exactly one"):
    sparse.snip_masks(mlp_loss, jp, batch)
  with pytest.raises(ValueError, match="exactly one"):
    sparse.snip_masks(mlp_loss, jp, batch, 0.5, densities={"w1": 0.5, "b1": None, "w2": 0.5})
  with pytest.raises(ValueError, match="densities"):
    sparse.magnitude_masks(jp, {"w1": 0.5})
  with pytest.raises(ValueError, match="densities"):
    sparse.magnitude_masks(jp, {"w1": 1.5, "b1": None, "w2": 0.5})
  with pytest.raises(ValueError, match="scope"):
    sparse.magnitude_masks(jp, sparsity=0.5, scope="row")
  with pytest.raises(ValueError, match="sparsity"):
    sparse.magnitude_masks(jp, scope="global")
  with pytest.raises(ValueError, match="temperature"):
    sparse.grasp_masks(mlp_loss, jp, batch, 0.5, temperature=0.0)
