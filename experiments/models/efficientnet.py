"""EfficientNet-B0 (Tan & Le 2019), torchvision's architecture and init.

Stem 3x3 conv stride 2 -> BN -> SiLU (32 channels); MBConv stages ``(expand t, kernel k,
stride s, out c, repeats n)`` = ``(1,3,1,16,1) (6,3,2,24,2) (6,5,2,40,2) (6,3,2,80,3)
(6,5,1,112,3) (6,5,2,192,4) (6,3,1,320,1)``; 1x1 conv to 1280 -> BN -> SiLU; global average
pool; dropout; ``classifier``. MBConv: ``[1x1 expand -> BN -> SiLU] -> kxk depthwise (stride s,
pad (k-1)//2) -> BN -> SiLU -> squeeze-excitation -> 1x1 project -> BN``, plus the identity when
the stride is 1 and the widths agree (after stochastic depth). Squeeze-excitation: global mean,
1x1 conv (with bias) to ``max(1, block_in // 4)`` channels, SiLU, 1x1 conv (with bias) back,
sigmoid gate. 5,288,548 parameters with 1000 classes. BN eps 1e-5, PyTorch momentum 0.1.

Init (torchvision's): kaiming-normal fan-out convs with zero biases, BN scale 1 and bias 0,
classifier ``U(+-1/sqrt(num_classes))`` with zero bias.

Stochastic regularisation: torchvision trains B0 with ``dropout_rate=0.2`` (classifier) and
``drop_path_rate=0.2`` (stochastic depth, linearly increasing over blocks). They are **off by
default here** so that, like every model of the zoo, the model holds only ``nnx.Param`` and
``nnx.BatchStat`` state and ``logits = model(x)`` is deterministic. To use them, pass the rates
when creating the model and a key when calling in training mode:
``model(x, rngs=nnx.Rngs(dropout=key))``; training mode without ``rngs`` then raises an error.
``model.eval()`` switches them off.

Parameter paths: ``stem_conv``, ``stem_bn``, ``blocks/<i>/{expand_conv,expand_bn,dw_conv,dw_bn,
se_reduce,se_expand,project_conv,project_bn}``, ``head_conv``, ``head_bn``, ``classifier``.
:data:`DENSE_LAYERS` keeps the stem dense (a project choice; no reference profile).

Input NHWC ``(N, H, W, 3)``, H, W >= 32 (224 for ImageNet); output ``(N, num_classes)``.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from experiments.models import layers

B0_CONFIG = (
  (1, 3, 1, 16, 1),
  (6, 3, 2, 24, 2),
  (6, 5, 2, 40, 2),
  (6, 3, 2, 80, 3),
  (6, 5, 1, 112, 3),
  (6, 5, 2, 192, 4),
  (6, 3, 1, 320, 1),
)

DENSE_LAYERS = (r"^stem_conv/",)


class MBConv(nnx.Module):
  """Mobile inverted bottleneck with squeeze-excitation and optional stochastic depth."""

  def __init__(
    self,
    in_planes: int,
    out_planes: int,
    expansion: int,
    kernel: int,
    stride: int,
    drop_path_rate: float,
    *,
    dtype,
    rngs: nnx.Rngs,
  ):
    planes = in_planes * expansion
    squeeze = max(1, in_planes // 4)
    expand_conv = expand_bn = None
    if planes != in_planes:
      expand_conv = layers.conv(in_planes, planes, 1, padding=0, dtype=dtype, rngs=rngs)
      expand_bn = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
    self.expand_conv, self.expand_bn = expand_conv, expand_bn
    self.dw_conv = layers.conv(
      planes,
      planes,
      kernel,
      strides=stride,
      padding=(kernel - 1) // 2,
      feature_group_count=planes,
      dtype=dtype,
      rngs=rngs,
    )
    self.dw_bn = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
    self.se_reduce = layers.conv(
      planes, squeeze, 1, padding=0, use_bias=True, dtype=dtype, rngs=rngs
    )
    self.se_expand = layers.conv(
      squeeze, planes, 1, padding=0, use_bias=True, dtype=dtype, rngs=rngs
    )
    self.project_conv = layers.conv(planes, out_planes, 1, padding=0, dtype=dtype, rngs=rngs)
    self.project_bn = layers.batch_norm(out_planes, dtype=dtype, rngs=rngs)
    self.residual = stride == 1 and in_planes == out_planes
    self.drop_path = nnx.Dropout(drop_path_rate, broadcast_dims=(1, 2, 3))

  def __call__(self, x, rngs=None):
    out = x
    if self.expand_conv is not None:
      out = jax.nn.silu(self.expand_bn(self.expand_conv(out)))
    out = jax.nn.silu(self.dw_bn(self.dw_conv(out)))
    gate = out.mean(axis=(1, 2), keepdims=True)
    gate = jax.nn.sigmoid(self.se_expand(jax.nn.silu(self.se_reduce(gate))))
    out = self.project_bn(self.project_conv(out * gate))
    if self.residual:
      out = self.drop_path(out, rngs=rngs) + x
    return out


class EfficientNet(nnx.Module):
  """EfficientNet with the given MBConv configuration (B0 by default)."""

  def __init__(
    self,
    config=B0_CONFIG,
    *,
    num_classes: int,
    dropout_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    for name, rate in (("dropout_rate", dropout_rate), ("drop_path_rate", drop_path_rate)):
      if not 0.0 <= rate < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1); got {rate}.")
    self.stem_conv = layers.conv(3, 32, 3, strides=2, padding=1, dtype=dtype, rngs=rngs)
    self.stem_bn = layers.batch_norm(32, dtype=dtype, rngs=rngs)
    total = sum(c[-1] for c in config)
    blocks, in_planes = [], 32
    for expansion, kernel, first_stride, out_planes, repeats in config:
      for i in range(repeats):
        rate = drop_path_rate * len(blocks) / total
        blocks.append(
          MBConv(
            in_planes,
            out_planes,
            expansion,
            kernel,
            first_stride if i == 0 else 1,
            rate,
            dtype=dtype,
            rngs=rngs,
          )
        )
        in_planes = out_planes
    self.blocks = nnx.List(blocks)
    head = 4 * in_planes
    self.head_conv = layers.conv(in_planes, head, 1, padding=0, dtype=dtype, rngs=rngs)
    self.head_bn = layers.batch_norm(head, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)
    limit = 1.0 / math.sqrt(num_classes)
    self.classifier = layers.linear(
      head,
      num_classes,
      kernel_init=layers.uniform_init(limit),
      bias_init=layers.zeros_init,
      dtype=dtype,
      rngs=rngs,
    )

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x = jax.nn.silu(self.stem_bn(self.stem_conv(x)))
    for block in self.blocks:
      x = block(x, rngs)
    x = jax.nn.silu(self.head_bn(self.head_conv(x)))
    x = self.dropout(layers.global_avg_pool(x), rngs=rngs)
    return layers.to_float32(self.classifier(x))


def efficientnet_b0(
  *,
  num_classes: int,
  dropout_rate: float = 0.0,
  drop_path_rate: float = 0.0,
  dtype=None,
  rngs: nnx.Rngs,
) -> EfficientNet:
  return EfficientNet(
    B0_CONFIG,
    num_classes=num_classes,
    dropout_rate=dropout_rate,
    drop_path_rate=drop_path_rate,
    dtype=dtype,
    rngs=rngs,
  )
