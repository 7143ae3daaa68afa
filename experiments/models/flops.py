"""Dense forward multiply-accumulate counts per weight kernel, from shapes only.

For a convolution with output ``(N, Ho, Wo, C_out)`` and kernel ``(kh, kw, C_in / G, C_out)``:

    MACs = N * Ho * Wo * kh * kw * (C_in / G) * C_out

and for a dense layer with output ``(..., n_out)`` and kernel ``(n_in, n_out)``:

    MACs = prod(leading output dims) * n_in * n_out.

One multiply-accumulate is one MAC. RigL and most sparse-training papers quote "FLOPs" as
``2 * MACs`` for the forward pass and ``3x`` the forward FLOPs for one training step (forward,
input gradient, weight gradient); the sparse estimate scales each layer's count by its density.
BatchNorm, activations, pooling and biases are not counted (they are a few percent at most).

The count traces the model abstractly (``jax.eval_shape``), so it costs no FLOPs itself.

Example::

    from flax import nnx
    from experiments.models import create_model, layer_macs
    model = create_model("resnet32", num_classes=10, rngs=nnx.Rngs(0))
    macs = layer_macs(model, (1, 32, 32, 3))     # {'conv1/kernel': 884736, ...}
    total = sum(macs.values())                   # about 0.28e9 per image
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.models import layers


def kernel_path(module_path) -> str:
  """``'/'``-joined module path plus ``'/kernel'``, e.g. ``'layer1/0/conv1/kernel'``.

  This is ``s2sam_jax.sparse.distributions.path_str`` of the kernel in the params tree
  ``nnx.state(model, nnx.Param)`` without the trailing ``'/value'`` that ``nnx.State``'s
  ``Variable`` nodes add (and exactly ``path_str`` of ``state.to_pure_dict()``).
  """
  return "/".join(str(k) for k in module_path) + "/kernel"


def _macs(module, output_shape) -> int:
  leading = math.prod(output_shape[:-1])
  kernel_shape = module.kernel.shape  # (*window, c_in / groups, c_out) or (n_in, n_out)
  return int(leading * math.prod(kernel_shape))


def layer_macs(model: nnx.Module, input_shape, dtype=jnp.float32) -> dict[str, int]:
  """Dense forward multiply-accumulates of every conv/dense kernel for one input batch.

  Args:
    model: a zoo model (its convs and dense layers come from ``experiments.models.layers``).
    input_shape: the input's shape including the batch dim; pass batch 1 for per-example counts.
    dtype: input dtype for the abstract trace.

  Returns:
    ``{kernel_path: MACs}`` in call order (see :func:`kernel_path` for the key format). A layer
    called several times has its counts summed. The model and its state are not changed.
  """
  graphdef, state = nnx.split(model)
  counts: dict[str, int] = {}

  def trace(state):
    copy = nnx.merge(graphdef, state)
    copy.eval()  # deterministic: no dropout keys needed; shapes are the same in both modes
    paths = {
      id(node): path
      for path, node in nnx.iter_graph(copy)
      if isinstance(node, (layers.Conv, layers.Linear))
    }
    with layers.record_shapes() as records:
      copy(jnp.zeros(input_shape, dtype))
    for module, _, output_shape in records:
      key = kernel_path(paths[id(module)])
      counts[key] = counts.get(key, 0) + _macs(module, output_shape)

  jax.eval_shape(trace, state)
  return counts
