// The CPU side of ops.h: pick the kernel table and the dtype, split the rows over threads.
#include "core/ops.h"
#include "cpu/kernel_table.h"
#include "cpu/thread_pool.h"

namespace fusedce::cpu {
namespace {

// Rows per task: enough elements that a task outweighs the cost of handing it out, and a
// multiple of 16 so that the small-class path keeps its SIMD blocks full.
int64_t grain_rows(int64_t cols) {
  const int64_t rows = (int64_t(1) << 15) / (cols > 0 ? cols : 1);
  return rows < 16 ? (rows < 1 ? 1 : rows) : rows / 16 * 16;
}

// Calls f(kernels) with the active instruction set's kernels for rows of this dtype.
template <class F>
void with_kernels(DType dtype, F&& f) {
  const KernelTable& table = active_kernels();
  switch (dtype) {
    case DType::Float64: return f(table.f64);
    case DType::Float16: return f(table.f16);
    case DType::BFloat16: return f(table.bf16);
    default: return f(table.f32);
  }
}

template <class F>
void over_rows(const Rows& shape, F&& f) {
  parallel_for(shape.rows, grain_rows(shape.cols), f);
}

}  // namespace

void softmax_forward(const Rows& x, const Rows& y, bool log, const Launch&) {
  with_kernels(x.dtype, [&](const auto& k) {
    over_rows(x, [&](int64_t r0, int64_t r1) { k.softmax_forward(x, y, log, r0, r1); });
  });
}

void softmax_backward(const Rows& grad, const Rows& y, const Rows& dx, bool log, const Launch&) {
  with_kernels(y.dtype, [&](const auto& k) {
    over_rows(y, [&](int64_t r0, int64_t r1) { k.softmax_backward(grad, y, dx, log, r0, r1); });
  });
}

void cross_entropy_forward(const Rows& logits, const Target& target, const LossOptions& opt,
                           const RowStats& stats, const Launch&) {
  with_kernels(logits.dtype, [&](const auto& k) {
    over_rows(logits, [&](int64_t r0, int64_t r1) { k.cross_entropy_forward(logits, target, opt, stats, r0, r1); });
  });
}

void cross_entropy_with_grad(const Rows& logits, const Target& target, const LossOptions& opt,
                             const RowStats& stats, const Rows& dx, const Launch&) {
  with_kernels(logits.dtype, [&](const auto& k) {
    over_rows(logits, [&](int64_t r0, int64_t r1) {
      k.cross_entropy_with_grad(logits, target, opt, stats, dx, r0, r1);
    });
  });
}

void cross_entropy_shard_stats(const Rows& logits, const Target& target, const LossOptions& opt,
                               const ShardStats& out, const Launch&) {
  with_kernels(logits.dtype, [&](const auto& k) {
    over_rows(logits, [&](int64_t r0, int64_t r1) { k.cross_entropy_shard_stats(logits, target, opt, out, r0, r1); });
  });
}

void nll_forward(const Rows& logp, const Target& target, const LossOptions& opt, const RowStats& stats,
                 const Launch&) {
  with_kernels(logp.dtype, [&](const auto& k) {
    over_rows(logp, [&](int64_t r0, int64_t r1) { k.nll_forward(logp, target, opt, stats, r0, r1); });
  });
}

void nll_backward(const Rows& logp, const Target& target, const LossOptions& opt, const RowStats& stats,
                  const Rows& dx, const Launch&) {
  with_kernels(logp.dtype, [&](const auto& k) {
    over_rows(logp, [&](int64_t r0, int64_t r1) { k.nll_backward(logp, target, opt, stats, dx, r0, r1); });
  });
}

void mse_forward(const Rows& pred, const Rows& target, const RowStats& stats, const Rows& each,
                 const Launch&) {
  with_kernels(pred.dtype, [&](const auto& k) {
    over_rows(pred, [&](int64_t r0, int64_t r1) { k.mse_forward(pred, target, stats, each, r0, r1); });
  });
}

void mse_backward(const Rows& pred, const Rows& target, const Rows& grad_each, const RowStats& stats,
                  const Rows& dx, const Launch&) {
  with_kernels(pred.dtype, [&](const auto& k) {
    over_rows(pred, [&](int64_t r0, int64_t r1) { k.mse_backward(pred, target, grad_each, stats, dx, r0, r1); });
  });
}

double sum_as_double(std::uintptr_t data, int64_t n, DType dtype) {
  return active_kernels().sum_as_double(data, n, dtype);
}

void index_range(std::uintptr_t data, int64_t n, DType dtype, int64_t& lo, int64_t& hi) {
  active_kernels().index_range(data, n, dtype, lo, hi);
}

}  // namespace fusedce::cpu
