"""TensorFlow Datasets by name, read with `tfds.data_source` (random access, no TensorFlow).

`tfds.data_source` needs the dataset prepared in the array_record format; it is never
downloaded here (`download=False`). A missing dataset raises FileNotFoundError with the
command that prepares it.

- cifar10, cifar100: the whole split is read once into memory (uint8 32x32x3) and cached
  as .npy (see `cache.py`), keyed by the prepared files' path, size and mtime.
- imagenet2012, imagenet2012_corrupted/<corruption>_<severity>: random access; each
  batch is read from the array_record files and decoded on the host with Pillow (threads).
  Every image is resized so that its shorter side is `image_size` (default 256 for
  imagenet2012, 224 for the corrupted variant, whose images are already 224x224) and
  centre-cropped to image_size x image_size. On device, `augment(..., "imagenet")` then
  takes a random-resized crop of that square to 224x224 for training, or its central
  224x224 for evaluation (the usual resize-256 / crop-224 protocol). The random-resized
  crop therefore samples from the central square, not the full non-square image.
  The split "test" means "validation" for these (ImageNet's test labels are not public).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from experiments.data import cache, host_image
from experiments.data.source import ArraySource, DatasetInfo

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

IN_MEMORY = {"cifar10": CIFAR10_STATS, "cifar100": CIFAR100_STATS}
RANDOM_ACCESS = {"imagenet2012": 256, "imagenet2012_corrupted": 224}  # host image size
IMAGENET_INPUT_SIZE = 224
TFDS_NAMES = tuple(IN_MEMORY) + tuple(RANDOM_ACCESS)


def corruption_configs() -> list[str]:
  """Config names of imagenet2012_corrupted, e.g. "gaussian_noise_3"."""
  import tensorflow_datasets as tfds

  return [c.name for c in tfds.builder_cls("imagenet2012_corrupted").BUILDER_CONFIGS]


def _tfds_split(base: str, split: str) -> str:
  return "validation" if base in RANDOM_ACCESS and split == "test" else split


def _prepare_help(name: str, base: str, version_dir: str) -> str:
  root = str(Path(version_dir).parents[1] if "/" not in name else Path(version_dir).parents[2])
  build = f"tfds build {name} --file_format=array_record --data_dir={root}"
  lines = [f"dataset {name!r} is not available in the array_record format at {version_dir}."]
  if base in IN_MEMORY:
    lines.append(f"Prepare it once (needs `pip install tensorflow` and internet): {build}")
  elif base == "imagenet2012":
    lines.append(
      "ImageNet needs a manual download: register at https://image-net.org/download-images, "
      "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a folder MANUAL, then "
      f"(with `pip install tensorflow`): {build} --manual_dir=MANUAL"
    )
  else:
    lines.append(
      "It is generated from ImageNet's validation set: put ILSVRC2012_img_val.tar in a "
      "folder MANUAL, then (with `pip install tensorflow` and the corruption libraries "
      f"listed by tfds) run: {build} --manual_dir=MANUAL"
    )
  lines.append(
    "If it is already prepared as TFRecord, convert it: tfds convert_format "
    f"--dataset_version_dir={version_dir} --out_file_format=array_record. "
    "Pass the folder holding it as data_dir (--data-dir)."
  )
  if base == "cifar10":
    lines.append("Or point --data-dir at an image folder: <root>/{train,test}/<class>/*.jpg")
  return "\n".join(lines)


def _open(name: str, base: str, split: str, data_dir, decoders=None):
  """(tfds data source, builder), raising FileNotFoundError with help when not prepared."""
  import tensorflow_datasets as tfds

  if base == "imagenet2012_corrupted":
    config = name.partition("/")[2]
    configs = corruption_configs()
    if config not in configs:
      raise ValueError(
        f"imagenet2012_corrupted needs a config, 'imagenet2012_corrupted/<config>', "
        f"config one of {configs}; got {name!r}"
      )
  builder = tfds.builder(name, data_dir=data_dir)
  try:
    source = tfds.data_source(
      name, split=_tfds_split(base, split), data_dir=data_dir, download=False, decoders=decoders
    )
  # tfds's errors for data that was never prepared (builder.is_prepared() would also reject
  # tfds.testing.mock_data, which fakes the reads but not the preparation)
  except (NotImplementedError, FileNotFoundError, AssertionError) as err:
    raise FileNotFoundError(_prepare_help(name, base, str(builder.data_dir))) from err
  return source, builder


def _fingerprint(version_dir: str) -> list | None:
  """Names, sizes and mtimes of the prepared files, or None if the folder is not local."""
  path = Path(version_dir)
  if not path.is_dir():
    return None
  return sorted(
    (e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path) if e.is_file()
  )


def _read_all(source) -> tuple[np.ndarray, np.ndarray]:
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(ex["image"], dtype=np.uint8) for ex in examples])
  labels = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
  return images, labels


def _label_feature(builder):
  return builder.info.features["label"]


def load_in_memory(name: str, split: str, *, data_dir=None, cache_dir=None) -> ArraySource:
  """cifar10 / cifar100 split read into memory (cached as .npy after the first read)."""
  source, builder = _open(name, name, split, data_dir)
  fingerprint = _fingerprint(str(builder.data_dir))
  folder = None
  if fingerprint is not None:
    key = cache.digest(str(Path(builder.data_dir).resolve()), split, fingerprint)
    folder = cache.cache_root(cache_dir) / "tfds" / f"{name}-{split}-{key}"
  entry = cache.load_entry(folder) if folder is not None else None
  if entry is not None:
    images, labels = entry[0]["images"], entry[0]["labels"]
  else:
    images, labels = _read_all(source)
    if folder is not None:
      cache.save_entry(folder, {"images": images, "labels": labels}, {"name": name})
  label = _label_feature(builder)
  mean, std = IN_MEMORY[name]
  info = DatasetInfo(
    name=name,
    num_classes=label.num_classes,
    image_shape=images.shape[1:],
    input_shape=images.shape[1:],
    mean=mean,
    std=std,
    augmentation="cifar",
    class_names=tuple(label.names),
  )
  return ArraySource(images, labels, info)


class RandomAccessImageSource:
  """Encoded images read and decoded per batch (ImageNet-sized datasets).

  `records` is any sequence of {"image": encoded bytes, "label": int} (a tfds data
  source opened with `SkipDecoding` for the image); each image is decoded to
  image_size x image_size (shorter side resized, centre crop).
  """

  def __init__(self, records, info: DatasetInfo, image_size: int):
    self.records = records
    self.info = info
    self.image_size = image_size

  def __len__(self) -> int:
    return len(self.records)

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    keys = [int(i) for i in np.asarray(indices)]
    getitems = getattr(self.records, "__getitems__", None)
    examples = getitems(keys) if getitems is not None else [self.records[k] for k in keys]
    images = host_image.decode_many(
      [ex["image"] for ex in examples], lambda b: host_image.decode_image(b, self.image_size)
    )
    labels = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
    return {"image": np.stack(images), "label": labels}

  def __repr__(self) -> str:
    return f"RandomAccessImageSource({self.info.name!r}, n={len(self)}, size={self.image_size})"


def imagenet_info(name: str, num_classes: int, image_size: int, class_names=None) -> DatasetInfo:
  """Info of an ImageNet-like split stored at image_size and fed to the model at <= 224."""
  input_size = min(IMAGENET_INPUT_SIZE, image_size)
  mean, std = IMAGENET_STATS
  return DatasetInfo(
    name=name,
    num_classes=num_classes,
    image_shape=(image_size, image_size, 3),
    input_shape=(input_size, input_size, 3),
    mean=mean,
    std=std,
    augmentation="imagenet",
    class_names=class_names,
  )


def load_random_access(
  name: str, split: str, *, data_dir=None, image_size: int | None = None
) -> RandomAccessImageSource:
  """imagenet2012 or imagenet2012_corrupted/<config> with host decoding per batch."""
  import tensorflow_datasets as tfds

  base = name.partition("/")[0]
  image_size = image_size or RANDOM_ACCESS[base]
  source, builder = _open(
    name, base, split, data_dir, decoders={"image": tfds.decode.SkipDecoding()}
  )
  label = _label_feature(builder)
  info = imagenet_info(name, label.num_classes, image_size, tuple(label.names))
  return RandomAccessImageSource(source, info, image_size)
