"""Runs a study: many training runs, each resumable, each recorded once.

``python -m experiments.study NAME`` trains every cell of study ``NAME``
(:data:`STUDIES`) one after the other with :func:`experiments.train.run`,
each in its own work dir ``runs/studies/NAME/<cell>``. A cell interrupted by
the end of a session resumes from its checkpoints on the next call (the
training command's ``--resume``: bit for bit); a finished cell appends one
row to ``experiments/results/NAME/runs.jsonl`` and is skipped afterwards.

Every run of a study comes from one commit: the first call records in
``experiments/results/NAME/study.json`` the commit, the library versions and
a hash of the training path (``s2sam_jax/`` and the ``experiments`` code a
run imports); a later call refuses to add runs when that hash differs (run
the study again under a new name, or with ``--restart``).

A row holds what the report needs (``study, dataset, model, method,
sparsity, distribution, mode, seed, epochs``), the results
(``final_test_accuracy``, ``best_test_accuracy`` (best over epochs: test-set
selection, reported only beside), ``wall_seconds``), the ``commit`` and the
exact ``command`` that re-runs the cell alone.

Example::

    python -m experiments.study table1_mnist1d --list      # the cells
    python -m experiments.study table1_mnist1d             # run / resume them
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a training run's numbers depend on (documentation, reports and the
# study registry do not count).
TRAINING_PATH = (
  "s2sam_jax",
  "experiments/train.py",
  "experiments/flags.py",
  "experiments/recipes.py",
  "experiments/steps.py",
  "experiments/run_state.py",
  "experiments/progress.py",
  "experiments/configs.py",
  "experiments/checkpoint.py",
  "experiments/metrics.py",
  "experiments/models",
  "experiments/data",
  "experiments/datasets.py",
  "experiments/runtime.py",
)


class Cell(NamedTuple):
  """One run of a study: its id and the flags of ``experiments.train``."""

  name: str
  flags: dict[str, Any]


def flags_to_argv(flags: dict[str, Any]) -> list[str]:
  """``{'sparsity': 0.9, 'bf16': True}`` -> ``['--sparsity', '0.9', '--bf16']``."""
  argv = []
  for key, value in flags.items():
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
      argv.append(flag if value else "--no-" + flag[2:])
    elif isinstance(value, (tuple, list)):
      argv += [flag, *map(str, value)]
    else:
      argv += [flag, str(value)]
  return argv


def grid(prefix: str, base: dict[str, Any], **axes: Sequence[Any]) -> list[Cell]:
  """Every combination of ``axes`` over ``base``, named
  ``prefix/key=value/...`` (e.g. ``rigl/sparsity=0.9/optimizer_mode=s2sam/seed=0``).

  Example:
    >>> [c.name for c in grid("rigl", {}, sparsity=[0.9, 0.98], seed=[0])]
    ['rigl/sparsity=0.9/seed=0', 'rigl/sparsity=0.98/seed=0']
  """
  cells = [Cell(prefix, dict(base))]
  for key, values in axes.items():
    cells = [Cell(f"{c.name}/{key}={v}", dict(c.flags, **{key: v})) for c in cells for v in values]
  return cells


STUDIES: dict[str, Callable[[], list[Cell]]] = {}


def study(name: str):
  """Registers a function ``() -> cells`` as the study ``name`` (each name once)."""

  def register(fn):
    if name in STUDIES:
      raise ValueError(f"study {name!r} is registered twice")
    STUDIES[name] = fn
    return fn

  return register


# ------------------------------------------------------------- the studies

SEEDS = (0, 1, 2, 3, 4)
MNIST1D = "table1/mnist1d/mnist1d_cnn64/"
TABLE1_METHODS = (
  "static", "magnitude", "snip", "grasp", "set", "dsr", "rigl-uniform", "rigl-erk",
  "mest-em", "mest-ems", "gmp", "lt", "lrr",
)  # fmt: skip
LEVELS = (0.9, 0.95, 0.98)
# Short runs: a few checkpoints each, the newest kept.
_RUN = dict(checkpoint_every=60, keep_checkpoints=1)
# LT/LRR train every round; a round is 100 of the 300 epochs of the others.
_ROUND_EPOCHS = dict(epochs=100)


def _seed_major(cells: list[Cell]) -> list[Cell]:
  """Every cell of seed 0 first, then seed 1, ...: partial results stay paired."""
  return sorted(cells, key=lambda c: c.flags.get("seed", 0))


def _cells(
  key: str, levels=LEVELS, modes=("original", "s2sam"), seeds=SEEDS, name=None, **extra
) -> list[Cell]:
  """MNIST-1D cells of method ``key`` (named ``name or key``/seed=/sparsity=/mode=)."""
  base = dict(config=MNIST1D + key, **_RUN, **extra)
  name = name or key
  if key in ("lt", "lrr"):
    base.update(_ROUND_EPOCHS)
  return _method_grid(name, key, base, levels, modes, seeds)


def _method_grid(name, key, base, levels, modes, seeds) -> list[Cell]:
  """Method ``key``'s cells: seeds x sparsity levels x modes (dense: no sparsity axis)."""
  if key == "dense":
    return grid(name, base, seed=seeds, optimizer_mode=modes)
  return grid(name, base, seed=seeds, sparsity=levels, optimizer_mode=modes)


@study("rho_mnist1d")
def rho_mnist1d() -> list[Cell]:
  """S2-SAM's rho on MNIST-1D, chosen on a validation split (20% of the
  training set, the same examples for every seed; the test set unused):
  RigL ERK at 90% and 98%, two seeds, and the original arm beside."""
  val = dict(validation_fraction=0.2)
  tuned = [
    c
    for rho in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
    for c in _cells(
      "rigl-erk", (0.9, 0.98), ("s2sam",), (0, 1), name=f"rigl-erk/rho={rho}", rho=rho, **val
    )
  ]
  return _seed_major(
    tuned + _cells("rigl-erk", levels=(0.9, 0.98), modes=("original",), seeds=(0, 1), **val)
  )


@study("table1_mnist1d")
def table1_mnist1d() -> list[Cell]:
  """Table 1 on MNIST-1D: every sparse method at 90/95/98%, original vs
  S2-SAM, and dense, five seeds; two-step SAM for RigL ERK, SNIP and MEST EM."""
  cells = [c for key in TABLE1_METHODS for c in _cells(key)] + _cells("dense")
  cells += [c for key in ("rigl-erk", "snip", "mest-em") for c in _cells(key, modes=("sam",))]
  return _seed_major(cells)


@study("sweep_mnist1d")
def sweep_mnist1d() -> list[Cell]:
  """The gain against sparsity (a reviewer's question): MEST EM and RigL ERK
  at 20/40/60/80%, original vs S2-SAM, five seeds. Dense (0%) and 90/95/98%
  are table1_mnist1d's cells (same flags); the report draws them together."""
  levels = (0.2, 0.4, 0.6, 0.8)
  return _seed_major([c for key in ("mest-em", "rigl-erk") for c in _cells(key, levels)])


@study("dense_mnist1d")
def dense_mnist1d() -> list[Cell]:
  """Dense models (Table 6 with the reviewers' SAM column): the 64-channel
  and the 25-channel (default job's) MNIST-1D CNNs, original / SAM / S2-SAM."""
  modes = ("original", "sam", "s2sam")
  cells = _cells("dense", modes=modes, name="dense/mnist1d_cnn64")
  cells += _cells("dense", modes=modes, name="dense/mnist1d_cnn", model="mnist1d_cnn")
  return _seed_major(cells)


@study("lt_mnist1d")
def lt_mnist1d() -> list[Cell]:
  """Lottery tickets (the rebuttal's tables): LT pruning 20/30/40% of the
  remaining weights per round and LRR (20%), to 90% sparsity, original vs
  S2-SAM, five seeds."""
  cells = [
    c for f in (0.2, 0.3, 0.4) for c in _cells("lt", (0.9,), name=f"lt/prune={f}", prune_fraction=f)
  ]
  return _seed_major(cells + _cells("lrr", (0.9,), name="lrr/prune=0.2"))


# The authors' S2-SAM (configs._AUTHORS_MODES): their formula, rho and SAM path.
# Their per-arm weight decay and seeds are left out so the arms still pair.
AUTHORS_S2SAM = dict(
  rho=0.05, adaptive=True, adaptive_formula="authors", perturb_pruned=True, mask_gradients=False
)


@study("authors_mnist1d")
def authors_mnist1d() -> list[Cell]:
  """The S2-SAM authors' protocol arm for MEST EM on MNIST-1D: their adaptive
  formula, rho = 0.05, every weight perturbed and unmasked gradients into the
  momentum, against the original arm at 90/95/98%, five seeds (the one,
  labelled, arm whose optimizer differs from the paper's equation)."""
  name = "mest-em/authors"
  cells = _cells("mest-em", modes=("original",), name=name)
  cells += _cells("mest-em", modes=("s2sam",), name=name, **AUTHORS_S2SAM)
  return _seed_major(cells)


# CIFAR-10: ResNet-20 (16/32/64) on the table1 recipes, a reduced budget of
# 10 epochs (the cosine schedule over those 10; MEST's epoch knobs scaled as
# 5, 100, 130 of 160). The data folder comes from $CIFAR10_DIR (an image
# folder or a tfds data dir), so recorded commands hold no local path.
CIFAR_EPOCHS = 10
_CIFAR = dict(
  model="resnet20_classic",
  dataset="cifar10",
  data_dir="$CIFAR10_DIR",
  epochs=CIFAR_EPOCHS,
  eval_every=5,
  checkpoint_every=1,
  keep_checkpoints=1,
)
_CIFAR_MEST = dict(update_every_epochs=5 * CIFAR_EPOCHS / 160, mest_decay_epochs=(6, 8))


def _cifar_cells(key, levels, modes, seeds=(0, 1)) -> list[Cell]:
  base = dict(config="table1/cifar10/resnet32/" + key, **_CIFAR)
  if key.startswith("mest-"):
    base.update(_CIFAR_MEST)
  return _method_grid(key, key, base, levels, modes, seeds)


@study("rho_cifar10")
def rho_cifar10() -> list[Cell]:
  """S2-SAM's rho on CIFAR-10, chosen on a validation split (10% of the
  training set held out; the test set unused): RigL ERK at 90%, one seed, at
  the study budget (10 epochs)."""
  cells = [
    c
    for rho in (0.02, 0.05, 0.1, 0.2)
    for c in grid(
      f"rigl-erk/rho={rho}",
      dict(_CIFAR, config="table1/cifar10/resnet32/rigl-erk", rho=rho, validation_fraction=0.1),
      seed=(0,),
      sparsity=(0.9,),
      optimizer_mode=("s2sam",),
    )
  ]
  return cells


@study("table1_cifar10")
def table1_cifar10() -> list[Cell]:
  """Table 1 on real CIFAR-10 at a reduced budget: RigL ERK and MEST EM at
  90% and 98%, original vs S2-SAM, two seeds; dense original vs S2-SAM (Table
  6's CIFAR column); two-step SAM for RigL ERK at 98%."""
  pairs = ("original", "s2sam")
  cells = _cifar_cells("rigl-erk", (0.9, 0.98), pairs) + _cifar_cells("mest-em", (0.9, 0.98), pairs)
  cells += _cifar_cells("dense", (), pairs + ("sam",)) + _cifar_cells("rigl-erk", (0.98,), ("sam",))
  return _seed_major(cells)


def _git(*args: str) -> str:
  return subprocess.run(
    ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
  ).stdout.strip()


def training_path_hash() -> str:
  """Hash of the training path's files as committed and as on disk now."""
  h = hashlib.sha256()
  for root in TRAINING_PATH:
    path = os.path.join(REPO, root)
    files = (
      [path]
      if os.path.isfile(path)
      else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith((".py", ".cc"))
      )
    )
    for f in files:
      h.update(os.path.relpath(f, REPO).encode())
      with open(f, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()[:16]


def provenance() -> dict[str, Any]:
  import flax  # pylint: disable=import-outside-toplevel,multiple-imports
  import jax
  import jaxlib
  import numpy
  import optax

  dirty = bool(_git("status", "--porcelain", "--", *TRAINING_PATH))
  return dict(
    commit=_git("rev-parse", "HEAD"),
    training_path_hash=training_path_hash(),
    training_path_dirty=dirty,
    python=platform.python_version(),
    jax=jax.__version__,
    jaxlib=jaxlib.__version__,
    optax=optax.__version__,
    flax=flax.__version__,
    numpy=numpy.__version__,
    machine=f"{platform.machine()} x{os.cpu_count()}",
  )


def row(study_name: str, cell: Cell, summary: dict[str, Any], commit: str) -> dict[str, Any]:
  cfg = summary["config"]
  command = "python -m experiments.train " + " ".join(
    shlex.quote(a) for a in flags_to_argv(cell.flags)
  )
  # the cell's name without its seed / sparsity / mode axes, e.g. "lt/prune=0.3"
  variant = "/".join(
    part
    for part in cell.name.split("/")
    if not part.startswith(("seed=", "sparsity=", "optimizer_mode="))
  )
  return dict(
    study=study_name,
    cell=cell.name,
    variant=variant,
    dataset=cfg["dataset"],
    model=cfg["model"],
    method=cfg["method"],
    sparsity=cfg["sparsity"],
    distribution=cfg["distribution"],
    mode=cfg["optimizer_mode"],
    seed=cfg["seed"],
    epochs=cfg["epochs"],
    rho=cfg["rho"],
    command=command,
    commit=commit,
    finished=summary["finished"],
    final_test_accuracy=summary["final_test_accuracy"],
    best_test_accuracy=summary["best_test_accuracy"],
    measured_sparsity=summary["sparsity"]["sparsity"],
    wall_seconds=summary["wall_seconds"],
  )


def read_rows(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def append_row(path: str, record: dict[str, Any]) -> None:
  """Appends one JSON line, flushed and fsynced (a finished run is never lost)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def run_study(
  name: str,
  cells: Iterable[Cell],
  *,
  results_dir: str = RESULTS,
  work_dir: str = os.path.join("runs", "studies"),
  restart: bool = False,
  max_runs: int = 0,
  require_clean: bool = True,
) -> int:
  """Runs (or resumes) every cell not yet recorded; returns how many finished."""
  from experiments import train  # pylint: disable=import-outside-toplevel

  out = os.path.join(results_dir, name)
  runs_path, meta_path = os.path.join(out, "runs.jsonl"), os.path.join(out, "study.json")
  now = provenance()
  if os.path.exists(meta_path) and not restart:
    with open(meta_path) as f:
      recorded = json.load(f)
    if recorded["training_path_hash"] != now["training_path_hash"]:
      raise SystemExit(
        f"study {name}: the training path changed since its runs began at commit "
        f"{recorded['commit'][:10]}; its runs must come from one commit. Run it "
        "under a new name, or pass --restart to start it over."
      )
  else:
    if now["training_path_dirty"] and require_clean:
      raise SystemExit(
        f"study {name}: commit the training path first (a study's "
        "runs must come from a recorded commit)."
      )
    os.makedirs(out, exist_ok=True)
    if restart and os.path.exists(runs_path):
      os.replace(runs_path, runs_path + f".before-{int(time.time())}")
    with open(meta_path, "w") as f:
      json.dump(
        dict(now, study=name, started=time.strftime("%Y-%m-%d %H:%M:%S")),
        f,
        indent=2,
        sort_keys=True,
      )
    recorded = now
  cells = list(cells)
  names = [c.name for c in cells]
  if len(set(names)) != len(names):
    raise ValueError(f"study {name}: cell names repeat ({len(names) - len(set(names))} times)")
  done = {r["cell"] for r in read_rows(runs_path)}
  finished = 0
  for cell in cells:
    if cell.name in done:
      continue
    if max_runs and finished >= max_runs:
      break
    cell_dir = os.path.join(work_dir, name, cell.name)
    argv = [os.path.expandvars(a) for a in flags_to_argv(cell.flags)]
    unset = [a for a in argv if a.startswith("$")]
    if unset:
      raise SystemExit(f"study {name}: set {', '.join(unset)} (e.g. the CIFAR-10 data folder)")
    argv += ["--out-dir", cell_dir, "--no-progress"]
    cfg, _ = train.config_from_args(argv)
    summary = train.run(cfg)  # the work dir: resumes an interrupted cell
    if summary["finished"]:
      append_row(runs_path, row(name, cell, summary, recorded["commit"]))
      finished += 1
      print(
        f"[{name}] {cell.name}: final {summary['final_test_accuracy']:.4f} "
        f"({summary['wall_seconds']:.0f} s)",
        flush=True,
      )
  return finished


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m experiments.study", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("study", choices=sorted(STUDIES), help="the study to run")
  parser.add_argument("--list", action="store_true", help="print its cells and exit")
  parser.add_argument(
    "--max-runs", type=int, default=0, help="stop after this many finished runs (0: all)"
  )
  parser.add_argument(
    "--restart", action="store_true", help="start the study over at the current commit"
  )
  parser.add_argument(
    "--shard",
    default="0/1",
    help="K/N: run every N-th cell starting at the K-th (N processes side by side)",
  )
  args = parser.parse_args(argv)
  k, n = (int(x) for x in args.shard.split("/"))
  if not 0 <= k < n:
    parser.error(f"--shard K/N needs 0 <= K < N; got {args.shard}")
  cells = STUDIES[args.study]()[k::n]
  if args.list:
    for c in cells:
      print(c.name, " ".join(flags_to_argv(c.flags)))
    return 0
  from experiments import runtime  # pylint: disable=import-outside-toplevel

  runtime.maybe_tune_glibc_malloc()
  run_study(args.study, cells, restart=args.restart, max_runs=args.max_runs)
  return 0


if __name__ == "__main__":
  sys.exit(main())
