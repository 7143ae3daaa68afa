"""Tables and figures from the studies' ``runs.jsonl`` files.

``python -m experiments.report`` reads every
``experiments/results/<study>/runs.jsonl`` (one row per finished run, written
by :mod:`experiments.study`) and writes, next to it:

* ``table.md`` / ``table.csv``: the paper's Table 1 layout, one row per
  method (and distribution), one column per sparsity, each cell
  ``original → S2-SAM (gain)`` of the mean final test accuracy over seeds
  (``± std``); SAM's column where the study has it.
* ``paired.md`` / ``paired.csv``: per cell, the paired difference
  (S2-SAM − original, and SAM − original) over the seeds both arms ran:
  mean, 95 % Student-t interval, wins out of pairs. Seeds pair the arms: the
  same seed gives the same init, data order and initial masks.
* ``gain_vs_sparsity.png`` when a method was run at several sparsities.

The headline is the **final** test accuracy; the best accuracy over epochs
selects on the test set and appears only in ``paired.csv``, labelled.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import math
import os
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as scipy_stats

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
METHOD_LABELS = {
  "dense": "Dense",
  "static": "Static random",
  "magnitude": "Magnitude at init",
  "snip": "SNIP",
  "grasp": "GraSP",
  "set": "SET",
  "dsr": "DSR",
  "rigl": "RigL",
  "mest-em": "MEST (EM)",
  "mest-ems": "MEST (EM&S)",
  "gmp": "GMP",
  "lt": "LT",
  "lrr": "LRR",
}
# dataset, model, method, distribution, sparsity, variant (e.g. "lt/prune=0.3")
CellKey = tuple[str, str, str, str, float, str]


class Paired(NamedTuple):
  """Paired differences ``arm − original`` of one cell over seeds."""

  n: int
  mean: float
  low: float  # 95% t-interval
  high: float
  wins: int  # seeds where the arm beat original


def read_runs(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def row_label(
  method: str, distribution: str, methods_with_two: Iterable[str] = ("rigl",), variant: str = ""
) -> str:
  label = METHOD_LABELS.get(method, method)
  if method in methods_with_two:
    label += f" ({distribution.upper() if distribution != 'uniform' else 'uniform'})"
  extra = [p for p in variant.split("/")[1:] if "=" in p]  # e.g. lt/prune=0.3 -> prune=0.3
  return label + (f" [{', '.join(extra)}]" if extra else "")


def cell_key(r: dict[str, Any]) -> CellKey:
  return (
    r["dataset"], r["model"], r["method"], r["distribution"], float(r["sparsity"]), _variant(r)
  )  # fmt: skip


def _variant(r: dict[str, Any]) -> str:
  """The row's variant beyond method and sparsity (prune fraction, rho, ...)."""
  return r.get("variant", r["method"])


def by_cell(rows: Iterable[dict[str, Any]], metric: str = "final_test_accuracy"):
  """``{cell: {mode: {seed: value}}}``."""
  out: dict[CellKey, dict[str, dict[int, float]]] = collections.defaultdict(
    lambda: collections.defaultdict(dict)
  )
  for r in rows:
    out[cell_key(r)][r["mode"]][int(r["seed"])] = float(r[metric])
  return out


def paired(base: dict[int, float], arm: dict[int, float]) -> Paired | None:
  """Paired statistics over the seeds both arms ran (None if fewer than 2)."""
  seeds = sorted(set(base) & set(arm))
  if len(seeds) < 2:
    return None
  d = np.asarray([arm[s] - base[s] for s in seeds])
  mean, sem = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
  half = float(scipy_stats.t.ppf(0.975, len(d) - 1)) * sem
  return Paired(len(d), mean, mean - half, mean + half, int(np.sum(d > 0)))


def _mean_std(values: dict[int, float]) -> str:
  v = np.asarray(list(values.values())) * 100
  if not len(v):
    return "–"
  return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def table1(rows: list[dict[str, Any]]) -> tuple[str, list[list[str]]]:
  """Markdown and CSV rows of Table 1 (mean final accuracy, %, over seeds)."""
  cells = by_cell(rows)
  groups = sorted({k[:2] for k in cells})
  md, table = (
    [],
    [["dataset", "model", "method", "sparsity", "original", "s2sam", "gain", "sam", "seeds"]],
  )
  for dataset, model in groups:
    keys = [k for k in cells if k[:2] == (dataset, model)]
    levels = sorted({k[4] for k in keys})
    methods = sorted(
      {(k[2], k[3], k[5]) for k in keys},
      # the table's method order, then distribution and variant (the input order of a set
      # is not reproducible across processes)
      key=lambda m: (
        list(METHOD_LABELS).index(m[0]) if m[0] in METHOD_LABELS else 99,
        str(m[1]),
        str(m[2]),
      ),
    )
    md += [
      f"### {dataset}, {model}",
      "",
      "| method | " + " | ".join(f"{s:g}" for s in levels) + " |",
      "|---|" + "---|" * len(levels),
    ]
    for method, dist, variant in methods:
      label = row_label(method, dist, variant=variant)
      entries = []
      for s in levels:
        arms = cells.get((dataset, model, method, dist, s, variant))
        if not arms:
          entries.append("")
          continue
        orig, s2 = arms.get("original", {}), arms.get("s2sam", {})
        gain = ""
        if orig and s2:
          gain = f" ({100 * (np.mean(list(s2.values())) - np.mean(list(orig.values()))):+.2f})"
        text = f"{_mean_std(orig)} → {_mean_std(s2)}{gain}"
        if arms.get("sam"):
          text += f"; SAM {_mean_std(arms['sam'])}"
        entries.append(text)
        table.append(
          [
            dataset,
            model,
            label,
            f"{s:g}",
            _mean_std(orig),
            _mean_std(s2),
            gain.strip(" ()"),
            _mean_std(arms.get("sam", {})),
            str(len(set(orig) | set(s2))),
          ]
        )
      md.append(f"| {label} | " + " | ".join(entries) + " |")
    md.append("")
  return "\n".join(md), table


def paired_table(rows: list[dict[str, Any]]) -> tuple[str, list[list[str]]]:
  """Paired differences per cell, for S2-SAM and SAM against original."""
  final, best = by_cell(rows), by_cell(rows, "best_test_accuracy")
  header = [
    "dataset",
    "model",
    "method",
    "sparsity",
    "arm",
    "pairs",
    "mean_diff",
    "ci95_low",
    "ci95_high",
    "wins",
    "best_epoch_mean_diff (test-set selection)",
  ]
  md = [
    "| dataset | model | method | sparsity | arm − original | pairs | mean (pp) | 95% CI (pp) | wins |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  table = [header]
  for key in sorted(final):
    arms = final[key]
    for arm in ("s2sam", "sam"):
      if arm not in arms or "original" not in arms:
        continue
      p = paired(arms["original"], arms[arm])
      if p is None:
        continue
      pb = paired(best[key]["original"], best[key][arm])
      label = row_label(key[2], key[3], variant=key[5])
      md.append(
        f"| {key[0]} | {key[1]} | {label} | {key[4]:g} | {arm} | {p.n} | "
        f"{100 * p.mean:+.2f} | [{100 * p.low:+.2f}, {100 * p.high:+.2f}] | "
        f"{p.wins}/{p.n} |"
      )
      table.append(
        [
          key[0],
          key[1],
          label,
          f"{key[4]:g}",
          arm,
          str(p.n),
          f"{p.mean:.6f}",
          f"{p.low:.6f}",
          f"{p.high:.6f}",
          str(p.wins),
          f"{pb.mean:.6f}" if pb else "",
        ]
      )
  return "\n".join(md), table


def plot_gain_vs_sparsity(rows: list[dict[str, Any]], path: str) -> bool:
  """S2-SAM's paired gain (mean and 95% CI) against sparsity, a line per
  method; returns False when no method has two or more sparsities."""
  final = by_cell(rows)
  series = collections.defaultdict(list)
  for key, arms in final.items():
    if "original" in arms and "s2sam" in arms:
      p = paired(arms["original"], arms["s2sam"])
      if p is not None:
        series[key[:4] + key[5:]].append((key[4], p))
  series = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
  if not series:
    return False
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(6, 4))
  for (dataset, model, method, dist, variant), points in sorted(series.items()):
    s = np.asarray([100 * x for x, _ in points])
    mean = np.asarray([100 * p.mean for _, p in points])
    low = np.asarray([100 * p.low for _, p in points])
    high = np.asarray([100 * p.high for _, p in points])
    label = f"{row_label(method, dist, variant=variant)} ({model})"
    (line,) = ax.plot(s, mean, marker="o", label=label)
    ax.fill_between(s, low, high, color=line.get_color(), alpha=0.2)
  ax.axhline(0.0, color="black", lw=0.8)
  ax.set_xlabel("sparsity (%)")
  ax.set_ylabel("S2-SAM − original, final test acc. (pp)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def rho_table(rows: list[dict[str, Any]]) -> str | None:
  """S2-SAM's validation accuracy per rho (rows whose variant names a
  ``rho=``) beside the original arm, and the rho with the best mean; None
  when the study tuned no rho."""
  tuned = [r for r in rows if "rho=" in _variant(r)]
  if not tuned:
    return None
  levels = sorted({float(r["sparsity"]) for r in tuned})
  by = collections.defaultdict(dict)
  for r in rows:
    by[(float(r["rho"]) if "rho=" in _variant(r) else None, float(r["sparsity"]))][r["seed"]] = (
      float(r["final_test_accuracy"])
    )
  rhos = sorted({float(r["rho"]) for r in tuned})
  md = [
    "Validation accuracy (%, mean ± std over seeds; the held-out part of the training set)",
    "",
    "| rho | " + " | ".join(f"{s:g}" for s in levels) + " | mean |",
    "|---|" + "---|" * (len(levels) + 1),
  ]
  means = {}
  untuned = [None] if any(by.get((None, s)) for s in levels) else []  # the original arm
  for rho in untuned + rhos:
    cells = [by.get((rho, s), {}) for s in levels]
    means[rho] = float(np.mean([np.mean(list(c.values())) for c in cells if c]))
    label = "original" if rho is None else f"{rho:g}"
    md.append(
      f"| {label} | " + " | ".join(_mean_std(c) for c in cells) + f" | {100 * means[rho]:.2f} |"
    )
  best = max(rhos, key=lambda r: means[r])
  md += ["", f"Best mean validation accuracy: rho = {best:g}."]
  return "\n".join(md)


def sweep_rows(sweep: list[dict[str, Any]], table1: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The sweep's methods at every sparsity: the sweep's own rows, table1's
  rows of those methods, and table1's dense rows as each method's 0%."""
  methods = {(r["method"], r["distribution"], _variant(r)) for r in sweep}
  models = {r["model"] for r in sweep}
  out = list(sweep)
  for r in table1:
    if r["model"] not in models:
      continue
    if (r["method"], r["distribution"], _variant(r)) in methods:
      out.append(r)
    elif r["method"] == "dense":
      for method, dist, variant in methods:
        out.append(dict(r, method=method, distribution=dist, variant=variant, sparsity=0.0))
  return out


def _write_csv(path: str, table: list[list[str]]) -> None:
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(table)


def report_study(study_dir: str) -> list[str]:
  """Writes the tables and figures of one study; returns the files written."""
  rows = read_runs(os.path.join(study_dir, "runs.jsonl"))
  written = []
  md, table = table1(rows)
  pmd, ptable = paired_table(rows)
  for name, text in (("table.md", md), ("paired.md", pmd)):
    with open(os.path.join(study_dir, name), "w") as f:
      f.write(text + "\n")
    written.append(name)
  _write_csv(os.path.join(study_dir, "table.csv"), table)
  _write_csv(os.path.join(study_dir, "paired.csv"), ptable)
  written += ["table.csv", "paired.csv"]
  if plot_gain_vs_sparsity(rows, os.path.join(study_dir, "gain_vs_sparsity.png")):
    written.append("gain_vs_sparsity.png")
  rho = rho_table(rows)
  if rho is not None:
    with open(os.path.join(study_dir, "rho.md"), "w") as f:
      f.write(rho + "\n")
    written.append("rho.md")
  return written


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m experiments.report", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument(
    "--results",
    default=RESULTS,
    help="folder holding <study>/runs.jsonl (default: experiments/results)",
  )
  args = parser.parse_args(argv)
  studies = sorted(
    d
    for d in os.listdir(args.results)
    if os.path.isfile(os.path.join(args.results, d, "runs.jsonl"))
  )
  for d in studies:
    files = report_study(os.path.join(args.results, d))
    print(f"{d}: {', '.join(files)}")
  for sweep, table in (("sweep_mnist1d", "table1_mnist1d"),):
    if sweep in studies and table in studies:
      read = lambda d: read_runs(os.path.join(args.results, d, "runs.jsonl"))
      path = os.path.join(args.results, sweep, "gain_vs_sparsity.png")
      if plot_gain_vs_sparsity(sweep_rows(read(sweep), read(table)), path):
        print(f"{sweep}: gain_vs_sparsity.png (with {table}'s 0/90/95/98%)")
  if not studies:
    print(f"no <study>/runs.jsonl under {args.results}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
