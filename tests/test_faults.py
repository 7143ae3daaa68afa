"""The training command under bad input and faults: one-line user errors,
signals, corrupted and half-written checkpoints, a full disk, resumed metrics.

Independent references: an uninterrupted run of the same command (bit for
bit); the metric rows it writes; hand-written expectations of each error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_train import REPO, TINY, leaves, run, tiny_cfg

from experiments import datasets, flags, train
from experiments.checkpoint import Checkpointer, finished_steps
from experiments.metrics import write_json


def _main(capsys, *flags):
  code = train.main([str(f) for f in flags])
  captured = capsys.readouterr()
  return code, captured.err


def _image_folder(root, sizes_by_class, bad=None):
  from PIL import Image

  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c, sizes in sizes_by_class.items():
      os.makedirs(root / split / c, exist_ok=True)
      for i, size in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
          root / split / c / f"{i}.png"
        )
  if bad:
    (root / "train" / bad).write_bytes(b"\x89PNG\r\n\x1a\n truncated")


@pytest.mark.parametrize(
  "flags,flag",
  [
    (["--config", "table9/cifar10/resnet32/rigl-erk"], "--config"),
    (["--config", "table1/cifar10/resnet32/rigl-erk/abc/s2sam"], "--config"),
    (["--config", "table1/cifar10/resnet32/rigl-erk/0.9/fast"], "--optimizer-mode"),
    (["--sparsity", "1.0"], "--sparsity"),
    (["--sparsity", "nan"], "--sparsity"),
    (["--rho", "nan"], "--rho"),
    (["--rho", "inf"], "--rho"),
    (["--eta", "-1"], "--eta"),
    (["--lr-end", "-0.1"], "--lr-end"),
    (["--label-smoothing", "1.0"], "--label-smoothing"),
    (["--label-smoothing", "-0.1"], "--label-smoothing"),
    (["--warmup-epochs", "5", "--epochs", "2"], "--warmup-epochs"),
    (["--eval-batch-size", "0"], "--eval-batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--train-subset", "-1"], "--train-subset"),
    (["--snip-batch", "0"], "--snip-batch"),
    (["--grasp-samples-per-class", "0"], "--grasp-samples-per-class"),
    (["--keep-dense", "conv("], "--keep-dense"),
    (["--adaptive-formula", "authors"], "--adaptive-formula"),
    (["--lr", "inf"], "--lr"),
    (["--mest-decay-epochs", "5", "3"], "--mest-decay-epochs"),
    (["--method", "lt", "--rewind-steps", "8"], "--rewind-steps"),
    (["--data-dir", "/nonexistent/data"], "--data-dir"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/data"], "--data-dir"),
    (["--resume"], "--resume"),
    (["--extra-eval", "mnist2d"], "mnist2d"),
  ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, flags, flag):
  code, err = _main(capsys, *TINY, "--out-dir", tmp_path / "run", *flags)
  assert code == 2, err
  assert err.count("\n") == 1 and flag in err and "Traceback" not in err, err


@pytest.mark.parametrize(
  "layout,match",
  [
    (dict(sizes_by_class={"a": [8, 8], "b": []}), r"class folder .*b holds no images"),
    (
      dict(sizes_by_class={"a": [8, 8], "b": [8, 8]}, bad="a/9.png"),
      r"cannot decode image .*a/9\.png",
    ),
    (dict(sizes_by_class={"a": [8, 8], "b": [8, 10]}), "--image-size N"),
  ],
)
def test_bad_image_folders_name_the_problem(tmp_path, capsys, monkeypatch, layout, match):
  monkeypatch.setenv("S2SAM_JAX_CACHE", str(tmp_path / "cache"))
  _image_folder(tmp_path / "folder", **layout)
  code, err = _main(
    capsys, *TINY, "--out-dir", tmp_path / "run", "--dataset", f"imagefolder:{tmp_path / 'folder'}"
  )
  assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
  import re

  assert re.search(match, err), err
  if "image-size" in match:  # the flag it names exists and fixes it
    assert "--image-size" in flags.build_parser().format_help()
    source, _ = datasets.load_data(
      train.config_from_args(
        TINY + ["--dataset", f"imagefolder:{tmp_path / 'folder'}", "--image-size", "8"]
      )[0]
    )
    assert source.info.image_shape == (8, 8, 3)


def test_resume_with_other_settings_is_a_one_line_error(tmp_path, capsys):
  run(tmp_path, "--method", "static", "--max-steps", "2")
  code, err = _main(
    capsys, *TINY, "--method", "static", "--out-dir", tmp_path, "--resume", "--lr", "0.1"
  )
  assert code == 2 and "lr: 0.05 -> 0.1" in err and "Traceback" not in err


def test_resume_needs_only_the_out_dir(tmp_path, capsys):
  flags = ["--method", "rigl", "--epochs", "2"]
  full, _ = run(tmp_path / "full", *flags)
  run(tmp_path / "cut", *flags, "--max-steps", "5")
  code, _ = _main(capsys, "--out-dir", tmp_path / "cut", "--resume", "--no-progress")
  assert code == 0
  restored = Checkpointer(str(tmp_path / "cut" / "checkpoints"))
  state, _ = restored.restore(full.state.arrays())
  restored.close()
  for a, b in zip(leaves(full.state.arrays()), leaves(state)):
    assert np.array_equal(a, b)


def _rows(out_dir):
  with open(os.path.join(out_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k not in ("time", "images_per_sec")} for r in rows]


def test_metrics_are_unique_after_resume_and_never_mix_runs(tmp_path):
  flags = ["--method", "rigl", "--epochs", "3"]
  run(tmp_path / "full", *flags)
  # An older run's rows but no checkpoint: a fresh run starts the file anew.
  os.makedirs(tmp_path / "cut")
  (tmp_path / "cut" / "metrics.jsonl").write_text('{"epoch": 99}\n')
  run(tmp_path / "cut", *flags, "--max-steps", "11")  # stops inside epoch 2
  run(tmp_path / "cut", *flags, "--resume", "--max-steps", "13")
  run(tmp_path / "cut", *flags, "--resume")
  rows = _rows(tmp_path / "cut")
  assert [(r["round"], r["epoch"]) for r in rows] == [(0, 1), (0, 2), (0, 3)]
  assert rows == _rows(tmp_path / "full")


def _checkpoint_files(ckpt_dir, step, part):
  found = []
  for root, _, files in os.walk(os.path.join(ckpt_dir, str(step), part)):
    found += [os.path.join(root, f) for f in files]
  return sorted(found, key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip(path):
  data = bytearray(open(path, "rb").read())
  for i in range(len(data) // 3, len(data) // 3 + 8):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_metadata"])
def test_a_corrupted_latest_checkpoint_falls_back_to_an_intact_one(tmp_path, damage):
  flags = ["--method", "static", "--epochs", "2", "--checkpoint-every", "1"]
  full, _ = run(tmp_path / "full", *flags)
  run(tmp_path / "cut", *flags, "--max-steps", "12")  # checkpoints 8 and 12
  ckpt_dir = str(tmp_path / "cut" / "checkpoints")
  assert finished_steps(ckpt_dir) == [8, 12]
  if damage == "no_metadata":
    for f in _checkpoint_files(ckpt_dir, 12, "meta"):
      os.remove(f)
  else:
    (_truncate if damage == "truncate" else _flip)(_checkpoint_files(ckpt_dir, 12, "state")[-1])
  with pytest.warns(UserWarning, match="checkpoint 12 .* cannot be read"):
    resumed, _ = run(tmp_path / "cut", *flags, "--resume")
  for a, b in zip(leaves(full.state), leaves(resumed.state)):
    assert np.array_equal(a, b)


def test_no_intact_checkpoint_is_one_clear_error(tmp_path, capsys):
  run(tmp_path, "--method", "static", "--max-steps", "3")
  for f in _checkpoint_files(str(tmp_path / "checkpoints"), 3, "state"):
    _flip(f)
  with pytest.warns(UserWarning):
    code, err = _main(capsys, *TINY, "--method", "static", "--out-dir", tmp_path, "--resume")
  assert code == 2 and "can be read back intact" in err and "Traceback" not in err


def test_a_half_written_checkpoint_is_not_a_checkpoint(tmp_path, capsys):
  # What kill -9 during the first save leaves behind: the run's config and
  # Orbax's temporary folder.
  os.makedirs(tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1733000000")
  cfg = tiny_cfg(tmp_path, "--method", "static")
  write_json(str(tmp_path / "config.json"), dataclasses.asdict(cfg))
  code, err = _main(capsys, *TINY, "--out-dir", tmp_path, "--resume")
  assert code == 2 and "no checkpoint to resume" in err
  runner, summary = run(tmp_path, "--method", "static")
  assert summary["finished"]


def test_a_full_disk_is_one_message_and_keeps_older_checkpoints(tmp_path, capsys, monkeypatch):
  import orbax.checkpoint as ocp

  saves = []
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if saves:  # what TensorStore raises when the disk is full
      raise ValueError(
        f'RESOURCE_EXHAUSTED: Error writing local file "{tmp_path}/x": '
        "No space left on device [os_error_code='28']"
      )
    saves.append(step)
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  code, err = _main(
    capsys,
    *TINY,
    "--method",
    "static",
    "--epochs",
    "3",
    "--checkpoint-every",
    "1",
    "--out-dir",
    tmp_path,
  )
  assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
  assert str(tmp_path) in err and "No space left on device" in err
  assert finished_steps(str(tmp_path / "checkpoints")) == saves == [8]


def test_final_accuracy_is_the_final_models(tmp_path):
  # LT: round 0's last evaluation is the dense model; the summary must score
  # the pruned model the run ends with.
  runner, summary = run(tmp_path, "--method", "lt", "--sparsity", "0.36", "--eval-every", "1")
  exp, _, _ = train.setup(tiny_cfg(tmp_path / "fresh", "--method", "lt", "--sparsity", "0.36"))
  ev = train.evaluate(exp, runner.state)
  assert runner.state.round == 2 and summary["final_test_accuracy"] == ev["accuracy"]


def _start(out_dir, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.train", *TINY, *flags, "--out-dir", str(out_dir)],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_and_resume_is_bit_exact(tmp_path, signum):
  flags = ["--method", "rigl", "--epochs", "300", "--eval-every", "100"]
  proc = _start(tmp_path / "cut", *flags)
  assert proc.stdout.readline().startswith("{")  # the first epoch is done
  time.sleep(0.5)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signum, err
  assert "Resume with: python -m experiments.train" in err and "Traceback" not in err
  assert err.strip().count("\n") == 0
  steps = finished_steps(str(tmp_path / "cut" / "checkpoints"))
  assert steps and steps[-1] < 300 * 8  # stopped early, checkpointed
  if signum != signal.SIGINT:  # the same code path; compare once
    return
  resumed, _ = run(tmp_path / "cut", *flags, "--resume")
  full, _ = run(tmp_path / "full", *flags)
  for a, b in zip(leaves(full.state), leaves(resumed.state)):
    assert np.array_equal(a, b)
  assert _rows(tmp_path / "cut") == _rows(tmp_path / "full")
