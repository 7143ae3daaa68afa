"""The helpers with Flax: nnx.Optimizer's state, nnx.State params, linen TrainState.

Each helper that takes params and/or an optimizer state must accept Flax NNX
states, ``nnx.Optimizer.opt_state`` (whose leaves are ``OptVariable``s where
the model's are ``Param``s), linen ``TrainState`` params and plain dicts
alike, and return the kind of tree it was given. The reference for every
number is the same helper on plain dicts (``nnx.to_pure_dict``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import s2sam_jax as ss
from s2sam_jax import sparse


class CNN(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 8, (3,), rngs=rngs)
    self.head = nnx.Linear(8 * 12, 4, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.conv(x))
    return self.head(x.reshape(x.shape[0], -1))


def _data():
  x = jax.random.normal(jax.random.key(1), (16, 12, 1))
  return x, jnp.arange(16) % 4


def _loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _trained_nnx(steps=3):
  model = CNN(nnx.Rngs(0))
  inner = sparse.rigl(
    optax.sgd(0.1, momentum=0.9), sparsity=0.8, key=jax.random.key(0), update_every=2, end_step=100
  )
  opt = nnx.Optimizer(model, ss.s2sam(inner, rho=0.05), wrt=nnx.Param)
  x, y = _data()
  for _ in range(steps):
    opt.update(model, nnx.grad(_loss)(model, x, y))
  return model, opt


def _pure(tree):
  return jax.tree.map(lambda v: v, nnx.to_pure_dict(tree))


def test_masks_and_summaries_through_nnx_optimizer():
  model, opt = _trained_nnx()
  params = nnx.state(model, nnx.Param)
  masks = sparse.get_masks(opt.opt_state)
  pure_masks = jax.tree.map(
    lambda m: None if m is None else np.asarray(m), _pure(masks), is_leaf=lambda m: m is None
  )
  masked = sparse.apply_masks(params, opt.opt_state)
  assert isinstance(masked, nnx.State)  # the kind it was given
  want = jax.tree.map(
    lambda p, m: p if m is None else np.where(m, p, 0), _pure(params), pure_masks,
    is_leaf=lambda m: m is None,
  )  # fmt: skip
  for a, b in zip(jax.tree.leaves(_pure(masked)), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  summary = sparse.sparsity_summary(params, masks)
  reference = sparse.sparsity_summary(_pure(params), pure_masks)
  assert summary == reference
  assert [layer.path for layer in summary.layers] == ["conv/kernel", "head/kernel"]
  assert sparse.nnz(masks) == reference.nnz
  overlap = sparse.mask_overlap(pure_masks, masks)
  assert overlap.total.iou == 1.0


def test_unperturbed_and_perturbed_keep_the_nnx_kind():
  model, opt = _trained_nnx()
  params = nnx.state(model, nnx.Param)
  clean = ss.unperturbed(params, opt.opt_state)
  assert isinstance(clean, nnx.State)
  eps = ss.S2SAMState(*opt.opt_state).perturbation
  for c, p, e in zip(jax.tree.leaves(clean), jax.tree.leaves(params), jax.tree.leaves(eps)):
    np.testing.assert_allclose(c, p - e, rtol=1e-6, atol=1e-7)
  # the clean weights of pruned entries are exactly 0
  masks = sparse.get_masks(opt.opt_state)
  for c, m in zip(
    jax.tree.leaves(_pure(clean)), jax.tree.leaves(_pure(masks), is_leaf=lambda x: x is None)
  ):
    if m is not None:
      assert not np.any(np.asarray(c)[~np.asarray(m)])
  assert isinstance(ss.perturbed(params, opt.opt_state), nnx.State)


def test_plain_dict_masks_into_nnx_optimizer():
  model = CNN(nnx.Rngs(0))
  pure = _pure(nnx.state(model, nnx.Param))
  masks = jax.tree.map(
    lambda p: (jnp.arange(p.size).reshape(p.shape) % 2 == 0) if p.ndim > 1 else None, pure
  )
  opt = nnx.Optimizer(model, sparse.static_masks(optax.sgd(0.1), masks), wrt=nnx.Param)
  x, y = _data()
  opt.update(model, nnx.grad(_loss)(model, x, y))
  summary = sparse.sparsity_summary(nnx.state(model, nnx.Param), sparse.get_masks(opt.opt_state))
  assert summary.density == pytest.approx(0.5)


def test_linen_train_state_params():
  params = {"dense": {"kernel": jnp.ones((6, 4)), "bias": jnp.zeros(4)}}
  tx = ss.s2sam(sparse.static_masks(optax.sgd(0.1), sparsity=0.5, key=jax.random.key(0)), rho=0.05)
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
  state = state.apply_gradients(grads=jax.tree.map(jnp.ones_like, params))
  masked = sparse.apply_masks(state.params, state.opt_state)
  assert isinstance(masked, dict) and sparse.nnz(masked["dense"]["kernel"]) == 12
  clean = ss.unperturbed(state.params, state.opt_state)
  assert isinstance(clean, dict)
  assert sparse.sparsity_summary(clean, sparse.get_masks(state.opt_state)).density == 0.5


@pytest.mark.parametrize("method", ["static", "set", "rigl", "dsr"])
def test_random_masks_init_traces_as_it_runs(method):
  # Flax's sharded init (nnx.jit around the model and optimizer), jax.jit(TrainState.create)
  # and abstract checkpoint restores (eval_shape) trace tx.init: random masks must allow it.
  params = {
    "conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.zeros(8)},
    "dense": {"kernel": jnp.ones((32, 10))},
  }
  kwargs = {} if method == "static" else {"end_step": 100}
  tx = ss.s2sam(sparse.create(method, optax.sgd(0.1), sparsity=0.9, key=3, **kwargs), rho=0.05)
  eager, traced = tx.init(params), jax.jit(tx.init)(params)
  assert jax.tree.structure(jax.eval_shape(tx.init, params)) == jax.tree.structure(eager)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(traced)):
    np.testing.assert_array_equal(a, b)


def test_model_and_optimizer_built_under_nnx_jit():
  @nnx.jit
  def create():
    model = CNN(nnx.Rngs(0))
    tx = ss.s2sam(sparse.rigl(optax.sgd(0.1), sparsity=0.8, key=0, end_step=100), rho=0.05)
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  model, opt = create()
  summary = sparse.sparsity_summary(nnx.state(model, nnx.Param), sparse.get_masks(opt.opt_state))
  assert summary.density == pytest.approx(0.2, abs=0.01)
