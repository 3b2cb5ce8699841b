// Cross-entropy on the GPU: the entry points of ops.h and the dispatch by dtype. The math and
// the kernels are in cross_entropy.cuh; each dtype's kernels are compiled in their own file
// (cross_entropy_f32.cu, _f64.cu, _f16.cu, _bf16.cu).
#include <stdexcept>

#include "common.cuh"
#include "core/ops.h"
#include "rows.cuh"

namespace fusedce {
namespace cuda {
namespace detail {

void run_row_op(RowMode mode, const Rows& x, const Target& target, const LossOptions& opt,
                const RowStats& stats, const Rows& out, const Launch& launch) {
  switch (x.dtype) {
    case DType::Float32: return run_row_op_typed<float>(mode, x, target, opt, stats, out, launch);
    case DType::Float64: return run_row_op_typed<double>(mode, x, target, opt, stats, out, launch);
    case DType::Float16: return run_row_op_typed<__half>(mode, x, target, opt, stats, out, launch);
    case DType::BFloat16: return run_row_op_typed<__nv_bfloat16>(mode, x, target, opt, stats, out, launch);
    default: throw std::invalid_argument("fusedce CUDA: logits must be float32, float64, float16 or bfloat16");
  }
}

}  // namespace detail

void cross_entropy_forward(const Rows& logits, const Target& target, const LossOptions& opt,
                           const RowStats& stats, const Launch& launch) {
  detail::run_row_op(detail::kLossOnly, logits, target, opt, stats, Rows{}, launch);
}

void cross_entropy_with_grad(const Rows& logits, const Target& target, const LossOptions& opt,
                             const RowStats& stats, const Rows& dx, const Launch& launch) {
  if (is_shard(opt, logits.cols))
    throw std::invalid_argument("fusedce CUDA: class shards (vocab-parallel) are not implemented in the CUDA kernels yet");
  detail::run_row_op(detail::kLossGrad, logits, target, opt, stats, dx, launch);
}

void cross_entropy_shard_stats(const Rows&, const Target&, const LossOptions&, const ShardStats&,
                               const Launch&) {
  throw std::invalid_argument("fusedce CUDA: cross_entropy_shard_stats is not implemented in the CUDA kernels yet");
}

}  // namespace cuda
}  // namespace fusedce
