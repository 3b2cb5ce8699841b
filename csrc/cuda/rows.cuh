// The one row kernel behind cross_entropy_forward, cross_entropy_with_grad, softmax_forward
// and log_softmax forward (they differ only in what is written at the end). Kernels and their
// dispatch live in cross_entropy.cu; softmax.cu calls run_row_op.
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
};

void run_row_op(RowMode mode, const Rows& x, const Target& target, const LossOptions& opt,
                const RowStats& stats, const Rows& out, const Launch& launch);

}  // namespace detail
}  // namespace cuda
}  // namespace fusedce
