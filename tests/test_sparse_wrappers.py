"""Sparse wrappers: hand-worked topology updates, schedules, compile-once, errors.

Every expected value here is derived by hand or re-derived with NumPy in the
test, never by calling the code under test a second way.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import s2sam_jax as ss
from s2sam_jax import sparse
from s2sam_jax.sparse.dsr import reallocate


def _trace(state):
  return optax.tree.get(state, "trace")


# ----------------------------------------------------------------------- RigL


def _rigl_half_at_step_1(inner, masks, **kwargs):
  """RigL whose first update, at step 1, drops and regrows half of each layer's active
  weights (the next one at step 11); unmasked gradients."""
  return sparse.rigl(
    inner,
    masks=masks,
    drop_fraction=0.5,
    drop_schedule="constant",
    begin_step=1,
    end_step=None,
    update_every=10,
    mask_gradients=False,
    **kwargs,
  )


def _rigl_case(**kwargs):
  """One layer of 8 weights, 4 active, the update at step 1 (hand-worked)."""
  w = jnp.array([[0.5, -0.1, 0.3, -0.8], [0.0, 0.0, 0.0, 0.0]])
  masks = {"w": jnp.array([[True, True, True, True], [False] * 4])}
  g0 = jnp.arange(1.0, 9.0).reshape(2, 4)  # fills the momentum everywhere
  g1 = jnp.array([[9.0, 0.2, 5.0, 9.0], [0.1, 3.0, 4.0, 0.05]])
  tx = _rigl_half_at_step_1(optax.sgd(0.0, momentum=0.9), masks, **kwargs)
  params = {"w": w}
  state = tx.init(params)
  _, state = tx.update({"w": g0}, state, params)
  updates, state = tx.update({"w": g1}, state, params)
  return params, updates, state, g0


def test_rigl_hand_worked_drop_and_grow():
  # k = floor(0.5 * 4) = 2. Drop the 2 smallest |w| among active: flat 1
  # (0.1) and 2 (0.3). Grow the 2 largest |g1| among the rest
  # {1: .2, 2: 5, 4: .1, 5: 3, 6: 4, 7: .05}: flat 2 (regrown) and 6.
  params, updates, state, g0 = _rigl_case()
  expected_mask = np.zeros(8, bool)
  expected_mask[[0, 2, 3, 6]] = True
  np.testing.assert_array_equal(np.ravel(state.masks["w"]), expected_mask)
  # The gradient step is skipped: kept weights unchanged (2 keeps its value,
  # it was dropped and regrown), the dropped weight 1 goes to exactly 0.
  new_w = np.ravel(optax.apply_updates(params, updates)["w"])
  np.testing.assert_array_equal(new_w, np.array([0.5, 0.0, 0.3, -0.8, 0, 0, 0, 0], np.float32))
  # Momentum after step 0 is g0 (lr 0, dense gradient); the update zeroes it
  # where the mask changed (1 dropped, 6 grown), not at 2 (dropped+regrown);
  # the inner step is skipped, so nothing else changes.
  expected_trace = np.ravel(np.asarray(g0)).copy()
  expected_trace[[1, 6]] = 0.0
  np.testing.assert_array_equal(np.ravel(_trace(state)["w"]), expected_trace)


def test_rigl_without_skip_takes_the_step_with_new_masks():
  params, updates, state, g0 = _rigl_case(skip_update_step=False)
  # Inner step ran: momentum = g1 + 0.9 * (g0 zeroed at 1 and 6).
  g1 = np.array([9.0, 0.2, 5.0, 9.0, 0.1, 3.0, 4.0, 0.05], np.float32)
  prev = np.ravel(np.asarray(g0)).copy()
  prev[[1, 6]] = 0.0
  np.testing.assert_allclose(np.ravel(_trace(state)["w"]), g1 + 0.9 * prev, rtol=1e-6)


@pytest.mark.parametrize("alpha,begin,end", [(0.3, 0, 100), (0.5, 20, 70)])
def test_drop_fraction_schedule_matches_formula(alpha, begin, end):
  f = sparse.drop_fraction_schedule(alpha, begin, end)
  for t in [begin, begin + 1, (begin + end) // 2, end - 1, end, end + 50]:
    expected = alpha / 2 * (1 + math.cos(math.pi * min(t - begin, end - begin) / (end - begin)))
    assert float(f(t)) == pytest.approx(expected, abs=1e-6)
  assert float(sparse.drop_fraction_schedule(alpha, 0, None, "constant")(7)) == pytest.approx(alpha)


def test_rigl_swaps_floor_of_cosine_fraction_per_update():
  # 40 weights, 20 active with large |w|; |g| is zero on active weights and
  # positive elsewhere, so every grown weight is a fresh one and the number
  # of dropped weights is exactly k_t = floor(f_t * 20).
  n, active, every, end = 40, 20, 3, 30
  w0 = jnp.concatenate([jnp.linspace(1.0, 2.0, active), jnp.zeros(n - active)])
  masks = {"w": jnp.arange(n) < active}
  tx = sparse.rigl(optax.sgd(0.0), masks=masks, drop_fraction=0.4, end_step=end, update_every=every)
  state, params = tx.init({"w": w0}), {"w": w0}
  step = jax.jit(tx.update)
  for t in range(end + 4):
    old = np.asarray(state.masks["w"])
    grads = {"w": jnp.where(state.masks["w"], 0.0, 1.0 + jnp.arange(n) / n)}
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    new = np.asarray(state.masks["w"])
    f_t = 0.2 * (1 + math.cos(math.pi * min(t, end) / end))
    expected = math.floor(f_t * active + 1e-9) if t % every == 0 and t < end else 0
    assert int(np.sum(old & ~new)) == expected, t
    assert int(new.sum()) == active


# ------------------------------------------------------------------------ SET


def test_set_grows_uniformly_among_not_kept():
  # 20 weights, 10 active with |w| = 1..10: k = floor(0.3 * 10) = 3 drops
  # flat 0, 1, 2 (|w| = 1, 2, 3). 3 are grown among the 13 not kept (the 10
  # inactive and the 3 just dropped), each with probability 3/13.
  n, active, trials = 20, 10, 2600
  w = jnp.concatenate([jnp.arange(1.0, active + 1), jnp.zeros(n - active)])
  masks = {"w": jnp.arange(n) < active}
  tx = sparse.set_(
    optax.sgd(0.1),
    masks=masks,
    drop_fraction=0.3,
    drop_schedule="constant",
    end_step=None,
    update_every=5,
  )
  state = tx.init({"w": w})
  keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(trials))

  def new_mask(key):
    _, s = tx.update({"w": jnp.ones(n)}, state._replace(key=key), {"w": w})
    return s.masks["w"]

  got = np.asarray(jax.jit(jax.vmap(new_mask))(keys))
  np.testing.assert_array_equal(got.sum(1), active)
  assert got[:, 3:active].all()  # the 7 largest are always kept
  candidates = np.r_[0:3, active:n]
  counts = got[:, candidates].sum(0)
  assert counts.sum() == 3 * trials
  expected = 3 * trials / len(candidates)
  chi2 = float(np.sum((counts - expected) ** 2 / expected))
  assert chi2 < 40.0, (chi2, counts)  # 12 dof: P(chi2 > 40) < 1e-4


# ------------------------------------------------------------------------ DSR


def test_dsr_hand_worked_threshold_and_reallocation():
  # H = 1e-3. Layer a: active |w| = .5, .0005, .2, .0001, .3, .4 -> drops
  # flat 1 and 3 (2 removed, 4 survive). Layer b: all 3 active are below H:
  # the largest (flat 2) survives, 2 removed. K = 4, survivors n = (4, 1):
  # quotas round(4*4/5) = 3, round(4*1/5) = 1, residual 0.
  a = jnp.array([0.5, 0.0005, 0.2, 0.0001, 0.3, 0.4, 0, 0, 0, 0])
  b = jnp.array([0.0002, 0.0003, 0.0004, 0, 0, 0])
  params = {"a": a, "b": b}
  masks = {"a": jnp.arange(10) < 6, "b": jnp.arange(6) < 3}
  for target, expected_h in [(10, 2e-3), (2, 5e-4), (4, 1e-3)]:
    tx = sparse.dsr(optax.sgd(0.0), masks=masks, update_every=1, target_count=target)
    state = tx.init(params)
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    new_a, new_b = np.asarray(state.masks["a"]), np.asarray(state.masks["b"])
    # K=4 vs N_target: 4 < 0.9*10 doubles, 4 > 1.1*2 halves, 4 keeps H.
    assert float(state.threshold) == pytest.approx(expected_h)
    np.testing.assert_array_equal(new_a[[0, 2, 4, 5]], True)
    np.testing.assert_array_equal(new_a[[1, 3]], False)  # not regrown
    assert new_a[6:].sum() == 3
    assert new_b[2] and not new_b[0] and not new_b[1] and new_b[3:].sum() == 1


def test_dsr_reallocation_moves_excess_to_layers_with_room():
  # removed 10, survivors (5, 5): quotas (5, 5); layer 0 has room 6 - 5 = 1,
  # so 4 move to layer 1: (1, 9).
  quota = reallocate(
    jnp.int32(10),
    jnp.array([5, 5], jnp.int32),
    jnp.array([6, 100], jnp.int32),
    jax.random.PRNGKey(0),
  )
  np.testing.assert_array_equal(np.asarray(quota), [1, 9])
  # Residual: removed 3 over survivors (1, 1, 1): quotas round(1) each = 3.
  # removed 2 over (1, 1, 1): round(2/3) = 1 each, residual -1 on one layer.
  quota = reallocate(
    jnp.int32(2),
    jnp.array([1, 1, 1], jnp.int32),
    jnp.array([10, 10, 10], jnp.int32),
    jax.random.PRNGKey(3),
  )
  assert int(quota.sum()) == 2 and sorted(np.asarray(quota).tolist()) == [0, 1, 1]


# ----------------------------------------------------------------------- MEST


@pytest.mark.parametrize(
  "variant,expected",
  [
    # count after the update at t = 0, 5 | 10, 15 | 20, 25 (c = 10, N = 100)
    ("em", [10, 10, 10, 10, 10, 10]),
    # EM&S: grow 5 %, then round(2.5) = 2 %, then back to the target.
    ("ems", [15, 15, 12, 12, 10, 10]),
  ],
)
def test_mest_counts_follow_bound_schedule(variant, expected):
  every = 5  # a 10 x 10 layer: N = 100, target c = 10
  w0 = jax.random.normal(jax.random.PRNGKey(1), (10, 10))
  tx = sparse.mest(
    optax.sgd(0.0),
    sparse.random_init(0.9, "uniform"),
    variant=variant,
    update_every=every,
    decay_steps=(10, 20),
  )
  params = {"w": w0}
  state = tx.init(params)
  params = sparse.apply_masks(params, state)
  assert int(state.masks["w"].sum()) == 10
  prune_delta = {"em": [2, 1, 0], "ems": [0, 0, 0]}[variant]
  got = []
  step = jax.jit(tx.update)
  for t in range(28):
    old = np.ravel(state.masks["w"])
    w = np.abs(np.ravel(params["w"]))
    updates, state = step({"w": jnp.ones((10, 10))}, state, params)
    params = optax.apply_updates(params, updates)
    new = np.ravel(state.masks["w"])
    if t % every:
      np.testing.assert_array_equal(new, old)
      continue
    got.append(int(new.sum()))
    # The survivors of the prune are the (10 - delta) largest active |w|.
    keep = 10 - prune_delta[t // 10]
    top = np.argsort(-np.where(old, w, -1), kind="stable")[: min(keep, old.sum())]
    assert new[top].all()
  assert got == expected


# ------------------------------------------------------------------------ GMP


def test_gmp_follows_cubic_schedule():
  n, begin, end, every, s_f, s_i = 200, 4, 24, 5, 0.9, 0.1
  w0 = jax.random.normal(jax.random.PRNGKey(2), (20, 10))
  tx = sparse.gmp(
    optax.sgd(0.0), s_f, begin_step=begin, end_step=end, update_every=every, initial_sparsity=s_i
  )
  params = {"w": w0}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(end + 5):
    updates, state = step({"w": jnp.ones((20, 10))}, state, params)
    params = optax.apply_updates(params, updates)
    if t < begin:
      expected = n
    else:
      last = min(begin + (t - begin) // every * every, end)
      if t >= end:
        last = end
      s_t = s_f + (s_i - s_f) * (1 - (last - begin) / (end - begin)) ** 3
      expected = round((1 - s_t) * n)
    m = np.ravel(state.masks["w"])
    assert int(m.sum()) == expected, t
    # the survivors are the largest |w0| (lr 0: weights never move)
    top = np.argsort(-np.abs(np.ravel(w0)), kind="stable")[:expected]
    assert m[top].all()
    assert np.all(np.ravel(params["w"])[~m] == 0)


# ----------------------------------------------------- compile once, all methods


def _params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return {
    "conv": jax.random.normal(k1, (3, 3, 4, 8)),
    "dense": jax.random.normal(k2, (8, 6)),
    "bias": jnp.zeros(6),
  }


def _loss(p):
  # non-zero gradient at w = 0, so growth and ε see pruned entries
  return (
    jnp.sum(jnp.sin(p["conv"] + 0.3) ** 2)
    + jnp.sum(jnp.cos(p["dense"] + 0.7))
    + jnp.sum((p["bias"] - 1.0) ** 2)
  )


METHODS = {
  "static": lambda opt: sparse.static_masks(opt, sparsity=0.8),
  "set": lambda opt: sparse.set_(opt, sparsity=0.8, end_step=12, update_every=2),
  "rigl": lambda opt: sparse.rigl(opt, sparse.random_init(0.8), end_step=12, update_every=2),
  "dsr": lambda opt: sparse.dsr(opt, sparsity=0.8, update_every=2),
  "mest": lambda opt: sparse.mest(
    opt, sparsity=0.8, variant="ems", update_every=2, decay_steps=(4, 8)
  ),
  "gmp": lambda opt: sparse.gmp(opt, 0.8, end_step=8, update_every=2),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_jitted_step_compiles_once(method):
  tx = METHODS[method](optax.sgd(0.05, momentum=0.9))
  state = tx.init(_params())
  params = sparse.apply_masks(_params(), state)
  traces = []

  @jax.jit
  def train_step(params, state):
    traces.append(1)
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(10):
    params, state = train_step(params, state)
  assert len(traces) == 1
  for name, m in state.masks.items():
    if m is not None:
      assert np.all(np.asarray(params[name])[~np.asarray(m)] == 0)


# --------------------------------------------------- optimizers and nesting


def test_inner_state_zeroed_for_nested_optimizers():
  # multi_transform + masked + chain: every per-param buffer is zeroed where
  # the mask changed, whatever the optimizer's state layout.
  params = {"a": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.ones(4)}
  masks = {"a": jnp.arange(12).reshape(3, 4) % 2 == 0, "b": None}
  inner = optax.multi_transform(
    {
      "adam": optax.chain(optax.add_decayed_weights(1e-4), optax.adam(0.0)),
      "sgd": optax.masked(optax.sgd(0.0, momentum=0.9), {"a": False, "b": True}),
    },
    {"a": "adam", "b": "sgd"},
  )
  tx = _rigl_half_at_step_1(inner, masks)
  state = tx.init(params)
  g = {"a": jnp.ones((3, 4)), "b": jnp.ones(4)}
  _, state = tx.update(g, state, params)
  _, state = tx.update(g, state, params)
  changed = np.asarray(state.masks["a"] != masks["a"])
  assert changed.sum() > 0
  for name in ("mu", "nu"):
    buf = np.asarray(optax.tree.get(state.inner_state, name)["a"])
    assert np.all(buf[changed] == 0) and np.all(buf[~changed] != 0)
  trace_b = np.asarray(optax.tree.get(state.inner_state, "trace")["b"])
  np.testing.assert_array_equal(trace_b, 1.0)  # dense leaf untouched


def test_extra_args_are_forwarded_to_inner():
  def scaled_sgd():
    def update(updates, state, params=None, *, scale):
      return jax.tree.map(lambda g: -scale * g, updates), state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

  params = {"w": jnp.ones((2, 2))}
  masks = {"w": jnp.eye(2, dtype=bool)}
  for tx in [
    sparse.static_masks(scaled_sgd(), masks),
    sparse.rigl(scaled_sgd(), masks=masks, end_step=10, update_every=3, begin_step=1),
  ]:
    state = tx.init(params)
    updates, _ = tx.update({"w": jnp.ones((2, 2))}, state, params, scale=0.25)
    np.testing.assert_allclose(np.asarray(updates["w"]), [[-0.25, -1.0], [-1.0, -0.25]])


def test_apply_and_get_masks_find_nested_state():
  params = {"w": jnp.ones((2, 3))}
  masks = {"w": jnp.array([[True, False, True], [False, False, True]])}
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), ss.s2sam(sparse.static_masks(optax.sgd(0.1), masks))
  )
  state = tx.init(params)
  np.testing.assert_array_equal(np.asarray(sparse.get_masks(state)["w"]), np.asarray(masks["w"]))
  np.testing.assert_array_equal(
    np.asarray(sparse.apply_masks(params, state)["w"]), np.asarray(masks["w"], np.float32)
  )
  dense_state = optax.adam(1e-3).init(params)
  assert sparse.get_masks(dense_state) is None
  assert sparse.apply_masks(params, dense_state) is params


# ------------------------------------------------------------ S2-SAM and SAM


def _sparse_sam_cases():
  return {
    "s2sam(rigl)": (
      ss.s2sam(
        sparse.rigl(optax.sgd(0.05, momentum=0.9), sparsity=0.7, end_step=20, update_every=3),
        rho=0.05,
      ),
      False,
    ),
    "s2sam(static)": (
      ss.s2sam(
        sparse.static_masks(
          optax.sgd(0.05, momentum=0.9),
          lambda p: sparse.random_masks(jax.random.PRNGKey(1), p, sparse.layer_densities(p, 0.7)),
        ),
        rho=0.05,
      ),
      False,
    ),
    "sam(rigl)": (
      ss.sam(
        sparse.rigl(optax.sgd(0.05, momentum=0.9), sparsity=0.7, end_step=20, update_every=3),
        rho=0.05,
      ),
      True,
    ),
  }


@pytest.mark.parametrize("name", sorted(_sparse_sam_cases()))
def test_sam_variants_over_sparse_wrappers(name):
  tx, needs_grad_fn = _sparse_sam_cases()[name]
  state = tx.init(_params())
  params = sparse.apply_masks(_params(), state)
  extra = {"grad_fn": jax.grad(_loss)} if needs_grad_fn else {}
  traces = []

  @jax.jit
  def train_step(params, state):
    traces.append(1)
    updates, state = tx.update(jax.grad(_loss)(params), state, params, **extra)
    return optax.apply_updates(params, updates), state

  first_masks = sparse.get_masks(state)
  for _ in range(8):
    params, state = train_step(params, state)
    clean = ss.unperturbed(params, state)
    masks = sparse.get_masks(state)
    for leaf in ("conv", "dense"):
      m = np.asarray(masks[leaf])
      assert np.all(np.asarray(clean[leaf])[~m] == 0)
      assert np.all(np.asarray(params[leaf])[~m] == 0)  # held params too
      assert np.isfinite(np.asarray(params[leaf])).all()
  assert len(traces) == 1
  if "rigl" in name:  # the topology did change
    assert any(
      bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(first_masks), jax.tree.leaves(masks))
    )
  if name.startswith("s2sam"):
    eps = optax.tree.get(state, "perturbation")
    for leaf in ("conv", "dense"):
      m = np.asarray(masks[leaf])
      assert np.all(np.asarray(eps[leaf])[~m] == 0)
      assert np.any(np.asarray(eps[leaf])[m] != 0)


def test_s2sam_perturb_pruned_switch_perturbs_masked_weights():
  # The check above can fail: with the authors' dense perturbation the
  # masked entries of ε are non-zero.
  tx = ss.s2sam(
    sparse.static_masks(optax.sgd(0.05), sparse.random_init(0.7)), rho=0.05, perturb_pruned=True
  )
  state = tx.init(_params())
  params = sparse.apply_masks(_params(), state)
  for _ in range(2):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  eps = optax.tree.get(state, "perturbation")["dense"]
  m = np.asarray(sparse.get_masks(state)["dense"])
  assert np.any(np.asarray(eps)[~m] != 0)


# ------------------------------------------------------------------ bad input


RANDOM = sparse.random_init(0.5)

BAD_INPUT = [
  (lambda: sparse.random_init(1.0), "sparsity"),
  (lambda: sparse.random_init(-0.1), "sparsity"),
  (lambda: sparse.random_init("0.5"), "sparsity"),
  (lambda: sparse.random_init(0.5, distribution="gauss"), "distribution"),
  (lambda: sparse.random_init(0.5, key="seed"), "key"),
  (lambda: sparse.random_init(0.5, prunable="kernels"), "prunable"),
  (lambda: sparse.static_masks(optax.sgd(0.1), sparsity=1.0), "sparsity"),
  (lambda: sparse.static_masks(optax.sgd(0.1), 0.5), "masks"),  # not sparsity=0.5
  (lambda: sparse.static_masks(optax.sgd(0.1), RANDOM, sparsity=0.5), "masks"),
  (lambda: sparse.static_masks(optax.sgd(0.1), RANDOM, key=1.5), "key"),
  (lambda: sparse.rigl(optax.sgd(0.1), RANDOM, end_step=10, update_every=0), "update_every"),
  (lambda: sparse.rigl(optax.sgd(0.1), RANDOM, end_step=10, drop_fraction=0.0), "drop_fraction"),
  (lambda: sparse.set_(optax.sgd(0.1), RANDOM, end_step=10, drop_fraction=1.0), "drop_fraction"),
  (lambda: sparse.rigl(optax.sgd(0.1), RANDOM, end_step=None), "end_step"),
  (lambda: sparse.rigl(optax.sgd(0.1), RANDOM, end_step=5, begin_step=5), "end_step"),
  (lambda: sparse.rigl(optax.sgd(0.1), RANDOM, end_step=5, drop_schedule="exp"), "drop_schedule"),
  (lambda: sparse.rigl(optax.sgd(0.1), end_step=5), "sparsity"),
  (lambda: sparse.rigl(optax.sgd(0.1), end_step=5), "masks"),
  (lambda: sparse.rigl(optax.sgd(0.1), sparsity=1.5, end_step=5), "sparsity"),
  (lambda: sparse.rigl(optax.sgd(0.1), 0.5, end_step=5), "masks"),
  (lambda: sparse.set_(optax.sgd(0.1), sparsity=0.5, end_step=5, key="seed"), "key"),
  (lambda: sparse.dsr(optax.sgd(0.1), RANDOM, update_every=0), "update_every"),
  (lambda: sparse.dsr(optax.sgd(0.1), sparsity=0.5, target_fraction=1.5), "target_fraction"),
  (lambda: sparse.dsr(optax.sgd(0.1), sparsity=0.5, init_threshold=0.0), "init_threshold"),
  (lambda: sparse.dsr(optax.sgd(0.1), "0.5"), "masks"),
  (
    lambda: sparse.mest(
      optax.sgd(0.1), sparsity=0.5, variant="emx", update_every=5, decay_steps=(1, 2)
    ),
    "variant",
  ),
  (lambda: sparse.mest(optax.sgd(0.1), sparsity=0.5, update_every=5), "decay_steps"),
  (
    lambda: sparse.mest(optax.sgd(0.1), sparsity=0.5, update_every=5, decay_steps=(3, 2)),
    "decay_steps",
  ),
  (
    lambda: sparse.mest(
      optax.sgd(0.1),
      sparsity=0.5,
      update_every=5,
      decay_steps=(4,),
      prune_offsets=(0.0, 0.0),
      grow_offsets=(0.1, 0.0),
    ),
    "grow_offsets",
  ),
  (lambda: sparse.gmp(optax.sgd(0.1), 0.5, end_step=0), "end_step"),
  (lambda: sparse.gmp(optax.sgd(0.1), 0.5, end_step=10, initial_sparsity=0.6), "initial_sparsity"),
  (lambda: sparse.static_masks(optax.sgd(0.1), None), "masks"),
]


@pytest.mark.parametrize("make,arg", BAD_INPUT)
def test_bad_input_raises_value_error_naming_argument(make, arg):
  with pytest.raises(ValueError, match=f"`{arg}`"):
    make()


def test_masks_not_matching_params_raise_at_init():
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
  for masks in [{"w": jnp.ones((4, 3), bool), "b": None}, {"w": jnp.ones((3, 4), bool)}]:
    for tx in [
      sparse.static_masks(optax.sgd(0.1), masks),
      sparse.rigl(optax.sgd(0.1), masks=masks, end_step=10),
    ]:
      with pytest.raises(ValueError, match="`masks`"):
        tx.init(params)


def test_update_without_params_raises():
  tx = sparse.static_masks(optax.sgd(0.1), sparse.random_init(0.5))
  params = {"w": jnp.ones((4, 4))}
  state = tx.init(params)
  with pytest.raises(ValueError, match="`params`"):
    tx.update(params, state)
