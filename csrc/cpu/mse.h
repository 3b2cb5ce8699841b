// The mean-squared-error loss on the CPU (the seed's regression case: identity activation,
// squared error), forward and backward. The CUDA twin is csrc/cuda/mse.cu.
//
//   loss_c = (x_c - t_c)^2       dloss/dx_c = 2 (x_c - t_c)
// The forward writes per-row sums (for "sum"/"mean") and/or the elementwise squares (for
// "none"); the backward multiplies by an elementwise upstream gradient or a row factor.
#pragma once
#include "cpu/rowwise.h"

namespace fusedce::cpu {
namespace {

// pred, target, grad_each and dx are stored as X; `each` and the sums are in T (rowwise.h).
template <class V, class X = typename V::T, class T = typename V::T>
void mse_forward_rows(const Rows& pred, const Rows& target, const RowStats& stats, const Rows& each,
                      int64_t r0, int64_t r1) {
  constexpr int W = V::width;
  const int64_t C = pred.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const X* p = row_ptr<X>(pred, r);
    const X* t = row_ptr<X>(target, r);
    T* e = each.data ? row_ptr<T>(each, r) : nullptr;
    V acc = V::set1(0);
    int64_t c = 0;
    for (; c + W <= C; c += W) {
      const V diff = V::load(p + c) - V::load(t + c);
      const V sq = diff * diff;
      if (e) sq.store(e + c);
      acc = acc + sq;
    }
    T sum = acc.hsum();
    for (; c < C; ++c) {
      const T diff = widen(p[c]) - widen(t[c]);
      if (e) e[c] = diff * diff;
      sum += diff * diff;
    }
    if (stats.loss) reinterpret_cast<T*>(stats.loss)[r] = sum;
  }
}

template <class V, class X = typename V::T, class T = typename V::T>
void mse_backward_rows(const Rows& pred, const Rows& target, const Rows& grad_each,
                       const RowStats& stats, const Rows& dx, int64_t r0, int64_t r1) {
  constexpr int W = V::width;
  const int64_t C = pred.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const X* p = row_ptr<X>(pred, r);
    const X* t = row_ptr<X>(target, r);
    const X* g = grad_each.data ? row_ptr<X>(grad_each, r) : nullptr;
    X* d = row_ptr<X>(dx, r);
    const T two_f = 2 * grad_factor<T>(stats, r);
    const V vtwo = V::set1(two_f), two = V::set1(2);
    int64_t c = 0;
    for (; c + W <= C; c += W) {
      const V diff = V::load(p + c) - V::load(t + c);
      (g ? two * diff * V::load(g + c) : vtwo * diff).store(d + c);
    }
    for (; c < C; ++c) {
      const T diff = widen(p[c]) - widen(t[c]);
      d[c] = narrow<X>(g ? 2 * diff * widen(g[c]) : two_f * diff);
    }
  }
}

}  // namespace
}  // namespace fusedce::cpu
