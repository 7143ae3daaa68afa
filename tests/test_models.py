"""Model zoo: parameter counts vs published figures, forward passes, init, FLOPs, pure train step.

References are independent of the code under test: parameter counts published for each
architecture (torchvision, the S2-SAM/GraSP code and the reference notes), hand-derived MAC
formulas, and NumPy re-derivations of small layers.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import models
from experiments.models import efficientnet, layers, resnet_cifar
from s2sam_jax.sparse.distributions import default_prunable, path_str

IMAGENET = ("resnet18", "resnet34", "resnet50", "efficientnet_b0")

# Published parameter counts (trainable, 10 classes for CIFAR/MNIST-1D, 1000 for ImageNet).
PUBLISHED_PARAMS = {
  "resnet32": 1.86e6,  # S2-SAM / GraSP ResNet-32 (widths 32/64/128)
  "resnet20_classic": 0.27e6,  # He et al. 2016, Table 6
  "resnet32_classic": 0.46e6,
  "resnet56_classic": 0.85e6,
  "vgg19": 20.03e6,  # GraSP VGG-19 (BN, no conv bias, one linear)
  "mobilenetv2": 2.30e6,  # CIFAR MobileNetV2
  "resnet18": 11.69e6,  # torchvision
  "resnet34": 21.80e6,
  "resnet50": 25.50e6,  # the figure (torchvision: 25.56M)
  "efficientnet_b0": 5.30e6,  # torchvision: 5.29M
  "mnist1d_cnn": 5210,  # mnist1d ConvBase: 150 + 1900 + 1900 + 1260
  "mnist1d_cnn64": 28298,  # 384 + 12352 + 12352 + 3210
  "mnist1d_mlp": 15210,  # 4100 + 10100 + 1010
}


def _grasp_resnet_params(depth, num_classes=10):
  """Hand count of the GraSP CIFAR ResNet: 3x3 convs, two 1x1 shortcuts, BN, linear."""
  n = (depth - 2) // 6
  w = (32, 64, 128)
  convs = 27 * w[0]  # stem
  bn = 2 * w[0]
  prev = w[0]
  for c in w:
    convs += 9 * prev * c + (2 * n - 1) * 9 * c * c
    bn += 2 * n * 2 * c
    if prev != c:
      convs += prev * c
      bn += 2 * c
    prev = c
  return convs + bn + w[2] * num_classes + num_classes


def _num_classes(name):
  return 1000 if name in IMAGENET else 10


def _abstract_model(name, **kw):
  return nnx.eval_shape(
    lambda: models.create_model(name, num_classes=_num_classes(name), rngs=nnx.Rngs(0), **kw)
  )


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_param_counts_match_published_figures(name):
  params = nnx.state(_abstract_model(name), nnx.Param)
  count = _count(params)
  if name in PUBLISHED_PARAMS:
    assert abs(count - PUBLISHED_PARAMS[name]) <= 0.01 * PUBLISHED_PARAMS[name], count
  if name in ("resnet20", "resnet32", "resnet56"):
    assert count == _grasp_resnet_params(int(name[6:8]))
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.float32


def test_model_names_complete():
  assert set(models.MODEL_NAMES) == {
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet20_classic",
    "resnet32_classic",
    "resnet56_classic",
    "vgg19",
    "mobilenetv2",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "mnist1d_cnn",
    "mnist1d_cnn64",
    "mnist1d_mlp",
  }
  assert set(models.PAPER_DENSE_LAYERS) == set(models.MODEL_NAMES)


def _kernel_paths(params):
  """path_str -> shape for every rank >= 2 leaf (what default_prunable selects)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {path_str(p): tuple(x.shape) for p, x in flat if default_prunable(p, x)}


@pytest.mark.parametrize("name, expected_sparse", [("resnet32", 1_843_200), ("vgg19", 20_017_152)])
def test_paper_dense_layers_leave_the_reference_prunable_set(name, expected_sparse):
  # The reference notes (sec. 1.1) count the weights the authors' profiles prune.
  kernels = _kernel_paths(nnx.state(_abstract_model(name), nnx.Param))
  patterns = models.paper_dense_layers(name)
  dense = [p for p in kernels if any(re.search(r, p) for r in patterns)]
  sparse = sum(math.prod(s) for p, s in kernels.items() if p not in dense)
  assert sparse == expected_sparse
  expected_dense = 4 if name == "resnet32" else 2  # stem, 2 shortcuts, fc / first conv, fc
  assert len(dense) == expected_dense


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_only_conv_and_dense_kernels_are_rank_2_or_more(name):
  model = _abstract_model(name)
  kernels = _kernel_paths(nnx.state(model, nnx.Param))
  modules = [(path, m) for path, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)]
  expected = {
    models.kernel_path(path): tuple(m.kernel.shape)
    for path, m in modules
    if isinstance(m, (nnx.Conv, nnx.Linear))
  }
  assert kernels == expected
  for _, m in modules:
    if isinstance(m, nnx.Conv):  # every conv comes from the factory, through the seam
      assert isinstance(m, layers.Conv)
      assert m.conv_general_dilated is layers.conv_general_dilated_impl()
      assert m.kernel.shape[-2] * m.feature_group_count == m.in_features


def _host_filled_state(abstract_model, seed=0):
  """He-normal (fan-in) kernels, unit BN scales/variances, zero biases/means, from NumPy."""
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = path_str(path)
    if len(x.shape) >= 2:
      fan_in = math.prod(x.shape[:-1])
      return rng.normal(0.0, math.sqrt(2.0 / fan_in), x.shape).astype(np.float32)
    if re.search(r"(scale|var)$", name):
      return np.ones(x.shape, np.float32)
    return np.zeros(x.shape, np.float32)

  graphdef, state = nnx.split(abstract_model)
  return graphdef, jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(fill(p, x)), state)


def _tiny_input_shape(name):
  if name.startswith("mnist1d"):
    return (3, 40)
  if name in IMAGENET:
    return (2, 32, 32, 3)
  return (2, 16, 16, 3) if name == "vgg19" else (2, 8, 8, 3)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_forward_shape_and_finite(name):
  # Params from the host (init itself is tested below): one XLA compile per model.
  graphdef, state = _host_filled_state(_abstract_model(name))
  x = jax.random.normal(jax.random.key(1), _tiny_input_shape(name))
  logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
  assert logits.shape == (x.shape[0], _num_classes(name))
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert float(jnp.std(logits)) > 0.0


def test_unknown_model_name_lists_available_names():
  with pytest.raises(ValueError, match="resnet32.*mnist1d_mlp"):
    models.create_model("resnet33", num_classes=10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="Unknown model"):
    models.paper_dense_layers("alexnet")
  with pytest.raises(ValueError, match="num_classes"):
    models.create_model("mnist1d_mlp", num_classes=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="depth"):
    resnet_cifar.grasp_resnet(30, num_classes=10, rngs=nnx.Rngs(0))


def test_grasp_resnet32_init_matches_reference():
  model = models.create_model("resnet32", num_classes=10, rngs=nnx.Rngs(0))
  kernel = np.asarray(model.layer3[1].conv1.kernel[...])  # (3, 3, 128, 128)
  np.testing.assert_allclose(kernel.std(), math.sqrt(2.0 / (9 * 128)), rtol=0.02)
  assert abs(kernel.mean()) < 0.01 * kernel.std()
  shortcut = np.asarray(model.layer2[0].shortcut_conv.kernel[...])  # (1, 1, 32, 64), fan_out 64
  np.testing.assert_allclose(shortcut.std(), math.sqrt(2.0 / 64), rtol=0.1)
  np.testing.assert_allclose(np.asarray(model.linear.kernel[...]).std(), 0.01, rtol=0.1)
  np.testing.assert_array_equal(np.asarray(model.linear.bias[...]), 0.0)
  np.testing.assert_array_equal(np.asarray(model.bn1.scale[...]), 1.0)
  np.testing.assert_array_equal(np.asarray(model.layer1[0].bn2.bias[...]), 0.0)


def test_mnist1d_init_is_pytorch_default():
  model = models.create_model("mnist1d_mlp", num_classes=10, rngs=nnx.Rngs(0))
  bound = 1.0 / math.sqrt(100)
  for leaf in (model.linear2.kernel[...], model.linear2.bias[...]):
    leaf = np.asarray(leaf)
    assert np.abs(leaf).max() <= bound
    assert np.abs(leaf).max() > 0.9 * bound  # uniform on the full interval
  np.testing.assert_allclose(
    np.asarray(model.linear2.kernel[...]).std(), bound / math.sqrt(3), rtol=0.05
  )


def _jit_forward(module):
  """Forward of a copy of ``module`` as one jitted function (cheaper than op-by-op)."""
  graphdef, state = nnx.split(module)
  return jax.jit(lambda x: nnx.merge(graphdef, state, copy=True)(x))


def _numpy_conv1d(x, w, b, stride=2, pad=1):
  """x: (N, L, C_in), w: (k, C_in, C_out) -> (N, L_out, C_out), PyTorch semantics."""
  x = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
  k = w.shape[0]
  length = (x.shape[1] - k) // stride + 1
  out = np.stack(
    [np.einsum("nkc,kco->no", x[:, i * stride : i * stride + k], w) for i in range(length)], axis=1
  )
  return out + b


def test_mnist1d_cnn_matches_numpy():
  model = models.create_model("mnist1d_cnn", num_classes=10, rngs=nnx.Rngs(3))
  x = np.asarray(jax.random.normal(jax.random.key(4), (3, 40)), np.float64)
  h = x[:, :, None]
  for conv in (model.conv1, model.conv2, model.conv3):
    w = np.asarray(conv.kernel[...], np.float64)[0]  # (1, k, ci, co) -> (k, ci, co)
    h = np.maximum(_numpy_conv1d(h, w, np.asarray(conv.bias[...], np.float64)), 0.0)
  assert h.shape == (3, 5, 25)
  expected = h.reshape(3, -1) @ np.asarray(model.linear.kernel[...], np.float64) + np.asarray(
    model.linear.bias[...], np.float64
  )
  np.testing.assert_allclose(
    np.asarray(_jit_forward(model)(jnp.asarray(x, jnp.float32))), expected, rtol=1e-4, atol=1e-5
  )


def _numpy_conv3x3(x, w, stride):
  """NHWC conv, kernel (3, 3, ci, co), pad 1 on each side (PyTorch padding=1)."""
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  n, h, wd, _ = x.shape
  ho, wo = (h - 3) // stride + 1, (wd - 3) // stride + 1
  out = np.zeros((n, ho, wo, w.shape[-1]))
  for i in range(3):
    for j in range(3):
      patch = x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
      out += patch @ w[i, j]
  return out


def _numpy_bn_train(x, eps=1e-5):
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + eps)


def test_classic_block_with_option_a_shortcut_matches_numpy():
  block = resnet_cifar.BasicBlock(4, 8, 2, "pad", dtype=None, rngs=nnx.Rngs(5))
  x = np.asarray(jax.random.normal(jax.random.key(6), (2, 6, 6, 4)), np.float64)
  w1 = np.asarray(block.conv1.kernel[...], np.float64)
  w2 = np.asarray(block.conv2.kernel[...], np.float64)
  out = np.maximum(_numpy_bn_train(_numpy_conv3x3(x, w1, 2)), 0.0)
  out = _numpy_bn_train(_numpy_conv3x3(out, w2, 1))
  shortcut = np.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (2, 2)))  # 4 -> 8 channels
  expected = np.maximum(out + shortcut, 0.0)
  np.testing.assert_allclose(
    np.asarray(_jit_forward(block)(jnp.asarray(x, jnp.float32))), expected, rtol=1e-4, atol=1e-4
  )


def _grasp_resnet32_macs():
  """Hand count for a 32x32 input: stem, blocks at 32/16/8 px, strided shortcuts, fc."""
  macs = 32 * 32 * 9 * 3 * 32
  for size, cin, c in ((32, 32, 32), (16, 32, 64), (8, 64, 128)):
    macs += size * size * 9 * (cin * c + 9 * c * c)  # 10 convs per stage
    if cin != c:
      macs += size * size * cin * c  # 1x1 shortcut at the output size
  return macs + 128 * 10


def test_layer_macs_match_hand_counts():
  model = _abstract_model("resnet32")
  macs = models.layer_macs(model, (1, 32, 32, 3))
  assert sum(macs.values()) == _grasp_resnet32_macs()
  assert macs["conv1/kernel"] == 32 * 32 * 27 * 32
  assert macs["layer3/0/shortcut_conv/kernel"] == 8 * 8 * 64 * 128
  assert macs["linear/kernel"] == 1280
  kernels = _kernel_paths(nnx.state(model, nnx.Param))
  assert set(macs) == set(kernels)
  assert sum(models.layer_macs(model, (4, 32, 32, 3)).values()) == 4 * _grasp_resnet32_macs()
  # ResNet-50 at 224 px: 4.09 GMACs (He et al. 2016 quote 3.8e9 "FLOPs" for v1; v1.5: 4.09e9).
  r50 = models.layer_macs(_abstract_model("resnet50"), (1, 224, 224, 3))
  assert abs(sum(r50.values()) - 4.089e9) < 0.001 * 4.089e9
  assert r50["fc/kernel"] == 2048 * 1000


def test_conv_seam_is_used_by_every_convolution(monkeypatch):
  calls = []

  def counting_conv(*args, **kwargs):
    calls.append(args[1].shape)
    return jax.lax.conv_general_dilated(*args, **kwargs)

  monkeypatch.setattr(layers, "conv_general_dilated_impl", lambda: counting_conv)
  graphdef, state = nnx.split(_abstract_model("resnet20"))
  jax.eval_shape(lambda s: nnx.merge(graphdef, s)(jnp.ones((1, 8, 8, 3))), state)
  assert len(calls) == 1 + 9 * 2 + 2  # stem, 2 per block, 2 shortcuts
  assert calls[0] == (3, 3, 3, 32)


def _pure_step(graphdef):
  @jax.jit
  def step(params, batch_stats, x, y):
    def loss_fn(params):
      # copy=True: BatchNorm writes new Variables at this trace level, not the jit-level ones.
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      logits = model(x)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, nnx.state(model, nnx.BatchStat)

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    return params, new_stats, loss

  return step


def test_jitted_pure_train_step_over_split_state():
  graphdef, state = _host_filled_state(_abstract_model("resnet20_classic"))
  model = nnx.merge(graphdef, state)  # a model in training mode
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
  y = jnp.arange(8) % 10
  step = _pure_step(graphdef)
  new_params, new_stats, loss0 = step(params, batch_stats, x, y)
  assert jax.tree.structure(new_params) == jax.tree.structure(params)
  assert jax.tree.structure(new_stats) == jax.tree.structure(batch_stats)

  # Running stats of the stem BN after one step: 0.9 * (0, 1) + 0.1 * batch (mean, biased var).
  stem = _numpy_conv3x3(np.asarray(x, np.float64), np.asarray(model.conv1.kernel[...]), 1)
  np.testing.assert_allclose(
    np.asarray(new_stats["bn1"]["mean"][...]), 0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    np.asarray(new_stats["bn1"]["var"][...]), 0.9 + 0.1 * stem.var(axis=(0, 1, 2)), rtol=1e-4
  )

  params, stats = new_params, new_stats
  for _ in range(3):
    params, stats, loss = step(params, stats, x, y)
  assert float(loss) < float(loss0)
  assert step._cache_size() == 1  # one compile

  # Back into the stateful module; in eval mode BN uses the running statistics, so an
  # example's logits do not depend on the rest of the batch.
  nnx.update(model, params, stats)
  model.eval()
  eval_graphdef, eval_state = nnx.split(model)
  forward = jax.jit(lambda s, x: nnx.merge(eval_graphdef, s)(x))
  other_batch = x.at[1:].set(0.0)
  np.testing.assert_allclose(
    np.asarray(forward(eval_state, x)[0]),
    np.asarray(forward(eval_state, other_batch)[0]),
    rtol=1e-5,
  )


def test_batch_stats_state_is_empty_without_batchnorm():
  model = models.create_model("mnist1d_mlp", num_classes=10, rngs=nnx.Rngs(0))
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  assert jax.tree.leaves(batch_stats) == []
  assert _count(params) == 15210


def test_bfloat16_compute_keeps_float32_params_and_logits():
  x = jax.random.normal(jax.random.key(2), (4, 40))
  f32 = models.create_model("mnist1d_cnn", num_classes=10, rngs=nnx.Rngs(0))
  bf16 = models.create_model("mnist1d_cnn", num_classes=10, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  for leaf in jax.tree.leaves(nnx.state(bf16, nnx.Param)):
    assert leaf.dtype == jnp.float32
  seen = []

  def recording_conv(lhs, rhs, *args, **kwargs):
    seen.append((lhs.dtype, rhs.dtype))
    return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)

  for conv in (bf16.conv1, bf16.conv2, bf16.conv3):
    conv.conv_general_dilated = recording_conv
  out16, out32 = bf16(x), f32(x)
  assert seen == [(jnp.bfloat16, jnp.bfloat16)] * 3
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out16), np.asarray(out32), rtol=0.1, atol=0.05)
  assert not np.array_equal(np.asarray(out16), np.asarray(out32))


def test_efficientnet_stochastic_regularisation_needs_a_key_in_training():
  config = ((1, 3, 1, 8, 1), (6, 3, 2, 8, 2))  # tiny: one residual block
  graphdef, state = _host_filled_state(
    nnx.eval_shape(
      lambda: efficientnet.EfficientNet(
        config, num_classes=5, dropout_rate=0.5, drop_path_rate=0.5, rngs=nnx.Rngs(0)
      )
    )
  )
  model = nnx.merge(graphdef, state)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  assert models.layer_macs(model, x.shape)["classifier/kernel"] == 4 * 32 * 5  # needs no key
  with pytest.raises(ValueError, match="rngs"):
    jax.eval_shape(lambda s: nnx.merge(graphdef, s)(x), state)

  @jax.jit
  def train_forward(state, key):
    return nnx.merge(graphdef, state, copy=True)(x, rngs=nnx.Rngs(dropout=key))

  a, b = train_forward(state, jax.random.key(1)), train_forward(state, jax.random.key(2))
  assert a.shape == (4, 5) and not np.allclose(np.asarray(a), np.asarray(b))
  model.eval()
  graphdef, state = nnx.split(model)
  eval_forward = jax.jit(lambda s: nnx.merge(graphdef, s)(x))
  np.testing.assert_array_equal(np.asarray(eval_forward(state)), np.asarray(eval_forward(state)))
  with pytest.raises(ValueError, match="dropout_rate"):
    efficientnet.EfficientNet(config, num_classes=5, dropout_rate=1.0, rngs=nnx.Rngs(0))
