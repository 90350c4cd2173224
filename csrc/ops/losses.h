// Per-element math of the fused focal and Dice losses, shared by the CPU and CUDA kernels.
//
// Every function is a template over a math policy M (how to take exp/log/select on a value
// of type T) so the same formulas run on a scalar (ScalarMath: CPU tails, float64, CUDA)
// and on an 8-lane SIMD vector (the CPU kernels' VecMath). Everything is written in the
// overflow-safe form: the sigmoid and log-sigmoid come from e = exp(-|x|) <= 1, never from
// log(sigmoid(x)), and softmax terms from x - logsumexp.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/host_device.h"

// Forced inlining on the host: the CPU kernels instantiate these with SIMD vector types
// inside functions compiled for a wider ISA (AVX2), and only inlined code inherits it.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CVOPS_LOSS_FN CVOPS_HOST_DEVICE inline
#elif defined(__GNUC__)
#define CVOPS_LOSS_FN inline __attribute__((always_inline))
#else
#define CVOPS_LOSS_FN inline
#endif

namespace cvops {
namespace loss_math {

// Reduction and Dice mode codes (the Python wrapper maps the strings to these).
enum : int64_t { kReduceNone = 0, kReduceMean = 1, kReduceSum = 2 };
enum : int64_t { kModeBinary = 0, kModeMultilabel = 1, kModeMulticlass = 2 };
// Columns of the per-(sample, class) statistics computed in one pass over the logits:
//   D = sum |p - t| m, P = sum p m, T = sum t m, F = sum focal m, M = sum m
// where p is the probability, t the target, m the "not ignored" mask and focal the focal
// loss of the element (multiclass: of the pixel, booked under its target class).
enum : int64_t { kStatD = 0, kStatP = 1, kStatT = 2, kStatF = 3, kStatM = 4, kNumStats = 5 };
// gamma specialisation: kGamma2 is the common gamma == 2 (two multiplies), kGammaAny uses pow.
enum : int { kGammaAny = 0, kGamma2 = 2 };

// f(std::integral_constant<int, kGamma2 or kGammaAny>()): the kernels' gamma tag (host code).
template <typename F>
void dispatch_gamma(double gamma, F&& f) {
  if (gamma == 2.0) {
    f(std::integral_constant<int, kGamma2>());
  } else {
    f(std::integral_constant<int, kGammaAny>());
  }
}

template <typename T>
struct ScalarMath {
  using V = T;
  using Mask = bool;
  static CVOPS_LOSS_FN T c(double v) { return static_cast<T>(v); }
#if defined(__CUDA_ARCH__)
#define CVOPS_LOSS_MATH_FN(name, call) \
  static CVOPS_LOSS_FN T name(T x) { return ::call(x); }
#else
#define CVOPS_LOSS_MATH_FN(name, call) \
  static CVOPS_LOSS_FN T name(T x) { return std::call(x); }
#endif
  CVOPS_LOSS_MATH_FN(exp, exp)
  CVOPS_LOSS_MATH_FN(log, log)
  CVOPS_LOSS_MATH_FN(log1p, log1p)
  CVOPS_LOSS_MATH_FN(abs, fabs)
#undef CVOPS_LOSS_MATH_FN
  static CVOPS_LOSS_FN T pow(T x, T y) {
#if defined(__CUDA_ARCH__)
    return ::pow(x, y);
#else
    return std::pow(x, y);
#endif
  }
  // exp(x) for x <= 0, 1 / x for x in [1, 2] and log1p(x) for x in [0, 1], the only ranges
  // sigmoid_parts needs: the SIMD policies have faster forms for them.
  static CVOPS_LOSS_FN T exp_nonpos(T x) { return exp(x); }
  static CVOPS_LOSS_FN T rcp(T x) { return T(1) / x; }
  static CVOPS_LOSS_FN T log1p_unit(T x) { return log1p(x); }
  static CVOPS_LOSS_FN T max(T a, T b) { return a > b ? a : b; }
  static CVOPS_LOSS_FN bool ge0(T x) { return x >= T(0); }
  static CVOPS_LOSS_FN bool gt(T a, T b) { return a > b; }
  static CVOPS_LOSS_FN bool eq(T a, T b) { return a == b; }
  static CVOPS_LOSS_FN T where(bool m, T a, T b) { return m ? a : b; }
};

// m^gamma and its derivative for m in [0, 1]. gamma == 0 gives 1 and 0 (as PyTorch's pow).
template <int G, typename M, typename T>
CVOPS_LOSS_FN T pow_gamma(T m, T gamma) {
  if (G == kGamma2) return m * m;
  return M::pow(m, gamma);
}

template <int G, typename M, typename T>
CVOPS_LOSS_FN T dpow_gamma(T m, T gamma) {
  if (G == kGamma2) return M::c(2) * m;
  return M::where(M::eq(gamma, M::c(0)), M::c(0), gamma * M::pow(m, gamma - M::c(1)));
}

// p = sigmoid(x), q = 1 - p = sigmoid(-x), l = log1p(exp(-|x|)), all without overflow.
template <typename M, typename T>
CVOPS_LOSS_FN void sigmoid_parts(T x, T& p, T& q, T& l) {
  const T e = M::exp_nonpos(-M::abs(x));
  const T r = M::rcp(M::c(1) + e);
  const auto pos = M::ge0(x);
  p = M::where(pos, r, e * r);
  q = M::where(pos, e * r, r);
  l = M::log1p_unit(e);
}

// Binary cross-entropy with logits: softplus(x) - x t = max(x, 0) - x t + log1p(exp(-|x|)).
template <typename M, typename T>
CVOPS_LOSS_FN T bce_with_logits(T x, T t, T l) {
  return M::max(x, M::c(0)) - x * t + l;
}

// torchvision's sigmoid focal loss of one element and its derivative in x:
//   loss = alpha_t bce(x, t) m^gamma,  m = 1 - p_t = p (1 - t) + (1 - p) t,
//   alpha_t = a0 + (a1 - a0) t   (a1 = alpha, a0 = 1 - alpha; both 1 when alpha < 0),
//   grad = alpha_t [(p - t) m^gamma + bce gamma m^(gamma-1) p (1 - p) (1 - 2t)].
// One evaluation of the sigmoid gives both (the fused forward used with autograd). The
// single-output forms below share this code; the unused half is dead after inlining.
template <int G, typename M, typename T>
CVOPS_LOSS_FN void sigmoid_focal_term_and_grad(T x, T t, T a1, T a0, T gamma, T& loss, T& grad) {
  T p, q, l;
  sigmoid_parts<M>(x, p, q, l);
  const T m = p * (M::c(1) - t) + q * t;
  const T a = a0 + (a1 - a0) * t;
  const T ce = bce_with_logits<M>(x, t, l);
  const T mg = pow_gamma<G, M>(m, gamma);
  const T dm = p * q * (M::c(1) - M::c(2) * t);
  loss = a * ce * mg;
  grad = a * ((p - t) * mg + ce * dpow_gamma<G, M>(m, gamma) * dm);
}

template <int G, typename M, typename T>
CVOPS_LOSS_FN T sigmoid_focal_term(T x, T t, T a1, T a0, T gamma) {
  T loss, grad;
  sigmoid_focal_term_and_grad<G, M>(x, t, a1, a0, gamma, loss, grad);
  return loss;
}

template <int G, typename M, typename T>
CVOPS_LOSS_FN T sigmoid_focal_grad(T x, T t, T a1, T a0, T gamma) {
  T loss, grad;
  sigmoid_focal_term_and_grad<G, M>(x, t, a1, a0, gamma, loss, grad);
  return grad;
}

// Softmax focal loss of a pixel from log p of its target class: -a (1 - p)^g log p.
template <int G, typename M, typename T>
CVOPS_LOSS_FN T softmax_focal_term(T logp, T p, T a, T gamma) {
  return -a * pow_gamma<G, M>(M::c(1) - p, gamma) * logp;
}

// d/d(log p) of softmax_focal_term; d/dx_c = this * ([c == y] - p_c).
template <int G, typename M, typename T>
CVOPS_LOSS_FN T softmax_focal_dlogp(T logp, T p, T a, T gamma) {
  const T w = M::c(1) - p;
  return -a * (pow_gamma<G, M>(w, gamma) - dpow_gamma<G, M>(w, gamma) * p * logp);
}

// |p - t| and its derivative in p (0 at p == t, as PyTorch's abs).
template <typename M, typename T>
CVOPS_LOSS_FN T abs_diff(T p, T t) {
  return M::abs(p - t);
}

template <typename M, typename T>
CVOPS_LOSS_FN T abs_diff_grad(T p, T t) {
  return M::where(M::gt(p, t), M::c(1), M::where(M::gt(t, p), M::c(-1), M::c(0)));
}

}  // namespace loss_math
}  // namespace cvops
