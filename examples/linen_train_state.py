"""A Flax linen MLP in a ``TrainState``: SNIP masks at 80% sparsity, AdamW, under S2-SAM.

Shows: pruning at initialization (``ss.sparse.snip_masks``) fed to ``ss.sparse.static_masks``
around ``optax.adamw``, wrapped in ``ss.s2sam``, inside
``flax.training.train_state.TrainState``; the unchanged ``apply_gradients`` loop; and evaluation
at the clean weights ``ss.unperturbed(state.params, state.opt_state)``.

Run: ``python examples/linen_train_state.py``
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import s2sam_jax as ss

NUM_CLASSES = 3


def make_spirals(key, n, noise=0.15):
  """Three interleaved 2-D spirals (one turn each); the label is the arm."""
  k_label, k_t, k_noise = jax.random.split(key, 3)
  labels = jax.random.randint(k_label, (n,), 0, NUM_CLASSES)
  t = jax.random.uniform(k_t, (n,), minval=0.1, maxval=1.0)
  angle = 2 * jnp.pi * t + 2 * jnp.pi * labels / NUM_CLASSES
  x = jnp.stack([t * jnp.cos(angle), t * jnp.sin(angle)], axis=1)
  return x + noise * t[:, None] * jax.random.normal(k_noise, x.shape), labels


class MLP(nn.Module):
  features: tuple = (128, 128)

  @nn.compact
  def __call__(self, x):
    for width in self.features:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(NUM_CLASSES)(x)


def main(steps=1000, batch_size=128, sparsity=0.8, seed=0):
  x_train, y_train = make_spirals(jax.random.key(seed), 4096)
  x_test, y_test = make_spirals(jax.random.key(seed + 1), 1024)
  model = MLP()
  params = model.init(jax.random.key(seed), x_train[:1])["params"]

  def loss_fn(params, batch):
    x, y = batch
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  # SNIP: keep the 20% of kernel weights with the largest |gradient * weight| on one batch.
  masks = ss.sparse.snip_masks(loss_fn, params, (x_train[:512], y_train[:512]), sparsity)
  tx = ss.s2sam(
    ss.sparse.static_masks(optax.adamw(optax.cosine_decay_schedule(3e-3, steps), 1e-4), masks),
    rho=0.05,
  )
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  # Start from the sparse network.
  state = state.replace(params=ss.sparse.apply_masks(state.params, state.opt_state))

  @jax.jit
  def train_step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    return state.apply_gradients(grads=grads), loss

  @jax.jit
  def evaluate(state, x, y):
    clean = ss.unperturbed(state.params, state.opt_state)  # w_t; state.params is w_t + ε_t
    logits = state.apply_fn({"params": clean}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)

  rng = np.random.default_rng(seed)
  initial_loss, _ = evaluate(state, x_test, y_test)
  for _ in range(steps):
    idx = rng.choice(len(x_train), batch_size, replace=False)
    state, _ = train_step(state, (x_train[idx], y_train[idx]))
  test_loss, test_accuracy = evaluate(state, x_test, y_test)

  clean = ss.unperturbed(state.params, state.opt_state)
  summary = ss.sparse.sparsity_summary(clean, ss.sparse.get_masks(state.opt_state))
  print(summary)
  print(
    f"test loss {float(initial_loss):.3f} -> {float(test_loss):.3f}, "
    f"test accuracy (clean weights) {float(test_accuracy):.3f}"
  )
  # SNIP ranks all kernels together and keeps exactly round((1 - sparsity) * size) of them; the
  # clean weights are zero off-mask.
  assert summary.nnz == ss.sparse.count_for_density(summary.size, 1 - sparsity)
  masked = ss.sparse.apply_masks(clean, state.opt_state)
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, masked, clean)))
  return {
    "initial_loss": float(initial_loss),
    "test_loss": float(test_loss),
    "test_accuracy": float(test_accuracy),
    "sparsity": summary.sparsity,
  }


if __name__ == "__main__":
  main()
