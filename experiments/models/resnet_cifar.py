"""CIFAR ResNets (He et al. 2016, Sec. 4.2): depth = 6n + 2, three stages of n basic blocks.

Two families:

* **GraSP variant** (``resnet20``/``resnet32``/``resnet56``), the model of the S2-SAM, MEST and
  GraSP code (``models/resnet_grasp.py``, ``models/base/resnet.py``): stage widths 32/64/128 and
  1x1-conv + BN projection shortcuts where the shape changes. ResNet-32: 1,860,522 parameters
  (1,855,584 conv + fc weights; 1,843,200 of them in the 30 block convs).
* **Classic** (``resnet{20,32,56}_classic``), He et al.'s CIFAR model: widths 16/32/64 and
  parameter-free "option A" shortcuts (stride-2 subsampling, zero-padded channels), as in the
  widely used re-implementation of the paper (0.27M / 0.46M / 0.85M parameters).

Block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; stem ``relu(bn1(conv1(x)))``
(3x3, stride 1); head: global average pool and ``linear``. Stride 2 in the first block of
stages 2 and 3 (on ``conv1``). 3x3 convs pad 1 on each side, as in PyTorch.

Init (both families, the S2-SAM/GraSP code's): kaiming-normal fan-out convs, ``N(0, 0.01)``
classifier weight, zero biases, BN scale 1 and bias 0.

Parameter paths: ``conv1``, ``bn1``, ``layer{1,2,3}/<i>/{conv1,bn1,conv2,bn2}``,
``layer{2,3}/0/{shortcut_conv,shortcut_bn}`` (GraSP variant only), ``linear``. The authors'
profiles keep the stem conv, the projection shortcuts and the classifier dense
(:data:`DENSE_LAYERS`).

Input NHWC, e.g. ``(N, 32, 32, 3)``; output logits ``(N, num_classes)`` in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.models import layers

GRASP_WIDTHS = (32, 64, 128)
CLASSIC_WIDTHS = (16, 32, 64)

# Regexes (re.search on the params path) of the layers the S2-SAM/MEST profiles keep dense.
DENSE_LAYERS = (r"^conv1/", r"/shortcut_conv/", r"^linear/")


def blocks_per_stage(depth: int) -> int:
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f"`depth` must be 6n + 2 with n >= 1 (20, 32, 56, ...); got {depth}.")
  return (depth - 2) // 6


class BasicBlock(nnx.Module):
  """Two 3x3 conv-BN layers plus a shortcut ('projection', 'pad' (option A) or identity)."""

  def __init__(
    self, in_planes: int, planes: int, stride: int, shortcut: str, *, dtype, rngs: nnx.Rngs
  ):
    self.conv1 = layers.conv(
      in_planes, planes, 3, strides=stride, padding=1, dtype=dtype, rngs=rngs
    )
    self.bn1 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv2 = layers.conv(planes, planes, 3, strides=1, padding=1, dtype=dtype, rngs=rngs)
    self.bn2 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
    self.stride = stride
    shortcut_conv = shortcut_bn = None
    pad_channels = 0
    if stride != 1 or in_planes != planes:
      if shortcut == "projection":
        shortcut_conv = layers.conv(
          in_planes, planes, 1, strides=stride, padding=0, dtype=dtype, rngs=rngs
        )
        shortcut_bn = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
      else:
        pad_channels = planes - in_planes
    self.shortcut_conv, self.shortcut_bn = shortcut_conv, shortcut_bn  # None: no projection
    self.pad_channels = pad_channels

  def _shortcut(self, x):
    if self.shortcut_conv is not None:
      return self.shortcut_bn(self.shortcut_conv(x))
    if self.stride != 1 or self.pad_channels:
      x = x[:, :: self.stride, :: self.stride, :]
      half = self.pad_channels // 2
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (half, self.pad_channels - half)))
    return x

  def __call__(self, x):
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return jax.nn.relu(out + self._shortcut(x))


class CifarResNet(nnx.Module):
  """CIFAR ResNet of depth ``6n + 2`` with the given stage widths and shortcut type."""

  def __init__(
    self,
    depth: int,
    *,
    num_classes: int,
    widths=GRASP_WIDTHS,
    shortcut: str = "projection",
    dtype=None,
    rngs: nnx.Rngs,
  ):
    if shortcut not in ("projection", "pad"):
      raise ValueError(f"`shortcut` must be 'projection' or 'pad'; got {shortcut!r}.")
    n = blocks_per_stage(depth)
    self.conv1 = layers.conv(3, widths[0], 3, padding=1, dtype=dtype, rngs=rngs)
    self.bn1 = layers.batch_norm(widths[0], dtype=dtype, rngs=rngs)
    in_planes = widths[0]
    stages = []
    for stage, planes in enumerate(widths):
      blocks = []
      for i in range(n):
        stride = 2 if (stage > 0 and i == 0) else 1
        blocks.append(BasicBlock(in_planes, planes, stride, shortcut, dtype=dtype, rngs=rngs))
        in_planes = planes
      stages.append(nnx.List(blocks))
    self.layer1, self.layer2, self.layer3 = stages
    self.linear = layers.classifier(widths[-1], num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    for stage in (self.layer1, self.layer2, self.layer3):
      for block in stage:
        x = block(x)
    return layers.to_float32(self.linear(layers.global_avg_pool(x)))


def grasp_resnet(depth: int, *, num_classes: int, dtype=None, rngs: nnx.Rngs) -> CifarResNet:
  """The S2-SAM/GraSP CIFAR ResNet (widths 32/64/128, projection shortcuts)."""
  return CifarResNet(
    depth,
    num_classes=num_classes,
    widths=GRASP_WIDTHS,
    shortcut="projection",
    dtype=dtype,
    rngs=rngs,
  )


def classic_resnet(depth: int, *, num_classes: int, dtype=None, rngs: nnx.Rngs) -> CifarResNet:
  """He et al.'s CIFAR ResNet (widths 16/32/64, option-A zero-padding shortcuts)."""
  return CifarResNet(
    depth, num_classes=num_classes, widths=CLASSIC_WIDTHS, shortcut="pad", dtype=dtype, rngs=rngs
  )
