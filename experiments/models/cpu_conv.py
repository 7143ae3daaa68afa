"""A 2-D convolution whose backward pass (and depthwise forward) is fast on XLA:CPU.

``conv_general_dilated`` is a drop-in replacement for ``jax.lax.conv_general_dilated`` with the
signature ``flax.nnx.Conv`` calls (``out_sharding`` included). It computes the same function and
the same gradients; on the CPU backend each convolution takes one of three paths, picked per
shape by :func:`experiments.models.conv_paths.choose` (the rule, its measured crossover points
and the table behind them are documented there):

* ``xla``: plain ``lax.conv_general_dilated`` (small convs, 1-D and dense convs whose output
  channels leave the C++ kernel a scalar tail, e.g. the default MNIST-1D CNN's 25 channels).
* ``hlo``: the custom VJP below with HLO formulations;
* ``native``: the same custom VJP with C++ kernel gradients.

The custom VJP computes, per kind of convolution:

* depthwise (``feature_group_count == C_in``, kernel ``(kh, kw, 1, C_out)``): XLA:CPU runs
  these 20-40x slower than a dense conv of the same size (forward, input and kernel gradient). Here the
  forward and the input gradient are kh*kw fused multiply-adds of shifted slices, and the kernel
  gradient a per-channel weighted sum per kernel offset.
* dense kernel gradients (``feature_group_count == 1``, any kernel size and stride), ``native``
  path: a C++ kernel, :func:`experiments.models.native_kernels.conv_kernel_grad`, that
  accumulates each tile of ``dw`` in vector registers while streaming over the images, 3-5x
  faster than XLA:CPU on CIFAR ResNet shapes, which computes this gradient as a convolution
  over the batch after transposing both operands. Depthwise kernel gradients (multiplier 1)
  likewise (``depthwise_conv_kernel_grad``). Built on first use when a C++ compiler is present,
  unless ``S2SAM_NATIVE_CPU_KERNELS=0``; otherwise the HLO formulations below.
* 1x1 kernels, ``hlo`` path: the kernel gradient is one matrix product ``X^T @ g`` (XLA's own is
  2-4x slower).
* inputs smaller than the kernel (VGG-19's 2x2 maps under 3x3 kernels): XLA:CPU falls off its
  fast path there (~100x slower, 0.75 s for one 64x2x2x512 conv); forward and input gradient
  (and, on the ``hlo`` path, the kernel gradient) are kh*kw matrix products over kernel
  offsets (offsets that only see padding skipped).
* everything else (dense kxk forward and input gradient; on the ``hlo`` path, the dense kxk
  kernel gradient) is XLA's own: tap matmuls for the dense kernel gradient measured about
  break-even with XLA's (see ``TAP_MATMUL_MIN_CHANNEL_PRODUCT``, off by default).

The math, for ``y = conv(x, w)`` with input ``x: [N, H, W, C]``, kernel ``w: [KH, KW, C/G, O]``,
``G`` feature groups, stride ``s``, padding ``p`` and output cotangent ``g: [N, Ho, Wo, O]``.
Let ``xp`` be ``x`` zero-padded by ``p`` and ``X_ij = xp[:, i::s, j::s, :][:, :Ho, :Wo]`` the
input seen by kernel offset ``(i, j)``, flattened to ``[M, C]`` with ``M = N*Ho*Wo``:

    y           = sum_ij X_ij @ w[i, j]                          (per group)
    dL/dw[i, j] = X_ij^T @ g                                     (per group; [C/G, O])
    dL/dx       = crop_p( sum_ij scatter_s(g @ w[i, j]^T, offset (i, j)) )

``scatter_s`` writes an ``[N, Ho, Wo, C]`` block at rows ``i, i+s, ...`` and columns
``j, j+s, ...`` of a zero ``xp``-shaped array (``lax.pad`` with interior padding ``s-1``).
For depthwise kernels the matrix products are per-channel products.

Dispatch: ``jax.lax.platform_dependent`` picks the custom version when the computation is
lowered for CPU and plain ``lax.conv_general_dilated`` for every other platform, so GPU/TPU
programs never contain it (the choice is made at lowering time, so a function traced once and
lowered for several platforms still gets the right one). The C++ kernel is a custom call without
``jax.export`` compatibility guarantees: exporting a CPU training step that contains it needs
``disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(native_kernels.TARGET)]`` (or
``S2SAM_NATIVE_CPU_KERNELS=0``). Cases outside the supported set always
use plain lax: anything but 2-D NHWC/HWIO convolutions, kernel or input dilation other than 1,
``batch_group_count != 1``, ``preferred_element_type`` or ``out_sharding`` set.

Opt-out: set the environment variable ``S2SAM_FAST_CPU_CONV=0`` (also ``false``/``off``/``no``;
read at trace time, on every call), or pass ``fast_cpu=False``: every conv is ``xla``.
``S2SAM_CPU_CONV_PATH=xla|hlo|native`` or ``path=...`` force one path instead of the per-shape
choice; ``fast_cpu=True`` forces the custom version (``native`` where it applies, else
``hlo``) on every backend (for tests).

Example::

    import jax, jax.numpy as jnp
    from experiments.models.cpu_conv import conv_general_dilated
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    f = lambda x, w: conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
    dx, dw = jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from experiments.models import conv_paths, native_kernels

ENV_VAR = "S2SAM_FAST_CPU_CONV"
_NHWC = lax.ConvDimensionNumbers(
  lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


def fast_cpu_conv_enabled() -> bool:
  """False when the environment variable ``S2SAM_FAST_CPU_CONV`` is ``0``/``false``/``off``/``no``."""
  return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def conv_general_dilated(
  lhs,
  rhs,
  window_strides: Sequence[int],
  padding,
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
  out_sharding=None,
  *,
  fast_cpu: bool | None = None,
  path: str | None = None,
):
  """``lax.conv_general_dilated`` with faster gradients on CPU (see the module docstring).

  ``fast_cpu``: None (default) = on the CPU backend, the path :mod:`conv_paths` picks for this
  shape, unless the environment variable ``S2SAM_FAST_CPU_CONV=0``; False = always plain lax;
  True = the custom version on every backend (native kernel gradients where available).
  ``path``: ``'xla'``, ``'hlo'`` or ``'native'`` forces that path (on CPU, or everywhere with
  ``fast_cpu=True``) instead of the per-shape choice; so does ``S2SAM_CPU_CONV_PATH``.
  """
  plain = functools.partial(
    lax.conv_general_dilated,
    window_strides=window_strides,
    padding=padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
    out_sharding=out_sharding,
  )
  if fast_cpu is None:
    fast_cpu = fast_cpu_conv_enabled()
    force = False
  else:
    force = fast_cpu
  if path is not None and path not in conv_paths.PATHS:
    raise ValueError(f"`path` must be one of {conv_paths.PATHS} or None, got {path!r}")
  if not fast_cpu or not _supported(lhs, rhs, plain.keywords):
    return plain(lhs, rhs)
  strides = tuple(int(s) for s in window_strides)
  pads = _explicit_padding(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  groups = int(feature_group_count)
  requested = path or conv_paths.path_override() or ("native" if force else None)
  chosen = _choose_path(lhs, rhs, strides, pads, groups, requested)
  if chosen == "xla":
    return plain(lhs, rhs)
  fast = functools.partial(
    _matmul_grad_conv,
    strides=strides,
    pads=pads,
    groups=groups,
    precision=precision,
    native=chosen == "native",
  )
  if force:
    return fast(lhs, rhs)
  return dispatch(lhs, rhs, cpu=fast, default=lambda x, w: plain(x, w))


def _choose_path(lhs, rhs, strides, pads, groups, requested: str | None) -> str:
  """The path of one supported conv, recorded for :func:`conv_paths.record_choices`.

  ``requested`` (``path=``, ``S2SAM_CPU_CONV_PATH`` or ``fast_cpu=True``'s ``'native'``) wins;
  None: the per-shape choice. A ``'native'`` with no C++ kernel for the conv (or none built)
  becomes ``'hlo'``.
  """
  geometry = conv_paths.Geometry.of(lhs, rhs, strides, pads, groups)
  applicable = _native_applicable(lhs, rhs, groups, lhs.dtype, rhs.dtype)
  chosen = requested
  if chosen is None:  # the per-shape choice
    native_ok = applicable and native_kernels.available()
    chosen = conv_paths.choose(geometry, lanes=native_kernels.vector_lanes() if native_ok else None)
  elif chosen == "native" and not (applicable and native_kernels.available()):
    chosen = "hlo"  # no C++ kernel for this conv (or none built): its HLO formulation
  conv_paths.record(geometry, chosen)
  return chosen


def dispatch(lhs, rhs, *, cpu, default):
  """``cpu(lhs, rhs)`` when lowered for CPU, ``default(lhs, rhs)`` on any other platform."""
  return lax.platform_dependent(lhs, rhs, cpu=cpu, default=default)


def _supported(lhs, rhs, options: dict) -> bool:
  """Whether the custom path takes a conv with ``lax.conv_general_dilated``'s keyword
  ``options``: 4-D NHWC/HWIO, no dilation, no batch groups, default output type and sharding."""
  if lhs.ndim != 4 or rhs.ndim != 4:
    return False
  dilations = (options["lhs_dilation"] or (1, 1), options["rhs_dilation"] or (1, 1))
  if any(d != 1 for dilation in dilations for d in dilation):
    return False
  if (
    options["batch_group_count"] != 1
    or options["preferred_element_type"] is not None
    or options["out_sharding"] is not None
  ):
    return False
  if options["dimension_numbers"] is None:
    return False
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, options["dimension_numbers"])
  return dn == _NHWC


def _explicit_padding(in_hw, k_hw, strides, padding) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_hw, k_hw, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


# Dense kernels (kh, kw > 1, input at least kernel-sized) keep XLA's kernel gradient unless
# C_in/G * C_out reaches this. Tap matmuls pay for kh*kw copies of the input; on a 2-core AMD EPYC
# (process CPU time, batch 64/128, 3x3) they measured between 1.45x faster (16x16, 128->256) and
# 2.2x slower (32x32, 64->64) than XLA, about break-even overall, so by default they are off.
# Lower it to try them on another machine.
TAP_MATMUL_MIN_CHANNEL_PRODUCT = 2**62


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _matmul_grad_conv(x, w, strides, pads, groups, precision, native):
  return _forward(x, w, strides, pads, groups, precision)


def _is_depthwise(w, groups):
  return groups > 1 and w.shape[2] == 1


def _is_smaller_than_kernel(x, w):
  """XLA:CPU runs these convolutions ~100x slower (e.g. VGG's 2x2 maps with 3x3 kernels)."""
  return x.shape[1] < w.shape[0] or x.shape[2] < w.shape[1]


def _forward(x, w, strides, pads, groups, precision):
  if _is_depthwise(w, groups):
    return _depthwise_forward(x, w, strides, pads, groups)
  if _is_smaller_than_kernel(x, w):
    return _tap_matmul_forward(x, w, strides, pads, groups, precision)
  return _xla_conv(x, w, strides, pads, groups, precision)


def _xla_conv(x, w, strides, pads, groups, precision):
  return lax.conv_general_dilated(
    x, w, strides, pads, dimension_numbers=_NHWC, feature_group_count=groups, precision=precision
  )


def _fwd(x, w, strides, pads, groups, precision, native):
  return _forward(x, w, strides, pads, groups, precision), (x, w)


def _bwd(strides, pads, groups, precision, native, res, g):
  x, w = res
  return (
    _input_grad(x, w, g, strides, pads, groups, precision),
    _kernel_grad(x, w, g, strides, pads, groups, precision, native),
  )


_matmul_grad_conv.defvjp(_fwd, _bwd)


def _pad_input(x, pads):
  return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


def _patches(xp, i, j, out_hw, strides):
  """``xp[:, i::s, j::s, :]`` cut to the output size: the input seen by kernel offset (i, j)."""
  (sh, sw), (ho, wo) = strides, out_hw
  n, _, _, c = xp.shape
  return lax.slice(
    xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1)
  )


def _out_hw(x, w, strides, pads):
  return tuple(
    (x.shape[1 + d] + pads[d][0] + pads[d][1] - w.shape[d]) // strides[d] + 1 for d in (0, 1)
  )


def _tap_sees_input(i, pad_lo, size, stride, out):
  """Whether kernel offset ``i`` reads any unpadded input row (else its patch is all zeros)."""
  return any(pad_lo <= i + stride * r < pad_lo + size for r in range(out))


def _live_taps(x, w, strides, pads, out_hw):
  return [
    (i, j)
    for i in range(w.shape[0])
    for j in range(w.shape[1])
    if _tap_sees_input(i, pads[0][0], x.shape[1], strides[0], out_hw[0])
    and _tap_sees_input(j, pads[1][0], x.shape[2], strides[1], out_hw[1])
  ]


def _tap_matmul_forward(x, w, strides, pads, groups, precision):
  """``y = sum_ij X_ij @ w[i, j]`` (per group), skipping offsets that only see padding."""
  n = x.shape[0]
  _, _, cg, o = w.shape
  ho, wo = _out_hw(x, w, strides, pads)
  xp = _pad_input(x, pads)
  y = jnp.zeros((n, ho, wo, groups, o // groups), jnp.float32)
  for i, j in _live_taps(x, w, strides, pads, (ho, wo)):
    xs = _patches(xp, i, j, (ho, wo), strides).reshape(n, ho, wo, groups, cg)
    y = y + jnp.einsum(
      "nhwgc,cgo->nhwgo",
      xs,
      w[i, j].reshape(cg, groups, o // groups),
      precision=precision,
      preferred_element_type=jnp.float32,
    )
  return y.reshape(n, ho, wo, o).astype(jnp.result_type(x.dtype, w.dtype))


def _depthwise_forward(x, w, strides, pads, groups):
  """``y[..., g*m + o] = sum_ij X_ij[..., g] * w[i, j, 0, g*m + o]``: kh*kw fused multiply-adds."""
  kh, kw, _, o = w.shape
  mult = o // groups
  ho, wo = _out_hw(x, w, strides, pads)
  xp = _pad_input(x, pads)
  y = None
  for i in range(kh):
    for j in range(kw):
      xs = _patches(xp, i, j, (ho, wo), strides).astype(jnp.float32)
      wij = w[i, j, 0].reshape(groups, mult).astype(jnp.float32)
      tap = xs[..., None] * wij
      y = tap if y is None else y + tap
  return y.reshape(*y.shape[:3], o).astype(jnp.result_type(x.dtype, w.dtype))


def _native_applicable(x, w, groups, *dtypes) -> bool:
  """Whether a C++ kernel computes this conv's kernel gradient (dense, or depthwise x1, <= f32)."""
  depthwise_multiplier_1 = _is_depthwise(w, groups) and w.shape[3] == groups
  # the C++ kernels compute in float32: float64 keeps the HLO formulations
  at_most_f32 = all(jnp.finfo(d).bits <= 32 for d in dtypes)
  return (groups == 1 or depthwise_multiplier_1) and at_most_f32


def _kernel_grad(x, w, g, strides, pads, groups, precision, native=True):
  usable = _native_applicable(x, w, groups, x.dtype, w.dtype, g.dtype)
  if native and usable and native_kernels.available():
    return _native_kernel_grad(x, w, g, strides, pads, groups, precision)
  return _matmul_kernel_grad(x, w, g, strides, pads, groups, precision)


def _native_kernel_grad(x, w, g, strides, pads, groups, precision):
  """The C++ kernels (``native_kernels``) on CPU; elsewhere (``fast_cpu=True``) the HLO ones."""
  w_aval = jax.ShapeDtypeStruct(w.shape, w.dtype)
  return _native_kernel_grad_op(x, g, w_aval, strides, pads, groups, precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def _native_kernel_grad_op(x, g, w_aval, strides, pads, groups, precision):
  kernel = (
    native_kernels.conv_kernel_grad if groups == 1 else native_kernels.depthwise_conv_kernel_grad
  )

  def native(x, g):
    return kernel(x, g, w_aval.shape[:2], strides, pads).astype(w_aval.dtype)

  def portable(x, g):
    return _portable_kernel_grad(x, g, w_aval, strides, pads, groups, precision)

  return lax.platform_dependent(x, g, cpu=native, default=portable)


@_native_kernel_grad_op.defjvp
def _native_kernel_grad_jvp(w_aval, strides, pads, groups, precision, primals, tangents):
  # The FFI call has no derivative; dw(x, g) is bilinear, so its tangent is
  # dw(dx, g) + dw(x, dg), taken from the HLO formulation: differentiable to any order
  # (GraSP's and the loss surfaces' Hessian-vector products differentiate the gradient).
  (x, g), (dx, dg) = primals, tangents
  static = (w_aval, strides, pads, groups, precision)
  y = _native_kernel_grad_op(x, g, *static)
  return y, _portable_kernel_grad(dx, g, *static) + _portable_kernel_grad(x, dg, *static)


def _portable_kernel_grad(x, g, w_aval, strides, pads, groups, precision):
  w = jnp.zeros(w_aval.shape, w_aval.dtype)  # only its shape matters: dw is linear in (x, g)
  return _matmul_kernel_grad(x, w, g, strides, pads, groups, precision)


def _matmul_kernel_grad(x, w, g, strides, pads, groups, precision):
  kh, kw, cg, o = w.shape
  depthwise = _is_depthwise(w, groups)
  small_dense = (kh, kw) != (1, 1) and cg * o < TAP_MATMUL_MIN_CHANNEL_PRODUCT
  if not depthwise and small_dense and not _is_smaller_than_kernel(x, w):
    _, vjp = jax.vjp(lambda w_: _xla_conv(x, w_, strides, pads, groups, precision), w)
    return vjp(g)[0]
  n, ho, wo, _ = g.shape
  m = n * ho * wo
  og = o // groups
  xp = _pad_input(x, pads)
  gm = g.reshape(m, groups, og)
  live = set(_live_taps(x, w, strides, pads, (ho, wo)))
  taps = []
  for i in range(kh):
    for j in range(kw):
      if (i, j) not in live:  # the patch is all padding: zero gradient
        taps.append(jnp.zeros((cg, o), jnp.float32))
        continue
      xm = _patches(xp, i, j, (ho, wo), strides).reshape(m, groups, cg)
      if groups == 1:
        tap = lax.dot_general(
          xm[:, 0],
          gm[:, 0],
          (((0,), (0,)), ((), ())),
          precision=precision,
          preferred_element_type=jnp.float32,
        )
      elif depthwise:  # no contraction over channels: a weighted sum over M per channel
        tap = jnp.einsum(
          "mg,mgo->go", xm[:, :, 0], gm, precision=precision, preferred_element_type=jnp.float32
        )
      else:
        tap = jnp.einsum(
          "mgc,mgo->cgo", xm, gm, precision=precision, preferred_element_type=jnp.float32
        )
      taps.append(tap.reshape(cg, o))
  return jnp.stack(taps).reshape(kh, kw, cg, o).astype(w.dtype)


def _input_grad(x, w, g, strides, pads, groups, precision):
  if _is_depthwise(w, groups) or _is_smaller_than_kernel(x, w):
    return _scatter_input_grad(x, w, g, strides, pads, groups, precision)
  _, vjp = jax.vjp(lambda x_: _xla_conv(x_, w, strides, pads, groups, precision), x)
  return vjp(g)[0]


def _scatter_input_grad(x, w, g, strides, pads, groups, precision):
  """``dx = crop(sum_ij scatter_s(g @ w[i, j]^T))`` (per group), see the module docstring."""
  n, h, wd, c = x.shape
  cg, o = w.shape[2:]
  _, ho, wo, _ = g.shape
  og = o // groups
  (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
  hp, wp = h + pt + pb, wd + pl + pr
  gm = g.reshape(n, ho, wo, groups, og)
  zero = jnp.zeros((), jnp.float32)
  dxp = jnp.zeros((n, hp, wp, c), jnp.float32)
  for i, j in _live_taps(x, w, strides, pads, (ho, wo)):  # others only reach the padding
    wij = w[i, j].reshape(cg, groups, og)
    if cg == 1:  # depthwise: a multiply-add per channel
      tap = jnp.sum(gm.astype(jnp.float32) * wij[0].astype(jnp.float32), axis=-1)
    else:
      tap = jnp.einsum(
        "nhwgo,cgo->nhwgc", gm, wij, precision=precision, preferred_element_type=jnp.float32
      )
    tap = tap.reshape(n, ho, wo, c)
    # rows i, i+sh, ..., i+sh*(ho-1) of the padded input (interior padding sh-1)
    cfg = (
      (0, 0, 0),
      (i, hp - i - sh * (ho - 1) - 1, sh - 1),
      (j, wp - j - sw * (wo - 1) - 1, sw - 1),
      (0, 0, 0),
    )
    dxp = dxp + lax.pad(tap, zero, cfg)
  dx = lax.pad(dxp, zero, ((0, 0, 0), (-pt, -pb, 0), (-pl, -pr, 0), (0, 0, 0)))
  return dx.astype(x.dtype)
