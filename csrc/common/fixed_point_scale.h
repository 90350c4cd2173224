// The scale of the deterministic fixed-point gradient accumulator (common/fixed_point.cuh),
// as a plain function: the CUDA backward computes it on the device (no host sync), and
// tests/csrc checks it on the CPU.
//
// Contributions v are stored as round(v * 2^e) in int64 and added with integer atomics.
// With |v| <= max_abs and at most `bound` contributions per element, every partial sum stays
// below bound * max_abs * 2^e <= 2^61, so nothing overflows. The precision is therefore
// absolute, not relative: each contribution is rounded to a multiple of 2^-e, about
// max_abs * bound * 2^-61 (e.g. 2^-45 * max|grad| for bound = 2^16), whatever its own size.
#pragma once

#include <cmath>

#include "common/host_device.h"

namespace cvops {

// Both 2^e and 2^-e stay finite normal doubles: an all-zero (or denormal) gradient would
// otherwise ask for 2^1077 = inf, and 0 * inf = NaN before the result landed on 0.
constexpr int kFixedPointMaxExponent = 1022;

CVOPS_HOST_DEVICE inline int fixed_point_exponent(double max_abs, double bound) {
  // In the log domain so that max_abs * bound cannot overflow; log2(0) = -inf.
  const double e = 61.0 - ceil(log2(max_abs) + log2(bound));
  if (e != e) return 0;  // max_abs NaN or infinite: the result is NaN anyway
  if (e > kFixedPointMaxExponent) return kFixedPointMaxExponent;
  if (e < -kFixedPointMaxExponent) return -kFixedPointMaxExponent;
  return static_cast<int>(e);
}

CVOPS_HOST_DEVICE inline double fixed_point_scale(double max_abs, double bound) {
  return ldexp(1.0, fixed_point_exponent(max_abs, bound));
}

}  // namespace cvops
