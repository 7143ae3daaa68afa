"""The CIFAR zoo's architectures in PyTorch (NCHW), for ``experiments.bench_cpu_conv``.

Imports torch at import time: import this module only where torch is installed (the
``bench`` extra).
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from experiments.models import mobilenetv2, resnet_cifar, vgg


def conv_bn(cin, cout, k, stride=1, groups=1):
  return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
  def __init__(self, cin, cout, stride, shortcut):
    super().__init__()
    self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride)
    self.conv2, self.bn2 = conv_bn(cout, cout, 3)
    self.proj = None
    self.pad = 0
    self.stride = stride
    if stride != 1 or cin != cout:
      if shortcut == "projection":
        self.proj = nn.Sequential(*conv_bn(cin, cout, 1, stride))
      else:
        self.pad = cout - cin

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.proj is not None:
      sc = self.proj(x)
    elif self.stride != 1 or self.pad:
      half = self.pad // 2
      sc = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, half, self.pad - half))
    else:
      sc = x
    return F.relu(out + sc)


class ResNet(nn.Module):
  def __init__(self, depth, widths, shortcut, num_classes):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1, self.bn1 = conv_bn(3, widths[0], 3)
    blocks, cin = [], widths[0]
    for stage, w in enumerate(widths):
      for i in range(n):
        blocks.append(BasicBlock(cin, w, 2 if (stage > 0 and i == 0) else 1, shortcut))
        cin = w
    self.blocks = nn.Sequential(*blocks)
    self.linear = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.blocks(F.relu(self.bn1(self.conv1(x))))
    return self.linear(x.mean((2, 3)))


class VGG(nn.Module):
  def __init__(self, config, num_classes):
    super().__init__()
    mods, cin = [], 3
    for item in config:
      if item == "M":
        mods.append(nn.MaxPool2d(2, 2))
      else:
        mods += conv_bn(cin, item, 3) + [nn.ReLU()]
        cin = item
    self.features = nn.Sequential(*mods)
    self.classifier = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.classifier(self.features(x).mean((2, 3)))


class InvertedResidual(nn.Module):
  def __init__(self, cin, cout, expansion, stride):
    super().__init__()
    planes = expansion * cin
    self.stride = stride
    self.conv1, self.bn1 = conv_bn(cin, planes, 1)
    self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride, groups=planes)
    self.conv3, self.bn3 = conv_bn(planes, cout, 1)
    self.proj = None
    if stride == 1 and cin != cout:
      self.proj = nn.Sequential(*conv_bn(cin, cout, 1))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.stride != 1:
      return out
    return out + (x if self.proj is None else self.proj(x))


class MobileNetV2(nn.Module):
  def __init__(self, config, num_classes):
    super().__init__()
    self.conv1, self.bn1 = conv_bn(3, 32, 3)
    blocks, cin = [], 32
    for expansion, cout, repeats, first_stride in config:
      for i in range(repeats):
        blocks.append(InvertedResidual(cin, cout, expansion, first_stride if i == 0 else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.conv2, self.bn2 = conv_bn(cin, 1280, 1)
    self.linear = nn.Linear(1280, num_classes)

  def forward(self, x):
    x = self.blocks(F.relu(self.bn1(self.conv1(x))))
    x = F.relu(self.bn2(self.conv2(x)))
    return self.linear(x.mean((2, 3)))


def create(zoo: str, num_classes: int = 10) -> nn.Module:
  """The PyTorch twin of the model-zoo model ``zoo``."""
  if zoo.startswith("resnet"):
    depth = int(zoo[len("resnet") :].split("_")[0])
    if zoo.endswith("_classic"):
      return ResNet(depth, resnet_cifar.CLASSIC_WIDTHS, "pad", num_classes)
    return ResNet(depth, resnet_cifar.GRASP_WIDTHS, "projection", num_classes)
  if zoo == "vgg19":
    return VGG(vgg.VGG19_CONFIG, num_classes)
  if zoo == "mobilenetv2":
    return MobileNetV2(mobilenetv2.CIFAR_CONFIG, num_classes)
  raise ValueError(f"no torch model for {zoo!r}")
