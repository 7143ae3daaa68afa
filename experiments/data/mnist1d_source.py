"""MNIST-1D (Greydanus, 2020), generated offline by the `mnist1d` package.

`mnist1d.data.make_dataset` with the package's default arguments (5000 samples, seed 42,
80/20 train/test split) gives 4000 train and 1000 test examples of 40 float features,
already standardised to mean 0 and standard deviation 1 over the whole set. Generation
is deterministic and takes about a second; the result is cached as .npz. Nothing is ever
downloaded (the package's own `get_dataset` would download; it is not used).
"""

from __future__ import annotations

import os

import numpy as np

from experiments.data import cache
from experiments.data.source import ArraySource, DatasetInfo

SPLITS = ("train", "test")


def make_mnist1d(num_samples: int | None = None, seed: int | None = None) -> dict[str, np.ndarray]:
  """Generates MNIST-1D: {"x", "y", "x_test", "y_test"} as float32 / int32 arrays.

  Args:
    num_samples: total examples (train + test); None keeps the package default, 5000.
    seed: generator seed; None keeps the package default, 42.

  The package seeds NumPy's global generator; its state is restored afterwards.
  """
  from mnist1d.data import get_dataset_args, make_dataset

  args = get_dataset_args()
  if num_samples is not None:
    if num_samples < 10:
      raise ValueError(f"num_samples must be >= 10 (one per class), got {num_samples}")
    args.num_samples = int(num_samples)
  if seed is not None:
    args.seed = int(seed)
  saved = np.random.get_state()
  try:
    data = make_dataset(args)
  finally:
    np.random.set_state(saved)
  return {
    "x": data["x"].astype(np.float32),
    "y": data["y"].astype(np.int32),
    "x_test": data["x_test"].astype(np.float32),
    "y_test": data["y_test"].astype(np.int32),
  }


def load_mnist1d(
  split: str,
  *,
  cache_dir: str | os.PathLike | None = None,
  num_samples: int | None = None,
  seed: int | None = None,
) -> ArraySource:
  """MNIST-1D split ("train" or "test") as an in-memory source, cached under `cache_dir`.

  Example:
    >>> src = load_mnist1d("train")
    >>> len(src), src.get_batch(np.arange(2))["image"].shape
    (4000, (2, 40))
  """
  if split not in SPLITS:
    raise ValueError(f"split for mnist1d must be one of {SPLITS}, got {split!r}")
  import mnist1d

  version = getattr(mnist1d, "__version__", "unknown")
  folder = cache.cache_root(cache_dir) / "mnist1d" / cache.digest(version, num_samples, seed)
  entry = cache.load_entry(folder)
  if entry is None:
    arrays = make_mnist1d(num_samples, seed)
    cache.save_entry(folder, arrays, {"mnist1d_version": version})
  else:
    arrays = entry[0]
  x, y = (arrays["x"], arrays["y"]) if split == "train" else (arrays["x_test"], arrays["y_test"])
  info = DatasetInfo(
    name="mnist1d",
    num_classes=10,
    image_shape=(x.shape[1],),
    input_shape=(x.shape[1],),
    mean=(0.0,),
    std=(1.0,),
    augmentation="none",
    pixel_max=1.0,
    class_names=tuple(str(i) for i in range(10)),
  )
  return ArraySource(x, y, info)
