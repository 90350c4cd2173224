// RoI Pool math shared by the CPU and CUDA kernels (torchvision's semantics).
//
// A RoI's corners are rounded to feature-map pixels; the RoI (at least 1x1, both ends
// inclusive) is split into pooled_height x pooled_width bins whose pixel ranges are
// [floor(p * bin), ceil((p + 1) * bin)) offset by the RoI start and clamped to the map. Each
// output is the maximum of its bin, and the argmax (h * width + w inside the plane) routes
// the gradient. Empty bins give 0 and argmax -1. Bin ranges depend only on (ph) or (pw), so
// they are computed once per RoI and shared by every channel.
#pragma once

#include <cstdint>

#include "common/host_device.h"
#include "common/roi_batch_index.h"

namespace cvops {
namespace roi_pool_math {

// Rounded corners are clamped to +-2^40 pixels before integer conversion, so absurd boxes
// stay well defined (no overflow) and give the same bins as unclamped math on any real map.
constexpr double kMaxCoord = 1099511627776.0;  // 2^40

struct RoiBox {
  int64_t batch_index;
  int64_t start_h, start_w;  // rounded top-left corner in feature-map pixels
  int64_t roi_h, roi_w;      // at least 1
  // false when a coordinate is not finite or the batch index names no image
  // (roi_batch_index): output NaN, no gradient.
  bool valid;
};

CVOPS_HOST_DEVICE inline int64_t rounded_coord(double v, double spatial_scale) {
  double r = round(v * spatial_scale);
  r = r < -kMaxCoord ? -kMaxCoord : (r > kMaxCoord ? kMaxCoord : r);
  return static_cast<int64_t>(r);
}

// The image a RoI (batch_index, x1, y1, x2, y2) pools from, or -1 when the RoI is invalid:
// a coordinate is not finite, or the batch index names no image (roi_batch_index). An invalid
// RoI outputs NaN and receives no gradient, on both backends and in both directions.
CVOPS_HOST_DEVICE inline int64_t roi_image(double batch, double x1, double y1, double x2, double y2,
                                           int64_t batch_size) {
  const bool finite = is_finite(x1) && is_finite(y1) && is_finite(x2) && is_finite(y2);
  return finite ? roi_batch_index(batch, batch_size) : -1;
}

// roi = (batch_index, x1, y1, x2, y2) in input-image coordinates; batch_size is the input's.
// The products are formed in double (as torchvision's CPU kernel does) so CPU and CUDA round
// identically (a product followed by round(), nothing for a compiler to fuse).
CVOPS_HOST_DEVICE inline RoiBox roi_box(double batch, double x1, double y1, double x2, double y2,
                                        double spatial_scale, int64_t batch_size) {
  RoiBox b;
  b.batch_index = roi_image(batch, x1, y1, x2, y2, batch_size);
  b.valid = b.batch_index >= 0;
  if (!b.valid) {
    b.start_h = b.start_w = 0;
    b.roi_h = b.roi_w = 1;
    return b;
  }
  b.start_w = rounded_coord(x1, spatial_scale);
  b.start_h = rounded_coord(y1, spatial_scale);
  const int64_t end_w = rounded_coord(x2, spatial_scale);
  const int64_t end_h = rounded_coord(y2, spatial_scale);
  b.roi_w = max_of<int64_t>(end_w - b.start_w + 1, 1);  // malformed RoIs are forced to 1x1
  b.roi_h = max_of<int64_t>(end_h - b.start_h + 1, 1);
  return b;
}

// Pixel range [begin, end) of bin p along one axis, clamped to [0, size).
struct BinRange {
  int64_t begin, end;
};

// T is the op-math type (float for float/half/bfloat16, double for double), matching the
// precision torchvision uses for the bin size.
template <typename T>
CVOPS_HOST_DEVICE inline BinRange bin_range(int64_t p, int64_t roi_start, int64_t roi_size,
                                            int64_t pooled, int64_t size) {
  const T bin = static_cast<T>(roi_size) / static_cast<T>(pooled);
  int64_t begin = static_cast<int64_t>(floor(static_cast<T>(p) * bin)) + roi_start;
  int64_t end = static_cast<int64_t>(ceil(static_cast<T>(p + 1) * bin)) + roi_start;
  BinRange r;
  r.begin = min_of<int64_t>(max_of<int64_t>(begin, 0), size);
  r.end = min_of<int64_t>(max_of<int64_t>(end, 0), size);
  return r;
}

// Max-reduction step: the first maximum wins on ties, and NaN propagates (the first NaN of a
// bin wins), like torch.max. Starts from the bin's first pixel.
template <typename T>
CVOPS_HOST_DEVICE inline bool takes_over(T v, T current) {
  return v > current || (v != v && current == current);
}

}  // namespace roi_pool_math
}  // namespace cvops
