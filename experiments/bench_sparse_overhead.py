"""Per-step overhead of the sparse wrappers over the dense step, side by side.

For each model (``mlp``: 784-1024-1024-10 on random data, batch 128;
``resnet20``: the zoo's CIFAR ResNet-20 on random 32x32 images, batch 64) and
each method (``dense``, ``static``, ``set``, ``rigl``, ``dsr``, ``mest``,
``gmp``; 90% uniform masks, SGD momentum 0.9, ΔT = ``--update-every``, drop
fraction 0.3), with and without :func:`s2sam_jax.s2sam` around it, two
compiled training steps (forward, backward, ``tx.update``, ``apply_updates``;
params and state donated, as the training command does):

* *ordinary*: the method with its schedule of one topology update per ΔT
  steps; only steps that update no topology are timed (the host knows the
  step count);
* *update*: the same method updating its topology on every step
  (``update_every=1``): the cost of one topology-update step.

All compiled steps run interleaved, one short block each per round (every
step blocked on and timed on its own). Per round and variant the block's mean
step time is divided by the dense step's of the same round; the table gives
the median of these ratios over rounds and their 10-90% range. The step
amortised over ΔT is ``((ΔT − 1) · ordinary + update) / ΔT`` from the
medians. The masks gate a dense computation: there is no sparse speed-up
here, only the wrappers' overhead.

Memory, from XLA's memory analysis of each compiled step (no timing): the
optimizer state's size (arguments) and the step's peak (arguments + outputs
− donated aliases + temporaries), against dense.

    python -m experiments.bench_sparse_overhead --rounds 15 \\
        --out-dir experiments/results/sparse_overhead
    python -m experiments.bench_sparse_overhead --quick   # tiny, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import s2sam_jax
from experiments import benchmarking, runtime
from s2sam_jax import sparse

METHODS = ("dense", "static", "set", "rigl", "dsr", "mest", "gmp")
NEVER = 10**8  # a step no benchmark reaches


# ------------------------------------------------------------------ models


def mlp_problem(sizes, batch_size, key):
  """``(params, stats, grad_fn)`` of an MLP on random data; ``stats`` is
  ``None`` and ``grad_fn(params, stats) -> (grads, stats)``."""
  keys = jax.random.split(key, len(sizes) + 1)
  params = {
    f"dense{i}": {"kernel": jax.random.normal(k, (m, n)) / jnp.sqrt(m), "bias": jnp.zeros(n)}
    for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
  }
  images = jax.random.normal(keys[-2], (batch_size, sizes[0]))
  labels = jax.random.randint(keys[-1], (batch_size,), 0, sizes[-1])

  def loss(params):
    x = images
    for i in range(len(sizes) - 1):
      x = x @ params[f"dense{i}"]["kernel"] + params[f"dense{i}"]["bias"]
      x = jax.nn.relu(x) if i < len(sizes) - 2 else x
    return optax.softmax_cross_entropy_with_integer_labels(x, labels).mean()

  return params, None, lambda p, s: (jax.grad(loss)(p), s)


def resnet_problem(name, batch_size, key, image_size=32):
  """``(params, batch_stats, grad_fn)`` of a zoo model on random images."""
  import flax.nnx as nnx  # pylint: disable=g-import-not-at-top

  from experiments.models import create_model  # pylint: disable=g-import-not-at-top

  model = create_model(name, num_classes=10, rngs=nnx.Rngs(0))
  kx, ky = jax.random.split(key)
  images = jax.random.normal(kx, (batch_size, image_size, image_size, 3))
  labels = jax.random.randint(ky, (batch_size,), 0, 10)
  return benchmarking.model_gradient(model, images, labels)


# ------------------------------------------------------------ transformations


def make_tx(method, *, every, sparsity, drop_fraction, s2sam, buffer_dtype=None):
  """``method`` around SGD momentum, its topology updated every ``every``
  steps (``every=1``: on every step), optionally inside S2-SAM."""
  inner = optax.sgd(0.01, momentum=0.9)
  masks = sparse.random_init(sparsity, "uniform")
  schedule = dict(update_every=every, drop_fraction=drop_fraction, end_step=NEVER)
  if method == "dense":
    tx = inner
  elif method == "static":
    tx = sparse.static_masks(inner, masks)
  elif method in ("set", "rigl"):
    tx = getattr(sparse, {"set": "set_", "rigl": "rigl"}[method])(inner, masks, **schedule)
  elif method == "dsr":
    tx = sparse.dsr(inner, masks, update_every=every)
  elif method == "mest":
    tx = sparse.mest(inner, masks, update_every=every, decay_steps=(NEVER, 2 * NEVER))
  elif method == "gmp":
    # Prunes on every scheduled step up to end_step; the keep counts are
    # tabulated per pruning step, so end_step stays modest.
    tx = sparse.gmp(inner, sparsity, update_every=every, end_step=every * 2000)
  else:
    raise ValueError(f"Unknown method {method!r}; one of {METHODS}.")
  return s2sam_jax.s2sam(tx, buffer_dtype=buffer_dtype) if s2sam else tx


def is_update_step(method, t, every):
  """Whether step ``t`` updates the topology (host-side, as each method's
  schedule says) for the benchmark's schedules."""
  if method in ("dense", "static"):
    return False
  if method == "dsr":
    return t > 0 and t % every == 0
  if method == "gmp":
    return t <= every * 2000 and t % every == 0
  return t % every == 0  # set, rigl, mest


def nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


class Runner:
  """A compiled, donated training step with its carry and step count."""

  def __init__(self, tx, params, stats, grad_fn):
    def step(params, stats, opt_state):
      grads, stats = grad_fn(params, stats)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), stats, opt_state

    copy = lambda tree: jax.tree.map(lambda x: jnp.array(x, copy=True), tree)
    opt_state = tx.init(params)
    self.carry = (copy(sparse.apply_masks(params, opt_state)), copy(stats), copy(opt_state))
    self.compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*self.carry).compile()
    self.state_bytes = nbytes(opt_state)
    self.t = 0

  def run(self, n):
    """Runs ``n`` steps; returns ``[(t, seconds)]``."""
    out = []
    for _ in range(n):
      start = time.perf_counter()
      self.carry = jax.block_until_ready(self.compiled(*self.carry))
      out.append((self.t, time.perf_counter() - start))
      self.t += 1
    return out

  def memory(self) -> dict:
    m = self.compiled.memory_analysis()
    peak = (
      m.argument_size_in_bytes
      + m.output_size_in_bytes
      - m.alias_size_in_bytes
      + m.temp_size_in_bytes
    )
    return {
      "state_bytes": self.state_bytes,
      "argument_bytes": m.argument_size_in_bytes,
      "temp_bytes": m.temp_size_in_bytes,
      "peak_bytes": peak,
    }


# ------------------------------------------------------------------ measure


def bench_model(problem, args, log):
  """Timing and memory of every variant on one model (see module doc)."""
  params, stats, grad_fn = problem
  cfg = dict(sparsity=args.sparsity, drop_fraction=args.drop_fraction)
  runners, kinds = {}, {}
  for s2 in (False, True):
    for method in args.methods:
      name = method + ("+s2sam" if s2 else "")
      runners[name] = Runner(
        make_tx(method, every=args.update_every, s2sam=s2, **cfg), params, stats, grad_fn
      )
      kinds[name] = (method, "ordinary")
      if method not in ("dense", "static"):
        runners[name + "/update"] = Runner(
          make_tx(method, every=1, s2sam=s2, **cfg), params, stats, grad_fn
        )
        kinds[name + "/update"] = (method, "update")
      log(f"  compiled {name}")
  bf16 = Runner(
    make_tx("dense", every=1, s2sam=True, buffer_dtype=jnp.bfloat16, **cfg), params, stats, grad_fn
  )
  memory = {n: r.memory() for n, r in runners.items() if kinds[n][1] == "ordinary"}
  memory["dense+s2sam_bf16"] = bf16.memory()
  memory["params_bytes"] = nbytes(params)
  masks = sparse.get_masks(runners["static"].carry[2]) if "static" in runners else None
  memory["mask_tree_bytes"] = nbytes(masks) if masks is not None else None

  for name, r in runners.items():  # warm up past step 0 (an update step for most)
    r.run(args.warmup)
  per_round = {n: [] for n in runners}
  for _ in range(args.rounds):
    for name, r in runners.items():
      method, kind = kinds[name]
      block = args.update_block if kind == "update" else args.block
      times = [
        s
        for t, s in r.run(block)
        if kind == "update" or not is_update_step(method, t, args.update_every)
      ]
      per_round[name].append(statistics.fmean(times) if times else float("nan"))

  dense = per_round["dense"]
  rows = {}
  for name, samples in per_round.items():
    ratios = sorted(s / d for s, d in zip(samples, dense) if s == s)
    rows[name] = {
      "median_step_s": statistics.median(x for x in samples if x == x),
      "ratio": statistics.median(ratios),
      "ratio_p10": ratios[int(0.1 * (len(ratios) - 1))],
      "ratio_p90": ratios[int(round(0.9 * (len(ratios) - 1)))],
    }
  for name in list(rows):
    if name + "/update" in rows:
      n, ord_, upd = args.update_every, rows[name]["ratio"], rows[name + "/update"]["ratio"]
      rows[name]["amortised_ratio"] = ((n - 1) * ord_ + upd) / n
  return {"timing": rows, "memory": memory}


def git_commit() -> str:
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "s2sam_jax"], capture_output=True)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
  except OSError:
    return "unknown"


def markdown(result) -> str:
  """The result as tables (a header with command, machine, versions)."""
  m = result["machine"]
  lines = [
    "# Sparse wrappers: per-step overhead against the dense step",
    "",
    f"Command: `{result['command']}`  ",
    f"Commit: `{result['commit']}`; jax {m['jax']}, optax {m['optax']}, python {m['python']}; "
    f"{m['backend']} ({m['processor']}, {m['cpu_count']} cores).",
    "",
    result["what"],
  ]
  for model, res in result["models"].items():
    t = res["timing"]
    lines += [
      "",
      f"## {model}",
      "",
      "| method | ordinary step / dense | [10%, 90%] | topology-update step / dense "
      f"| amortised over ΔT={result['config']['update_every']} |",
      "|---|---:|---:|---:|---:|",
    ]
    for name, row in t.items():
      if name.endswith("/update"):
        continue
      upd = t.get(name + "/update")
      lines.append(
        f"| {name} | {row['ratio']:.3f} | [{row['ratio_p10']:.3f}, {row['ratio_p90']:.3f}] | "
        + (f"{upd['ratio']:.2f}" if upd else "–")
        + " | "
        + (f"{row['amortised_ratio']:.3f}" if "amortised_ratio" in row else f"{row['ratio']:.3f}")
        + " |"
      )
    lines.append(f"\nDense step: {t['dense']['median_step_s'] * 1e3:.2f} ms (median).")
    mem = res["memory"]
    d = mem["dense"]
    lines += [
      "",
      f"Memory (XLA memory analysis; params {mem['params_bytes'] / 1e6:.3f} MB, "
      f"one mask tree {(mem['mask_tree_bytes'] or 0) / 1e6:.3f} MB):",
      "",
      "| variant | optimizer state − dense's (MB) | peak of the step (MB) | peak − dense's (MB) |",
      "|---|---:|---:|---:|",
    ]
    for name, row in mem.items():
      if not isinstance(row, dict):
        continue
      lines.append(
        f"| {name} | {(row['state_bytes'] - d['state_bytes']) / 1e6:.3f} | "
        f"{row['peak_bytes'] / 1e6:.2f} | {(row['peak_bytes'] - d['peak_bytes']) / 1e6:.2f} |"
      )
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="mlp,resnet20")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--mlp-sizes", default="784,1024,1024,10")
  parser.add_argument("--mlp-batch", type=int, default=128)
  parser.add_argument("--resnet-batch", type=int, default=64)
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--update-every", type=int, default=100)
  parser.add_argument("--drop-fraction", type=float, default=0.3)
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--block", type=int, default=0, help="ordinary steps per block (0: auto)")
  parser.add_argument("--update-block", type=int, default=0, help="update steps per block")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument(
    "--quick", action="store_true", help="tiny models and few steps (a smoke run)"
  )
  parser.add_argument("--out-dir", default="experiments/results/sparse_overhead")
  parser.add_argument("--name", default="sparse_overhead", help="file stem of the .json and .md")
  parser.add_argument("--code", default=None, help="what code ran (default: the git commit)")
  args = parser.parse_args(argv)
  args.methods = args.methods.split(",")
  if "dense" not in args.methods:
    args.methods.insert(0, "dense")
  if args.quick:
    args.mlp_sizes, args.mlp_batch, args.resnet_batch = "16,32,8", 4, 2
    args.rounds, args.update_every = 2, 4

  # As the training command does: without it XLA:CPU's per-step temporaries of the
  # topology update (never run on ordinary steps) are mmapped and page-faulted every step.
  malloc_tuned = runtime.maybe_tune_glibc_malloc()
  log = lambda s: print(s, file=sys.stderr, flush=True)
  key = jax.random.key(0)
  results = {}
  for model in args.models.split(","):
    if model == "mlp":
      problem = mlp_problem([int(s) for s in args.mlp_sizes.split(",")], args.mlp_batch, key)
      block, update_block = args.block or 20, args.update_block or 3
    else:
      size = 8 if args.quick else 32
      problem = resnet_problem(model, args.resnet_batch, key, image_size=size)
      block, update_block = args.block or 4, args.update_block or 1
    if args.quick:
      block, update_block = 3, 1
    log(f"{model}:")
    results[model] = bench_model(
      problem,
      argparse.Namespace(**{**vars(args), "block": block, "update_block": update_block}),
      log,
    )

  result = {
    "command": "python -m experiments.bench_sparse_overhead "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "commit": args.code or git_commit(),
    "what": (
      "Ratios to the dense step of the same round: median over rounds and 10-90% range. "
      "Ordinary: a step with no topology update; topology-update step: a step that "
      "updates the topology (update_every=1); amortised = ((ΔT-1) ordinary + update)/ΔT. "
      "+s2sam: the method inside s2sam_jax.s2sam (its dense row is S2-SAM around SGD). "
      "Steps donate params and state, and glibc malloc is tuned "
      "(experiments.runtime.tune_glibc_malloc), as the training command does."
    ),
    "malloc_tuned": malloc_tuned,
    "config": {k: v for k, v in vars(args).items() if k != "out_dir"},
    "machine": benchmarking.machine_info(),
    "models": results,
  }
  os.makedirs(args.out_dir, exist_ok=True)
  with open(os.path.join(args.out_dir, args.name + ".json"), "w") as f:
    json.dump(result, f, indent=2)
  text = markdown(result)
  with open(os.path.join(args.out_dir, args.name + ".md"), "w") as f:
    f.write(text)
  print(text)
  return result


if __name__ == "__main__":
  main()
