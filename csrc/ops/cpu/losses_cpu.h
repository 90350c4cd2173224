// Fused focal / Dice loss CPU kernels: forward and backward, float/double/half/bfloat16.
// This private header (included only by csrc/ops/cpu/losses_*.cpp) holds what they share:
// per-dtype SIMD loads and stores, lane masks, the gamma dispatch, the chunk sizes, the
// argument structs, and the declarations of the reduction kernels that more than one file
// calls. The kernels are dispatched over 4 dtypes x gamma x ISA x flags; one file with all
// of them took minutes to compile alone and held up parallel builds, so they are split by op
// (one purpose per file, each well under a minute):
//
// | file                                     | holds                                          |
// |------------------------------------------|------------------------------------------------|
// | losses_sigmoid_focal.cpp                 | sigmoid_focal_loss, its backward, the fused op |
// | losses_stats.cpp                         | _loss_stats and backward: checks, dispatch     |
// | losses_stats_rows.cpp                    | row_stats (binary / multilabel / focal sums)   |
// | losses_stats_rows_backward.cpp           | row_stats_backward                             |
// | losses_stats_multiclass.cpp              | multiclass_stats and its backward              |
//
// SIMD: the vector types, math and dispatch_isa of common/simd.h (GCC/Clang vector extensions,
// 4/8/16 float lanes for SSE2/AVX2/AVX-512, exp/log/log1p as branch-free Cephes polynomials,
// <= 2 ulp). float64 runs the same formulas on scalars (libm).
// half/bfloat16 are widened to float on load; everything accumulates in float (double for
// double) and the final cross-chunk sums in double.
//
// Determinism: every reduction is two-stage. Work is cut into fixed chunks (independent of
// the thread count); each chunk writes its partial sums to its own slot, and the slots are
// then added in index order. Results are bitwise repeatable for any number of threads.
// 8- and 16-lane vectors only ever run inside the AVX2 / AVX-512 functions (everything is
// inlined there), so GCC's note that their out-of-line ABI would differ without AVX does not
// apply (common/simd.h switches it off for its includers).
//
// Everything defined here is a template or inline; the reduction kernels declared at the end
// are defined, and instantiated for the four dtypes, in the file the table names.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/cpu_utils.h"
#include "common/simd.h"
#include "ops/losses.h"

namespace cvops {
namespace loss_cpu {

using namespace loss_math;
using namespace simd;

// Loads and stores per element type: float-like types use L float lanes, double 1 lane.
template <typename scalar_t, int L>
struct SimdT {
  static constexpr int64_t W = L;
  using M = VecMathT<L>;
  using V = typename M::V;
  using IV = typename M::IV;
  static CVOPS_CPU_INLINE V load(const scalar_t* p) {
    V v;
    if constexpr (std::is_same_v<scalar_t, float>) {
      std::memcpy(&v, p, sizeof(v));
    } else {
      for (int i = 0; i < L; ++i) v[i] = static_cast<float>(p[i]);
    }
    return v;
  }
  static CVOPS_CPU_INLINE void store(scalar_t* p, V v) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      std::memcpy(p, &v, sizeof(v));
    } else {
      for (int i = 0; i < L; ++i) p[i] = static_cast<scalar_t>(v[i]);
    }
  }
  static CVOPS_CPU_INLINE IV loadi(const int32_t* p) {
    IV v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static CVOPS_CPU_INLINE IV spliti(int32_t v) { return M::splati(v); }
  static CVOPS_CPU_INLINE float sum(V v) { return M::hsum(v); }
};

template <int L>
struct SimdT<double, L> {
  static constexpr int64_t W = 1;
  using M = ScalarMath<double>;
  using V = double;
  using IV = int32_t;
  static CVOPS_CPU_INLINE V load(const double* p) { return *p; }
  static CVOPS_CPU_INLINE void store(double* p, V v) { *p = v; }
  static CVOPS_CPU_INLINE IV loadi(const int32_t* p) { return *p; }
  static CVOPS_CPU_INLINE IV spliti(int32_t v) { return v; }
  static CVOPS_CPU_INLINE double sum(V v) { return v; }
};

// Copies n < W elements into a zero-padded buffer of W.
template <typename scalar_t, int64_t W>
struct Padded {
  scalar_t v[W];
  CVOPS_CPU_INLINE Padded(const scalar_t* p, int64_t n) {
    for (int64_t i = 0; i < W; ++i) v[i] = i < n ? p[i] : scalar_t(0);
  }
};

// 1 on the first n lanes, 0 on the others.
template <typename S>
CVOPS_CPU_INLINE typename S::V lane_mask(int64_t n) {
  typename S::V v = S::M::c(0);
  if constexpr (S::W == 1) {
    v = n > 0 ? 1.0 : 0.0;
  } else {
    for (int64_t i = 0; i < S::W; ++i) v[i] = i < n ? 1.f : 0.f;
  }
  return v;
}

// v on the lanes where the 0/1 mask m is 1, else 0. A select, not v * m: an ignored position
// (or a class that is not the target) may hold an infinite or NaN term, and 0 * inf = NaN
// would poison the sum. F.cross_entropy skips such positions the same way.
template <typename M, typename V>
CVOPS_CPU_INLINE V masked(V m, V v) {
  return M::where(M::eq(m, M::c(0)), M::c(0), v);
}

constexpr int64_t kRowChunk = 4096;  // elements per partial sum (binary / multilabel)
constexpr int64_t kPixChunk = 256;   // pixels per partial sum (multiclass)

struct SigmoidFocalParams {
  double a1, a0, gamma;
};

inline SigmoidFocalParams sigmoid_focal_params(double alpha, double gamma) {
  return alpha >= 0 ? SigmoidFocalParams{alpha, 1.0 - alpha, gamma}
                    : SigmoidFocalParams{1.0, 1.0, gamma};
}

// Row statistics (binary / multilabel / sigmoid focal reductions): x, t are [R, L].
struct StatsArgs {
  bool from_logits, has_ignore;
  double ignore;
  SigmoidFocalParams fp;
};

// Multiclass statistics: x [N, C, L] logits (or probabilities), y [N, L] int64 classes.
struct MulticlassArgs {
  int64_t classes, len;
  bool from_logits, has_ignore;
  int64_t ignore;
  double gamma;
  const double* alpha;  // [C]
};

// The reduction kernels, each instantiated for float, double, at::Half and at::BFloat16
// (and both gamma tags where G is a parameter) in its own file.

// stats [R, kNumStats] (double) of rows x, t [R, L]: the Dice sums (dice), the focal sum
// (focal), or both. losses_stats_rows.cpp; also the sigmoid focal loss's reductions.
template <typename scalar_t>
void row_stats(const scalar_t* x, const scalar_t* t, int64_t rows, int64_t len, const StatsArgs& a,
               bool dice, bool focal, double* stats);

// dx [R, L] from the grad of the statistics gstats [R, kNumStats]; losses_stats_rows_backward.cpp.
template <typename scalar_t, int G>
void row_stats_backward(const double* gstats, const scalar_t* x, const scalar_t* t, int64_t rows,
                        int64_t len, const StatsArgs& a, bool focal, scalar_t* dx);

// stats [N, C, kNumStats] of x [N, C, L] and classes y [N, L]; raises on a target outside
// [0, C) that is not ignore_index. losses_stats_multiclass.cpp.
template <typename scalar_t>
void multiclass_stats(const scalar_t* x, const int64_t* y, int64_t batch, const MulticlassArgs& a,
                      bool focal, double* stats);

// dx [N, C, L] from gstats [N, C, kNumStats]. losses_stats_multiclass.cpp.
template <typename scalar_t>
void multiclass_stats_backward(const double* gstats, const scalar_t* x, const int64_t* y,
                               int64_t batch, const MulticlassArgs& a, bool focal, scalar_t* dx);

}  // namespace loss_cpu
}  // namespace cvops
