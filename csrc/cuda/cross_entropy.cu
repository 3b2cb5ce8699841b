// Cross-entropy on the GPU: the entry points of ops.h and the dispatch by dtype. The math and
// the kernels are in cross_entropy.cuh; each dtype's kernels are compiled in their own file
// (cross_entropy_f32.cu, _f64.cu, _f16.cu, _bf16.cu).
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "core/ops.h"
#include "rows.cuh"

namespace fusedce {
namespace cuda {
namespace detail {

void run_row_op(RowMode mode, const Rows& x, const Target& target, const LossOptions& opt,
                const RowStats& stats, const Rows& out, const Launch& launch, const ShardStats* shard_out) {
  switch (x.dtype) {
    case DType::Float32: return run_row_op_typed<float>(mode, x, target, opt, stats, out, launch, shard_out);
    case DType::Float64: return run_row_op_typed<double>(mode, x, target, opt, stats, out, launch, shard_out);
    case DType::Float16: return run_row_op_typed<__half>(mode, x, target, opt, stats, out, launch, shard_out);
    case DType::BFloat16:
      return run_row_op_typed<__nv_bfloat16>(mode, x, target, opt, stats, out, launch, shard_out);
    default: throw std::invalid_argument("fusedce CUDA: logits must be float32, float64, float16 or bfloat16");
  }
}

// The class range of a shard: [class_offset, class_offset + cols) inside [0, total_classes).
void check_shard_range(const LossOptions& opt, int64_t cols, const char* op) {
  if (opt.class_offset < 0 || total_classes(opt, cols) < opt.class_offset + cols)
    throw std::invalid_argument(std::string("fusedce CUDA ") + op +
                                ": a shard's classes [class_offset, class_offset + cols) must lie in "
                                "[0, total_classes)");
}

}  // namespace detail

void cross_entropy_forward(const Rows& logits, const Target& target, const LossOptions& opt,
                           const RowStats& stats, const Launch& launch) {
  if (is_shard(opt, logits.cols))
    throw std::invalid_argument("fusedce CUDA cross_entropy_forward: a class shard's forward is "
                                "cross_entropy_shard_stats (and combining the shards' statistics)");
  detail::run_row_op(detail::kLossOnly, logits, target, opt, stats, Rows{}, launch);
}

void cross_entropy_with_grad(const Rows& logits, const Target& target, const LossOptions& opt,
                             const RowStats& stats, const Rows& dx, const Launch& launch) {
  if (is_shard(opt, logits.cols)) {
    // a shard's gradient: from the global lse, class indices, and nothing a shard cannot know
    detail::check_shard_range(opt, logits.cols, "cross_entropy_with_grad");
    if (target.kind != TargetKind::ClassIndex)
      throw std::invalid_argument("fusedce CUDA cross_entropy_with_grad: class shards take class-index targets");
    if (!stats.lse_is_input || stats.lse == 0)
      throw std::invalid_argument("fusedce CUDA cross_entropy_with_grad: a class shard's gradient needs the "
                                  "global lse (RowStats::lse_is_input)");
    if (stats.loss != 0 || stats.argmax != 0)
      throw std::invalid_argument("fusedce CUDA cross_entropy_with_grad: a class shard has no loss or "
                                  "argmax of its own (RowStats::loss and ::argmax must be 0)");
  }
  detail::run_row_op(detail::kLossGrad, logits, target, opt, stats, dx, launch);
}

void cross_entropy_shard_stats(const Rows& logits, const Target& target, const LossOptions& opt,
                               const ShardStats& out, const Launch& launch) {
  detail::check_shard_range(opt, logits.cols, "cross_entropy_shard_stats");
  if (target.kind != TargetKind::ClassIndex)
    throw std::invalid_argument("fusedce CUDA cross_entropy_shard_stats: class-index targets only");
  detail::run_row_op(detail::kShardStats, logits, target, opt, RowStats{}, Rows{}, launch, &out);
}

}  // namespace cuda
}  // namespace fusedce
