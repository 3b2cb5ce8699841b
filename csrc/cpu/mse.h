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

template <class V, class T = typename V::T>
void mse_forward_rows(const Rows& pred, const Rows& target, const RowStats& stats, const Rows& each,
                      int64_t r0, int64_t r1) {
  constexpr int W = V::width;
  const int64_t C = pred.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const T* p = row_ptr<T>(pred, r);
    const T* t = row_ptr<T>(target, r);
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
      const T diff = p[c] - t[c];
      if (e) e[c] = diff * diff;
      sum += diff * diff;
    }
    if (stats.loss) reinterpret_cast<T*>(stats.loss)[r] = sum;
  }
}

template <class V, class T = typename V::T>
void mse_backward_rows(const Rows& pred, const Rows& target, const Rows& grad_each,
                       const RowStats& stats, const Rows& dx, int64_t r0, int64_t r1) {
  constexpr int W = V::width;
  const int64_t C = pred.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const T* p = row_ptr<T>(pred, r);
    const T* t = row_ptr<T>(target, r);
    const T* g = grad_each.data ? row_ptr<T>(grad_each, r) : nullptr;
    T* d = row_ptr<T>(dx, r);
    const T two_f = 2 * grad_factor<T>(stats, r);
    const V vtwo = V::set1(two_f), two = V::set1(2);
    int64_t c = 0;
    for (; c + W <= C; c += W) {
      const V diff = V::load(p + c) - V::load(t + c);
      (g ? two * diff * V::load(g + c) : vtwo * diff).store(d + c);
    }
    for (; c < C; ++c) d[c] = g ? 2 * (p[c] - t[c]) * g[c] : two_f * (p[c] - t[c]);
  }
}

}  // namespace
}  // namespace fusedce::cpu
