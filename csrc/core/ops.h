// The operations fusedce exposes, each with one host implementation (namespace cpu) and one
// CUDA implementation (namespace cuda) of the same signature. Shapes and dtypes have been
// checked in Python before any of these is called; kernels trust them.
//
// Per-row math (x = one row of logits, C = cols, w = class weights or 1, eps = smoothing):
//   lse          = log sum_c exp(x_c)
//   softmax      y_c = exp(x_c - lse)            log_softmax  y_c = x_c - lse
//   softmax bwd  dx_c = y_c (g_c - sum_k g_k y_k) log_softmax bwd dx_c = g_c - exp(y_c) sum_k g_k
//   cross-entropy, class index t (PyTorch's formula):
//       loss = (1-eps) w_t (lse - x_t) + eps/C sum_c w_c (lse - x_c)
//       dloss/dx_c = p_c [(1-eps) w_t + eps/C sum_k w_k] - (1-eps) w_t [c==t] - eps/C w_c
//   cross-entropy, probability target q (smoothed q' = (1-eps) q + eps/C):
//       loss = sum_c w_c q'_c (lse - x_c)      dloss/dx_c = p_c sum_k w_k q'_k - w_c q'_c
//   nll: loss = -w_t y_t                       dloss/dy_c = -w_t [c==t]
//   mse: loss = sum_c (x_c - t_c)^2            dloss/dx_c = 2 (x_c - t_c)
//   vocab-parallel shard (LossOptions::class_offset / total_classes): cross_entropy_shard_stats
//       gives max, sum exp(x - max), x_t (0 outside the shard), sum_c w_c x_c of the shard's
//       classes; cross_entropy_with_grad with the global lse given (RowStats::lse_is_input)
//       gives the shard's gradient, C and sum_k w_k over all classes, [c==t] in t's shard only.
// Ignored rows (t == ignore_index) have loss 0 and gradient 0. Every backward multiplies
// the row's gradient by its upstream factor RowStats::grad (see types.h).
#pragma once

#include <string>

#include "types.h"

namespace fusedce {

#define FUSEDCE_DECLARE_OPS                                                                       \
  void softmax_forward(const Rows& x, const Rows& y, bool log, const Launch& launch);             \
  void softmax_backward(const Rows& grad, const Rows& y, const Rows& dx, bool log,                \
                        const Launch& launch);                                                    \
  /* loss, lse and argmax as asked for in `stats` */                                              \
  void cross_entropy_forward(const Rows& logits, const Target& target, const LossOptions& opt,    \
                             const RowStats& stats, const Launch& launch);                        \
  /* the fused call: gradient into dx (dx may alias logits), plus whatever `stats` asks for */    \
  void cross_entropy_with_grad(const Rows& logits, const Target& target, const LossOptions& opt,  \
                               const RowStats& stats, const Rows& dx, const Launch& launch);      \
  /* vocab-parallel: per-row max, sum of exps, target logit, weighted sum over a class shard */  \
  void cross_entropy_shard_stats(const Rows& logits, const Target& target, const LossOptions& opt, \
                                 const ShardStats& out, const Launch& launch);                    \
  void nll_forward(const Rows& logp, const Target& target, const LossOptions& opt,                \
                   const RowStats& stats, const Launch& launch);                                  \
  void nll_backward(const Rows& logp, const Target& target, const LossOptions& opt,               \
                    const RowStats& stats, const Rows& dx, const Launch& launch);                 \
  /* per-row sum of squared errors into stats.loss and/or elementwise squares into `each` */      \
  void mse_forward(const Rows& pred, const Rows& target, const RowStats& stats, const Rows& each, \
                   const Launch& launch);                                                         \
  /* dx = 2 (pred - target) * factor, factor = grad_each (elementwise) if given, else the row's  \
     stats.grad factor */                                                                         \
  void mse_backward(const Rows& pred, const Rows& target, const Rows& grad_each,                  \
                    const RowStats& stats, const Rows& dx, const Launch& launch);

namespace cpu {
FUSEDCE_DECLARE_OPS
}
namespace cuda {
FUSEDCE_DECLARE_OPS
bool available();         // a CUDA device can be used
int device_count();
std::string unavailable_reason();  // why not, in words ("" when available)
const char* build_info();  // e.g. "CUDA 13.0, sm_80 sm_90"
}

}  // namespace fusedce
