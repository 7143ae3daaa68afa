"""MobileNetV2 for CIFAR (Sandler et al. 2018), in the common CIFAR adaptation.

The CIFAR variant used by sparse-training papers (kuangliu/pytorch-cifar ``MobileNetV2``):
stem 3x3 conv stride **1** to 32 channels; inverted-residual blocks
``(expansion t, out channels c, repeats n, first stride s)`` =
``(1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1)`` (the second
stage's stride is 1 instead of ImageNet's 2); 1x1 conv to 1280; global average pool; linear.
Each block is ``1x1 expand -> BN -> ReLU -> 3x3 depthwise (stride s) -> BN -> ReLU -> 1x1
project -> BN``, plus a residual when the stride is 1: the identity if the widths agree, else a
1x1 conv + BN projection (this projection, absent from ImageNet MobileNetV2, is what makes the
CIFAR variant 2,296,922 parameters for 10 classes). Every block, t = 1 included, has its expand
conv. Activation ReLU (the CIFAR code's choice; ImageNet MobileNetV2 uses ReLU6).

Init (torchvision's MobileNetV2 choice; the CIFAR code uses PyTorch defaults): kaiming-normal
fan-out convs, ``N(0, 0.01)`` classifier weight, zero bias, BN scale 1 and bias 0.

Parameter paths: ``conv1``, ``bn1``, ``layers/<i>/{conv1,bn1,conv2,bn2,conv3,bn3,
shortcut_conv,shortcut_bn}``, ``conv2``, ``bn2``, ``linear``. Depthwise kernels are
``(3, 3, 1, C)``. :data:`DENSE_LAYERS` (stem and classifier dense) is this project's choice by
analogy with the ResNet profiles; the S2-SAM code has no MobileNetV2 profile.

Input NHWC ``(N, H, W, 3)``; output ``(N, num_classes)`` float32.
"""

from __future__ import annotations

import jax
from flax import nnx

from experiments.models import layers

CIFAR_CONFIG = (
  (1, 16, 1, 1),
  (6, 24, 2, 1),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)

DENSE_LAYERS = (r"^conv1/", r"^linear/")


class InvertedResidual(nnx.Module):
  """Expand (1x1) -> depthwise (3x3) -> project (1x1), residual when the stride is 1."""

  def __init__(
    self, in_planes: int, out_planes: int, expansion: int, stride: int, *, dtype, rngs: nnx.Rngs
  ):
    planes = expansion * in_planes
    self.stride = stride
    self.conv1 = layers.conv(in_planes, planes, 1, padding=0, dtype=dtype, rngs=rngs)
    self.bn1 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv2 = layers.conv(
      planes,
      planes,
      3,
      strides=stride,
      padding=1,
      feature_group_count=planes,
      dtype=dtype,
      rngs=rngs,
    )
    self.bn2 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv3 = layers.conv(planes, out_planes, 1, padding=0, dtype=dtype, rngs=rngs)
    self.bn3 = layers.batch_norm(out_planes, dtype=dtype, rngs=rngs)
    shortcut_conv = shortcut_bn = None
    if stride == 1 and in_planes != out_planes:
      shortcut_conv = layers.conv(in_planes, out_planes, 1, padding=0, dtype=dtype, rngs=rngs)
      shortcut_bn = layers.batch_norm(out_planes, dtype=dtype, rngs=rngs)
    self.shortcut_conv, self.shortcut_bn = shortcut_conv, shortcut_bn

  def __call__(self, x):
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = jax.nn.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.stride != 1:
      return out
    if self.shortcut_conv is not None:
      return out + self.shortcut_bn(self.shortcut_conv(x))
    return out + x


class MobileNetV2(nnx.Module):
  """CIFAR MobileNetV2 (see the module docstring)."""

  def __init__(self, config=CIFAR_CONFIG, *, num_classes: int, dtype=None, rngs: nnx.Rngs):
    self.conv1 = layers.conv(3, 32, 3, padding=1, dtype=dtype, rngs=rngs)
    self.bn1 = layers.batch_norm(32, dtype=dtype, rngs=rngs)
    blocks, in_planes = [], 32
    for expansion, out_planes, repeats, first_stride in config:
      for i in range(repeats):
        stride = first_stride if i == 0 else 1
        blocks.append(
          InvertedResidual(in_planes, out_planes, expansion, stride, dtype=dtype, rngs=rngs)
        )
        in_planes = out_planes
    self.layers = nnx.List(blocks)
    self.conv2 = layers.conv(in_planes, 1280, 1, padding=0, dtype=dtype, rngs=rngs)
    self.bn2 = layers.batch_norm(1280, dtype=dtype, rngs=rngs)
    self.linear = layers.classifier(1280, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    for block in self.layers:
      x = block(x)
    x = jax.nn.relu(self.bn2(self.conv2(x)))
    return layers.to_float32(self.linear(layers.global_avg_pool(x)))


def mobilenetv2(*, num_classes: int, dtype=None, rngs: nnx.Rngs) -> MobileNetV2:
  return MobileNetV2(CIFAR_CONFIG, num_classes=num_classes, dtype=dtype, rngs=rngs)
