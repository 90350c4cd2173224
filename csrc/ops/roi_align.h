// RoI Align math shared by the CPU and CUDA kernels (torchvision's semantics).
//
// A RoI is split into pooled_height x pooled_width bins; each bin averages a grid of
// bilinearly interpolated samples. Sample rows depend only on (ph, iy) and sample columns
// only on (pw, ix), so interpolation is separable: an AxisTap holds the two neighbouring
// rows (or columns) and their weights, and a sample's four corner weights are products of
// one row tap and one column tap. The forward kernels multiply taps into weights; the
// backward kernels use the same weights to scatter gradients.
//
// Rounding decides counts and indices here (the adaptive sample count is ceil(roi_w /
// pooled); a tap's rows are floor(coord)), so the geometry is computed with explicitly rounded
// operations (common/rounded_math.h): nvcc would otherwise fuse x * scale - offset into one
// FMA, and the GPU could take twice the CPU's samples per bin for the same box.
#pragma once

#include <cstdint>

#include "common/host_device.h"
#include "common/roi_batch_index.h"
#include "common/rounded_math.h"

namespace cvops {
namespace roi_align_math {

// Adaptive sampling (sampling_ratio <= 0) takes ceil(roi_size / pooled_size) samples per
// bin along each axis. Boxes absurdly larger than any feature map would make that loop
// astronomically long, so the grid is capped (documented in cvops.roi_align).
constexpr int64_t kMaxAdaptiveGrid = 1 << 14;

template <typename T>
struct RoiGeometry {
  int64_t batch_index;
  T start_h, start_w;      // top-left corner in feature-map coordinates
  T bin_h, bin_w;          // bin size
  int64_t grid_h, grid_w;  // samples per bin along each axis
  T count;                 // divisor of the bin average (at least 1)
  // false when a coordinate is not finite or the batch index names no image
  // (roi_batch_index): output NaN, no gradient.
  bool valid;
};

template <typename T>
CVOPS_HOST_DEVICE inline int64_t grid_size(T roi_size, int64_t pooled, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  // ceil of a negative size is <= 0: no samples, the same result as torchvision.
  T g = ceil(roi_size / static_cast<T>(pooled));
  if (!(g > T(0))) return 0;
  if (g > static_cast<T>(kMaxAdaptiveGrid)) return kMaxAdaptiveGrid;
  return static_cast<int64_t>(g);
}

// roi = (batch_index, x1, y1, x2, y2) in input-image coordinates; batch_size is the input's.
template <typename T>
CVOPS_HOST_DEVICE inline RoiGeometry<T> roi_geometry(T batch, T x1, T y1, T x2, T y2,
                                                     T spatial_scale, bool aligned,
                                                     int64_t pooled_height, int64_t pooled_width,
                                                     int64_t sampling_ratio, int64_t batch_size) {
  RoiGeometry<T> g;
  g.batch_index = roi_batch_index(batch, batch_size);
  const T offset = aligned ? T(0.5) : T(0);
  g.start_w = sub_rn(mul_rn(x1, spatial_scale), offset);
  g.start_h = sub_rn(mul_rn(y1, spatial_scale), offset);
  T roi_w = sub_rn(sub_rn(mul_rn(x2, spatial_scale), offset), g.start_w);
  T roi_h = sub_rn(sub_rn(mul_rn(y2, spatial_scale), offset), g.start_h);
  g.valid = g.batch_index >= 0 && is_finite(g.start_w) && is_finite(g.start_h) &&
            is_finite(roi_w) && is_finite(roi_h);
  if (!g.valid) {
    roi_w = roi_h = T(0);
  }
  if (!aligned) {  // legacy behaviour: force malformed RoIs to be at least 1x1
    roi_w = max_of(roi_w, T(1));
    roi_h = max_of(roi_h, T(1));
  }
  g.bin_h = roi_h / static_cast<T>(pooled_height);
  g.bin_w = roi_w / static_cast<T>(pooled_width);
  g.grid_h = grid_size(roi_h, pooled_height, sampling_ratio);
  g.grid_w = grid_size(roi_w, pooled_width, sampling_ratio);
  const int64_t n = g.grid_h * g.grid_w;
  g.count = static_cast<T>(n > 1 ? n : 1);
  return g;
}

// Coordinate of sample i of bin p along one axis: torchvision's expression
// start + p * bin + (i + .5) * bin / grid, each operation rounded once.
template <typename T>
CVOPS_HOST_DEVICE inline T sample_coord(T start, int64_t p, T bin, int64_t i, int64_t grid) {
  const T within = mul_rn(static_cast<T>(static_cast<float>(i) + .5f), bin) / static_cast<T>(grid);
  return add_rn(add_rn(start, mul_rn(static_cast<T>(p), bin)), within);
}

// Two neighbouring rows (or columns) of a sample and their interpolation weights.
template <typename T>
struct AxisTap {
  int64_t lo, hi;
  T w_lo, w_hi;
  bool inside;  // false: the sample lies more than one pixel outside the map (value 0)
};

// A map with no rows (or columns) has no sample inside it: the output is 0, as for a RoI
// entirely off the map (taps at index -1 would read out of bounds).
template <typename T>
CVOPS_HOST_DEVICE inline AxisTap<T> axis_tap(T coord, int64_t size) {
  AxisTap<T> t;
  if (size <= 0 || coord < T(-1) || coord > static_cast<T>(size)) {
    t.lo = t.hi = 0;
    t.w_lo = t.w_hi = T(0);
    t.inside = false;
    return t;
  }
  t.inside = true;
  if (coord <= T(0)) coord = T(0);
  t.lo = static_cast<int64_t>(coord);
  if (t.lo >= size - 1) {
    t.lo = t.hi = size - 1;
    coord = static_cast<T>(t.lo);
  } else {
    t.hi = t.lo + 1;
  }
  const T frac = coord - static_cast<T>(t.lo);
  t.w_hi = frac;
  t.w_lo = T(1) - frac;
  return t;
}

// The four corners of one sample: offsets into an H x W plane (times pixel_stride for
// channels-last data) and their bilinear weights, in torchvision's corner order.
template <typename T>
struct BilinearCorners {
  int64_t o1, o2, o3, o4;
  T w1, w2, w3, w4;
};

template <typename T>
CVOPS_HOST_DEVICE inline BilinearCorners<T> bilinear_corners(const AxisTap<T>& ty,
                                                             const AxisTap<T>& tx, int64_t width,
                                                             int64_t pixel_stride) {
  BilinearCorners<T> c;
  c.o1 = (ty.lo * width + tx.lo) * pixel_stride;
  c.o2 = (ty.lo * width + tx.hi) * pixel_stride;
  c.o3 = (ty.hi * width + tx.lo) * pixel_stride;
  c.o4 = (ty.hi * width + tx.hi) * pixel_stride;
  c.w1 = ty.w_lo * tx.w_lo;
  c.w2 = ty.w_lo * tx.w_hi;
  c.w3 = ty.w_hi * tx.w_lo;
  c.w4 = ty.w_hi * tx.w_hi;
  return c;
}

// Value of one bilinear sample in a plane addressed as plane[offset] (used by the CUDA
// forward kernel; the CPU kernels vectorise across channels with the same corners).
template <typename T, typename scalar_t>
CVOPS_HOST_DEVICE inline T interpolate(const scalar_t* plane, const BilinearCorners<T>& c) {
  return c.w1 * static_cast<T>(plane[c.o1]) + c.w2 * static_cast<T>(plane[c.o2]) +
         c.w3 * static_cast<T>(plane[c.o3]) + c.w4 * static_cast<T>(plane[c.o4]);
}

}  // namespace roi_align_math
}  // namespace cvops
