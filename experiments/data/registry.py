"""`get_dataset(name, split)`: every dataset of the experiments behind one name.

Names (DATASET_NAMES lists the base names):
  "mnist1d"                              generated offline by the mnist1d package (default)
  "cifar10", "cifar100"                  tfds, array_record format, read into memory
  "imagenet2012"                         tfds, random access, host decode to 256x256
  "imagenet2012_corrupted/<config>"      tfds, e.g. "imagenet2012_corrupted/gaussian_noise_3"
  "imagefolder:<root>"                   <root>/<split>/<class>/*.jpg|png, e.g.
                                         "imagefolder:/path/to/cifar10"
"""

from __future__ import annotations

import os

from experiments.data import imagefolder, mnist1d_source, tfds_source
from experiments.data.source import Source

DATASET_NAMES = (
  "mnist1d",
  "cifar10",
  "cifar100",
  "imagenet2012",
  "imagenet2012_corrupted",
  "imagefolder",
)
NAME_FORMS = (
  "mnist1d",
  "cifar10",
  "cifar100",
  "imagenet2012",
  "imagenet2012_corrupted/<corruption>_<severity>",
  "imagefolder:<root>",
)


def get_dataset(
  name: str,
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
  image_size: int | None = None,
) -> Source:
  """Returns one split of a dataset as a `Source` (see `source.py`).

  Args:
    name: one of NAME_FORMS (see the module docstring).
    split: "train" or "test" ("test" is ImageNet's validation split); tfds datasets
      also accept any tfds split string, image folders any sub-folder name.
    data_dir: tfds data folder (default: tfds's, ~/tensorflow_datasets). Unused by
      mnist1d and imagefolder (whose root is in the name).
    cache_dir: where decoded arrays are cached (default $S2SAM_JAX_CACHE or
      ~/.cache/s2sam_jax).
    image_size: host-side square size for ImageNet (default 256; 224 for the
      corrupted variant) or to resize image folders of mixed sizes.

  Raises:
    ValueError: unknown name (the message lists the names) or bad config.
    FileNotFoundError: the data is missing; the message says how to get it.

  Example:
    >>> import numpy as np
    >>> train = get_dataset("mnist1d", "train")
    >>> batch = train.get_batch(np.arange(8))
    >>> batch["image"].shape, batch["label"].dtype, train.info.num_classes
    ((8, 40), dtype('int32'), 10)
  """
  if not isinstance(name, str):
    raise ValueError(f"name must be a string, one of {NAME_FORMS}; got {name!r}")
  if name.startswith("imagefolder:"):
    root = name.partition(":")[2]
    if not root:
      raise ValueError("name 'imagefolder:<root>' needs a folder after the colon")
    return imagefolder.load_imagefolder(root, split, cache_dir=cache_dir, image_size=image_size)
  if name == "mnist1d":
    return mnist1d_source.load_mnist1d(split, cache_dir=cache_dir)
  if name in tfds_source.IN_MEMORY:
    return tfds_source.load_in_memory(name, split, data_dir=data_dir, cache_dir=cache_dir)
  if name == "imagenet2012" or name.partition("/")[0] == "imagenet2012_corrupted":
    return tfds_source.load_random_access(name, split, data_dir=data_dir, image_size=image_size)
  raise ValueError(f"unknown dataset name {name!r}; name must be one of {NAME_FORMS}")
