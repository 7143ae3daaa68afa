"""S2-SAM composes with optax optimizers, wrappers and flax training loops.

The reference for each optimizer is a plain loop that applies that optimizer
to the clean weights and computes ε in NumPy (float64): only the S2-SAM logic
is independent, the base optimizer is optax's own.
"""

import chex
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import mlp_reference as ref
import numpy as np
import optax
import pytest
from flax.training import train_state

import s2sam_jax as ss

RHO, STEPS = 0.1, 8


def reference_run(opt, steps=STEPS, rho=RHO):
  """Clean weights of S2-SAM around ``opt``, ε computed in NumPy."""
  w_np, x, y = ref.make_problem()
  w = ref.to_jax(w_np)
  eps = {k: np.zeros_like(v) for k, v in w_np.items()}
  state = opt.init(w)
  out = []
  for _ in range(steps):
    g = jax.grad(ref.jax_loss)(jax.tree.map(lambda a, e: a + e, w, eps), x, y)
    updates, state = opt.update(g, state, w)
    w = optax.apply_updates(w, updates)
    eps = ref.numpy_perturbation({k: np.asarray(v, np.float64) for k, v in g.items()}, None, rho)
    eps = {k: np.asarray(v, np.float32) for k, v in eps.items()}
    out.append(w)
  return out, x, y


def s2sam_run(tx, x, y, steps=STEPS):
  params = ref.to_jax(ref.make_problem()[0])
  state = tx.init(params)
  step = jax.jit(lambda p, s: _step(tx, p, s, x, y))
  out = []
  for _ in range(steps):
    params, state = step(params, state)
    out.append(ss.unperturbed(params, state))
  return out


def _step(tx, params, state, x, y):
  grads = jax.grad(ref.jax_loss)(ss.perturbed(params, state), x, y)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


OPTIMIZERS = {
  "sgd_momentum": lambda: optax.sgd(0.2, momentum=0.9),
  "sgd_nesterov": lambda: optax.sgd(0.2, momentum=0.9, nesterov=True),
  "adam": lambda: optax.adam(0.05),
  "adamw": lambda: optax.adamw(0.05, weight_decay=0.3),
  "chain_clip": lambda: optax.chain(optax.clip_by_global_norm(0.05), optax.sgd(0.5, momentum=0.9)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("mode", ["transparent", "explicit"])
def test_wraps_any_optimizer(name, mode):
  expected, x, y = reference_run(OPTIMIZERS[name]())
  got = s2sam_run(ss.s2sam(OPTIMIZERS[name](), rho=RHO, mode=mode), x, y)
  for t, (e, g) in enumerate(zip(expected, got)):
    chex.assert_trees_all_close(g, e, rtol=1e-4, atol=1e-5, custom_message=f"step {t}")


def test_inject_hyperparams_changes_rho_and_lr_without_recompiling():
  _, x, y = ref.make_problem()
  tx = optax.inject_hyperparams(ss.s2sam)(
    inner=optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), rho=0.05
  )
  params = ref.to_jax(ref.make_problem()[0])
  state = tx.init(params)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    return _step(tx, params, state, x, y)

  params, state = step(params, state)
  state = optax.tree.set(state, rho=jnp.float32(0.3), learning_rate=jnp.float32(0.0))
  clean_before = ss.unperturbed(params, state)
  params, state = step(params, state)
  assert len(traces) == 1
  # lr 0: the clean weights stay; the new ε has the new radius 0.3.
  chex.assert_trees_all_close(ss.unperturbed(params, state), clean_before, atol=1e-6)
  np.testing.assert_allclose(optax.tree.norm(state.inner_state.perturbation), 0.3, rtol=1e-5)


def test_multisteps_accumulates_at_the_perturbed_point():
  params = ref.to_jax(ref.make_problem()[0])
  g1 = jax.tree.map(lambda p: jnp.sin(p) + 0.1, params)
  g2 = jax.tree.map(lambda p: jnp.cos(p), params)
  multi = optax.MultiSteps(ss.s2sam(optax.sgd(0.1, momentum=0.9)), every_k_schedule=2)
  single = ss.s2sam(optax.sgd(0.1, momentum=0.9))
  ms, ss_state = multi.init(params), single.init(params)
  p_multi, p_single = params, params
  for _ in range(3):
    u, ms = multi.update(g1, ms, p_multi)
    chex.assert_trees_all_equal(optax.apply_updates(p_multi, u), p_multi)
    u, ms = multi.update(g2, ms, p_multi)
    p_multi = optax.apply_updates(p_multi, u)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    u, ss_state = single.update(mean, ss_state, p_single)
    p_single = optax.apply_updates(p_single, u)
    chex.assert_trees_all_close(p_multi, p_single, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(
    ss.unperturbed(p_multi, ms), ss.unperturbed(p_single, ss_state), rtol=1e-5, atol=1e-6
  )


def test_flax_train_state_unchanged_loop():
  expected, x, y = ref.numpy_s2sam_trajectory(adaptive=False)
  state = train_state.TrainState.create(
    apply_fn=None,
    params=ref.to_jax(ref.make_problem()[0]),
    tx=ss.s2sam(ref.sgd_momentum_wd(), rho=ref.RHO),
  )

  @jax.jit
  def train_step(state):
    grads = jax.grad(ref.jax_loss)(state.params, x, y)
    return state.apply_gradients(grads=grads)

  for t in range(ref.STEPS):
    state = train_step(state)
    clean = ss.unperturbed(state.params, state.opt_state)
    for k in clean:
      np.testing.assert_allclose(clean[k], expected[t][k], rtol=2e-4, atol=2e-5)


class NnxMLP(nnx.Module):
  def __init__(self, params):
    self.w1 = nnx.Param(jnp.asarray(params["w1"], jnp.float32))
    self.b1 = nnx.Param(jnp.asarray(params["b1"], jnp.float32))
    self.w2 = nnx.Param(jnp.asarray(params["w2"], jnp.float32))
    self.b2 = nnx.Param(jnp.asarray(params["b2"], jnp.float32))

  def __call__(self, x):
    h = jnp.tanh(x @ self.w1 + self.b1)
    return h @ self.w2 + self.b2


def test_flax_nnx_optimizer_unchanged_loop():
  expected, x, y = ref.numpy_s2sam_trajectory(adaptive=False)
  model = NnxMLP(ref.make_problem()[0])
  optimizer = nnx.Optimizer(model, ss.s2sam(ref.sgd_momentum_wd(), rho=ref.RHO), wrt=nnx.Param)

  def loss_fn(model):
    logp = jax.nn.log_softmax(model(x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)

  for t in range(ref.STEPS):
    train_step(model, optimizer)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    clean = ss.unperturbed(params, optimizer.opt_state)
    for k in clean:
      np.testing.assert_allclose(clean[k], expected[t][k], rtol=2e-4, atol=2e-5)
