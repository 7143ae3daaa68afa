"""experiments.loss_surface: filter normalisation, power iteration, Ra, and the tool end to end.

Independent references: filter norms and masks recomputed with NumPy; the power iteration
against ``numpy.linalg.eigvalsh`` of a known matrix (and of its masked submatrix); Ra and the
grid's orientation against hand-computed values.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import loss_surface as ls
from experiments import train


def _params():
  rng = np.random.default_rng(0)
  return {
    "conv": {"kernel": rng.normal(size=(1, 3, 2, 4)), "bias": rng.normal(size=4)},
    "dense": {"kernel": rng.normal(size=(5, 3)), "bias": rng.normal(size=3)},
    "norm": {"scale": rng.normal(size=4)},
  }


def test_filter_normalisation_matches_each_filter_norm_inside_the_masks():
  params = jax.tree.map(jnp.asarray, _params())
  mask = np.ones((5, 3), bool)
  mask[:, 2] = False  # a whole filter pruned
  mask[[0, 3], 0] = False
  masks = {"conv": {"kernel": None, "bias": None}, "dense": {"kernel": mask, "bias": None}}
  masks["norm"] = {"scale": None}
  theta = dict(params, dense=dict(params["dense"], kernel=params["dense"]["kernel"] * mask))
  direction = jax.tree.map(lambda x: 3.0 * jnp.ones_like(x) + x, theta)
  d = jax.tree.map(np.asarray, jax.jit(ls.filter_normalize)(direction, theta, masks))

  conv_w = np.asarray(theta["conv"]["kernel"])
  np.testing.assert_allclose(
    np.linalg.norm(d["conv"]["kernel"].reshape(-1, 4), axis=0),
    np.linalg.norm(conv_w.reshape(-1, 4), axis=0),
    rtol=1e-6,
  )
  dense_w = np.asarray(theta["dense"]["kernel"])
  np.testing.assert_allclose(
    np.linalg.norm(d["dense"]["kernel"], axis=0), np.linalg.norm(dense_w, axis=0), rtol=1e-6
  )
  assert np.all(d["dense"]["kernel"][~mask] == 0.0)
  assert np.all(d["dense"]["kernel"][:, 2] == 0.0)  # fully pruned filter: 0, not nan
  for leaf in (d["conv"]["bias"], d["dense"]["bias"], d["norm"]["scale"]):
    assert np.all(leaf == 0.0)  # biases and norm parameters not perturbed
  # the direction within a filter keeps its shape (a positive rescaling of m ⊙ d)
  raw = np.asarray(direction["dense"]["kernel"])[:, 1]
  np.testing.assert_allclose(d["dense"]["kernel"][:, 1] / raw, d["dense"]["kernel"][0, 1] / raw[0])

  d1, d2 = jax.jit(ls.random_directions)(jax.random.key(0), theta, masks)
  for x in (d1, d2):
    assert np.all(np.asarray(x["dense"]["kernel"])[~mask] == 0.0)
  assert not np.allclose(d1["conv"]["kernel"], d2["conv"]["kernel"])


def _quadratic(spectrum, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(spectrum),) * 2))
  return (q * np.asarray(spectrum)) @ q.T


def _flat(tree):
  return jnp.concatenate([x.reshape(-1) for x in jax.tree.leaves(tree)])


def test_power_iteration_recovers_the_top_eigenvalue_and_respects_masks():
  spectrum = [9.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01]
  a = _quadratic(spectrum)
  params = {"b": jnp.zeros(4), "w": jnp.zeros((3, 4))}  # 16 coordinates, b first
  loss = lambda p: 0.5 * _flat(p) @ jnp.asarray(a, jnp.float32) @ _flat(p)
  run = jax.jit(
    lambda key, masks, tol: ls.top_hessian_eigenvalue(loss, params, key, masks, tol=tol),
    static_argnums=2,
  )
  top = run(jax.random.key(1), None, 1e-6)
  assert math.isclose(float(top.eigenvalue), 9.0, rel_tol=1e-4)
  assert 2 <= int(top.iterations) < 100 and float(top.relative_change) < 1e-6
  coarse = run(jax.random.key(1), None, 1e-3)  # the default tolerance
  assert math.isclose(float(coarse.eigenvalue), 9.0, rel_tol=1e-2)
  assert int(coarse.iterations) < int(top.iterations)

  w_mask = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 1]], bool)
  active = np.concatenate([np.ones(4, bool), w_mask.reshape(-1)])
  expected = np.linalg.eigvalsh(a[np.ix_(active, active)])[-1]
  assert expected < 8.9  # the mask matters
  masked = run(jax.random.key(1), {"b": None, "w": jnp.asarray(w_mask)}, 1e-6)
  assert math.isclose(float(masked.eigenvalue), expected, rel_tol=1e-4)
  assert np.all(np.asarray(masked.vector["w"])[~w_mask] == 0.0)


def test_power_iteration_stops_at_max_iters():
  a = _quadratic([1.0, 0.999, 0.5])  # gap too small to converge in 3 products
  top = ls.power_iteration(
    lambda v: jnp.asarray(a, jnp.float32) @ v, jnp.ones(3), tol=1e-9, max_iters=3
  )
  assert int(top.iterations) == 3 and float(top.relative_change) >= 1e-9


def test_ra_and_grid_orientation():
  assert ls.mean_absolute_deviation([[0.0, 2.0], [4.0, 6.0]]) == 2.0
  assert ls.mean_absolute_deviation(np.full((3, 3), 7.0)) == 0.0
  # loss(p) = sum of p: at θ + α d1 + β d2 it is sum θ + α sum d1 + β sum d2
  theta, d1, d2 = {"w": jnp.ones(3)}, {"w": jnp.full(3, 2.0)}, {"w": jnp.full(3, -1.0)}
  loss = lambda p, data: (jnp.sum(p["w"]), data)
  coords = jnp.asarray([[-1.0, 0.0], [0.5, 1.0], [1.0, -1.0]])
  losses, _ = ls.grid_losses(loss, theta, d1, d2, coords, jnp.zeros(()), 2)
  np.testing.assert_allclose(losses, [3 - 6, 3 + 3 - 3, 3 + 6 + 3])


def test_select_and_table():
  rows = [
    dict(method="rigl", sparsity=0.9, mode="original", cell="a"),
    dict(method="rigl", sparsity=0.98, mode="s2sam", cell="b"),
    dict(method="dense", sparsity=0.0, mode="s2sam", cell="c"),
  ]
  pick = lambda *s: [r["cell"] for r in ls.select_rows(rows, [ls.parse_select(x) for x in s])]
  assert pick("method=rigl,sparsity=0.9|0.98") == ["a", "b"]
  assert pick("sparsity=0.90", "method=dense") == ["a", "c"]
  assert pick() == ["a", "b", "c"]
  with pytest.raises(ValueError, match="no row has"):
    pick("optimizer=sgd")

  def row(mode, seed, acc, ra, lam):
    return dict(
      group="g", mode=mode, seed=seed, final_test_accuracy=acc, centre_loss=0.1, ra=ra,
      lambda_max=lam, relative_change=1e-4, tol=1e-3,
    )  # fmt: skip

  rows = [row("original", 0, 0.8, 2.0, 10.0), row("original", 1, 0.9, 4.0, 20.0)]
  rows += [row("s2sam", 0, 0.85, 1.0, 5.0), row("s2sam", 1, 0.95, 1.0, 6.0)]
  settings = dict(grid=3, radius=1.0, direction_seed=0, examples="256", tol=1e-3, max_iters=9)
  md = ls.table(rows, settings, ["g"])
  assert (
    "| g | original | 0,1 | 85.00 ± 7.07 | 0.1000 ± 0.0000 | 3 ± 1.414 | 15 ± 7.071 | 2/2 |" in md
  )
  assert "| g | s2sam − original | 2 | +5.00 ± 0.00 | -2 ± 1.414 | -9.5 ± 6.364 |" in md


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
  assert ls.main(["--runs", str(tmp_path / "missing")]) == 2
  assert "no such run dir" in capsys.readouterr().err
  (tmp_path / "run").mkdir()
  for name in ("config.json", "summary.json"):
    (tmp_path / "run" / name).write_text(json.dumps({"finished": True}))
  assert ls.main(["--runs", str(tmp_path / "run")]) == 2
  assert "holds no checkpoint" in capsys.readouterr().err
  args = ["--study", "no_such_study", "--results-dir", str(tmp_path)]
  assert ls.main(args) == 2
  err = capsys.readouterr().err
  assert "unknown study 'no_such_study'" in err and err.count("\n") == 1


def test_end_to_end_on_a_tiny_sparse_run(tmp_path):
  run_dir = str(tmp_path / "run")
  flags = ["--model", "mnist1d_mlp", "--train-subset", "256", "--test-subset", "64"]
  flags += ["--batch-size", "32", "--epochs", "1", "--sparsity", "0.5", "--no-progress"]
  cfg, _ = train.config_from_args(flags + ["--out-dir", run_dir])
  train.run(cfg)
  out = str(tmp_path / "out")
  argv = ["--runs", run_dir, "--grid", "3", "--max-iters", "4", "--examples", "128"]
  argv += ["--out-dir", out]
  assert ls.main(argv) == 0
  (row,) = json.load(open(os.path.join(out, "surfaces.json")))
  assert row["mode"] == "s2sam" and row["sparsity"] == 0.5 and row["seed"] == 0
  assert row["examples"] == 128 and row["grid"] == 3 and 2 <= row["iterations"] <= 4
  for key in ("centre_loss", "ra", "lambda_max", "final_test_accuracy"):
    assert math.isfinite(row[key])
  assert row["lambda_max"] > 0
  surface = json.load(open(row["surface"]))["result"]
  loss = np.asarray(surface["loss"])
  assert loss.shape == (3, 3) and np.isclose(loss[1, 1], row["centre_loss"], rtol=1e-5)
  run_out = os.path.dirname(row["surface"])
  group = [f for f in os.listdir(out) if f.startswith("group_")]
  assert sorted(os.listdir(run_out)) == ["contour.png", "surface.json", "surface.png"]
  assert len(group) == 2 and all(f.endswith(".png") for f in group)
  assert "| s2sam | 0 |" in open(os.path.join(out, "table.md")).read()
  assert open(os.path.join(out, "command.txt")).read().split()[3:] == argv
  # the same command again reads the stored surface back (nothing recomputed)
  mtime = os.path.getmtime(row["surface"])
  assert ls.main(argv) == 0
  assert os.path.getmtime(row["surface"]) == mtime
