"""The data of a run, from its config: train and test sources, the work dir name."""

from __future__ import annotations

import os

import numpy as np

from experiments import data as data_lib
from experiments.configs import TrainConfig

# The validation split is one fixed choice for every seed and arm.
VALIDATION_SEED = 20240


class _Indexed:
  """The examples ``indices`` of a source, in that order."""

  def __init__(self, source, indices):
    self.source, self.info = source, source.info
    self.indices = np.asarray(indices, np.int64)

  def __len__(self):
    return len(self.indices)

  def get_batch(self, indices):
    return self.source.get_batch(self.indices[np.asarray(indices)])


def _evenly_spaced(source, n: int) -> _Indexed:
  """``n`` examples evenly spaced over ``source`` (a class-sorted image
  folder keeps every class)."""
  return _Indexed(source, np.linspace(0, len(source) - 1, min(n, len(source))).astype(np.int64))


def validation_split(source, fraction: float) -> tuple[_Indexed, _Indexed]:
  """``(train, validation)``: a random ``fraction`` of ``source`` held out
  (the same examples for every seed), the rest kept, both in source order."""
  order = np.random.default_rng(VALIDATION_SEED).permutation(len(source))
  held = int(round(fraction * len(source)))
  if not 0 < held < len(source):
    raise ValueError(
      f"--validation-fraction {fraction} holds out {held} of {len(source)} training examples; "
      "it must leave at least one on each side."
    )
  return _Indexed(source, np.sort(order[held:])), _Indexed(source, np.sort(order[:held]))


def _dataset_name(cfg: TrainConfig) -> str:
  """An image-folder root given as --data-dir is read as one."""
  folder = cfg.data_dir and os.path.isdir(os.path.join(cfg.data_dir, "train"))
  if folder and not cfg.dataset.startswith("imagefolder:") and cfg.dataset != "mnist1d":
    return "imagefolder:" + cfg.data_dir
  return cfg.dataset


_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}


def load_data(cfg: TrainConfig):
  """``(train, test)`` sources of ``cfg``. With ``--validation-fraction`` the
  "test" source is the validation split carved from the training set (the
  test set is not read); then ``--train-subset``/``--test-subset`` apply."""
  if cfg.data_dir and cfg.dataset == "mnist1d":
    raise ValueError(
      "--data-dir: mnist1d is generated offline and reads no data folder; "
      "drop --data-dir, or pick a --dataset that reads one."
    )
  if cfg.data_dir and not os.path.isdir(os.path.expanduser(cfg.data_dir)):
    raise FileNotFoundError(f"--data-dir {cfg.data_dir} does not exist.")
  name = _dataset_name(cfg)
  data_dir = None if name.startswith("imagefolder:") else cfg.data_dir
  size = cfg.image_size or None
  train = data_lib.get_dataset(name, "train", data_dir=data_dir, image_size=size)
  test = data_lib.get_dataset(name, "test", data_dir=data_dir, image_size=size)
  expected = _NUM_CLASSES.get(cfg.dataset)
  if expected and name != cfg.dataset and train.info.num_classes != expected:
    raise ValueError(
      f"--data-dir {cfg.data_dir} is an image folder with {train.info.num_classes} classes, "
      f"but --dataset {cfg.dataset} has {expected}."
    )
  if cfg.validation_fraction:
    train, test = validation_split(train, cfg.validation_fraction)
  if cfg.train_subset:
    train = _evenly_spaced(train, cfg.train_subset)
  if cfg.test_subset:
    test = _evenly_spaced(test, cfg.test_subset)
  return train, test


def default_out_dir(cfg: TrainConfig) -> str:
  sp = "dense" if cfg.method == "dense" else f"{cfg.method}{cfg.sparsity:g}"
  ds = _dataset_name(cfg).replace("imagefolder:", "").rstrip("/").split("/")[-1]
  return os.path.join("runs", f"{cfg.model}-{ds}-{sp}-{cfg.optimizer_mode}-seed{cfg.seed}")
