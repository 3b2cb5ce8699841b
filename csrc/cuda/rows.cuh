// The one row kernel behind cross_entropy_forward, cross_entropy_with_grad, softmax_forward
// and log_softmax forward (they differ only in what is written at the end). The kernels and
// their dispatch are in cross_entropy.cuh, compiled once per dtype (cross_entropy_<dtype>.cu,
// so that the build's compilers work in parallel); cross_entropy.cu and softmax.cu call
// run_row_op.
#pragma once

#include "core/types.h"

namespace fusedce {
namespace cuda {
namespace detail {

enum RowMode : int {
  kLossOnly = 0,    // cross-entropy forward: loss / lse / argmax
  kLossGrad = 1,    // + gradient into `out`
  kSoftmax = 2,     // out = softmax(x)
  kLogSoftmax = 3,  // out = log_softmax(x)
  kShardStats = 4,  // vocab-parallel: a class shard's max, sum of exps, target logit, dot
};

// shard_out: the outputs of kShardStats (ignored by the other modes).
void run_row_op(RowMode mode, const Rows& x, const Target& target, const LossOptions& opt,
                const RowStats& stats, const Rows& out, const Launch& launch,
                const ShardStats* shard_out = nullptr);

// run_row_op for logits of storage type T (float, double, __half, __nv_bfloat16).
template <typename T>
void run_row_op_typed(RowMode mode, const Rows& x, const Target& target, const LossOptions& opt,
                      const RowStats& stats, const Rows& out, const Launch& launch,
                      const ShardStats* shard_out);

}  // namespace detail
}  // namespace cuda
}  // namespace fusedce
