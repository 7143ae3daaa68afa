"""CPU convolution paths per shape (xla / hlo / native), and the zoo's steps with the choice.

Three sub-commands, each timing compiled variants interleaved in one process (warmup first,
medians and interquartile ranges of wall-clock time, process CPU time alongside):

* ``shapes``: every distinct convolution of the zoo models (at their batch sizes, see
  :data:`ZOO`) and of a sweep of small and 1-D convolutions (:func:`sweep_geometries`), forward
  plus backward as in training (the output, the kernel gradient, and the input gradient unless
  the conv reads the data), by each of the three paths of
  :mod:`experiments.models.conv_paths`. The table gives the per-shape choice of
  :func:`conv_paths.choose` next to the fastest path: the record behind its crossover points.
* ``models``: one training step (forward, backward, SGD with momentum, BatchNorm statistics) of
  each zoo model at its batch size, with the per-shape choice (``auto``, the default) and with
  XLA's convolution everywhere (``xla``, what ``S2SAM_FAST_CPU_CONV=0`` gives); optionally
  ``native`` (every conv on the custom path, native kernel gradients wherever they apply: the
  zoo's choice before the per-shape rule).
* ``e2e``: the default job (``python -m experiments.train``) for ``--max-steps`` steps with each
  setting, back to back for ``--rounds`` rounds; images/s from each run's ``summary.json``.

    python -m experiments.bench_conv_paths shapes --out experiments/results/conv_paths_shapes.json
    python -m experiments.bench_conv_paths models --out experiments/results/conv_paths_models.json
    python -m experiments.bench_conv_paths e2e --out experiments/results/conv_paths_e2e.json

Each writes its JSON after every row (and a ``.md`` table next to it), so a long run leaves
partial results behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import benchmarking, runtime
from experiments.models import conv_paths, cpu_conv, create_model, native_kernels

# model -> (batch sizes, input shape without the batch). The usual ones: the default job's
# MNIST-1D batch 128, CIFAR recipes 64 (MEST/S2-SAM) and 128 (GraSP, LT). ImageNet recipes use
# 256-4096 at 224x224, far beyond a CPU; 16 keeps a step to seconds (the shapes per image are
# the ImageNet ones, and the per-shape choice depends on the batch only through the work).
ZOO: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
  "mnist1d_cnn": ((128,), (40,)),
  "mnist1d_cnn64": ((128,), (40,)),
  "resnet20": ((64, 128), (32, 32, 3)),
  "resnet32": ((64, 128), (32, 32, 3)),
  "resnet56": ((64, 128), (32, 32, 3)),
  "resnet20_classic": ((64, 128), (32, 32, 3)),
  "resnet32_classic": ((64, 128), (32, 32, 3)),
  "resnet56_classic": ((64, 128), (32, 32, 3)),
  "vgg19": ((64, 128), (32, 32, 3)),
  "mobilenetv2": ((64, 128), (32, 32, 3)),
  "resnet18": ((16,), (224, 224, 3)),
  "resnet34": ((16,), (224, 224, 3)),
  "resnet50": ((16,), (224, 224, 3)),
  "efficientnet_b0": ((16,), (224, 224, 3)),
}

# Settings of the model and end-to-end comparisons: environment variables for each.
SETTINGS: dict[str, dict[str, str]] = {
  "auto": {cpu_conv.ENV_VAR: "1", conv_paths.ENV_VAR: "auto"},
  "xla": {cpu_conv.ENV_VAR: "0", conv_paths.ENV_VAR: "auto"},
  "native": {cpu_conv.ENV_VAR: "1", conv_paths.ENV_VAR: "native"},
  "hlo": {cpu_conv.ENV_VAR: "1", conv_paths.ENV_VAR: "hlo"},
}


@contextlib.contextmanager
def environment(values: dict[str, str]):
  """Sets the variables in ``values`` for the duration (the conv reads them at trace time)."""
  old = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


# ----------------------------------------------------------------------------- timing


def _stats(wall: list[float], cpu: list[float]) -> dict:
  q1, _, q3 = statistics.quantiles(wall, n=4, method="inclusive") if len(wall) > 1 else wall * 3
  return {
    "median_s": statistics.median(wall),
    "q1_s": q1,
    "q3_s": q3,
    "cpu_median_s": statistics.median(cpu),
    "samples": len(wall),
  }


def interleaved(fns: dict[str, Callable[[], object]], samples: int, warmup: int) -> dict:
  """Runs the variants round-robin (the order rotating every round) after ``warmup`` calls each.

  Each call must block until its work is done. Returns per variant the median and quartiles of
  the wall-clock time and the median process CPU time (all threads) of one call.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  names = list(fns)
  wall = {k: [] for k in names}
  cpu = {k: [] for k in names}
  for r in range(samples):
    for k in names[r % len(names) :] + names[: r % len(names)]:
      c, t = time.process_time(), time.perf_counter()
      fns[k]()
      wall[k].append(time.perf_counter() - t)
      cpu[k].append(time.process_time() - c)
  return {k: _stats(wall[k], cpu[k]) for k in names}


def repeated(fn: Callable[[], object], target_s: float) -> tuple[Callable[[], None], int]:
  """``fn`` repeated enough times that one call of the result takes about ``target_s``."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  jax.block_until_ready(fn())
  reps = max(1, int(target_s / max(time.perf_counter() - start, 1e-7)))

  def run():
    out = None
    for _ in range(reps):
      out = fn()
    jax.block_until_ready(out)

  return run, reps


# ----------------------------------------------------------------------------- shapes


def zoo_geometries(model: str, batch: int) -> list[tuple[conv_paths.Geometry, bool]]:
  """``(geometry, needs_input_grad)`` of each convolution call of ``model``'s forward pass.

  The first convolution reads the data, whose gradient training never asks for.
  """
  m = create_model(model, num_classes=10, rngs=nnx.Rngs(0))
  m.train()
  graphdef, state = nnx.split(m)
  spec = jax.ShapeDtypeStruct((batch, *ZOO[model][1]), jnp.float32)
  with environment(SETTINGS["auto"]), conv_paths.record_choices() as records:
    jax.eval_shape(lambda x: nnx.merge(graphdef, state, copy=True)(x), spec)
  return [(g, i > 0) for i, (g, _) in enumerate(records)]


def _same(n, hw, c, k, o, groups=1):
  p = (k - 1) // 2
  return conv_paths.Geometry(n, hw, hw, c, k, k, o, (1, 1), ((p, p), (p, p)), groups)


def _conv1d(n, length, c, o):  # MNIST-1D's: kernel 3, stride 2, padding 1
  return conv_paths.Geometry(n, 1, length, c, 1, 3, o, (1, 2), ((0, 0), (1, 1)), 1)


def small_sweep() -> list[tuple[conv_paths.Geometry, bool]]:
  """1-D convs (MNIST-1D-like, height 1) and small 2-D maps: 3x3, 1x1 and depthwise."""
  out = []
  for n in (32, 128, 512):
    for length, c in ((40, 25), (19, 25), (80, 64), (160, 64), (320, 128), (40, 256)):
      out.append((_conv1d(n, length, c, c), True))
  for n in (16, 128):
    for hw, c in ((4, 16), (8, 16), (8, 64), (16, 16), (16, 64), (32, 16)):
      out += [(_same(n, hw, c, 3, c), True), (_same(n, hw, c, 1, 2 * c), True)]
      out.append((_same(n, hw, c, 3, c, groups=c), True))
  return out


def tails_sweep() -> list[tuple[conv_paths.Geometry, bool]]:
  """Output channels that are not whole vectors (the native kernel's tails), and tiny convs."""
  out = []
  for o in (8, 12, 20, 24, 25, 32, 40, 48, 56):  # 3x3 and 1-D: which O the native kernel loses
    out += [(_same(64, 16, 32, 3, o), True), (_conv1d(128, 40, 32, o), True)]
  for c in (16, 64, 144):  # 1x1: native against HLO's matmul, over C and O
    for o in (24, 40, 48, 64):
      out.append((_same(64, 16, c, 1, o), True))
  for n, hw in ((2, 4), (4, 4), (8, 8), (32, 8), (16, 16)):  # tiny: the fixed costs
    out += [(_same(n, hw, 32, 3, 32), True), (_same(n, hw, 32, 1, 64), True)]
    out.append((_same(n, hw, 32, 3, 32, groups=32), True))
  for n in (4, 16):
    out.append((_conv1d(n, 20, 64, 64), True))
  return out


SWEEPS = {"small": small_sweep, "tails": tails_sweep}


def _conv(g: conv_paths.Geometry, path: str):
  def f(x, w):
    return cpu_conv.conv_general_dilated(
      x,
      w,
      g.strides,
      g.pads,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=g.groups,
      path=path,
    )

  return f


def conv_step(g: conv_paths.Geometry, path: str, needs_input_grad: bool, seed: int = 0):
  """A zero-argument closure: forward and backward of the conv ``g`` by ``path``, compiled."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(g.n, g.h, g.w, g.c)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(g.kh, g.kw, g.c // g.groups, g.o)), jnp.float32)
  ct = jnp.asarray(rng.normal(size=(g.n, *g.out_hw, g.o)), jnp.float32)
  conv = _conv(g, path)

  def fwd_bwd(x, w, ct):
    if needs_input_grad:
      y, vjp = jax.vjp(conv, x, w)
      return y, *vjp(ct)
    y, vjp = jax.vjp(lambda w: conv(x, w), w)
    return y, *vjp(ct)

  compiled = jax.jit(fwd_bwd).lower(x, w, ct).compile()
  return lambda: compiled(x, w, ct)


def check_same_math(g: conv_paths.Geometry, needs_input_grad: bool, paths) -> float:
  """Largest relative difference of any path's outputs from XLA's (they compute the same math)."""
  outs = {p: conv_step(g, p, needs_input_grad)() for p in paths}
  worst = 0.0
  for p in paths:
    for a, b in zip(outs[p], outs["xla"]):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      worst = max(worst, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)))
  return worst


def geometry_row(g: conv_paths.Geometry, needs_input_grad: bool) -> dict:
  ho, wo = g.out_hw
  return {
    "geometry": {
      "n": g.n,
      "h": g.h,
      "w": g.w,
      "c": g.c,
      "kh": g.kh,
      "kw": g.kw,
      "o": g.o,
      "strides": list(g.strides),
      "pads": [list(p) for p in g.pads],
      "groups": g.groups,
    },
    "out_hw": [ho, wo],
    "kind": g.kind,
    "macs": g.macs,
    "needs_input_grad": needs_input_grad,
  }


def time_geometry(g, needs_input_grad, samples, warmup, target_s) -> dict:
  native_ok = native_kernels.available() and g.native_applicable
  paths = ["xla", "hlo"] + (["native"] if native_ok else [])
  fns, reps = {}, {}
  for p in paths:
    fns[p], reps[p] = repeated(conv_step(g, p, needs_input_grad), target_s)
  times = interleaved(fns, samples, warmup)
  for p in paths:  # per conv call
    times[p] = {k: v / reps[p] if k.endswith("_s") else v for k, v in times[p].items()}
    times[p]["reps"] = reps[p]
  best = min(paths, key=lambda p: times[p]["median_s"])
  choice = conv_paths.choose(g, lanes=native_kernels.vector_lanes() if native_ok else None)
  row = geometry_row(g, needs_input_grad)
  row.update(
    times=times,
    fastest=best,
    choice=choice,
    choice_over_xla=times[choice]["median_s"] / times["xla"]["median_s"],
    choice_over_fastest=times[choice]["median_s"] / times[best]["median_s"],
    max_rel_diff_vs_xla=check_same_math(g, needs_input_grad, paths),
  )
  return row


def _describe(geom: dict) -> str:
  g = geom
  (pt, pb), (pl, pr) = g["pads"]
  groups = f" g{g['groups']}" if g["groups"] > 1 else ""
  return (
    f"{g['n']}x{g['h']}x{g['w']}x{g['c']} k{g['kh']}x{g['kw']} ->{g['o']} "
    f"s{g['strides'][0]}x{g['strides'][1]} p{pt}{pb}{pl}{pr}{groups}"
  )


def _commands(result: dict) -> list[str]:
  cmds = result["commands"]
  if len(cmds) == 1:
    return [f"Command: `{cmds[0]}`"]
  return ["Commands (column `run`: which one measured the row; later ones re-measured rows):"] + [
    f"{i}. `{c}`" for i, c in enumerate(cmds, 1)
  ]


def shapes_markdown(result: dict) -> str:
  lines = [
    *_commands(result),
    "",
    "Per conv call, forward + backward as in training (output, kernel gradient, and input "
    "gradient where `dx`): median wall-clock microseconds [interquartile range], interleaved "
    "in one process. `choice`: `conv_paths.choose`; `fastest`: by median. "
    f"Machine: {result['machines'][-1]}.",
    "",
    "| conv (N x H x W x C, kernel, ->O, stride, pads) | kind | dx | MMACs | used by | xla | "
    "hlo | native | fastest | choice | choice/xla | choice/fastest | run |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]

  def cell(t):
    if t is None:
      return "-"
    return f"{t['median_s'] * 1e6:.0f} [{t['q1_s'] * 1e6:.0f}-{t['q3_s'] * 1e6:.0f}]"

  for row in result["rows"]:
    t = row["times"]
    lines.append(
      f"| {_describe(row['geometry'])} | {row['kind']} | {'y' if row['needs_input_grad'] else 'n'}"
      f" | {row['macs'] / 1e6:.2f} | {', '.join(row['used_by']) or 'sweep ' + row['sweep']} | "
      + " | ".join(cell(t.get(p)) for p in conv_paths.PATHS)
      + f" | {row['fastest']} | {row['choice']} | {row['choice_over_xla']:.2f} | "
      f"{row['choice_over_fastest']:.2f} | {row.get('run', 1)} |"
    )
  return "\n".join(lines) + "\n"


def _write(result: dict, out: str | None, markdown: Callable[[dict], str]) -> None:
  if not out:
    return
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
  with open(os.path.splitext(out)[0] + ".md", "w") as f:
    f.write(markdown(result))


def run_shapes(args, command: str) -> dict:
  keyed: dict[tuple, dict] = {}  # one row per (geometry, needs_input_grad), with its users
  for model in args.models:
    for batch in ZOO[model][0]:
      for g, dx in zoo_geometries(model, batch):
        keyed.setdefault((g, dx), {"used_by": []})
        users = keyed[(g, dx)]["used_by"]
        if f"{model}/b{batch}" not in users:
          users.append(f"{model}/b{batch}")
  for sweep in args.sweeps:
    for g, dx in SWEEPS[sweep]():
      keyed.setdefault((g, dx), {"used_by": []})
      keyed[(g, dx)].setdefault("sweep", sweep)
  result = _start(args, command)
  if args.changed_only:  # only the recorded rows whose choice the rule has moved since
    keyed = {}
    for row in result["rows"]:
      g, dx = _geometry(row["geometry"]), row["needs_input_grad"]
      lanes = native_kernels.vector_lanes() if g.native_applicable else None
      if conv_paths.choose(g, lanes=lanes) != row["choice"]:
        keyed[(g, dx)] = {k: row[k] for k in ("used_by", "sweep") if k in row}
  for (g, dx), extra in keyed.items():
    row = time_geometry(g, dx, args.samples, args.warmup, args.target_s)
    row.update(extra)
    _put(result, row, lambda r: (json.dumps(r["geometry"]), r["needs_input_grad"]))
    print(json.dumps({k: row[k] for k in ("geometry", "fastest", "choice", "choice_over_xla")}))
    print("   ", {p: round(t["median_s"] * 1e6, 1) for p, t in row["times"].items()}, flush=True)
    _write(result, args.out, shapes_markdown)
  return result


def _geometry(d: dict) -> conv_paths.Geometry:
  return conv_paths.Geometry(
    d["n"], d["h"], d["w"], d["c"], d["kh"], d["kw"], d["o"], tuple(d["strides"]),
    tuple(tuple(p) for p in d["pads"]), d["groups"],
  )  # fmt: skip


def _start(args, command: str) -> dict:
  """A new result, or (``--merge``) the one in ``--out`` with this command added."""
  if args.merge and args.out and os.path.exists(args.out):
    with open(args.out) as f:
      result = json.load(f)
    result["commands"].append(command)
    result["machines"].append(_machine())
    return result
  return {"commands": [command], "machines": [_machine()], "rows": []}


def _put(result: dict, row: dict, key: Callable[[dict], object]) -> None:
  """Adds ``row`` (measured by the latest command), replacing a row with the same key."""
  row["run"] = len(result["commands"])
  rows = result["rows"]
  same = [i for i, r in enumerate(rows) if key(r) == key(row)]
  if same:
    rows[same[0]] = row
  else:
    rows.append(row)


# ----------------------------------------------------------------------------- models


def model_step(model: str, batch: int, setting: str, seed: int = 0):
  """A zero-argument closure: one compiled training step of ``model`` under ``setting``."""
  m = create_model(model, num_classes=10, rngs=nnx.Rngs(seed))
  images, labels = benchmarking.random_batch(ZOO[model][1], batch, seed)
  return benchmarking.sgd_step(m, images, labels, environment(SETTINGS[setting]))


def model_paths(model: str, batch: int) -> dict[str, int]:
  """How many of ``model``'s conv calls take each path under the per-shape choice."""
  m = create_model(model, num_classes=10, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(m)
  spec = jax.ShapeDtypeStruct((batch, *ZOO[model][1]), jnp.float32)
  with environment(SETTINGS["auto"]), conv_paths.record_choices() as records:
    jax.eval_shape(lambda x: nnx.merge(graphdef, state, copy=True)(x), spec)
  counts = {p: 0 for p in conv_paths.PATHS}
  for _, p in records:
    counts[p] += 1
  return counts


def models_markdown(result: dict) -> str:
  settings = list(dict.fromkeys(s for row in result["rows"] for s in row["times"]))
  lines = [
    *_commands(result),
    "",
    "One training step (forward, backward, SGD with momentum, BatchNorm statistics): median "
    "wall-clock seconds [interquartile range], the settings interleaved in one process; the "
    "ratio of median process CPU times (all threads) as well, less moved by other load. "
    "`auto`: the per-shape choice (the default); `xla`: XLA's convolution everywhere "
    "(`S2SAM_FAST_CPU_CONV=0`); `native`: every conv on the custom path with native kernel "
    "gradients (the default before the per-shape choice). Paths: conv calls on xla/hlo/native "
    f"under `auto`. Machine: {result['machines'][-1]}.",
    "",
    "| model | batch | paths (xla/hlo/native) | "
    + " | ".join(settings)
    + " | auto/xla | auto/xla (IQR bounds) | auto/xla (CPU time) | run |",
    "|---|---|---|" + "---|" * (len(settings) + 4),
  ]
  for row in result["rows"]:
    t = row["times"]
    cells = [
      f"{t[s]['median_s']:.4f} [{t[s]['q1_s']:.4f}-{t[s]['q3_s']:.4f}]" if s in t else "-"
      for s in settings
    ]
    a, x = t["auto"], t["xla"]
    paths = "/".join(str(row["paths"][p]) for p in conv_paths.PATHS)
    lines.append(
      f"| {row['model']} | {row['batch_size']} | {paths} | "
      + " | ".join(cells)
      + f" | {a['median_s'] / x['median_s']:.3f} | "
      f"{a['q1_s'] / x['q3_s']:.2f}-{a['q3_s'] / x['q1_s']:.2f} | "
      f"{a['cpu_median_s'] / x['cpu_median_s']:.3f} | {row.get('run', 1)} |"
    )
  return "\n".join(lines) + "\n"


def run_models(args, command: str) -> dict:
  result = _start(args, command)
  for model in args.models:
    for batch in args.batch_sizes or ZOO[model][0]:
      fns = {s: model_step(model, batch, s) for s in args.settings}
      one = min(_time_once(fn) for fn in fns.values())
      reps = max(1, int(args.target_s / one))
      runs = {s: _repeat(fn, reps) for s, fn in fns.items()}
      times = interleaved(runs, args.samples, args.warmup)
      times = {
        s: {k: v / reps if k.endswith("_s") else v for k, v in t.items()} | {"reps": reps}
        for s, t in times.items()
      }
      row = {
        "model": model,
        "batch_size": batch,
        "paths": model_paths(model, batch),
        "times": times,
      }
      _put(result, row, lambda r: (r["model"], r["batch_size"]))
      print(
        json.dumps(
          {"model": model, "batch": batch, **{s: t["median_s"] for s, t in times.items()}}
        ),
        flush=True,
      )
      _write(result, args.out, models_markdown)
  return result


def _time_once(fn) -> float:
  fn()
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _repeat(fn, reps):
  def run():
    for _ in range(reps):
      fn()

  return run


# ----------------------------------------------------------------------------- end to end


def e2e_markdown(result: dict) -> str:
  lines = [
    f"Command: `{result['command']}`",
    "",
    f"The default job (`{' '.join(result['train_command'])}`), one run per setting per round, "
    "the settings alternating; images/s as `summary.json` reports it (training steps only). "
    "Median [interquartile range] over rounds. "
    f"Machine: {result['machine']}.",
    "",
    "| setting | images/s | per round |",
    "|---|---|---|",
  ]
  for s, rates in result["images_per_sec"].items():
    q1, med, q3 = statistics.quantiles(rates, n=4, method="inclusive")
    lines.append(
      f"| {s} | {med:.0f} [{q1:.0f}-{q3:.0f}] | {', '.join(f'{r:.0f}' for r in rates)} |"
    )
  return "\n".join(lines) + "\n"


def run_e2e(args, command: str) -> dict:
  train = [sys.executable, "-m", "experiments.train", "--max-steps", str(args.max_steps)]
  train += ["--no-progress", *args.train_args]
  result = {
    "command": command,
    "train_command": ["python", *train[1:]],
    "machine": _machine(),
    "images_per_sec": {s: [] for s in args.settings},
  }
  for r in range(args.rounds):
    order = args.settings[r % len(args.settings) :] + args.settings[: r % len(args.settings)]
    for s in order:
      with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, **SETTINGS[s])
        subprocess.run([*train, "--out-dir", out], env=env, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "summary.json")) as f:
          rate = json.load(f)["images_per_sec"]
      result["images_per_sec"][s].append(rate)
      print(json.dumps({"round": r, "setting": s, "images_per_sec": rate}), flush=True)
    if r:
      _write(result, args.out, e2e_markdown)
  return result


# ----------------------------------------------------------------------------- main


def _machine() -> dict:
  info = benchmarking.machine_info()
  info["native_kernels"] = native_kernels.available()
  return info


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="what", required=True)
  shapes = sub.add_parser("shapes", help="each conv shape by each path")
  shapes.add_argument("--models", nargs="*", default=list(ZOO), choices=list(ZOO))
  shapes.add_argument("--sweeps", nargs="*", default=list(SWEEPS), choices=list(SWEEPS))
  shapes.add_argument(
    "--changed-only",
    action="store_true",
    help="with --merge: re-measure only the rows of --out whose choice the rule has moved",
  )
  shapes.add_argument("--samples", type=int, default=15)
  shapes.add_argument("--warmup", type=int, default=2)
  shapes.add_argument("--target-s", type=float, default=0.02, help="wall time of one sample")
  models = sub.add_parser("models", help="zoo training steps: auto vs xla")
  models.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
  models.add_argument("--batch-sizes", nargs="+", type=int, default=None)
  models.add_argument("--settings", nargs="+", default=["auto", "xla"], choices=list(SETTINGS))
  models.add_argument("--samples", type=int, default=15)
  models.add_argument("--warmup", type=int, default=2)
  models.add_argument("--target-s", type=float, default=0.05, help="wall time of one sample")
  e2e = sub.add_parser("e2e", help="the default job end to end")
  e2e.add_argument("--settings", nargs="+", default=["auto", "xla"], choices=list(SETTINGS))
  e2e.add_argument("--rounds", type=int, default=5)
  e2e.add_argument("--max-steps", type=int, default=3000)
  e2e.add_argument("--train-args", nargs=argparse.REMAINDER, default=[])
  for p in (shapes, models, e2e):
    p.add_argument("--out", default=None)
  for p in (shapes, models):
    p.add_argument(
      "--merge", action="store_true", help="keep --out's other rows, replace re-measured ones"
    )
  args = parser.parse_args(argv)
  command = "python -m experiments.bench_conv_paths " + " ".join(
    sys.argv[1:] if argv is None else argv
  )
  if args.what != "e2e":
    runtime.maybe_tune_glibc_malloc()  # as experiments.train does
  {"shapes": run_shapes, "models": run_models, "e2e": run_e2e}[args.what](args, command)


if __name__ == "__main__":
  main()
