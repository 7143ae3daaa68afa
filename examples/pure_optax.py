"""Plain JAX + Optax: an MLP as a dict of arrays, trained with SET at 90% sparsity under S2-SAM.

Shows: S2-SAM and a sparse method composed with ordinary Optax pieces
(``optax.chain(optax.clip_by_global_norm(...), optax.adam(...))`` as the inner optimizer); the
standard jitted ``tx.update`` + ``optax.apply_updates`` step; how far SET's masks moved during
training (``ss.sparse.mask_overlap``); and the clean weights for evaluation.

Run: ``python examples/pure_optax.py``
"""

import jax
import jax.numpy as jnp
import optax

import s2sam_jax as ss


def init_params(key, sizes=(1, 128, 128, 1)):
  keys = jax.random.split(key, len(sizes) - 1)
  return {
    f"layer{i}": {"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros(n)}
    for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
  }


def predict(params, x):
  *hidden, last = params.values()
  for layer in hidden:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ last["w"] + last["b"]


def loss_fn(params, x, y):
  return jnp.mean((predict(params, x) - y) ** 2)


def main(steps=1500, sparsity=0.9, seed=0):
  k_params, k_x = jax.random.split(jax.random.key(seed))
  x = jax.random.uniform(k_x, (512, 1), minval=-2.0, maxval=2.0)
  y = jnp.sin(3 * x) + 0.5 * x  # a noiseless 1-D regression target
  params = init_params(k_params)

  # Inside the sparse wrapper, which masks the gradient it passes on: the clipping norm counts
  # active weights only.
  inner = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
  tx = ss.s2sam(
    # The same as ss.sparse.create("set", inner, sparsity=..., ...), the by-name factory.
    ss.sparse.set_(inner, sparsity=sparsity, update_every=100, end_step=steps // 2, key=seed),
    rho=0.02,
  )
  state = tx.init(params)
  params = ss.sparse.apply_masks(params, state)  # start from the sparse network
  initial_masks = ss.sparse.get_masks(state)

  @jax.jit
  def train_step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  initial_loss = loss_fn(params, x, y)
  for _ in range(steps):
    params, state, _ = train_step(params, state)

  clean = ss.unperturbed(params, state)  # params hold w_t + ε_t
  final_loss = loss_fn(clean, x, y)
  masks = ss.sparse.get_masks(state)
  summary = ss.sparse.sparsity_summary(clean, masks)
  overlap = ss.sparse.mask_overlap(initial_masks, masks)
  print(summary)
  print(f"SET kept {overlap.total.shared_fraction:.1%} of the initial connections")
  print(f"mse {float(initial_loss):.4f} -> {float(final_loss):.4f} (clean weights)")

  # Exactly sparse: SET drops and regrows equally many weights, off-mask weights stay 0.
  assert summary.nnz == ss.sparse.nnz(initial_masks)
  masked = ss.sparse.apply_masks(clean, state)
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, masked, clean)))
  return {
    "initial_loss": float(initial_loss),
    "final_loss": float(final_loss),
    "sparsity": summary.sparsity,
    "kept_connections": overlap.total.shared_fraction,
  }


if __name__ == "__main__":
  main()
