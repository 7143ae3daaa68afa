"""Model zoo (Flax NNX): CIFAR ResNets, VGG-19, MobileNetV2, ImageNet ResNets, EfficientNet-B0, MNIST-1D.

Create a model by name::

    import jax, jax.numpy as jnp
    from flax import nnx
    from experiments.models import create_model
    model = create_model("resnet32", num_classes=10, rngs=nnx.Rngs(0))
    logits = model(jnp.zeros((8, 32, 32, 3)))     # (8, 10) float32

Conventions
  * Inputs are NHWC floats (MNIST-1D models: ``(N, L)``); logits come back in float32.
  * ``dtype`` is the computation dtype (``jnp.bfloat16`` for mixed precision); parameters stay
    float32.
  * A new model is in training mode (BatchNorm uses and updates batch statistics);
    ``model.eval()`` switches to the running averages, ``model.train()`` back.
  * Kernels use Flax's layout, conv ``(kh, kw, c_in / groups, c_out)``, dense ``(n_in, n_out)``,
    so the sparse library's ``default_prunable`` (rank >= 2) selects exactly the conv and dense
    kernels. Every convolution is built by :func:`experiments.models.layers.conv`.
  * Models hold only ``nnx.Param`` and ``nnx.BatchStat`` state, so a jitted training step is a
    pure function over split state::

        graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

        @jax.jit
        def train_step(params, batch_stats, x, y):
          def loss_fn(params):
            model = nnx.merge(graphdef, params, batch_stats, copy=True)  # training mode
            logits = model(x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, nnx.state(model, nnx.BatchStat)        # updated running statistics
          (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
          ...                                                   # optax update of params
          return params, batch_stats, loss

    ``copy=True`` matters: without it the merged BatchNorm reuses the ``Variable`` objects
    that ``jit`` created for ``batch_stats`` and raises ``TraceContextError`` when it updates
    them inside ``jax.grad``. The same holds for any ``nnx.merge`` under a transform nested
    inside ``jit``. Split the model *after* ``model.train()`` / ``model.eval()``: the mode lives in the
    graphdef. For evaluation use ``model.eval()`` then split again (or ``nnx.merge`` and
    ``.eval()`` inside the step).
  * Params paths (``s2sam_jax.sparse.distributions.path_str`` of ``nnx.State``) look like
    ``'layer1/0/conv1/kernel/value'``. :data:`PAPER_DENSE_LAYERS` / :func:`paper_dense_layers`
    give, per model, regexes (``re.search``) of the layers the authors' profiles keep dense;
    pass ``{r: 0.0 for r in paper_dense_layers(name)}`` as the sparsity ``overrides``.
  * :func:`layer_macs` counts dense forward multiply-accumulates per kernel.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

from flax import nnx

from experiments.models import (
  efficientnet,
  mnist1d,
  mobilenetv2,
  resnet_cifar,
  resnet_imagenet,
  vgg,
)
from experiments.models.flops import kernel_path, layer_macs
from experiments.models.layers import conv, conv_general_dilated_impl


def _cifar_resnet(builder, depth):
  def make(*, num_classes, dtype=None, rngs):
    return builder(depth, num_classes=num_classes, dtype=dtype, rngs=rngs)

  return make


_BUILDERS: dict[str, Callable[..., nnx.Module]] = {
  "resnet20": _cifar_resnet(resnet_cifar.grasp_resnet, 20),
  "resnet32": _cifar_resnet(resnet_cifar.grasp_resnet, 32),
  "resnet56": _cifar_resnet(resnet_cifar.grasp_resnet, 56),
  "resnet20_classic": _cifar_resnet(resnet_cifar.classic_resnet, 20),
  "resnet32_classic": _cifar_resnet(resnet_cifar.classic_resnet, 32),
  "resnet56_classic": _cifar_resnet(resnet_cifar.classic_resnet, 56),
  "vgg19": vgg.vgg19,
  "mobilenetv2": mobilenetv2.mobilenetv2,
  "resnet18": resnet_imagenet.resnet18,
  "resnet34": resnet_imagenet.resnet34,
  "resnet50": resnet_imagenet.resnet50,
  "efficientnet_b0": efficientnet.efficientnet_b0,
  "mnist1d_cnn": mnist1d.mnist1d_cnn,
  "mnist1d_cnn64": mnist1d.mnist1d_cnn64,
  "mnist1d_mlp": mnist1d.mnist1d_mlp,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)

# Layers kept dense by the authors' sparse profiles (CIFAR ResNets, VGG-19: S2-SAM/MEST code);
# for the other models a documented project choice (see each model module).
PAPER_DENSE_LAYERS: dict[str, tuple[str, ...]] = {
  **{
    f"resnet{depth}{suffix}": resnet_cifar.DENSE_LAYERS
    for depth in (20, 32, 56)
    for suffix in ("", "_classic")
  },
  "vgg19": vgg.DENSE_LAYERS,
  "mobilenetv2": mobilenetv2.DENSE_LAYERS,
  "resnet18": resnet_imagenet.DENSE_LAYERS,
  "resnet34": resnet_imagenet.DENSE_LAYERS,
  "resnet50": resnet_imagenet.DENSE_LAYERS,
  "efficientnet_b0": efficientnet.DENSE_LAYERS,
  "mnist1d_cnn": mnist1d.DENSE_LAYERS,
  "mnist1d_cnn64": mnist1d.DENSE_LAYERS,
  "mnist1d_mlp": mnist1d.DENSE_LAYERS,
}


def _check_name(name: str) -> None:
  if name not in _BUILDERS:
    raise ValueError(f"Unknown model `name` {name!r}; available: {', '.join(MODEL_NAMES)}.")


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, dtype=None, **kw) -> nnx.Module:
  """Builds the zoo model ``name`` (one of :data:`MODEL_NAMES`).

  Args:
    name: model name, e.g. ``'resnet32'`` (GraSP variant), ``'resnet32_classic'``, ``'vgg19'``.
    num_classes: number of output logits, >= 1.
    rngs: ``nnx.Rngs`` for parameter init (its ``params`` / default stream).
    dtype: computation dtype (``None``: float32; ``jnp.bfloat16`` for mixed precision).
    **kw: model-specific options (EfficientNet-B0: ``dropout_rate``, ``drop_path_rate``;
      MNIST-1D: ``input_length``, ...).

  Raises:
    ValueError: unknown ``name`` (the message lists the available names) or bad ``num_classes``.
  """
  _check_name(name)
  if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
    raise ValueError(f"`num_classes` must be an int >= 1; got {num_classes!r}.")
  return _BUILDERS[name](num_classes=int(num_classes), dtype=dtype, rngs=rngs, **kw)


def paper_dense_layers(name: str) -> tuple[str, ...]:
  """Regexes of the params paths kept dense for model ``name`` (see :data:`PAPER_DENSE_LAYERS`).

  Example:
    >>> paper_dense_layers('resnet32')
    ('^conv1/', '/shortcut_conv/', '^linear/')
  """
  _check_name(name)
  return PAPER_DENSE_LAYERS[name]


__all__ = [
  "MODEL_NAMES",
  "PAPER_DENSE_LAYERS",
  "conv",
  "conv_general_dilated_impl",
  "create_model",
  "kernel_path",
  "layer_macs",
  "paper_dense_layers",
]
