"""Small models for MNIST-1D (Greydanus 2020; the ``mnist1d`` package's ``ConvBase`` and ``MLP``).

Input: ``(N, L)`` float sequences, ``L = 40`` for the default MNIST-1D data.

* ``MNIST1DCNN``: three convs with 25 channels, kernel sizes 5, 3, 3, stride 2 and padding 1
  on both sides, ReLU after each, then flatten and ``linear`` to the classes. For ``L = 40``
  the lengths are 40 -> 19 -> 10 -> 5, so the linear layer sees 125 features; 5,210 params for
  10 classes. The 1-D convs are written as 2-D convs over a height-1 image (kernel
  ``(1, k, c_in, c_out)``) so they share the zoo's 2-D convolution path. Features are
  flattened length-major (NHWC order), not PyTorch's channel-major order: the same model
  class up to a permutation of the linear layer's rows.
* ``mnist1d_cnn64``: the same CNN with 64 channels (28,298 params), the studies' MNIST-1D
  model: at 98% sparsity the 25-channel CNN keeps about 100 of its weights and does not learn
  (chance level in a pilot: one seed, RigL ERK, 1,000 epochs), the 64-channel one keeps about
  560 and does (0.86 test accuracy; dense 0.94).
* ``MNIST1DMLP``: ``Linear(L, 100) -> ReLU -> Linear(100, 100) -> ReLU -> Linear(100, C)``;
  15,210 params for ``L = 40`` and 10 classes.

Init: PyTorch's defaults (the reference code's): weights and biases ``U(+-1/sqrt(fan_in))``.
No BatchNorm, so ``nnx.split(model, nnx.Param, nnx.BatchStat)`` gives an empty batch-stats state.

Parameter paths: ``conv1``, ``conv2``, ``conv3``, ``linear`` (CNN); ``linear1``..``linear3`` (MLP).
"""

from __future__ import annotations

import jax
from flax import nnx

from experiments.models import layers

DENSE_LAYERS = ()


def _conv1d(in_features, out_features, kernel, *, dtype, rngs):
  fan_in = in_features * kernel
  return layers.conv(
    in_features,
    out_features,
    (1, kernel),
    strides=(1, 2),
    padding=((0, 0), (1, 1)),
    use_bias=True,
    kernel_init=layers.torch_default_kernel_init,
    bias_init=layers.torch_default_bias_init(fan_in),
    dtype=dtype,
    rngs=rngs,
  )


def conv_output_length(length: int, kernel: int, stride: int = 2, pad: int = 1) -> int:
  return (length + 2 * pad - kernel) // stride + 1


class MNIST1DCNN(nnx.Module):
  """Three stride-2 1-D convs (25 channels) and a linear classifier."""

  def __init__(
    self,
    *,
    num_classes: int,
    input_length: int = 40,
    channels: int = 25,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    length = input_length
    for kernel in (5, 3, 3):
      length = conv_output_length(length, kernel)
    if length < 1:
      raise ValueError(f"`input_length` must be >= 7; got {input_length}.")
    self.conv1 = _conv1d(1, channels, 5, dtype=dtype, rngs=rngs)
    self.conv2 = _conv1d(channels, channels, 3, dtype=dtype, rngs=rngs)
    self.conv3 = _conv1d(channels, channels, 3, dtype=dtype, rngs=rngs)
    self.linear = layers.linear(channels * length, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    h = x.reshape(x.shape[0], 1, x.shape[-1], 1)  # (N, L) -> NHWC (N, 1, L, 1)
    for conv in (self.conv1, self.conv2, self.conv3):
      h = jax.nn.relu(conv(h))
    return layers.to_float32(self.linear(h.reshape(h.shape[0], -1)))


class MNIST1DMLP(nnx.Module):
  """Two hidden ReLU layers of width 100."""

  def __init__(
    self, *, num_classes: int, input_length: int = 40, hidden: int = 100, dtype=None, rngs: nnx.Rngs
  ):
    self.linear1 = layers.linear(input_length, hidden, dtype=dtype, rngs=rngs)
    self.linear2 = layers.linear(hidden, hidden, dtype=dtype, rngs=rngs)
    self.linear3 = layers.linear(hidden, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    h = jax.nn.relu(self.linear1(x))
    h = jax.nn.relu(self.linear2(h))
    return layers.to_float32(self.linear3(h))


def mnist1d_cnn(*, num_classes: int, dtype=None, rngs: nnx.Rngs, **kw) -> MNIST1DCNN:
  return MNIST1DCNN(num_classes=num_classes, dtype=dtype, rngs=rngs, **kw)


def mnist1d_cnn64(*, num_classes: int, dtype=None, rngs: nnx.Rngs, **kw) -> MNIST1DCNN:
  return MNIST1DCNN(num_classes=num_classes, channels=64, dtype=dtype, rngs=rngs, **kw)


def mnist1d_mlp(*, num_classes: int, dtype=None, rngs: nnx.Rngs, **kw) -> MNIST1DMLP:
  return MNIST1DMLP(num_classes=num_classes, dtype=dtype, rngs=rngs, **kw)
