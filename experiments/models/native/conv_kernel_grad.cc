// Kernel gradient of a dense 2-D convolution (NHWC input, HWIO kernel), as an XLA FFI handler
// for the CPU backend.
//
//   dw[i, j, c, o] = sum_{n, ho, wo} x[n, ho*sh + i - pt, wo*sw + j - pl, c] * g[n, ho, wo, o]
//
// with x: [N, H, W, C] (zero outside its bounds), g: [N, Ho, Wo, O] the output cotangent and
// dw: [KH, KW, C, O]. XLA:CPU computes this as a convolution over the batch after transposing
// both operands, which is about half of a CIFAR ResNet training step on CPU. Here each (tap,
// C-block, O-block) tile of dw is accumulated in vector registers while streaming once over an
// image's positions (rank-1 updates: a broadcast of x times a vector of g), so neither operand
// is copied or transposed. Fixed slices of the batch are shared out to the XLA thread pool, each
// summed into its own dw; the partial sums are added in slice order at the end.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;         // floats per vector register
constexpr int kAccumulators = 24;  // of the 32 vector registers
constexpr int kMaxVectorsPerRow = 4;
#else
constexpr int kLanes = 8;
constexpr int kAccumulators = 12;  // of 16
constexpr int kMaxVectorsPerRow = 2;
#endif
constexpr int kHalfLanes = kLanes / 2;  // for output-channel tails (e.g. O = 24 with 16 lanes)

template <int L>
struct VecOf {
  typedef float Type __attribute__((vector_size(L * sizeof(float))));
  typedef float Unaligned __attribute__((vector_size(L * sizeof(float)), aligned(4)));
  static Type Load(const float* p) { return *reinterpret_cast<const Unaligned*>(p); }
  static void Store(float* p, Type v) { *reinterpret_cast<Unaligned*>(p) = v; }
};

// Positions per tile pass below which several images share one pass, so that loading and
// storing the accumulator tile stays small next to the multiply-adds (small feature maps).
constexpr int64_t kMinPositionsPerPass = 256;

struct Geometry {
  int64_t n, h, w, c;      // input
  int64_t ho, wo, o;       // output cotangent
  int64_t kh, kw;          // kernel
  int64_t sh, sw, pt, pl;  // strides, leading padding
};

// Output positions [lo, hi) whose input coordinate pos*stride + tap - pad lies in [0, size).
inline void ValidRange(int64_t tap, int64_t stride, int64_t pad, int64_t size, int64_t out,
                       int64_t* lo, int64_t* hi) {
  int64_t first = pad - tap;  // smallest pos*stride with a valid coordinate
  *lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  int64_t last = size - 1 + pad - tap;  // largest valid pos*stride
  *hi = last < 0 ? 0 : std::min(out, last / stride + 1);
  if (*hi < *lo) *hi = *lo;
}

// Calls row(xp, gp, count) for each output row of `images` consecutive images, over the
// positions where tap (i, j) reads inside x: xp and gp point at the first of `count` positions,
// which lie s.sw * s.c floats apart in x and s.o floats apart in g.
template <typename Row>
void ForEachRow(const float* x, const float* g, const Geometry& s, int64_t i, int64_t j,
                int64_t images, Row&& row) {
  int64_t ho_lo, ho_hi, wo_lo, wo_hi;
  ValidRange(i, s.sh, s.pt, s.h, s.ho, &ho_lo, &ho_hi);
  ValidRange(j, s.sw, s.pl, s.w, s.wo, &wo_lo, &wo_hi);
  if (ho_lo >= ho_hi || wo_lo >= wo_hi) return;
  const int64_t x_image = s.h * s.w * s.c, g_image = s.ho * s.wo * s.o;
  for (int64_t n = 0; n < images; ++n) {
    for (int64_t r = ho_lo; r < ho_hi; ++r) {
      row(x + n * x_image + ((r * s.sh + i - s.pt) * s.w + wo_lo * s.sw + j - s.pl) * s.c,
          g + n * g_image + (r * s.wo + wo_lo) * s.o, wo_hi - wo_lo);
    }
  }
}

// The vector tiles below walk the tap's valid positions themselves: taking their inner loops
// as lambdas through ForEachRow gave bitwise-equal results but measured 7% slower on VGG's 2x2
// maps. The scalar tails (channel counts that are not a multiple of 8) use ForEachRow.

// dw_tile[CB][NV*L] (row stride s.o) += tap (i, j)'s sum over the valid positions of `images`
// consecutive images starting at x, g. The tile lives in CB*NV vector registers throughout.
template <int L, int CB, int NV>
void AccumulateTile(const float* x, const float* g, float* dw_tile, const Geometry& s,
                    int64_t i, int64_t j, int64_t images) {
  using V = VecOf<L>;
  int64_t ho_lo, ho_hi, wo_lo, wo_hi;
  ValidRange(i, s.sh, s.pt, s.h, s.ho, &ho_lo, &ho_hi);
  ValidRange(j, s.sw, s.pl, s.w, s.wo, &wo_lo, &wo_hi);
  if (ho_lo >= ho_hi || wo_lo >= wo_hi) return;
  typename V::Type acc[CB][NV];
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = V::Load(dw_tile + c * s.o + v * L);
  const int64_t x_step = s.sw * s.c, x_image = s.h * s.w * s.c, g_image = s.ho * s.wo * s.o;
  for (int64_t n = 0; n < images; ++n) {
    for (int64_t r = ho_lo; r < ho_hi; ++r) {
      const float* xp =
          x + n * x_image + ((r * s.sh + i - s.pt) * s.w + wo_lo * s.sw + j - s.pl) * s.c;
      const float* gp = g + n * g_image + (r * s.wo + wo_lo) * s.o;
      for (int64_t q = wo_lo; q < wo_hi; ++q, xp += x_step, gp += s.o) {
        typename V::Type gv[NV];
        for (int v = 0; v < NV; ++v) gv[v] = V::Load(gp + v * L);
        for (int c = 0; c < CB; ++c) {
          const float xc = xp[c];
          for (int v = 0; v < NV; ++v) acc[c][v] += xc * gv[v];
        }
      }
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) V::Store(dw_tile + c * s.o + v * L, acc[c][v]);
}

// Output channels beyond the last whole half vector: scalar loops (O % (kLanes / 2) != 0).
void AccumulateScalarColumns(const float* x, const float* g, float* dw_tap, const Geometry& s,
                             int64_t i, int64_t j, int64_t images, int64_t o_begin) {
  ForEachRow(x, g, s, i, j, images, [&](const float* xp, const float* gp, int64_t count) {
    for (int64_t q = 0; q < count; ++q, xp += s.sw * s.c, gp += s.o) {
      for (int64_t c = 0; c < s.c; ++c)
        for (int64_t o = o_begin; o < s.o; ++o) dw_tap[c * s.o + o] += xp[c] * gp[o];
    }
  });
}

using TileFn = void (*)(const float*, const float*, float*, const Geometry&, int64_t, int64_t,
                        int64_t);

// Tiles<L, NV>::table[cb - 1] = AccumulateTile<L, cb, NV>, for cb = 1 .. kAccumulators / NV.
template <int L, int NV, typename Seq = std::make_integer_sequence<int, kAccumulators / NV>>
struct Tiles;
template <int L, int NV, int... CBs>
struct Tiles<L, NV, std::integer_sequence<int, CBs...>> {
  static constexpr TileFn table[] = {&AccumulateTile<L, CBs + 1, NV>...};
};

TileFn FullTile(int cb, int nv) {
  switch (nv) {
    case 1: return Tiles<kLanes, 1>::table[cb - 1];
    case 2: return Tiles<kLanes, 2>::table[cb - 1];
#if defined(__AVX512F__)
    case 3: return Tiles<kLanes, 3>::table[cb - 1];
    case 4: return Tiles<kLanes, 4>::table[cb - 1];
#endif
  }
  return nullptr;
}

TileFn HalfTile(int cb, int) { return Tiles<kHalfLanes, 1>::table[cb - 1]; }

// Sweeps the C-blocks of one column block [o0, o0 + nv * L) of tap (i, j).
void AccumulateColumns(TileFn (*get)(int, int), int nv, const float* x, const float* g,
                       float* dw_tap, const Geometry& s, int64_t i, int64_t j, int64_t images,
                       int64_t o0) {
  const int cb_max = kAccumulators / nv;
  for (int64_t c0 = 0; c0 < s.c; c0 += cb_max) {
    const int cb = static_cast<int>(std::min<int64_t>(cb_max, s.c - c0));
    get(cb, nv)(x + c0, g + o0, dw_tap + c0 * s.o + o0, s, i, j, images);
  }
}

// dw += the contribution of `images` consecutive images.
void AccumulateImages(const float* x, const float* g, float* dw, const Geometry& s,
                      int64_t images) {
  const int64_t full = s.o / kLanes * kLanes;
  const bool half = s.o - full >= kHalfLanes;
  const int64_t vector_end = full + (half ? kHalfLanes : 0);
  for (int64_t i = 0; i < s.kh; ++i) {
    for (int64_t j = 0; j < s.kw; ++j) {
      float* dw_tap = dw + (i * s.kw + j) * s.c * s.o;
      for (int64_t o0 = 0; o0 < full; o0 += kMaxVectorsPerRow * kLanes) {
        const int nv = static_cast<int>(std::min<int64_t>(kMaxVectorsPerRow, (full - o0) / kLanes));
        AccumulateColumns(FullTile, nv, x, g, dw_tap, s, i, j, images, o0);
      }
      if (half) {
        AccumulateColumns(HalfTile, 1, x, g, dw_tap, s, i, j, images, full);
      }
      if (vector_end < s.o) AccumulateScalarColumns(x, g, dw_tap, s, i, j, images, vector_end);
    }
  }
}

// Depthwise (one kernel per channel, multiplier 1; g has C channels too):
//   dw[i, j, 0, c] = sum_{n, ho, wo} x[n, ho*sh + i - pt, wo*sw + j - pl, c] * g[n, ho, wo, c]
// An elementwise product summed over positions: NV vectors of channels, two accumulator sets
// (even and odd positions) so that consecutive multiply-adds do not wait on each other.
template <int L, int NV>
void AccumulateDepthwiseTap(const float* x, const float* g, float* dw_tap, const Geometry& s,
                            int64_t i, int64_t j, int64_t images) {
  using V = VecOf<L>;
  int64_t ho_lo, ho_hi, wo_lo, wo_hi;
  ValidRange(i, s.sh, s.pt, s.h, s.ho, &ho_lo, &ho_hi);
  ValidRange(j, s.sw, s.pl, s.w, s.wo, &wo_lo, &wo_hi);
  if (ho_lo >= ho_hi || wo_lo >= wo_hi) return;
  typename V::Type acc[2][NV] = {};
  const int64_t x_step = s.sw * s.c, x_image = s.h * s.w * s.c, g_image = s.ho * s.wo * s.c;
  for (int64_t n = 0; n < images; ++n) {
    for (int64_t r = ho_lo; r < ho_hi; ++r) {
      const float* xp =
          x + n * x_image + ((r * s.sh + i - s.pt) * s.w + wo_lo * s.sw + j - s.pl) * s.c;
      const float* gp = g + n * g_image + (r * s.wo + wo_lo) * s.c;
      int64_t q = wo_lo;
      for (; q + 1 < wo_hi; q += 2, xp += 2 * x_step, gp += 2 * s.c) {
        for (int v = 0; v < NV; ++v) {
          acc[0][v] += V::Load(xp + v * L) * V::Load(gp + v * L);
          acc[1][v] += V::Load(xp + x_step + v * L) * V::Load(gp + s.c + v * L);
        }
      }
      if (q < wo_hi) {
        for (int v = 0; v < NV; ++v) acc[0][v] += V::Load(xp + v * L) * V::Load(gp + v * L);
      }
    }
  }
  for (int v = 0; v < NV; ++v) {
    V::Store(dw_tap + v * L, V::Load(dw_tap + v * L) + (acc[0][v] + acc[1][v]));
  }
}

void AccumulateDepthwiseScalar(const float* x, const float* g, float* dw_tap, const Geometry& s,
                               int64_t i, int64_t j, int64_t images, int64_t c_begin) {
  ForEachRow(x, g, s, i, j, images, [&](const float* xp, const float* gp, int64_t count) {
    for (int64_t q = 0; q < count; ++q, xp += s.sw * s.c, gp += s.o) {
      for (int64_t c = c_begin; c < s.c; ++c) dw_tap[c] += xp[c] * gp[c];
    }
  });
}

using DepthwiseFn = void (*)(const float*, const float*, float*, const Geometry&, int64_t,
                             int64_t, int64_t);

DepthwiseFn DepthwiseTap(int nv) {
  switch (nv) {
    case 1: return &AccumulateDepthwiseTap<kLanes, 1>;
    case 2: return &AccumulateDepthwiseTap<kLanes, 2>;
#if defined(__AVX512F__)
    case 3: return &AccumulateDepthwiseTap<kLanes, 3>;
    case 4: return &AccumulateDepthwiseTap<kLanes, 4>;
#endif
  }
  return nullptr;
}

// dw[KH, KW, 1, C] += the contribution of `images` consecutive images.
void AccumulateDepthwiseImages(const float* x, const float* g, float* dw, const Geometry& s,
                               int64_t images) {
  const int64_t full = s.c / kLanes * kLanes;
  const bool half = s.c - full >= kHalfLanes;
  const int64_t vector_end = full + (half ? kHalfLanes : 0);
  for (int64_t i = 0; i < s.kh; ++i) {
    for (int64_t j = 0; j < s.kw; ++j) {
      float* dw_tap = dw + (i * s.kw + j) * s.c;
      for (int64_t c0 = 0; c0 < full; c0 += kMaxVectorsPerRow * kLanes) {
        const int nv = static_cast<int>(std::min<int64_t>(kMaxVectorsPerRow, (full - c0) / kLanes));
        DepthwiseTap(nv)(x + c0, g + c0, dw_tap + c0, s, i, j, images);
      }
      if (half) {
        AccumulateDepthwiseTap<kHalfLanes, 1>(x + full, g + full, dw_tap + full, s, i, j, images);
      }
      if (vector_end < s.c) AccumulateDepthwiseScalar(x, g, dw_tap, s, i, j, images, vector_end);
    }
  }
}

using AccumulateFn = void (*)(const float*, const float*, float*, const Geometry&, int64_t);

// The batch is cut into at most kSlices fixed slices of consecutive images; each slice is summed
// in image order into its own dw and the slices are added in order, so the result does not
// depend on which thread ran which slice (training stays bitwise reproducible and resumable).
// Large kernels (VGG's 3x3x512x512) get fewer slices: adding up the partial dws costs more there.
constexpr int64_t kSlices = 4;
constexpr int64_t kLargeKernel = int64_t{1} << 20;  // floats
constexpr int64_t kLargeKernelSlices = 2;

// Shared by the caller and the pool tasks; tasks may start after the caller has finished, so
// it is reference counted and they only touch it while slices remain.
struct Work {
  Geometry s;
  const float* x;
  const float* g;
  AccumulateFn accumulate;  // dense or depthwise
  int64_t slices;
  int64_t chunk;                                 // images per tile pass
  std::vector<std::unique_ptr<float[]>> partial;  // dw of slices 1 .. slices-1
  float* out;                                     // dw of slice 0, then the total
  std::atomic<int64_t> next_slice{0};
  std::atomic<int64_t> slices_done{0};

  void Run() {
    const int64_t x_image = s.h * s.w * s.c, g_image = s.ho * s.wo * s.o;
    for (int64_t k; (k = next_slice.fetch_add(1)) < slices;) {
      float* dw = k == 0 ? out : partial[k - 1].get();
      const int64_t end = s.n * (k + 1) / slices;
      for (int64_t n = s.n * k / slices; n < end; n += chunk) {
        accumulate(x + n * x_image, g + n * g_image, dw, s, std::min(chunk, end - n));
      }
      slices_done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Runs `accumulate` over the batch in fixed slices (see kSlices) on the caller and XLA's pool.
void RunSlices(ffi::ThreadPool& pool, const Geometry& geometry, const float* x, const float* g,
               float* out, int64_t dw_size, AccumulateFn accumulate) {
  auto work = std::make_shared<Work>();
  Work& w = *work;
  w.s = geometry;
  w.x = x;
  w.g = g;
  w.out = out;
  w.accumulate = accumulate;
  std::fill(out, out + dw_size, 0.0f);
  w.slices = std::min(dw_size >= kLargeKernel ? kLargeKernelSlices : kSlices, w.s.n);
  const int64_t positions = std::max<int64_t>(1, w.s.ho * w.s.wo);
  w.chunk = (kMinPositionsPerPass + positions - 1) / positions;
  for (int64_t k = 1; k < w.slices; ++k) w.partial.emplace_back(new float[dw_size]());

  // The caller works too: with a pool of P threads, P - 1 helpers keep P cores busy whether
  // the caller is one of the pool's threads or not.
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, w.slices - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->Run(); });
  w.Run();
  while (w.slices_done.load(std::memory_order_acquire) < w.slices) std::this_thread::yield();
  for (const auto& p : w.partial) {
    for (int64_t k = 0; k < dw_size; ++k) out[k] += p[k];
  }
}

ffi::Error ConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t stride_h, int64_t stride_w,
                          int64_t pad_top, int64_t pad_left) {
  auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4 || xd[0] != gd[0] || xd[3] != wd[2] ||
      gd[3] != wd[3] || stride_h < 1 || stride_w < 1) {
    return ffi::Error::InvalidArgument("conv_kernel_grad: inconsistent shapes or strides");
  }
  const Geometry s{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], gd[3],
                   wd[0], wd[1], stride_h, stride_w, pad_top, pad_left};
  RunSlices(pool, s, x.typed_data(), g.typed_data(), dw->typed_data(),
            wd[0] * wd[1] * wd[2] * wd[3], AccumulateImages);
  return ffi::Error::Success();
}

ffi::Error DepthwiseKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dw,
                               int64_t stride_h, int64_t stride_w, int64_t pad_top,
                               int64_t pad_left) {
  auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4 || xd[0] != gd[0] || xd[3] != gd[3] ||
      wd[2] != 1 || wd[3] != xd[3] || stride_h < 1 || stride_w < 1) {
    return ffi::Error::InvalidArgument("depthwise_kernel_grad: inconsistent shapes or strides");
  }
  const Geometry s{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], gd[3],
                   wd[0], wd[1], stride_h, stride_w, pad_top, pad_left};
  RunSlices(pool, s, x.typed_data(), g.typed_data(), dw->typed_data(), wd[0] * wd[1] * wd[3],
            AccumulateDepthwiseImages);
  return ffi::Error::Success();
}

}  // namespace

#define S2SAM_KERNEL_GRAD_BINDING                 \
  ffi::Ffi::Bind()                                 \
      .Ctx<ffi::ThreadPool>()                      \
      .Arg<ffi::Buffer<ffi::F32>>()                \
      .Arg<ffi::Buffer<ffi::F32>>()                \
      .Ret<ffi::Buffer<ffi::F32>>()                \
      .Attr<int64_t>("stride_h")                   \
      .Attr<int64_t>("stride_w")                   \
      .Attr<int64_t>("pad_top")                    \
      .Attr<int64_t>("pad_left")

// Floats per vector register of this build (16 with AVX-512, else 8): the per-shape choice of
// path (experiments/models/conv_paths.py) prices the output-channel tails with it.
extern "C" int S2samVectorLanes() { return kLanes; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(S2samConvKernelGrad, ConvKernelGrad, S2SAM_KERNEL_GRAD_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(S2samDepthwiseKernelGrad, DepthwiseKernelGrad,
                              S2SAM_KERNEL_GRAD_BINDING);
