// Depthwise 2-D convolution CPU kernels: the fused AVX-512 backward of a 3x3, stride-1,
// padding-1, undilated convolution on planes with rows of at most 15 (MobileNet's 14x14 and
// 7x7 layers), float32 NCHW.
//
// Separately, the input gradient (the row correlation, depthwise_conv2d_rows512.cpp) and the
// weight gradient each walk the output gradient; here one walk down a plane serves both.
// Step t loads output-gradient row t once:
//  - input gradient: grad_input row t - 1 + kh gains tap row kh times the row's three column
//    shifts (rotations of the loaded row); rows live in a ring of three accumulators, and
//    row t - 1 is complete, and stored, after step t;
//  - weight gradient: input row t - 1 is loaded once and rotated into its three column
//    shifts; tap (kh, kw) gains gradient row t - kh (a ring of the last three) times shift
//    kw. Only gradient rows that exist are multiplied (0 times an infinite input would be a
//    NaN the true sum does not have), and lanes that are no output are zeroed in the shifts.
// A vector holds one image's row (rows of 9-15) or two images' rows (rows of at most 7, lanes
// 0-7 and 8-15). The row and its zero lanes above make every column shift a rotation: a read
// one before a row's start wraps onto zeros, one past its end reads its own zero lane. Per
// step: two row loads, six permutes, 18 multiply-adds, no more.
//
// Each input-gradient row is a sum of three partial sums, one per tap row, each computed on
// its own (a multiply and two FMAs) and added into the ring: one add per step on the ring's
// dependency chain, not three FMAs, as one pair of images is all there is to overlap.
#include "ops/cpu/depthwise_conv2d_backward512.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "common/avx512_utils.h"
#include "common/cpu_utils.h"

#if defined(__x86_64__) && CVOPS_HAS_AVX2_TARGET
#include <immintrin.h>
#define CVOPS_DW_BACKWARD512 1
#else
#define CVOPS_DW_BACKWARD512 0
#endif

namespace cvops {
namespace {

#if CVOPS_DW_BACKWARD512

constexpr int64_t kLanes = 16;
constexpr int K = 3;

// One channel, all images, P images per vector (P = 2: rows of at most 7).
template <int P>
CVOPS_TARGET_AVX512 void backward_channel(const PlaneBackward& j, int64_t c) {
  const int64_t H = j.height, W = j.width, plane = H * W, image = j.channels * plane;
  __m512 w[K][K];
  unrolled<K>([&](auto kh) CVOPS_AVX512_LAMBDA {
    unrolled<K>([&](auto kw) CVOPS_AVX512_LAMBDA {
      w[kh][kw] = _mm512_set1_ps(j.weight[c * K * K + kh * K + kw]);
    });
  });
  // rotate[d + 1]: lane l takes lane l + d. Input-gradient shift kw reads gradient column
  // l + 1 - kw (rotate[2 - kw]); weight-gradient shift kw reads input column l + kw - 1.
  const __m512i rotate[K] = {rotation(-1), rotation(0), rotation(1)};
  __m512 dw[K][K], db = _mm512_setzero_ps();
  unrolled<K>([&](auto kh) CVOPS_AVX512_LAMBDA {
    unrolled<K>([&](auto kw) CVOPS_AVX512_LAMBDA { dw[kh][kw] = _mm512_setzero_ps(); });
  });
  const uint16_t row = lanes_below(W);
  for (int64_t n = 0; n < j.batch; n += P) {
    const bool both = P == 2 && n + 1 < j.batch;
    // image n + i in lanes 8i..: its pointers 8i floats before its rows
    __mmask16 m[P];
    const float* gp[P];
    const float* xp[P];
    float* gip[P];
    for (int i = 0; i < P; ++i) {
      m[i] = i == 0 || both ? static_cast<__mmask16>(row << (8 * i)) : 0;
      const int64_t offset = (n + i) * image + c * plane - 8 * i;
      gp[i] = j.grad + offset;
      xp[i] = j.input + offset;  // input row t - 1 once t >= 1
      gip[i] = j.grad_input + offset;  // grad_input row t - 1 once t >= 1
    }
    const __mmask16 outputs = P == 2 ? m[0] | m[P - 1] : m[0];
    // (masked loads do not train the hardware prefetchers: fetch the next images' planes)
    for (int64_t i = P; i < 2 * P && n + i < j.batch; ++i) {
      const int64_t offset = (n + i) * image + c * plane;
      prefetch_floats(j.grad + offset, plane);
      prefetch_floats(j.input + offset, plane);
    }
    // ring[t % 3]: gradient row t; acc[r % 3]: grad_input row r (rows t - 1 .. t + 1 at t)
    __m512 ring[K], acc[K];
    unrolled<K>([&](auto k) CVOPS_AVX512_LAMBDA {
      ring[k] = _mm512_setzero_ps();
      acc[k] = _mm512_setzero_ps();
    });
    for (int64_t t0 = 0; t0 <= H; t0 += K) {
      unrolled<K>([&](auto step) CVOPS_AVX512_LAMBDA {
        constexpr int u = decltype(step)::value;  // t % 3
        const int64_t t = t0 + u;
        if (t > H) return;
        __m512 g = _mm512_setzero_ps();
        if (t < H) {
          g = _mm512_maskz_loadu_ps(m[0], gp[0]);
          if (P == 2) g = _mm512_mask_loadu_ps(g, m[P - 1], gp[P - 1]);
          db = _mm512_add_ps(db, g);
        }
        ring[u] = g;
        if (t >= 1) {  // input row t - 1 (t <= H): weight gradient
          __m512 x = _mm512_maskz_loadu_ps(m[0], xp[0]);
          if (P == 2) x = _mm512_mask_loadu_ps(x, m[P - 1], xp[P - 1]);
          // tap row kh pairs it with gradient row t - kh, which exists for kh in [lo, hi]
          const bool all_rows = t >= 2 && t < H;
          const int64_t lo = std::max<int64_t>(0, t - H + 1), hi = std::min<int64_t>(2, t);
          unrolled<K>([&](auto column) CVOPS_AVX512_LAMBDA {
            constexpr int kw = decltype(column)::value;
            const __m512 shifted = _mm512_maskz_permutexvar_ps(outputs, rotate[kw], x);
            unrolled<K>([&](auto tap_row) CVOPS_AVX512_LAMBDA {
              constexpr int kh = decltype(tap_row)::value;
              if (all_rows || (kh >= lo && kh <= hi))
                dw[kh][kw] = _mm512_fmadd_ps(ring[(u - kh + K) % K], shifted, dw[kh][kw]);
            });
          });
        }
        if (t < H) {  // gradient row t: input gradient rows t - 1 + kh
          __m512 shifted[K];
          unrolled<K>([&](auto column) CVOPS_AVX512_LAMBDA {
            constexpr int kw = decltype(column)::value;
            shifted[kw] = _mm512_permutexvar_ps(rotate[K - 1 - kw], g);
          });
          unrolled<K>([&](auto tap_row) CVOPS_AVX512_LAMBDA {
            constexpr int kh = decltype(tap_row)::value;
            __m512 part = _mm512_mul_ps(w[kh][0], shifted[0]);
            part = _mm512_fmadd_ps(w[kh][1], shifted[1], part);
            part = _mm512_fmadd_ps(w[kh][2], shifted[2], part);
            __m512& a = acc[(u + kh + K - 1) % K];
            a = _mm512_add_ps(a, part);
          });
        }
        // grad_input row t - 1 is complete (row -1 is not stored); its slot starts row t + 2
        __m512& done = acc[(u + K - 1) % K];
        if (t >= 1) {
          for (int i = 0; i < P; ++i) _mm512_mask_storeu_ps(gip[i], m[i], done);
        }
        done = _mm512_setzero_ps();
        for (int i = 0; i < P; ++i) {
          gp[i] += W;
          if (t >= 1) {
            xp[i] += W;
            gip[i] += W;
          }
        }
      });
    }
  }
  float* res = j.weight_and_bias_grad + c * (K * K + 1);
  unrolled<K>([&](auto kh) CVOPS_AVX512_LAMBDA {
    unrolled<K>([&](auto kw) CVOPS_AVX512_LAMBDA { res[kh * K + kw] = sum_lanes(dw[kh][kw]); });
  });
  res[K * K] = sum_lanes(db);
}

#endif  // CVOPS_DW_BACKWARD512

}  // namespace

bool backward512_applies(const PlaneBackward& j) {
#if CVOPS_DW_BACKWARD512
  // A row and at least one zero lane above it fill a vector (or a half of one, rows <= 7).
  return cpu_has_avx512() && j.width >= 1 && j.width < kLanes && j.height >= 1;
#else
  (void)j;
  return false;
#endif
}

void backward512(const PlaneBackward& j) {
#if CVOPS_DW_BACKWARD512
  const bool paired = j.width < kLanes / 2;
  const int64_t work = j.batch * j.height * kLanes * 2 * K * K / (paired ? 2 : 1);
  at::parallel_for(0, j.channels, parallel_grain(work), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (paired)
        backward_channel<2>(j, c);
      else
        backward_channel<1>(j, c);
    }
  });
#else
  (void)j;
#endif
}

}  // namespace cvops
