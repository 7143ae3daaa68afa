"""Pictures of runs: ``python -m experiments.plot RUN_DIR [RUN_DIR ...]``.

Reads each run's ``metrics.jsonl`` (one row per epoch, written by
``python -m experiments.train``) and draws, with every run overlaid:

* ``curves.png``: train and test loss, train and test accuracy against the
  epoch (LT/LRR rounds one after the other);
* ``density.png``: each masked layer's density (active fraction) at every
  evaluation, one panel per run (sparse runs only).

Comparing two arms needs no TensorBoard::

    python -m experiments.plot runs/a runs/b --out-dir plots/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def read_run(run_dir: str) -> tuple[str, list[dict[str, Any]]]:
  """``(label, metrics rows)`` of a run dir (label: ``method sparsity mode seed``)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{run_dir} holds no metrics.jsonl (not a run dir of experiments.train)"
    )
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  label = os.path.basename(os.path.normpath(run_dir))
  config = os.path.join(run_dir, "config.json")
  if os.path.exists(config):
    with open(config) as f:
      c = json.load(f)
    sparsity = "" if c["method"] == "dense" else f" {c['sparsity']:.0%}"
    label = f"{c['method']}{sparsity} {c['optimizer_mode']} seed {c['seed']}"
  return label, rows


def _epochs(rows: list[dict[str, Any]]) -> list[float]:
  """Epoch axis over rounds: round r's epoch e at ``r * epochs_per_round + e``."""
  per_round = max((r["epoch"] for r in rows), default=1)
  return [r.get("round", 0) * per_round + r["epoch"] for r in rows]


def plot_curves(runs, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [("train_loss", "train loss"), ("test_loss", "test loss")]
  panels += [("train_accuracy", "train accuracy"), ("test_accuracy", "test accuracy")]
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
  for ax, (key, title) in zip(axes.flat, panels):
    for label, rows in runs:
      points = [(x, r[key]) for x, r in zip(_epochs(rows), rows) if r.get(key) is not None]
      if points:
        ax.plot(*zip(*points), label=label, marker="." if "test" in key else None)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if "loss" in key:
      ax.set_yscale("log")
  for ax in axes[1]:
    ax.set_xlabel("epoch")
  axes[0, 0].legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_density(runs, path: str) -> bool:
  """One panel per sparse run; returns False when no run has masks."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  sparse_runs = [(label, rows) for label, rows in runs if any("density" in r for r in rows)]
  if not sparse_runs:
    return False
  fig, axes = plt.subplots(
    len(sparse_runs), 1, figsize=(9, 3.2 * len(sparse_runs)), squeeze=False, sharex=True
  )
  for ax, (label, rows) in zip(axes[:, 0], sparse_runs):
    points = [(x, r["density"]) for x, r in zip(_epochs(rows), rows) if "density" in r]
    for layer in points[0][1]:
      ax.plot([x for x, _ in points], [d[layer] for _, d in points], marker=".", label=layer)
    ax.set_title(label)
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
  axes[-1, 0].set_xlabel("epoch")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m experiments.plot", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("run_dirs", nargs="+", help="out dirs of experiments.train runs")
  parser.add_argument("--out-dir", default=".", help="where the PNGs go (default: here)")
  args = parser.parse_args(argv)
  try:
    runs = [read_run(d) for d in args.run_dirs]
  except FileNotFoundError as e:
    print(f"python -m experiments.plot: error: {e}", file=sys.stderr)
    return 2
  os.makedirs(args.out_dir, exist_ok=True)
  written = [os.path.join(args.out_dir, "curves.png")]
  plot_curves(runs, written[0])
  if plot_density(runs, os.path.join(args.out_dir, "density.png")):
    written.append(os.path.join(args.out_dir, "density.png"))
  print("\n".join(written))
  return 0


if __name__ == "__main__":
  sys.exit(main())
