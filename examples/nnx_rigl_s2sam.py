"""A Flax NNX CNN trained with RigL at 90% sparsity under S2-SAM.

Shows: ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` with
``tx = ss.s2sam(ss.sparse.rigl(optax.sgd(...), ...))`` and the ordinary NNX training step;
starting from the sparse network; reading the masks and a sparsity summary from
``optimizer.opt_state``; evaluating the clean (unperturbed) weights on held-out data; and checking
that every layer keeps exactly the number of weights its density asks for.

Run: ``python examples/nnx_rigl_s2sam.py``
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import s2sam_jax as ss

NUM_CLASSES = 4


def make_data(key, n, size=12):
  """Noisy images of one bar; the label is its direction (—, |, \\, /), its position random."""
  k_label, k_pos, k_noise = jax.random.split(key, 3)
  labels = jax.random.randint(k_label, (n,), 0, NUM_CLASSES)
  pos = jax.random.randint(k_pos, (n, 1, 1), 2, size - 2)
  r, c = jnp.meshgrid(jnp.arange(size), jnp.arange(size), indexing="ij")
  bars = jnp.stack([r == pos, c == pos, r - c == pos - size // 2, r + c == pos + size // 2], axis=1)
  images = bars[jnp.arange(n), labels] + 0.4 * jax.random.normal(k_noise, (n, size, size))
  return images[..., None], labels


class CNN(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
    self.head = nnx.Linear(64, NUM_CLASSES, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    return self.head(x.mean(axis=(1, 2)))


def loss_fn(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def accuracy(model, x, y):
  return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def main(steps=400, batch_size=64, sparsity=0.9, seed=0):
  x_train, y_train = make_data(jax.random.key(seed), 2048)
  x_test, y_test = make_data(jax.random.key(seed + 1), 512)

  model = CNN(nnx.Rngs(seed))
  tx = ss.s2sam(
    ss.sparse.rigl(
      optax.sgd(optax.cosine_decay_schedule(0.1, steps), momentum=0.9),
      sparsity=sparsity,  # random initial masks, ERK layer-wise densities
      update_every=max(steps // 10, 1),
      drop_fraction=0.3,
      end_step=int(0.75 * steps),
      key=seed,
    ),
    rho=0.05,
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  # Start from the sparse network: zero the weights the initial masks prune.
  nnx.update(model, ss.sparse.apply_masks(nnx.state(model, nnx.Param), optimizer.opt_state))

  rng = np.random.default_rng(seed)
  losses = []
  for _ in range(steps):
    idx = rng.choice(len(x_train), batch_size, replace=False)
    losses.append(float(train_step(model, optimizer, x_train[idx], y_train[idx])))

  # The model holds the perturbed point w_t + ε_t; evaluate a copy holding the clean w_t.
  clean = ss.unperturbed(nnx.state(model, nnx.Param), optimizer.opt_state)
  eval_model = nnx.clone(model)
  nnx.update(eval_model, clean)
  test_accuracy = float(accuracy(eval_model, x_test, y_test))

  masks = ss.sparse.get_masks(optimizer.opt_state)
  summary = ss.sparse.sparsity_summary(clean, masks)
  print(summary)
  first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
  print(f"train loss {first:.3f} -> {last:.3f}, test accuracy (clean weights) {test_accuracy:.3f}")

  # Exactly sparse: each layer keeps round(density * size) weights of the ERK densities RigL
  # started from (its updates drop and regrow as many), and the clean weights are zero off-mask.
  densities = ss.sparse.layer_densities(clean, sparsity, "erk")
  want = {ss.sparse.path_str(k): d for k, d in jax.tree_util.tree_flatten_with_path(densities)[0]}
  for layer in summary.layers:
    assert layer.nnz == ss.sparse.count_for_density(layer.size, want[layer.path]), layer
  masked = ss.sparse.apply_masks(clean, optimizer.opt_state)
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, masked, clean)))
  return {
    "first_loss": first,
    "final_loss": last,
    "test_accuracy": test_accuracy,
    "sparsity": summary.sparsity,
  }


if __name__ == "__main__":
  main()
