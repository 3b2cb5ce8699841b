// Fills a KernelTable from the op templates, for the Vec types V32 / V64 of the instruction
// set whose isa_*.cpp includes this file after its vec_*.h.
#pragma once
#include "cpu/cross_entropy.h"
#include "cpu/kernel_table.h"
#include "cpu/mse.h"
#include "cpu/nll.h"
#include "cpu/softmax.h"

namespace fusedce::cpu {
namespace {

// vexp, or vexp_nonpositive with Nonpositive, over n values (for tests/test_exp.py).
template <class V, class X, bool Nonpositive>
void exp_array(const X* x, X* y, int64_t n) {
  const auto exp = [](auto v) { return Nonpositive ? vexp_nonpositive(v) : vexp(v); };
  int64_t i = 0;
  for (; i + V::width <= n; i += V::width) exp(V::load(x + i)).store(y + i);
  for (; i < n; ++i) y[i] = narrow<X>(exp(V::Scalar::load(x + i)).v);
}

// The kernels for rows stored as X, computed with V (float32 vectors for the half types).
template <class V, class X = typename V::T>
KernelsFor<X> kernels_for() {
  return {softmax_forward_rows<V, X>,  softmax_backward_rows<V, X>,         cross_entropy_forward_rows<V, X>,
          cross_entropy_with_grad_rows<V, X>, cross_entropy_shard_stats_rows<V, X>, nll_forward_rows<V, X>,
          nll_backward_rows<V, X>,     mse_forward_rows<V, X>,              mse_backward_rows<V, X>,
          exp_array<V, X, false>,      exp_array<V, X, true>};
}

// (The host helpers are named *_here: the dispatching cpu::sum_as_double / cpu::index_range
// of kernel_table.h are visible in this namespace too.)
// A float64 sum in a fixed order (eight lanes, then their total): the result does not
// depend on the thread count, and the compiler vectorises the lanes.
template <class T>
double sum_in_order(const T* x, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(x[i + k]);
  double total = 0;
  for (; i < n; ++i) total += static_cast<double>(x[i]);
  for (int k = 0; k < 8; ++k) total += acc[k];
  return total;
}

double sum_as_double_here(std::uintptr_t data, int64_t n, DType dtype) {
  if (dtype == DType::Float64) return sum_in_order(reinterpret_cast<const double*>(data), n);
  return sum_in_order(reinterpret_cast<const float*>(data), n);
}

template <class I>
void range_of(const I* x, int64_t n, int64_t& lo, int64_t& hi) {
  I a = x[0], b = x[0];
  for (int64_t i = 1; i < n; ++i) {
    a = x[i] < a ? x[i] : a;
    b = x[i] > b ? x[i] : b;
  }
  lo = a;
  hi = b;
}

void index_range_here(std::uintptr_t data, int64_t n, DType dtype, int64_t& lo, int64_t& hi) {
  if (n <= 0) {
    lo = 0;
    hi = -1;
  } else if (dtype == DType::Int32) {
    range_of(reinterpret_cast<const int32_t*>(data), n, lo, hi);
  } else {
    range_of(reinterpret_cast<const int64_t*>(data), n, lo, hi);
  }
}

template <class V32, class V64>
KernelTable make_table(const char* name) {
  return {name,
          kernels_for<V32>(),
          kernels_for<V64>(),
          kernels_for<V32, Half>(),
          kernels_for<V32, BFloat16>(),
          sum_as_double_here,
          index_range_here};
}

}  // namespace
}  // namespace fusedce::cpu
