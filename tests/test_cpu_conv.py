"""experiments.models.cpu_conv: values and gradients equal lax.conv_general_dilated's.

References: ``jax.lax.conv_general_dilated`` and its XLA autodiff (an independent implementation
of the same math), plus one NumPy re-derivation of the depthwise forward. Dispatch is checked on
the jaxpr (the branch picked for a non-CPU platform) and on exported StableHLO for CUDA/TPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export, lax
from jax.extend import core as jex_core

from experiments.models import conv_paths, cpu_conv, native_kernels

DN = ("NHWC", "HWIO", "NHWC")

# (name, kernel, stride, padding, groups, c_in, c_out[, input size])
CASES = [
  ("3x3_s1_same", 3, 1, "SAME", 1, 4, 6),
  ("3x3_s2_same", 3, 2, "SAME", 1, 4, 6),
  ("3x3_s2_valid", 3, 2, "VALID", 1, 4, 6),
  ("3x3_s2_pad1", 3, 2, ((1, 1), (1, 1)), 1, 4, 6),
  ("3x3_s2_asym", 3, 2, ((2, 0), (0, 1)), 1, 4, 6),
  ("1x1_s1", 1, 1, "VALID", 1, 4, 6),
  ("1x1_s2", 1, 2, ((0, 0), (0, 0)), 1, 4, 6),
  ("7x7_s2_stem", 7, 2, ((3, 3), (3, 3)), 1, 3, 5),
  ("depthwise_s1", 3, 1, ((1, 1), (1, 1)), 6, 6, 6),
  ("depthwise_s2", 3, 2, ((1, 1), (1, 1)), 6, 6, 6),
  ("depthwise_mult2_same", 3, 1, "SAME", 4, 4, 8),
  ("grouped_s1", 3, 1, "SAME", 2, 4, 6),
  ("grouped_s2", 3, 2, ((1, 1), (1, 1)), 2, 4, 6),
  ("3x3_on_2x2", 3, 1, ((1, 1), (1, 1)), 1, 4, 6, 2),  # input smaller than the kernel
  ("3x3_on_1x1", 3, 1, ((1, 1), (1, 1)), 1, 4, 6, 1),
  ("3x3_s2_on_2x2_grouped", 3, 2, "SAME", 2, 4, 6, 2),
]


EVERY_CASE = pytest.mark.parametrize(
  "name,k,stride,padding,groups,c_in,c_out,h",
  [c if len(c) == 8 else c + (9,) for c in CASES],
  ids=[c[0] for c in CASES],
)


def _data(k, groups, c_in, c_out, h=9, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(2, h, h, c_in)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, c_in // groups, c_out)), jnp.float32)
  return x, w


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.fixture
def all_taps(monkeypatch):
  """Dense kernels take the tap-matmul gradient too (not only large ones)."""
  monkeypatch.setattr(cpu_conv, "TAP_MATMUL_MIN_CHANNEL_PRODUCT", 0)


@pytest.fixture(params=["native", "hlo"])
def kernel_grad_impl(request, monkeypatch):
  """Every conv on the custom path (not the per-shape choice, which gives these small test
  shapes XLA's conv); kernel gradients from the C++ kernel, or (native kernels off) from HLO."""
  if request.param == "native":
    assert native_kernels.available(), "the C++ kernel must build where tests run"
  monkeypatch.setenv(native_kernels.ENV_VAR, "1" if request.param == "native" else "0")
  monkeypatch.setenv(conv_paths.ENV_VAR, request.param)
  return request.param


@EVERY_CASE
def test_values_and_grads_match_lax(
  all_taps, kernel_grad_impl, name, k, stride, padding, groups, c_in, c_out, h
):
  x, w = _data(k, groups, c_in, c_out, h=h)
  kw = dict(dimension_numbers=DN, feature_group_count=groups)

  def ref(x, w):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, **kw)

  def ours(x, w):
    return cpu_conv.conv_general_dilated(x, w, (stride, stride), padding, **kw)

  y_ref = ref(x, w)
  cot = jnp.asarray(np.random.default_rng(1).normal(size=y_ref.shape), jnp.float32)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * cot)
  dx_ref, dw_ref = jax.grad(loss(ref), argnums=(0, 1))(x, w)
  y = jax.jit(ours)(x, w)
  dx, dw = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
  assert y.shape == y_ref.shape and dx.shape == x.shape and dw.shape == w.shape
  assert _rel_err(y, y_ref) < 1e-5
  assert _rel_err(dx, dx_ref) < 1e-5
  assert _rel_err(dw, dw_ref) < 1e-5


@EVERY_CASE
def test_hessian_vector_products_match_lax(
  all_taps, kernel_grad_impl, name, k, stride, padding, groups, c_in, c_out, h
):
  """Second order, as GraSP and the loss surfaces take it: forward over reverse (``jax.jvp``
  of ``jax.grad``) and reverse over reverse, through the custom gradient (and the C++ one)."""
  x, w = _data(k, groups, c_in, c_out, h=h)
  kw = dict(dimension_numbers=DN, feature_group_count=groups)
  rng = np.random.default_rng(2)
  vx, vw = (jnp.asarray(rng.normal(size=a.shape), jnp.float32) for a in (x, w))

  def hvps(conv):
    loss = lambda x, w: jnp.sum(jnp.tanh(conv(x, w, (stride, stride), padding, **kw)) ** 2)
    grad = jax.grad(loss, argnums=(0, 1))
    forward = jax.jvp(grad, (x, w), (vx, vw))[1]
    reverse = jax.grad(lambda x, w: jnp.vdot(grad(x, w)[1], vw), argnums=(0, 1))(x, w)
    return forward, reverse

  ours = jax.jit(lambda: hvps(cpu_conv.conv_general_dilated))()
  ref = hvps(lax.conv_general_dilated)
  for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    assert _rel_err(got, want) < 1e-4


def _kernel_grad_hlo(k):
  x, w = _data(k, 1, 4, 6)
  f = lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
  return jax.jit(jax.grad(lambda x, w: f(x, w).sum(), argnums=1)).lower(x, w).compile().as_text()


@pytest.mark.parametrize("k", [1, 3])
def test_custom_gradient_is_the_one_used(all_taps, kernel_grad_impl, k):
  """dW is the C++ kernel (a custom call) or HLO matmuls, never an XLA convolution."""
  hlo = _kernel_grad_hlo(k)
  assert "convolution" not in hlo and "conditional" not in hlo
  if kernel_grad_impl == "native":
    assert native_kernels.TARGET in hlo
  else:
    assert native_kernels.TARGET not in hlo and "dot" in hlo


def test_depthwise_forward_matches_numpy():
  x, w = _data(3, 5, 5, 5, h=6)
  out = cpu_conv.conv_general_dilated(
    x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN, feature_group_count=5, fast_cpu=True
  )
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  wn = np.asarray(w, np.float64)
  expect = np.zeros((2, 3, 3, 5))
  for a in range(3):
    for b in range(3):
      patch = xp[:, 2 * a : 2 * a + 3, 2 * b : 2 * b + 3, :]  # (n, 3, 3, c)
      expect[:, a, b, :] = np.einsum("nijc,ijc->nc", patch, wn[:, :, 0, :])
  assert _rel_err(out, expect) < 1e-5


def test_flax_conv_takes_it_and_matches(monkeypatch):
  """Signature compatible with how nnx.Conv calls conv_general_dilated (incl. out_sharding)."""
  monkeypatch.setenv(conv_paths.ENV_VAR, "native")

  def make(fn):
    return nnx.Conv(
      4, 6, (3, 3), strides=2, padding="SAME", rngs=nnx.Rngs(0), conv_general_dilated=fn
    )

  ref, ours = make(lax.conv_general_dilated), make(cpu_conv.conv_general_dilated)
  x, _ = _data(3, 1, 4, 6)

  def loss(model, x):
    return jnp.sum(jnp.sin(model(x)))

  g_ref = nnx.grad(loss)(ref, x)
  g_ours = nnx.jit(nnx.grad(loss))(ours, x)
  assert _rel_err(g_ours["kernel"][...], g_ref["kernel"][...]) < 1e-5
  assert _rel_err(g_ours["bias"][...], g_ref["bias"][...]) < 1e-5


def _primitives(jaxpr):
  """Names of all primitives in ``jaxpr`` and its sub-jaxprs (cond branches, custom_vjp)."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for sub in jex_core.jaxprs_in_params(eqn.params):
      names |= _primitives(sub)
  return names


def _conv_jaxpr(**kw):
  x, w = _data(3, 1, 4, 6)
  f = lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN, **kw)
  return jax.make_jaxpr(f)(x, w).jaxpr


@pytest.mark.parametrize("path", ["native", "hlo"])
def test_dispatch_picks_plain_conv_for_gpu_and_tpu(path):
  (cond,) = [e for e in _conv_jaxpr(path=path).eqns if e.primitive.name == "cond"]
  platforms = cond.params["branches_platforms"]
  branches = cond.params["branches"]

  def branch_for(platform):  # the rule of lax.platform_dependent: named first, else default
    named = [i for i, ps in enumerate(platforms) if ps is not None and platform in ps]
    return branches[named[0] if named else platforms.index(None)].jaxpr

  for platform in ("cuda", "rocm", "tpu"):
    assert _primitives(branch_for(platform)) == {"conv_general_dilated"}
  assert "custom_vjp_call" in _primitives(branch_for("cpu"))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_exported_gradient_for_accelerators_has_only_xla_convs(platform):
  """Lowered for CUDA/TPU, forward and backward are XLA convolutions (no tap matmuls)."""

  def loss(x, w):
    return cpu_conv.conv_general_dilated(
      x, w, (2, 2), "SAME", dimension_numbers=DN, path="native"
    ).sum()

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  specs = (
    jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32),
    jax.ShapeDtypeStruct((1, 1, 4, 6), jnp.float32),
  )
  text = export.export(grad, platforms=[platform])(*specs).mlir_module()
  # the native kernel is a custom call without export compatibility guarantees
  allow_native = [export.DisabledSafetyCheck.custom_call(native_kernels.TARGET)]
  cpu_text = export.export(grad, platforms=["cpu"], disabled_checks=allow_native)(
    *specs
  ).mlir_module()
  assert native_kernels.TARGET in cpu_text  # the kernel gradient is the C++ kernel on CPU ...
  assert native_kernels.TARGET not in text and "dot_general" not in text  # ... never elsewhere
  assert "stablehlo.convolution" in text


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_env_opt_out_gives_plain_conv(monkeypatch, value):
  monkeypatch.setenv(cpu_conv.ENV_VAR, value)
  assert not cpu_conv.fast_cpu_conv_enabled()
  assert _primitives(_conv_jaxpr()) == {"conv_general_dilated"}


def test_argument_opt_out_and_force(monkeypatch):
  monkeypatch.delenv(cpu_conv.ENV_VAR, raising=False)
  assert cpu_conv.fast_cpu_conv_enabled()
  assert _primitives(_conv_jaxpr(fast_cpu=False)) == {"conv_general_dilated"}
  forced = _primitives(_conv_jaxpr(fast_cpu=True))
  assert "custom_vjp_call" in forced and "cond" not in forced


def test_unsupported_configurations_fall_back_to_lax():
  x, w = _data(3, 1, 4, 6)
  dilated = lambda f: f(x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=DN)
  jaxpr = jax.make_jaxpr(lambda: dilated(cpu_conv.conv_general_dilated))().jaxpr
  assert _primitives(jaxpr) == {"conv_general_dilated"}
  nchw = jax.make_jaxpr(
    lambda: cpu_conv.conv_general_dilated(
      x.transpose(0, 3, 1, 2), w, (1, 1), "SAME", dimension_numbers=("NCHW", "HWIO", "NCHW")
    )
  )
  assert "custom_vjp_call" not in _primitives(nchw().jaxpr)
  assert _rel_err(dilated(cpu_conv.conv_general_dilated), dilated(lax.conv_general_dilated)) == 0


@pytest.mark.parametrize("groups,c_in,c_out", [(1, 4, 6), (4, 4, 4)], ids=["dense", "depthwise"])
def test_bfloat16(all_taps, kernel_grad_impl, groups, c_in, c_out):
  x, w = _data(3, groups, c_in, c_out)
  x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  kw = dict(dimension_numbers=DN, feature_group_count=groups)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (2, 2), "SAME", **kw)
  ours = lambda x, w: cpu_conv.conv_general_dilated(x, w, (2, 2), "SAME", **kw)
  y = jax.jit(ours)(x, w)
  assert y.dtype == jnp.bfloat16
  assert _rel_err(y, ref(x, w)) < 2e-2
  loss = lambda f: lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) ** 2)
  got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
  want = jax.grad(loss(ref), argnums=(0, 1))(x, w)
  for a, b in zip(got, want):
    assert a.dtype == jnp.bfloat16
    assert _rel_err(a, b) < 3e-2


def test_float64_keeps_float64_kernel_gradients(kernel_grad_impl):
  """The C++ kernels compute in float32, so float64 convs never take them."""
  with jax.enable_x64(True):
    x, w = (a.astype(jnp.float64) for a in _data(3, 1, 4, 6))
    loss = lambda f: lambda w: jnp.sum(jnp.sin(f(x, w, (1, 1), "SAME", dimension_numbers=DN)))
    grad = jax.jit(jax.grad(loss(cpu_conv.conv_general_dilated)))
    assert native_kernels.TARGET not in grad.lower(w).as_text()
    got, want = grad(w), jax.grad(loss(lax.conv_general_dilated))(w)
    assert got.dtype == jnp.float64
    assert _rel_err(got, want) < 1e-12
