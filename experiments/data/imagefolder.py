"""Image folders in the common "ImageFolder" layout, decoded once and cached as .npy.

Layout: `<root>/<split>/<class name>/<image>.{jpg,jpeg,png,bmp,gif,webp}`, e.g.
`/path/to/cifar10/{train,test}/airplane/0001.jpg`. Classes are the folder
names sorted with Python's `sorted` (alphabetical for ASCII names); label i is the i-th.
The class list comes from `<root>/train` when it exists, so train and test agree on
labels even if a test folder lacks a class. Within a class, files are in sorted order.

Every image is decoded once with Pillow (RGB) and the split is cached as uint8 arrays
under the cache folder (see `cache.py`), keyed by the split folder's path and every
file's size and modification time: editing, adding or removing an image re-decodes.

Images must share one size unless `image_size` is given, in which case each is resized
(shorter side) and centre-cropped to image_size x image_size.

Normalisation statistics are the per-channel mean and std of the *train* split (of the
split itself when there is no train folder), so train and test are normalised alike.
Augmentation: "cifar" (pad-4 crop + flip) for images of at most 64 pixels a side,
"imagenet" (random-resized-crop to min(224, side)) for larger ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from experiments.data import cache, host_image
from experiments.data.source import ArraySource, DatasetInfo

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SMALL_IMAGE_MAX = 64
IMAGENET_INPUT_SIZE = 224

LAYOUT_HELP = (
  "expected layout: <root>/<split>/<class name>/<image>.jpg (or .png), e.g. "
  "<root>/train/cat/0001.jpg and <root>/test/cat/0001.jpg"
)


def _class_dirs(folder: Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_files(
  split_dir: Path, classes: list[str]
) -> tuple[list[tuple[str, int, int]], list[int]]:
  """[(path relative to split_dir, size, mtime_ns)] and labels, class by class, sorted."""
  files, labels = [], []
  for label, name in enumerate(classes):
    class_dir = split_dir / name
    if not class_dir.is_dir():
      continue
    entries = sorted(
      (
        e
        for e in os.scandir(class_dir)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES)
      ),
      key=lambda e: e.name,
    )
    if not entries:
      raise ValueError(
        f"class folder {class_dir} holds no images "
        f"({', '.join(IMAGE_SUFFIXES)}); remove it or add its images"
      )
    for e in entries:
      stat = e.stat()
      files.append((f"{name}/{e.name}", stat.st_size, stat.st_mtime_ns))
      labels.append(label)
  return files, labels


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
  """Per-channel mean and std of uint8 NHWC images, in [0, 1] units (chunked, float64)."""
  total = np.zeros(images.shape[-1])
  total_sq = np.zeros(images.shape[-1])
  for start in range(0, len(images), 4096):
    chunk = images[start : start + 4096].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    total += chunk.sum(0)
    total_sq += np.square(chunk).sum(0)
  count = images.size // images.shape[-1]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return mean.tolist(), std.tolist()


def _decode_split(split_dir: Path, files, image_size: int | None) -> np.ndarray:
  from tqdm.auto import tqdm

  # a bar for folders that take a while; it clears itself when done
  bar = tqdm(
    total=len(files),
    desc=f"decoding {split_dir}",
    unit="image",
    mininterval=1.0,
    leave=False,
    disable=len(files) < 1000,
  )

  def decode(item):
    path = split_dir / item[0]
    try:
      image = host_image.decode_image(path, image_size)
    except (OSError, SyntaxError, ValueError) as err:  # what Pillow raises
      raise ValueError(f"cannot decode image {path}: {err}") from None
    bar.update(1)
    return image

  try:
    images = host_image.decode_many(files, decode)
  finally:
    bar.close()
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    first = {}
    for (name, _, _), im in zip(files, images):
      first.setdefault(im.shape, name)
    examples = ", ".join(f"{n} {s[1]}x{s[0]}" for s, n in list(first.items())[:3])
    raise ValueError(
      f"images under {split_dir} have different sizes ({examples}); "
      "resize and centre-crop them to N x N with image_size=N "
      "(--image-size N in the training command)"
    )
  return np.stack(images)


def _load_split(
  root: Path,
  split: str,
  classes: list[str],
  image_size: int | None,
  cache_dir,
  *,
  mmap: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict]:
  split_dir = root / split
  extra = sorted(set(_class_dirs(split_dir)) - set(classes))
  if extra:
    raise ValueError(f"{split_dir} has class folders missing from {root / 'train'}: {extra}")
  files, labels = _list_files(split_dir, classes)
  if not files:
    raise FileNotFoundError(f"no images found under {split_dir}; {LAYOUT_HELP}")
  key = cache.digest(str(split_dir.resolve()), image_size, classes, files)
  folder = cache.cache_root(cache_dir) / "imagefolder" / f"{root.name}-{split}-{key}"
  entry = cache.load_entry(folder, mmap=mmap)
  if entry is not None:
    arrays, meta = entry
    return arrays["images"], arrays["labels"], meta
  images = _decode_split(split_dir, files, image_size)
  labels = np.asarray(labels, dtype=np.int32)
  mean, std = _channel_stats(images)
  meta = {"root": str(root), "split": split, "classes": classes, "mean": mean, "std": std}
  cache.save_entry(folder, {"images": images, "labels": labels}, meta)
  if folder.exists():
    size = (images.nbytes + labels.nbytes) / 2**20
    print(f"cached {len(files)} decoded images ({size:.0f} MiB) in {folder}", file=sys.stderr)
  return images, labels, meta


def load_imagefolder(
  root: str | os.PathLike, split: str, *, cache_dir=None, image_size: int | None = None
) -> ArraySource:
  """One split of an image folder as an in-memory uint8 source.

  Example:
    >>> src = load_imagefolder("/path/to/cifar10", "test")  # doctest: +SKIP
    >>> len(src), src.info.class_names[:2], src.info.image_shape  # doctest: +SKIP
    (10000, ('airplane', 'automobile'), (32, 32, 3))
  """
  root = Path(root).expanduser()
  split_dir = root / split
  if not split_dir.is_dir():
    raise FileNotFoundError(f"image folder split not found: {split_dir}; {LAYOUT_HELP}")
  classes = _class_dirs(root / "train") if (root / "train").is_dir() else _class_dirs(split_dir)
  if not classes:
    raise FileNotFoundError(f"no class folders under {split_dir}; {LAYOUT_HELP}")
  images, labels, meta = _load_split(root, split, classes, image_size, cache_dir)
  if split != "train" and (root / "train").is_dir():
    meta = _load_split(root, "train", classes, image_size, cache_dir, mmap=True)[2]
  height, width, channels = images.shape[1:]
  side = min(height, width)
  if max(height, width) <= SMALL_IMAGE_MAX:
    kind, input_shape = "cifar", (height, width, channels)
  else:
    size = min(IMAGENET_INPUT_SIZE, side)
    kind, input_shape = "imagenet", (size, size, channels)
  info = DatasetInfo(
    name=f"imagefolder:{root}",
    num_classes=len(classes),
    image_shape=(height, width, channels),
    input_shape=input_shape,
    mean=tuple(meta["mean"]),
    std=tuple(meta["std"]),
    augmentation=kind,
    class_names=tuple(classes),
  )
  return ArraySource(images, labels, info)
