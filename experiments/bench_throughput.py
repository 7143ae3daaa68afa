"""Throughput (the paper's Table 4): original vs two-step SAM vs S2-SAM steps.

For dense training and each distinct sparse step (the training command's own
step: ``experiments.steps.make_steps`` over ``experiments.recipes.build_tx``,
so augmentation, BatchNorm and the optimizer are the real ones), every mode
is compiled once and timed interleaved with the others in one process,
warmed up, over ``--steps`` steps on a synthetic CIFAR-shaped batch; the
table gives images/s, the ratio to the original optimizer and the peak
memory XLA plans for the compiled step (``memory_analysis``: arguments +
outputs + temporaries - donated aliases).

The sparse methods with fixed masks share one step (static random, magnitude
at init, SNIP, GraSP, LT, LRR: ``sparse.static_masks``), measured as
``static``; the others each have their own.

    python -m experiments.bench_throughput --model resnet32 --batch-size 64 \\
        --out experiments/results/throughput/resnet32_b64.json
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import benchmarking, configs, recipes, runtime
from experiments import steps as steps_lib
from experiments.data.source import DatasetInfo

METHODS = ("dense", "static", "set", "rigl-erk", "dsr", "mest-em", "mest-ems", "gmp")
MODES = ("original", "sam", "s2sam")
CIFAR = DatasetInfo(
  name="cifar10",
  num_classes=10,
  image_shape=(32, 32, 3),
  input_shape=(32, 32, 3),
  mean=(0.49, 0.48, 0.45),
  std=(0.25, 0.24, 0.26),
  augmentation="cifar",
  pixel_max=255.0,
)


def _config(method: str, mode: str, model: str, batch_size: int, sparsity: float):
  values = configs.get_config(f"table1/cifar10/resnet32/{method}")
  values.update(model=model, batch_size=batch_size, optimizer_mode=mode, sparsity=sparsity)
  if method == "dense":
    values["sparsity"] = 0.0
  cfg = configs.TrainConfig(**values)
  configs.validate(cfg)
  return configs.resolve(cfg)


def memory(compiled) -> dict[str, int]:
  """XLA's plan for one compiled step, in bytes."""
  m = compiled.memory_analysis()
  sizes = dict(
    arguments=m.argument_size_in_bytes,
    outputs=m.output_size_in_bytes,
    temporaries=m.temp_size_in_bytes,
    aliased=m.alias_size_in_bytes,
  )
  sizes["peak"] = sizes["arguments"] + sizes["outputs"] + sizes["temporaries"] - sizes["aliased"]
  return sizes


def variant(method: str, mode: str, model_name: str, batch_size: int, sparsity: float):
  """``(step closure, memory plan)`` of one (method, mode) training step."""
  cfg = _config(method, mode, model_name, batch_size, sparsity)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  key = jax.random.key(0)
  model = steps_lib.make_model(cfg, CIFAR.num_classes, CIFAR.input_shape, key)
  sched = recipes.Schedule(steps_per_epoch=781, total_steps=781 * cfg.epochs)
  images = jax.random.randint(key, (batch_size, 32, 32, 3), 0, 256).astype(jnp.uint8)
  batch = {
    "image": jax.device_put(images, sharded),
    "label": jax.device_put(jax.random.randint(key, (batch_size,), 0, 10), sharded),
  }
  scoring = lambda: steps_lib.scoring_loss(cfg, model, CIFAR, _ArraySource(batch))
  masks = recipes.initial_masks(cfg, model.params, key, scoring)
  tx = recipes.build_tx(cfg, sched, masks, key)
  opt_state = tx.init(model.params)
  train = steps_lib.make_steps(cfg, model, CIFAR, tx, mesh).train
  carry = jax.device_put([model.params, model.stats, opt_state], replicated)
  step_key = jax.device_put(jax.random.key_data(key), replicated)
  step_key = jax.random.wrap_key_data(step_key)
  plan = memory(train.lower(*carry, batch, step_key).compile())

  def run():
    carry[:] = train(*carry, batch, step_key)[:3]
    return carry

  return run, plan


class _ArraySource:
  """The benchmark batch as a source, for SNIP/GraSP scoring."""

  def __init__(self, batch):
    self.images, self.labels = np.asarray(batch["image"]), np.asarray(batch["label"])

  def __len__(self):
    return len(self.labels)

  def get_batch(self, idx):
    idx = np.asarray(idx) % len(self.labels)
    return {"image": self.images[idx], "label": self.labels[idx]}


def bench(model: str, batch_size: int, sparsity: float, steps: int, warmup: int, methods):
  rows = []
  for method in methods:
    modes = ("original", "sam", "s2sam")
    built = {mode: variant(method, mode, model, batch_size, sparsity) for mode in modes}
    times = benchmarking.interleaved_medians(
      {m: fn for m, (fn, _) in built.items()}, steps=steps, warmup=warmup
    )
    base = times["original"]["median_s"]
    for mode in modes:
      t = times[mode]
      rows.append(
        dict(
          method=method,
          mode=mode,
          images_per_s=batch_size / t["median_s"],
          ratio_to_original=t["median_s"] / base,
          median_s=t["median_s"],
          p10_s=t["p10_s"],
          p90_s=t["p90_s"],
          memory_bytes=built[mode][1],
          memory_ratio_to_original=built[mode][1]["peak"] / built["original"][1]["peak"],
        )
      )
      print(
        f"{method:9s} {mode:9s} {rows[-1]['images_per_s']:8.1f} img/s "
        f"x{rows[-1]['ratio_to_original']:.3f}  peak {built[mode][1]['peak'] / 2**20:7.1f} MiB",
        flush=True,
      )
  return rows


def markdown(result) -> str:
  lines = [
    f"Model {result['model']}, batch {result['batch_size']}, sparsity {result['sparsity']:g} "
    f"(median of {result['steps']} interleaved steps)",
    "",
    f"Command: `{result['command']}`. Machine: {result['machine']}.",
    "",
    "| method | mode | images/s | step / original | peak memory (MiB) | memory / original |",
    "|---|---|---:|---:|---:|---:|",
  ]
  for r in result["rows"]:
    lines.append(
      f"| {r['method']} | {r['mode']} | {r['images_per_s']:.1f} | {r['ratio_to_original']:.3f} | "
      f"{r['memory_bytes']['peak'] / 2**20:.1f} | {r['memory_ratio_to_original']:.3f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet32", help="zoo model (CIFAR-shaped)")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
  parser.add_argument("--out", default=None, help="JSON path (a .md table is written beside)")
  args = parser.parse_args(argv)
  runtime.maybe_tune_glibc_malloc()  # as the training command does
  rows = bench(args.model, args.batch_size, args.sparsity, args.steps, args.warmup, args.methods)
  result = dict(
    command="python -m experiments.bench_throughput "
    + " ".join(sys.argv[1:] if argv is None else argv),
    model=args.model,
    batch_size=args.batch_size,
    sparsity=args.sparsity,
    steps=args.steps,
    rows=rows,
    machine=benchmarking.machine_info(),
  )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
    with open(args.out.rsplit(".", 1)[0] + ".md", "w") as f:
      f.write(markdown(result))
  print(markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
