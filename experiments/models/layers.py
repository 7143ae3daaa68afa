"""Layer factories shared by every model of the zoo: the one place convolutions are built.

Every convolution of every model is made by :func:`conv`, which returns a :class:`Conv` (an
``nnx.Conv``) whose ``conv_general_dilated`` is :func:`conv_general_dilated_impl()`. That function
is the single seam for swapping the convolution primitive (e.g. a faster CPU convolution);
nothing else in the zoo calls ``jax.lax.conv_general_dilated``.

Layouts are Flax's: conv kernels ``(kh, kw, c_in / groups, c_out)``, dense kernels
``(n_in, n_out)``, activations NHWC. So every weight kernel has rank >= 2 and the sparse
library's ``default_prunable`` selects exactly the conv and dense kernels (biases and BatchNorm
parameters are rank 1).

Initialisers (PyTorch names, written with ``jax.nn.initializers``):

* :data:`kaiming_normal_fan_out`: ``N(0, 2 / (kh * kw * c_out))`` (untruncated), PyTorch's
  ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``. For a depthwise kernel
  ``(kh, kw, 1, C)`` the fan-out is ``kh * kw * C``, as in PyTorch.
* :func:`torch_default_kernel_init` / :func:`torch_default_bias_init`: PyTorch's default for
  ``nn.Linear`` and ``nn.Conv2d``: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weight and bias.
* BatchNorm: scale 1, bias 0; ``momentum=0.9`` here is PyTorch's ``momentum=0.1``
  (running = 0.9 * running + 0.1 * batch). One difference from PyTorch: Flax updates the
  running variance with the biased batch variance (PyTorch: unbiased, ``n / (n - 1)``).

``dtype`` is the computation dtype (e.g. ``jnp.bfloat16`` for mixed precision); parameters are
always stored in float32. BatchNorm statistics are computed in at least float32 by Flax.

:class:`Conv` and :class:`Linear` also report their input and output shapes to an active
:func:`record_shapes` context; :mod:`experiments.models.flops` uses it to count multiply-adds.

Example::

    from flax import nnx
    import jax.numpy as jnp
    from experiments.models import layers
    c = layers.conv(3, 16, 3, strides=1, padding=1, rngs=nnx.Rngs(0))
    y = c(jnp.ones((2, 32, 32, 3)))          # (2, 32, 32, 16); c.kernel.shape == (3, 3, 3, 16)
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.models import recording

kaiming_normal_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
torch_default_kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
zeros_init = jax.nn.initializers.zeros
ones_init = jax.nn.initializers.ones


def normal_init(stddev: float):
  """``N(0, stddev^2)`` (untruncated), e.g. ``normal_init(0.01)`` for the GraSP classifiers."""
  return jax.nn.initializers.normal(stddev)


def uniform_init(limit: float):
  """``U(-limit, limit)``."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def torch_default_bias_init(fan_in: int):
  """PyTorch's default bias init for a layer of fan-in ``fan_in``: ``U(+-1/sqrt(fan_in))``."""
  return uniform_init(1.0 / math.sqrt(fan_in))


def conv_general_dilated_impl():
  """The convolution primitive every :func:`conv` uses (the seam for a faster CPU conv).

  Returns :func:`experiments.models.cpu_conv.conv_general_dilated`, a drop-in for
  ``jax.lax.conv_general_dilated`` (same signature and results) that is faster on the CPU
  backend and *is* ``lax.conv_general_dilated`` on GPU/TPU. On CPU it picks its path per conv
  shape (:mod:`experiments.models.conv_paths`; XLA's own where that is the fastest). Opt out
  with the environment variable ``S2SAM_FAST_CPU_CONV=0`` (read when a step is traced).
  """
  from experiments.models import cpu_conv  # pylint: disable=g-import-not-at-top

  return cpu_conv.conv_general_dilated


_SHAPES = recording.Recorder("experiments_models_shape_record")


def record_shapes() -> contextlib.AbstractContextManager[list]:
  """Collects ``(module, input_shape, output_shape)`` for each :class:`Conv`/:class:`Linear` call."""
  return _SHAPES.collect()


def _record(module, inputs, outputs) -> None:
  _SHAPES.add((module, tuple(inputs.shape), tuple(outputs.shape)))


class _ReportsShapes:
  """Mixin for an nnx layer: each call reports its shapes to :func:`record_shapes`."""

  def __call__(self, inputs):
    outputs = super().__call__(inputs)
    _record(self, inputs, outputs)
    return outputs


class Conv(_ReportsShapes, nnx.Conv):
  """``nnx.Conv`` that reports its shapes to :func:`record_shapes`; build it with :func:`conv`."""


class Linear(_ReportsShapes, nnx.Linear):
  """``nnx.Linear`` that reports its shapes to :func:`record_shapes`; build it with :func:`linear`."""


def conv(
  in_features: int,
  out_features: int,
  kernel_size,
  *,
  strides=1,
  padding="SAME",
  feature_group_count: int = 1,
  use_bias: bool = False,
  kernel_init=kaiming_normal_fan_out,
  bias_init=zeros_init,
  dtype=None,
  rngs: nnx.Rngs,
) -> Conv:
  """A convolution with kernel ``(*kernel_size, in_features // groups, out_features)``.

  ``padding`` is anything ``nnx.Conv`` accepts; an int ``p`` pads ``p`` on both sides of every
  spatial dim (PyTorch's ``padding=p``), which differs from ``'SAME'`` for strided convs.
  """
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size, kernel_size)
  return Conv(
    in_features,
    out_features,
    tuple(kernel_size),
    strides=strides,
    padding=padding,
    feature_group_count=feature_group_count,
    conv_general_dilated=conv_general_dilated_impl(),
    **_parameters(use_bias, kernel_init, bias_init, dtype, rngs),
  )


def linear(
  in_features: int,
  out_features: int,
  *,
  use_bias: bool = True,
  kernel_init=torch_default_kernel_init,
  bias_init=None,
  dtype=None,
  rngs: nnx.Rngs,
) -> Linear:
  """A dense layer with kernel ``(in_features, out_features)``.

  Defaults to PyTorch's ``nn.Linear`` init (``bias_init=None`` means ``U(+-1/sqrt(in))``).
  """
  if bias_init is None:
    bias_init = torch_default_bias_init(in_features)
  return Linear(
    in_features, out_features, **_parameters(use_bias, kernel_init, bias_init, dtype, rngs)
  )


def _parameters(use_bias, kernel_init, bias_init, dtype, rngs) -> dict:
  """What :func:`conv` and :func:`linear` give their layer alike: the inits, the computation
  ``dtype``, and float32 parameters whatever it is."""
  return dict(
    use_bias=use_bias,
    kernel_init=kernel_init,
    bias_init=bias_init,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


def classifier(in_features: int, num_classes: int, *, dtype=None, rngs: nnx.Rngs) -> Linear:
  """The CIFAR models' classifier, initialised as GraSP's: ``N(0, 0.01²)`` kernel, zero bias."""
  return linear(
    in_features,
    num_classes,
    kernel_init=normal_init(0.01),
    bias_init=zeros_init,
    dtype=dtype,
    rngs=rngs,
  )


def batch_norm(
  num_features: int,
  *,
  momentum: float = 0.9,
  epsilon: float = 1e-5,
  scale_init=ones_init,
  dtype=None,
  rngs: nnx.Rngs,
) -> nnx.BatchNorm:
  """BatchNorm over the last axis; starts in training mode (batch statistics)."""
  return nnx.BatchNorm(
    num_features,
    momentum=momentum,
    epsilon=epsilon,
    scale_init=scale_init,
    bias_init=zeros_init,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


def global_avg_pool(x):
  """Mean over the spatial dims of an NHWC tensor: ``(N, H, W, C) -> (N, C)``."""
  return jnp.mean(x, axis=(1, 2))


def to_float32(logits):
  """Logits are returned in float32 whatever the computation dtype (stable softmax/loss)."""
  return logits.astype(jnp.float32)
