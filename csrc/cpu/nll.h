// The negative log-likelihood loss on the CPU, forward and backward. The CUDA twin is
// csrc/cuda/nll.cu.
//
//   loss = -w_t logp_t          dloss/dlogp_c = -w_t [c == t]
// Ignored rows (t == ignore_index) give 0; an out-of-range index (validation skipped) gives a
// NaN loss and a NaN gradient row instead of a read outside the row.
#pragma once
#include "cpu/rowwise.h"

namespace fusedce::cpu {
namespace {

template <class T>
inline T class_weight(const LossOptions& opt, int64_t t) {
  return opt.weight ? reinterpret_cast<const T*>(opt.weight)[t] : T(1);
}

// logp is stored as X, the losses and factors are in T (see rowwise.h).
template <class V, class X = typename V::T, class T = typename V::T>
void nll_forward_rows(const Rows& logp, const Target& target, const LossOptions& opt,
                      const RowStats& stats, int64_t r0, int64_t r1) {
  T* loss = reinterpret_cast<T*>(stats.loss);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t y = class_index(target, r);
    const int64_t t = usable_class(y, logp.cols, opt.ignore_index);
    if (t >= 0) loss[r] = -class_weight<T>(opt, t) * widen(row_ptr<X>(logp, r)[t]);
    else loss[r] = y == opt.ignore_index ? T(0) : quiet_nan<T>();
  }
}

template <class V, class X = typename V::T, class T = typename V::T>
void nll_backward_rows(const Rows& logp, const Target& target, const LossOptions& opt,
                       const RowStats& stats, const Rows& dx, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    X* d = row_ptr<X>(dx, r);
    const int64_t y = class_index(target, r);
    const int64_t t = usable_class(y, logp.cols, opt.ignore_index);
    const bool bad = t < 0 && y != opt.ignore_index;
    fill(d, dx.cols, bad ? quiet_nan<T>() : T(0));
    if (t >= 0) d[t] = narrow<X>(-class_weight<T>(opt, t) * grad_factor<T>(stats, r));
  }
}

}  // namespace
}  // namespace fusedce::cpu
