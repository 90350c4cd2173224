// NMS CPU kernels: nms, batched_nms, nms_fixed and soft_nms.
//
// Greedy NMS keeps a box when no already-kept box of higher rank overlaps it with
// IoU > threshold, which is exactly what torchvision's O(N^2) loop computes. Instead of
// testing every later box against every kept one, the kept boxes go into a spatial index as
// they are accepted, and each candidate is only compared with the kept boxes that can overlap
// it:
//  * boxes are ranked once by (score descending, index ascending): one integer sort;
//  * the index is a hierarchy of uniform grids (GreedyNms below); each cell stores its boxes
//    in 16-wide structure-of-arrays chunks, tested with one vectorised loop;
//  * boxes with zero width or height can neither suppress nor be suppressed (their IoU with
//    anything is 0 or NaN), so they are kept without a look; below 129 boxes, or when the
//    coordinates are too spread for a grid, a brute-force vectorised list is used instead.
// batched_nms runs one such greedy pass per class, the classes in parallel, with no
// coordinate offsets (so negative and half-precision coordinates are exact).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <queue>
#include <utility>
#include <vector>

#include "ops/nms.h"
#include "ops/nms_checks.h"

namespace cvops {
namespace {

using namespace nms_math;

// Maps a score to an unsigned key whose ascending order is the scores' descending order
// (-0.0 and +0.0 compare equal, as they do for torch.sort).
inline uint64_t descending_key(double s) {
  s = s + 0.0;
  uint64_t bits;
  std::memcpy(&bits, &s, sizeof(bits));
  const uint64_t ascending = (bits >> 63) ? ~bits : (bits | (uint64_t(1) << 63));
  return ~ascending;
}

// Boxes in the accumulation type, with validity, for every input index.
template <typename scalar_t>
struct Prepared {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<Box<acc_t>> boxes;  // by input index
  std::vector<acc_t> scores;      // by input index
  std::vector<int64_t> order;     // valid boxes by (score desc, index asc)
};

// Reads boxes and scores; raises on a bad box when `check_boxes`, drops it otherwise; drops
// NaN scores. Returns the valid boxes ranked by (score descending, index ascending).
template <typename scalar_t>
void prepare(const char* op, const at::Tensor& boxes, const at::Tensor& scores, bool check_boxes,
             Prepared<scalar_t>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = boxes.size(0);
  const scalar_t* b = boxes.const_data_ptr<scalar_t>();
  const scalar_t* s = scores.const_data_ptr<scalar_t>();
  p.boxes.resize(n);
  p.scores.resize(n);
  std::vector<uint8_t> valid(n);
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const acc_t x1 = b[4 * i], y1 = b[4 * i + 1], x2 = b[4 * i + 2], y2 = b[4 * i + 3];
      p.boxes[i] = make_box(x1, y1, x2, y2);
      p.scores[i] = static_cast<acc_t>(s[i]);
      valid[i] = box_is_valid(x1, y1, x2, y2) ? (score_is_valid(p.scores[i]) ? 1 : 2) : 0;
    }
  });
  std::vector<std::pair<uint64_t, int64_t>> keys;
  keys.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    if (valid[i] == 1) {
      keys.emplace_back(descending_key(static_cast<double>(p.scores[i])), i);
    } else if (valid[i] == 0 && check_boxes) {
      raise_bad_box(op, i, static_cast<double>(b[4 * i]), static_cast<double>(b[4 * i + 1]),
                    static_cast<double>(b[4 * i + 2]), static_cast<double>(b[4 * i + 3]));
    }
  }
  std::sort(keys.begin(), keys.end());
  p.order.resize(keys.size());
  for (size_t r = 0; r < keys.size(); ++r) p.order[r] = keys[r].second;
}

// The largest acc_t value f <= threshold, so that for any acc_t x: x > f <=> double(x) > thr.
template <typename acc_t>
acc_t threshold_below(double threshold) {
  acc_t f = static_cast<acc_t>(threshold);
  if (static_cast<double>(f) > threshold) {
    f = std::nextafter(f, -std::numeric_limits<acc_t>::infinity());
  }
  return f;
}

// Does any of the m boxes (structure-of-arrays) overlap `a` with IoU > thr? A branch-free
// loop the compiler vectorises; same arithmetic as nms_math::iou. NaN slots never hit.
template <typename acc_t>
inline bool any_iou_above(const acc_t* __restrict x1, const acc_t* __restrict y1,
                          const acc_t* __restrict x2, const acc_t* __restrict y2,
                          const acc_t* __restrict area, int64_t m, const Box<acc_t>& a, acc_t thr) {
  int hit = 0;
  for (int64_t k = 0; k < m; ++k) {
    const acc_t l = x1[k] > a.x1 ? x1[k] : a.x1;
    const acc_t r = x2[k] < a.x2 ? x2[k] : a.x2;
    const acc_t t = y1[k] > a.y1 ? y1[k] : a.y1;
    const acc_t b = y2[k] < a.y2 ? y2[k] : a.y2;
    const acc_t dw = sub_rn(r, l), dh = sub_rn(b, t);
    const acc_t w = acc_t(0) > dw ? acc_t(0) : dw;
    const acc_t h = acc_t(0) > dh ? acc_t(0) : dh;
    const acc_t inter = mul_rn(w, h);
    const acc_t uni = sub_rn(add_rn(area[k], a.area), inter);
    hit |= static_cast<int>(inter / uni > thr);
  }
  return hit != 0;
}

// Kept boxes as a growing structure-of-arrays (the brute-force path for small inputs).
template <typename acc_t>
struct BoxList {
  std::vector<acc_t> x1, y1, x2, y2, area;

  void clear() {
    x1.clear();
    y1.clear();
    x2.clear();
    y2.clear();
    area.clear();
  }
  void push(const Box<acc_t>& b) {
    x1.push_back(b.x1);
    y1.push_back(b.y1);
    x2.push_back(b.x2);
    y2.push_back(b.y2);
    area.push_back(b.area);
  }
  bool any_above(const Box<acc_t>& a, acc_t thr) const {
    const int64_t m = static_cast<int64_t>(x1.size());
    // Blocks of 16 so a hit stops the scan early while each block stays vectorised.
    for (int64_t k = 0; k < m; k += 16) {
      const int64_t len = std::min<int64_t>(16, m - k);
      if (any_iou_above(x1.data() + k, y1.data() + k, x2.data() + k, y2.data() + k, area.data() + k,
                        len, a, thr)) {
        return true;
      }
    }
    return false;
  }
};

// 16 kept boxes of one grid cell, structure-of-arrays; unused slots are NaN, which never
// suppress anything. Cells chain their chunks through `next`.
template <typename acc_t>
struct Chunk {
  static constexpr int kSize = 16;
  acc_t x1[kSize], y1[kSize], x2[kSize], y2[kSize], area[kSize];
  int32_t count, next;

  void init(int32_t next_chunk) {
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    for (int k = 0; k < kSize; ++k) x1[k] = y1[k] = x2[k] = y2[k] = area[k] = nan;
    count = 0;
    next = next_chunk;
  }
  void push(const Box<acc_t>& b) {
    x1[count] = b.x1;
    y1[count] = b.y1;
    x2[count] = b.x2;
    y2[count] = b.y2;
    area[count] = b.area;
    ++count;
  }
  bool any_above(const Box<acc_t>& a, acc_t thr) const {
    return any_iou_above(x1, y1, x2, y2, area, kSize, a, thr);
  }
};

// Greedy NMS over candidates already in rank order. Appends to `kept` the positions (in
// 0..n) of the kept candidates, in increasing order. Scratch buffers are reused across calls.
//
// Kept boxes live in a hierarchy of uniform grids: level L holds the boxes whose larger side
// is at most S_L = S_0 * 2^L, each in the cell (of side S_L / 2) of its (x1, y1) corner. A box
// overlapping a candidate [x1, x2] x [y1, y2] then has its corner in (x1 - S_L, x2) x
// (y1 - S_L, y2), a handful of cells per level.
template <typename acc_t>
class GreedyNms {
 public:
  static constexpr int64_t kListMax = 128;  // below this, brute force is cheaper than a grid

  void run(const Box<acc_t>* c, int64_t n, double threshold, std::vector<int64_t>& kept) {
    kept.clear();
    if (threshold >= 1.0) {
      // IoU <= 1 holds in floating point too (inter <= min(area_a, area_b) and
      // fl(fl(a + b) - inter) >= inter), so nothing can be suppressed.
      for (int64_t i = 0; i < n; ++i) kept.push_back(i);
      return;
    }
    const acc_t thr = threshold_below<acc_t>(threshold);
    if (n <= kListMax || !setup(c, n)) {
      list_.clear();
      for (int64_t i = 0; i < n; ++i) {
        if (list_.any_above(c[i], thr)) continue;
        kept.push_back(i);
        list_.push(c[i]);
      }
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      const Box<acc_t>& a = c[i];
      if (!(a.x2 > a.x1 && a.y2 > a.y1)) {  // zero area: interacts with nothing
        kept.push_back(i);
        continue;
      }
      if (suppressed(a, thr)) continue;
      kept.push_back(i);
      insert(a);
    }
  }

 private:
  struct Level {
    double reach = 0, cell = 0;  // S_L and the cell side
    int64_t gx = 0, gy = 0;
    std::vector<int32_t> head;  // per cell: its latest chunk, or -1
    int64_t boxes = 0;
  };

  static double side(const Box<acc_t>& a) {
    return std::max(static_cast<double>(a.x2) - static_cast<double>(a.x1),
                    static_cast<double>(a.y2) - static_cast<double>(a.y1));
  }

  static int64_t clamp_cell(double v, int64_t cells) {
    return v < 0 ? 0 : (v >= static_cast<double>(cells) ? cells - 1 : static_cast<int64_t>(v));
  }

  bool setup(const Box<acc_t>* c, int64_t n) {
    double min_x = std::numeric_limits<double>::infinity(), min_y = min_x;
    double max_x = -min_x, max_y = -min_x;
    sizes_.clear();
    for (int64_t i = 0; i < n; ++i) {
      const Box<acc_t>& a = c[i];
      min_x = std::min(min_x, static_cast<double>(a.x1));
      min_y = std::min(min_y, static_cast<double>(a.y1));
      max_x = std::max(max_x, static_cast<double>(a.x2));
      max_y = std::max(max_y, static_cast<double>(a.y2));
      const double s = side(a);
      if (s > 0) sizes_.push_back(s);
    }
    const double range = std::max(max_x - min_x, max_y - min_y);
    if (!std::isfinite(range) || sizes_.empty() || !(range > 0)) return false;
    auto mid = sizes_.begin() + static_cast<int64_t>(sizes_.size() / 2);
    std::nth_element(sizes_.begin(), mid, sizes_.end());
    const double median = *mid;
    const double largest = *std::max_element(sizes_.begin(), sizes_.end());
    const double s0 = std::min(largest, 2 * median);
    if (!(s0 > 0) || !std::isfinite(s0)) return false;
    min_x_ = min_x;
    min_y_ = min_y;
    const double max_cells = std::max(1024.0, 4.0 * static_cast<double>(n));
    int num_levels = 1;
    while (num_levels < 64 && s0 * std::ldexp(1.0, num_levels - 1) < largest) ++num_levels;
    levels_.resize(num_levels);
    for (int l = 0; l < num_levels; ++l) {
      Level& lv = levels_[l];
      lv.boxes = 0;
      lv.reach = s0 * std::ldexp(1.0, l);
      if (l == num_levels - 1) lv.reach = std::max(lv.reach, largest);  // holds the rest
      double cell = lv.reach / 2;
      const double rx = max_x - min_x, ry = max_y - min_y;
      cell = std::max({cell, std::sqrt(rx * ry / max_cells), rx / max_cells, ry / max_cells});
      lv.cell = cell;
      lv.gx = static_cast<int64_t>(rx / cell) + 1;
      lv.gy = static_cast<int64_t>(ry / cell) + 1;
      lv.head.assign(lv.gx * lv.gy, -1);
    }
    chunks_.clear();
    return true;
  }

  void insert(const Box<acc_t>& a) {
    const double s = side(a);
    size_t l = 0;
    while (l + 1 < levels_.size() && s > levels_[l].reach) ++l;
    Level& lv = levels_[l];
    const double x = static_cast<double>(a.x1) - min_x_, y = static_cast<double>(a.y1) - min_y_;
    const int64_t cx = clamp_cell(std::floor(x / lv.cell), lv.gx);
    const int64_t cy = clamp_cell(std::floor(y / lv.cell), lv.gy);
    int32_t& head = lv.head[cy * lv.gx + cx];
    if (head < 0 || chunks_[head].count == Chunk<acc_t>::kSize) {
      chunks_.emplace_back();
      chunks_.back().init(head);
      head = static_cast<int32_t>(chunks_.size() - 1);
    }
    chunks_[head].push(a);
    ++lv.boxes;
  }

  bool suppressed(const Box<acc_t>& a, acc_t thr) const {
    const double x1 = static_cast<double>(a.x1) - min_x_, y1 = static_cast<double>(a.y1) - min_y_;
    const double x2 = static_cast<double>(a.x2) - min_x_, y2 = static_cast<double>(a.y2) - min_y_;
    for (const Level& lv : levels_) {
      if (lv.boxes == 0) continue;
      // 1.001: margin for rounding in the cell arithmetic.
      const double back = 1.001 * lv.reach / lv.cell;
      const int64_t cx0 = clamp_cell(std::floor(x1 / lv.cell - back), lv.gx);
      const int64_t cx1 = clamp_cell(std::floor(x2 / lv.cell), lv.gx);
      const int64_t cy0 = clamp_cell(std::floor(y1 / lv.cell - back), lv.gy);
      const int64_t cy1 = clamp_cell(std::floor(y2 / lv.cell), lv.gy);
      for (int64_t cy = cy0; cy <= cy1; ++cy) {
        for (int64_t cx = cx0; cx <= cx1; ++cx) {
          for (int32_t k = lv.head[cy * lv.gx + cx]; k >= 0; k = chunks_[k].next) {
            if (chunks_[k].any_above(a, thr)) return true;
          }
        }
      }
    }
    return false;
  }

  BoxList<acc_t> list_;
  std::vector<Level> levels_;
  std::vector<Chunk<acc_t>> chunks_;
  std::vector<double> sizes_;
  double min_x_ = 0, min_y_ = 0;
};

// Kept input indices of single-class NMS, by (score desc, index asc).
template <typename scalar_t>
std::vector<int64_t> nms_indices(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                                 double threshold, bool check_boxes) {
  using acc_t = at::opmath_type<scalar_t>;
  Prepared<scalar_t> p;
  prepare<scalar_t>(op, boxes, scores, check_boxes, p);
  const int64_t m = static_cast<int64_t>(p.order.size());
  std::vector<Box<acc_t>> cand(m);
  for (int64_t r = 0; r < m; ++r) cand[r] = p.boxes[p.order[r]];
  std::vector<int64_t> kept;
  GreedyNms<acc_t>().run(cand.data(), m, threshold, kept);
  for (auto& k : kept) k = p.order[k];
  return kept;
}

at::Tensor to_tensor(const std::vector<int64_t>& v, const at::Tensor& like) {
  at::Tensor out = at::empty({static_cast<int64_t>(v.size())}, like.options().dtype(at::kLong));
  if (!v.empty()) std::copy(v.begin(), v.end(), out.mutable_data_ptr<int64_t>());
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  constexpr const char* op = "cvops.nms";
  check_nms_args(op, boxes, scores, iou_threshold);
  at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  std::vector<int64_t> kept;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "cvops_nms_cpu", [&] {
    kept = nms_indices<scalar_t>(op, b, s, iou_threshold, /*check_boxes=*/true);
  });
  return to_tensor(kept, boxes);
}

std::tuple<at::Tensor, at::Tensor> nms_fixed_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                 double iou_threshold, int64_t max_output) {
  constexpr const char* op = "cvops.nms_fixed";
  check_nms_args(op, boxes, scores, iou_threshold);
  TORCH_CHECK_VALUE(max_output >= 0, op, ": max_output must be non-negative, got ", max_output);
  at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  std::vector<int64_t> kept;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, b.scalar_type(), "cvops_nms_fixed_cpu",
      [&] { kept = nms_indices<scalar_t>(op, b, s, iou_threshold, /*check_boxes=*/false); });
  const int64_t count = std::min<int64_t>(static_cast<int64_t>(kept.size()), max_output);
  at::Tensor out = at::full({max_output}, -1, boxes.options().dtype(at::kLong));
  if (count > 0) std::copy(kept.begin(), kept.begin() + count, out.mutable_data_ptr<int64_t>());
  return {out, at::scalar_tensor(count, boxes.options().dtype(at::kLong))};
}

template <typename scalar_t>
std::vector<int64_t> batched_nms_indices(const char* op, const at::Tensor& boxes,
                                         const at::Tensor& scores, const at::Tensor& idxs,
                                         double threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  Prepared<scalar_t> p;
  prepare<scalar_t>(op, boxes, scores, /*check_boxes=*/true, p);
  const int64_t m = static_cast<int64_t>(p.order.size());
  const int64_t* cls = idxs.const_data_ptr<int64_t>();
  // (class, rank) pairs: classes contiguous, each in rank order.
  std::vector<std::pair<int64_t, int64_t>> by_class(m);
  for (int64_t r = 0; r < m; ++r) by_class[r] = {cls[p.order[r]], r};
  std::sort(by_class.begin(), by_class.end());
  std::vector<int64_t> starts;
  for (int64_t r = 0; r < m; ++r) {
    if (r == 0 || by_class[r].first != by_class[r - 1].first) starts.push_back(r);
  }
  starts.push_back(m);
  const int64_t groups = static_cast<int64_t>(starts.size()) - 1;
  std::vector<uint8_t> keep(m, 0);  // by rank
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    GreedyNms<acc_t> greedy;
    std::vector<Box<acc_t>> cand;
    std::vector<int64_t> kept;
    for (int64_t g = begin; g < end; ++g) {
      const int64_t lo = starts[g], len = starts[g + 1] - lo;
      cand.resize(len);
      for (int64_t t = 0; t < len; ++t) cand[t] = p.boxes[p.order[by_class[lo + t].second]];
      greedy.run(cand.data(), len, threshold, kept);
      for (int64_t k : kept) keep[by_class[lo + k].second] = 1;
    }
  });
  std::vector<int64_t> out;
  for (int64_t r = 0; r < m; ++r) {
    if (keep[r]) out.push_back(p.order[r]);
  }
  return out;
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& idxs, double iou_threshold) {
  constexpr const char* op = "cvops.batched_nms";
  check_nms_args(op, boxes, scores, iou_threshold);
  check_idxs(op, boxes, idxs);
  at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  at::Tensor c = idxs.to(at::kLong).contiguous();
  std::vector<int64_t> kept;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, b.scalar_type(), "cvops_batched_nms_cpu",
      [&] { kept = batched_nms_indices<scalar_t>(op, b, s, c, iou_threshold); });
  return to_tensor(kept, boxes);
}

// ---------------------------------------------------------------------------------------
// Soft-NMS: repeatedly select the highest (decayed) score, ties to the lower index, and decay
// every remaining box overlapping it; a box whose score drops below score_threshold is
// removed. Only strictly overlapping boxes change, so when the overlap graph is sparse (found
// by one sweep along x) a max-heap with lazy deletion replaces the O(N) scan per selection.
// Both paths apply the same decays in the same order, so they give the same bits.
// ---------------------------------------------------------------------------------------
template <typename acc_t>
inline bool overlaps(const Box<acc_t>& a, const Box<acc_t>& b) {
  return a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2;
}

template <typename acc_t>
inline acc_t soft_weight(const Box<acc_t>& a, const Box<acc_t>& b, int64_t method, double threshold,
                         acc_t sigma) {
  acc_t o = iou(a, b);
  if (o != o) o = acc_t(0);  // two empty boxes
  return soft_nms_weight(o, method, threshold, sigma);
}

// Overlap lists of the candidate boxes (positions into `c`); false when they would exceed
// the work budget (dense overlaps), in which case the scan below is as good.
template <typename acc_t>
bool overlap_lists(const std::vector<Box<acc_t>>& c, std::vector<std::vector<int32_t>>& adj) {
  const int64_t m = static_cast<int64_t>(c.size());
  if (m >= (int64_t(1) << 31)) return false;
  std::vector<int32_t> by_x(m);
  for (int64_t i = 0; i < m; ++i) by_x[i] = static_cast<int32_t>(i);
  std::sort(by_x.begin(), by_x.end(), [&](int32_t a, int32_t b) { return c[a].x1 < c[b].x1; });
  adj.assign(m, {});
  // The scan costs about m * m / 2 IoUs; give up on lists once the sweep gets near that, or
  // once they would take more than ~64 entries per box (memory).
  int64_t visits = std::max<int64_t>(int64_t(1) << 20, m * m / 8);
  int64_t edges = 32 * m + (int64_t(1) << 21);
  for (int64_t u = 0; u < m; ++u) {
    const Box<acc_t>& a = c[by_x[u]];
    for (int64_t v = u + 1; v < m && c[by_x[v]].x1 < a.x2; ++v) {
      if (--visits < 0) return false;
      if (overlaps(a, c[by_x[v]])) {
        if (--edges < 0) return false;
        adj[by_x[u]].push_back(by_x[v]);
        adj[by_x[v]].push_back(by_x[u]);
      }
    }
  }
  return true;
}

template <typename scalar_t>
void soft_nms_impl(const at::Tensor& boxes, const at::Tensor& scores, double threshold,
                   double sigma, double score_threshold, int64_t method,
                   std::vector<int64_t>& out_idx, std::vector<double>& out_score) {
  using acc_t = at::opmath_type<scalar_t>;
  Prepared<scalar_t> p;
  prepare<scalar_t>("cvops.soft_nms", boxes, scores, /*check_boxes=*/true, p);
  std::vector<int64_t> index;  // candidates' input indices, in rank order
  std::vector<Box<acc_t>> box;
  std::vector<acc_t> cur;  // current scores
  for (int64_t i : p.order) {
    if (static_cast<double>(p.scores[i]) >= score_threshold) {
      index.push_back(i);
      box.push_back(p.boxes[i]);
      cur.push_back(p.scores[i]);
    }
  }
  const int64_t m = static_cast<int64_t>(index.size());
  const acc_t sig = static_cast<acc_t>(sigma);
  auto keeps = [&](acc_t s) { return static_cast<double>(s) >= score_threshold; };

  std::vector<std::vector<int32_t>> adj;
  if (overlap_lists(box, adj)) {
    struct Entry {
      acc_t score;
      int64_t index;
      int32_t pos;
    };
    auto lower = [](const Entry& a, const Entry& b) {
      return a.score < b.score || (a.score == b.score && a.index > b.index);
    };
    std::priority_queue<Entry, std::vector<Entry>, decltype(lower)> heap(lower);
    std::vector<uint8_t> alive(m, 1);
    for (int64_t k = 0; k < m; ++k) heap.push({cur[k], index[k], static_cast<int32_t>(k)});
    while (!heap.empty()) {
      const Entry e = heap.top();
      heap.pop();
      if (!alive[e.pos]) continue;
      if (!(e.score == cur[e.pos])) {
        // Decays only lower positive scores, and are re-queued lazily here: an entry's score
        // is then >= its box's current score, so the top entry that is up to date is the max.
        if (e.score > cur[e.pos]) heap.push({cur[e.pos], e.index, e.pos});
        continue;
      }
      alive[e.pos] = 0;
      out_idx.push_back(e.index);
      out_score.push_back(static_cast<double>(e.score));
      for (int32_t j : adj[e.pos]) {
        if (!alive[j]) continue;
        const acc_t s = cur[j] * soft_weight(box[e.pos], box[j], method, threshold, sig);
        if (!keeps(s)) {
          alive[j] = 0;
        } else if (s > cur[j]) {  // a negative score decays upwards: queue it now
          cur[j] = s;
          heap.push({s, index[j], j});
        } else {
          cur[j] = s;
        }
      }
    }
    return;
  }

  // Dense overlaps: scan the remaining boxes after each selection.
  std::vector<int64_t> active(m);
  for (int64_t k = 0; k < m; ++k) active[k] = k;
  auto better = [&](int64_t a, int64_t b) {
    return cur[a] > cur[b] || (cur[a] == cur[b] && index[a] < index[b]);
  };
  int64_t best = -1;
  for (int64_t j = 0; j < m; ++j) {
    if (best < 0 || better(active[j], active[best])) best = j;
  }
  while (!active.empty()) {
    const int64_t sel = active[best];
    out_idx.push_back(index[sel]);
    out_score.push_back(static_cast<double>(cur[sel]));
    active[best] = active.back();
    active.pop_back();
    best = -1;
    int64_t j = 0;
    while (j < static_cast<int64_t>(active.size())) {
      const int64_t k = active[j];
      if (overlaps(box[sel], box[k])) {
        cur[k] = cur[k] * soft_weight(box[sel], box[k], method, threshold, sig);
        if (!keeps(cur[k])) {
          active[j] = active.back();
          active.pop_back();
          continue;
        }
      }
      if (best < 0 || better(k, active[best])) best = j;
      ++j;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                double iou_threshold, double sigma,
                                                double score_threshold, int64_t method) {
  constexpr const char* op = "cvops.soft_nms";
  check_nms_args(op, boxes, scores, iou_threshold);
  check_soft_nms_args(op, sigma, score_threshold, method);
  at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  std::vector<int64_t> idx;
  std::vector<double> sc;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, b.scalar_type(), "cvops_soft_nms_cpu", [&] {
        soft_nms_impl<scalar_t>(b, s, iou_threshold, sigma, score_threshold, method, idx, sc);
      });
  at::Tensor out_scores = at::empty({static_cast<int64_t>(sc.size())}, scores.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(),
                                  "cvops_soft_nms_cpu_out", [&] {
                                    scalar_t* o = out_scores.mutable_data_ptr<scalar_t>();
                                    for (size_t i = 0; i < sc.size(); ++i)
                                      o[i] = static_cast<scalar_t>(sc[i]);
                                  });
  return {to_tensor(idx, boxes), out_scores};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("nms_fixed", &nms_fixed_cpu);
  m.impl("soft_nms", &soft_nms_cpu);
}

}  // namespace cvops
