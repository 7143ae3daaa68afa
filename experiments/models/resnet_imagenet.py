"""ImageNet ResNet-18/34/50 (He et al. 2016), torchvision's architecture (ResNet v1.5).

Stem: 7x7 conv stride 2 (pad 3) -> BN -> ReLU -> 3x3 max pool stride 2 (pad 1). Four stages of
widths 64/128/256/512 with ``(2,2,2,2)`` basic blocks (ResNet-18), ``(3,4,6,3)`` basic blocks
(ResNet-34) or ``(3,4,6,3)`` bottlenecks of expansion 4 (ResNet-50; the stride sits on the 3x3
conv, "v1.5"). A 1x1 conv + BN projection ("downsample") where the shape changes. Global average
pool and ``fc``. Parameters with 1000 classes: 11,689,512 / 21,797,672 / 25,557,032.

Init (torchvision's): kaiming-normal fan-out convs, BN scale 1 and bias 0 (no zero-init of the
last BN of a block), ``fc`` with PyTorch's ``nn.Linear`` default ``U(+-1/sqrt(fan_in))``.

Parameter paths: ``conv1``, ``bn1``, ``layer{1..4}/<i>/{conv1,bn1,conv2,bn2[,conv3,bn3],
downsample_conv,downsample_bn}``, ``fc``. :data:`DENSE_LAYERS` keeps the stem dense (RigL's
convention for the uniform distribution); whether the paper's ImageNet runs did so is unknown.

Input NHWC ``(N, H, W, 3)``, any H, W >= 32 (224 for ImageNet); output ``(N, num_classes)``.
"""

from __future__ import annotations

import jax
from flax import nnx

from experiments.models import layers

WIDTHS = (64, 128, 256, 512)
DENSE_LAYERS = (r"^conv1/",)


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, in_planes: int, planes: int, stride: int, *, dtype, rngs: nnx.Rngs):
    self.conv1 = layers.conv(
      in_planes, planes, 3, strides=stride, padding=1, dtype=dtype, rngs=rngs
    )
    self.bn1 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv2 = layers.conv(planes, planes, 3, padding=1, dtype=dtype, rngs=rngs)
    self.bn2 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
    self.downsample_conv, self.downsample_bn = _downsample(in_planes, planes, stride, dtype, rngs)

  def __call__(self, x):
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return jax.nn.relu(out + _shortcut(self, x))


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, in_planes: int, planes: int, stride: int, *, dtype, rngs: nnx.Rngs):
    out_planes = planes * self.expansion
    self.conv1 = layers.conv(in_planes, planes, 1, padding=0, dtype=dtype, rngs=rngs)
    self.bn1 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv2 = layers.conv(planes, planes, 3, strides=stride, padding=1, dtype=dtype, rngs=rngs)
    self.bn2 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
    self.conv3 = layers.conv(planes, out_planes, 1, padding=0, dtype=dtype, rngs=rngs)
    self.bn3 = layers.batch_norm(out_planes, dtype=dtype, rngs=rngs)
    self.downsample_conv, self.downsample_bn = _downsample(
      in_planes, out_planes, stride, dtype, rngs
    )

  def __call__(self, x):
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = jax.nn.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return jax.nn.relu(out + _shortcut(self, x))


def _downsample(in_planes, out_planes, stride, dtype, rngs):
  if stride == 1 and in_planes == out_planes:
    return None, None
  return (
    layers.conv(in_planes, out_planes, 1, strides=stride, padding=0, dtype=dtype, rngs=rngs),
    layers.batch_norm(out_planes, dtype=dtype, rngs=rngs),
  )


def _shortcut(block, x):
  if block.downsample_conv is None:
    return x
  return block.downsample_bn(block.downsample_conv(x))


class ResNet(nnx.Module):
  """ImageNet ResNet with ``block`` (BasicBlock or Bottleneck) repeated ``stage_sizes`` times."""

  def __init__(self, block, stage_sizes, *, num_classes: int, dtype=None, rngs: nnx.Rngs):
    self.conv1 = layers.conv(3, 64, 7, strides=2, padding=3, dtype=dtype, rngs=rngs)
    self.bn1 = layers.batch_norm(64, dtype=dtype, rngs=rngs)
    in_planes, stages = 64, []
    for stage, (planes, size) in enumerate(zip(WIDTHS, stage_sizes)):
      blocks = []
      for i in range(size):
        stride = 2 if (stage > 0 and i == 0) else 1
        blocks.append(block(in_planes, planes, stride, dtype=dtype, rngs=rngs))
        in_planes = planes * block.expansion
      stages.append(nnx.List(blocks))
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.fc = layers.linear(in_planes, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x)
    return layers.to_float32(self.fc(layers.global_avg_pool(x)))


def resnet18(*, num_classes: int, dtype=None, rngs: nnx.Rngs) -> ResNet:
  return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, dtype=dtype, rngs=rngs)


def resnet34(*, num_classes: int, dtype=None, rngs: nnx.Rngs) -> ResNet:
  return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, dtype=dtype, rngs=rngs)


def resnet50(*, num_classes: int, dtype=None, rngs: nnx.Rngs) -> ResNet:
  return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, dtype=dtype, rngs=rngs)
