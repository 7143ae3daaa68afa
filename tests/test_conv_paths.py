"""experiments.models.conv_paths: the per-shape choice of CPU convolution path.

The rule's cases on fixed geometries (the zoo's and the measured crossovers), the overrides,
that the default job's convs compile to exactly what ``S2SAM_FAST_CPU_CONV=0`` gives, and that
the recorded measurements (``experiments/results/conv_paths_shapes.json``) are current with the
rule and back it: on no measured shape is the choice slower than XLA's convolution beyond noise.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.models import conv_paths, cpu_conv, create_model, native_kernels

G = conv_paths.Geometry
SAME3 = ((1, 1), (1, 1))
VALID = ((0, 0), (0, 0))
CONV1D = ((1, 2), ((0, 0), (1, 1)))  # MNIST-1D: kernel (1, k), stride 2, padding 1
RESULTS = os.path.join(
  os.path.dirname(os.path.dirname(__file__)), "experiments", "results", "conv_paths_shapes.json"
)

# (geometry, choice with AVX-512's 16 lanes, choice without the C++ kernels)
CASES = {
  # the default job (MNIST-1D CNN, 25 channels): a scalar tail, or too small: XLA's
  "mnist1d_conv1": (G(128, 1, 40, 1, 1, 5, 25, *CONV1D), "xla", "xla"),
  "mnist1d_conv2": (G(128, 1, 19, 25, 1, 3, 25, *CONV1D), "xla", "xla"),
  "mnist1d_conv3": (G(128, 1, 10, 25, 1, 3, 25, *CONV1D), "xla", "xla"),
  # mnist1d_cnn64: whole vectors; conv1 below MIN_NATIVE_MACS
  "mnist1d64_conv1": (G(128, 1, 40, 1, 1, 5, 64, *CONV1D), "xla", "xla"),
  "mnist1d64_conv2": (G(128, 1, 19, 64, 1, 3, 64, *CONV1D), "native", "xla"),
  "mnist1d64_conv3": (G(128, 1, 10, 64, 1, 3, 64, *CONV1D), "native", "xla"),
  "conv1d_2m": (G(16, 1, 20, 64, 1, 3, 64, *CONV1D), "xla", "xla"),
  "resnet_3x3": (G(64, 32, 32, 32, 3, 3, 32, (1, 1), SAME3), "native", "xla"),
  "resnet_stem_3ch": (G(64, 32, 32, 3, 3, 3, 16, (1, 1), SAME3), "native", "xla"),
  "half_vector_o24": (G(64, 16, 16, 32, 3, 3, 24, (1, 1), SAME3), "native", "xla"),
  "half_vector_o8": (G(64, 16, 16, 32, 3, 3, 8, (1, 1), SAME3), "native", "xla"),
  "scalar_tail_o12": (G(64, 16, 16, 32, 3, 3, 12, (1, 1), SAME3), "xla", "xla"),
  "scalar_tail_o20": (G(64, 16, 16, 32, 3, 3, 20, (1, 1), SAME3), "xla", "xla"),
  "tiny_3x3": (G(16, 4, 4, 8, 3, 3, 32, (1, 1), SAME3), "xla", "xla"),
  "few_images": (G(8, 8, 8, 32, 3, 3, 32, (1, 1), SAME3), "xla", "xla"),
  "vgg_2x2_maps": (G(64, 2, 2, 512, 3, 3, 512, (1, 1), SAME3), "native", "hlo"),
  "depthwise": (G(64, 32, 32, 96, 3, 3, 96, (1, 1), SAME3, 96), "native", "hlo"),
  "tiny_depthwise": (G(2, 4, 4, 32, 3, 3, 32, (1, 1), SAME3, 32), "native", "hlo"),
  "depthwise_multiplier_2": (G(8, 8, 8, 4, 3, 3, 8, (1, 1), SAME3, 4), "hlo", "hlo"),
  "grouped": (G(8, 8, 8, 8, 3, 3, 8, (1, 1), SAME3, 2), "xla", "xla"),
  "1x1_projection": (G(64, 32, 32, 32, 1, 1, 64, (2, 2), VALID), "native", "hlo"),
  "1x1_o24_small_input": (G(64, 32, 32, 16, 1, 1, 24, (1, 1), VALID), "native", "hlo"),
  "1x1_o24_cache_bound": (G(64, 32, 32, 144, 1, 1, 24, (1, 1), VALID), "hlo", "hlo"),
  "1x1_o40": (G(16, 28, 28, 144, 1, 1, 40, (1, 1), VALID), "native", "hlo"),
  "1x1_below_native": (G(128, 4, 4, 16, 1, 1, 32, (1, 1), VALID), "hlo", "hlo"),
  "1x1_from_native": (G(16, 16, 16, 16, 1, 1, 32, (1, 1), VALID), "native", "hlo"),
  "1x1_tiny": (G(16, 8, 8, 16, 1, 1, 32, (1, 1), VALID), "xla", "xla"),
  "1x1_squeeze_excitation": (G(16, 1, 1, 240, 1, 1, 10, (1, 1), VALID), "xla", "xla"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_choice_per_case(name):
  g, with_native, without = CASES[name]
  assert conv_paths.choose(g, lanes=16) == with_native
  assert conv_paths.choose(g, lanes=None) == without


def test_avx2_lanes_move_the_tail():
  """With 8 lanes, 12 output channels are a whole and a half vector: no scalar tail."""
  g = CASES["scalar_tail_o12"][0]
  assert conv_paths.choose(g, lanes=8) == "native"
  assert conv_paths.choose(CASES["mnist1d_conv2"][0], lanes=8) == "xla"  # 25 still has one


@pytest.mark.parametrize(
  "o,lanes,blocks,tail",
  [(8, 16, 1, False), (16, 16, 1, False), (24, 16, 2, False), (25, 16, 2, True), (12, 16, 1, True),
   (20, 16, 1, True), (64, 16, 1, False), (96, 16, 2, False), (12, 8, 2, False), (64, 8, 4, False)],
)  # fmt: skip
def test_output_blocks(o, lanes, blocks, tail):
  assert conv_paths.output_blocks(o, lanes) == (blocks, tail)


def test_geometry_of_operands():
  g = conv_paths.Geometry.of(jnp.zeros((2, 9, 7, 4)), jnp.zeros((3, 1, 2, 6)), (2, 1), SAME3, 2)
  assert g == G(2, 9, 7, 4, 3, 1, 6, (2, 1), SAME3, 2)
  assert g.out_hw == (5, 9) and g.macs == 2 * 5 * 9 * 3 * 1 * 2 * 6 and g.kind == "grouped"


def _mnist1d_step_jaxpr():
  model = create_model("mnist1d_cnn", num_classes=10, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  x = jnp.zeros((128, 40))

  def loss(p):
    return nnx.merge(graphdef, p)(x).sum()

  return str(jax.make_jaxpr(jax.grad(loss))(params))


def test_default_job_compiles_to_xlas_convolution(monkeypatch):
  """The default job's model at its batch size: the same program as S2SAM_FAST_CPU_CONV=0."""
  monkeypatch.delenv(conv_paths.ENV_VAR, raising=False)
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  auto = _mnist1d_step_jaxpr()
  monkeypatch.setenv(cpu_conv.ENV_VAR, "0")
  assert auto == _mnist1d_step_jaxpr()
  assert "custom_vjp" not in auto and "conv_general_dilated" in auto


def _jaxpr(g, **kw):
  x = jnp.zeros((g.n, g.h, g.w, g.c))
  w = jnp.zeros((g.kh, g.kw, g.c // g.groups, g.o))
  f = lambda x, w: cpu_conv.conv_general_dilated(
    x, w, g.strides, g.pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=g.groups, **kw,
  )  # fmt: skip
  return str(jax.make_jaxpr(f)(x, w))


def test_overrides(monkeypatch):
  g = CASES["resnet_3x3"][0]
  monkeypatch.delenv(conv_paths.ENV_VAR, raising=False)
  with conv_paths.record_choices() as records:
    assert "custom_vjp" in _jaxpr(g)
    assert "custom_vjp" not in _jaxpr(g, path="xla")
    assert "custom_vjp" in _jaxpr(CASES["mnist1d_conv2"][0], path="native")
  assert [p for _, p in records] == ["native", "xla", "native"]
  assert records[0][0] == g
  monkeypatch.setenv(conv_paths.ENV_VAR, "xla")
  assert "custom_vjp" not in _jaxpr(g)
  monkeypatch.setenv(conv_paths.ENV_VAR, "fast")
  with pytest.raises(ValueError, match="S2SAM_CPU_CONV_PATH"):
    _jaxpr(g)
  monkeypatch.setenv(conv_paths.ENV_VAR, "auto")
  with pytest.raises(ValueError, match="path"):
    _jaxpr(g, path="fast")


def test_without_native_kernels_never_native(monkeypatch):
  monkeypatch.delenv(conv_paths.ENV_VAR, raising=False)
  monkeypatch.setenv(native_kernels.ENV_VAR, "0")
  with conv_paths.record_choices() as records:
    for name in ("resnet_3x3", "depthwise", "1x1_projection"):
      _jaxpr(CASES[name][0])
  assert [p for _, p in records] == ["xla", "hlo", "hlo"]


def test_vector_lanes_of_the_build():
  assert native_kernels.vector_lanes() in (8, 16)


def _rows():
  with open(RESULTS) as f:
    return json.load(f)["rows"]


def test_recorded_table_is_current_with_the_rule():
  """Every measured shape's recorded choice is what the rule picks now (rebuild the table,
  with the command at its top, whenever the rule or its constants move)."""
  for row in _rows():
    g = row["geometry"]
    geom = G(
      g["n"], g["h"], g["w"], g["c"], g["kh"], g["kw"], g["o"], tuple(g["strides"]),
      tuple(tuple(p) for p in g["pads"]), g["groups"],
    )  # fmt: skip
    lanes = 16 if "native" in row["times"] else None
    assert conv_paths.choose(geom, lanes=lanes) == row["choice"], g


def test_recorded_choice_never_slower_than_xla_beyond_noise():
  """On every measured shape the chosen path is faster than XLA's convolution or not told
  apart from it: its lower quartile is at most XLA's upper quartile."""
  for row in _rows():
    t = row["times"]
    chosen, xla = t[row["choice"]], t["xla"]
    assert chosen["q1_s"] <= xla["q3_s"], (row["geometry"], chosen, xla)
    assert row["max_rel_diff_vs_xla"] < 1e-4


def test_recorded_choice_keeps_the_big_wins():
  """Depthwise convs and convs on maps smaller than the kernel: the custom paths' 10-100x."""
  big = [r for r in _rows() if r["kind"] in ("depthwise", "smaller-than-kernel")]
  assert big
  assert max(r["choice_over_xla"] for r in big) < 0.5
  assert np.median([r["choice_over_xla"] for r in _rows() if r["kind"] == "1x1"]) < 0.6
