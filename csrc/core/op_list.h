// The ops of ops.h as one list, X(name, parameters, arguments), for code that must treat each
// op alike (the Python bindings of fusedce._core and fusedce._emulated).
#pragma once

#define FUSEDCE_FOR_EACH_OP(X)                                                                     \
  X(softmax_forward, (const Rows& x, const Rows& y, bool log, const Launch& launch), (x, y, log, launch)) \
  X(softmax_backward, (const Rows& grad, const Rows& y, const Rows& dx, bool log, const Launch& launch),  \
    (grad, y, dx, log, launch))                                                                    \
  X(cross_entropy_forward,                                                                         \
    (const Rows& logits, const Target& target, const LossOptions& opt, const RowStats& stats,      \
     const Launch& launch),                                                                        \
    (logits, target, opt, stats, launch))                                                          \
  X(cross_entropy_with_grad,                                                                       \
    (const Rows& logits, const Target& target, const LossOptions& opt, const RowStats& stats,      \
     const Rows& dx, const Launch& launch),                                                        \
    (logits, target, opt, stats, dx, launch))                                                      \
  X(cross_entropy_shard_stats,                                                                     \
    (const Rows& logits, const Target& target, const LossOptions& opt, const ShardStats& out,      \
     const Launch& launch),                                                                        \
    (logits, target, opt, out, launch))                                                            \
  X(nll_forward,                                                                                   \
    (const Rows& logp, const Target& target, const LossOptions& opt, const RowStats& stats,        \
     const Launch& launch),                                                                        \
    (logp, target, opt, stats, launch))                                                            \
  X(nll_backward,                                                                                  \
    (const Rows& logp, const Target& target, const LossOptions& opt, const RowStats& stats,        \
     const Rows& dx, const Launch& launch),                                                        \
    (logp, target, opt, stats, dx, launch))                                                        \
  X(mse_forward,                                                                                   \
    (const Rows& pred, const Rows& target, const RowStats& stats, const Rows& each, const Launch& launch), \
    (pred, target, stats, each, launch))                                                           \
  X(mse_backward,                                                                                  \
    (const Rows& pred, const Rows& target, const Rows& grad_each, const RowStats& stats, const Rows& dx, \
     const Launch& launch),                                                                        \
    (pred, target, grad_each, stats, dx, launch))
