"""Host-side image decoding with Pillow: file or bytes -> uint8 HWC RGB array.

`decode_image(data, size)` optionally brings an image to a fixed size x size square:
the shorter side is resized to `size` (bilinear, antialiased) and the centre square is
cropped. This is how ImageNet-sized images get the fixed shape that on-device
augmentation needs (see `augment.py`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image


def resize_shorter_center_crop(image: Image.Image, size: int) -> Image.Image:
  """Resizes so that the shorter side is `size`, then crops the centre size x size square."""
  width, height = image.size
  scale = size / min(width, height)
  new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
  if (new_w, new_h) != (width, height):
    image = image.resize((new_w, new_h), Image.BILINEAR)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return image.crop((left, top, left + size, top + size))


def decode_image(data: str | os.PathLike | bytes, size: int | None = None) -> np.ndarray:
  """Decodes a file path or encoded bytes to a uint8 (H, W, 3) RGB array.

  With `size`, returns (size, size, 3) via `resize_shorter_center_crop`; JPEGs are
  decoded at a reduced scale when that still leaves at least `size` pixels per side.
  """
  source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
  with Image.open(source) as image:
    if size is not None and image.format == "JPEG":
      image.draft("RGB", (size, size))
    image = image.convert("RGB")
    if size is not None:
      image = resize_shorter_center_crop(image, size)
    return np.asarray(image, dtype=np.uint8)


def decode_many(
  items: Sequence, decode: Callable[[object], np.ndarray], num_threads: int | None = None
) -> list[np.ndarray]:
  """`[decode(x) for x in items]`, on a thread pool (Pillow releases the GIL while decoding)."""
  num_threads = num_threads or os.cpu_count() or 1
  if num_threads == 1 or len(items) < 64:
    return [decode(x) for x in items]
  with ThreadPoolExecutor(num_threads) as pool:
    return list(pool.map(decode, items, chunksize=256))
