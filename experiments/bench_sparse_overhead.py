"""Per-step overhead of the sparse wrappers over the dense step, side by side.

Variants (same model, data and inner optimizer, SGD momentum 0.9):

* ``dense``: the inner optimizer alone;
* ``static``: ``sparse.static_random`` (fixed ERK masks);
* ``rigl``: ``sparse.rigl`` with ``update_every`` (default 100): a sample is a
  block of ``update_every`` consecutive steps, which holds exactly one
  topology update, so the ratio includes the update's cost amortised;
* ``rigl_update_only``: RigL with a topology update on *every* step (the cost
  of one update step).

Every sample is a block of ``update_every`` jitted steps (``rigl_update_only``:
``--update-only-block`` steps), timed as a whole (Python loop, dispatch
included alike) and divided by its length; variants run interleaved, block by
block, and the medians are compared as ratios to ``dense``. The model is an
MLP (pure JAX) on random data; the sparse wrappers mask a dense matmul, so
there is no sparse speed-up here, only the wrappers' overhead.

    python -m experiments.bench_sparse_overhead --rounds 15 \
        --out experiments/results/sparse_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

from experiments import benchmarking
from s2sam_jax import sparse


def mlp_params(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return {f"dense{i}": {
      "kernel": jax.random.normal(k, (m, n)) / jnp.sqrt(m),
      "bias": jnp.zeros(n)} for i, (k, m, n) in enumerate(
          zip(keys, sizes[:-1], sizes[1:]))}


def make_loss(n_layers, images, labels):
  def loss(params):
    x = images
    for i in range(n_layers):
      layer = params[f"dense{i}"]
      x = x @ layer["kernel"] + layer["bias"]
      if i < n_layers - 1:
        x = jax.nn.relu(x)
    return optax.softmax_cross_entropy_with_integer_labels(x, labels).mean()
  return loss


def make_variants(sparsity: float, update_every: int):
  inner = lambda: optax.sgd(0.01, momentum=0.9)
  never = 10**9
  return {
      "dense": inner(),
      "static": sparse.static_random(inner(), sparsity),
      "rigl": sparse.rigl(inner(), sparsity, update_every=update_every,
                          end_step=never),
      "rigl_update_only": sparse.rigl(inner(), sparsity, update_every=1,
                                      end_step=never),
  }


def make_runner(tx, loss, params, block):
  state = tx.init(params)
  carry = [sparse.apply_masks(params, state), state]

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  def run_block():
    params, state = carry
    for _ in range(block):
      params, state = step(params, state)
    carry[:] = [params, state]
    return params

  return run_block


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="784,1024,1024,10")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--update-every", type=int, default=100)
  parser.add_argument("--update-only-block", type=int, default=10,
                      help="steps per sample of rigl_update_only")
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--out", default="experiments/results/sparse_overhead.json")
  args = parser.parse_args(argv)

  sizes = [int(s) for s in args.sizes.split(",")]
  key_p, key_x, key_y = jax.random.split(jax.random.key(0), 3)
  params = mlp_params(key_p, sizes)
  images = jax.random.normal(key_x, (args.batch_size, sizes[0]))
  labels = jax.random.randint(key_y, (args.batch_size,), 0, sizes[-1])
  loss = make_loss(len(sizes) - 1, images, labels)
  blocks = {name: (args.update_only_block if name == "rigl_update_only"
                   else args.update_every)
            for name in make_variants(args.sparsity, args.update_every)}
  runners = {name: make_runner(tx, loss, params, blocks[name])
             for name, tx in make_variants(args.sparsity,
                                           args.update_every).items()}

  for run in runners.values():  # compile, warm up
    jax.block_until_ready(run())
  samples = {name: [] for name in runners}
  for _ in range(args.rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      samples[name].append((time.perf_counter() - start) / blocks[name])

  medians = {name: statistics.median(s) for name, s in samples.items()}
  result = {
      "command": "python -m experiments.bench_sparse_overhead "
                 + " ".join(sys.argv[1:] if argv is None else argv),
      "what": "median seconds per training step (block of update_every "
              "steps / update_every), and ratio to the dense step",
      "config": vars(args),
      "machine": benchmarking.machine_info(),
      "median_step_s": medians,
      "min_step_s": {name: min(s) for name, s in samples.items()},
      "ratio_to_dense": {name: m / medians["dense"]
                         for name, m in medians.items()},
  }
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in ("median_step_s", "ratio_to_dense")},
                   indent=2))


if __name__ == "__main__":
  main()
