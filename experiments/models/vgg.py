"""VGG-19 for CIFAR in the GraSP/S2-SAM variant (``models/vgg_grasp.py``, ``models/base/vgg.py``).

16 conv layers (3x3, pad 1, **no bias**) each followed by BatchNorm and ReLU, widths
``64 64 M 128 128 M 256x4 M 512x4 M 512x4`` (``M`` = 2x2 max pool, stride 2), then a 2x2
average pool (global average pooling here: the same on the 2x2 map of a 32x32 input) and **one**
``Linear(512, num_classes)``. 20,035,018 parameters for 10 classes (20,024,000 conv + fc weights).

Init (the S2-SAM/GraSP code's): kaiming-normal fan-out convs, ``N(0, 0.01)`` classifier weight,
zero classifier bias, BN scale 1 and bias 0.

Parameter paths: ``convs/<i>`` and ``bns/<i>`` for i = 0..15, ``classifier``. The authors'
profiles keep the first conv and the classifier dense (:data:`DENSE_LAYERS`); the other 15 convs
are sparse.

Input NHWC ``(N, H, W, 3)`` with H, W multiples of 16; output ``(N, num_classes)`` float32.
"""

from __future__ import annotations

import jax
from flax import nnx

from experiments.models import layers

VGG19_CONFIG = (
  64,
  64,
  "M",
  128,
  128,
  "M",
  256,
  256,
  256,
  256,
  "M",
  512,
  512,
  512,
  512,
  "M",
  512,
  512,
  512,
  512,
)

DENSE_LAYERS = (r"^convs/0/", r"^classifier/")


class VGG(nnx.Module):
  """Plain VGG with BatchNorm; ``config`` lists conv widths and ``'M'`` for max pooling."""

  def __init__(self, config=VGG19_CONFIG, *, num_classes: int, dtype=None, rngs: nnx.Rngs):
    convs, bns, pool_after = [], [], []
    in_features = 3
    for item in config:
      if item == "M":
        pool_after[-1] = True
        continue
      convs.append(layers.conv(in_features, item, 3, padding=1, dtype=dtype, rngs=rngs))
      bns.append(layers.batch_norm(item, dtype=dtype, rngs=rngs))
      pool_after.append(False)
      in_features = item
    self.convs = nnx.List(convs)
    self.bns = nnx.List(bns)
    self.pool_after = tuple(pool_after)
    self.classifier = layers.classifier(in_features, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    for conv, bn, pool in zip(self.convs, self.bns, self.pool_after):
      x = jax.nn.relu(bn(conv(x)))
      if pool:
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    return layers.to_float32(self.classifier(layers.global_avg_pool(x)))


def vgg19(*, num_classes: int, dtype=None, rngs: nnx.Rngs) -> VGG:
  return VGG(VGG19_CONFIG, num_classes=num_classes, dtype=dtype, rngs=rngs)
