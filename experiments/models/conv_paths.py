"""Which CPU implementation each convolution of the model zoo takes, chosen per shape.

:func:`experiments.models.cpu_conv.conv_general_dilated` has three paths on the CPU backend.
They compute the same function and the same gradients (up to float rounding):

* ``xla``: ``lax.conv_general_dilated`` and XLA's autodiff, untouched (what
  ``S2SAM_FAST_CPU_CONV=0`` gives every conv).
* ``hlo``: ``cpu_conv``'s custom VJP with its HLO formulations: depthwise forward and input
  gradient as kh*kw multiply-adds and kernel gradient as per-channel sums; 1x1 kernel gradients
  as one matrix product; convs on inputs smaller than the kernel as tap matmuls. Any other part
  is XLA's own, so for a dense kxk conv ``hlo`` is ``xla`` inside a custom VJP.
* ``native``: ``hlo`` with the kernel gradient from the C++ kernels
  (:mod:`experiments.models.native_kernels`; dense, and depthwise with multiplier 1).

:func:`choose` picks one from the convolution's geometry (:class:`Geometry`). Measured on the
zoo's convolutions at the batch sizes they train with, plus sweeps around the crossovers
(forward + backward of one conv, the three paths interleaved in one process; 2-core AMD EPYC
Zen 5, AVX-512, so 16 lanes; jax 0.10.2). The table and the command that rebuilds it:
``experiments/results/conv_paths_shapes.md``; the reasons per case:

1. **Depthwise** (``groups == C_in``): ``native`` (multiplier 1), else ``hlo``. XLA:CPU runs
   these 10-100x slower than the custom path at every size measured (0.01-0.25 of ``xla``,
   down to a 2x4x4x32 conv); the C++ kernel gradient is 2-10x faster than the HLO one.
2. **Input smaller than the kernel** (VGG-19's 2x2 maps under 3x3 kernels): ``native``, else
   ``hlo``: XLA:CPU leaves its fast path there (0.01 of ``xla``).
3. **Other grouped convs**: ``xla`` (no zoo model has one; unmeasured, so XLA's default).
4. **Dense kxk** (including the 1-D convs of MNIST-1D, height 1): ``native`` when all three
   hold, else ``xla`` (``hlo`` would be ``xla`` in a wrapper):

   * no scalar tail: ``O`` is a multiple of half a vector (8 lanes with AVX-512, 4 with AVX2).
     The C++ kernel covers output channels by whole and half vectors; what is left takes scalar
     code, so it lost to XLA at every such ``O`` measured: 12, 20 and 25 (1.07-1.9x slower;
     MNIST-1D's default CNN has 25 channels), and won at 8, 24, 32, 40, 48, 56 and 64 (0.4-0.8
     of ``xla``);
   * at least :data:`MIN_NATIVE_BATCH` (16) images: on fewer, XLA's kernel gradient (a
     convolution over the batch) is fast and the C++ kernel's four batch slices are thin; it
     lost or tied on every such shape measured (N = 2, 4, 8: 1.0-1.9x), and won from N = 16
     (0.8-0.95 on the smallest shapes);
   * at least :data:`MIN_NATIVE_MACS` (2M) multiply-adds (``N*Ho*Wo*kh*kw*C/G*O``): the custom
     call's fixed cost (threads, zeroing, partial sums; tens of microseconds on 2 cores) must
     be earned back. Around 2M the two were not told apart in repeated runs (0.9-1.1; a few
     microseconds either way), below it small convs stay XLA's; from 5.9M on it won (0.8).

5. **1x1 convs**: ``native`` when the conditions of 4. hold and the kernel is not memory bound
   (below); else ``hlo`` from :data:`MIN_HLO_MACS` (1M) multiply-adds on, ``xla`` below.
   ``hlo``'s kernel gradient is one matrix product, 2-4x faster than XLA's from 1M MACs on;
   below (EfficientNet's squeeze-excitation convs on 1x1 maps, tiny maps) the two differed by
   tens of microseconds either way from run to run. ``native`` against ``hlo``: 1.2-1.5x slower
   at 1M MACs, 0.75-1.0 at 2M, 0.6-1.1 above. Memory bound: the C++ kernel streams each image's
   input once per block of output channels (up to 4 vectors); with fewer than
   :data:`MIN_MACS_PER_INPUT_PASS` output channels per block (24 = one vector + half a vector:
   12) and an input image of at least :data:`MIN_CACHE_BOUND_IMAGE` floats (it no longer stays
   in the core's cache between passes), the matrix product wins: MobileNetV2's and
   EfficientNet's 96->24 and 144->24 convs on 32x32 and 56x56 maps, ``hlo`` 1.2-1.5x faster
   than ``native``; on 16x16x144 a tie.

Without the C++ kernels (``S2SAM_NATIVE_CPU_KERNELS=0``, no compiler, float64) ``native`` is
never chosen and the same rule picks between the other two. The rule is per machine in its
constants only; on another CPU rebuild the table and move them if the crossovers moved.

Overrides: ``S2SAM_CPU_CONV_PATH=xla|hlo|native`` (``auto``: this rule) forces one path for
every conv (read at trace time, as ``S2SAM_FAST_CPU_CONV``, which wins: ``0`` is ``xla``
everywhere); ``cpu_conv.conv_general_dilated(..., path=...)`` forces one for a single conv.
:func:`record_choices` collects each conv's geometry and path while a model is traced.

Example::

    from experiments.models import conv_paths
    g = conv_paths.Geometry(128, 1, 19, 25, 1, 3, 25, (1, 2), ((0, 0), (1, 1)), 1)
    conv_paths.choose(g, lanes=16)   # 'xla': MNIST-1D's 25 channels leave a scalar tail
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from experiments.models import recording

PATHS = ("xla", "hlo", "native")
ENV_VAR = "S2SAM_CPU_CONV_PATH"

# Dense kxk and 1x1 convs take the C++ kernel gradient from this many multiply-adds and images
# on (rules 4, 5).
MIN_NATIVE_MACS = 2**21
MIN_NATIVE_BATCH = 16
# 1x1 convs below this many multiply-adds keep XLA's (rule 5).
MIN_HLO_MACS = 2**20
# 1x1 convs: output channels per block of the C++ kernel below which, on input images of at
# least MIN_CACHE_BOUND_IMAGE floats (H*W*C), HLO's matrix product is the faster (rule 5).
MIN_MACS_PER_INPUT_PASS = 16
MIN_CACHE_BOUND_IMAGE = 2**16
# The C++ kernel's widest tile of output channels, in vectors (kMaxVectorsPerRow)
_MAX_VECTORS_PER_BLOCK = {16: 4, 8: 2}


@dataclasses.dataclass(frozen=True)
class Geometry:
  """A 2-D NHWC/HWIO convolution: input ``[n, h, w, c]``, kernel ``[kh, kw, c/groups, o]``."""

  n: int
  h: int
  w: int
  c: int
  kh: int
  kw: int
  o: int
  strides: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]  # explicit ((top, bottom), (left, right))
  groups: int = 1

  @classmethod
  def of(cls, x, w, strides, pads, groups) -> Geometry:
    """From the operands (anything with ``.shape``) and explicit padding."""
    n, h, wd, c = (int(d) for d in x.shape)
    kh, kw, _, o = (int(d) for d in w.shape)
    return cls(
      n,
      h,
      wd,
      c,
      kh,
      kw,
      o,
      tuple(int(s) for s in strides),
      tuple((int(lo), int(hi)) for lo, hi in pads),
      int(groups),
    )

  @property
  def out_hw(self) -> tuple[int, int]:
    (pt, pb), (pl, pr) = self.pads
    sh, sw = self.strides
    return ((self.h + pt + pb - self.kh) // sh + 1, (self.w + pl + pr - self.kw) // sw + 1)

  @property
  def macs(self) -> int:
    """Multiply-adds of the forward pass (each gradient costs about as many)."""
    ho, wo = self.out_hw
    return self.n * ho * wo * self.kh * self.kw * (self.c // self.groups) * self.o

  @property
  def depthwise(self) -> bool:
    return self.groups > 1 and self.c == self.groups

  @property
  def native_applicable(self) -> bool:
    """Whether a C++ kernel computes the kernel gradient (dense, or depthwise multiplier 1)."""
    return self.groups == 1 or (self.depthwise and self.o == self.groups)

  @property
  def kind(self) -> str:
    """``depthwise``, ``grouped``, ``smaller-than-kernel``, ``1x1``, ``1-d`` or ``dense``."""
    if self.depthwise:
      return "depthwise"
    if self.groups > 1:
      return "grouped"
    if self.h < self.kh or self.w < self.kw:
      return "smaller-than-kernel"
    if (self.kh, self.kw) == (1, 1):
      return "1x1"
    if self.h == 1 or self.w == 1:
      return "1-d"
    return "dense"


def output_blocks(o: int, lanes: int) -> tuple[int, bool]:
  """How the C++ kernel covers ``o`` output channels: (blocks, whether a scalar tail is left).

  Blocks of up to 4 (AVX-512; AVX2: 2) whole vectors of ``lanes`` floats, then one half
  vector if at least half a vector is left; what remains is scalar code.
  """
  full, rest = divmod(o, lanes)
  per_block = _MAX_VECTORS_PER_BLOCK.get(lanes, 1)
  half = rest >= lanes // 2
  blocks = -(-full // per_block) + int(half)
  return blocks, rest - (lanes // 2 if half else 0) > 0


def choose(g: Geometry, *, lanes: int | None) -> str:
  """The path (one of :data:`PATHS`) for ``g``; ``lanes``: the C++ kernels' vector width
  (:func:`native_kernels.vector_lanes`), or None where they cannot run this conv (not built,
  switched off, or float64). See the module docstring for the rule and its measurements."""
  native = lanes is not None and g.native_applicable
  if g.depthwise:
    return "native" if native else "hlo"
  if g.groups > 1:
    return "xla"
  if g.h < g.kh or g.w < g.kw:
    return "native" if native else "hlo"
  one_by_one = (g.kh, g.kw) == (1, 1)
  if native:
    blocks, scalar_tail = output_blocks(g.o, lanes)
    native = not scalar_tail and g.n >= MIN_NATIVE_BATCH and g.macs >= MIN_NATIVE_MACS
    if native and one_by_one:
      memory_bound = g.o / blocks < MIN_MACS_PER_INPUT_PASS
      native = not (memory_bound and g.h * g.w * g.c >= MIN_CACHE_BOUND_IMAGE)
  if native:
    return "native"
  return "hlo" if one_by_one and g.macs >= MIN_HLO_MACS else "xla"


def path_override() -> str | None:
  """The path ``S2SAM_CPU_CONV_PATH`` forces, or None (unset or ``auto``: :func:`choose`)."""
  value = os.environ.get(ENV_VAR, "auto").strip().lower()
  if value in ("", "auto"):
    return None
  if value not in PATHS:
    raise ValueError(f"{ENV_VAR} must be auto or one of {', '.join(PATHS)}; got {value!r}")
  return value


_RECORD = recording.Recorder("experiments_conv_paths_record")


def record_choices() -> contextlib.AbstractContextManager[list]:
  """Collects ``(Geometry, path)`` for each CPU-path convolution traced inside the context.

  Convs that never reach the choice (``S2SAM_FAST_CPU_CONV=0``, unsupported layouts) are not
  recorded.
  """
  return _RECORD.collect()


def record(g: Geometry, path: str) -> None:
  """Adds ``(g, path)`` to the active :func:`record_choices` list, if any."""
  _RECORD.add((g, path))
