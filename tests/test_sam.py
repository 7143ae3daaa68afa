"""Two-step SAM against optax.contrib.sam and a NumPy SAM."""

import chex
import jax
import jax.numpy as jnp
import mlp_reference as ref
import numpy as np
import optax
import optax.contrib
import pytest

import s2sam_jax as ss

LR, MOMENTUM, RHO, STEPS = 0.3, 0.9, 0.1, 10


def test_matches_optax_contrib_sam():
  params, x, y = ref.make_problem()
  params = ref.to_jax(params)
  grad = jax.jit(jax.grad(ref.jax_loss))
  ours = ss.sam(optax.sgd(LR, momentum=MOMENTUM), rho=RHO)
  peer = optax.contrib.sam(
    optax.sgd(LR, momentum=MOMENTUM),
    optax.chain(optax.contrib.normalize(), optax.sgd(RHO)),
    opaque_mode=True,
  )
  p_ours, p_peer = params, params
  s_ours, s_peer = ours.init(params), peer.init(params)
  for _ in range(STEPS):
    u, s_ours = ours.update(grad(p_ours, x, y), s_ours, p_ours, grad_fn=lambda p: grad(p, x, y))
    p_ours = optax.apply_updates(p_ours, u)
    u, s_peer = peer.update(grad(p_peer, x, y), s_peer, p_peer, grad_fn=lambda p, _: grad(p, x, y))
    p_peer = optax.apply_updates(p_peer, u)
    chex.assert_trees_all_close(p_ours, p_peer, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adaptive", [False, True])
def test_matches_numpy_sam(adaptive):
  w, x, y = ref.make_problem()
  buf = {k: np.zeros_like(v) for k, v in w.items()}
  expected = []
  for _ in range(STEPS):
    g = ref.numpy_grad(w, x, y)
    e = ref.numpy_perturbation(g, w, RHO, adaptive=adaptive)
    g_adv = ref.numpy_grad({k: w[k] + e[k] for k in w}, x, y)
    for k in w:
      buf[k] = MOMENTUM * buf[k] + g_adv[k]
      w[k] = w[k] - LR * buf[k]
    expected.append({k: v.copy() for k, v in w.items()})

  tx = ss.sam(optax.sgd(LR, momentum=MOMENTUM), rho=RHO, adaptive=adaptive)
  params = ref.to_jax(ref.make_problem()[0])
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grad_fn = lambda p: jax.grad(ref.jax_loss)(p, x, y)
    updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state

  for t in range(STEPS):
    params, state = step(params, state)
    for k in params:
      np.testing.assert_allclose(
        params[k], expected[t][k], rtol=2e-4, atol=2e-5, err_msg=f"step {t}, {k}"
      )


def test_grad_fn_is_required():
  tx = ss.sam(optax.sgd(0.1))
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="grad_fn"):
    tx.update(params, tx.init(params), params)


def test_zero_gradient_gives_no_nan():
  tx = ss.sam(optax.sgd(0.1), adaptive=True)
  params = {"w": jnp.ones(3)}
  zero = lambda p: jax.tree.map(jnp.zeros_like, p)
  updates, _ = tx.update(zero(params), tx.init(params), params, grad_fn=zero)
  chex.assert_tree_all_finite(updates)
