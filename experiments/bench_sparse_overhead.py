"""Per-step overhead of the sparse wrappers over the dense step, side by side.

Variants (same model, data and inner optimizer, SGD momentum 0.9):

* ``dense``: the inner optimizer alone;
* ``static``: ``sparse.static_masks`` with random ERK masks (``sparsity=``);
* ``rigl``: ``sparse.rigl`` with ``update_every`` (default 100): a sample is a
  block of ``update_every`` consecutive steps, which holds exactly one
  topology update, so the ratio includes the update's cost amortised;
* ``rigl_update_only``: RigL with a topology update on *every* step (the cost
  of one update step).

Each step is jitted and timed on its own (blocked on, so dispatch and compute
are counted alike for every variant). Variants run interleaved, one block at
a time: ``update_every`` steps (``rigl_update_only``: ``--update-only-block``
steps). Two summaries, each as a ratio to ``dense``: the median over rounds
of a block's mean step time (for RigL this includes one topology update per
``update_every`` steps), and the median single step (for RigL an ordinary
step). The model is an
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
  return {
    f"dense{i}": {"kernel": jax.random.normal(k, (m, n)) / jnp.sqrt(m), "bias": jnp.zeros(n)}
    for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
  }


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
    "static": sparse.static_masks(inner(), sparsity=sparsity),
    "rigl": sparse.rigl(inner(), sparsity=sparsity, update_every=update_every, end_step=never),
    "rigl_update_only": sparse.rigl(inner(), sparsity=sparsity, update_every=1, end_step=never),
  }


def make_runner(tx, loss, params, block):
  state = tx.init(params)
  carry = [sparse.apply_masks(params, state), state]

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  def run_block():
    """Runs ``block`` steps, each blocked on; returns their durations."""
    params, state = carry
    durations = []
    for _ in range(block):
      start = time.perf_counter()
      params, state = jax.block_until_ready(step(params, state))
      durations.append(time.perf_counter() - start)
    carry[:] = [params, state]
    return durations

  return run_block


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="784,1024,1024,10")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--update-every", type=int, default=100)
  parser.add_argument(
    "--update-only-block", type=int, default=10, help="steps per sample of rigl_update_only"
  )
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--out", default="experiments/results/sparse_overhead.json")
  args = parser.parse_args(argv)

  sizes = [int(s) for s in args.sizes.split(",")]
  key_p, key_x, key_y = jax.random.split(jax.random.key(0), 3)
  params = mlp_params(key_p, sizes)
  images = jax.random.normal(key_x, (args.batch_size, sizes[0]))
  labels = jax.random.randint(key_y, (args.batch_size,), 0, sizes[-1])
  loss = make_loss(len(sizes) - 1, images, labels)
  blocks = {
    name: (args.update_only_block if name == "rigl_update_only" else args.update_every)
    for name in make_variants(args.sparsity, args.update_every)
  }
  runners = {
    name: make_runner(tx, loss, params, blocks[name])
    for name, tx in make_variants(args.sparsity, args.update_every).items()
  }

  for run in runners.values():  # compile, warm up
    run()
  block_means = {name: [] for name in runners}
  step_times = {name: [] for name in runners}
  for _ in range(args.rounds):
    for name, run in runners.items():
      durations = run()
      block_means[name].append(statistics.fmean(durations))
      step_times[name].extend(durations)

  mean = {name: statistics.median(s) for name, s in block_means.items()}
  median = {name: statistics.median(s) for name, s in step_times.items()}
  result = {
    "command": "python -m experiments.bench_sparse_overhead "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "what": "seconds per training step. block_mean_step_s: median over "
    "rounds of the mean step time of a block (for rigl a block of "
    "update_every steps holds exactly one topology update, so this "
    "includes its cost); median_step_s: median single step (for "
    "rigl an ordinary step). Ratios are to dense.",
    "config": vars(args),
    "machine": benchmarking.machine_info(),
    "block_mean_step_s": mean,
    "median_step_s": median,
    "ratio_to_dense_block_mean": {n: m / mean["dense"] for n, m in mean.items()},
    "ratio_to_dense_median_step": {n: m / median["dense"] for n, m in median.items()},
  }
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio")}, indent=2))


if __name__ == "__main__":
  main()
