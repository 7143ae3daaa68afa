"""Step benchmark: base optimizer vs S2-SAM vs two-step SAM, side by side.

Each variant is one jit-compiled training step (forward, backward, optimizer
update, BatchNorm statistics) of a CIFAR-shaped ResNet; the three run
interleaved in one process and the medians are compared as ratios.

    python -m experiments.bench_step --model resnet20_classic --batch-size 64 \
        --steps 30 --out experiments/results/step_bench.json
"""

from __future__ import annotations

import argparse
import json
import sys

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax

import s2sam_jax as ss
from experiments import benchmarking, runtime
from experiments.models import create_model


def make_steps(model_name: str, batch_size: int, seed: int = 0):
  """Returns {variant: zero-arg step closure} over shared data and model."""
  model = create_model(model_name, num_classes=10, rngs=nnx.Rngs(seed))
  key = jax.random.key(seed)
  images = jax.random.normal(key, (batch_size, 32, 32, 3), jnp.float32)
  labels = jax.random.randint(key, (batch_size,), 0, 10)
  params, batch_stats, grad_and_stats = benchmarking.model_gradient(model, images, labels)
  base = lambda: optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
  variants = {"base": base(), "s2sam": ss.s2sam(base(), rho=0.05), "sam": ss.sam(base(), rho=0.05)}

  def build(name, tx):
    def step(params, batch_stats, opt_state):
      grads, new_stats = grad_and_stats(params, batch_stats)
      extra = {}
      if name == "sam":
        extra["grad_fn"] = lambda p: grad_and_stats(p, batch_stats)[0]
      updates, opt_state = tx.update(grads, opt_state, params, **extra)
      return optax.apply_updates(params, updates), new_stats, opt_state

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    carry = [jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, batch_stats), tx.init(params)]

    def run():
      carry[:] = step(*carry)
      return carry

    return run

  return {name: build(name, tx) for name, tx in variants.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet20_classic")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  runtime.maybe_tune_glibc_malloc()  # as the training command does

  times = benchmarking.interleaved_medians(
    make_steps(args.model, args.batch_size), steps=args.steps, warmup=args.warmup
  )
  base = times["base"]["median_s"]
  result = {
    "command": "python -m experiments.bench_step "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "model": args.model,
    "batch_size": args.batch_size,
    "step_times": times,
    "ratio_s2sam_to_base": times["s2sam"]["median_s"] / base,
    "ratio_sam_to_base": times["sam"]["median_s"] / base,
    "machine": benchmarking.machine_info(),
  }
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
