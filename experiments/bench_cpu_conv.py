"""CPU training-step benchmark: JAX (plain lax conv vs cpu_conv) against PyTorch.

Times one jitted training step (forward, backward, SGD-momentum update, BatchNorm statistics)
of CIFAR models at several batch sizes, the variants interleaved in one process:

* ``jax_plain``: our JAX stack with ``jax.lax.conv_general_dilated`` (S2SAM_FAST_CPU_CONV=0);
* ``jax_fast``: the same model with ``experiments.models.cpu_conv.conv_general_dilated``
  (what the model zoo uses on CPU);
* ``jax_fast_xla_kernel_grad``: ``jax_fast`` without the native C++ kernel gradient
  (S2SAM_NATIVE_CPU_KERNELS=0: XLA's dense kernel gradients);
* ``torch`` / ``torch_1thread``: the same architecture in PyTorch (CPU, default NCHW,
  ``torch.optim.SGD``), with its default thread count / one thread;
* diagnostics, wrong gradients: ``jax_fast_zero_kernel_grad`` and ``jax_fast_zero_conv_grads``
  replace the conv kernel (and input) gradients by zeros, pricing them inside a real step.

Medians after warmup (wall clock, process CPU time, minor page faults), ratios JAX/PyTorch.
Results are written after every configuration, so a long run in the background leaves partial
results behind.

    python -m experiments.bench_cpu_conv --models resnet20 --batch-sizes 64 128 \
        --steps 15 --out experiments/results/cpu_conv_bench.json

Needs the ``bench`` extra (``pip install -e .[bench]``: torch).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import benchmarking, runtime
from experiments.models import cpu_conv, native_kernels


@contextlib.contextmanager
def switch_env(name: str, enabled: bool):
  """Sets the switch ``name`` to 1/0 for the duration (the conv reads its switches at trace
  time: ``cpu_conv.ENV_VAR``, ``native_kernels.ENV_VAR``)."""
  old = os.environ.get(name)
  os.environ[name] = "1" if enabled else "0"
  try:
    yield
  finally:
    if old is None:
      del os.environ[name]
    else:
      os.environ[name] = old


# ----------------------------------------------------------------------------- JAX models

# Benchmark name -> model-zoo name. "classic": widths 16/32/64, option-A shortcuts; the plain
# names are the GraSP variant (widths 32/64/128, 1x1 projection shortcuts).
MODELS = {
  "resnet20_classic": "resnet20_classic",
  "resnet32_classic": "resnet32_classic",
  "resnet20": "resnet20",
  "resnet32": "resnet32",
  "vgg19": "vgg19",
  "mobilenetv2": "mobilenetv2",
}


def jax_model(name, num_classes=10, seed=0):
  """The zoo model, every conv built with cpu_conv (plain or fast chosen at trace time)."""
  from experiments.models import create_model, layers

  original = layers.conv_general_dilated_impl
  layers.conv_general_dilated_impl = lambda: cpu_conv.conv_general_dilated
  try:
    return create_model(MODELS[name], num_classes=num_classes, rngs=nnx.Rngs(seed))
  finally:
    layers.conv_general_dilated_impl = original


@contextlib.contextmanager
def skip_conv_grads(kernel: bool, inputs: bool):
  """Diagnostic: the custom conv's kernel and/or input gradients become zeros (timing only).

  The step time saved is what that gradient costs inside a real training step.
  """
  saved = cpu_conv._kernel_grad, cpu_conv._input_grad
  if kernel:
    cpu_conv._kernel_grad = lambda x, w, g, *a: jnp.zeros_like(w) + 0 * g.sum()
  if inputs:
    cpu_conv._input_grad = lambda x, w, g, *a: jnp.zeros_like(x) + 0 * g.sum()
  try:
    yield
  finally:
    cpu_conv._kernel_grad, cpu_conv._input_grad = saved


def jax_step(
  name, batch_size, fast: bool, seed=0, skip_kernel_grad=False, skip_input_grad=False, native=True
):
  """A zero-argument closure running one compiled training step (donated carry)."""
  model = jax_model(name, seed=seed)
  images, labels = benchmarking.random_batch((32, 32, 3), batch_size, seed)
  return benchmarking.sgd_step(
    model, images, labels, _switches(fast, native, skip_kernel_grad, skip_input_grad)
  )


@contextlib.contextmanager
def _switches(fast, native, skip_kernel_grad, skip_input_grad):
  """The conv's switches for one variant, while its step compiles."""
  with (
    switch_env(cpu_conv.ENV_VAR, fast),
    switch_env(native_kernels.ENV_VAR, native),
    skip_conv_grads(skip_kernel_grad, skip_input_grad),
  ):
    yield


# --------------------------------------------------------------------------- torch models


def torch_model(name, num_classes=10):
  """The same architectures as the zoo, in PyTorch (NCHW): :mod:`experiments.torch_models`."""
  from experiments import torch_models

  return torch_models.create(MODELS[name], num_classes=num_classes)


def torch_step(name, batch_size, seed=0, threads=None):
  import torch
  from torch import nn

  torch.manual_seed(seed)
  model = torch_model(name).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
  gen = torch.Generator().manual_seed(seed)
  images = torch.randn(batch_size, 3, 32, 32, generator=gen)
  labels = torch.randint(0, 10, (batch_size,), generator=gen)

  def run():
    if threads is not None:
      torch.set_num_threads(threads)
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()

  return run


# ------------------------------------------------------------------------------ harness


def _minor_faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(fns: dict, steps: int, warmup: int, settle_s: float = 0.05) -> dict:
  """Runs the variants round-robin; per variant: wall-clock and process CPU-time statistics.

  CPU time (all threads of this process) is much less sensitive than wall time to other
  processes sharing the cores; it counts work, not waiting (and counts spin-waiting as work).
  Between two timed steps the harness sleeps ``settle_s`` (untimed), so that PyTorch's OpenMP
  workers, which spin for a while after each parallel region, are asleep again before the
  next variant starts instead of competing with it for the two cores.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  wall = {k: [] for k in fns}
  cpu = {k: [] for k in fns}
  faults = {k: [] for k in fns}
  for _ in range(steps):
    for k, fn in fns.items():
      f, c, t = _minor_faults(), time.process_time(), time.perf_counter()
      fn()
      wall[k].append(time.perf_counter() - t)
      cpu[k].append(time.process_time() - c)
      faults[k].append(_minor_faults() - f)
      time.sleep(settle_s)
  return {
    k: {
      "median_s": statistics.median(wall[k]),
      "min_s": min(wall[k]),
      "max_s": max(wall[k]),
      "cpu_median_s": statistics.median(cpu[k]),
      "page_faults_median": statistics.median(faults[k]),
      "samples": len(wall[k]),
    }
    for k in fns
  }


def parameter_counts(name) -> dict:
  """Parameter counts of the JAX and PyTorch models (equal when the architectures match)."""
  params = nnx.state(jax_model(name), nnx.Param)
  n_jax = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  n_torch = sum(p.numel() for p in torch_model(name).parameters())
  if n_jax != n_torch:
    raise AssertionError(f"{name}: JAX has {n_jax} parameters, PyTorch {n_torch}")
  return {"jax": n_jax, "torch": n_torch}


def markdown(result) -> str:
  """A table of median step times (wall; CPU time in brackets) and ratios."""
  variants = list(dict.fromkeys(v for row in result["configs"] for v in row["times"]))
  lines = [
    f"Command: `{result['command']}`",
    "",
    "Median step time in seconds, wall clock (process CPU time in brackets). "
    "`torch*` = the faster of the two PyTorch variants (by median wall time). "
    f"Machine: {result['machine']}.",
    "",
    "| model | batch | " + " | ".join(variants) + " | fast/plain | plain/torch* | fast/torch* |",
    "|---|---|" + "---|" * (len(variants) + 3),
  ]
  for row in result["configs"]:
    t = row["times"]
    cells = [
      f"{t[v]['median_s']:.3f} ({t[v]['cpu_median_s']:.3f})" if v in t else "-" for v in variants
    ]
    ratio = lambda key: f"{row[key]:.2f}" if key in row else "-"
    fast_plain = (
      f"{t['jax_fast']['median_s'] / t['jax_plain']['median_s']:.2f}"
      if "jax_fast" in t and "jax_plain" in t
      else "-"
    )
    lines.append(
      f"| {row['model']} | {row['batch_size']} | "
      + " | ".join(cells)
      + f" | {fast_plain} | {ratio('ratio_jax_plain_to_best_torch')} | "
      f"{ratio('ratio_jax_fast_to_best_torch')} |"
    )
  return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 128])
  parser.add_argument(
    "--variants",
    nargs="+",
    default=["jax_plain", "jax_fast", "torch", "torch_1thread"],
    help="also: jax_fast_xla_kernel_grad (no native kernel), "
    "jax_fast_zero_kernel_grad, jax_fast_zero_conv_grads "
    "(diagnostics: the conv gradients replaced by zeros)",
  )
  parser.add_argument("--steps", type=int, default=15)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--out", default=None)
  parser.add_argument(
    "--omp-passive",
    action=argparse.BooleanOptionalAction,
    default=False,
    help="OMP_WAIT_POLICY=PASSIVE: PyTorch's idle OpenMP threads sleep "
    "instead of spinning while the JAX variants run (which otherwise "
    "steals a core from JAX and inflates its process CPU time)",
  )
  parser.add_argument(
    "--tune-malloc",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="glibc malloc: one arena, no mmap, no trim (runtime.tune_glibc_malloc)",
  )
  return parser


def variant_makers(name, bs, default_threads) -> dict:
  """Variant name -> a zero-argument maker of its step closure, for ``name`` at batch ``bs``."""
  return {
    "jax_plain": lambda: jax_step(name, bs, fast=False),
    "jax_fast": lambda: jax_step(name, bs, fast=True),
    # cpu_conv without the native kernel gradient (XLA's instead)
    "jax_fast_xla_kernel_grad": lambda: jax_step(name, bs, fast=True, native=False),
    "torch": lambda: torch_step(name, bs, threads=default_threads),
    "torch_1thread": lambda: torch_step(name, bs, threads=1),
    # diagnostics (wrong gradients, timing only): what the conv gradients cost
    "jax_fast_zero_kernel_grad": lambda: jax_step(name, bs, fast=True, skip_kernel_grad=True),
    "jax_fast_zero_conv_grads": lambda: jax_step(
      name, bs, fast=True, skip_kernel_grad=True, skip_input_grad=True
    ),
  }


def config_row(name, bs, times) -> dict:
  """One configuration's result row: its times, and each JAX variant's ratio to the faster
  PyTorch variant (when one ran)."""
  row = {"model": name, "batch_size": bs, "parameters": parameter_counts(name), "times": times}
  torch_best = min((t["median_s"] for v, t in times.items() if v.startswith("torch")), default=None)
  if torch_best is not None:
    for v in times:
      if v.startswith("jax"):
        row[f"ratio_{v}_to_best_torch"] = times[v]["median_s"] / torch_best
  return row


def write_result(result, out) -> None:
  """``out`` (JSON) and its Markdown table beside it (``.md``)."""
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  with open(os.path.splitext(out)[0] + ".md", "w") as f:
    f.write(markdown(result))


def main(argv=None):
  args = _parser().parse_args(argv)
  command = "python -m experiments.bench_cpu_conv " + " ".join(
    sys.argv[1:] if argv is None else argv
  )

  if args.tune_malloc:
    runtime.tune_glibc_malloc()
  if args.omp_passive:  # must precede the first torch import
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  import torch

  default_threads = torch.get_num_threads()
  result = {
    "command": command,
    "configs": [],
    "machine": {
      "jax": jax.__version__,
      "torch": torch.__version__,
      "backend": jax.default_backend(),
      "cpus": os.cpu_count(),
      "torch_threads": default_threads,
      "tune_malloc": args.tune_malloc,
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    },
  }
  for name in args.models:
    for bs in args.batch_sizes:
      makers = variant_makers(name, bs, default_threads)
      fns = {v: makers[v]() for v in args.variants}
      row = config_row(name, bs, interleaved(fns, args.steps, args.warmup))
      result["configs"].append(row)
      print(json.dumps(row), flush=True)
      if args.out:
        write_result(result, args.out)


if __name__ == "__main__":
  main()
