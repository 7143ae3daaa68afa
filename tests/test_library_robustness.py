"""Bad inputs the library used to turn into silently wrong results.

* non-finite gradients: masked weights stay exactly 0 in every wrapper and
  nesting; the stored perturbation is never non-finite (a non-finite masked
  gradient gives ε = 0); with ``optax.apply_if_finite`` anywhere in the chain
  a run recovers after one bad gradient (against a NumPy re-derivation for
  plain and masked SGD);
* non-finite ``rho`` / ``eta`` / ``eps`` and bad ``buffer_dtype`` refused;
* masks that are not masks (scores, NaN) refused at every entry point;
* ``unperturbed`` / ``perturbed`` with params of other shapes refused;
* SNIP / GraSP / magnitude on a non-finite loss, score or weight refused;
* invalid regexes refused naming the argument;
* further arguments that gave NaN silently (schedules, FLOPs, overlaps).

References are NumPy or hand-derived, never the code under test.
"""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import s2sam_jax as ss
from s2sam_jax import sparse

RHO, LR, EVERY = 0.1, 0.05, 2


# ------------------------------------------------------------------ helpers


def _params(seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return {
    "a": {"kernel": jax.random.normal(k1, (6, 8)), "bias": jnp.zeros(8)},
    "b": {"kernel": jax.random.normal(k2, (8, 5)), "bias": jnp.zeros(5)},
  }


def _loss(params):
  # gradient sin(2 (w + 0.3)) is non-zero at w = 0 (grown weights move)
  return sum(
    jnp.sum(jnp.sin(p["kernel"] + 0.3) ** 2) + jnp.sum((p["bias"] - 0.1) ** 2)
    for p in params.values()
  )


def _fixed_masks(params, seed=3):
  rng = np.random.default_rng(seed)
  return {
    k: {"kernel": jnp.asarray(rng.random(v["kernel"].shape) < 0.5), "bias": None}
    for k, v in params.items()
  }


def _sparse(method, inner, params, mask_gradients=True):
  """Every sparse method, with a topology update at step 2."""
  common = dict(mask_gradients=mask_gradients)
  if method == "static_masks":
    return sparse.static_masks(inner, _fixed_masks(params), **common)
  if method == "static_random":
    return sparse.static_masks(inner, sparse.random_init(0.5, "uniform", key=1), **common)
  if method in ("set", "rigl"):
    fn = sparse.set_ if method == "set" else sparse.rigl
    return fn(
      inner,
      sparse.random_init(0.5, "uniform"),
      end_step=100,
      update_every=EVERY,
      drop_fraction=0.5,
      key=1,
      **common,
    )
  if method == "dsr":
    return sparse.dsr(inner, sparsity=0.5, update_every=EVERY, init_threshold=0.5, key=1, **common)
  if method == "mest":
    return sparse.mest(inner, sparsity=0.5, update_every=EVERY, decay_steps=(4, 6), key=1, **common)
  assert method == "gmp"
  return sparse.gmp(inner, 0.5, end_step=6, update_every=EVERY, initial_sparsity=0.2, **common)


METHODS = ["static_masks", "static_random", "set", "rigl", "dsr", "mest", "gmp"]
TOPOLOGY_METHODS = ["set", "rigl", "dsr", "mest", "gmp"]


def _poison(params, masks):
  """NaN, +inf and -inf at active and at masked entries of every masked
  leaf (and +inf in each dense leaf), 0 elsewhere: the non-zero entries
  replace the gradient's (:func:`_step_fn`)."""
  flat_g, treedef = jax.tree.flatten(params)
  flat_m = treedef.flatten_up_to(masks) if masks is not None else [None] * len(flat_g)
  out = []
  for g, m in zip(flat_g, flat_m):
    g = np.zeros(np.shape(g), np.float32)
    if m is None:
      g.flat[0] = np.inf
    else:
      m = np.asarray(m).ravel()
      active, masked = np.flatnonzero(m), np.flatnonzero(~m)
      for idx in (active, masked):
        if idx.size:
          g.flat[idx[0]], g.flat[idx[-1]] = np.nan, (np.inf if idx is active else -np.inf)
    out.append(jnp.asarray(g))
  return jax.tree.unflatten(treedef, out)


def _masked_entries_are_zero(tree, masks):
  flat, treedef = jax.tree.flatten(tree)
  for x, m in zip(flat, treedef.flatten_up_to(masks)):
    if m is not None and not np.all(np.asarray(x)[~np.asarray(m)] == 0):
      return False
  return True


def _all_finite(tree):
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


def _step_fn(tx, two_step):
  """One jitted step; with ``bad``, the non-zero entries of ``poisoned``
  (NaN, ±inf) replace the gradient's, at every gradient evaluation."""

  @jax.jit
  def step(params, state, bad, poisoned):
    def grad_fn(p):
      g = jax.grad(_loss)(p)
      return jax.tree.map(lambda a, b: jnp.where(bad & (b != 0), b, a), g, poisoned)

    if two_step:
      updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
    else:
      updates, state = tx.update(grad_fn(ss.perturbed(params, state)), state, params)
    return optax.apply_updates(params, updates), state

  return step


NESTINGS = {
  "bare": lambda t: t,
  "s2sam": lambda t: ss.s2sam(t, rho=RHO),
  "s2sam_explicit": lambda t: ss.s2sam(t, rho=RHO, mode="explicit"),
  "s2sam_adaptive": lambda t: ss.s2sam(t, rho=RHO, adaptive=True),
  "s2sam_perturb_pruned": lambda t: ss.s2sam(t, rho=RHO, perturb_pruned=True),
  "sam": lambda t: ss.sam(t, rho=RHO),
}


# ------------------------------------------- 1a: masked weights stay zero


@pytest.mark.parametrize("nesting", sorted(NESTINGS))
@pytest.mark.parametrize("method", METHODS)
def test_non_finite_gradient_leaves_masked_weights_exactly_zero(method, nesting):
  params0 = _params()
  # masked gradients, and dense ones (NaN reaches the inner optimizer)
  mask_gradients = method not in ("static_masks", "rigl", "dsr")
  tx = NESTINGS[nesting](_sparse(method, optax.sgd(LR, momentum=0.9), params0, mask_gradients))
  step = _step_fn(tx, nesting == "sam")  # compiled once for both runs
  for bad_step in (1, 2):  # 2: a topology update step
    state = tx.init(params0)
    params = sparse.apply_masks(params0, state)
    for _ in range(bad_step):
      params, state = step(params, state, False, _poison(params, None))
    old_masks = sparse.get_masks(state)
    poisoned = _poison(params, old_masks)
    params, state = step(params, state, True, poisoned)
    new_masks = sparse.get_masks(state)
    clean = ss.unperturbed(params, state)
    # Weights masked after the step are exactly 0 (clean and, unless the
    # perturbation is dense by request, the held point too).
    assert _masked_entries_are_zero(clean, new_masks), bad_step
    if nesting != "s2sam_perturb_pruned":
      assert _masked_entries_are_zero(params, new_masks), bad_step
    # Weights masked before the step stay 0 unless grown at it; RigL and SET
    # skip the gradient step there, so their grown weights start at exactly 0.
    if method in ("static_masks", "static_random", "set", "rigl"):
      assert _masked_entries_are_zero(clean, old_masks), bad_step
    if nesting.startswith("s2sam"):  # the bad gradient gives ε = 0, not NaN
      assert all(np.all(np.asarray(e) == 0) for e in jax.tree.leaves(state.perturbation)), bad_step


# --------------------------------------------- 1b: ε is zero, never NaN


def _numpy_eps(g, w, rho, adaptive, formula, eta=0.01, eps=1e-12):
  g = [np.asarray(x, np.float64) for x in g]
  if adaptive and formula == "authors":
    direction = [np.abs(u) * x for u, x in zip(w, g)]
    step = [x**3 for x in g]
  elif adaptive:
    t = [np.abs(u) + eta for u in w]
    direction = [a * x for a, x in zip(t, g)]
    step = [a * d for a, d in zip(t, direction)]
  else:
    direction = step = g
  norm = math.sqrt(sum(float(np.sum(d * d)) for d in direction))
  return [rho * s / (norm + eps) for s in step]


@st.composite
def _perturbation_case(draw):
  n = draw(st.integers(1, 3))
  shapes = [
    tuple(draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 2)))) for _ in range(n)
  ]
  # no tiny magnitudes: float32 squares would underflow where NumPy's don't
  elems = st.one_of(st.just(0.0), st.floats(0.125, 3, width=32), st.floats(-3, -0.125, width=32))
  grads = [
    np.array(
      draw(st.lists(elems, min_size=int(np.prod(s)), max_size=int(np.prod(s)))), np.float32
    ).reshape(s)
    for s in shapes
  ]
  weights = [
    np.array(
      draw(st.lists(elems, min_size=int(np.prod(s)), max_size=int(np.prod(s)))), np.float32
    ).reshape(s)
    for s in shapes
  ]
  masks = [
    None
    if draw(st.booleans())
    else np.array(
      draw(st.lists(st.booleans(), min_size=int(np.prod(s)), max_size=int(np.prod(s))))
    ).reshape(s)
    for s in shapes
  ]
  for _ in range(draw(st.integers(0, 3))):  # non-finite entries anywhere
    i = draw(st.integers(0, n - 1))
    j = draw(st.integers(0, grads[i].size - 1))
    grads[i].flat[j] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
  variant = draw(st.sampled_from([(False, "asam"), (True, "asam"), (True, "authors")]))
  rho = draw(st.floats(0.0, 2.0))
  return grads, weights, masks, variant, rho


@settings(max_examples=60, deadline=None)
@given(case=_perturbation_case())
def test_perturbation_is_zero_iff_the_masked_gradient_is_not_finite(case):
  grads, weights, masks, (adaptive, formula), rho = case
  as_tree = lambda xs: {f"l{i}": jnp.asarray(x) for i, x in enumerate(xs)}
  mask_tree = {f"l{i}": None if m is None else jnp.asarray(m) for i, m in enumerate(masks)}
  got = ss.perturbation(
    as_tree(grads), as_tree(weights), rho, adaptive=adaptive, formula=formula, masks=mask_tree
  )
  got = [np.asarray(got[f"l{i}"]) for i in range(len(grads))]
  masked = [g if m is None else np.where(m, g, 0.0) for g, m in zip(grads, masks)]
  assert _all_finite(got)
  if not _all_finite(masked):
    for x in got:
      np.testing.assert_array_equal(x, np.zeros_like(x))
  else:
    for x, e in zip(got, _numpy_eps(masked, weights, rho, adaptive, formula)):
      np.testing.assert_allclose(x, e, rtol=1e-5, atol=1e-7)


def test_perturbation_that_would_overflow_is_zero():
  # authors' formula: g³ = 1e45 overflows float32 while ‖|u| g‖ is finite
  g = {"w": jnp.array([1e15, 1.0])}
  u = {"w": jnp.array([1e-20, 1.0])}
  eps = ss.perturbation(g, u, 0.1, adaptive=True, formula="authors")
  np.testing.assert_array_equal(eps["w"], np.zeros(2, np.float32))


@pytest.mark.parametrize(
  "params_dtype, buffer_dtype", [(jnp.float32, jnp.float16), (jnp.float16, None)]
)
def test_stored_perturbation_that_overflows_its_dtype_is_zero(params_dtype, buffer_dtype):
  # ε = ρ g / ‖g‖ = 1e5 is finite in float32 and inf in float16.
  params = {"w": jnp.zeros(1, params_dtype)}
  tx = ss.s2sam(optax.sgd(0.0), rho=1e5, buffer_dtype=buffer_dtype)
  _, state = tx.update({"w": jnp.ones(1, params_dtype)}, tx.init(params), params)
  assert state.perturbation["w"].dtype == jnp.float16
  np.testing.assert_array_equal(state.perturbation["w"], np.zeros(1))
  # and a representable ε is stored as it is
  tx = ss.s2sam(optax.sgd(0.0), rho=2.0, buffer_dtype=buffer_dtype)
  _, state = tx.update({"w": jnp.ones(1, params_dtype)}, tx.init(params), params)
  np.testing.assert_array_equal(state.perturbation["w"], np.full(1, 2.0))


@pytest.mark.parametrize("mode", ["transparent", "explicit"])
def test_s2sam_step_after_a_bad_gradient_is_unperturbed(mode):
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  tx = ss.s2sam(_aif(optax.sgd(0.0)), rho=0.3, mode=mode)
  state = tx.init(params)
  p = params
  u, state = tx.update({"w": jnp.array([3.0, 0.0, 4.0])}, state, p)
  p = optax.apply_updates(p, u)
  np.testing.assert_allclose(state.perturbation["w"], [0.18, 0.0, 0.24], rtol=1e-6)
  u, state = tx.update({"w": jnp.array([1.0, jnp.nan, 1.0])}, state, p)
  p = optax.apply_updates(p, u)
  np.testing.assert_array_equal(state.perturbation["w"], np.zeros(3))
  # the next gradient is taken at the clean weights themselves (lr = 0)
  np.testing.assert_array_equal(ss.perturbed(p, state)["w"], params["w"])
  np.testing.assert_array_equal(ss.unperturbed(p, state)["w"], params["w"])


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_bad_gradient_gives_an_unperturbed_ascent_point(adaptive):
  params = {"w": jnp.array([1.0, -2.0])}
  seen = []

  def grad_fn(p):
    seen.append(p)
    return {"w": jnp.ones(2)}

  tx = ss.sam(optax.sgd(0.1), rho=0.5, adaptive=adaptive)
  tx.update({"w": jnp.array([jnp.inf, 1.0])}, tx.init(params), params, grad_fn=grad_fn)
  np.testing.assert_array_equal(seen[0]["w"], params["w"])


# --------------------------------- 1c: recovery with optax.apply_if_finite


def _aif(inner):
  return optax.apply_if_finite(inner, max_consecutive_errors=3)


def _sgdm():
  return optax.sgd(LR, momentum=0.9)


RECOVERY = {
  # apply_if_finite outermost
  "aif(s2sam(static))": (
    lambda p: _aif(ss.s2sam(_sparse("static_masks", _sgdm(), p), rho=RHO)),
    False,
  ),
  "aif(s2sam(rigl))": (lambda p: _aif(ss.s2sam(_sparse("rigl", _sgdm(), p), rho=RHO)), False),
  "aif(sam(rigl))": (lambda p: _aif(ss.sam(_sparse("rigl", _sgdm(), p), rho=RHO)), True),
  # around s2sam's inner
  "s2sam(aif(sgd))": (lambda p: ss.s2sam(_aif(_sgdm()), rho=RHO), False),
  "s2sam(aif(sgd), masks)": (
    lambda p: ss.s2sam(_aif(_sgdm()), rho=RHO, masks=_fixed_masks(p)),
    False,
  ),
  # around a sparse wrapper under s2sam (and sam)
  "s2sam(aif(static))": (
    lambda p: ss.s2sam(_aif(_sparse("static_masks", _sgdm(), p)), rho=RHO),
    False,
  ),
  "s2sam(aif(rigl))": (lambda p: ss.s2sam(_aif(_sparse("rigl", _sgdm(), p)), rho=RHO), False),
  "s2sam_explicit(aif(dsr))": (
    lambda p: ss.s2sam(_aif(_sparse("dsr", _sgdm(), p)), rho=RHO, mode="explicit"),
    False,
  ),
  "sam(aif(rigl))": (lambda p: ss.sam(_aif(_sparse("rigl", _sgdm(), p)), rho=RHO), True),
  # around a sparse wrapper's inner, bare and under s2sam / sam
  "static(aif(sgd))": (lambda p: _sparse("static_masks", _aif(_sgdm()), p), False),
  "rigl(aif(sgd))": (lambda p: _sparse("rigl", _aif(_sgdm()), p), False),
  "s2sam(static(aif(sgd)))": (
    lambda p: ss.s2sam(_sparse("static_masks", _aif(_sgdm()), p), rho=RHO),
    False,
  ),
  "s2sam(static(aif(sgd)), no mask_gradients)": (
    lambda p: ss.s2sam(_sparse("static_masks", _aif(_sgdm()), p, mask_gradients=False), rho=RHO),
    False,
  ),
  "s2sam(rigl(aif(sgd)))": (lambda p: ss.s2sam(_sparse("rigl", _aif(_sgdm()), p), rho=RHO), False),
  "s2sam(set(aif(adam)))": (
    lambda p: ss.s2sam(_sparse("set", _aif(optax.adam(LR)), p), rho=RHO),
    False,
  ),
  "s2sam_adaptive(dsr(aif(sgd)))": (
    lambda p: ss.s2sam(_sparse("dsr", _aif(_sgdm()), p), rho=RHO, adaptive=True),
    False,
  ),
  "s2sam(mest(aif(sgd)))": (lambda p: ss.s2sam(_sparse("mest", _aif(_sgdm()), p), rho=RHO), False),
  "s2sam_pruned(gmp(aif(sgd)))": (
    lambda p: ss.s2sam(_sparse("gmp", _aif(_sgdm()), p), rho=RHO, perturb_pruned=True),
    False,
  ),
  "sam(static(aif(sgd)))": (
    lambda p: ss.sam(_sparse("static_masks", _aif(_sgdm()), p), rho=RHO),
    True,
  ),
}


def _find_s2sam(state):
  found = [
    s
    for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ss.S2SAMState))
    if isinstance(s, ss.S2SAMState)
  ]
  return found[0] if found else None


@pytest.mark.parametrize("name", sorted(RECOVERY))
def test_apply_if_finite_anywhere_recovers_after_one_bad_gradient(name):
  make, two_step = RECOVERY[name]
  params0 = _params()
  tx = make(params0)
  state = tx.init(params0)
  params = sparse.apply_masks(params0, state)
  step = _step_fn(tx, two_step)
  outermost = name.startswith("aif(")
  cleans = []
  for t in range(6):
    bad = t == 2
    poisoned = _poison(params, sparse.get_masks(state))
    params, state = step(params, state, bad, poisoned)
    clean = ss.unperturbed(params, state)
    cleans.append(clean)
    masks = sparse.get_masks(state)
    assert _all_finite(params) and _all_finite(clean), f"step {t}"
    s = _find_s2sam(state)
    if s is not None:
      assert _all_finite(s.perturbation), f"step {t}"
      if bad and not outermost:  # the next step is unperturbed
        assert all(np.all(np.asarray(e) == 0) for e in jax.tree.leaves(s.perturbation))
    if masks is not None:
      assert _masked_entries_are_zero(clean, masks), f"step {t}"
      if "pruned" not in name:
        assert _masked_entries_are_zero(params, masks), f"step {t}"
  # Recovered: the finite steps after the bad one move the weights again.
  for t in (3, 4, 5):
    moved = optax.tree.norm(jax.tree.map(jnp.subtract, cleans[t], cleans[t - 1]))
    assert float(moved) > 1e-4, f"step {t}"
  if s is not None:
    assert float(optax.tree.norm(s.perturbation)) > 0.0


@pytest.mark.parametrize("masked", [False, True])
def test_s2sam_apply_if_finite_inner_matches_numpy_skip_and_reset(masked):
  """s2sam(static_masks(apply_if_finite(sgd))) against NumPy: the bad step
  leaves the clean weights, and the next gradient is taken at them."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4, 5))
  m = rng.random((4, 5)) < 0.5 if masked else np.ones((4, 5), bool)
  w = np.where(m, w, 0.0)
  inner = _aif(optax.sgd(LR))
  if masked:
    inner = sparse.static_masks(inner, {"w": jnp.asarray(m)})
  tx = ss.s2sam(inner, rho=RHO)
  params = {"w": jnp.asarray(w, jnp.float32)}
  state = tx.init(params)
  e = np.zeros_like(w)
  for t in range(6):
    g = np.sin(2 * (w + e + 0.3))  # ∇ Σ sin²(u + 0.3) at u = w + ε
    g_jax = jax.grad(lambda p: jnp.sum(jnp.sin(p["w"] + 0.3) ** 2))(params)
    if t == 2:
      g_jax = {"w": g_jax["w"].at[0, 0].set(jnp.nan).at[1, 1].set(jnp.inf)}
      e = np.zeros_like(w)  # skipped step, ε reset
    else:
      gm = np.where(m, g, 0.0)
      w = np.where(m, w - LR * gm, 0.0)
      e = RHO * gm / (np.sqrt(np.sum(gm**2)) + 1e-12)
    updates, state = tx.update(g_jax, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(
      ss.unperturbed(params, state)["w"], w, rtol=1e-5, atol=1e-6, err_msg=f"step {t}"
    )
    np.testing.assert_allclose(
      state.perturbation["w"], e, rtol=1e-5, atol=1e-6, err_msg=f"step {t}"
    )


# ------------------------------------------------ 2: rho / eta / eps checks


BAD_HYPERPARAMETERS = [
  ("rho", float("nan")),
  ("rho", float("inf")),
  ("rho", -float("inf")),
  ("rho", np.float32("nan")),
  ("rho", jnp.array(jnp.nan)),
  ("rho", -0.1),
  ("rho", jnp.ones(2)),
  ("rho", "0.05"),
  ("rho", True),
  ("eta", float("nan")),
  ("eta", float("inf")),
  ("eta", -1.0),
  ("eps", float("nan")),
  ("eps", float("inf")),
  ("eps", 0.0),
  ("eps", -1e-3),
]


@pytest.mark.parametrize("arg, value", BAD_HYPERPARAMETERS)
@pytest.mark.parametrize("factory", ["s2sam", "sam", "perturbation"])
def test_non_finite_hyperparameters_are_refused(factory, arg, value):
  with pytest.raises(ValueError, match=f"`{arg}`"):
    if factory == "perturbation":
      kwargs = {"rho": 0.1, "adaptive": True, arg: value}
      ss.perturbation({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, **kwargs)
    else:
      getattr(ss, factory)(optax.sgd(0.1), **{arg: value})


def test_schedules_and_traced_hyperparameters_are_not_checked_but_harmless():
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.array([1.0, 2.0, 2.0])}
  # A schedule is accepted; a non-finite value it returns gives ε = 0.
  tx = ss.s2sam(optax.sgd(0.1), rho=lambda count: jnp.nan * count)
  for step in (tx.update, jax.jit(tx.update)):  # alike in and out of jit
    _, state = step(grads, tx.init(params), params)
    np.testing.assert_array_equal(state.perturbation["w"], np.zeros(3))
  tx = ss.sam(optax.sgd(0.1), rho=lambda count: jnp.inf + count)
  seen = []
  tx.update(grads, tx.init(params), params, grad_fn=lambda p: seen.append(p) or grads)
  np.testing.assert_array_equal(seen[0]["w"], params["w"])
  # A traced rho (inject_hyperparams inside jit) likewise.
  tx = optax.inject_hyperparams(ss.s2sam)(optax.sgd(0.1), rho=0.3)
  state = tx.init(params)
  state.hyperparams["rho"] = jnp.asarray(jnp.inf)
  u, state = jax.jit(tx.update)(grads, state, params)
  chex.assert_tree_all_finite((u, state.inner_state))
  np.testing.assert_array_equal(state.inner_state.perturbation["w"], np.zeros(3))


def test_perturbation_refuses_unknown_formula():
  for kwargs in (dict(adaptive=True, formula="cubic"), dict(adaptive=False, formula="authors")):
    with pytest.raises(ValueError, match="`formula"):
      ss.perturbation({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, 0.1, **kwargs)


# ------------------------------------------------------- 3: mask values


SCORES = np.random.default_rng(0).random((6, 8)).astype(np.float32)  # [0, 1)


def _mask_entry_points(params, bad):
  """``name -> thunk`` for every place that takes user masks."""
  tree = {"a": {"kernel": bad, "bias": None}, "b": {"kernel": jnp.ones((8, 5), bool), "bias": None}}
  fn = lambda p: tree
  sgd = optax.sgd(0.1)
  mest_kw = dict(
    update_every=2, decay_steps=(4,), prune_offsets=(0.0, 0.0), grow_offsets=(0.0, 0.0)
  )
  full = {
    "a": {"kernel": jnp.ones((6, 8), bool), "bias": None},
    "b": {"kernel": jnp.ones((8, 5), bool), "bias": None},
  }
  return {
    "s2sam": lambda: ss.s2sam(sgd, masks=tree).init(params),
    "sam": lambda: ss.sam(sgd, masks=tree).init(params),
    "static_masks": lambda: sparse.static_masks(sgd, tree).init(params),
    "static_masks(fn)": lambda: sparse.static_masks(sgd, fn).init(params),
    "rigl": lambda: sparse.rigl(sgd, masks=tree, end_step=9).init(params),
    "rigl(fn)": lambda: sparse.rigl(sgd, masks=fn, end_step=9).init(params),
    "set_": lambda: sparse.set_(sgd, masks=tree, end_step=9).init(params),
    "set_(fn)": lambda: sparse.set_(sgd, masks=fn, end_step=9).init(params),
    "dsr": lambda: sparse.dsr(sgd, masks=tree).init(params),
    "dsr(fn)": lambda: sparse.dsr(sgd, masks=fn).init(params),
    "mest": lambda: sparse.mest(sgd, masks=tree, **mest_kw).init(params),
    "mest(fn)": lambda: sparse.mest(sgd, masks=fn, **mest_kw).init(params),
    "imp_next_round": lambda: sparse.imp_next_round(params, tree),
    "sparsity_summary": lambda: sparse.sparsity_summary(params, tree),
    "mask_overlap(a)": lambda: sparse.mask_overlap(tree, full),
    "mask_overlap(b)": lambda: sparse.mask_overlap(full, tree),
    "training_flops": lambda: sparse.training_flops({"a/kernel": 10.0, "b/kernel": 5.0}, tree),
  }


ENTRY_POINTS = sorted(_mask_entry_points(None, None))


@pytest.mark.parametrize("bad", ["scores", "nan", "two"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_masks_that_are_not_masks_are_refused_naming_the_leaf(entry, bad):
  values = {
    "scores": SCORES,
    "nan": np.where(SCORES < 0.5, np.nan, 1.0),
    "two": np.where(SCORES < 0.5, 0, 2).astype(np.int32),
  }[bad]
  thunk = _mask_entry_points(_params(), jnp.asarray(values))[entry]
  with pytest.raises(ValueError, match=r"leaf 'a/kernel'.*(mask|0 or 1)"):
    thunk()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_numeric_zero_one_masks_are_accepted(entry):
  m = SCORES < 0.5
  for values in (m.astype(np.float32), m.astype(np.int8), jnp.asarray(m, jnp.bfloat16)):
    _mask_entry_points(_params(), jnp.asarray(values))[entry]()


def test_numeric_zero_one_masks_act_as_bool_masks():
  params = _params()
  m = SCORES < 0.5
  as_tree = lambda x: {
    "a": {"kernel": x, "bias": None},
    "b": {"kernel": jnp.ones((8, 5), bool), "bias": None},
  }
  for tx_fn in (
    lambda mk: sparse.static_masks(optax.sgd(0.1), mk),
    lambda mk: sparse.rigl(optax.sgd(0.1), masks=mk, end_step=9),
  ):
    s_bool = tx_fn(as_tree(jnp.asarray(m))).init(params)
    s_float = tx_fn(as_tree(jnp.asarray(m, jnp.float32))).init(params)
    assert s_float.masks["a"]["kernel"].dtype == jnp.bool_
    np.testing.assert_array_equal(s_float.masks["a"]["kernel"], m)
    assert s_bool.masks["b"]["kernel"].dtype == jnp.bool_
  g = jax.tree.map(jnp.ones_like, params)
  e_bool = ss.perturbation(g, None, 0.1, masks=as_tree(jnp.asarray(m)))
  e_int = ss.perturbation(g, None, 0.1, masks=as_tree(jnp.asarray(m, jnp.int32)))
  chex.assert_trees_all_equal(e_bool, e_int)


def test_traced_numeric_masks_are_refused_and_traced_bool_masks_accepted():
  params = _params()
  m = SCORES < 0.5

  def tree(x):
    return {"a": {"kernel": x, "bias": None}, "b": {"kernel": jnp.ones((8, 5), bool), "bias": None}}

  ok = sparse.static_masks(optax.sgd(0.1), lambda p: tree(p["a"]["kernel"] > 0))
  jax.jit(ok.init)(params)
  bad = sparse.static_masks(
    optax.sgd(0.1), lambda p: tree((p["a"]["kernel"] > 0).astype(jnp.float32))
  )
  with pytest.raises(ValueError, match=r"'a/kernel'.*traced.*bool"):
    jax.jit(bad.init)(params)
  with pytest.raises(ValueError, match="bool"):
    jax.jit(lambda x: ss.s2sam(optax.sgd(0.1), masks=tree(x)))(jnp.asarray(m, jnp.float32))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64, np.int32, np.uint8]))
def test_mask_leaf_is_accepted_iff_every_value_is_0_or_1(data, dtype):
  choices = (
    [0.0, 1.0, 0.5, -1.0, 2.0, np.nan, np.inf, 1e-8]
    if np.issubdtype(dtype, np.floating)
    else [0, 1, 2, 7]
  )
  values = data.draw(st.lists(st.sampled_from(choices), min_size=1, max_size=6))
  array = np.asarray(values).astype(dtype)
  params = {"w": jnp.zeros(array.shape)}
  tx = sparse.static_masks(optax.sgd(0.1), lambda p: {"w": jnp.asarray(array)})
  if all(v in (0, 1) for v in values):
    state = tx.init(params)
    np.testing.assert_array_equal(state.masks["w"], array == 1)
  else:
    with pytest.raises(ValueError, match="`masks` leaf 'w'"):
      tx.init(params)


def test_mask_leaf_of_wrong_dtype_is_refused():
  {"w": jnp.zeros(2)}
  for m in (np.array([1 + 0j, 0j]), np.array(["1", "0"])):
    with pytest.raises(ValueError, match="`masks` leaf 'w'"):
      sparse.static_masks(optax.sgd(0.1), {"w": m})


# -------------------------------------- 4: unperturbed / perturbed shapes


@pytest.mark.parametrize("mode", ["transparent", "explicit"])
@pytest.mark.parametrize("fn", ["unperturbed", "perturbed"])
def test_params_of_other_shapes_are_refused_by_unperturbed_and_perturbed(fn, mode):
  params = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
  tx = ss.s2sam(optax.sgd(0.1), rho=0.1, mode=mode)
  state = tx.init(params)
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  f = getattr(ss, fn)
  # broadcastable shapes used to come back reshaped
  for wrong in (
    {"a": jnp.ones((1, 3)), "b": jnp.ones(3)},
    {"a": jnp.ones(3), "b": jnp.ones(3)},
    {"a": jnp.ones((2, 3)), "b": jnp.ones((2, 3))},
  ):
    bad = [k for k in wrong if wrong[k].shape != params[k].shape][0]
    with pytest.raises(ValueError, match=f"`params` leaf '{bad}'"):
      f(wrong, state)
  for wrong in (
    {"a": jnp.ones((2, 3))},
    {"a": jnp.ones((2, 3)), "b": jnp.ones(3), "c": jnp.ones(1)},
  ):
    with pytest.raises(ValueError, match="leaves"):
      f(wrong, state)
  # Other containers with the same leaves are fine (nnx.State vs OptVariable).
  got = f((params["a"], params["b"]), state)
  want = f(params, state)
  chex.assert_trees_all_equal(got, (want["a"], want["b"]))


# ---------------------------------------- 5: SNIP / GraSP / magnitude


def _mlp_loss(params, batch, temperature=1.0):
  x, y = batch
  logits = jnp.tanh(x @ params["w1"]) @ params["w2"] / temperature
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _mlp():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"w1": jax.random.normal(k1, (8, 16)), "w2": jax.random.normal(k2, (16, 3))}
  batch = (jax.random.normal(k3, (32, 8)), jnp.arange(32) % 3)
  return params, batch


@pytest.mark.parametrize("method", ["snip", "snip_layer", "grasp"])
@pytest.mark.parametrize("poison", ["batch_nan", "params_inf", "params_nan", "batch_inf"])
def test_pruning_at_init_refuses_a_non_finite_loss_or_scores(method, poison):
  params, (x, y) = _mlp()
  if poison == "batch_nan":
    x = x.at[0, 0].set(jnp.nan)
  elif poison == "params_inf":
    params = {**params, "w2": params["w2"].at[3, 1].set(jnp.inf)}
  elif poison == "params_nan":
    params = {**params, "w2": params["w2"].at[3, 1].set(jnp.nan)}
  else:  # tanh(±inf) = ±1: a finite loss, but NaN gradients (inf · 0)
    x = x.at[:, 0].set(jnp.inf)
  batch = (x, y)
  message = "scores of leaf 'w1' are not finite" if poison == "batch_inf" else "loss is not finite"
  with pytest.raises(ValueError, match=message):
    if method == "snip":
      sparse.snip_masks(_mlp_loss, params, batch, 0.75)
    elif method == "snip_layer":
      sparse.snip_masks(
        _mlp_loss, params, batch, densities=sparse.layer_densities(params, 0.75, "erk")
      )
    else:
      sparse.grasp_masks(_mlp_loss, params, batch, 0.75)


def test_pruning_at_init_refuses_non_finite_scores_of_a_finite_loss():
  # d sqrt(|w|)/dw at w = 0 is inf · 0 = NaN; the loss itself is finite.
  params = {"w1": jnp.zeros((4, 4)).at[0, 0].set(1.0), "w2": jnp.ones((4, 2))}
  loss = lambda p, b, temperature=1.0: (
    (jnp.sum(jnp.sqrt(jnp.abs(p["w1"]))) + jnp.sum(p["w2"] ** 2)) / temperature
  )
  with pytest.raises(ValueError, match=r"SNIP.*leaf 'w1'.*not finite"):
    sparse.snip_masks(loss, params, None, 0.5)
  with pytest.raises(ValueError, match=r"GraSP.*leaf 'w1'.*not finite"):
    sparse.grasp_masks(loss, params, None, 0.5)


def test_finite_snip_and_grasp_scores_are_unchanged():
  params, batch = _mlp()
  g = jax.grad(_mlp_loss)(params, batch)
  want = jax.tree.map(lambda a, w: jnp.abs(a * w), g, params)
  chex.assert_trees_all_equal(sparse.snip_scores(_mlp_loss, params, batch), want)
  f = lambda p: _mlp_loss(p, batch, 200.0)
  gf = jax.lax.stop_gradient(jax.grad(f)(params))
  _, hg = jax.jvp(jax.grad(f), (params,), (gf,))
  chex.assert_trees_all_equal(
    sparse.grasp_scores(_mlp_loss, params, batch), jax.tree.map(lambda w, h: -w * h, params, hg)
  )


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_magnitude_masks_refuse_non_finite_weights(value):
  params = {"w": jnp.ones((3, 4)).at[1, 2].set(value), "v": jnp.ones((4, 4))}
  with pytest.raises(ValueError, match=r"magnitude_masks.*leaf 'w'"):
    sparse.magnitude_masks(params, sparsity=0.5)
  with pytest.raises(ValueError, match=r"magnitude_masks.*leaf 'w'"):
    sparse.magnitude_masks(params, sparsity=0.5, scope="global")


@pytest.mark.parametrize("temperature", [np.inf, np.nan, 0.0])
def test_grasp_refuses_a_non_finite_temperature(temperature):
  params, batch = _mlp()
  with pytest.raises(ValueError, match="`temperature`"):
    sparse.grasp_masks(_mlp_loss, params, batch, 0.5, temperature=temperature)


# ------------------------------------------------------ 6: buffer_dtype


@pytest.mark.parametrize(
  "dtype", [jnp.int32, "int8", bool, jnp.uint8, jnp.complex64, "notadtype", object, 3]
)
def test_buffer_dtype_must_be_floating(dtype):
  with pytest.raises(ValueError, match="`buffer_dtype`"):
    ss.s2sam(optax.sgd(0.1), buffer_dtype=dtype)


@pytest.mark.parametrize(
  "dtype, want",
  [
    (None, jnp.float32),
    (jnp.bfloat16, jnp.bfloat16),
    ("float16", jnp.float16),
    (np.float32, jnp.float32),
  ],
)
def test_floating_buffer_dtypes_are_accepted(dtype, want):
  params = {"w": jnp.ones(3)}
  tx = ss.s2sam(optax.sgd(0.1), buffer_dtype=dtype)
  state = tx.init(params)
  assert state.perturbation["w"].dtype == want
  _, state = tx.update({"w": jnp.array([3.0, 4.0, 0.0])}, state, params)
  np.testing.assert_allclose(
    np.asarray(state.perturbation["w"], np.float32), [0.03, 0.04, 0.0], rtol=1e-2
  )


# ------------------------------------------------------------ 7: regexes


# The wrappers take their random masks from sparse.random_init, which checks
# its arguments when it is called, before any wrapper or init exists.
REGEX_USERS = {
  "layer_densities": lambda o: sparse.layer_densities({"w": jnp.ones((4, 4))}, 0.5, overrides=o),
  "random_init": lambda o: sparse.random_init(0.5, overrides=o),
  "random_init(er)": lambda o: sparse.random_init(0.5, "er", key=3, overrides=o),
  "gmp": lambda o: sparse.gmp(optax.sgd(0.1), 0.5, end_step=9, overrides=o),
}


@pytest.mark.parametrize("user", sorted(REGEX_USERS))
def test_invalid_override_regex_is_a_value_error_naming_it(user):
  # At construction for the wrappers, not only once init runs.
  for pattern in ("conv[", "(stem", "*"):
    with pytest.raises(ValueError, match=r"`overrides`.*" + re.escape(repr(pattern))):
      REGEX_USERS[user]({pattern: 0.5})
  with pytest.raises(ValueError, match="`overrides`"):
    REGEX_USERS[user]({3: 0.5})
  with pytest.raises(ValueError, match="overrides"):
    REGEX_USERS[user]({"w": float("nan")})
  with pytest.raises(ValueError, match="`overrides`"):
    REGEX_USERS[user](["w"])


BAD_POWER = {
  "random_init(nan)": lambda: sparse.random_init(0.5, power=float("nan")),
  "random_init(-1)": lambda: sparse.random_init(0.5, "er", power=-1.0),
  "random_init(inf)": lambda: sparse.random_init(0.5, "uniform", power=float("inf")),
  "random_init('1')": lambda: sparse.random_init(0.5, power="1"),
  "gmp": lambda: sparse.gmp(optax.sgd(0.1), 0.5, end_step=9, power=float("nan")),
}


@pytest.mark.parametrize("user", sorted(BAD_POWER))
def test_wrappers_check_power_at_construction(user):
  with pytest.raises(ValueError, match="`power`"):
    BAD_POWER[user]()


# ------------------------------------------- other silently accepted inputs


def test_drop_fraction_schedule_refuses_nan_and_empty_spans():
  for args in ((float("nan"), 0, 100), (0.3, 5, 5), (0.3, 7, 5), (0.3, 0, None), (1.5, 0, 100)):
    with pytest.raises(ValueError, match="drop_fraction|end_step"):
      sparse.drop_fraction_schedule(*args)
  with pytest.raises(ValueError, match="drop_fraction"):
    sparse.drop_fraction_schedule(float("nan"), 0, None, "constant")


def test_gmp_sparsity_refuses_an_empty_span_and_nan_sparsity():
  with pytest.raises(ValueError, match="end_step"):
    sparse.gmp_sparsity(3, 0.9, 0.0, 10, 10)
  with pytest.raises(ValueError, match="final_sparsity"):
    sparse.gmp_sparsity(3, float("nan"), 0.0, 0, 10)
  with pytest.raises(ValueError, match="initial_sparsity"):
    sparse.gmp_sparsity(3, 0.9, float("nan"), 0, 10)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_training_flops_refuses_non_finite_flops(value):
  with pytest.raises(ValueError, match="`forward_flops`"):
    sparse.training_flops({"a": 10.0, "b": value}, {"a": 0.5})


def test_training_flops_counts_a_mask_leaf_as_its_active_fraction():
  m = np.zeros((4, 5), bool)
  m[:, :2] = True  # 8 of 20 active
  est = sparse.training_flops({"a": 10.0, "b": 5.0}, {"a": jnp.asarray(m), "b": None})
  assert est.forward_sparse == pytest.approx(0.4 * 10.0 + 5.0)


def test_training_flops_refuses_a_rigl_end_step_before_its_begin_step():
  for end_step in (0, 5, 2.5, True):
    with pytest.raises(ValueError, match="`end_step`"):
      sparse.training_flops(
        {"a": 10.0},
        {"a": 0.5},
        method="rigl",
        steps=20,
        update_every=5,
        begin_step=5,
        end_step=end_step,
      )
  # Hand count: updates at t = 5, 10 (end 15 exclusive) of 20 steps.
  est = sparse.training_flops(
    {"a": 10.0}, {"a": 0.5}, method="rigl", steps=20, update_every=5, begin_step=5, end_step=15
  )
  assert est.total == pytest.approx(18 * 3 * 5.0 + 2 * (2 * 5.0 + 10.0))


def test_dsr_init_threshold_must_be_a_real_number_not_a_bool():
  with pytest.raises(ValueError, match="`init_threshold`"):
    sparse.dsr(optax.sgd(0.1), sparsity=0.5, init_threshold=True)
  state = sparse.dsr(optax.sgd(0.1), sparsity=0.5, init_threshold=np.float32(0.25)).init(
    {"w": jnp.ones((4, 4))}
  )
  assert float(state.threshold) == 0.25
