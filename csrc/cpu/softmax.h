// softmax and log_softmax on the CPU, forward and backward. The CUDA twin is
// csrc/cuda/softmax.cu.
//
//   softmax      y_c = exp(x_c - lse)          backward  dx_c = y_c (g_c - sum_k g_k y_k)
//   log_softmax  y_c = x_c - lse               backward  dx_c = g_c - exp(y_c) sum_k g_k
// lse = log sum_c exp(x_c) comes from the online sweep of rowwise.h. softmax writes
// exp(x - running max) during that sweep and rescales it in place, so it reads x once and
// computes one exp per element, like the fused cross-entropy.
#pragma once
#include "cpu/rowwise.h"

namespace fusedce::cpu {
namespace {

// ---- Few classes (C <= kSmallSoftmax): one row per SIMD lane, blocks of rows read and
// written as transposed tiles (rowwise.h), two blocks at a time, as in cross_entropy.h ----
constexpr int64_t kSmallSoftmax = 32;

inline bool small_softmax(const Rows& a) { return a.cols <= kSmallSoftmax; }

// Rows are stored as X and computed in T (see rowwise.h).
template <class V, class X, class T = typename V::T>
void softmax_forward_block(const Rows& x, const Rows& y, bool log, int64_t r) {
  const int64_t C = x.cols;
  const X* xr = row_ptr<X>(x, r);
  X* yr = row_ptr<X>(y, r);
  V xc[kSmallSoftmax];
  load_classes(xr, x.row_stride, C, xc);
  V m = V::set1(neg_inf<T>()), sum = V::set1(0);
  for (int64_t c = 0; c < C; ++c) m = V::max(m, xc[c]);
  for (int64_t c = 0; c < C; ++c) {
    const V e = vexp(xc[c] - m);
    sum = sum + e;
    if (!log) xc[c] = e;
  }
  if (log) {
    const V lse = m + vlog(sum);
    for (int64_t c = 0; c < C; ++c) xc[c] = xc[c] - lse;
  } else {
    const V inv = V::set1(1) / sum;
    for (int64_t c = 0; c < C; ++c) xc[c] = xc[c] * inv;
  }
  store_classes(xc, C, yr, y.row_stride);
}

template <class V, class X, class T = typename V::T>
void softmax_backward_block(const Rows& grad, const Rows& y, const Rows& dx, bool log, int64_t r) {
  const int64_t C = y.cols;
  const X* g = row_ptr<X>(grad, r);
  const X* yr = row_ptr<X>(y, r);
  X* d = row_ptr<X>(dx, r);
  V gc[kSmallSoftmax], yc[kSmallSoftmax];
  load_classes(g, grad.row_stride, C, gc);
  load_classes(yr, y.row_stride, C, yc);
  V acc = V::set1(0);
  for (int64_t c = 0; c < C; ++c) acc = log ? acc + gc[c] : V::fma(gc[c], yc[c], acc);
  for (int64_t c = 0; c < C; ++c) gc[c] = log ? gc[c] - vexp(yc[c]) * acc : yc[c] * (gc[c] - acc);
  store_classes(gc, C, d, dx.row_stride);
}

template <class V, class X = typename V::T, class T = typename V::T>
void softmax_forward_rows(const Rows& x, const Rows& y, bool log, int64_t r0, int64_t r1) {
  using S = typename V::Scalar;
  constexpr int W = V::width;
  if (small_softmax(x))
    return by_block_pairs<V>(r0, r1, [&](auto lanes, int64_t r) {
      softmax_forward_block<decltype(lanes), X>(x, y, log, r);
    });
  const int64_t C = x.cols;
  const ClassCoefficients<T, X> none{nullptr, nullptr, 0, 0};
  T chunk_max[kMaxChunks];
  T* scratch = log ? nullptr : static_cast<T*>(thread_scratch(static_cast<std::size_t>(C) * sizeof(T)));
  // Without scratch memory the exps go to y, unless y is too narrow to hold them (half
  // types): then y = exp(x - lse) below, after a first read for lse.
  const bool exps_in_y = !scratch && std::is_same_v<X, T>;
  const bool stream = scratch && stream_result<X>(x, y);  // (see rowwise.h)
  const bool edges_ahead = stream && chunk_length(C) >= C;  // (as cross_entropy_with_grad_rows)
  for (int64_t r = r0; r < r1; ++r) {
    const X* xr = row_ptr<X>(x, r);
    X* yr = row_ptr<X>(y, r);
    if (edges_ahead && r + kEdgeAheadRows < r1) prefetch_edge_lines(row_ptr<X>(y, r + kEdgeAheadRows), C);
    if (!log && (scratch || exps_in_y)) {
      T* e;
      if constexpr (std::is_same_v<X, T>) e = scratch ? scratch : yr;
      else e = scratch;
      const auto s = summarise_row<V, true, false, false, false>(xr, C, none, e, chunk_max);
      PendingGradient<T, X> out{yr, e, chunk_max, s.lse, T(1), none};
      if (chunk_length(C) >= C) out.inv_sum = T(1) / s.sum;  // (see chunk_scale)
      const X* next = r + 1 < r1 ? xr + x.row_stride : nullptr;
      if (stream) finish_from_exps<V, false, false, true>(out, C, next);
      else finish_from_exps<V, false, false, false>(out, C);
      continue;
    }
    const auto s = summarise_row<V, false, false, false, false>(xr, C, none, nullptr, nullptr);
    const V lse = V::set1(s.lse);
    int64_t c = 0;
    if (log) {
      for (; c + W <= C; c += W) (V::load(xr + c) - lse).store(yr + c);
      for (; c < C; ++c) yr[c] = narrow<X>(widen(xr[c]) - s.lse);
    } else {
      for (; c + W <= C; c += W) vexp(V::load(xr + c) - lse).store(yr + c);
      for (; c < C; ++c) yr[c] = narrow<X>(vexp(S{widen(xr[c]) - s.lse}).v);
    }
  }
  V::fence();
}

template <class V, class X = typename V::T, class T = typename V::T>
void softmax_backward_rows(const Rows& grad, const Rows& y, const Rows& dx, bool log, int64_t r0,
                           int64_t r1) {
  using S = typename V::Scalar;
  constexpr int W = V::width;
  if (small_softmax(y))
    return by_block_pairs<V>(r0, r1, [&](auto lanes, int64_t r) {
      softmax_backward_block<decltype(lanes), X>(grad, y, dx, log, r);
    });
  const int64_t C = y.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const X* g = row_ptr<X>(grad, r);
    const X* yr = row_ptr<X>(y, r);
    X* d = row_ptr<X>(dx, r);
    int64_t c = 0;
    if (log) {
      const T total = sum_of<V>(g, C);
      const V vtotal = V::set1(total);
      for (; c + W <= C; c += W) (V::load(g + c) - vexp(V::load(yr + c)) * vtotal).store(d + c);
      for (; c < C; ++c) d[c] = narrow<X>(widen(g[c]) - vexp(S::load(yr + c)).v * total);
      continue;
    }
    V acc = V::set1(0);
    for (; c + W <= C; c += W) acc = V::fma(V::load(g + c), V::load(yr + c), acc);
    T dot = acc.hsum();
    for (; c < C; ++c) dot += widen(g[c]) * widen(yr[c]);
    const V vdot = V::set1(dot);
    for (c = 0; c + W <= C; c += W) (V::load(yr + c) * (V::load(g + c) - vdot)).store(d + c);
    for (; c < C; ++c) d[c] = narrow<X>(widen(yr[c]) * (widen(g[c]) - dot));
  }
}

}  // namespace
}  // namespace fusedce::cpu
