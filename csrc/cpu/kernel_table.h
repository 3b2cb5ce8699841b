// The CPU kernels of one instruction set, as plain function pointers over a range of rows
// [r0, r1). dispatch.cpp picks one table at import (or when the caller asks for another);
// ops_cpu.cpp splits the rows over threads and calls into it.
#pragma once
#include "core/types.h"
#include "cpu/half.h"

namespace fusedce::cpu {

// X is how the rows are stored: float, double, or a 16-bit type of half.h (computed in float).
template <class X>
struct KernelsFor {
  void (*softmax_forward)(const Rows& x, const Rows& y, bool log, int64_t r0, int64_t r1);
  void (*softmax_backward)(const Rows& grad, const Rows& y, const Rows& dx, bool log, int64_t r0,
                           int64_t r1);
  void (*cross_entropy_forward)(const Rows& logits, const Target& target, const LossOptions& opt,
                                const RowStats& stats, int64_t r0, int64_t r1);
  void (*cross_entropy_with_grad)(const Rows& logits, const Target& target, const LossOptions& opt,
                                  const RowStats& stats, const Rows& dx, int64_t r0, int64_t r1);
  void (*cross_entropy_shard_stats)(const Rows& logits, const Target& target, const LossOptions& opt,
                                    const ShardStats& out, int64_t r0, int64_t r1);
  void (*nll_forward)(const Rows& logp, const Target& target, const LossOptions& opt,
                      const RowStats& stats, int64_t r0, int64_t r1);
  void (*nll_backward)(const Rows& logp, const Target& target, const LossOptions& opt,
                       const RowStats& stats, const Rows& dx, int64_t r0, int64_t r1);
  void (*mse_forward)(const Rows& pred, const Rows& target, const RowStats& stats, const Rows& each,
                      int64_t r0, int64_t r1);
  void (*mse_backward)(const Rows& pred, const Rows& target, const Rows& grad_each,
                       const RowStats& stats, const Rows& dx, int64_t r0, int64_t r1);
  void (*exp)(const X* x, X* y, int64_t n);  // the vectorised exp, exposed for its tests
  void (*exp_nonpositive)(const X* x, X* y, int64_t n);  // and its variant for x <= 0
};

struct KernelTable {
  const char* name;
  KernelsFor<float> f32;
  KernelsFor<double> f64;
  KernelsFor<Half> f16;
  KernelsFor<BFloat16> bf16;
  // Host helpers for the Python layer, vectorised like the kernels (see ops_cpu.cpp).
  double (*sum_as_double)(std::uintptr_t data, int64_t n, DType dtype);
  void (*index_range)(std::uintptr_t data, int64_t n, DType dtype, int64_t& lo, int64_t& hi);
};

// One per instruction set, each compiled with its own flags (isa_*.cpp).
const KernelTable& portable_kernels();
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();
const KernelTable& avx512_bf16_kernels();

// The table in use, and the choice of it (dispatch.cpp).
const KernelTable& active_kernels();
const char* simd_level();
// Names this CPU can run, best first; always ends with "portable".
const char* const* available_simd_levels(int* count);
bool set_simd_level(const char* name);  // false when the name is unknown or not supported here

// Host helpers for the Python layer (ops_cpu.cpp): a float64 sum in a fixed order (so that
// it does not depend on the thread count) and the range of class indices.
double sum_as_double(std::uintptr_t data, int64_t n, DType dtype);
void index_range(std::uintptr_t data, int64_t n, DType dtype, int64_t& lo, int64_t& hi);

}  // namespace fusedce::cpu
