// The plain-data descriptions that travel from Python to every kernel, CPU and CUDA alike.
//
// Python (fusedce/_arrays.py) turns each array into one of these: a pointer, a shape, a
// row stride, a dtype. Kernels see every op as work on a matrix of `rows` rows with `cols`
// classes each, the classes contiguous (stride 1) and the rows `row_stride` elements apart.
// Any class axis of an N-d array reaches the kernels in that form; the Python layer does
// the moving and reshaping.
#pragma once

#include <cstdint>

namespace fusedce {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3, Int32 = 4, Int64 = 5 };

// A (rows x cols) matrix with unit class stride. data == 0 means "absent".
struct Rows {
  std::uintptr_t data = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;  // in elements
  DType dtype = DType::Float32;
};

enum class TargetKind : int { None = 0, ClassIndex = 1, Probabilities = 2 };

// What a loss compares the logits with.
// ClassIndex: one int32/int64 per row, `stride` elements apart.
// Probabilities: a matrix shaped like the logits (same dtype), `stride` elements between rows.
struct Target {
  TargetKind kind = TargetKind::None;
  std::uintptr_t data = 0;
  DType dtype = DType::Int64;
  int64_t stride = 1;
};

// The options every loss kernel receives: one struct, from Python to the innermost loop.
struct LossOptions {
  std::uintptr_t weight = 0;     // `cols` class weights in the compute dtype, or 0 for none
  int64_t ignore_index = -100;   // rows whose class index equals this contribute nothing
  double label_smoothing = 0.0;  // epsilon in [0, 1]
  // z-loss: each counted row's loss gains z_loss * lse^2 (gradient 2 z_loss lse p_c). The
  // coefficient is the one each row carries: Python scales it for "mean" with class weights.
  double z_loss = 0.0;
  // Logit soft-capping: every logit x is replaced by softcap * tanh(x / softcap) before the
  // softmax, inside the kernel (the gradient gains the factor 1 - tanh^2). 0 means off.
  double softcap = 0.0;
  // Vocab-parallel shards: the logits hold classes [class_offset, class_offset + cols) of
  // total_classes (0: the logits' cols, the single-device case). Class indices in the target
  // are global; `weight` then points at all total_classes weights, read at class_offset + c;
  // label smoothing's eps / C and sum_c w_c are over the total_classes classes. Used by
  // cross_entropy_shard_stats and by cross_entropy_with_grad with RowStats::lse_is_input
  // (the global lse; a shard's own loss is not meaningful, RowStats::loss must be 0).
  int64_t class_offset = 0;
  int64_t total_classes = 0;
};

// Whether LossOptions describe a shard of a larger class dimension of which `cols` are here.
inline bool is_shard(const LossOptions& o, int64_t cols) {
  return o.class_offset != 0 || (o.total_classes != 0 && o.total_classes != cols);
}
// The whole class count C of LossOptions for logits with `cols` classes.
inline int64_t total_classes(const LossOptions& o, int64_t cols) {
  return o.total_classes > 0 ? o.total_classes : cols;
}

// Per-row partial statistics of a shard of the classes (cross_entropy_shard_stats), over the
// shard's logits x (capped with a softcap), in the compute dtype, one value per row,
// contiguous. Any pointer may be 0 ("not wanted"). Ignored rows get max 0, sum 1, target 0,
// dot 0 without reading their logits; a row whose class index is out of [0, total_classes)
// (and not ignore_index) gets a NaN target logit.
struct ShardStats {
  std::uintptr_t max = 0;     // max_c x_c (-inf for a shard of only -inf)
  std::uintptr_t sum = 0;     // sum_c exp(x_c - max)
  std::uintptr_t target = 0;  // x_t when the global target t lies in the shard, else 0
  std::uintptr_t dot = 0;     // sum_c w_c x_c (w_c = 1 without weights), for label smoothing
};

// Per-row quantities, all in the compute dtype (float32 for float16/bfloat16/float32 input,
// float64 for float64 input) except argmax (int64). Any pointer may be 0 ("not wanted").
struct RowStats {
  std::uintptr_t loss = 0;    // out: per-row loss, before reduction
  std::uintptr_t lse = 0;     // out (or in, when lse_is_input): per-row log-sum-exp
  bool lse_is_input = false;  // backward only: trust `lse` instead of recomputing it
  std::uintptr_t argmax = 0;  // out: per-row index of the largest logit (int64)
  std::uintptr_t grad = 0;    // in: d(total loss)/d(row loss), compute dtype
  int64_t grad_stride = 0;    // 0: one factor for every row; 1: one factor per row
};

// Where a kernel runs: device < 0 is the host; otherwise a CUDA device and a cudaStream_t.
struct Launch {
  int device = -1;
  std::uintptr_t stream = 0;
};

// A class index that can be used to read a row, or -1 when the row is ignored. Out-of-range
// indices must have been rejected (CPU) or are reported as NaN losses (CUDA, see docs).
inline int64_t usable_class(int64_t y, int64_t cols, int64_t ignore_index) {
  if (y == ignore_index || y < 0 || y >= cols) return -1;
  return y;
}

}  // namespace fusedce
