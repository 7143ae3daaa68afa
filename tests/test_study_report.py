"""The study runner and the report.

Independent references: a synthetic runs file whose paired statistics are
computed here by hand (mean, sample std, t_{0.975, 4} = 2.7764); a tiny
study trained end to end, resumed after an interruption, and recorded once.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from experiments import report, study, train


def _synthetic_rows():
  rows = []
  gains = [0.010, 0.020, -0.005, 0.015, 0.010]  # s2sam - original, per seed
  for level in (0.9, 0.98):
    for seed, g in enumerate(gains):
      base = 0.80 - (level - 0.9) + 0.01 * seed
      for mode, acc in (("original", base), ("s2sam", base + g), ("sam", base + 2 * g)):
        rows.append(
          dict(
            study="t",
            dataset="mnist1d",
            model="m",
            method="rigl",
            distribution="erk",
            sparsity=level,
            mode=mode,
            seed=seed,
            epochs=1,
            final_test_accuracy=acc,
            best_test_accuracy=acc + 0.01,
            wall_seconds=1.0,
          )
        )
  return rows, gains


def test_paired_statistics_by_hand():
  rows, gains = _synthetic_rows()
  cells = report.by_cell(rows)
  key = ("mnist1d", "m", "rigl", "erk", 0.9, "rigl")  # a row without "variant": its method
  p = report.paired(cells[key]["original"], cells[key]["s2sam"])
  mean = sum(gains) / 5
  sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / 4)
  half = 2.7764451 * sd / math.sqrt(5)
  assert p.n == 5 and p.wins == 4
  np.testing.assert_allclose([p.mean, p.low, p.high], [mean, mean - half, mean + half], rtol=1e-6)


def test_report_writes_the_tables_and_figure(tmp_path):
  rows, gains = _synthetic_rows()
  os.makedirs(tmp_path / "t")
  with open(tmp_path / "t" / "runs.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  assert report.main(["--results", str(tmp_path)]) == 0
  md = (tmp_path / "t" / "table.md").read_text()
  assert "| RigL (ERK) |" in md
  assert "(+1.00)" in md  # mean gain 0.010 in points
  paired = (tmp_path / "t" / "paired.md").read_text()
  assert "| 4/5 |" in paired and "sam" in paired
  assert (tmp_path / "t" / "gain_vs_sparsity.png").stat().st_size > 1000


def test_variants_of_one_cell_stay_apart(tmp_path):
  # LT at one sparsity with two prune fractions: two table rows, never mixed
  rows = [
    dict(dataset="d", model="m", method="lt", distribution="erk", sparsity=0.9, mode=mode,
         seed=seed, final_test_accuracy=acc + 0.01 * (mode == "s2sam"),
         best_test_accuracy=acc, variant=f"lt/prune={f}")
    for f, acc in ((0.2, 0.5), (0.4, 0.7)) for seed in (0, 1) for mode in ("original", "s2sam")
  ]  # fmt: skip
  md, _ = report.table1(rows)
  assert "| LT [prune=0.2] | 50.00 ± 0.00 → 51.00 ± 0.00 (+1.00) |" in md
  assert "| LT [prune=0.4] | 70.00 ± 0.00 → 71.00 ± 0.00 (+1.00) |" in md


def test_a_study_runs_resumes_and_records_each_cell_once(tmp_path, monkeypatch):
  flags = dict(
    model="mnist1d_mlp",
    dataset="mnist1d",
    train_subset=256,
    test_subset=64,
    batch_size=32,
    eval_batch_size=64,
    epochs=2,
    lr=0.05,
    sparsity=0.5,
    distribution="uniform",
    method="static",
  )
  cells = study.grid("static", flags, optimizer_mode=["original", "s2sam"], seed=[0])
  assert [c.name for c in cells] == [
    "static/optimizer_mode=original/seed=0",
    "static/optimizer_mode=s2sam/seed=0",
  ]
  kw = dict(
    results_dir=str(tmp_path / "results"), work_dir=str(tmp_path / "runs"), require_clean=False
  )
  # The first cell is cut short (a session ending), then resumed.
  cut = study.Cell(cells[0].name, dict(cells[0].flags, max_steps=3))
  assert study.run_study("tiny", [cut], **kw) == 0
  assert study.run_study("tiny", cells, **kw) == 2
  assert study.run_study("tiny", cells, **kw) == 0  # nothing left to do
  rows = study.read_rows(str(tmp_path / "results" / "tiny" / "runs.jsonl"))
  assert [r["mode"] for r in rows] == ["original", "s2sam"]
  for r in rows:
    assert r["commit"] and r["command"].startswith("python -m experiments.train ")
    assert set(r) >= {
      "study",
      "dataset",
      "model",
      "method",
      "sparsity",
      "distribution",
      "mode",
      "seed",
      "epochs",
      "final_test_accuracy",
      "best_test_accuracy",
      "wall_seconds",
    }
  # The resumed cell equals a run of its command alone, bit for bit.
  alone = train.run(
    train.config_from_args(
      study.flags_to_argv(cells[0].flags) + ["--out-dir", str(tmp_path / "alone"), "--no-progress"]
    )[0]
  )
  assert alone["final_test_accuracy"] == rows[0]["final_test_accuracy"]
  # A changed training path refuses to add runs to the study.
  monkeypatch.setattr(study, "training_path_hash", lambda: "changed")
  with pytest.raises(SystemExit, match="one commit"):
    study.run_study("tiny", cells, **kw)


def _r(method, sparsity, mode, seed, acc, variant=None, **extra):
  return dict(dataset="d", model="m", method=method, distribution="erk", sparsity=sparsity,
              mode=mode, seed=seed, final_test_accuracy=acc, best_test_accuracy=acc,
              variant=variant or method, rho=extra.pop("rho", 0.05), **extra)  # fmt: skip


def test_rho_table_picks_the_best_mean_validation_accuracy():
  rows = [_r("rigl", 0.9, "original", s, 0.60) for s in (0, 1)]
  for rho, acc in ((0.02, 0.61), (0.1, 0.65), (0.5, 0.55)):
    rows += [
      _r("rigl", 0.9, "s2sam", s, acc + 0.01 * s, f"rigl/rho={rho}", rho=rho) for s in (0, 1)
    ]
  md = report.rho_table(rows)
  assert "| 0.1 | 65.50 ± 0.71 | 65.50 |" in md and "| original | 60.00 ± 0.00 |" in md
  assert md.endswith("rho = 0.1.")
  assert report.rho_table([_r("rigl", 0.9, "original", 0, 0.6)]) is None


def test_rho_table_without_an_original_arm():
  rows = [
    _r("rigl", 0.9, "s2sam", 0, acc, f"rigl/rho={rho}", rho=rho)
    for rho, acc in ((0.05, 0.7), (0.1, 0.6))
  ]
  md = report.rho_table(rows)
  assert "original" not in md and "nan" not in md and md.endswith("rho = 0.05.")


def test_sweep_rows_join_table1s_levels_and_dense_as_zero():
  sweep = [_r("rigl", 0.4, m, 0, 0.8) for m in ("original", "s2sam")]
  table = [_r("rigl", 0.9, m, 0, 0.7) for m in ("original", "s2sam")]
  table += [_r("dense", 0.0, m, 0, 0.9) for m in ("original", "s2sam")]
  table += [_r("snip", 0.9, "original", 0, 0.5)]  # not a sweep method
  rows = report.sweep_rows(sweep, table)
  levels = sorted({(r["method"], r["sparsity"]) for r in rows})
  assert levels == [("rigl", 0.0), ("rigl", 0.4), ("rigl", 0.9)]


def test_table1_row_order_does_not_depend_on_input_order():
  rows = [
    _r("rigl", 0.9, mode, s, 0.6 + 0.01 * s, f"rigl/rho={rho}", rho=rho)
    for rho in (0.5, 0.02, 0.1)
    for mode in ("original", "s2sam")
    for s in (0, 1)
  ]
  md = report.table1(rows)[0]
  # sorted by method, distribution and variant: the same table in every process
  assert [md.index(f"rho={rho}]") for rho in ("0.02", "0.1", "0.5")] == sorted(
    md.index(f"rho={rho}]") for rho in ("0.02", "0.1", "0.5")
  )
  assert md == report.table1(rows[::-1])[0]


def test_a_study_name_registers_once():
  with pytest.raises(ValueError, match="'rho_mnist1d' is registered twice"):
    study.study("rho_mnist1d")(lambda: [])
  assert study.STUDIES["rho_mnist1d"] is study.rho_mnist1d
