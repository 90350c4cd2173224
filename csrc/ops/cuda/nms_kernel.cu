// NMS CUDA kernels: nms, batched_nms, nms_fixed and soft_nms.
//
// nms: boxes are ranked by a stable descending sort of the scores (ties: lower index first)
// and gathered into that order by nms_prepare_kernel, which also flags the boxes that may take
// part and finds the first box with bad coordinates. nms_mask_kernel then writes, for every
// box i and every tile of 64 boxes, a 64-bit word whose bit k says "box i suppresses box
// 64 * tile + k" (IoU from ops/nms.h, only for later boxes). Instead of copying that mask to
// the host and walking it there (torchvision), one block of nms_reduce_kernel walks it on the
// device, 64 boxes at a time: one thread resolves the tile's own 64 decisions from the
// diagonal word, then all threads OR the kept boxes' rows into the `removed` bitmap of the
// later tiles. It writes the kept indices (or keep flags) and their count directly, so
// nms_fixed needs no host sync at all, and nms/batched_nms make exactly one: a 16-byte copy
// of (count, first bad box) that their data-dependent output size needs anyway.
// batched_nms sorts by (class, rank) and only sets mask bits within a class; tiles whose
// class ranges are disjoint are zeroed without computing any IoU.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "common/cuda_utils.cuh"
#include "ops/nms.h"
#include "ops/nms_checks.h"

namespace cvops {
namespace {

using namespace nms_math;

constexpr int kTile = 64;
constexpr int kReduceThreads = 256;
constexpr int kSoftThreads = 512;  // a power of two (tree reduction)

template <typename acc_t, typename scalar_t>
__device__ inline Box<acc_t> load_box(const scalar_t* __restrict__ b, int64_t i) {
  return make_box<acc_t>(static_cast<acc_t>(b[4 * i]), static_cast<acc_t>(b[4 * i + 1]),
                         static_cast<acc_t>(b[4 * i + 2]), static_cast<acc_t>(b[4 * i + 3]));
}

// One block per (row tile, column tile) with column tile >= row tile; 64 threads, one per row.
// boxes: [n, 4] in rank order; cls: classes in the same order (sorted ascending) or nullptr.
template <typename scalar_t>
__global__ void nms_mask_kernel(int64_t n, int64_t col_blocks, const scalar_t* __restrict__ boxes,
                                const int64_t* __restrict__ cls, double threshold,
                                unsigned long long* __restrict__ mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int row_size = static_cast<int>(min_of<int64_t>(n - row_block * kTile, kTile));
  const int col_size = static_cast<int>(min_of<int64_t>(n - col_block * kTile, kTile));
  const int t = threadIdx.x;
  const int64_t i = row_block * kTile + t;
  if (cls != nullptr && cls[row_block * kTile + row_size - 1] < cls[col_block * kTile]) {
    // Every row's class is below every column's class: no suppression in this tile.
    if (t < row_size) mask[i * col_blocks + col_block] = 0ULL;
    return;
  }
  __shared__ Box<acc_t> tile[kTile];
  __shared__ int64_t tile_cls[kTile];
  if (t < col_size) {
    const int64_t j = col_block * kTile + t;
    tile[t] = load_box<acc_t>(boxes, j);
    tile_cls[t] = cls != nullptr ? cls[j] : 0;
  }
  __syncthreads();
  if (t < row_size) {
    const Box<acc_t> a = load_box<acc_t>(boxes, i);
    const int64_t ci = cls != nullptr ? cls[i] : 0;
    unsigned long long bits = 0;
    for (int k = (row_block == col_block) ? t + 1 : 0; k < col_size; ++k) {
      if (tile_cls[k] == ci && iou_above(a, tile[k], threshold)) bits |= 1ULL << k;
    }
    mask[i * col_blocks + col_block] = bits;
  }
}

// A single block walks the mask in rank order. valid[i]: box i may be kept at all.
// keep (nullable): keep[i] = box i kept. out_idx (nullable): the first max_output kept
// boxes' order[i]. count: number kept (at most max_output). removed: col_blocks zeros.
__global__ void nms_reduce_kernel(int64_t n, int64_t col_blocks,
                                  const unsigned long long* __restrict__ mask,
                                  const bool* __restrict__ valid, const int64_t* __restrict__ order,
                                  unsigned long long* __restrict__ removed, bool* __restrict__ keep,
                                  int64_t* __restrict__ out_idx, int64_t max_output,
                                  int64_t* __restrict__ count) {
  __shared__ unsigned long long kept_bits;
  __shared__ int64_t kept_count;
  if (threadIdx.x == 0) kept_count = 0;
  __syncthreads();
  for (int64_t w = 0; w < col_blocks; ++w) {
    if (threadIdx.x == 0) {
      unsigned long long rem = removed[w];
      unsigned long long kept = 0;
      int64_t c = kept_count;
      const int nb = static_cast<int>(min_of<int64_t>(n - w * kTile, kTile));
      for (int b = 0; b < nb; ++b) {
        const int64_t i = w * kTile + b;
        const bool alive = !((rem >> b) & 1ULL) && valid[i] && c < max_output;
        if (alive) {
          kept |= 1ULL << b;
          rem |= mask[i * col_blocks + w];
          if (out_idx != nullptr) out_idx[c] = order[i];
          ++c;
        }
        if (keep != nullptr) keep[i] = alive;
      }
      kept_bits = kept;
      kept_count = c;
    }
    __syncthreads();
    const unsigned long long kept = kept_bits;
    const bool full = kept_count >= max_output;
    if (!full) {
      for (int64_t c = w + 1 + threadIdx.x; c < col_blocks; c += blockDim.x) {
        unsigned long long acc = 0;
        unsigned long long k = kept;
        while (k != 0ULL) {
          const int b = __ffsll(static_cast<long long>(k)) - 1;
          k &= k - 1;
          acc |= mask[(w * kTile + b) * col_blocks + c];
        }
        removed[c] |= acc;
      }
    }
    __syncthreads();
    if (full) break;  // uniform: every thread read the same shared count
  }
  if (threadIdx.x == 0) *count = kept_count;
}

// Gathers the boxes into rank order and marks those that may take part in NMS (valid
// coordinates and a non-NaN score). first_bad (nullable): atomically lowered to the smallest
// input index whose coordinates are bad (non-finite, x2 < x1 or y2 < y1).
template <typename scalar_t>
__global__ void nms_prepare_kernel(int64_t n, const scalar_t* __restrict__ boxes,
                                   const scalar_t* __restrict__ scores,
                                   const int64_t* __restrict__ order,
                                   scalar_t* __restrict__ boxes_sorted, bool* __restrict__ valid,
                                   unsigned long long* __restrict__ first_bad) {
  using acc_t = at::opmath_type<scalar_t>;
  CVOPS_CUDA_KERNEL_LOOP(r, n) {
    const int64_t i = order[r];
    const scalar_t* b = boxes + 4 * i;
    scalar_t* o = boxes_sorted + 4 * r;
    o[0] = b[0];
    o[1] = b[1];
    o[2] = b[2];
    o[3] = b[3];
    const bool coords_ok = box_is_valid(static_cast<acc_t>(b[0]), static_cast<acc_t>(b[1]),
                                        static_cast<acc_t>(b[2]), static_cast<acc_t>(b[3]));
    valid[r] = coords_ok && score_is_valid(static_cast<acc_t>(scores[i]));
    if (!coords_ok && first_bad != nullptr) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
    }
  }
}

struct Ranked {
  at::Tensor boxes;  // [n, 4] in rank order
  at::Tensor valid;  // [n] bool
};

// boxes and scores contiguous; order: rank -> input index.
Ranked rank_boxes(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& order,
                  int64_t* first_bad) {
  const int64_t n = boxes.size(0);
  Ranked r{at::empty({n, 4}, boxes.options()), at::empty({n}, boxes.options().dtype(at::kBool))};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, boxes.scalar_type(), "cvops_nms_prepare_cuda", [&] {
        nms_prepare_kernel<scalar_t><<<cuda_blocks(n), kCudaThreads, 0, stream>>>(
            n, boxes.const_data_ptr<scalar_t>(), scores.const_data_ptr<scalar_t>(),
            order.const_data_ptr<int64_t>(), r.boxes.mutable_data_ptr<scalar_t>(),
            r.valid.mutable_data_ptr<bool>(), reinterpret_cast<unsigned long long*>(first_bad));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return r;
}

// meta = [number kept, smallest index of a bad box or n], read with the one host sync of
// nms/batched_nms (which their output size needs anyway); raises for a bad box.
int64_t read_count_or_raise(const char* op, const at::Tensor& meta, const at::Tensor& boxes) {
  at::Tensor host = meta.cpu();
  const int64_t* h = host.const_data_ptr<int64_t>();
  if (h[1] < boxes.size(0)) raise_bad_box(op, boxes, h[1]);
  return h[0];
}

// Runs mask + reduce over boxes already in rank order (cls_sorted may be undefined).
void run_greedy(const at::Tensor& boxes_sorted, const at::Tensor& cls_sorted,
                const at::Tensor& valid_sorted, const at::Tensor& order, double threshold,
                int64_t max_output, bool* keep, int64_t* out_idx, int64_t* count) {
  const int64_t n = boxes_sorted.size(0);
  const int64_t col_blocks = (n + kTile - 1) / kTile;
  TORCH_CHECK_VALUE(col_blocks <= 65535, "cvops nms: at most ", 65535 * kTile,
                    " boxes are supported on CUDA, got ", n);
  at::Tensor mask = at::empty({n * col_blocks}, boxes_sorted.options().dtype(at::kLong));
  at::Tensor removed = at::zeros({col_blocks}, boxes_sorted.options().dtype(at::kLong));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 blocks(static_cast<unsigned int>(col_blocks), static_cast<unsigned int>(col_blocks));
  const int64_t* cls = cls_sorted.defined() ? cls_sorted.const_data_ptr<int64_t>() : nullptr;
  auto* mask_ptr = reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, boxes_sorted.scalar_type(), "cvops_nms_mask_cuda", [&] {
        nms_mask_kernel<scalar_t><<<blocks, kTile, 0, stream>>>(
            n, col_blocks, boxes_sorted.const_data_ptr<scalar_t>(), cls, threshold, mask_ptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  nms_reduce_kernel<<<1, kReduceThreads, 0, stream>>>(
      n, col_blocks, mask_ptr, valid_sorted.const_data_ptr<bool>(), order.const_data_ptr<int64_t>(),
      reinterpret_cast<unsigned long long*>(removed.mutable_data_ptr<int64_t>()), keep, out_idx,
      max_output, count);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor rank_order(const at::Tensor& scores) {
  return std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  constexpr const char* op = "cvops.nms";
  check_nms_args(op, boxes, scores, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  at::Tensor order = rank_order(s);
  at::Tensor meta = at::full({2}, n, boxes.options().dtype(at::kLong));
  int64_t* m = meta.mutable_data_ptr<int64_t>();
  Ranked r = rank_boxes(b, s, order, m + 1);
  at::Tensor out = at::empty({n}, boxes.options().dtype(at::kLong));
  run_greedy(r.boxes, at::Tensor(), r.valid, order, iou_threshold, n, nullptr,
             out.mutable_data_ptr<int64_t>(), m);
  return out.slice(0, 0, read_count_or_raise(op, meta, b));
}

std::tuple<at::Tensor, at::Tensor> nms_fixed_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                  double iou_threshold, int64_t max_output) {
  constexpr const char* op = "cvops.nms_fixed";
  check_nms_args(op, boxes, scores, iou_threshold);
  TORCH_CHECK_VALUE(max_output >= 0, op, ": max_output must be non-negative, got ", max_output);
  const c10::cuda::CUDAGuard guard(boxes.device());
  at::Tensor out = at::full({max_output}, -1, boxes.options().dtype(at::kLong));
  at::Tensor count = at::zeros({}, boxes.options().dtype(at::kLong));
  const int64_t n = boxes.size(0);
  if (n == 0 || max_output == 0) return {out, count};
  at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  at::Tensor order = rank_order(s);
  Ranked r = rank_boxes(b, s, order, nullptr);  // bad boxes are dropped, not reported
  run_greedy(r.boxes, at::Tensor(), r.valid, order, iou_threshold, max_output, nullptr,
             out.mutable_data_ptr<int64_t>(), count.mutable_data_ptr<int64_t>());
  return {out, count};
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  constexpr const char* op = "cvops.batched_nms";
  check_nms_args(op, boxes, scores, iou_threshold);
  check_idxs(op, boxes, idxs);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  at::Tensor by_score = rank_order(s);
  at::Tensor cls_by_score = idxs.to(at::kLong).index_select(0, by_score);
  // Stable sort by class: classes contiguous, each in rank order.
  at::Tensor to_class = std::get<1>(cls_by_score.sort(/*stable=*/true, 0, false));
  at::Tensor order = by_score.index_select(0, to_class);
  at::Tensor cls_s = cls_by_score.index_select(0, to_class).contiguous();
  at::Tensor meta = at::full({2}, n, boxes.options().dtype(at::kLong));
  int64_t* m = meta.mutable_data_ptr<int64_t>();
  Ranked r = rank_boxes(b, s, order, m + 1);
  at::Tensor keep_c = at::zeros({n}, boxes.options().dtype(at::kBool));
  run_greedy(r.boxes, cls_s, r.valid, order, iou_threshold, n, keep_c.mutable_data_ptr<bool>(),
             nullptr, m);
  // Back to rank order, so the output is by (score desc, index asc): the kept boxes' ranks,
  // sorted, with the others sorting last as n.
  at::Tensor ranks = std::get<0>(at::where(keep_c, to_class, n).sort(/*stable=*/false, 0, false));
  const int64_t kept = read_count_or_raise(op, meta, b);
  return by_score.index_select(0, ranks.slice(0, 0, kept));
}

// ---------------------------------------------------------------------------------------
// Soft-NMS: one block. cur[i] is box i's current score, NaN once it is selected, removed
// or invalid. Each round: block argmax (score desc, index asc), then decay the rest.
// ---------------------------------------------------------------------------------------
template <typename scalar_t>
__global__ void soft_nms_kernel(int64_t n, const scalar_t* __restrict__ boxes,
                                const scalar_t* __restrict__ scores, double iou_threshold,
                                at::opmath_type<scalar_t> sigma, double score_threshold,
                                int64_t method, at::opmath_type<scalar_t>* __restrict__ cur,
                                int64_t* __restrict__ out_idx, scalar_t* __restrict__ out_score,
                                int64_t* __restrict__ count) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red_s[kSoftThreads];
  __shared__ int64_t red_i[kSoftThreads];
  __shared__ int64_t selected;
  const int t = threadIdx.x;
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  for (int64_t i = t; i < n; i += kSoftThreads) {
    const acc_t x1 = static_cast<acc_t>(boxes[4 * i]), y1 = static_cast<acc_t>(boxes[4 * i + 1]);
    const acc_t x2 = static_cast<acc_t>(boxes[4 * i + 2]),
                y2 = static_cast<acc_t>(boxes[4 * i + 3]);
    const acc_t s = static_cast<acc_t>(scores[i]);
    const bool ok = box_is_valid(x1, y1, x2, y2) && static_cast<double>(s) >= score_threshold;
    cur[i] = ok ? s : nan;
  }
  __syncthreads();
  int64_t m = 0;
  while (true) {
    acc_t best_s = nan;
    int64_t best_i = -1;
    for (int64_t i = t; i < n; i += kSoftThreads) {
      const acc_t s = cur[i];
      if (s == s && (best_i < 0 || s > best_s)) {  // i increases: ties keep the lower index
        best_s = s;
        best_i = i;
      }
    }
    red_s[t] = best_s;
    red_i[t] = best_i;
    __syncthreads();
    for (int stride = kSoftThreads / 2; stride > 0; stride >>= 1) {
      if (t < stride) {
        const int64_t oi = red_i[t + stride];
        const acc_t os = red_s[t + stride];
        const int64_t mi = red_i[t];
        if (oi >= 0 && (mi < 0 || os > red_s[t] || (os == red_s[t] && oi < mi))) {
          red_s[t] = os;
          red_i[t] = oi;
        }
      }
      __syncthreads();
    }
    if (t == 0) {
      selected = red_i[0];
      if (selected >= 0) {
        out_idx[m] = selected;
        out_score[m] = static_cast<scalar_t>(red_s[0]);
        cur[selected] = nan;
      }
    }
    __syncthreads();
    const int64_t sel = selected;
    if (sel < 0) break;  // uniform
    ++m;
    const Box<acc_t> a = load_box<acc_t>(boxes, sel);
    for (int64_t j = t; j < n; j += kSoftThreads) {
      acc_t s = cur[j];
      if (!(s == s)) continue;
      const Box<acc_t> b = load_box<acc_t>(boxes, j);
      if (a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2) {
        acc_t o = iou(a, b);
        if (o != o) o = acc_t(0);
        s = s * soft_nms_weight(o, method, iou_threshold, sigma);
        cur[j] = static_cast<double>(s) >= score_threshold ? s : nan;
      }
    }
    __syncthreads();
  }
  if (t == 0) *count = m;
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                 double iou_threshold, double sigma,
                                                 double score_threshold, int64_t method) {
  constexpr const char* op = "cvops.soft_nms";
  check_nms_args(op, boxes, scores, iou_threshold);
  check_soft_nms_args(op, sigma, score_threshold, method);
  const c10::cuda::CUDAGuard guard(boxes.device());
  if (!cuda_stream_is_capturing()) check_box_coordinates(op, boxes);
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return {at::empty({0}, boxes.options().dtype(at::kLong)), at::empty({0}, scores.options())};
  }
  at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  at::Tensor out_idx = at::empty({n}, boxes.options().dtype(at::kLong));
  at::Tensor out_score = at::empty({n}, scores.options());
  at::Tensor count = at::empty({}, boxes.options().dtype(at::kLong));
  at::Tensor cur = at::empty({n}, scores.options().dtype(at::toOpMathType(scores.scalar_type())));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, b.scalar_type(), "cvops_soft_nms_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        soft_nms_kernel<scalar_t><<<1, kSoftThreads, 0, stream>>>(
            n, b.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(), iou_threshold,
            static_cast<acc_t>(sigma), score_threshold, method, cur.mutable_data_ptr<acc_t>(),
            out_idx.mutable_data_ptr<int64_t>(), out_score.mutable_data_ptr<scalar_t>(),
            count.mutable_data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  const int64_t k = count.item<int64_t>();  // host sync: the output size
  return {out_idx.slice(0, 0, k), out_score.slice(0, 0, k)};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvops, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("nms_fixed", &nms_fixed_cuda);
  m.impl("soft_nms", &soft_nms_cuda);
}

}  // namespace cvops
