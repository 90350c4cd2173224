// Depthwise 2-D convolution CPU kernels: forward, input gradient and weight/bias gradient.
//
// Two paths. Small planes (out_h * out_w <= 30 * 30 at stride 1, <= 56 * 56 with a stride
// > 1; multiplier 1) take the channel-blocked path further down: 8 channels of one image
// interleaved, the vector across channels. Everything else takes the plane path below.
//
// The plane path works plane by plane, parallel over (image, input channel) planes. A plane is
// first copied (in the op-math type) into a zero-padded buffer split by stride phase in both
// directions (see PhaseLayout below), so that for any stride, dilation and padding every
// kernel tap of every output of the plane reads one contiguous range at a constant offset:
// a plane's output is one flattened row, a weighted sum of kH * kW shifted ranges. The row
// kernels sum up to 9 taps per pass in registers (a 3x3 kernel is one pass, 5x5 three, 7x7
// six); their compile-time tap counts are the specialised fast paths, and any kernel size,
// stride, dilation and padding runs the same code. The input gradient is the same sum in
// gather form over the phases of the padded input; the weight and bias gradients are dot
// products of the output gradient with the shifted ranges.
//
// The weight gradient is reduced deterministically: one partial per (image, channel), summed
// over the batch in index order, whatever the thread count. Channels-last input is computed
// through an NCHW copy and the result is returned in the input's memory format (the blocked
// path reads and writes any strides directly).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/cpu_utils.h"
#include "ops/depthwise_conv2d.h"
#include "ops/depthwise_conv2d_checks.h"

namespace cvops {
namespace {

using namespace depthwise_math;

// ---------------------------------------------------------------------------------------
// Row kernels. A "row" is a whole plane flattened: all buffers are phase-split in both
// directions (ops/depthwise_conv2d.h), so every kernel tap of every output of a plane reads
// one contiguous range, offset by a per-tap constant. Taps are summed kChunk at a time in
// registers.
//
// The loops use GCC/Clang vector extensions and are compiled twice: for the baseline ISA
// and, through a target attribute, for AVX2+FMA, picked at run time. (at::vec::Vectorized
// only gets its AVX2/AVX-512 specialisations inside ATen's per-ISA builds; an extension
// compiled without -mavx2 gets the generic emulation, i.e. SSE2 code at best.)
// ---------------------------------------------------------------------------------------

constexpr int kChunk = 9;      // taps summed per pass of the row kernel
constexpr int kDotChunk = 10;  // taps (accumulators) per pass of the dot kernel

// Row lengths are rounded up to a multiple of kRound (no scalar tail: the extra outputs are
// discarded) and every buffer that is read at an offset gets kRound elements of slack.
constexpr int64_t kRound = 8;
inline int64_t round_up(int64_t n) { return (n + kRound - 1) / kRound * kRound; }

template <typename T>
struct VecOf {
  static constexpr int kLanes = 32 / sizeof(T);
#if defined(__GNUC__)
  typedef T type __attribute__((vector_size(32)));
  typedef T unaligned __attribute__((vector_size(32), aligned(sizeof(T))));
#endif
};

#if defined(__GNUC__)
#define CVOPS_DW_VEC_LOOPS 1
#else
#define CVOPS_DW_VEC_LOOPS 0
#endif

// dst[i] = (accumulate ? dst[i] : init) + sum_t w[t] * src[t][i], i in [0, n).
#define CVOPS_DW_FUSED_ROW_BODY                                                     \
  using V = typename VecOf<acc_t>::type;                                            \
  using U = typename VecOf<acc_t>::unaligned;                                       \
  constexpr int64_t L = VecOf<acc_t>::kLanes;                                       \
  const acc_t* p[T];                                                                \
  V wv[T];                                                                          \
  for (int t = 0; t < T; ++t) {                                                     \
    p[t] = src[t];                                                                  \
    wv[t] = V{} + w[t];                                                             \
  }                                                                                 \
  int64_t i = 0;                                                                    \
  for (; i + L <= n; i += L) {                                                      \
    V acc = accumulate ? V(*reinterpret_cast<const U*>(dst + i)) : V{} + init;      \
    for (int t = 0; t < T; ++t) acc += wv[t] * V(*reinterpret_cast<const U*>(p[t] + i)); \
    *reinterpret_cast<U*>(dst + i) = acc;                                           \
  }                                                                                 \
  for (; i < n; ++i) {                                                              \
    acc_t acc = accumulate ? dst[i] : init;                                         \
    for (int t = 0; t < T; ++t) acc += w[t] * p[t][i];                              \
    dst[i] = acc;                                                                   \
  }

// lanes[t * L + l] += the products g[i] * src[t][i] with i = l (mod L), i in [0, n): the
// per-lane partial sums stay in memory between calls (one horizontal sum at the very end).
#define CVOPS_DW_FUSED_DOT_BODY                                                     \
  using V = typename VecOf<acc_t>::type;                                            \
  using U = typename VecOf<acc_t>::unaligned;                                       \
  constexpr int64_t L = VecOf<acc_t>::kLanes;                                       \
  const acc_t* p[T];                                                                \
  V acc[T];                                                                         \
  for (int t = 0; t < T; ++t) {                                                     \
    p[t] = src[t];                                                                  \
    acc[t] = *reinterpret_cast<const U*>(lanes + t * L);                            \
  }                                                                                 \
  int64_t i = 0;                                                                    \
  for (; i + L <= n; i += L) {                                                      \
    const V gv = *reinterpret_cast<const U*>(g + i);                                \
    for (int t = 0; t < T; ++t) acc[t] += gv * V(*reinterpret_cast<const U*>(p[t] + i)); \
  }                                                                                 \
  for (int t = 0; t < T; ++t) {                                                     \
    for (int64_t j = i; j < n; ++j) acc[t][j - i] += g[j] * p[t][j];                \
    *reinterpret_cast<U*>(lanes + t * L) = acc[t];                                  \
  }

#if CVOPS_DW_VEC_LOOPS
template <int T, bool accumulate, typename acc_t>
void fused_row_base(acc_t* __restrict dst, const acc_t* const* src, const acc_t* w, acc_t init,
                    int64_t n) {
  CVOPS_DW_FUSED_ROW_BODY
}

template <int T, bool accumulate, typename acc_t>
CVOPS_TARGET_AVX2 void fused_row_avx2(acc_t* __restrict dst, const acc_t* const* src,
                                         const acc_t* w, acc_t init, int64_t n) {
  CVOPS_DW_FUSED_ROW_BODY
}

template <int T, typename acc_t>
void fused_dot_base(acc_t* lanes, const acc_t* __restrict g, const acc_t* const* src,
                    int64_t n) {
  CVOPS_DW_FUSED_DOT_BODY
}

template <int T, typename acc_t>
CVOPS_TARGET_AVX2 void fused_dot_avx2(acc_t* lanes, const acc_t* __restrict g,
                                         const acc_t* const* src, int64_t n) {
  CVOPS_DW_FUSED_DOT_BODY
}
#else
template <int T, bool accumulate, typename acc_t>
void fused_row_base(acc_t* dst, const acc_t* const* src, const acc_t* w, acc_t init,
                    int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    acc_t acc = accumulate ? dst[i] : init;
    for (int t = 0; t < T; ++t) acc += w[t] * src[t][i];
    dst[i] = acc;
  }
}
template <int T, typename acc_t>
void fused_dot_base(acc_t* lanes, const acc_t* g, const acc_t* const* src, int64_t n) {
  constexpr int64_t L = VecOf<acc_t>::kLanes;
  for (int t = 0; t < T; ++t)
    for (int64_t i = 0; i < n; ++i) lanes[t * L + i % L] += g[i] * src[t][i];
}
#define fused_row_avx2 fused_row_base
#define fused_dot_avx2 fused_dot_base
#endif

template <int T, bool accumulate, typename acc_t>
inline void fused_row(acc_t* dst, const acc_t* const* src, const acc_t* w, acc_t init,
                      int64_t n) {
  if (cpu_has_avx2())
    fused_row_avx2<T, accumulate, acc_t>(dst, src, w, init, n);
  else
    fused_row_base<T, accumulate, acc_t>(dst, src, w, init, n);
}

template <int T, typename acc_t>
inline void fused_dot(acc_t* lanes, const acc_t* g, const acc_t* const* src, int64_t n) {
  if (cpu_has_avx2())
    fused_dot_avx2<T, acc_t>(lanes, g, src, n);
  else
    fused_dot_base<T, acc_t>(lanes, g, src, n);
}

#define CVOPS_DW_SWITCH_TAPS(COUNT, CALL) \
  switch (COUNT) {                        \
    case 1: CALL(1); break;               \
    case 2: CALL(2); break;               \
    case 3: CALL(3); break;               \
    case 4: CALL(4); break;               \
    case 5: CALL(5); break;               \
    case 6: CALL(6); break;               \
    case 7: CALL(7); break;               \
    case 8: CALL(8); break;               \
    case 9: CALL(9); break;               \
    case 10: CALL(10); break;             \
    default: TORCH_INTERNAL_ASSERT(false, "bad tap count ", COUNT); \
  }

template <typename acc_t>
struct Tap {
  int64_t offset;  // element offset of the tap's source range
  acc_t weight;
};

// dst[0, n) = init + sum over taps of weight * base[offset + i], kChunk taps per pass.
template <typename acc_t>
void sum_taps(acc_t* dst, const acc_t* base, const Tap<acc_t>* taps, int64_t count, acc_t init,
              int64_t n) {
  if (count == 0) {
    std::fill(dst, dst + n, init);
    return;
  }
  const acc_t* src[kChunk];
  acc_t w[kChunk];
  for (int64_t t0 = 0; t0 < count; t0 += kChunk) {
    const int c = static_cast<int>(std::min<int64_t>(kChunk, count - t0));
    TORCH_INTERNAL_ASSERT(c <= kChunk);
    for (int t = 0; t < c; ++t) {
      src[t] = base + taps[t0 + t].offset;
      w[t] = taps[t0 + t].weight;
    }
    if (t0 == 0) {
#define CVOPS_DW_CALL(T) fused_row<T, false, acc_t>(dst, src, w, init, n)
      CVOPS_DW_SWITCH_TAPS(c, CVOPS_DW_CALL)
#undef CVOPS_DW_CALL
    } else {
#define CVOPS_DW_CALL(T) fused_row<T, true, acc_t>(dst, src, w, init, n)
      CVOPS_DW_SWITCH_TAPS(c, CVOPS_DW_CALL)
#undef CVOPS_DW_CALL
    }
  }
}

// Adds g[i] * base[offset_t + i] for every tap t to its lane sums lanes[t * L, (t + 1) * L),
// kDotChunk taps per pass.
template <typename acc_t>
void dot_taps(acc_t* lanes, const acc_t* g, const acc_t* base, const int64_t* offsets,
              int64_t count, int64_t n) {
  constexpr int64_t L = VecOf<acc_t>::kLanes;
  const acc_t* src[kDotChunk];
  for (int64_t t0 = 0; t0 < count; t0 += kDotChunk) {
    const int c = static_cast<int>(std::min<int64_t>(kDotChunk, count - t0));
    for (int t = 0; t < c; ++t) src[t] = base + offsets[t0 + t];
#define CVOPS_DW_CALL(T) fused_dot<T, acc_t>(lanes + t0 * L, g, src, n)
    CVOPS_DW_SWITCH_TAPS(c, CVOPS_DW_CALL)
#undef CVOPS_DW_CALL
  }
}

// ---------------------------------------------------------------------------------------
// The padded, phase-split copy of an input plane: padded pixel (R, c) lives in phase plane
// (R % s_h, c % s_w) at row R / s_h, column c / s_w; every phase plane is rows x cols.
// Kernel tap (kh, kw) of output (oh, ow) then reads phase ((kh*d_h) % s_h, (kw*d_w) % s_w)
// at (oh + (kh*d_h) / s_h, ow + (kw*d_w) / s_w): with outputs flattened as e = oh * cols + ow,
// every tap reads base[tap_offset + e].
// ---------------------------------------------------------------------------------------

struct PhaseLayout {
  int64_t sh, sw, rows, cols;
  int64_t plane() const { return rows * cols; }
  int64_t numel() const { return sh * sw * plane(); }
  int64_t at(int64_t R, int64_t c) const {
    return ((R % sh) * sw + c % sw) * plane() + (R / sh) * cols + c / sw;
  }
};

PhaseLayout input_layout(const DepthwiseParams& p) {
  const int64_t hp = p.height + 2 * p.pad_h, wp = p.width + 2 * p.pad_w;
  return {p.stride_h, p.stride_w, phase_length(hp, p.stride_h), phase_length(wp, p.stride_w)};
}

// Where each input row segment goes in the padded layout: computed once per call (the index
// math has divisions), used for every plane.
struct RowCopy {
  int64_t src;    // first source element in the plane
  int64_t dst;    // first destination element in the padded buffer
  int64_t count;  // elements, source stride stride_w, destination stride 1
};

std::vector<RowCopy> padded_copies(const DepthwiseParams& p, const PhaseLayout& lay) {
  std::vector<RowCopy> copies;
  const int64_t s = p.stride_w;
  for (int64_t ih = 0; ih < p.height; ++ih) {
    for (int64_t r = 0; r < s; ++r) {
      const int64_t iw0 = ((r - p.pad_w) % s + s) % s;  // first column of phase r
      if (iw0 >= p.width) continue;
      copies.push_back({ih * p.width + iw0, lay.at(ih + p.pad_h, iw0 + p.pad_w),
                        (p.width - 1 - iw0) / s + 1});
    }
  }
  return copies;
}

// Writes plane x into the data positions of q. The padding positions are the same for every
// plane: q is zeroed once per thread and they stay zero.
template <typename scalar_t, typename acc_t>
void fill_padded(acc_t* __restrict q, const scalar_t* __restrict x,
                 const std::vector<RowCopy>& copies, int64_t stride_w) {
  if (stride_w == 1) {
    for (const RowCopy& c : copies) {
      acc_t* __restrict dst = q + c.dst;
      const scalar_t* __restrict src = x + c.src;
      for (int64_t i = 0; i < c.count; ++i) dst[i] = static_cast<acc_t>(src[i]);
    }
  } else {
    for (const RowCopy& c : copies) {
      acc_t* __restrict dst = q + c.dst;
      const scalar_t* __restrict src = x + c.src;
      for (int64_t i = 0; i < c.count; ++i) dst[i] = static_cast<acc_t>(src[i * stride_w]);
    }
  }
}

// Offsets of the KH * KW taps in the input layout, for outputs flattened by lay.cols.
std::vector<int64_t> tap_offsets(const DepthwiseParams& p, const PhaseLayout& lay) {
  std::vector<int64_t> off(p.kernel_h * p.kernel_w);
  for (int64_t kh = 0; kh < p.kernel_h; ++kh)
    for (int64_t kw = 0; kw < p.kernel_w; ++kw)
      off[kh * p.kernel_w + kw] = lay.at(kh * p.dil_h, kw * p.dil_w);
  return off;
}

// Planes per parallel task: enough multiply-adds (2^16, ~20 us) that a thread's share is
// worth waking it. (Measured on a quiet 2-core machine once OpenMP was really enabled:
// [8,960,7,7] forward 0.42 -> 0.21 ms against 2^22.)
int64_t grain_size(const DepthwiseParams& p) {
  const int64_t work = std::max<int64_t>(
      1, p.out_h * p.out_w * p.kernel_h * p.kernel_w * p.multiplier);
  return std::max<int64_t>(1, (int64_t(1) << 16) / work);
}

// Number of flattened outputs (rows of lay.cols, the last one only out_w long).
int64_t flat_outputs(const DepthwiseParams& p, const PhaseLayout& lay) {
  return (p.out_h - 1) * lay.cols + p.out_w;
}

// ---------------------------------------------------------------------------------------
// Channel-blocked path for small planes. With a 7x7-28x28 plane the plane path above is
// overhead-bound (a copy and a short flattened row per plane), so for small outputs a task
// takes a block of kBlock channels of one image instead: they are transposed into an
// interleaved buffer [rows][cols][kBlock] (one vector of kBlock channels per pixel, the
// vector across channels) and every kernel tap is one vector multiply-add per output pixel
// with the kBlock per-channel weights of the tap in a register; kCols output columns are
// register-blocked. The result is transposed back to the output's strides. Any kernel size,
// stride, dilation and padding runs the same loops (3x3 has compile-time kernel loops).
//
// * Forward: the input block in a zero-padded buffer [H + 2 pad_h][W + 2 pad_w].
// * Input gradient, stride 1: the correlation of the zero-margined output gradient with the
//   flipped kernel, the same loop as the forward. Larger strides: the same in gather form per
//   stride phase of the padded input (each phase is a stride-1 correlation with the taps of
//   that phase), the phases interleaved back into the plane.
// * Weight and bias gradient: per (image, channel block) task, vector accumulators per tap
//   (row dot products, a fixed summation order) over the plane; the per-image partials are
//   summed over the batch in index order, so the result is bitwise the same for any thread
//   count.
//
// Channel counts that are not a multiple of kBlock run the last block with the missing lanes
// zero (discarded). Any strides are read and written directly, so channels-last tensors need
// no NCHW copy. All four dtypes run it: half and bfloat16 are widened to float on load (the
// op-math type), float32 and float64 accumulate in their own type. Only multiplier 1 runs it;
// see use_blocked_path for the selection rule. The loops are always-inline bodies instantiated
// twice, for the baseline ISA and for AVX2+FMA, like the row kernels.
// ---------------------------------------------------------------------------------------

#if CVOPS_DW_VEC_LOOPS
constexpr int64_t kBlock = 8;  // channels per task: one AVX2 float vector
constexpr int64_t kCols = 4;   // output columns register-blocked in the tap loop

template <typename acc_t>
struct BlockVec {
  typedef acc_t type __attribute__((vector_size(kBlock * sizeof(acc_t))));
};

// The integer vector that indexes a V's lanes in GCC's __builtin_shuffle.
template <typename V>
struct BlockMask {
  using lane_t = std::remove_cv_t<std::remove_reference_t<decltype(V{}[0])>>;
  using int_t = std::conditional_t<sizeof(lane_t) == 4, int32_t, int64_t>;
  typedef int_t type __attribute__((vector_size(kBlock * sizeof(lane_t))));
};

// A zeroed, vector-aligned scratch buffer of n vectors (std::vector does not see the
// alignment of a vector-extension type used as a template argument).
template <typename V>
class VecBuffer {
 public:
  explicit VecBuffer(int64_t n) {
    const size_t bytes = (std::max<int64_t>(n, 1) * sizeof(V) + 63) / 64 * 64;
    data_ = static_cast<V*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(data_ != nullptr, "depthwise_conv2d: out of memory");
    std::memset(static_cast<void*>(data_), 0, bytes);
    n_ = n;
  }
  ~VecBuffer() { std::free(data_); }
  VecBuffer(const VecBuffer&) = delete;
  VecBuffer& operator=(const VecBuffer&) = delete;
  V* data() { return data_; }
  V& operator[](int64_t i) { return data_[i]; }
  void zero() { std::memset(static_cast<void*>(data_), 0, n_ * sizeof(V)); }

 private:
  V* data_;
  int64_t n_;
};
#endif

// Largest out_h * out_w that takes the blocked path, at stride 1 and at larger strides.
// Measured on the 2-core Zen 4 VM (fp32, 3x3, 1 and 2 threads): at stride 1 the blocked path
// wins up to 28x28 outputs and loses from 32x32; at stride 2 (where the plane path's phase
// split costs more) it is still 1.3-1.7x faster at 40x40 and 56x56 outputs.
constexpr int64_t kBlockedMaxPlane = 30 * 30;
constexpr int64_t kBlockedMaxPlaneStrided = 56 * 56;

// CVOPS_DEPTHWISE_CPU_PATH=blocked / plane forces a path (tests: both on the same shapes);
// read on every call. Multiplier > 1 always runs the plane path.
bool use_blocked_path(const DepthwiseParams& p) {
#if CVOPS_DW_VEC_LOOPS
  if (p.multiplier != 1) return false;
  const char* env = std::getenv("CVOPS_DEPTHWISE_CPU_PATH");
  if (env != nullptr && std::strcmp(env, "blocked") == 0) return true;
  if (env != nullptr && std::strcmp(env, "plane") == 0) return false;
  const bool strided = p.stride_h > 1 || p.stride_w > 1;
  return p.out_h * p.out_w <= (strided ? kBlockedMaxPlaneStrided : kBlockedMaxPlane);
#else
  (void)p;
  return false;
#endif
}

#if CVOPS_DW_VEC_LOOPS

// Strides (elements) of an NCHW-indexed tensor.
struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename scalar_t>
struct BlockedArgs {
  DepthwiseParams p;
  const scalar_t* src;  // forward and weight gradient: the input; input gradient: the grad
  Strides4 ss;
  const scalar_t* grad;  // weight gradient: the output gradient
  Strides4 gs;
  const scalar_t* weight;  // [C, KH * KW]
  const scalar_t* bias;    // or nullptr
  scalar_t* dst;           // forward output or input gradient
  Strides4 ds;
  at::opmath_type<scalar_t>* partial;  // weight gradient: [N][blocks][KK + 1][kBlock]
};

// dst[r * pitch + c][l] = src[l * sc + r * sh + c * sw] for r < rows, c < cols and the
// lanes l < nc; lanes nc..kBlock-1 are zeroed.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void gather_generic(V* __restrict dst, int64_t pitch,
                                               const scalar_t* __restrict src, int64_t sc,
                                               int64_t sh, int64_t sw, int64_t rows,
                                               int64_t cols, int64_t nc) {
  using acc_t = at::opmath_type<scalar_t>;
  if (sc == 1) {  // channels-last: the lanes of a pixel are contiguous
    if (nc == kBlock) {  // a full block: fixed-length loops, one vector load (and convert)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const scalar_t* s = src + r * sh + c * sw;
          V v;
          for (int64_t l = 0; l < kBlock; ++l) v[l] = static_cast<acc_t>(s[l]);
          dst[r * pitch + c] = v;
        }
      return;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const scalar_t* s = src + r * sh + c * sw;
        V v = {};
        for (int64_t l = 0; l < nc; ++l) v[l] = static_cast<acc_t>(s[l]);
        dst[r * pitch + c] = v;
      }
    return;
  }
  acc_t* d = reinterpret_cast<acc_t*>(dst);
  for (int64_t l = 0; l < nc; ++l)
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* __restrict s = src + l * sc + r * sh;
      acc_t* __restrict o = d + r * pitch * kBlock + l;
      for (int64_t c = 0; c < cols; ++c) o[c * kBlock] = static_cast<acc_t>(s[c * sw]);
    }
  for (int64_t l = nc; l < kBlock; ++l)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) d[(r * pitch + c) * kBlock + l] = acc_t(0);
}

// dst[l * dc + r * dh + c * dw] = src[r * pitch + c][l] for r < rows, c < cols, l < nc.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void scatter_generic(scalar_t* __restrict dst, int64_t dc,
                                                int64_t dh, int64_t dw, const V* __restrict src,
                                                int64_t pitch, int64_t rows, int64_t cols,
                                                int64_t nc) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* s = reinterpret_cast<const acc_t*>(src);
  if (dc == 1) {
    if (nc == kBlock) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const acc_t* __restrict v = s + (r * pitch + c) * kBlock;
          scalar_t* __restrict o = dst + r * dh + c * dw;
          for (int64_t l = 0; l < kBlock; ++l) o[l] = static_cast<scalar_t>(v[l]);
        }
      return;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const acc_t* __restrict v = s + (r * pitch + c) * kBlock;
        scalar_t* __restrict o = dst + r * dh + c * dw;
        for (int64_t l = 0; l < nc; ++l) o[l] = static_cast<scalar_t>(v[l]);
      }
    return;
  }
  for (int64_t l = 0; l < nc; ++l)
    for (int64_t r = 0; r < rows; ++r) {
      const acc_t* __restrict v = s + r * pitch * kBlock + l;
      scalar_t* __restrict o = dst + l * dc + r * dh;
      for (int64_t c = 0; c < cols; ++c) o[c * dw] = static_cast<scalar_t>(v[c * kBlock]);
    }
}

// Two-vector lane shuffle with constant indices: __builtin_shufflevector (Clang, GCC >= 12)
// or GCC's __builtin_shuffle with a mask vector.
#if defined(__clang__) || __GNUC__ >= 12
#define CVOPS_DW_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define CVOPS_DW_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, M{__VA_ARGS__})
#endif

// In-place transpose of the kBlock x kBlock matrix v[row][lane] (unpack, shuffle and 128-bit
// permute steps for 8 lanes).
template <typename V>
CVOPS_ALWAYS_INLINE inline void transpose_block(V* v) {
  static_assert(kBlock == 8, "transpose_block is written for 8 lanes");
  using M = typename BlockMask<V>::type;
  (void)sizeof(M);
  V t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = CVOPS_DW_SHUFFLE(v[i], v[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = CVOPS_DW_SHUFFLE(v[i], v[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = CVOPS_DW_SHUFFLE(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = CVOPS_DW_SHUFFLE(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = CVOPS_DW_SHUFFLE(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = CVOPS_DW_SHUFFLE(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int i = 0; i < 4; ++i) {
    v[i] = CVOPS_DW_SHUFFLE(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    v[i + 4] = CVOPS_DW_SHUFFLE(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}
#undef CVOPS_DW_SHUFFLE

// dst[i][l] = src[l * sc + i] for i < n and l < nc (lanes >= nc zero): kBlock x kBlock
// transposes, the last one overlapping the previous when n is not a multiple of kBlock.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void transpose_in(V* __restrict dst, const scalar_t* __restrict src,
                                             int64_t sc, int64_t n, int64_t nc) {
  using acc_t = at::opmath_type<scalar_t>;
  if (n < kBlock) {
    gather_generic(dst, n, src, sc, n, 1, 1, n, nc);
    return;
  }
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i = std::min(i0, n - kBlock);
    V v[kBlock];
    for (int64_t l = 0; l < kBlock; ++l) {
      V r = {};
      if (l < nc) {
        const scalar_t* s = src + l * sc + i;
        for (int64_t j = 0; j < kBlock; ++j) r[j] = static_cast<acc_t>(s[j]);
      }
      v[l] = r;
    }
    transpose_block(v);
    for (int64_t j = 0; j < kBlock; ++j) dst[i + j] = v[j];
  }
}

// dst[l * dc + i] = src[i][l] for i < n and l < nc.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void transpose_out(scalar_t* __restrict dst, int64_t dc,
                                              const V* __restrict src, int64_t n, int64_t nc) {
  if (n < kBlock) {
    scatter_generic(dst, dc, n, 1, src, n, 1, n, nc);
    return;
  }
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i = std::min(i0, n - kBlock);
    V v[kBlock];
    for (int64_t j = 0; j < kBlock; ++j) v[j] = src[i + j];
    transpose_block(v);
    for (int64_t l = 0; l < nc; ++l) {
      scalar_t* d = dst + l * dc + i;
      for (int64_t j = 0; j < kBlock; ++j) d[j] = static_cast<scalar_t>(v[l][j]);
    }
  }
}

// dst[r * pitch + c][l] = src[l * sc + r * sh + c * sw] for r < rows, c < cols and the
// lanes l < nc; lanes nc..kBlock-1 are zeroed. A dense NCHW plane goes through vector
// transposes: of the whole plane when dst is dense too, else row by row (rows of at least
// kBlock pixels) or through stage (rows * cols vectors).
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void gather_block(V* __restrict dst, int64_t pitch,
                                             const scalar_t* __restrict src, int64_t sc,
                                             int64_t sh, int64_t sw, int64_t rows, int64_t cols,
                                             int64_t nc, V* __restrict stage) {
  if (sc != 1 && sw == 1 && (sh == cols || rows == 1)) {
    if (pitch == cols || rows == 1) {
      transpose_in(dst, src, sc, rows * cols, nc);
      return;
    }
    if (cols >= kBlock) {  // row by row, straight into the padded rows
      for (int64_t r = 0; r < rows; ++r) transpose_in(dst + r * pitch, src + r * sh, sc, cols, nc);
      return;
    }
    transpose_in(stage, src, sc, rows * cols, nc);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[r * pitch + c] = stage[r * cols + c];
    return;
  }
  gather_generic(dst, pitch, src, sc, sh, sw, rows, cols, nc);
}

// dst[l * dc + r * dh + c * dw] = src[r * pitch + c][l] for r < rows, c < cols, l < nc.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void scatter_block(scalar_t* __restrict dst, int64_t dc, int64_t dh,
                                              int64_t dw, const V* __restrict src,
                                              int64_t pitch, int64_t rows, int64_t cols,
                                              int64_t nc, V* __restrict stage) {
  if (dc != 1 && dw == 1 && (dh == cols || rows == 1)) {
    if (pitch == cols || rows == 1) {
      transpose_out(dst, dc, src, rows * cols, nc);
      return;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) stage[r * cols + c] = src[r * pitch + c];
    transpose_out(dst, dc, stage, rows * cols, nc);
    return;
  }
  scatter_generic(dst, dc, dh, dw, src, pitch, rows, cols, nc);
}

// Loads the kBlock channels' weights of every tap (zero for lanes >= nc), optionally with the
// kernel flipped in both directions.
template <typename scalar_t, typename V>
CVOPS_ALWAYS_INLINE inline void load_block_weights(V* w, const scalar_t* weight, int64_t c0,
                                                   int64_t nc, int64_t KK, bool flip) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t t = 0; t < KK; ++t) {
    V v = {};
    const int64_t k = flip ? KK - 1 - t : t;
    for (int64_t l = 0; l < nc; ++l) v[l] = static_cast<acc_t>(weight[(c0 + l) * KK + k]);
    w[t] = v;
  }
}

// out[oh * out_pitch + ow] = init + sum over taps (kh, kw) of
// w[kh * KW + kw] * in[(oh * sh + kh * dh) * in_pitch + ow * sw + kw * dw], for oh < rows
// and ow < round_up(cols, kCols): the extra columns read past the row (the buffers have
// kCols * sw pixels of slack) and are discarded. KH_/KW_ > 0 fix the kernel at compile time,
// SW_ > 0 the column stride and DW_ > 0 the dilation (both directions).
struct BlockConv {
  int64_t rows, cols, out_pitch, in_pitch, sh, sw, dh, dw, kh, kw;
};

template <int KH_, int KW_, int SW_, int DW_, typename V>
CVOPS_ALWAYS_INLINE inline void block_conv(V* __restrict out, const V* __restrict in,
                                           const V* __restrict w, const V init,
                                           const BlockConv& g) {
  const int64_t KH = KH_ > 0 ? KH_ : g.kh, KW = KW_ > 0 ? KW_ : g.kw;
  constexpr int kFixed = KH_ > 0 && KW_ > 0 ? KH_ * KW_ : 1;
  V wf[kFixed];
  if (KH_ > 0 && KW_ > 0)
    for (int t = 0; t < kFixed; ++t) wf[t] = w[t];
  const V* wt = KH_ > 0 && KW_ > 0 ? wf : w;
  const int64_t sw = SW_ > 0 ? SW_ : g.sw, dh = DW_ > 0 ? DW_ : g.dh, dw = DW_ > 0 ? DW_ : g.dw;
  for (int64_t oh = 0; oh < g.rows; ++oh) {
    const V* row = in + oh * g.sh * g.in_pitch;
    V* o = out + oh * g.out_pitch;
    for (int64_t ow = 0; ow < g.cols; ow += kCols) {
      V acc[kCols];
      for (int r = 0; r < kCols; ++r) acc[r] = init;
      const V* base = row + ow * sw;
      for (int64_t kh = 0; kh < KH; ++kh) {
        const V* ir = base + kh * dh * g.in_pitch;
        for (int64_t kw = 0; kw < KW; ++kw) {
          const V wv = wt[kh * KW + kw];
          const V* ic = ir + kw * dw;
          for (int r = 0; r < kCols; ++r) acc[r] += wv * ic[r * sw];
        }
      }
      for (int r = 0; r < kCols; ++r) o[ow + r] = acc[r];
    }
  }
}

// Tasks [begin, end) of (image, channel block), block-major within an image.
template <int KH_, int KW_, int SW_, int DW_, typename scalar_t>
CVOPS_ALWAYS_INLINE inline void blocked_forward_body(const BlockedArgs<scalar_t>& a,
                                                     int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = typename BlockVec<acc_t>::type;
  const DepthwiseParams& p = a.p;
  const int64_t KK = p.kernel_h * p.kernel_w, blocks = (p.channels + kBlock - 1) / kBlock;
  const int64_t hp = p.height + 2 * p.pad_h, wp = p.width + 2 * p.pad_w;
  // Padding stays zero: only the interior is written, the same pixels for every task. The
  // output rows are dense (pitch out_w): the extra columns of a row's last kCols group land
  // on the next row, which is computed after, or in the slack.
  VecBuffer<V> in(hp * wp + kCols * p.stride_w);
  VecBuffer<V> out(p.out_h * p.out_w + kCols);
  VecBuffer<V> stage(std::max(p.height * p.width, p.out_h * p.out_w));
  VecBuffer<V> w(KK);
  const BlockConv g{p.out_h, p.out_w, p.out_w, wp, p.stride_h, p.stride_w,
                    p.dil_h, p.dil_w, p.kernel_h, p.kernel_w};
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / blocks, c0 = task % blocks * kBlock;
    const int64_t nc = std::min(kBlock, p.channels - c0);
    gather_block(in.data() + p.pad_h * wp + p.pad_w, wp, a.src + n * a.ss.n + c0 * a.ss.c,
                 a.ss.c, a.ss.h, a.ss.w, p.height, p.width, nc, stage.data());
    load_block_weights(w.data(), a.weight, c0, nc, KK, false);
    V init = {};
    if (a.bias != nullptr)
      for (int64_t l = 0; l < nc; ++l) init[l] = static_cast<acc_t>(a.bias[c0 + l]);
    block_conv<KH_, KW_, SW_, DW_>(out.data(), in.data(), w.data(), init, g);
    scatter_block(a.dst + n * a.ds.n + c0 * a.ds.c, a.ds.c, a.ds.h, a.ds.w, out.data(),
                  p.out_w, p.out_h, p.out_w, nc, stage.data());
  }
}

template <int KH_, int KW_, int SW_, int DW_, typename scalar_t>
CVOPS_ALWAYS_INLINE inline void blocked_backward_input_body(const BlockedArgs<scalar_t>& a,
                                                            int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = typename BlockVec<acc_t>::type;
  const DepthwiseParams& p = a.p;
  const int64_t KH = p.kernel_h, KW = p.kernel_w, KK = KH * KW;
  const int64_t blocks = (p.channels + kBlock - 1) / kBlock;
  const int64_t H = p.height, W = p.width, OH = p.out_h, OW = p.out_w;
  VecBuffer<V> w(KK);
  if (p.stride_h == 1 && p.stride_w == 1) {
    // grad_input[ih][iw] = sum_k w'[kh][kw] * gbuf[ih + pad_h + kh * dh][iw + pad_w + kw * dw]
    // with w' the flipped kernel and gbuf the gradient at (mh, mw), zero elsewhere.
    const int64_t mh = (KH - 1) * p.dil_h, mw = (KW - 1) * p.dil_w;
    const int64_t rows = std::max(H + p.pad_h + mh, OH + mh);
    const int64_t cols = std::max(W + p.pad_w + mw, OW + mw);
    VecBuffer<V> gbuf(rows * cols + kCols);
    VecBuffer<V> out(H * W + kCols);  // dense rows, as in the forward
    VecBuffer<V> stage(std::max(H * W, OH * OW));
    const BlockConv g{H, W, W, cols, 1, 1, p.dil_h, p.dil_w, KH, KW};
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, c0 = task % blocks * kBlock;
      const int64_t nc = std::min(kBlock, p.channels - c0);
      gather_block(gbuf.data() + mh * cols + mw, cols, a.src + n * a.ss.n + c0 * a.ss.c, a.ss.c,
                   a.ss.h, a.ss.w, OH, OW, nc, stage.data());
      load_block_weights(w.data(), a.weight, c0, nc, KK, true);
      block_conv<KH_, KW_, 1, DW_>(out.data(), gbuf.data() + p.pad_h * cols + p.pad_w, w.data(),
                                   V{}, g);
      scatter_block(a.dst + n * a.ds.n + c0 * a.ds.c, a.ds.c, a.ds.h, a.ds.w, out.data(), W, H,
                    W, nc, stage.data());
    }
    return;
  }
  // Stride > 1: gather form per stride phase. Padded input pixel (R, C) = (I * sh + rh,
  // J * sw + rw) receives, from the taps with (kh * dh) % sh == rh and (kw * dw) % sw == rw,
  // w[kh][kw] * grad[I - (kh * dh) / sh][J - (kw * dw) / sw]: a stride-1 correlation of the
  // gradient (at (mh, mw) in a zero-margined buffer) with the phase's taps. The phases are
  // computed whole, interleaved back into a dense [H][W] block and written out.
  const int64_t sh = p.stride_h, sw = p.stride_w, dh = p.dil_h, dw = p.dil_w;
  const int64_t hp = H + 2 * p.pad_h, wp = W + 2 * p.pad_w;
  const int64_t PI = (hp + sh - 1) / sh, PJ = (wp + sw - 1) / sw;  // the largest phase
  const int64_t mh = (KH - 1) * dh / sh, mw = (KW - 1) * dw / sw;
  const int64_t grows = std::max(PI, OH) + mh, gcols = std::max(PJ, OW) + mw;
  const int64_t phase_size = PI * PJ + kCols;
  VecBuffer<V> gbuf(grows * gcols + kCols);
  VecBuffer<V> phases(sh * sw * phase_size);
  VecBuffer<V> dense(H * W);
  VecBuffer<V> stage(std::max(H * W, OH * OW));
  // Per phase: tap offsets in gbuf and weight indices.
  std::vector<std::vector<int64_t>> offs(sh * sw), widx(sh * sw);
  for (int64_t kh = 0; kh < KH; ++kh)
    for (int64_t kw = 0; kw < KW; ++kw) {
      const int64_t ph = (kh * dh) % sh * sw + (kw * dw) % sw;
      offs[ph].push_back((mh - kh * dh / sh) * gcols + mw - kw * dw / sw);
      widx[ph].push_back(kh * KW + kw);
    }
  VecBuffer<V> pw(KK);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / blocks, c0 = task % blocks * kBlock;
    const int64_t nc = std::min(kBlock, p.channels - c0);
    gather_block(gbuf.data() + mh * gcols + mw, gcols, a.src + n * a.ss.n + c0 * a.ss.c, a.ss.c,
                 a.ss.h, a.ss.w, OH, OW, nc, stage.data());
    load_block_weights(w.data(), a.weight, c0, nc, KK, false);
    for (int64_t ph = 0; ph < sh * sw; ++ph) {
      const int64_t T = static_cast<int64_t>(offs[ph].size());
      const int64_t* off = offs[ph].data();
      for (int64_t t = 0; t < T; ++t) pw[t] = w[widx[ph][t]];
      // out[I][J] = sum_t pw[t] * gbuf[I * gcols + J + off[t]], rows of PJ (dense, the extra
      // columns of the last kCols group spill into the next row or the slack).
      V* __restrict out = phases.data() + ph * phase_size;
      const V* __restrict gb = gbuf.data();
      for (int64_t I = 0; I < PI; ++I)
        for (int64_t J = 0; J < PJ; J += kCols) {
          V acc[kCols];
          for (int r = 0; r < kCols; ++r) acc[r] = V{};
          const V* base = gb + I * gcols + J;
          for (int64_t t = 0; t < T; ++t) {
            const V wv = pw[t];
            const V* src = base + off[t];
            for (int r = 0; r < kCols; ++r) acc[r] += wv * src[r];
          }
          for (int r = 0; r < kCols; ++r) out[I * PJ + J + r] = acc[r];
        }
    }
    for (int64_t ih = 0; ih < H; ++ih) {
      const int64_t R = ih + p.pad_h, rh = R % sh, I = R / sh;
      V* __restrict d = dense.data() + ih * W;
      const V* src = phases.data() + rh * sw * phase_size + I * PJ;
      int64_t rw = p.pad_w % sw, J = p.pad_w / sw;
      for (int64_t iw = 0; iw < W; ++iw) {
        d[iw] = src[rw * phase_size + J];
        if (++rw == sw) {
          rw = 0;
          ++J;
        }
      }
    }
    scatter_block(a.dst + n * a.ds.n + c0 * a.ds.c, a.ds.c, a.ds.h, a.ds.w, dense.data(), W, H,
                  W, nc, stage.data());
  }
}

// acc[k] += sum over ow < n of g[ow] * in[ow * sw + k * dw], k < NK, with kCols independent
// accumulator sets (the sum order is fixed: deterministic). SW_/DW_ > 0: compile-time sw/dw.
template <int NK, int SW_, int DW_, typename V>
CVOPS_ALWAYS_INLINE inline void dot_row(V* __restrict acc, const V* __restrict g,
                                        const V* __restrict in, int64_t n, int64_t sw_,
                                        int64_t dw_) {
  const int64_t sw = SW_ > 0 ? SW_ : sw_, dw = DW_ > 0 ? DW_ : dw_;
  V a[kCols][NK];
  for (int r = 0; r < kCols; ++r)
    for (int k = 0; k < NK; ++k) a[r][k] = V{};
  int64_t ow = 0;
  for (; ow + kCols <= n; ow += kCols)
    for (int r = 0; r < kCols; ++r) {
      const V gv = g[ow + r];
      for (int k = 0; k < NK; ++k) a[r][k] += gv * in[(ow + r) * sw + k * dw];
    }
  for (; ow < n; ++ow) {
    const V gv = g[ow];
    for (int k = 0; k < NK; ++k) a[0][k] += gv * in[ow * sw + k * dw];
  }
  for (int k = 0; k < NK; ++k) acc[k] += (a[0][k] + a[1][k]) + (a[2][k] + a[3][k]);
}

template <int KH_, int KW_, int SW_, int DW_, typename scalar_t>
CVOPS_ALWAYS_INLINE inline void blocked_backward_weight_body(const BlockedArgs<scalar_t>& a,
                                                             int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = typename BlockVec<acc_t>::type;
  const DepthwiseParams& p = a.p;
  const int64_t KH = KH_ > 0 ? KH_ : p.kernel_h, KW = KW_ > 0 ? KW_ : p.kernel_w;
  const int64_t KK = KH * KW, blocks = (p.channels + kBlock - 1) / kBlock;
  const int64_t hp = p.height + 2 * p.pad_h, wp = p.width + 2 * p.pad_w;
  const int64_t OH = p.out_h, OW = p.out_w, sh = p.stride_h, sw = SW_ > 0 ? SW_ : p.stride_w;
  const int64_t dh = DW_ > 0 ? DW_ : p.dil_h, dw = DW_ > 0 ? DW_ : p.dil_w;
  VecBuffer<V> in(hp * wp);
  VecBuffer<V> gbuf(OH * OW);
  VecBuffer<V> stage(p.height * p.width);
  VecBuffer<V> accv(KK + 1);  // the taps, then the bias
  VecBuffer<V> ones(1);
  ones[0] = V{} + acc_t(1);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / blocks, c0 = task % blocks * kBlock;
    const int64_t nc = std::min(kBlock, p.channels - c0);
    gather_block(in.data() + p.pad_h * wp + p.pad_w, wp, a.src + n * a.ss.n + c0 * a.ss.c,
                 a.ss.c, a.ss.h, a.ss.w, p.height, p.width, nc, stage.data());
    gather_block(gbuf.data(), OW, a.grad + n * a.gs.n + c0 * a.gs.c, a.gs.c, a.gs.h, a.gs.w, OH,
                 OW, nc, stage.data());
    // Row by row: per kernel row (3x3) or per tap (other kernels), kCols columns at a time
    // into kCols independent accumulator sets, added into acc at the end of the row.
    V* __restrict acc = accv.data();
    for (int64_t t = 0; t <= KK; ++t) acc[t] = V{};
    const V* __restrict q = in.data();
    for (int64_t oh = 0; oh < OH; ++oh) {
      const V* grow = gbuf.data() + oh * OW;
      dot_row<1, 0, 0>(acc + KK, grow, ones.data(), OW, 0, 0);  // bias: ones[0] * g
      for (int64_t kh = 0; kh < KH; ++kh) {
        const V* irow = q + (oh * sh + kh * dh) * wp;
        if (KW_ > 0)
          dot_row<(KW_ > 0 ? KW_ : 1), SW_, DW_>(acc + kh * KW, grow, irow, OW, sw, dw);
        else
          for (int64_t kw = 0; kw < KW; ++kw)
            dot_row<1, 0, 0>(acc + kh * KW + kw, grow, irow + kw * dw, OW, sw, dw);
      }
    }
    V* res = reinterpret_cast<V*>(a.partial) + task * (KK + 1);
    for (int64_t t = 0; t <= KK; ++t) res[t] = acc[t];
  }
}

// The baseline and AVX2+FMA instantiations of a body, and the dispatch: 3x3 undilated at
// column stride 1 or 2 at compile time, everything else through the runtime loops.
#define CVOPS_DW_BLOCKED_CLONES(NAME)                                                    \
  template <int KH_, int KW_, int SW_, int DW_, typename scalar_t>                       \
  void NAME##_base(const BlockedArgs<scalar_t>& a, int64_t begin, int64_t end) {         \
    NAME##_body<KH_, KW_, SW_, DW_, scalar_t>(a, begin, end);                            \
  }                                                                                      \
  template <int KH_, int KW_, int SW_, int DW_, typename scalar_t>                       \
  CVOPS_TARGET_AVX2 void NAME##_avx2(const BlockedArgs<scalar_t>& a, int64_t begin,      \
                                     int64_t end) {                                      \
    NAME##_body<KH_, KW_, SW_, DW_, scalar_t>(a, begin, end);                            \
  }                                                                                      \
  template <typename scalar_t>                                                           \
  void NAME(const BlockedArgs<scalar_t>& a, int64_t begin, int64_t end) {                \
    const DepthwiseParams& p = a.p;                                                      \
    const bool k3 = p.kernel_h == 3 && p.kernel_w == 3 && p.dil_h == 1 && p.dil_w == 1;  \
    const bool avx2 = cpu_has_avx2();                                                    \
    if (k3 && p.stride_w == 1)                                                           \
      (avx2 ? NAME##_avx2<3, 3, 1, 1, scalar_t> : NAME##_base<3, 3, 1, 1, scalar_t>)(    \
          a, begin, end);                                                                \
    else if (k3 && p.stride_w == 2)                                                      \
      (avx2 ? NAME##_avx2<3, 3, 2, 1, scalar_t> : NAME##_base<3, 3, 2, 1, scalar_t>)(    \
          a, begin, end);                                                                \
    else                                                                                 \
      (avx2 ? NAME##_avx2<0, 0, 0, 0, scalar_t> : NAME##_base<0, 0, 0, 0, scalar_t>)(    \
          a, begin, end);                                                                \
  }

CVOPS_DW_BLOCKED_CLONES(blocked_forward)
CVOPS_DW_BLOCKED_CLONES(blocked_backward_input)
CVOPS_DW_BLOCKED_CLONES(blocked_backward_weight)
#undef CVOPS_DW_BLOCKED_CLONES

// res[c][t] = sum over n, in index order, of partial[n][c / kBlock][t][c % kBlock]: one vector
// of kBlock channels at a time (the same order per channel, so the same bits).
template <typename acc_t>
void blocked_reduce_partials(acc_t* res, const acc_t* partial, int64_t batch, int64_t blocks,
                             int64_t T, int64_t channels) {
  using V = typename BlockVec<acc_t>::type;
  const V* part = reinterpret_cast<const V*>(partial);
  for (int64_t cb = 0; cb < blocks; ++cb)
    for (int64_t t = 0; t < T; ++t) {
      V sum = part[cb * T + t];
      for (int64_t n = 1; n < batch; ++n) sum += part[(n * blocks + cb) * T + t];
      for (int64_t l = 0; l < kBlock && cb * kBlock + l < channels; ++l)
        res[(cb * kBlock + l) * T + t] = sum[l];
    }
}

// (image, channel block) tasks per parallel chunk: 2^16 multiply-adds, as grain_size.
int64_t blocked_grain(const DepthwiseParams& p) {
  const int64_t work = std::max<int64_t>(
      1, kBlock * std::max(p.out_h * p.out_w, p.height * p.width) * p.kernel_h * p.kernel_w);
  return std::max<int64_t>(1, (int64_t(1) << 16) / work);
}

int64_t blocked_tasks(const DepthwiseParams& p) {
  return p.batch * ((p.channels + kBlock - 1) / kBlock);
}

template <typename scalar_t>
void blocked_run(void (*fn)(const BlockedArgs<scalar_t>&, int64_t, int64_t),
                 const BlockedArgs<scalar_t>& a) {
  at::parallel_for(0, blocked_tasks(a.p), blocked_grain(a.p),
                   [&](int64_t begin, int64_t end) { fn(a, begin, end); });
}

#endif  // CVOPS_DW_VEC_LOOPS

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <typename scalar_t>
void forward_impl(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::Tensor& output,
                  const DepthwiseParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhaseLayout lay = input_layout(p);
  const int64_t KK = p.kernel_h * p.kernel_w, M = p.multiplier, OH = p.out_h, OW = p.out_w;
  const int64_t E = round_up(flat_outputs(p, lay));
  const std::vector<int64_t> offsets = tap_offsets(p, lay);
  const std::vector<RowCopy> copies = padded_copies(p, lay);
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  const scalar_t* b = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t in_plane = p.height * p.width, out_plane = OH * OW;

  at::parallel_for(0, p.batch * p.channels, grain_size(p), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q(lay.numel() + kRound);
    std::vector<acc_t> flat(E);
    std::vector<Tap<acc_t>> taps(KK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ci = task % p.channels;
      fill_padded(q.data(), x + task * in_plane, copies, p.stride_w);
      for (int64_t m = 0; m < M; ++m) {
        const int64_t co = ci * M + m;
        for (int64_t t = 0; t < KK; ++t)
          taps[t] = {offsets[t], static_cast<acc_t>(w[co * KK + t])};
        const acc_t init = b ? static_cast<acc_t>(b[co]) : acc_t(0);
        sum_taps(flat.data(), q.data(), taps.data(), KK, init, E);
        scalar_t* o = out + (task * M + m) * out_plane;  // task * M + m == n * C_out + co
        for (int64_t oh = 0; oh < OH; ++oh) {
          const acc_t* __restrict src = flat.data() + oh * lay.cols;
          scalar_t* __restrict dst = o + oh * OW;
          for (int64_t ow = 0; ow < OW; ++ow) dst[ow] = static_cast<scalar_t>(src[ow]);
        }
      }
    }
  });
}

at::Tensor depthwise_conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation) {
  const auto p = check_depthwise_forward_args(input, weight, bias, stride, padding, dilation);
  const auto format = depthwise_result_format(input);
  const bool blocked = use_blocked_path(p);
  // The blocked path writes the result in its final memory format through strides.
  at::Tensor output =
      at::empty({p.batch, p.out_channels(), p.out_h, p.out_w},
                input.options().memory_format(blocked ? format : at::MemoryFormat::Contiguous));
  if (output.numel() == 0) return output.contiguous(format);
#if CVOPS_DW_VEC_LOOPS
  if (blocked) {
    // Reads the input through its strides too.
    at::Tensor w = weight.contiguous();
    at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "cvops_depthwise_conv2d_cpu", [&] {
          BlockedArgs<scalar_t> a{};
          a.p = p;
          a.src = input.const_data_ptr<scalar_t>();
          a.ss = strides_of(input);
          a.weight = w.const_data_ptr<scalar_t>();
          a.bias = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
          a.dst = output.mutable_data_ptr<scalar_t>();
          a.ds = strides_of(output);
          blocked_run<scalar_t>(&blocked_forward<scalar_t>, a);
        });
    return output;
  }
#endif
  at::Tensor in = input.contiguous();
  at::Tensor w = weight.contiguous();
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "cvops_depthwise_conv2d_cpu",
                                  [&] { forward_impl<scalar_t>(in, w, b, output, p); });
  return format == at::MemoryFormat::Contiguous ? output : output.contiguous(format);
}

// ---------------------------------------------------------------------------------------
// Input gradient, in gather form over the same phase layout: padded input pixel (R, c) in
// phase (rh, rw) = (R % s_h, c % s_w) at (I, J) = (R / s_h, c / s_w) receives, from every
// tap with (kh*d_h) % s_h == rh and (kw*d_w) % s_w == rw, w * grad[I - (kh*d_h)/s_h]
// [J - (kw*d_w)/s_w]. The grad plane is copied with zero margins (top mh, left mw rows and
// columns, the largest such offsets), so each phase is again one flattened row per tap.
// ---------------------------------------------------------------------------------------

struct InputPhase {
  int64_t rh, rw;            // phase
  int64_t i0, i1, j0, j1;    // (I, J) range that maps back onto real input pixels
  std::vector<int64_t> offsets, weight_index, channel;  // per tap: in gpad, in w, m
};

template <typename scalar_t>
void backward_input_impl(const at::Tensor& grad, const at::Tensor& weight,
                         at::Tensor& grad_input, const DepthwiseParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const PhaseLayout lay = input_layout(p);
  const int64_t KH = p.kernel_h, KW = p.kernel_w, KK = KH * KW, M = p.multiplier;
  const int64_t OH = p.out_h, OW = p.out_w, H = p.height, W = p.width;
  const int64_t sh = p.stride_h, sw = p.stride_w;
  const int64_t mh = phase_index((KH - 1) * p.dil_h, sh), mw = phase_index((KW - 1) * p.dil_w, sw);
  const int64_t gcols = lay.cols + mw, grows = lay.rows + mh;  // gpad plane: grows x gcols
  const int64_t gplane = grows * gcols;

  // Tap lists per phase, shared by all planes.
  std::vector<InputPhase> phases;
  for (int64_t rh = 0; rh < sh; ++rh) {
    for (int64_t rw = 0; rw < sw; ++rw) {
      InputPhase ph;
      ph.rh = rh;
      ph.rw = rw;
      // Padded rows R in [pad_h, pad_h + H) with R % sh == rh -> I = R / sh.
      const int64_t ih_first = ((rh - p.pad_h) % sh + sh) % sh;
      const int64_t iw_first = ((rw - p.pad_w) % sw + sw) % sw;
      if (ih_first >= H || iw_first >= W) continue;
      ph.i0 = (ih_first + p.pad_h) / sh;
      ph.i1 = (ih_first + (H - 1 - ih_first) / sh * sh + p.pad_h) / sh;
      ph.j0 = (iw_first + p.pad_w) / sw;
      ph.j1 = (iw_first + (W - 1 - iw_first) / sw * sw + p.pad_w) / sw;
      for (int64_t kh = 0; kh < KH; ++kh) {
        if ((kh * p.dil_h) % sh != rh) continue;
        for (int64_t kw = 0; kw < KW; ++kw) {
          if ((kw * p.dil_w) % sw != rw) continue;
          for (int64_t m = 0; m < M; ++m) {
            ph.offsets.push_back(m * gplane + (mh - (kh * p.dil_h) / sh) * gcols + mw -
                                 (kw * p.dil_w) / sw);
            ph.weight_index.push_back(kh * KW + kw);
            ph.channel.push_back(m);
          }
        }
      }
      phases.push_back(std::move(ph));
    }
  }

  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
  const int64_t out_plane = OH * OW, in_plane = H * W;

  at::parallel_for(0, p.batch * p.channels, grain_size(p), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gpad(M * gplane + kRound);
    std::vector<acc_t> flat(round_up(lay.rows * gcols));
    std::vector<Tap<acc_t>> taps(M * KK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ci = task % p.channels;
      // (gpad's margins are never written: zeroed once, at allocation)
      for (int64_t m = 0; m < M; ++m) {
        const scalar_t* gp = g + (task * M + m) * out_plane;
        for (int64_t oh = 0; oh < OH; ++oh) {
          acc_t* __restrict dst = gpad.data() + m * gplane + (oh + mh) * gcols + mw;
          const scalar_t* __restrict src = gp + oh * OW;
          for (int64_t ow = 0; ow < OW; ++ow) dst[ow] = static_cast<acc_t>(src[ow]);
        }
      }
      scalar_t* gip = gi + task * in_plane;
      for (const InputPhase& ph : phases) {
        const int64_t count = static_cast<int64_t>(ph.offsets.size());
        for (int64_t t = 0; t < count; ++t)
          taps[t] = {ph.offsets[t],
                     static_cast<acc_t>(w[(ci * M + ph.channel[t]) * KK + ph.weight_index[t]])};
        // Flattened (I, J) range [i0 * gcols + j0, i1 * gcols + j1].
        const int64_t e0 = ph.i0 * gcols + ph.j0;
        const int64_t n = round_up((ph.i1 - ph.i0) * gcols + ph.j1 - ph.j0 + 1);
        sum_taps(flat.data(), gpad.data() + e0, taps.data(), count, acc_t(0), n);
        for (int64_t I = ph.i0; I <= ph.i1; ++I) {
          const int64_t ih = I * sh + ph.rh - p.pad_h;
          const acc_t* src = flat.data() + (I - ph.i0) * gcols - ph.j0;
          scalar_t* dst = gip + ih * W;
          if (sw == 1) {
            const acc_t* __restrict s1 = src + ph.j0;
            scalar_t* __restrict d1 = dst + ph.j0 - p.pad_w;
            for (int64_t j = 0; j <= ph.j1 - ph.j0; ++j) d1[j] = static_cast<scalar_t>(s1[j]);
          } else {
            for (int64_t J = ph.j0; J <= ph.j1; ++J)
              dst[J * sw + ph.rw - p.pad_w] = static_cast<scalar_t>(src[J]);
          }
        }
      }
    }
  });
}

at::Tensor depthwise_conv2d_backward_input_cpu(const at::Tensor& grad, const at::Tensor& weight,
                                               int64_t batch, int64_t channels, int64_t height,
                                               int64_t width, at::IntArrayRef stride,
                                               at::IntArrayRef padding,
                                               at::IntArrayRef dilation) {
  const auto p = check_depthwise_backward_input_args(grad, weight, batch, channels, height,
                                                     width, stride, padding, dilation);
  const auto format = depthwise_result_format(grad);
  const bool blocked = use_blocked_path(p);
  at::Tensor grad_input =
      at::empty({batch, channels, height, width},
                grad.options().memory_format(blocked ? format : at::MemoryFormat::Contiguous));
  if (grad_input.numel() == 0) return grad_input.contiguous(format);
#if CVOPS_DW_VEC_LOOPS
  if (blocked) {
    at::Tensor w = weight.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(),
        "cvops_depthwise_conv2d_backward_input_cpu", [&] {
          BlockedArgs<scalar_t> a{};
          a.p = p;
          a.src = grad.const_data_ptr<scalar_t>();
          a.ss = strides_of(grad);
          a.weight = w.const_data_ptr<scalar_t>();
          a.dst = grad_input.mutable_data_ptr<scalar_t>();
          a.ds = strides_of(grad_input);
          blocked_run<scalar_t>(&blocked_backward_input<scalar_t>, a);
        });
    return grad_input;
  }
#endif
  at::Tensor g = grad.contiguous();
  at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "cvops_depthwise_conv2d_backward_input_cpu",
                                  [&] { backward_input_impl<scalar_t>(g, w, grad_input, p); });
  return format == at::MemoryFormat::Contiguous ? grad_input : grad_input.contiguous(format);
}

// ---------------------------------------------------------------------------------------
// Weight and bias gradient: gw[co][tap] = sum over n of the dot product of grad[n][co]
// (flattened like the forward's outputs, zeros in the gap columns) with the tap's range
// of the padded input plane; the bias is one more tap, a dot product with ones. One task per
// input channel visits the images in index order and keeps per-lane partial sums until the
// end: the result is deterministic and independent of the thread count.
// ---------------------------------------------------------------------------------------

template <typename scalar_t>
void backward_weight_impl(const at::Tensor& grad, const at::Tensor& input, at::Tensor& result,
                          const DepthwiseParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t L = VecOf<acc_t>::kLanes;
  const PhaseLayout lay = input_layout(p);
  const int64_t KK = p.kernel_h * p.kernel_w, M = p.multiplier, OH = p.out_h, OW = p.out_w;
  const int64_t C = p.channels, taps = KK + 1;
  const int64_t E = round_up(flat_outputs(p, lay));
  std::vector<int64_t> offsets = tap_offsets(p, lay);
  const int64_t ones_at = lay.numel() + kRound;  // the ones, after the slack
  offsets.push_back(ones_at);
  const std::vector<RowCopy> copies = padded_copies(p, lay);
  const int64_t in_plane = p.height * p.width, out_plane = OH * OW;
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  acc_t* res = result.mutable_data_ptr<acc_t>();  // [C_out][KK + 1]: taps, then bias
  const int64_t work = std::max<int64_t>(1, p.batch * OH * OW * KK * M);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / work);

  at::parallel_for(0, C, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> q(ones_at + E, acc_t(0));
    std::fill(q.begin() + ones_at, q.end(), acc_t(1));
    std::vector<acc_t> gflat(E, acc_t(0));  // gap columns and the rounding stay zero
    std::vector<acc_t> lanes(M * taps * L);
    for (int64_t ci = begin; ci < end; ++ci) {
      std::fill(lanes.begin(), lanes.end(), acc_t(0));
      for (int64_t n = 0; n < p.batch; ++n) {
        fill_padded(q.data(), x + (n * C + ci) * in_plane, copies, p.stride_w);
        for (int64_t m = 0; m < M; ++m) {
          const scalar_t* gp = g + ((n * C + ci) * M + m) * out_plane;
          for (int64_t oh = 0; oh < OH; ++oh) {
            acc_t* __restrict dst = gflat.data() + oh * lay.cols;
            const scalar_t* __restrict src = gp + oh * OW;
            for (int64_t ow = 0; ow < OW; ++ow) dst[ow] = static_cast<acc_t>(src[ow]);
          }
          dot_taps(lanes.data() + m * taps * L, gflat.data(), q.data(), offsets.data(), taps, E);
        }
      }
      for (int64_t m = 0; m < M; ++m)
        for (int64_t t = 0; t < taps; ++t) {
          const acc_t* l = lanes.data() + (m * taps + t) * L;
          acc_t sum = 0;
          for (int64_t i = 0; i < L; ++i) sum += l[i];
          res[(ci * M + m) * taps + t] = sum;
        }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> depthwise_conv2d_backward_weight_cpu(
    const at::Tensor& grad, const at::Tensor& input, int64_t kernel_h, int64_t kernel_w,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = check_depthwise_backward_weight_args(grad, input, kernel_h, kernel_w, stride,
                                                      padding, dilation);
  const int64_t C_out = p.out_channels(), KK = kernel_h * kernel_w;
  const auto acc_type = at::toOpMathType(input.scalar_type());
  at::Tensor result;
  if (p.batch > 0) {
    // Every element is written by the kernel (no fill: under load, even a parallel fill of a
    // small buffer can wait milliseconds for a descheduled thread).
    result = at::empty({C_out, KK + 1}, input.options().dtype(acc_type));
#if CVOPS_DW_VEC_LOOPS
    if (use_blocked_path(p)) {
      // One partial per (image, channel block), summed over the images in index order.
      at::Tensor partial =
          at::empty({blocked_tasks(p) * (KK + 1) * kBlock}, input.options().dtype(acc_type));
      AT_DISPATCH_FLOATING_TYPES_AND2(
          at::kHalf, at::kBFloat16, input.scalar_type(),
          "cvops_depthwise_conv2d_backward_weight_cpu", [&] {
            using acc_t = at::opmath_type<scalar_t>;
            BlockedArgs<scalar_t> a{};
            a.p = p;
            a.src = input.const_data_ptr<scalar_t>();
            a.ss = strides_of(input);
            a.grad = grad.const_data_ptr<scalar_t>();
            a.gs = strides_of(grad);
            a.partial = partial.mutable_data_ptr<acc_t>();
            blocked_run<scalar_t>(&blocked_backward_weight<scalar_t>, a);
            const int64_t blocks = (p.channels + kBlock - 1) / kBlock, T = KK + 1;
            blocked_reduce_partials(result.mutable_data_ptr<acc_t>(), a.partial, p.batch,
                                    blocks, T, p.channels);
          });
    } else
#endif
    {
      at::Tensor g = grad.contiguous();
      at::Tensor x = input.contiguous();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                      "cvops_depthwise_conv2d_backward_weight_cpu",
                                      [&] { backward_weight_impl<scalar_t>(g, x, result, p); });
    }
  } else {
    result = at::zeros({C_out, KK + 1}, input.options().dtype(acc_type));
  }
  at::Tensor grad_weight =
      result.narrow(1, 0, KK).reshape({C_out, 1, kernel_h, kernel_w}).to(input.scalar_type());
  at::Tensor grad_bias = result.select(1, KK).to(input.scalar_type()).contiguous();
  return {grad_weight.contiguous(), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_forward_cpu);
  m.impl("_depthwise_conv2d_backward_input", &depthwise_conv2d_backward_input_cpu);
  m.impl("_depthwise_conv2d_backward_weight", &depthwise_conv2d_backward_weight_cpu);
}

}  // namespace cvops
