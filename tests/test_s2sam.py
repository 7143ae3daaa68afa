"""S2-SAM against a NumPy re-derivation of its recursion, and its edge cases."""

import chex
import jax
import jax.numpy as jnp
import mlp_reference as ref
import numpy as np
import optax
import pytest
from mlp_reference import LR, RHO, STEPS

import s2sam_jax as ss


def run_s2sam(tx, x, y, steps=STEPS, mode="transparent", params=None):
  if params is None:
    params = ref.to_jax(ref.make_problem()[0])
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(ref.jax_loss)(ss.perturbed(params, state), x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  trajectory = []
  for _ in range(steps):
    params, state = step(params, state)
    trajectory.append(ss.unperturbed(params, state))
  return trajectory, params, state


@pytest.mark.parametrize("mode", ["transparent", "explicit"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_matches_numpy_recursion(mode, adaptive):
  expected, x, y = ref.numpy_s2sam_trajectory(adaptive)
  tx = ss.s2sam(ref.sgd_momentum_wd(), rho=RHO, adaptive=adaptive, mode=mode)
  got, _, _ = run_s2sam(tx, jnp.asarray(x, jnp.float32), jnp.asarray(y), mode=mode)
  for t, (e, g) in enumerate(zip(expected, got)):
    for k in e:
      np.testing.assert_allclose(g[k], e[k], rtol=2e-4, atol=2e-5, err_msg=f"step {t}, leaf {k}")


@pytest.mark.parametrize("mode", ["transparent", "explicit"])
@pytest.mark.parametrize("sparse_w1", [False, True])
def test_authors_formula_matches_numpy_rederivation_of_their_sam_py(mode, sparse_w1):
  """``adaptive_formula='authors'`` against the authors' loop in NumPy, over
  12 steps from their unperturbed first step; with a fixed mask on ``w1``
  the authors' protocol: dense perturbation, unmasked gradient into the
  momentum, weights re-masked after the step."""
  masks = None
  if sparse_w1:
    rng = np.random.default_rng(3)
    masks = {"w1": rng.random((ref.N_IN, ref.N_HIDDEN)) < 0.4, "b1": None, "w2": None, "b2": None}
  expected, x, y = ref.numpy_authors_trajectory(masks=masks)
  inner = ref.sgd_momentum_wd()
  if masks is not None:
    inner = ss.sparse.static_masks(inner, masks, mask_gradients=False)
  tx = ss.s2sam(
    inner, rho=RHO, adaptive=True, adaptive_formula="authors", perturb_pruned=True, mode=mode
  )
  params0 = ref.to_jax(ref.make_problem()[0])
  if masks is not None:
    params0 = ss.sparse.apply_masks(params0, tx.init(params0))
  trajectory, _, state = run_s2sam(tx, x, y, steps=len(expected), mode=mode, params=params0)
  for t, (e, got) in enumerate(zip(expected, trajectory)):
    for k in e:
      np.testing.assert_allclose(got[k], e[k], rtol=2e-4, atol=2e-5, err_msg=f"step {t}, leaf {k}")
  # Not a no-op: the authors' ε is non-zero, and far below ρ (g³ ≪ |u| g).
  norm = float(optax.tree.norm(state.perturbation))
  assert 0.0 < norm < 0.1 * RHO
  if masks is not None:  # dense perturbation, exactly sparse clean weights
    assert np.all(np.asarray(state.perturbation["w1"])[~masks["w1"]] != 0)
    assert np.all(np.asarray(got["w1"])[~masks["w1"]] == 0)


def test_authors_formula_needs_adaptive():
  with pytest.raises(ValueError, match="adaptive_formula"):
    ss.s2sam(optax.sgd(0.1), adaptive_formula="authors")
  with pytest.raises(ValueError, match="adaptive_formula"):
    ss.s2sam(optax.sgd(0.1), adaptive=True, adaptive_formula="cubic")


def test_transparent_params_are_the_perturbed_point():
  expected, x, y = ref.numpy_s2sam_trajectory(adaptive=False, steps=3)
  tx = ss.s2sam(ref.sgd_momentum_wd(), rho=RHO)
  _, params, state = run_s2sam(tx, jnp.asarray(x, jnp.float32), jnp.asarray(y), steps=3)
  # The loop holds w_3 + ε_3, with ε_3 = ρ g_2/‖g_2‖, so ‖held - clean‖ = ρ.
  diff = jax.tree.map(jnp.subtract, params, ss.unperturbed(params, state))
  np.testing.assert_allclose(optax.tree.norm(diff), RHO, rtol=1e-4)
  for k in params:
    np.testing.assert_allclose(
      ss.unperturbed(params, state)[k], expected[-1][k], rtol=2e-4, atol=2e-5
    )


def test_step_zero_is_unperturbed_and_later_steps_are_not():
  """Rules out the silent no-op that hits the authors' code on PyTorch 2."""
  params, x, y = ref.make_problem()
  params = ref.to_jax(params)
  tx = ss.s2sam(optax.sgd(LR), rho=RHO)
  state = tx.init(params)
  assert optax.tree.norm(state.perturbation) == 0.0
  grads = jax.grad(ref.jax_loss)(params, x, y)
  updates, state = tx.update(grads, state, params)
  params = optax.apply_updates(params, updates)
  clean = ss.unperturbed(params, state)
  np.testing.assert_allclose(optax.tree.norm(state.perturbation), RHO, rtol=1e-5)
  g_perturbed = jax.grad(ref.jax_loss)(params, x, y)
  g_clean = jax.grad(ref.jax_loss)(clean, x, y)
  assert optax.tree.norm(jax.tree.map(jnp.subtract, g_perturbed, g_clean)) > 1e-4
  # And the first update used the unperturbed gradient: plain SGD's step.
  expected = jax.tree.map(lambda w, g: w - LR * g, ref.to_jax(ref.make_problem()[0]), grads)
  chex.assert_trees_all_close(clean, expected, rtol=1e-6)


def test_rho_schedule_uses_the_next_step_count():
  params = {"w": jnp.ones(4)}
  schedule = lambda count: 0.1 * count
  tx = ss.s2sam(optax.sgd(0.0), rho=schedule)
  state = tx.init(params)
  for t in range(1, 4):
    _, state = tx.update({"w": jnp.arange(4.0)}, state, params)
    np.testing.assert_allclose(optax.tree.norm(state.perturbation), 0.1 * t, rtol=1e-5)


def test_zero_gradients_give_zero_perturbation_and_no_nan():
  params = {"w": jnp.ones((3, 3)), "b": jnp.zeros(3)}
  for adaptive in (False, True):
    tx = ss.s2sam(optax.adam(1e-3), adaptive=adaptive)
    state = tx.init(params)
    p = params
    for _ in range(3):
      updates, state = tx.update(jax.tree.map(jnp.zeros_like, p), state, p)
      p = optax.apply_updates(p, updates)
    chex.assert_tree_all_finite((p, state))
    assert optax.tree.norm(state.perturbation) == 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_params_keep_their_dtype(dtype):
  params = {"w": jnp.ones((4, 3), dtype), "b": jnp.zeros(3, dtype)}
  tx = ss.s2sam(optax.sgd(0.1, momentum=0.9), rho=0.05)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  chex.assert_trees_all_equal_dtypes(params, {"w": jnp.ones(1, dtype), "b": jnp.ones(1, dtype)})
  chex.assert_trees_all_equal_dtypes(ss.unperturbed(params, state), params)


def test_bf16_buffer_halves_memory_and_is_applied_exactly():
  params = {"w": jnp.linspace(-1, 1, 12, dtype=jnp.float32).reshape(3, 4)}
  tx = ss.s2sam(optax.sgd(0.0), rho=0.05, buffer_dtype=jnp.bfloat16)
  state = tx.init(params)
  assert state.perturbation["w"].dtype == jnp.bfloat16
  updates, state = tx.update({"w": jnp.sin(params["w"]) + 0.1}, state, params)
  held = optax.apply_updates(params, updates)
  # With lr 0 the clean weights do not move; the held point is exactly w + ε.
  np.testing.assert_array_equal(
    held["w"], params["w"] + state.perturbation["w"].astype(jnp.float32)
  )


def test_compiles_once():
  params, x, y = ref.make_problem()
  params = ref.to_jax(params)
  tx = ss.s2sam(optax.sgd(0.1, momentum=0.9))
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.grad(ref.jax_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(5):
    params, state = step(params, state)
  assert len(traces) == 1


def test_explicit_masks_confine_the_perturbation():
  params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
  mask = jnp.eye(4, dtype=bool)
  tx = ss.s2sam(optax.sgd(0.0), rho=0.5, masks={"w": mask, "b": None})
  state = tx.init(params)
  grads = {"w": jnp.full((4, 4), 2.0), "b": jnp.full(4, 1.0)}
  _, state = tx.update(grads, state, params)
  g = {"w": np.where(mask, 2.0, 0.0), "b": np.full(4, 1.0)}
  expected = ref.numpy_perturbation(g, None, 0.5)
  np.testing.assert_allclose(state.perturbation["w"], expected["w"], rtol=1e-6)
  np.testing.assert_allclose(state.perturbation["b"], expected["b"], rtol=1e-6)
  # The authors' dense perturbation on request.
  tx = ss.s2sam(optax.sgd(0.0), rho=0.5, masks={"w": mask, "b": None}, perturb_pruned=True)
  _, state = tx.update(grads, tx.init(params), params)
  assert np.all(np.asarray(state.perturbation["w"]) != 0)


@pytest.mark.parametrize(
  "kwargs, name",
  [
    (dict(rho=-0.1), "rho"),
    (dict(eps=0.0), "eps"),
    (dict(eps=-1.0), "eps"),
    (dict(eta=-0.5), "eta"),
    (dict(mode="sideways"), "mode"),
  ],
)
def test_bad_arguments(kwargs, name):
  with pytest.raises(ValueError, match=name):
    ss.s2sam(optax.sgd(0.1), **kwargs)
  if name != "mode":
    with pytest.raises(ValueError, match=name):
      ss.sam(optax.sgd(0.1), **kwargs)


@pytest.mark.parametrize("factory", [ss.s2sam, ss.sam])
def test_mismatched_masks_are_rejected(factory):
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
  for masks in (
    {"w": jnp.ones((3, 2), bool), "b": None},
    {"w": jnp.ones((2, 3), bool)},
    {"w": jnp.ones((2, 3), bool), "b": None, "c": None},
  ):
    with pytest.raises(ValueError, match="masks"):
      factory(optax.sgd(0.1), masks=masks).init(params)


def test_update_without_params_is_a_clear_error():
  tx = ss.s2sam(optax.sgd(0.1))
  state = tx.init({"w": jnp.ones(2)})
  with pytest.raises(ValueError, match="params"):
    tx.update({"w": jnp.ones(2)}, state)
