"""The training command end to end, on a small MNIST-1D subset.

Independent references: exact-zero and active-count checks recomputed with
NumPy from the returned state and the reference's counting rule; the learning
rate against its closed form; resume against an uninterrupted run (bit for
bit); 8 virtual devices against 1 (float tolerance); hand-typed reference
values for the named configs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import s2sam_jax
from experiments import configs, datasets, recipes, train
from experiments.checkpoint import Checkpointer
from s2sam_jax import sparse

# 256 training examples, batch 32: 8 steps per epoch.
TINY = [
  "--model",
  "mnist1d_mlp",
  "--dataset",
  "mnist1d",
  "--train-subset",
  "256",
  "--test-subset",
  "64",
  "--batch-size",
  "32",
  "--eval-batch-size",
  "64",
  "--epochs",
  "1",
  "--no-progress",
  "--update-every",
  "3",
  "--lr",
  "0.05",
  "--sparsity",
  "0.5",
  "--distribution",
  "uniform",
]
STEPS_PER_EPOCH = 8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(out_dir, *flags):
  cfg, _ = train.config_from_args(TINY + [str(f) for f in flags] + ["--out-dir", str(out_dir)])
  return cfg


def run(out_dir, *flags):
  """``(train.Result, summary)`` of a tiny run."""
  result = train.train_and_evaluate(*train.setup(tiny_cfg(out_dir, *flags)))
  return result, result.summary


def leaves(tree):
  """Every array of ``tree`` as NumPy (PRNG keys as their key data)."""

  def as_np(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x)

  return [as_np(x) for x in jax.tree.leaves(tree)]


def clean_params_and_masks(result):
  state = result.state
  clean = jax.device_get(s2sam_jax.unperturbed(state.params, state.opt_state))
  return clean, jax.device_get(sparse.get_masks(state.opt_state))


def masked_pairs(params, masks):
  flat_m = jax.tree_util.tree_flatten_with_path(masks, is_leaf=lambda x: x is None)[0]
  flat_p = jax.tree.structure(masks, is_leaf=lambda x: x is None).flatten_up_to(params)
  return [
    (sparse.path_str(path), np.asarray(m), np.asarray(p))
    for (path, m), p in zip(flat_m, flat_p)
    if m is not None
  ]


# Exact active-count rule per method at sparsity s (reference: the method's
# counting convention, recomputed here from the layer sizes).
def expected_active(method, sizes, s):
  if method in ("snip", "lt", "lrr", "grasp"):  # global ranking
    total = sum(sizes)
    return total - int(s * total) if method == "grasp" else round((1 - s) * total)
  if method == "mest-ems":  # phase 0: grow 5% of each layer above the target
    return sum(round((1 - s) * n) + round(0.05 * n) for n in sizes)
  return sum(round((1 - s) * n) for n in sizes)  # per layer, exact


# every one-training-run sparse method (LT and LRR train in rounds: their own tests)
SPARSE_METHODS = [m for m in configs.METHODS if m not in ("dense", "lt", "lrr")]
CASES = [(m, "s2sam") for m in SPARSE_METHODS + ["dense"]] + [
  ("rigl", "original"),
  ("rigl", "sam"),
  ("static", "sam"),
  ("mest-ems", "original"),
  ("dense", "sam"),
]


@pytest.mark.parametrize("method,mode", CASES)
def test_method_trains_end_to_end(tmp_path, method, mode):
  runner, summary = run(tmp_path, "--method", method, "--optimizer-mode", mode)
  assert summary["finished"] and summary["steps"] == STEPS_PER_EPOCH
  assert 0.0 <= summary["final_test_accuracy"] <= 1.0
  record = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-1])
  assert math.isfinite(record["train_loss"]) and record["epoch"] == 1
  assert os.path.exists(tmp_path / "summary.json") and os.listdir(tmp_path / "tb")
  # each evaluated row carries the masks' per-layer density (sparse runs)
  assert ("density" in record) == (method != "dense") and "test_accuracy" in record
  if method != "dense":
    masks = sparse.get_masks(jax.device_get(runner.state.opt_state))
    final = sparse.sparsity_summary(runner.state.params, masks).layers
    assert record["density"] == {layer.path: layer.density for layer in final}
  assert summary["training_flops"]["total"] > 0
  params, masks = clean_params_and_masks(runner)
  if method == "dense":
    assert masks is None and summary["sparsity"]["sparsity"] == 0.0
    return
  pairs = masked_pairs(params, masks)
  for path, m, p in pairs:  # the clean weights are exactly 0 where masked
    assert not np.any(p[~m]), path
  active = sum(int(m.sum()) for _, m, _ in pairs)
  sizes = [m.size for _, m, _ in pairs]
  assert summary["sparsity"]["nnz"] == active
  assert summary["sparsity"]["size"] == sum(sizes)
  assert active == expected_active(method, sizes, 0.5), (active, sum(sizes))


@pytest.mark.parametrize("method", ["lt", "lrr"])
def test_lottery_rounds_run_inside_the_command(tmp_path, method):
  # 0.36 = 1 - 0.8^2: a dense round and two pruning rounds of 20%.
  runner, summary = run(
    tmp_path,
    "--method",
    method,
    "--sparsity",
    "0.36",
    "--rewind-steps",
    "3",
    "--optimizer-mode",
    "s2sam",
  )
  assert summary["rounds"] == 3 and summary["finished"]
  history = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [h["round"] for h in history] == [0, 1, 2]
  params, masks = clean_params_and_masks(runner)
  pairs = masked_pairs(params, masks)
  sizes = [m.size for _, m, _ in pairs]
  assert sum(int(m.sum()) for _, m, _ in pairs) == round(0.64 * sum(sizes))
  for path, m, p in pairs:
    assert not np.any(p[~m]), path
  # LT retrains from the rewind step; LRR replays the whole schedule.
  assert summary["steps"] == STEPS_PER_EPOCH


@pytest.mark.parametrize("flags", [["--method", "rigl"], ["--method", "lt", "--sparsity", "0.36"]])
def test_train_step_compiles_once(tmp_path, flags):
  # RigL: topology updates at steps 0, 3, ...; LT: three rounds, one step function
  exp, state, saved = train.setup(tiny_cfg(tmp_path, *flags, "--epochs", "2"))
  result = train.train_and_evaluate(exp, state, saved)
  assert result.summary["finished"] and exp.steps.train._cache_size() == 1


@pytest.mark.parametrize(
  "method,extra",
  [
    ("rigl", ["--epochs", "2"]),
    ("lt", ["--epochs", "1", "--sparsity", "0.36", "--rewind-steps", "3"]),
  ],
)
def test_resume_is_bit_exact(tmp_path, method, extra):
  flags = ["--method", method, "--optimizer-mode", "s2sam"] + extra
  full, full_summary = run(tmp_path / "full", *flags)
  # Interrupt mid-epoch (step 5), then resume to the end.
  run(tmp_path / "cut", *flags, "--max-steps", "5")
  resumed, resumed_summary = run(tmp_path / "cut", *flags, "--resume")
  for a, b in zip(leaves(full.state), leaves(resumed.state)):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  assert resumed_summary["final_test_accuracy"] == full_summary["final_test_accuracy"]
  assert resumed_summary["rounds"] == full_summary["rounds"]
  hist = lambda r: [
    (h["round"], h["epoch"], h.get("test_accuracy")) for h in r.history if h["epoch_complete"]
  ]
  assert hist(resumed) == hist(full)


def test_resume_restores_from_the_latest_checkpoint(tmp_path):
  run(tmp_path, "--method", "static", "--epochs", "2", "--max-steps", "3")
  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == 3
  ckpt.close()
  meta = json.loads(open(tmp_path / "config.json").read())
  assert meta["max_steps"] == 3


def test_one_vs_eight_devices(tmp_path):
  flags = ["--method", "static", "--optimizer-mode", "s2sam", "--epochs", "2"]
  one, one_summary = run(tmp_path / "one", *flags)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  cmd = (
    [sys.executable, "-m", "experiments.train"]
    + TINY
    + flags
    + ["--out-dir", str(tmp_path / "eight")]
  )
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(open(tmp_path / "eight" / "summary.json").read())
  assert summary["devices"] == 8 and one_summary["devices"] == 1
  ckpt = Checkpointer(str(tmp_path / "eight" / "checkpoints"))
  one_state = one.state.arrays()
  eight_state, _ = ckpt.restore(one_state)
  ckpt.close()
  assert np.array_equal(
    jax.random.key_data(eight_state.pop("rng")), jax.random.key_data(one_state.pop("rng"))
  )
  for a, b in zip(leaves(one_state), leaves(eight_state)):
    assert a.dtype == b.dtype
    if a.dtype == bool:
      assert np.array_equal(a, b)
    else:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert abs(summary["final_test_accuracy"] - one_summary["final_test_accuracy"]) <= 1 / 64


def test_learning_rate_matches_closed_form():
  cfg = train.TrainConfig(lr=0.1, lr_end=4e-8, epochs=3, schedule="cosine")
  lr = recipes.learning_rate(cfg, 10)
  for t in (0, 7, 29):
    # the authors' scheduler.step() runs before each update: update t uses lr(t + 1)
    want = 4e-8 + (0.1 - 4e-8) * 0.5 * (1 + math.cos(math.pi * (t + 1) / 30))
    assert float(lr(t)) == pytest.approx(want, rel=1e-5)
  step = recipes.learning_rate(cfg.replace(schedule="step", lr_milestones=(1, 2)), 10)
  assert [float(step(t)) for t in (9, 10, 19, 20)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
  warm = recipes.learning_rate(cfg.replace(schedule="constant", warmup_epochs=1), 10)
  assert float(warm(0)) == pytest.approx(0.01) and float(warm(15)) == pytest.approx(0.1)


def test_named_configs_resolve_and_carry_reference_values():
  for name in configs.list_configs():
    configs.validate(train.TrainConfig(**configs.get_config(name)))
  mest = configs.get_config("table1/cifar10/resnet32/mest-ems/0.95/s2sam")
  # the S2-SAM authors' scripts: 160 epochs, batch 64, lr 0.1 cosine to 4e-8, momentum 0.9, wd 1e-4
  assert (mest["epochs"], mest["batch_size"], mest["lr"], mest["schedule"]) == (
    160,
    64,
    0.1,
    "cosine",
  )
  assert (mest["lr_end"], mest["momentum"], mest["weight_decay"]) == (4e-8, 0.9, 1e-4)
  assert (mest["sparsity"], mest["optimizer_mode"], mest["rho"]) == (0.95, "s2sam", 0.05)
  grasp = configs.get_config("table1/cifar100/vgg19/grasp")
  # GraSP's CIFAR configs: step decay at 80/120, wd 5e-4 for VGG-19, T = 200
  assert grasp["lr_milestones"] == (80, 120) and grasp["weight_decay"] == 5e-4
  assert grasp["grasp_temperature"] == 200.0
  with pytest.raises(ValueError, match="--config"):
    configs.get_config("table9/cifar10/resnet32/rigl")


def test_flags_override_named_config():
  cfg, _ = train.config_from_args(
    [
      "--config",
      "table1/cifar10/resnet32/rigl-erk/0.98/sam",
      "--epochs",
      "3",
      "--data-dir",
      "/data",
    ]
  )
  assert (cfg.model, cfg.method, cfg.sparsity, cfg.optimizer_mode) == (
    "resnet32",
    "rigl",
    0.98,
    "sam",
  )
  assert cfg.epochs == 3 and cfg.batch_size == 64 and cfg.data_dir == "/data"


def test_cli_lists_configs(capsys):
  assert train.main(["--list-configs"]) == 0
  header, _, *rows = capsys.readouterr().out.splitlines()
  assert "/<sparsity>/<mode>" in header
  names = [r.split()[0] for r in rows]
  assert "table2/imagenet2012/resnet50/rigl-erk" in names and len(names) == len(configs.CONFIGS)
  row = rows[names.index("table1/cifar10/resnet32/rigl-erk")]
  assert "rigl (erk): resnet32 on cifar10, 160 epochs, batch 64, cosine lr 0.1" in row


def test_every_flag_says_what_it_does():
  from experiments import flags

  for action in flags.build_parser()._actions:
    text = (action.help or "").split(" (default:")[0].strip()
    assert len(text) > 10, action.option_strings


def test_default_job_is_mnist1d_cnn_rigl_s2sam():
  cfg, _ = train.config_from_args([])
  assert (cfg.model, cfg.dataset, cfg.method, cfg.sparsity, cfg.optimizer_mode) == (
    "mnist1d_cnn",
    "mnist1d",
    "rigl",
    0.9,
    "s2sam",
  )


@pytest.mark.parametrize(
  "flags,error,match",
  [
    (["--model", "resnet1000"], ValueError, "resnet1000"),
    (["--dataset", "mnist2d"], ValueError, "mnist2d"),
    (["--dataset", "imagefolder:/nonexistent/data"], FileNotFoundError, "layout"),
  ],
)
def test_clear_errors(tmp_path, flags, error, match):
  with pytest.raises(error, match=match):
    train.setup(tiny_cfg(tmp_path, *flags))


def test_missing_tfds_data_says_how_to_get_it(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="tfds build cifar10"):
    train.setup(
      tiny_cfg(tmp_path / "run", "--dataset", "cifar10", "--data-dir", tmp_path / "empty")
    )


def test_unknown_method_is_rejected(capsys):
  with pytest.raises(SystemExit):
    train.config_from_args(["--method", "magic"])
  assert "--method" in capsys.readouterr().err
  with pytest.raises(ValueError, match="--method"):
    configs.validate(train.TrainConfig(method="magic"))
  with pytest.raises(ValueError, match="--sparsity"):
    configs.validate(train.TrainConfig(sparsity=1.0))


def test_bf16_computes_in_bf16_and_keeps_f32_params(tmp_path):
  f32, f32_summary = run(tmp_path / "f32", "--method", "static")
  bf16, bf16_summary = run(tmp_path / "bf16", "--method", "static", "--bf16")
  assert {x.dtype for x in leaves(bf16.state.params)} == {np.dtype("float32")}
  loss = lambda r: r.history[-1]["train_loss"]
  # same run up to bf16 rounding: close, but not bit-identical
  assert loss(bf16) != loss(f32) and abs(loss(bf16) - loss(f32)) < 0.05


def _image_folder(root, classes, per_class=2, size=8):
  from PIL import Image

  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in classes:
      os.makedirs(root / split / c)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_data_dir_image_folder_is_read_and_checked(tmp_path, monkeypatch):
  monkeypatch.setenv("S2SAM_JAX_CACHE", str(tmp_path / "cache"))
  _image_folder(tmp_path / "folder", ["a", "b", "c"])
  cfg = tiny_cfg(tmp_path / "run", "--dataset", "cifar10", "--data-dir", tmp_path / "folder")
  with pytest.raises(ValueError, match="3 classes, but --dataset cifar10 has 10"):
    datasets.load_data(cfg)
  cfg = cfg.replace(dataset="imagefolder:" + str(tmp_path / "folder"), data_dir=None)
  source, test = datasets.load_data(cfg)
  assert (len(source), len(test), source.info.num_classes) == (6, 6, 3)


def test_cli_reports_user_errors_without_a_traceback(tmp_path, capsys):
  code = train.main(TINY + ["--model", "resnet99", "--out-dir", str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2 and "error: Unknown model" in err and "Traceback" not in err


def test_resume_with_other_settings_is_refused(tmp_path):
  run(tmp_path, "--method", "static", "--max-steps", "2")
  with pytest.raises(ValueError, match="lr: 0.05 -> 0.1"):
    run(tmp_path, "--method", "static", "--resume", "--lr", "0.1")


def test_the_same_command_resumes_then_reports(tmp_path, capsys):
  # The out dir is a work dir: the same command continues an interrupted run
  # to the uninterrupted result, then reports the finished one.
  full, _ = run(tmp_path / "full", "--method", "static")
  run(tmp_path / "cut", "--method", "static", "--max-steps", "2")
  command = TINY + ["--method", "static", "--out-dir", str(tmp_path / "cut")]
  assert train.main(command) == 0
  summary = json.loads(open(tmp_path / "cut" / "summary.json").read())
  assert summary["finished"] and summary["steps"] == STEPS_PER_EPOCH
  assert summary["final_test_accuracy"] == full.summary["final_test_accuracy"]
  rows = open(tmp_path / "cut" / "metrics.jsonl").read()
  capsys.readouterr()
  assert train.main(command) == 0  # finished: reported, not retrained
  assert "finished earlier" in capsys.readouterr().err
  assert open(tmp_path / "cut" / "metrics.jsonl").read() == rows
  # other settings are refused, as for --resume
  assert train.main(command + ["--lr", "0.1"]) == 2
  assert "lr: 0.05 -> 0.1" in capsys.readouterr().err


def test_validation_split_is_held_out_of_training_and_fixed_across_seeds(tmp_path):
  cfg = tiny_cfg(
    tmp_path, "--validation-fraction", "0.25", "--train-subset", "0", "--test-subset", "0"
  )
  train_part, val = datasets.load_data(cfg)
  full, test = datasets.load_data(cfg.replace(validation_fraction=0.0))
  assert len(val) == round(0.25 * len(full)) and len(train_part) + len(val) == len(full)
  assert not set(train_part.indices) & set(val.indices)  # disjoint, together the whole set
  np.testing.assert_array_equal(
    val.get_batch(np.arange(5))["image"], full.get_batch(val.indices[:5])["image"]
  )
  again, val_again = datasets.load_data(cfg.replace(seed=3))
  np.testing.assert_array_equal(val_again.indices, val.indices)
  with pytest.raises(ValueError, match="--validation-fraction"):
    datasets.load_data(cfg.replace(validation_fraction=1e-9))


def test_a_one_step_run_reports_no_nan(tmp_path):
  # one step: nothing timed after compilation, so no rate (never "nan")
  _, summary = run(tmp_path, "--method", "static", "--max-steps", "1")
  assert summary["images_per_sec"] is None and summary["steps"] == 1
  for name in ("summary.json", "metrics.jsonl"):
    assert "nan" not in open(tmp_path / name).read().lower()
