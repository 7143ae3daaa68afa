"""The one way in for initial masks (``random_init``, ``masks=``/``sparsity=``,
the methods' keys) and the by-name factory ``sparse.create``.

References are independent of the code under test: the lower-level public
functions (``layer_densities`` + ``random_masks``, ``jax.random.split``), and
masks recorded from the constructors before the restructuring (commit
10e140b: ``static_random(tx, s, key=k)``, ``rigl(tx, s, key=k)``, ...), as
packed bits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sam_jax import sparse

SGD = optax.sgd(0.1)
PARAMS = {"conv": jnp.zeros((3, 3, 2, 4)), "fc": jnp.zeros((6, 5)), "b": jnp.zeros(5)}


def _bits(masks):
  return {
    k: np.packbits(np.ravel(np.asarray(v))).tobytes().hex()
    for k, v in masks.items()
    if v is not None
  }


def _reference(key, params, sparsity, distribution):
  return sparse.random_masks(key, params, sparse.layer_densities(params, sparsity, distribution))


def _assert_same_masks(a, b):
  assert jax.tree.structure(a, is_leaf=lambda x: x is None) == jax.tree.structure(
    b, is_leaf=lambda x: x is None
  )
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------ masks as before the change

# old call -> (new call, packed masks and state key the old call gave)
RECORDED = {
  "static_random(0.7, key=3)": (
    lambda: sparse.static_masks(SGD, sparse.random_init(0.7, key=3)),
    {"conv": "008884171c00104828", "fc": "38332f38"},
    None,
  ),
  "static_random(0.5, 'uniform')": (
    lambda: sparse.static_masks(SGD, sparse.random_init(0.5, "uniform")),
    {"conv": "21714734c02bea5fed", "fc": "ce933158"},
    None,
  ),
  "rigl(0.7, key=5)": (
    lambda: sparse.rigl(SGD, sparse.random_init(0.7), end_step=10, key=5),
    {"conv": "28024040cc20012419", "fc": "45371d2c"},
    [202567368, 3886822060],
  ),
  "set_(0.6, 'er', key=typed 2)": (
    lambda: sparse.set_(SGD, sparse.random_init(0.6, "er"), end_step=10, key=jax.random.key(2)),
    {"conv": "98495a8df3fad0048b", "fc": "0030d408"},
    [637334850, 3278974502],
  ),
  "dsr(0.5, key=7)": (
    lambda: sparse.dsr(SGD, sparsity=0.5, key=7),
    {"conv": "96d3bfa4326666aa21", "fc": "511b745c"},
    [195045567, 4062205631],
  ),
  "mest(0.8, 'erk', key=9)": (
    lambda: sparse.mest(
      SGD, sparse.random_init(0.8, "erk"), key=9, update_every=2, decay_steps=(4, 8)
    ),
    {"conv": "c10402040582010000", "fc": "47840708"},
    [143080583, 4281670255],
  ),
}


@pytest.mark.parametrize("old", sorted(RECORDED))
def test_new_call_forms_give_the_old_masks_and_keys_bit_for_bit(old):
  make, masks, key = RECORDED[old]
  state = make().init(PARAMS)
  assert _bits(state.masks) == masks
  assert state.masks["b"] is None
  if key is not None:
    assert np.asarray(state.key).tolist() == key


# ------------------------------------------------------------- random_init


@st.composite
def kernel_trees(draw):
  n = draw(st.integers(1, 3))
  shapes = [
    tuple(draw(st.integers(1, 4)) for _ in range(draw(st.sampled_from([2, 4])))) for _ in range(n)
  ]
  return {f"l{i}": {"kernel": jnp.zeros(s), "bias": jnp.zeros(s[-1])} for i, s in enumerate(shapes)}


@settings(max_examples=25, deadline=None)
@given(
  params=kernel_trees(),
  sparsity=st.floats(0.0, 0.99),
  distribution=st.sampled_from(sparse.DISTRIBUTIONS),
  seed=st.integers(0, 2**31 - 1),
)
def test_random_init_is_random_masks_of_layer_densities(params, sparsity, distribution, seed):
  got = sparse.random_init(sparsity, distribution, key=seed)(params)
  _assert_same_masks(got, _reference(jax.random.PRNGKey(seed), params, sparsity, distribution))
  dens = sparse.layer_densities(params, sparsity, distribution)
  for name, layer in got.items():
    assert layer["bias"] is None
    n = int(np.prod(layer["kernel"].shape))
    want = sparse.count_for_density(n, dens[name]["kernel"])
    assert int(np.sum(layer["kernel"])) == want


def test_random_init_without_a_key_is_seed_0_when_called():
  _assert_same_masks(
    sparse.random_init(0.6)(PARAMS), _reference(jax.random.PRNGKey(0), PARAMS, 0.6, "erk")
  )


def test_random_init_takes_typed_and_raw_keys():
  typed = jax.random.key(11)
  want = _reference(jax.random.key_data(typed), PARAMS, 0.6, "uniform")
  _assert_same_masks(sparse.random_init(0.6, "uniform", key=typed)(PARAMS), want)
  raw = jax.random.key_data(typed)
  _assert_same_masks(sparse.random_init(0.6, "uniform", key=raw)(PARAMS), want)


def test_random_init_forwards_power_overrides_and_prunable():
  prunable = lambda path, leaf: leaf.ndim >= 2 and "fc" not in jax.tree_util.keystr(path)
  kw = dict(power=0.5, overrides={"conv": 0.25}, prunable=prunable)
  got = sparse.random_init(0.5, "erk", key=4, **kw)(PARAMS)
  dens = sparse.layer_densities(PARAMS, 0.5, "erk", **kw)
  _assert_same_masks(got, sparse.random_masks(jax.random.PRNGKey(4), PARAMS, dens))
  assert got["fc"] is None and int(got["conv"].sum()) == 54  # 72 weights, 25% pruned


def test_random_init_checks_its_arguments_before_any_params_exist():
  for kwargs, arg in [
    (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity=0.5, distribution="normal"), "distribution"),
    (dict(sparsity=0.5, overrides={"conv[": 0.5}), "overrides"),
    (dict(sparsity=0.5, power=-1.0), "power"),
    (dict(sparsity=0.5, key=2.5), "key"),
    (dict(sparsity=0.5, prunable=None), "prunable"),
  ]:
    with pytest.raises(ValueError, match=f"`{arg}`"):
      sparse.random_init(**kwargs)


# --------------------------------------------------- the methods' mask keys

DYNAMIC = {
  "rigl": lambda masks, **kw: sparse.rigl(SGD, masks, end_step=10, **kw),
  "set_": lambda masks, **kw: sparse.set_(SGD, masks, end_step=10, **kw),
  "dsr": lambda masks, **kw: sparse.dsr(SGD, masks, **kw),
  "mest": lambda masks, **kw: sparse.mest(SGD, masks, update_every=2, decay_steps=(4, 8), **kw),
}
SHORTHAND_DISTRIBUTION = {"rigl": "erk", "set_": "erk", "dsr": "uniform", "mest": "uniform"}


@pytest.mark.parametrize("method", sorted(DYNAMIC))
@pytest.mark.parametrize("key", [0, 17, "typed"])
def test_dynamic_methods_split_their_key_into_mask_and_state_keys(method, key):
  key = jax.random.key(3) if key == "typed" else key
  raw = jax.random.key_data(key) if not isinstance(key, int) else jax.random.PRNGKey(key)
  mask_key, state_key = jax.random.split(raw)
  make = DYNAMIC[method]
  for s, d in [(0.7, "er"), (0.5, "uniform")]:
    state = make(sparse.random_init(s, d), key=key).init(PARAMS)
    _assert_same_masks(state.masks, _reference(mask_key, PARAMS, s, d))
    np.testing.assert_array_equal(np.asarray(state.key), np.asarray(state_key))
  # The shorthand: the method's own distribution, the same key.
  d = SHORTHAND_DISTRIBUTION[method]
  state = make(None, sparsity=0.7, key=key).init(PARAMS)
  _assert_same_masks(state.masks, _reference(mask_key, PARAMS, 0.7, d))
  # Masks with a key of their own use it; the state key stays the method's.
  state = make(sparse.random_init(0.7, key=99), key=key).init(PARAMS)
  _assert_same_masks(state.masks, _reference(jax.random.PRNGKey(99), PARAMS, 0.7, "erk"))
  np.testing.assert_array_equal(np.asarray(state.key), np.asarray(state_key))


def test_static_masks_uses_its_key_as_it_is():
  for key in (0, 5):
    want = _reference(jax.random.PRNGKey(key), PARAMS, 0.7, "erk")
    for tx in (
      sparse.static_masks(SGD, sparse.random_init(0.7), key=key),
      sparse.static_masks(SGD, sparsity=0.7, key=key),
      sparse.static_masks(SGD, sparse.random_init(0.7, key=key), key=123),
    ):
      _assert_same_masks(tx.init(PARAMS).masks, want)


@pytest.mark.parametrize("method", sorted(DYNAMIC) + ["static"])
def test_explicit_masks_and_mask_functions_are_taken_as_given(method):
  tree = {"conv": jnp.arange(72).reshape(3, 3, 2, 4) % 3 == 0, "fc": None, "b": None}
  make = DYNAMIC.get(method, lambda masks, **kw: sparse.static_masks(SGD, masks, **kw))
  for masks in (tree, lambda p: tree, jax.tree.map(lambda m: m.astype(np.float32), tree)):
    got = make(masks, key=8).init(PARAMS).masks
    _assert_same_masks(got, tree)
    assert got["conv"].dtype == jnp.bool_


@pytest.mark.parametrize("method", sorted(DYNAMIC) + ["static"])
def test_one_initial_masks_argument(method):
  make = DYNAMIC.get(method, lambda masks, **kw: sparse.static_masks(SGD, masks, **kw))
  with pytest.raises(ValueError, match="exactly one of `masks`.*`sparsity`"):
    make(None)
  with pytest.raises(ValueError, match="exactly one of `masks`.*`sparsity`"):
    make(sparse.random_init(0.5), sparsity=0.5)
  with pytest.raises(ValueError, match=r"`masks` must be a mask tree .* sparsity=0\.9"):
    make(0.9)  # the old positional sparsity
  with pytest.raises(ValueError, match="`masks` leaf 'conv' is not a mask"):
    make({"conv": jnp.full((3, 3, 2, 4), 0.5), "fc": None, "b": None})
  with pytest.raises(ValueError, match="`sparsity`"):
    make(None, sparsity="0.9")


def test_mest_default_offsets_follow_the_random_masks_sparsity():
  # 0.9: the profile's EM&S offsets (grow 5%, 2.5%, 0% above the target).
  params = {"w": jnp.ones((10, 10))}
  for masks in (sparse.random_init(0.9, "uniform"), sparse.random_init(0.9, "uniform", key=4)):
    tx = sparse.mest(SGD, masks, variant="ems", update_every=5, decay_steps=(10, 20))
    state = tx.init(params)
    np.testing.assert_array_equal(np.asarray(state.bound_deltas["w"]), [[0, 0, 0], [-5, -2, 0]])


# ------------------------------------------------------------------ create

CREATE_CASES = {
  "static": (dict(sparsity=0.7, key=2), sparse.static_masks),
  "set": (dict(sparsity=0.7, end_step=10, update_every=1, key=2), sparse.set_),
  "rigl": (dict(masks=sparse.random_init(0.7), end_step=10, update_every=1), sparse.rigl),
  "dsr": (dict(sparsity=0.7, update_every=1, init_threshold=0.5), sparse.dsr),
  "mest": (dict(sparsity=0.7, variant="ems", update_every=1, decay_steps=(2, 4)), sparse.mest),
  "gmp": (dict(sparsity=0.7, end_step=4, update_every=1), sparse.gmp),
}


def _two_steps(tx):
  params = {"w": jnp.linspace(-1.0, 1.0, 60).reshape(6, 10), "b": jnp.ones(10)}
  state = tx.init(params)
  params = sparse.apply_masks(params, state)
  for t in range(2):
    grads = jax.tree.map(lambda p: jnp.cos(p + t), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("name", sorted(CREATE_CASES))
def test_create_builds_the_named_constructor(name):
  kwargs, constructor = CREATE_CASES[name]
  got = _two_steps(sparse.create(name, optax.sgd(0.1, momentum=0.9), **kwargs))
  want = _two_steps(constructor(optax.sgd(0.1, momentum=0.9), **kwargs))
  assert type(got[1]) is type(want[1])
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_create_names_the_training_command_uses_for_mest():
  kw = dict(sparsity=0.9, update_every=5, decay_steps=(10, 20))
  for name, variant in (("mest-em", "em"), ("mest-ems", "ems")):
    got = _two_steps(sparse.create(name, SGD, **kw))
    want = _two_steps(sparse.mest(SGD, variant=variant, **kw))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    sparse.create(name, SGD, variant=variant, **kw)  # consistent: fine
  with pytest.raises(ValueError, match="fixes variant='em'"):
    sparse.create("mest-em", SGD, variant="ems", **kw)


def test_create_lists_the_names():
  assert sparse.METHOD_NAMES == (
    "static",
    "set",
    "rigl",
    "dsr",
    "mest",
    "mest-em",
    "mest-ems",
    "gmp",
  )
  for name in ("lasso", "RigL", "", None, 3):
    with pytest.raises(ValueError, match=r"Unknown sparse method .*'static', 'set', 'rigl'"):
      sparse.create(name, SGD)


@pytest.mark.parametrize(
  "name,hint",
  [
    ("dense", "inner optimizer itself"),
    ("random", "random_init"),
    ("magnitude", "magnitude_masks"),
    ("snip", "snip_masks"),
    ("grasp", "grasp_masks"),
    ("lt", "imp_next_round"),
    ("lrr", "imp_next_round"),
  ],
)
def test_create_says_where_mask_sources_go(name, hint):
  with pytest.raises(ValueError, match=f"Unknown sparse method '{name}'.*{hint}"):
    sparse.create(name, SGD, sparsity=0.9)


def test_create_passes_bad_arguments_to_the_constructor():
  with pytest.raises(TypeError, match="distribution"):
    sparse.create("rigl", SGD, sparsity=0.9, end_step=10, distribution="erk")
  with pytest.raises(ValueError, match="`drop_fraction`"):
    sparse.create("set", SGD, sparsity=0.9, end_step=10, drop_fraction=2.0)
