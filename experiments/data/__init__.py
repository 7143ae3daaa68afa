"""Data pipelines of the experiments: datasets by name, deterministic batches, on-device augmentation.

from experiments import data

train = data.get_dataset("mnist1d", "train")          # or "cifar10", "imagefolder:<root>", ...
for batch in data.batches(train, 128, seed=0, epoch=0):
    ...                                               # uint8 NHWC (float32 (N, 40) for mnist1d)

# inside the jitted step:
x = data.normalize(data.augment(key, batch["image"], train.info.augmentation), train.info)
"""

from experiments.data.augment import (
  augment,
  center_crop,
  cifar_augment,
  crop_resize,
  flip_horizontal,
  normalize,
  pad_crop_flip,
  random_resized_crop,
  sample_crop_box,
)
from experiments.data.loader import batch_indices, batches, epoch_order, num_batches
from experiments.data.registry import DATASET_NAMES, NAME_FORMS, get_dataset
from experiments.data.source import AUGMENTATION_KINDS, ArraySource, DatasetInfo, Source

__all__ = [
  "AUGMENTATION_KINDS",
  "ArraySource",
  "DATASET_NAMES",
  "DatasetInfo",
  "NAME_FORMS",
  "Source",
  "augment",
  "batch_indices",
  "batches",
  "center_crop",
  "cifar_augment",
  "crop_resize",
  "epoch_order",
  "flip_horizontal",
  "get_dataset",
  "normalize",
  "num_batches",
  "pad_crop_flip",
  "random_resized_crop",
  "sample_crop_box",
]
