"""Results that must not move when the code is restructured.

Three runs of the training command, their numbers recorded once in
``tests/data/regression_values.json`` together with the commit they came
from (``python tests/test_regression_values.py --record`` rewrites it):

* ``default_2000``: the default job (MNIST-1D CNN, RigL 90% ERK, S2-SAM, its
  full 3000-epoch schedule) stopped after 2,000 steps (``--max-steps``);
* ``resnet20_20``: CIFAR-10-shaped ResNet-20 (16/32/64), RigL ERK 90% with
  S2-SAM, batch 64, 20 steps, topology updates every 5 steps, on a generated
  image folder;
* ``lt_two_rounds``: a lottery-ticket run of two rounds (dense, then 20%
  pruned) on an MNIST-1D subset.

Every metrics row (train loss and accuracy per epoch, test loss where
evaluated) and the summary's final test loss and accuracy are compared. On
the machine and JAX version that recorded them (``platform`` in the file)
they must be equal bit for bit; elsewhere XLA may vectorise reductions
differently, so there they must agree to 1e-5 (relative).
"""

from __future__ import annotations

import json
import os
import platform
import sys

import jax
import jaxlib
import numpy as np
import pytest

from experiments import benchmarking, train

HERE = os.path.dirname(os.path.abspath(__file__))
VALUES = os.path.join(HERE, "data", "regression_values.json")

TRACKED = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def _image_folder(root, n_train=1280, n_test=100):
  """A deterministic 10-class folder of 32x32 PNGs (random pixels)."""
  from PIL import Image

  rng = np.random.default_rng(0)
  for split, n in (("train", n_train), ("test", n_test)):
    for i in range(n):
      folder = os.path.join(root, split, f"class{i % 10}")
      os.makedirs(folder, exist_ok=True)
      pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(folder, f"{i:05d}.png"))
  return root


def _runs(tmp):
  """name -> flags of the three runs (``tmp``: a scratch folder)."""
  folder = os.path.join(tmp, "cifar_like")
  return {
    "default_2000": ["--max-steps", "2000"],
    "resnet20_20": [
      "--model", "resnet20", "--dataset", "cifar10", "--data-dir", folder,
      "--batch-size", "64", "--epochs", "1", "--max-steps", "20",
      "--update-every", "5", "--eval-batch-size", "100",
    ],
    "lt_two_rounds": [
      "--method", "lt", "--sparsity", "0.2", "--prune-fraction", "0.2",
      "--model", "mnist1d_mlp", "--train-subset", "512", "--test-subset", "200",
      "--batch-size", "64", "--epochs", "3", "--optimizer-mode", "s2sam",
    ],
  }  # fmt: skip


def _measure(name, flags, tmp):
  if name == "resnet20_20" and not os.path.isdir(os.path.join(tmp, "cifar_like")):
    _image_folder(os.path.join(tmp, "cifar_like"))
  cfg, _ = train.config_from_args(flags + ["--no-progress", "--out-dir", os.path.join(tmp, name)])
  summary = train.run(cfg)
  rows = [{k: r[k] for k in TRACKED if k in r} for r in summary_rows(os.path.join(tmp, name))]
  return {
    "rows": rows,
    "final_test_loss": summary["final_test_loss"],
    "final_test_accuracy": summary["final_test_accuracy"],
    "steps": summary["steps"],
  }


def summary_rows(out_dir):
  with open(os.path.join(out_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _platform():
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "jax": jax.__version__, "jaxlib": jaxlib.__version__}


def _flatten(values):
  """Every tracked number of a run, in a fixed order."""
  out = [values["final_test_loss"], values["final_test_accuracy"], values["steps"]]
  for row in values["rows"]:
    out += [row.get(k, float("nan")) for k in TRACKED]
  return np.asarray(out, np.float64)


@pytest.mark.parametrize("name", sorted(_runs("")))
def test_results_do_not_move(tmp_path, monkeypatch, name):
  monkeypatch.setenv("S2SAM_JAX_CACHE", str(tmp_path / "cache"))
  with open(VALUES) as f:
    recorded = json.load(f)
  want = recorded["runs"][name]
  got = _measure(name, _runs(str(tmp_path))[name], str(tmp_path))
  assert len(got["rows"]) == len(want["rows"])
  if _platform() == recorded["platform"]:
    np.testing.assert_array_equal(_flatten(got), _flatten(want))
  else:
    np.testing.assert_allclose(_flatten(got), _flatten(want), rtol=1e-5)


def record():
  import tempfile

  with tempfile.TemporaryDirectory() as tmp:
    os.environ["S2SAM_JAX_CACHE"] = os.path.join(tmp, "cache")
    runs = {name: _measure(name, flags, tmp) for name, flags in _runs(tmp).items()}
  out = {"commit": benchmarking.git_commit(), "platform": _platform(), "runs": runs}
  os.makedirs(os.path.dirname(VALUES), exist_ok=True)
  with open(VALUES, "w") as f:
    json.dump(out, f, indent=1)
  print(f"recorded {VALUES} at {out['commit']}")


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
  record()
