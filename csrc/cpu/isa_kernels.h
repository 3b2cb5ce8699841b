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

template <class V, class T = typename V::T>
void exp_array(const T* x, T* y, int64_t n) {
  int64_t i = 0;
  for (; i + V::width <= n; i += V::width) vexp(V::load(x + i)).store(y + i);
  for (; i < n; ++i) y[i] = vexp(typename V::Scalar{x[i]}).v;
}

template <class V>
KernelsFor<typename V::T> kernels_for() {
  return {softmax_forward_rows<V>, softmax_backward_rows<V>, cross_entropy_forward_rows<V>,
          cross_entropy_with_grad_rows<V>, nll_forward_rows<V>,
          nll_backward_rows<V>, mse_forward_rows<V>, mse_backward_rows<V>, exp_array<V>};
}

template <class V32, class V64>
KernelTable make_table(const char* name) {
  return {name, kernels_for<V32>(), kernels_for<V64>()};
}

}  // namespace
}  // namespace fusedce::cpu
