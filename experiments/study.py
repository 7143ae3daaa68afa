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
  def register(fn):
    STUDIES[name] = fn
    return fn

  return register


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
  return dict(
    study=study_name,
    cell=cell.name,
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
  done = {r["cell"] for r in read_rows(runs_path)}
  finished = 0
  for cell in cells:
    if cell.name in done:
      continue
    if max_runs and finished >= max_runs:
      break
    cell_dir = os.path.join(work_dir, name, cell.name)
    argv = flags_to_argv(dict(cell.flags, out_dir=cell_dir, progress=False))
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
  args = parser.parse_args(argv)
  cells = STUDIES[args.study]()
  if args.list:
    for c in cells:
      print(c.name, " ".join(flags_to_argv(c.flags)))
    return 0
  from experiments.models import cpu_conv  # pylint: disable=import-outside-toplevel

  cpu_conv.maybe_tune_glibc_malloc()
  run_study(args.study, cells, restart=args.restart, max_runs=args.max_runs)
  return 0


if __name__ == "__main__":
  sys.exit(main())
