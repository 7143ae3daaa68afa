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
// is copied or transposed. Images are shared out to the XLA thread pool; each worker sums into
// its own dw and the partial sums are added at the end.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;        // floats per vector register
constexpr int kAccumulators = 24;  // of the 32 vector registers
constexpr int kMaxVectorsPerRow = 4;
#else
constexpr int kLanes = 8;
constexpr int kAccumulators = 12;  // of 16
constexpr int kMaxVectorsPerRow = 2;
#endif

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef float UnalignedVec __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

inline Vec Load(const float* p) { return *reinterpret_cast<const UnalignedVec*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<UnalignedVec*>(p) = v; }

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

// dw_tile[CB][NV*kLanes] (row stride o) += sum over the tap's valid positions of one image.
template <int CB, int NV>
void AccumulateTile(const float* x, const float* g, float* dw_tile, const Geometry& s,
                    int64_t i, int64_t j) {
  int64_t ho_lo, ho_hi, wo_lo, wo_hi;
  ValidRange(i, s.sh, s.pt, s.h, s.ho, &ho_lo, &ho_hi);
  ValidRange(j, s.sw, s.pl, s.w, s.wo, &wo_lo, &wo_hi);
  if (ho_lo >= ho_hi || wo_lo >= wo_hi) return;
  Vec acc[CB][NV];
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = Load(dw_tile + c * s.o + v * kLanes);
  const int64_t x_step = s.sw * s.c;
  for (int64_t r = ho_lo; r < ho_hi; ++r) {
    const float* xp = x + ((r * s.sh + i - s.pt) * s.w + wo_lo * s.sw + j - s.pl) * s.c;
    const float* gp = g + (r * s.wo + wo_lo) * s.o;
    for (int64_t q = wo_lo; q < wo_hi; ++q, xp += x_step, gp += s.o) {
      Vec gv[NV];
      for (int v = 0; v < NV; ++v) gv[v] = Load(gp + v * kLanes);
      for (int c = 0; c < CB; ++c) {
        const float xc = xp[c];
        for (int v = 0; v < NV; ++v) acc[c][v] += xc * gv[v];
      }
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) Store(dw_tile + c * s.o + v * kLanes, acc[c][v]);
}

// Output channels beyond the last whole vector: plain scalar loops (rare: O % kLanes != 0).
void AccumulateScalarColumns(const float* x, const float* g, float* dw_tap, const Geometry& s,
                             int64_t i, int64_t j, int64_t o_begin) {
  int64_t ho_lo, ho_hi, wo_lo, wo_hi;
  ValidRange(i, s.sh, s.pt, s.h, s.ho, &ho_lo, &ho_hi);
  ValidRange(j, s.sw, s.pl, s.w, s.wo, &wo_lo, &wo_hi);
  for (int64_t r = ho_lo; r < ho_hi; ++r) {
    for (int64_t q = wo_lo; q < wo_hi; ++q) {
      const float* xp = x + ((r * s.sh + i - s.pt) * s.w + q * s.sw + j - s.pl) * s.c;
      const float* gp = g + (r * s.wo + q) * s.o;
      for (int64_t c = 0; c < s.c; ++c)
        for (int64_t o = o_begin; o < s.o; ++o) dw_tap[c * s.o + o] += xp[c] * gp[o];
    }
  }
}

using TileFn = void (*)(const float*, const float*, float*, const Geometry&, int64_t, int64_t);

template <int NV, int... CBs>
constexpr std::array<TileFn, sizeof...(CBs)> MakeRow(std::integer_sequence<int, CBs...>) {
  return {&AccumulateTile<CBs + 1, NV>...};
}

// kTiles[nv - 1][cb - 1] = AccumulateTile<cb, nv>, for cb <= kAccumulators / nv.
template <int NV>
constexpr auto TileRow() {
  return MakeRow<NV>(std::make_integer_sequence<int, kAccumulators / NV>{});
}

TileFn GetTile(int cb, int nv) {
  static const auto r1 = TileRow<1>();
  static const auto r2 = TileRow<2>();
#if defined(__AVX512F__)
  static const auto r3 = TileRow<3>();
  static const auto r4 = TileRow<4>();
#endif
  switch (nv) {
    case 1: return r1[cb - 1];
    case 2: return r2[cb - 1];
#if defined(__AVX512F__)
    case 3: return r3[cb - 1];
    case 4: return r4[cb - 1];
#endif
  }
  return nullptr;
}

// dw += this image's contribution.
void AccumulateImage(const float* x, const float* g, float* dw, const Geometry& s) {
  const int64_t o_vectors = s.o / kLanes;
  for (int64_t i = 0; i < s.kh; ++i) {
    for (int64_t j = 0; j < s.kw; ++j) {
      float* dw_tap = dw + (i * s.kw + j) * s.c * s.o;
      for (int64_t v0 = 0; v0 < o_vectors; v0 += kMaxVectorsPerRow) {
        const int nv = static_cast<int>(std::min<int64_t>(kMaxVectorsPerRow, o_vectors - v0));
        const int cb_max = kAccumulators / nv;
        for (int64_t c0 = 0; c0 < s.c; c0 += cb_max) {
          const int cb = static_cast<int>(std::min<int64_t>(cb_max, s.c - c0));
          GetTile(cb, nv)(x + c0, g + v0 * kLanes, dw_tap + c0 * s.o + v0 * kLanes, s, i, j);
        }
      }
      if (o_vectors * kLanes < s.o) AccumulateScalarColumns(x, g, dw_tap, s, i, j, o_vectors * kLanes);
    }
  }
}

// Shared by the caller and the pool tasks; tasks may start after the caller has finished, so
// it is reference counted and they only touch it while images remain.
struct Work {
  Geometry s;
  const float* x;
  const float* g;
  int64_t dw_size;
  std::atomic<int64_t> next_image{0};
  std::atomic<int64_t> images_done{0};
  std::vector<std::unique_ptr<float[]>> partial;  // one dw per pool task

  void Run(float* dw) {
    const int64_t x_image = s.h * s.w * s.c, g_image = s.ho * s.wo * s.o;
    for (int64_t n; (n = next_image.fetch_add(1)) < s.n;) {
      AccumulateImage(x + n * x_image, g + n * g_image, dw, s);
      images_done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error ConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t stride_h, int64_t stride_w,
                          int64_t pad_top, int64_t pad_left) {
  auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4 || xd[0] != gd[0] || xd[3] != wd[2] ||
      gd[3] != wd[3] || stride_h < 1 || stride_w < 1) {
    return ffi::Error::InvalidArgument("conv_kernel_grad: inconsistent shapes or strides");
  }
  auto work = std::make_shared<Work>();
  work->s = Geometry{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], gd[3],
                     wd[0], wd[1], stride_h, stride_w, pad_top, pad_left};
  work->x = x.typed_data();
  work->g = g.typed_data();
  work->dw_size = wd[0] * wd[1] * wd[2] * wd[3];
  float* out = dw->typed_data();
  std::fill(out, out + work->dw_size, 0.0f);

  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->s.n - 1);
  for (int64_t t = 0; t < helpers; ++t) {
    work->partial.emplace_back(new float[work->dw_size]());
  }
  for (int64_t t = 0; t < helpers; ++t) {
    float* mine = work->partial[t].get();
    pool.Schedule([work, mine] { work->Run(mine); });
  }
  work->Run(out);
  while (work->images_done.load(std::memory_order_acquire) < work->s.n) {
    std::this_thread::yield();
  }
  for (const auto& p : work->partial) {
    for (int64_t k = 0; k < work->dw_size; ++k) out[k] += p[k];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(S2samConvKernelGrad, ConvKernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
