"""On-device augmentation and normalisation: pure, jittable JAX functions.

Run inside the jitted train step on uint8 NHWC batches:

    images = normalize(augment(key, batch["image"], info.augmentation), info)      # train
    images = normalize(augment(None, batch["image"], info.augmentation,
                               train=False, size=info.input_shape[0]), info)       # eval

Kinds (each example gets its own random draw; the result is a function of the key):
- "cifar": zero-pad 4 pixels on each side, crop a random HxW window (offsets uniform
  in 0..8 per axis), flip horizontally with probability 1/2 (torchvision's
  RandomCrop(32, padding=4) + RandomHorizontalFlip). Eval: identity. dtype is kept.
- "imagenet": random-resized-crop (Szegedy et al. 2015, torchvision's algorithm): area
  fraction s ~ U(0.08, 1), aspect ratio r = exp(U(log 3/4, log 4/3)), crop w = round(
  sqrt(s r HW)), h = round(sqrt(s HW / r)); the first of 10 draws that fits is used,
  else the whole image clipped to the ratio range; its top-left corner is uniform. The
  crop is resized to size x size (bilinear, antialiased) and flipped with probability
  1/2. Eval: the central size x size window (resized if the image is smaller). Returns
  float32 in pixel units. Unlike torchvision (crop, then resize), the resize filter of
  border outputs also weighs the few pixels just outside the window (as Pillow's
  `resize(box=...)` does); inside the window the two agree.
- "none": identity.

`normalize` maps pixels to float32 `(x / pixel_max - mean) / std` per channel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from experiments.data.source import AUGMENTATION_KINDS, DatasetInfo

CIFAR_PADDING = 4
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
IMAGENET_SIZE = 224


def flip_horizontal(images: jax.Array, flips: jax.Array) -> jax.Array:
  """Mirrors example n along the width axis where flips[n] is True. images: (N, H, W, C)."""
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)


def pad_crop_flip(
  images: jax.Array, offsets: jax.Array, flips: jax.Array, padding: int = CIFAR_PADDING
) -> jax.Array:
  """Zero-pads by `padding`, crops each example at its (row, col) offset, then flips.

  Args:
    images: (N, H, W, C).
    offsets: (N, 2) integers in [0, 2 * padding]: top-left corner in the padded image.
    flips: (N,) bool.
  Returns (N, H, W, C) with images' dtype: out[n] = flip?(padded[n, r:r+H, c:c+W]).
  """
  height, width, channels = images.shape[1:]
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  padded = jnp.pad(images, pad)

  def crop(image, offset):
    return lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

  return flip_horizontal(jax.vmap(crop)(padded, offsets), flips)


def cifar_augment(key: jax.Array, images: jax.Array, padding: int = CIFAR_PADDING) -> jax.Array:
  """Random pad-and-crop plus horizontal flip, an independent draw per example."""
  offset_key, flip_key = jax.random.split(key)
  count = images.shape[0]
  offsets = jax.random.randint(offset_key, (count, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (count,))
  return pad_crop_flip(images, offsets, flips, padding)


def sample_crop_box(
  key: jax.Array,
  height: int,
  width: int,
  scale=RRC_SCALE,
  ratio=RRC_RATIO,
  attempts: int = RRC_ATTEMPTS,
) -> jax.Array:
  """One random-resized-crop box (top, left, h, w) as int32, torchvision's algorithm."""
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  area = (
    height * width * jax.random.uniform(area_key, (attempts,), minval=scale[0], maxval=scale[1])
  )
  log_ratio = jax.random.uniform(
    ratio_key, (attempts,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])
  )
  aspect = jnp.exp(log_ratio)
  crop_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  crop_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = jnp.argmax(fits)
  # Fallback when no draw fits: the whole image, clipped to the allowed aspect ratios.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fallback_w, fallback_h = width, round(width / ratio[0])
  elif in_ratio > ratio[1]:
    fallback_w, fallback_h = round(height * ratio[1]), height
  else:
    fallback_w, fallback_h = width, height
  any_fits = fits.any()
  crop_h = jnp.where(any_fits, crop_h[first], fallback_h)
  crop_w = jnp.where(any_fits, crop_w[first], fallback_w)
  top = jnp.floor(jax.random.uniform(top_key) * (height - crop_h + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(left_key) * (width - crop_w + 1)).astype(jnp.int32)
  top = jnp.where(any_fits, top, (height - crop_h) // 2)
  left = jnp.where(any_fits, left, (width - crop_w) // 2)
  return jnp.stack([top, left, crop_h, crop_w]).astype(jnp.int32)


def crop_resize(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
  """Resizes the window box = (top, left, h, w) of an (H, W, C) image to (size, size, C).

  Bilinear with antialiasing (jax.image.scale_and_translate); float32 output.
  """
  top, left, crop_h, crop_w = (box[i].astype(jnp.float32) for i in range(4))
  scale = jnp.stack([size / crop_h, size / crop_w])
  translation = -jnp.stack([top, left]) * scale
  return jax.image.scale_and_translate(
    image.astype(jnp.float32),
    (size, size, image.shape[-1]),
    (0, 1),
    scale,
    translation,
    method="linear",
    antialias=True,
  )


def random_resized_crop(key: jax.Array, images: jax.Array, size: int = IMAGENET_SIZE) -> jax.Array:
  """Random-resized-crop of each example to (size, size) plus a random flip; float32."""
  box_key, flip_key = jax.random.split(key)
  count, height, width = images.shape[:3]
  boxes = jax.vmap(lambda k: sample_crop_box(k, height, width))(jax.random.split(box_key, count))
  crops = jax.vmap(lambda im, box: crop_resize(im, box, size))(images, boxes)
  return flip_horizontal(crops, jax.random.bernoulli(flip_key, 0.5, (count,)))


def center_crop(images: jax.Array, size: int) -> jax.Array:
  """The central size x size window of each example (resized up if the image is smaller)."""
  height, width = images.shape[1:3]
  if height < size or width < size:
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = images[:, top : top + side, left : left + side, :].astype(jnp.float32)
    return jax.image.resize(square, (images.shape[0], size, size, images.shape[-1]), "linear")
  top, left = (height - size) // 2, (width - size) // 2
  return images[:, top : top + size, left : left + size, :]


def augment(
  key: jax.Array | None,
  images: jax.Array,
  kind: str,
  *,
  train: bool = True,
  size: int | None = None,
) -> jax.Array:
  """Augments a batch on device (see the module docstring for each kind).

  Args:
    key: PRNG key (unused, may be None, when train is False or kind is "none").
    images: (N, H, W, C) images (any shape for "none").
    kind: "cifar", "imagenet" or "none" (`DatasetInfo.augmentation`).
    train: random augmentation (True) or the deterministic eval transform.
    size: output side for "imagenet" (default 224; use info.input_shape[0]).

  Example:
    >>> out = augment(jax.random.key(0), jnp.zeros((2, 32, 32, 3), jnp.uint8), "cifar")
    >>> out.shape, out.dtype
    ((2, 32, 32, 3), dtype('uint8'))
  """
  if kind not in AUGMENTATION_KINDS:
    raise ValueError(f"kind must be one of {AUGMENTATION_KINDS}, got {kind!r}")
  if kind == "none":
    return images
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C) for kind {kind!r}, got shape {images.shape}")
  if kind == "cifar":
    return cifar_augment(key, images) if train else images
  size = IMAGENET_SIZE if size is None else size
  return random_resized_crop(key, images, size) if train else center_crop(images, size)


def normalize(images: jax.Array, info: DatasetInfo) -> jax.Array:
  """float32 (images / info.pixel_max - mean) / std, mean and std per channel (last axis)."""
  mean = jnp.asarray(info.mean, jnp.float32)
  std = jnp.asarray(info.std, jnp.float32)
  return (images.astype(jnp.float32) / info.pixel_max - mean) / std
