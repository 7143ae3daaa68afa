"""experiments.plot: curves and per-layer density of runs, overlaid."""

from __future__ import annotations

import json

from PIL import Image

from experiments import plot


def _run_dir(path, method, densities=None):
  path.mkdir()
  config = dict(method=method, sparsity=0.9, optimizer_mode="s2sam", seed=0)
  (path / "config.json").write_text(json.dumps(config))
  rows = []
  for epoch in range(1, 5):
    row = dict(round=0, epoch=epoch, train_loss=1.0 / epoch, train_accuracy=0.2 * epoch)
    if epoch % 2 == 0:
      row.update(test_loss=1.2 / epoch, test_accuracy=0.18 * epoch)
      if densities:
        row["density"] = {k: d * epoch / 4 for k, d in densities.items()}
    rows.append(row)
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_plot_overlays_runs_and_draws_density_of_sparse_ones(tmp_path, capsys):
  a = _run_dir(tmp_path / "a", "rigl", {"conv1/kernel": 0.5, "linear/kernel": 0.2})
  b = _run_dir(tmp_path / "b", "dense")
  assert plot.main([a, b, "--out-dir", str(tmp_path / "out")]) == 0
  written = capsys.readouterr().out.split()
  assert [p.rsplit("/", 1)[-1] for p in written] == ["curves.png", "density.png"]
  for p in written:
    with Image.open(p) as image:
      assert image.size[0] > 500 and image.size[1] > 300
  assert plot.read_run(a)[0] == "rigl 90% s2sam seed 0"
  # a dense run alone: curves only
  assert plot.main([b, "--out-dir", str(tmp_path / "dense")]) == 0
  assert capsys.readouterr().out.split() == [str(tmp_path / "dense" / "curves.png")]


def test_plot_names_a_dir_that_is_not_a_run(tmp_path, capsys):
  assert plot.main([str(tmp_path)]) == 2
  assert "holds no metrics.jsonl" in capsys.readouterr().err
