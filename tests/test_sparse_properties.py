"""Property tests (hypothesis) for the sparse wrappers.

For random layer shapes, sparsities, seeds, methods and optimizers, with and
without gradient masking, over a few jitted steps with a topology update every
other step:

* exact per-layer counts after init (``round(d_l n)``, d_l from
  ``layer_densities``) and after every update (SET, RigL, MEST EM, static
  keep them; DSR keeps the global count; MEST EM&S and GMP follow their
  schedules, re-derived here);
* params exactly zero where masked; no NaN;
* with masked gradients, the inner state (SGD momentum, Adam moments) of
  dropped weights is 0, and newly grown weights start from zero state: 0 after a skipped step (RigL,
  SET), one fresh inner step's state otherwise (``trace = g``,
  ``mu = (1-b1) g``, ``nu = (1-b2) g²``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sam_jax import _masks, sparse

EVERY, STEPS, DECAY = 2, 7, (3, 5)
B1, B2 = 0.9, 0.999


@st.composite
def param_shapes(draw):
  shapes = []
  for _ in range(draw(st.integers(1, 2))):
    if draw(st.booleans()):
      shapes.append((draw(st.integers(2, 12)), draw(st.integers(2, 12))))
    else:
      shapes.append(
        tuple(draw(st.integers(1, 3)) for _ in range(2))
        + tuple(draw(st.integers(1, 6)) for _ in range(2))
      )
  return shapes


def _make_params(shapes, seed):
  keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
  return {
    f"layer{i}": {"kernel": jax.random.normal(k, s), "bias": jnp.zeros(s[-1])}
    for i, (k, s) in enumerate(zip(keys, shapes))
  }


def _loss(params):
  # gradient non-zero at w = 0, so growth and grown weights see real values
  return sum(
    jnp.sum(jnp.sin(p["kernel"] + 0.3) ** 2) + jnp.sum(p["bias"] ** 2) for p in params.values()
  )


def _make_tx(method, opt, sparsity, distribution, seed, mask_gradients):
  init = sparse.random_init(sparsity, distribution)  # drawn with the method's key
  common = dict(key=seed, mask_gradients=mask_gradients)
  if method == "static":
    return sparse.static_masks(opt, init, **common)
  if method in ("set", "rigl"):
    fn = sparse.set_ if method == "set" else sparse.rigl
    return fn(opt, init, end_step=STEPS + 1, update_every=EVERY, drop_fraction=0.5, **common)
  if method == "dsr":
    return sparse.dsr(opt, init, update_every=EVERY, **common)
  if method in ("em", "ems"):
    return sparse.mest(opt, init, variant=method, update_every=EVERY, decay_steps=DECAY, **common)
  return sparse.gmp(
    opt,
    sparsity,
    end_step=6,
    update_every=EVERY,
    distribution=distribution,
    mask_gradients=mask_gradients,
  )


def _counts(masks):
  return {name: int(np.sum(m["kernel"])) for name, m in masks.items()}


def _mest_bounds(method, sparsity, init_counts, sizes):
  """Per phase and layer ``(prune-to, grow-to)`` counts of the default
  (profile) offsets, and whether each is possible (``1 <= keep``,
  ``grow-to <= N``)."""
  prune, grow = sparse.mest_profile_offsets(method, sparsity)
  grow = tuple(max(u, -sparsity) for u in grow)  # grow at most to dense
  bounds = [
    {k: (c - round(l * sizes[k]), c - round(u * sizes[k])) for k, c in init_counts.items()}
    for l, u in zip(prune, grow)
  ]
  valid = all(
    keep >= 1 and grow_to <= sizes[k] for phase in bounds for k, (keep, grow_to) in phase.items()
  )
  return bounds, valid


def _expected_counts(method, t, init_counts, sizes, final_density, sparsity):
  """Per-layer counts after the step at t (None: only the total is fixed)."""
  if method in ("static", "set", "rigl", "em"):
    return init_counts
  if method == "dsr":
    return None
  if method == "ems":
    last = t - t % EVERY
    phase = (last >= DECAY[0]) + (last >= DECAY[1])
    bounds, _ = _mest_bounds(method, sparsity, init_counts, sizes)
    return {k: grow_to for k, (_, grow_to) in bounds[phase].items()}
  last = min(t - t % EVERY, 6)  # gmp: s_t at the last pruning step
  counts = {}
  for k, d in final_density.items():
    s_f = 1.0 - d
    s_t = s_f + (0.0 - s_f) * (1 - last / 6) ** 3
    counts[k] = round((1 - s_t) * sizes[k])
  return counts


@pytest.mark.parametrize("method", ["static", "set", "rigl", "dsr", "em", "ems", "gmp"])
@settings(max_examples=4, deadline=None)
@given(
  shapes=param_shapes(),
  sparsity=st.floats(0.0, 0.95),
  seed=st.integers(0, 2**16),
  optimizer=st.sampled_from(["sgdm", "adam"]),
  distribution=st.sampled_from(["uniform", "erk"]),
  mask_gradients=st.booleans(),
)
def test_sparse_wrapper_invariants(
  shapes, sparsity, seed, method, optimizer, distribution, mask_gradients
):
  opt = optax.sgd(0.05, momentum=0.9) if optimizer == "sgdm" else optax.adam(0.05, b1=B1, b2=B2)
  params = _make_params(shapes, seed)
  tx = _make_tx(method, opt, sparsity, distribution, seed, mask_gradients)
  densities = sparse.layer_densities(params, sparsity, distribution)
  sizes = {k: int(np.prod(s)) for k, s in zip(params, shapes)}
  final_density = {k: densities[k]["kernel"] for k in params}
  if method in ("em", "ems"):
    # init refuses exactly the offsets that would empty or overfill a layer
    counts = {k: round(final_density[k] * sizes[k]) for k in params}
    if not _mest_bounds(method, sparsity, counts, sizes)[1]:
      with pytest.raises(ValueError, match="offsets"):
        tx.init(params)
      return
  state = tx.init(params)
  params = sparse.apply_masks(params, state)

  # Counts after init: round(d_l n) for the densities of the distribution.
  init_counts = _counts(state.masks)
  if method == "gmp":
    assert init_counts == sizes  # starts dense
  else:
    assert init_counts == {k: round(final_density[k] * sizes[k]) for k in params}
  total = sum(init_counts.values())

  @jax.jit
  def train_step(params, state):
    grads = jax.grad(_loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, grads

  skip = method in ("set", "rigl")
  for t in range(STEPS):
    old_masks = state.masks
    params, state, grads = train_step(params, state)
    counts = _counts(state.masks)
    expected = _expected_counts(method, t, init_counts, sizes, final_density, sparsity)
    if expected is None:
      assert sum(counts.values()) == total
    else:
      assert counts == expected, (t, counts, expected)
    for name in params:
      m = np.asarray(state.masks[name]["kernel"])
      old = np.asarray(old_masks[name]["kernel"])
      w = np.asarray(params[name]["kernel"])
      g = np.asarray(grads[name]["kernel"])
      assert np.all(w[~m] == 0)
      assert np.isfinite(w).all()
      grown, dropped = m & ~old, old & ~m
      bufs = {"trace": g} if optimizer == "sgdm" else {"mu": (1 - B1) * g, "nu": (1 - B2) * g * g}
      for buf_name, fresh in bufs.items():
        buf = np.asarray(optax.tree.get(state.inner_state, buf_name)[name]["kernel"])
        assert np.isfinite(buf).all()
        if not mask_gradients:
          # dense gradients reach masked entries; only skipped steps leave
          # the freshly zeroed state of changed entries as it is
          if skip:
            assert np.all(buf[grown | dropped] == 0)
          continue
        assert np.all(buf[dropped] == 0)
        if skip:
          assert np.all(buf[grown] == 0)
        else:
          np.testing.assert_allclose(buf[grown], fresh[grown], rtol=1e-5, atol=1e-7)


_SPECIAL = [
  0.0,
  -0.0,
  1.0,
  -1.0,
  2.5,
  float("nan"),
  float("inf"),
  -float("inf"),
  1e-30,
  -1e-30,
  3e38,
  -3e38,
]


@settings(max_examples=60, deadline=None)
@given(
  values=st.lists(
    st.one_of(st.sampled_from(_SPECIAL), st.floats(-1e3, 1e3, width=32)), min_size=1, max_size=40
  ),
  k=st.integers(-2, 45),
)
def test_top_k_mask_matches_sorted_reference(values, k):
  # NumPy reference: stable sort by descending score with NaN last; -0 == 0.
  x = np.asarray(values, np.float32)
  key = np.where(np.isnan(x), -np.inf, x)
  order = sorted(range(len(x)), key=lambda i: (-key[i], i))
  expected = np.zeros(len(x), bool)
  expected[order[: max(0, min(k, len(x)))]] = True
  got = np.asarray(_top_k_jit(jnp.asarray(x), k))
  np.testing.assert_array_equal(got, expected)


_top_k_jit = jax.jit(_masks.keep_top_k)
