"""What every dataset returns: `DatasetInfo` and the `Source` interface.

A source is a random-access collection of examples:

    len(source)                       # number of examples
    source.get_batch(indices)         # {"image": (N, *image_shape), "label": (N,) int32}
    source.info                       # DatasetInfo

Images are uint8 NHWC (pixel values 0..255); MNIST-1D examples are float32 vectors of
length 40. `ArraySource` holds everything in memory (MNIST-1D, CIFAR, image folders);
large datasets (ImageNet) read and decode on demand (see `tfds_source.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

AUGMENTATION_KINDS = ("cifar", "imagenet", "none")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset split (hashable, so usable as a jit static arg).

  Attributes:
    name: the name given to `get_dataset`.
    num_classes: labels lie in [0, num_classes).
    image_shape: shape of one example as `get_batch` returns it, e.g. (32, 32, 3).
    input_shape: shape of one example after `augment` (what the model sees), e.g.
      (224, 224, 3) for ImageNet stored at 256x256; equal to image_shape otherwise.
    mean, std: per-channel statistics in [0, 1] units; `normalize` computes
      (x / pixel_max - mean) / std.
    augmentation: "cifar", "imagenet" or "none" (see `augment`).
    pixel_max: 255.0 for uint8 images, 1.0 for data that is already float (MNIST-1D).
    class_names: the label names in label order, when known.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, ...]
  input_shape: tuple[int, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augmentation: str
  pixel_max: float = 255.0
  class_names: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.augmentation not in AUGMENTATION_KINDS:
      raise ValueError(
        f"augmentation must be one of {AUGMENTATION_KINDS}, got {self.augmentation!r}"
      )
    if len(self.mean) != len(self.std):
      raise ValueError(f"mean and std must have the same length, got {self.mean}, {self.std}")


class Source(Protocol):
  """Random access to a dataset split."""

  info: DatasetInfo

  def __len__(self) -> int: ...

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


class ArraySource:
  """A split held in memory as two arrays.

  Example:
    >>> src = ArraySource(np.zeros((4, 2, 2, 3), np.uint8), np.arange(4), info)
    >>> src.get_batch(np.array([3, 1]))["label"]
    array([3, 1], dtype=int32)
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, info: DatasetInfo):
    if len(images) != len(labels):
      raise ValueError(f"images and labels differ in length: {len(images)} != {len(labels)}")
    self.images = images
    self.labels = np.asarray(labels, dtype=np.int32)
    self.info = info

  def __len__(self) -> int:
    return len(self.labels)

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)
    return {"image": np.asarray(self.images[indices]), "label": self.labels[indices]}

  def __repr__(self) -> str:
    return f"ArraySource({self.info.name!r}, n={len(self)}, image_shape={self.info.image_shape})"
