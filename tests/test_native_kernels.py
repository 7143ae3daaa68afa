"""experiments.models.native_kernels: the C++ convolution kernel gradients (dense, depthwise).

Reference: XLA's autodiff of ``lax.conv_general_dilated`` (an independent implementation),
over random geometries that cover the kernel's register-block tails (channel counts that are
not multiples of the block sizes), strides, asymmetric and oversized padding, 1x1 to 7x7 and
non-square kernels, inputs smaller than the kernel and batches of one (no helper threads).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from experiments.models import native_kernels

DN = ("NHWC", "HWIO", "NHWC")

pytestmark = pytest.mark.skipif(
  not native_kernels.available(), reason="no C++ compiler: tested where CI runs (gcc)"
)


def _reference(x, g, kernel_hw, strides, pads, depthwise=False):
  c = x.shape[3]
  w = jnp.zeros((*kernel_hw, 1 if depthwise else c, g.shape[3]), jnp.float32)
  conv = lambda w: lax.conv_general_dilated(
    x,
    w,
    strides,
    pads,
    dimension_numbers=DN,
    feature_group_count=c if depthwise else 1,
    precision=lax.Precision.HIGHEST,
  )
  return jax.vjp(conv, w)[1](g)[0]


def _case(n, h, w, c, o, kh, kw, sh, sw, pads, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
  ho = (h + pads[0][0] + pads[0][1] - kh) // sh + 1
  wo = (w + pads[1][0] + pads[1][1] - kw) // sw + 1
  g = jnp.asarray(rng.normal(size=(n, ho, wo, o)), jnp.float32)
  return x, g


def _check(n, h, w, c, o, kh, kw, sh, sw, pads, seed=0, depthwise=False):
  x, g = _case(n, h, w, c, c if depthwise else o, kh, kw, sh, sw, pads, seed)
  kernel = (
    native_kernels.depthwise_conv_kernel_grad if depthwise else native_kernels.conv_kernel_grad
  )
  got = jax.jit(kernel, static_argnums=(2, 3, 4))(x, g, (kh, kw), (sh, sw), pads)
  want = _reference(x, g, (kh, kw), (sh, sw), pads, depthwise)
  assert got.shape == want.shape == (kh, kw, 1 if depthwise else c, c if depthwise else o)
  assert got.dtype == jnp.float32
  scale = max(float(jnp.abs(want).max()), 1e-30)
  assert float(jnp.abs(got - want).max()) / scale < 1e-5


@st.composite
def geometries(draw):
  kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
  sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
  pads = tuple((draw(st.integers(0, k + 1)), draw(st.integers(0, k + 1))) for k in (kh, kw))
  h = draw(st.integers(max(1, kh - pads[0][0] - pads[0][1]), 9))
  w = draw(st.integers(max(1, kw - pads[1][0] - pads[1][1]), 9))
  return {
    "n": draw(st.integers(1, 5)),
    "h": h,
    "w": w,
    "c": draw(st.integers(1, 30)),
    "o": draw(st.integers(1, 70)),
    "kh": kh,
    "kw": kw,
    "sh": sh,
    "sw": sw,
    "pads": pads,
  }


@settings(max_examples=40, deadline=None)
@given(geometries())
def test_matches_xla_on_random_geometries(geometry):
  _check(**geometry)


@settings(max_examples=30, deadline=None)
@given(geometries())
def test_depthwise_matches_xla_on_random_geometries(geometry):
  _check(**geometry, depthwise=True)


@pytest.mark.parametrize(
  "n,h,c,k,s",
  [
    (4, 8, 96, 3, 1),  # MobileNetV2: one block of four vectors, then two
    (3, 8, 144, 3, 2),  # two blocks of four vectors and one more, stride 2
    (2, 4, 24, 3, 1),  # a vector and a half vector
    (2, 5, 5, 3, 1),  # scalar channels only
    (2, 9, 40, 5, 2),  # EfficientNet's 5x5, stride 2
    (2, 2, 16, 3, 1),  # input smaller than the kernel
  ],
)
def test_depthwise_matches_xla_on_model_shapes(n, h, c, k, s):
  p = k // 2
  _check(n, h, h, c, c, k, k, s, s, ((p, p), (p, p)), depthwise=True)


def test_depthwise_needs_matching_channels():
  x, g = _case(2, 4, 4, 3, 5, 3, 3, 1, 1, ((1, 1), (1, 1)))
  with pytest.raises(ValueError, match="same channels"):
    native_kernels.depthwise_conv_kernel_grad(x, g, (3, 3), (1, 1), ((1, 1), (1, 1)))


@pytest.mark.parametrize(
  "n,h,c,o,k,s",
  [
    (4, 8, 16, 16, 3, 1),  # CIFAR stage 1 (one block of 16 output lanes)
    (3, 8, 16, 32, 3, 2),  # stride-2 transition
    (2, 4, 64, 64, 3, 1),  # four output vectors, several input-channel blocks
    (2, 4, 25, 80, 3, 1),  # 4 + 1 output vectors, input-channel tail
    (2, 6, 3, 16, 7, 2),  # ImageNet stem
    (2, 2, 8, 24, 3, 1),  # input smaller than the kernel (VGG's last maps)
    (1, 5, 12, 20, 1, 2),  # 1x1 with stride, one image
  ],
)
def test_matches_xla_on_model_shapes(n, h, c, o, k, s):
  p = k // 2
  _check(n, h, h, c, o, k, k, s, s, ((p, p), (p, p)))


def test_bfloat16_inputs_are_computed_in_float32():
  x, g = _case(2, 6, 6, 5, 7, 3, 3, 1, 1, ((1, 1), (1, 1)))
  xb, gb = x.astype(jnp.bfloat16), g.astype(jnp.bfloat16)
  got = native_kernels.conv_kernel_grad(xb, gb, (3, 3), (1, 1), ((1, 1), (1, 1)))
  want = _reference(
    xb.astype(jnp.float32), gb.astype(jnp.float32), (3, 3), (1, 1), ((1, 1), (1, 1))
  )
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_vmap_gives_per_example_gradients():
  pads = ((1, 1), (1, 1))
  x, g = _case(3, 5, 5, 4, 6, 3, 3, 1, 1, pads)
  per_example = jax.vmap(
    lambda x, g: native_kernels.conv_kernel_grad(x[None], g[None], (3, 3), (1, 1), pads)
  )
  got = per_example(x, g)
  want = jnp.stack([_reference(x[i : i + 1], g[i : i + 1], (3, 3), (1, 1), pads) for i in range(3)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_zero_batch_and_zero_cotangent_give_zeros():
  x, g = _case(0, 4, 4, 3, 5, 3, 3, 1, 1, ((1, 1), (1, 1)))
  assert not np.any(native_kernels.conv_kernel_grad(x, g, (3, 3), (1, 1), ((1, 1), (1, 1))))
  x, g = _case(2, 4, 4, 3, 5, 3, 3, 1, 1, ((1, 1), (1, 1)))
  out = native_kernels.conv_kernel_grad(x, jnp.zeros_like(g), (3, 3), (1, 1), ((1, 1), (1, 1)))
  assert not np.any(out) and np.all(np.isfinite(out))


def test_bad_arguments_are_named():
  x, g = _case(2, 4, 4, 3, 5, 3, 3, 1, 1, ((1, 1), (1, 1)))
  with pytest.raises(ValueError, match="same N"):
    native_kernels.conv_kernel_grad(x[:1], g, (3, 3), (1, 1), ((1, 1), (1, 1)))
  with pytest.raises(ValueError, match="4-D"):
    native_kernels.conv_kernel_grad(x[0], g, (3, 3), (1, 1), ((1, 1), (1, 1)))
  with pytest.raises(ValueError, match="strides must be >= 1"):
    native_kernels.conv_kernel_grad(x, g, (3, 3), (0, 1), ((1, 1), (1, 1)))


def test_build_is_cached_per_source_and_machine(tmp_path, monkeypatch):
  """A second build finds the library by its key and does not run the compiler."""
  monkeypatch.setenv("S2SAM_CACHE_DIR", str(tmp_path))
  compiler = native_kernels._compiler()
  first = native_kernels._build(compiler)
  assert first.parent == tmp_path / "native" and first.exists()
  calls = []
  real_run = subprocess.run
  monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw))
  assert native_kernels._build(compiler) == first
  assert all("-o" not in cmd for cmd in calls)  # only `--version` was asked
  assert not [p for p in first.parent.iterdir() if p != first]  # no stray temporaries


_FALLBACK_SCRIPT = """
import warnings
import jax, jax.numpy as jnp
from jax import lax
from experiments.models import cpu_conv, native_kernels
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert not native_kernels.available()
assert any("no C++ compiler" in str(w.message) for w in caught), caught
x, w = jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 4))
conv = lambda f, **kw: (lambda w: f(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw).sum())
# the native path asked for, but no kernel: the HLO formulation
hlo = jax.jit(jax.grad(conv(cpu_conv.conv_general_dilated, path="native"))).lower(w).compile().as_text()
assert native_kernels.TARGET not in hlo
assert jnp.allclose(jax.grad(conv(cpu_conv.conv_general_dilated, path="native"))(w), jax.grad(conv(lax.conv_general_dilated))(w))
print("fallback ok")
"""


def test_without_a_compiler_convs_fall_back_to_xla(tmp_path):
  env = dict(os.environ, PATH=str(tmp_path), S2SAM_CACHE_DIR=str(tmp_path), JAX_PLATFORMS="cpu")
  env.pop("CXX", None)
  out = subprocess.run(
    [sys.executable, "-c", _FALLBACK_SCRIPT],
    env=env,
    capture_output=True,
    text=True,
    check=False,
    cwd=os.path.dirname(os.path.dirname(__file__)),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "fallback ok" in out.stdout


def test_deterministic_whatever_thread_runs_which_images():
  """Bitwise equal on every call: images are summed in a fixed order (resume stays exact)."""
  x, g = _case(64, 8, 8, 16, 16, 3, 3, 1, 1, ((1, 1), (1, 1)))
  f = jax.jit(lambda x, g: native_kernels.conv_kernel_grad(x, g, (3, 3), (1, 1), ((1, 1), (1, 1))))
  first = np.asarray(f(x, g))
  for _ in range(30):
    assert np.array_equal(np.asarray(f(x, g)), first)
