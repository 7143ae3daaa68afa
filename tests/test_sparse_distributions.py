"""Layer-wise sparsity distributions vs a NumPy re-derivation of RigL's ER/ERK solver
(google-research/rigl rigl/sparse_utils.py, get_sparsities_erdos_renyi)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sam_jax import sparse


def resnet32_shapes():
  """GraSP-variant CIFAR ResNet-32 in Flax layout: path -> shape."""
  shapes = {"conv1/kernel": (3, 3, 3, 32), "bn1/scale": (32,), "bn1/bias": (32,)}
  c_in = 32
  for stage, width in enumerate((32, 64, 128), start=1):
    for block in range(5):
      pre = f"layer{stage}/block{block}"
      shapes[f"{pre}/conv1/kernel"] = (3, 3, c_in, width)
      shapes[f"{pre}/conv2/kernel"] = (3, 3, width, width)
      for bn in ("bn1", "bn2"):
        shapes[f"{pre}/{bn}/scale"] = (width,)
        shapes[f"{pre}/{bn}/bias"] = (width,)
      if c_in != width:
        shapes[f"{pre}/shortcut/conv/kernel"] = (1, 1, c_in, width)
        shapes[f"{pre}/shortcut/bn/scale"] = (width,)
        shapes[f"{pre}/shortcut/bn/bias"] = (width,)
      c_in = width
  shapes["linear/kernel"] = (128, 10)
  shapes["linear/bias"] = (10,)
  return shapes


def nest(flat):
  tree = {}
  for path, value in flat.items():
    node = tree
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  return tree


def flat_leaves(tree):
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]:
    out["/".join(k.key for k in path)] = leaf
  return out


def numpy_reference(shapes, sparsity, distribution, custom=()):
  """RigL's solver written independently: vectorised water-filling."""
  names = [n for n, s in shapes.items() if len(s) >= 2 and n not in custom]
  n = np.array([np.prod(shapes[k]) for k in names], dtype=np.float64)
  if distribution == "uniform":
    return {k: 1.0 - sparsity for k in names}
  if distribution == "er":
    raw = np.array(
      [(shapes[k][-2] + shapes[k][-1]) / (shapes[k][-2] * shapes[k][-1]) for k in names]
    )
  else:
    raw = np.array([np.sum(shapes[k]) / np.prod(shapes[k]) for k in names])
  dense = np.zeros(len(names), bool)
  while True:
    rhs = np.sum((n - np.floor(sparsity * n))[~dense]) - np.sum(np.floor(sparsity * n)[dense])
    eps = rhs / np.sum((raw * n)[~dense])
    top = np.max(np.where(dense, -np.inf, raw))
    if eps * top > 1:
      dense |= raw == top
    else:
      break
  dens = np.where(dense, 1.0, eps * raw)
  return dict(zip(names, dens))


PARAMS = nest({k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in resnet32_shapes().items()})


def test_resnet32_shapes_match_reference_counts():
  shapes = resnet32_shapes()
  kernels = [s for s in shapes.values() if len(s) >= 2]
  assert (
    sum(math.prod(s) for s in kernels) == 1_855_584
  )  # the GraSP-variant ResNet-32's conv and linear kernels
  block_convs = [
    s for k, s in shapes.items() if "block" in k and "conv" in k and "shortcut" not in k
  ]
  assert len(block_convs) == 30 and sum(math.prod(s) for s in block_convs) == 1_843_200


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_resnet32_densities_match_numpy(distribution, sparsity):
  shapes = resnet32_shapes()
  got = flat_leaves(sparse.layer_densities(PARAMS, sparsity, distribution))
  want = numpy_reference(shapes, sparsity, distribution)
  for name, shape in shapes.items():
    if len(shape) < 2:
      assert got[name] is None, name
    else:
      assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-15), name
  counts = {k: sparse.count_for_density(math.prod(shapes[k]), d) for k, d in want.items()}
  budget = sum(int(np.rint(math.prod(shapes[k]) * (1 - sparsity))) for k in want)
  assert abs(sum(counts.values()) - budget) <= 1.5 * len(want)
  if distribution == "erk" and sparsity == 0.5:
    # the cap loop must have fired: the stem (largest raw score) is dense
    assert got["conv1/kernel"] == 1.0 and got["linear/kernel"] == 1.0


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
def test_resnet32_custom_layers_excluded_from_budget(distribution):
  shapes = resnet32_shapes()
  overrides = {r"^conv1/": 0.0, r"^linear/": 0.0, r"shortcut": 0.5}
  got = flat_leaves(sparse.layer_densities(PARAMS, 0.9, distribution, overrides=overrides))
  custom = (
    "conv1/kernel",
    "linear/kernel",
    "layer2/block0/shortcut/conv/kernel",
    "layer3/block0/shortcut/conv/kernel",
  )
  want = numpy_reference(shapes, 0.9, distribution, custom=custom)
  assert got["conv1/kernel"] is None and got["linear/kernel"] is None
  assert got["layer2/block0/shortcut/conv/kernel"] == 0.5
  for name, d in want.items():
    assert got[name] == pytest.approx(d, rel=1e-12), name
  # the 30 block convs alone carry the uniform 90% budget
  total = sum(sparse.count_for_density(math.prod(shapes[k]), d) for k, d in want.items())
  assert abs(total - round(0.1 * 1_843_200)) <= 1.5 * 30


def test_resnet32_random_masks_total_nnz_is_uniform_budget():
  shapes = resnet32_shapes()
  dens = sparse.layer_densities(PARAMS, 0.9, "erk")
  masks = flat_leaves(sparse.random_masks(jax.random.key(3), PARAMS, dens))
  flat_d = flat_leaves(dens)
  total = 0
  for name, m in masks.items():
    if m is None:
      assert flat_d[name] is None
      continue
    n = math.prod(shapes[name])
    assert m.dtype == jnp.bool_ and m.shape == shapes[name]
    assert int(m.sum()) == int(np.rint(flat_d[name] * n))
    total += int(m.sum())
  budget = int(np.rint(0.1 * 1_855_584))
  assert abs(total - budget) <= 1.5 * 34  # 34 kernels, per-layer rounding only


def test_count_for_density_hand_examples():
  assert sparse.count_for_density(5, 0.5) == 2  # half to even
  assert sparse.count_for_density(7, 0.5) == 4  # half to even
  assert sparse.count_for_density(10, 1 - 0.9) == 1
  assert sparse.count_for_density(10, 0.26) == 3
  assert sparse.count_for_density(0, 0.3) == 0
  assert sparse.count_for_density(9, 1.0) == 9
  with pytest.raises(ValueError, match="density"):
    sparse.count_for_density(10, 1.5)


def test_path_str_and_default_prunable():
  tree = {"a": {"conv": {"kernel": jnp.zeros((3, 3, 1, 2))}}, "b": [jnp.zeros(2)]}
  paths = {
    sparse.path_str(p): sparse.default_prunable(p, x)
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  assert paths == {"a/conv/kernel": True, "b/0": False}


def test_power_zero_is_uniform_and_er_uses_last_two_dims():
  params = {"c": jnp.zeros((5, 5, 4, 8)), "d": jnp.zeros((20, 7))}
  d0 = sparse.layer_densities(params, 0.6, "erk", power=0.0)
  n = np.array([800, 140.0])
  eps = np.sum(n - np.floor(0.6 * n)) / np.sum(n)
  assert d0["c"] == pytest.approx(eps) and d0["d"] == pytest.approx(eps)
  er = sparse.layer_densities(params, 0.6, "er")
  ratio = er["c"] / er["d"]
  assert ratio == pytest.approx(((4 + 8) / 32) / ((20 + 7) / 140))


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "x"])
def test_bad_sparsity(bad):
  with pytest.raises(ValueError, match=r"sparsity.*\[0, 1\)"):
    sparse.layer_densities({"w": jnp.zeros((2, 2))}, bad)


def test_bad_distribution_and_overrides():
  with pytest.raises(ValueError, match="uniform.*er.*erk"):
    sparse.layer_densities({"w": jnp.zeros((2, 2))}, 0.5, "gaussian")
  with pytest.raises(ValueError, match="overrides"):
    sparse.layer_densities({"w": jnp.zeros((2, 2))}, 0.5, overrides={"w": 1.0})
  with pytest.raises(ValueError, match="er"):
    sparse.layer_densities({"b": jnp.zeros(4)}, 0.5, "er", prunable=lambda p, x: True)
  with pytest.raises(ValueError, match="densities"):
    sparse.random_masks(jax.random.key(0), {"w": jnp.zeros((2, 2))}, {"v": 0.5})


shape_st = st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple)


@settings(max_examples=40, deadline=None)
@given(
  shapes=st.lists(shape_st, min_size=1, max_size=5),
  sparsity=st.floats(0.0, 0.99),
  distribution=st.sampled_from(["uniform", "erk"]),
  seed=st.integers(0, 2**16),
)
def test_random_masks_exact_counts(shapes, sparsity, distribution, seed):
  params = {f"l{i}": jnp.zeros(s) for i, s in enumerate(shapes)}
  prunable = lambda path, leaf: True
  dens = sparse.layer_densities(params, sparsity, distribution, prunable=prunable)
  masks = sparse.random_masks(jax.random.key(seed), params, dens)
  kept = 0
  for name, s in zip(params, shapes):
    d = dens[name]
    assert 0.0 <= d <= 1.0
    n = math.prod(s)
    assert int(masks[name].sum()) == int(np.rint(d * n))
    kept += int(masks[name].sum())
  budget = sum(int(np.rint((1 - sparsity) * math.prod(s))) for s in shapes)
  assert abs(kept - budget) <= 1.5 * len(shapes)


def test_random_masks_are_uniform():
  # each of 20 positions is kept with probability 5/20 over 400 seeds
  params = {"w": jax.ShapeDtypeStruct((4, 5), jnp.float32)}
  hits = np.zeros((4, 5))
  for seed in range(400):
    hits += np.asarray(sparse.random_masks(jax.random.key(seed), params, {"w": 0.25})["w"])
  expected = 400 * 0.25
  chi2 = np.sum((hits - expected) ** 2 / expected) * (1 / 0.75)
  assert chi2 < 45  # chi-square with 19 dof: p ~ 0.0007
