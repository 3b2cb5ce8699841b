// Cross-entropy on the GPU: forward (loss, lse, argmax) and the fused forward+backward, plus
// the softmax / log_softmax forward, which is the same row kernel writing p or log p instead
// of the gradient.
//
// Per row (x = logits, C classes, w = class weights or 1, eps = label smoothing, g = the row's
// upstream factor RowStats::grad, m = max_c x_c, s = sum_c exp(x_c - m), lse = m + log s):
//
//   class index t:
//     loss   = (1-eps) w_t (log s - (x_t - m)) + eps/C (B log s - sum_c w_c (x_c - m)),
//              B = sum_c w_c                      [= (1-eps) w_t (lse - x_t) + eps/C sum_c w_c (lse - x_c)]
//     dx_c   = g ( p_c [(1-eps) w_t + eps/C B] - (1-eps) w_t [c==t] - eps/C w_c ),  p_c = exp(x_c - m) / s
//   probabilities q (q'_c = (1-eps) q_c + eps/C, terms with w_c q'_c == 0 are skipped, so a
//   masked -inf class with zero target mass adds 0, not NaN):
//     loss   = S log s - sum_c w_c q'_c (x_c - m),   S = sum_c w_c q'_c
//     dx_c   = g ( p_c S - w_c q'_c )
//   softmax  y_c = exp(x_c - m) / s         log_softmax  y_c = (x_c - m) - log s
//
// z-loss (coefficient z, LossOptions::z_loss): every counted row (an index row whose target is
// valid and not ignored; every probability row) adds z lse^2 to its loss and so 2 z lse p_c to
// its gradient, i.e. 2 z lse joins the factor of p_c above:
//     loss  += z lse^2        dx_c += g 2 z lse p_c
// Soft-capping (cap k > 0, LossOptions::softcap): every logit is first replaced by
// x'_c = k tanh(x_c / k), and everything above (m, s, lse, x_t, the sums, the loss, p) is taken
// of x'. The gradient with respect to x is the one with respect to x', one-hot term included,
// times dx'_c/dx_c = 1 - tanh^2 = 1 - (x'_c / k)^2. A -inf logit caps to -k (finite: its p_c is
// not 0, its gradient is, through the factor), +inf to k. lse (written, or given) is the lse of
// x'; argmax is that of the original x (capping merges large logits). x' is never stored:
// rows_resident caps float and double rows in their registers, once, after the max pass, and
// half rows at each of their two later reads of the registers (a float copy of the row would
// double the registers of every half kernel, the default path's too); rows_streaming caps at
// each of its two reads of the row. The max of x' is the capped max of x (tanh is increasing),
// so the max pass reads x as it is.
//
// Vocab-parallel shards (LossOptions::class_offset = o, ::total_classes = C; types.h): the row
// holds the classes [o, o + C_s) of C, class indices are global and the weights are all C of
// them (RowArgs::w points at w_o, so w[c] is the weight of local column c and w[t - o] that of
// any global t). read_target gives t - o, which lies outside [0, C_s) (still kNormal) when
// another shard holds the target: then no column matches it and the one-hot term is absent.
//   kShardStats (cross_entropy_shard_stats), the row kernels with other outputs, x capped:
//     max m_s, s_s = sum_c exp(x_c - m_s)  (m_s = -inf, s_s = 0 for a shard of only -inf),
//     x_t when t is in the shard, else 0 (NaN for t outside [0, C)), and with ShardStats::dot
//     d_s = sum_c w_c x_c, zero weights adding 0 (the smoothing sum, unshifted: acc.a with a
//     shift of 0, the target's logit likewise in acc.t). Ignored rows: 0, 1, 0, 0.
//     No smoothing, no z-loss: the caller combines the shards, M = max m_s,
//     lse = M + log sum s_s exp(m_s - M), and the loss from lse, x_t, sum d_s.
//   the shard gradient (cross_entropy_with_grad, the global lse given, no loss):
//     dx_c = g ( p_c A - (1-eps) w_t [c == t] - eps/C w_c ) (times the cap's slope),
//     A = (1-eps) w_t + eps/C B + 2 z lse, p_c = exp(x_c - lse), w_t = w[t - o] wherever t is,
//     B = sum of all C weights (C without weights): no per-row sum pass; with weights and
//     smoothing every block sums the C weights once before its rows (shard_wsum), as the CPU
//     kernels do once per call. Counted rows (t in [0, C), not ignored) take the z-term in
//     every shard.
//
// All sums are taken relative to the row max m, so the loss is not the difference of two
// large numbers. The gradient is formed in the compute type (float for half types) and
// rounded once: p_t - 1 is never rounded to bf16 before the subtraction.
//
// Rows with t == ignore_index: loss 0, gradient 0 (lse and argmax are still written).
// Rows with t outside [0, C) (and not ignore_index): nothing is read at t; the loss is NaN
// and the gradient row is NaN. The Python layer can check targets first (one sync) and raise
// IndexError instead.
// argmax: the first index of the maximum; a row containing NaN gives its first NaN (numpy).
// A row of all -inf has lse = -inf and NaN loss / gradient / softmax (PyTorch's values);
// soft-capped, it is a row of -k like any other.
// lse_is_input (backward from a saved lse): m = lse, s = 1, no max/sum pass.
//
// Two kernels, both grid-stride over rows with a "team" of threads per row (common.cuh):
//   rows_resident (v2, the fast one): the team loads its row once into registers with 128-bit
//     loads (NV packs of 16 bytes per thread), reduces max (+argmax), then the four sums in
//     one reduction, and writes the gradient / softmax from the registers with 128-bit
//     stores: one read and one write of HBM per element. Team sizes by C: 4, 16 or 32 lanes
//     (several rows per warp) for small C, a block of 256 up to 2048 packs, then on sm_90 a
//     cluster of 2..16 blocks (distributed shared memory) up to 65536 packs (262144 float32 /
//     524288 bf16 classes); before sm_90 a block of 512 up to 4096 packs. 8 packs per thread.
//   rows_streaming (v1, simple, and the fallback beyond that): a block per row; pass 1 reads
//     the row with an online max/sum (Milakov & Gimelshein), pass 2 reads it again (mostly
//     from L2) and writes. FUSEDCE_CUDA_SIMPLE=1 uses it for every C (to validate v2 on a GPU).
// dx may alias the logits: every element is read by the thread that writes it, before the
// write, and everything a row needs is read before the row's reductions.

#pragma once

#include <climits>
#include <type_traits>

#include "common.cuh"
#include "core/ops.h"
#include "rows.cuh"

namespace fusedce {
namespace cuda {
namespace detail {
namespace {

template <typename T>
struct RowArgs {
  using S = compute_t<T>;
  const T* x;
  int64_t x_stride;
  T* out;  // gradient / softmax output, or null
  int64_t out_stride;
  int64_t n;
  int c;
  int mode;
  // vocab-parallel shard: the row holds classes [offset, offset + c) of `total` (offset 0 and
  // total c otherwise); class indices are global, w points at the weight of class `offset`
  int64_t offset, total;
  bool shard;        // a shard gradient (lse given, index targets), or kShardStats
  bool shard_wsum;   // a shard gradient with smoothing and weights: sum w over all classes first
  // targets
  int tkind;  // TargetKind
  const void* idx;
  bool idx64;
  int64_t idx_stride;
  const T* q;
  int64_t q_stride;
  const S* w;
  S eps;
  int64_t ignore;
  S z_loss;                      // 0: off
  S softcap, inv_softcap;        // 0: off
  // per-row stats
  S* loss;
  S* lse;
  bool lse_in;
  int64_t* argmax;
  const S* g;
  int64_t g_stride;
  // kShardStats outputs (ShardStats), each may be null
  S *st_max, *st_sum, *st_target, *st_dot;
  bool vec;  // 128-bit accesses allowed on x, out and q
};

// Row-level flags, identical for every thread of the grid (no reduction may depend on row data).
template <typename T>
struct Flags {
  bool ce, index, prob, smooth, stats, want_loss, do_max, do_sums, write;
  __device__ explicit Flags(const RowArgs<T>& a) {
    stats = a.mode == kShardStats;
    ce = a.mode == kLossOnly || a.mode == kLossGrad || stats;
    index = ce && a.tkind == static_cast<int>(TargetKind::ClassIndex);
    prob = ce && a.tkind == static_cast<int>(TargetKind::Probabilities);
    // the weighted sum over the classes: the smoothing term, or the shard's dot (stats)
    smooth = index && (a.eps > 0 || (stats && a.st_dot != nullptr));
    want_loss = ce && a.loss != nullptr;
    do_max = !a.lse_in || a.argmax != nullptr;
    // a shard gradient needs no sum: its sum_c w_c is over all the classes (shard_wsum)
    do_sums = !a.lse_in || prob || (smooth && !a.shard) || want_loss;
    write = a.out != nullptr && a.mode != kLossOnly;
  }
};

enum RowState : int { kNormal = 0, kIgnored = 1, kBadTarget = 2 };

__device__ __forceinline__ float tanh_c(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_c(double x) { return tanh(x); }

// x' = k tanh(x / k), the soft-capped logit (a.softcap = k != 0).
template <typename T>
__device__ __forceinline__ compute_t<T> capped(const RowArgs<T>& a, compute_t<T> x) {
  return a.softcap * tanh_c(x * a.inv_softcap);
}

// dx'/dx = 1 - tanh^2, from the capped logit x'.
template <typename T>
__device__ __forceinline__ compute_t<T> cap_slope(const RowArgs<T>& a, compute_t<T> xc) {
  using S = compute_t<T>;
  const S u = xc * a.inv_softcap;
  return S(1) - u * u;
}

// What a row's target says, read before anything is written. t is the target's column in
// this row: y - offset, outside [0, C) when another shard holds the class (kNormal still);
// -1 for other states (a row past the end counts as ignored: it stores nothing anyway).
template <typename T>
__device__ __forceinline__ int read_target(const RowArgs<T>& a, const Flags<T>& f, bool active,
                                           int64_t row, int64_t& t) {
  t = -1;
  if (!f.index) return kNormal;
  if (!active) return kIgnored;
  const int64_t y = load_index(a.idx, a.idx64, row * a.idx_stride);
  if (y == a.ignore) return kIgnored;
  if (y < 0 || y >= a.total) return kBadTarget;
  t = y - a.offset;
  return kNormal;
}

// Shared memory of a kernel whose block may sum the class weights of all the shards.
template <typename S, int BLOCK>
struct WeightSum {
  S warp[BLOCK / 32];
  S total;
};

// sum_c w_c over all `total` classes (a.w - a.offset), by every thread of the block, before
// the row loop (a block barrier): each block sums them itself, in the same order, once.
template <typename T, int BLOCK>
__device__ __forceinline__ void sum_all_weights(const RowArgs<T>& a, WeightSum<compute_t<T>, BLOCK>& sh) {
  using S = compute_t<T>;
  const S* w = a.w - a.offset;
  S v = S(0);
  for (int64_t c = threadIdx.x; c < a.total; c += BLOCK) v += w[c];
  v = warp_allreduce<32>(v, SumOp{});
  if ((threadIdx.x & 31) == 0) sh.warp[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    S s = sh.warp[0];
#pragma unroll
    for (int k = 1; k < BLOCK / 32; ++k) s += sh.warp[k];
    sh.total = s;
  }
  __syncthreads();
}

// kShardStats: a row's max, sum of exps, target logit and sum_c w_c x_c (x capped), from the
// sums as the loss takes them: m the max they are relative to (0 for a row of only -inf, whose
// s is then 0), acc.t = x_t - m (when the shard holds t), acc.a = sum_c w_c (x_c - m) and
// acc.b = sum_c w_c. The shift is undone here, once per row (its rounding is that of the
// loss's own sums), so that the row loop is the loss's, with no registers of its own.
template <typename T>
__device__ __forceinline__ void store_shard_stats(const RowArgs<T>& a, int64_t row, compute_t<T> m,
                                                  const Sum4<compute_t<T>>& acc, int state, int64_t t) {
  using S = compute_t<T>;
  const bool ignored = state == kIgnored;  // not counted: 0, 1, 0, 0
  if (a.st_max != nullptr) a.st_max[row] = ignored ? S(0) : (acc.s == S(0) ? neg_inf<S>() : m);
  if (a.st_sum != nullptr) a.st_sum[row] = ignored ? S(1) : acc.s;
  if (a.st_target != nullptr) {
    const S xt = (t >= 0 && t < a.c) ? acc.t + m : S(0);
    a.st_target[row] = ignored ? S(0) : (state == kBadTarget ? quiet_nan<S>() : xt);
  }
  if (a.st_dot != nullptr) a.st_dot[row] = ignored ? S(0) : acc.a + m * acc.b;
}

// Everything the write phase needs about a row, once its max and sums are known.
template <typename S>
struct RowPlan {
  S m, m2, logs, inv_s;
  S P;   // multiplies exp(x_c - m)
  S Tt;  // subtracted at c == t
  S Wc;  // times w_c (smoothing), or g for probability targets
  S eps_c, one_minus_eps;
  int64_t t;
  int state;
};

// Loss for the row and the gradient coefficients. sum: s, a = sum w q' (x-m) or w (x-m),
// b = S or B (when weights), tm = x_t - m. Writes the row's stats when `writer`.
template <typename T>
__device__ __forceinline__ RowPlan<compute_t<T>> finish_row(const RowArgs<T>& a, const Flags<T>& f,
                                                            bool writer, int64_t row, compute_t<T> m,
                                                            int amax, const Sum4<compute_t<T>>& acc,
                                                            int state, int64_t t) {
  using S = compute_t<T>;
  RowPlan<S> p;
  p.m = m;
  p.m2 = scaled_max(m);
  p.logs = a.lse_in ? S(0) : log_c(acc.s);
  p.inv_s = a.lse_in ? S(1) : S(1) / acc.s;
  p.t = t;
  p.state = state;
  p.eps_c = a.eps / static_cast<S>(a.total);
  p.one_minus_eps = S(1) - a.eps;
  // w_t: a.w[t] is the weight of the global class t + offset, in this shard or not
  const S wt = (f.index && state == kNormal) ? (a.w ? a.w[t] : S(1)) : S(0);
  const S B = f.smooth ? (a.w ? acc.b : static_cast<S>(a.total)) : S(0);
  const S lse = m + p.logs;
  // z-loss, on counted rows only (ignored rows stay 0, bad targets NaN)
  const bool z_on = a.z_loss != S(0) && (f.prob || (f.index && state == kNormal));
  // shard statistics, from the writer (the rest of the plan goes unused: nothing is written
  // for them; leaving the row loop early instead costs the kernels registers)
  if (writer && f.stats) store_shard_stats(a, row, m, acc, state, t);
  if (writer) {
    if (f.want_loss) {
      S L;
      if (f.prob) {
        L = acc.b * p.logs - acc.a;
        if (z_on) L += a.z_loss * lse * lse;
      } else if (state == kIgnored) {
        L = S(0);
      } else if (state == kBadTarget) {
        L = quiet_nan<S>();
      } else {
        L = p.one_minus_eps * wt * (p.logs - acc.t);
        if (f.smooth) L += p.eps_c * (B * p.logs - acc.a);
        if (z_on) L += a.z_loss * lse * lse;
      }
      a.loss[row] = L;
    }
    if (a.lse != nullptr && !a.lse_in) a.lse[row] = lse;
    if (a.argmax != nullptr) a.argmax[row] = amax;
  }
  // every thread of the team reads g (one cached load); `writer` only gates the stores above
  const S g = (f.ce && a.g != nullptr) ? a.g[a.g_stride * row] : S(1);
  const S z_grad = z_on ? S(2) * a.z_loss * lse : S(0);  // joins the factor of p_c
  if (f.prob) {
    p.P = g * (acc.b + z_grad) * p.inv_s;
    p.Tt = S(0);
    p.Wc = g;
  } else {
    p.P = g * (p.one_minus_eps * wt + (f.smooth ? p.eps_c * B : S(0)) + z_grad) * p.inv_s;
    p.Tt = g * p.one_minus_eps * wt;
    p.Wc = g * p.eps_c;
  }
  return p;
}

// The value written at column c (c < C) of a row: gradient, softmax or log_softmax.
// xv is the logit as the loss sees it (capped when softcap is on), and the gradient is with
// respect to it: the caller multiplies by cap_slope. qc is the (unsmoothed) probability target
// at c for probability targets.
template <typename T>
__device__ __forceinline__ compute_t<T> row_output(const RowArgs<T>& a, const Flags<T>& f,
                                                   const RowPlan<compute_t<T>>& p, compute_t<T> xv,
                                                   int64_t c, compute_t<T> qc) {
  using S = compute_t<T>;
  if (a.mode == kSoftmax) return exp_shifted(xv, p.m, p.m2) * p.inv_s;
  if (a.mode == kLogSoftmax) return (xv - p.m) - p.logs;
  S d;
  if (f.prob) {
    const S qq = p.one_minus_eps * qc + p.eps_c;
    const S wq = a.w ? a.w[c] * qq : qq;
    d = exp_shifted(xv, p.m, p.m2) * p.P - p.Wc * wq;
  } else {
    if (p.state == kIgnored) return S(0);
    if (p.state == kBadTarget) return quiet_nan<S>();
    d = exp_shifted(xv, p.m, p.m2) * p.P;
    if (c == p.t) d -= p.Tt;
    if (f.smooth) d -= p.Wc * (a.w ? a.w[c] : S(1));
  }
  return d;
}

// Pack j of a row, in the compute type, as the loss sees it: float and double rows were
// capped in their registers already; half rows are capped here, at each read (valid elements
// only: the -inf padding must stay -inf).
template <typename T>
__device__ __forceinline__ void loss_logits(const RowArgs<T>& a, const Pack<T>& x, int valid,
                                            compute_t<T> (&xs)[Pack<T>::N]) {
#pragma unroll
  for (int k = 0; k < Pack<T>::N; ++k) xs[k] = to_compute(x.v[k]);
  if constexpr (!std::is_same<T, compute_t<T>>::value) {
    if (a.softcap != compute_t<T>(0)) {
#pragma unroll
      for (int k = 0; k < Pack<T>::N; ++k)
        if (k < valid) xs[k] = capped(a, xs[k]);
    }
  }
}

// A team's share of row xr into registers, read once (evict-first): this thread's pack j
// holds the columns from (j * threads + rank) * VEC on; past the row's end, and for a row
// past the last, -inf, neutral for the max and the sum of exps.
template <typename T, int NV>
__device__ __forceinline__ void load_row(Pack<T> (&x)[NV], const RowArgs<T>& a, const T* xr, int threads,
                                         int rank, bool active) {
  constexpr int VEC = Pack<T>::N;
  const T pad = from_compute<T>(neg_inf<compute_t<T>>());
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int c0 = (j * threads + rank) * VEC;
    load_pack(x[j], xr + c0, active ? clamp_valid(int64_t{a.c} - c0, VEC) : 0, a.vec, pad, true);
  }
}

// ---------------------------------------------------------------------------------------------
// v2: the row in registers
// ---------------------------------------------------------------------------------------------

template <typename T, typename Team, int NV>
__global__ void __launch_bounds__(Team::kBlock) rows_resident(const RowArgs<T> a) {
  using S = compute_t<T>;
  constexpr int VEC = Pack<T>::N;
  if constexpr (Team::kClustered) {
    if (!SIMT_HAS_CLUSTERS) {  // compiled for pre-Hopper GPUs too, where it is never launched:
      __trap();                // this keeps its code out of their binary
      return;
    }
  }
  SIMT_SHARED(typename Team::Storage, storage);
  using Weights = WeightSum<S, Team::kBlock>;
  SIMT_SHARED(Weights, weights);
  Team team(storage);
  const Flags<T> f(a);
  const int rank = team.rank();
  const T zero = from_compute<T>(S(0));
  if (a.shard_wsum) sum_all_weights<T, Team::kBlock>(a, weights);

  for (int64_t base = team.begin(); base < a.n; base += team.step()) {
    const int64_t row = base + team.sub_row();
    const bool active = row < a.n;
    const int64_t r = active ? row : 0;
    const T* xr = a.x + r * a.x_stride;

    // 1. the row into registers (padding: -inf, neutral for max and exp-sum)
    Pack<T> x[NV];
    load_row(x, a, xr, team.threads(), rank, active);
    int64_t t;
    const int state = read_target(a, f, active, row, t);

    // 2. max (and argmax)
    S m = S(0);
    int amax = 0;
    if (f.do_max) {
      if (a.argmax != nullptr) {
        ArgMax<S> best{neg_inf<S>(), INT_MAX};
#pragma unroll
        for (int j = 0; j < NV; ++j) {
          const int c0 = (j * team.threads() + rank) * VEC;
#pragma unroll
          for (int k = 0; k < VEC; ++k) argmax_update(best, to_compute(x[j].v[k]), c0 + k);
        }
        best = team.reduce(best, ArgMaxOp{});
        m = best.v;
        amax = best.i;
      } else {
        S mm = neg_inf<S>();
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
          for (int k = 0; k < VEC; ++k) mm = max_c(mm, to_compute(x[j].v[k]));
        m = team.reduce(mm, MaxOp{});
      }
    }
    if (a.lse_in) {
      m = active ? a.lse[r] : S(0);  // given: already that of the capped row
    } else {
      if (a.softcap != S(0)) m = capped(a, m);
      // a row of all -inf: shift by 0, so s = 0 and lse = -inf (outputs NaN, as PyTorch)
      if (m == neg_inf<S>()) m = S(0);
    }
    // soft-capping, float and double: the row is capped in its registers, once; after the max
    // pass, since argmax is that of the original logits
    if constexpr (std::is_same<T, S>::value) {
      if (a.softcap != S(0)) {
#pragma unroll
        for (int j = 0; j < NV; ++j) {
          const int c0 = (j * team.threads() + rank) * VEC;
          const int valid = active ? clamp_valid(int64_t{a.c} - c0, VEC) : 0;  // padding stays -inf
#pragma unroll
          for (int k = 0; k < VEC; ++k)
            if (k < valid) x[j].v[k] = capped(a, x[j].v[k]);
        }
      }
    }

    // 3. the sums, one reduction
    Sum4<S> acc{S(0), S(0), S(0), S(0)};
    if (f.do_sums) {
      const S m2 = scaled_max(m);
      const S eps_c = a.eps / static_cast<S>(a.c);
      const T* qr = f.prob ? a.q + r * a.q_stride : nullptr;
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        const int c0 = (j * team.threads() + rank) * VEC;
        const int valid = active ? clamp_valid(int64_t{a.c} - c0, VEC) : 0;
        Pack<T> qp;
        if (f.prob) load_pack(qp, qr + c0, valid, a.vec, zero, false);
        S xs[VEC];
        loss_logits(a, x[j], valid, xs);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const int c = c0 + k;
          const S xv = xs[k];
          if (!a.lse_in) acc.s += exp_shifted(xv, m, m2);
          if (c < a.c) {
            if (f.smooth) {
              const S wc = a.w ? a.w[c] : S(1);
              acc.a += wc * (xv - m);
              acc.b += wc;
            } else if (f.prob) {
              const S qq = (S(1) - a.eps) * to_compute(qp.v[k]) + eps_c;
              const S wq = a.w ? a.w[c] * qq : qq;
              acc.b += wq;
              if (wq != S(0)) acc.a += wq * (xv - m);
            }
            if (c == t) acc.t = xv - m;
          }
        }
      }
      acc = team.reduce(acc, Sum4Op{});
    }
    if (a.lse_in) acc.s = S(1);
    if (a.shard_wsum) acc.b = weights.total;  // sum_c w_c of all the shards

    const RowPlan<S> p = finish_row(a, f, active && team.rank() == 0, r, m, amax, acc, state, t);

    // 4. write from the registers
    if (f.write) {
      T* orow = a.out + r * a.out_stride;
      const T* qr = f.prob ? a.q + r * a.q_stride : nullptr;
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        const int c0 = (j * team.threads() + rank) * VEC;
        const int valid = active ? clamp_valid(int64_t{a.c} - c0, VEC) : 0;
        Pack<T> qp;
        if (f.prob) load_pack(qp, qr + c0, valid, a.vec, zero, false);
        S xs[VEC], d[VEC];
        loss_logits(a, x[j], valid, xs);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const S qc = f.prob ? to_compute(qp.v[k]) : S(0);
          d[k] = k < valid ? row_output(a, f, p, xs[k], c0 + k, qc) : S(0);
        }
        if (a.softcap != S(0)) {  // back through the cap (one test per pack)
#pragma unroll
          for (int k = 0; k < VEC; ++k) d[k] *= cap_slope(a, xs[k]);
        }
        Pack<T> o;
#pragma unroll
        for (int k = 0; k < VEC; ++k) o.v[k] = k < valid ? from_compute<T>(d[k]) : zero;
        if (valid > 0) store_pack(orow + c0, o, valid, a.vec, true);
      }
    }
  }
  team.finish();
}

// ---------------------------------------------------------------------------------------------
// v3: the row in registers, the common case only
// ---------------------------------------------------------------------------------------------
//
// rows_resident serves every option, and its per-element loops test them all at run time
// (weights, smoothing, probability targets, soft-capping, the mode, c == t, the row's end):
// on an H200 that made it bound by instructions, 3-5x a copy in float32 and 6-10x in bfloat16
// (bench/gpu_probe.py). rows_plain is the same algorithm for what most calls ask: index
// targets (or none: softmax, log_softmax), no class weights, no smoothing, no soft-cap, no lse
// given, no argmax, no shard (z-loss and the upstream factor are per row, so they stay). Per
// element it keeps a max, one exp and an add for the sum, and one exp and a multiply for the
// write; the target's logit and the one-hot term are taken from the one pack that holds
// column t. The -inf padding past the row's end adds 0 to every sum, and store_pack stores
// only the valid elements, so nothing per element checks the row's end.

// Which pack of a row holds column t, and where: the pack's thread (rank), its register
// index j and the element k in it; rank -1 when no column of the row is t.
struct PackOf {
  int rank, j, k;
};
template <int VEC>
__device__ __forceinline__ PackOf pack_of(int64_t t, int64_t c, int threads) {
  if (t < 0 || t >= c) return {-1, 0, 0};
  const int pack = static_cast<int>(t / VEC);
  return {pack % threads, pack / threads, static_cast<int>(t % VEC)};
}

template <typename T>
bool plain_row_op(const RowArgs<T>& a) {
  using S = compute_t<T>;
  const bool index_or_none = a.tkind == static_cast<int>(TargetKind::ClassIndex) ||
                             a.tkind == static_cast<int>(TargetKind::None);
  return (a.mode == kLossOnly || a.mode == kLossGrad || a.mode == kSoftmax || a.mode == kLogSoftmax) &&
         index_or_none && a.w == nullptr && a.eps == S(0) && a.softcap == S(0) && !a.lse_in &&
         a.argmax == nullptr && !a.shard;
}

// At least 512 threads per SM (128 registers a thread): left free, nvcc kept each element's
// exp from the sum for the write (167-197 registers for 256-thread teams), which halved the
// clusters that fit on an H200 (14 -> 7 at 128256 float32) and made the loss-only call slower
// than rows_resident's there.
template <typename T, typename Team, int NV>
__global__ void __launch_bounds__(Team::kBlock, Team::kBlock >= 512 ? 1 : 512 / Team::kBlock)
    rows_plain(const RowArgs<T> a) {
  using S = compute_t<T>;
  constexpr int VEC = Pack<T>::N;
  if constexpr (Team::kClustered) {
    if (!SIMT_HAS_CLUSTERS) {  // as rows_resident
      __trap();
      return;
    }
  }
  SIMT_SHARED(typename Team::Storage, storage);
  Team team(storage);
  const Flags<T> f(a);
  const int rank = team.rank();
  const int threads = team.threads();

  for (int64_t base = team.begin(); base < a.n; base += team.step()) {
    const int64_t row = base + team.sub_row();
    const bool active = row < a.n;
    const int64_t r = active ? row : 0;
    const T* xr = a.x + r * a.x_stride;

    // 1. the row into registers (padding: -inf)
    Pack<T> x[NV];
    load_row(x, a, xr, threads, rank, active);
    int64_t t;
    const int state = read_target(a, f, active, row, t);
    const PackOf tp = pack_of<VEC>(state == kNormal ? t : -1, a.c, threads);
    const bool holds_t = tp.rank == rank;

    // 2. max
    S mm = neg_inf<S>();
#pragma unroll
    for (int j = 0; j < NV; ++j)
#pragma unroll
      for (int k = 0; k < VEC; ++k) mm = max_c(mm, to_compute(x[j].v[k]));
    S m = team.reduce(mm, MaxOp{});
    if (m == neg_inf<S>()) m = S(0);  // a row of all -inf: s = 0, lse = -inf (as rows_resident)

    // 3. sum of exps, and x_t - m from the thread that holds it (0 elsewhere): one reduction
    const S m2 = scaled_max(m);
    Sum4<S> acc{S(0), S(0), S(0), S(0)};
#pragma unroll
    for (int j = 0; j < NV; ++j) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc.s += exp_shifted(to_compute(x[j].v[k]), m, m2);
      if (holds_t && j == tp.j) {
#pragma unroll
        for (int k = 0; k < VEC; ++k)
          if (k == tp.k) acc.t = to_compute(x[j].v[k]) - m;
      }
    }
    acc = team.reduce(acc, Sum4Op{});

    const RowPlan<S> p = finish_row(a, f, active && rank == 0, r, m, 0, acc, state, t);

    // 4. write from the registers
    if (f.write && active) {
      T* orow = a.out + r * a.out_stride;
      // an ignored row's gradient is 0 and a bad target's NaN, whatever its logits
      const bool fill = a.mode == kLossGrad && state != kNormal;
      const T filler = from_compute<T>(state == kIgnored ? S(0) : quiet_nan<S>());
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        const int c0 = (j * threads + rank) * VEC;
        const int valid = clamp_valid(int64_t{a.c} - c0, VEC);
        if (valid <= 0) continue;
        Pack<T> o;
        if (fill) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) o.v[k] = filler;
        } else if (a.mode == kLossGrad) {
          S d[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) d[k] = exp_shifted(to_compute(x[j].v[k]), p.m, p.m2) * p.P;
          if (holds_t && j == tp.j) {
#pragma unroll
            for (int k = 0; k < VEC; ++k)
              if (k == tp.k) d[k] -= p.Tt;
          }
#pragma unroll
          for (int k = 0; k < VEC; ++k) o.v[k] = from_compute<T>(d[k]);
        } else if (a.mode == kSoftmax) {
#pragma unroll
          for (int k = 0; k < VEC; ++k)
            o.v[k] = from_compute<T>(exp_shifted(to_compute(x[j].v[k]), p.m, p.m2) * p.inv_s);
        } else {
#pragma unroll
          for (int k = 0; k < VEC; ++k) o.v[k] = from_compute<T>((to_compute(x[j].v[k]) - p.m) - p.logs);
        }
        store_pack(orow + c0, o, valid, a.vec, true);
      }
    }
  }
  team.finish();
}

// ---------------------------------------------------------------------------------------------
// v1: streaming, a block per row, any C
// ---------------------------------------------------------------------------------------------

// Online state of a slice of the row: max m, s = sum exp(x - m), a = sum u (x - m), b = sum u
// (u = w_c or w_c q'_c). -inf logits add 0 to s and -inf * sign(u) to a.
template <typename S>
struct Online {
  S m, s, a, b;
};
template <typename S>
__device__ __forceinline__ Online<S> shfl_xor(Online<S> x, int o) {
  using detail::shfl_xor;
  return {shfl_xor(x.m, o), shfl_xor(x.s, o), shfl_xor(x.a, o), shfl_xor(x.b, o)};
}
template <typename S>
__device__ __forceinline__ void online_rescale(Online<S>& x, S M) {
  if (x.m == M) return;
  const S d = x.m - M;  // < 0, or -inf when x has seen only -inf
  x.s *= exp_shifted(d, S(0), S(0));
  if (x.b != S(0)) x.a += x.b * d;
  x.m = M;
}
struct OnlineOp {
  template <typename S>
  __device__ __forceinline__ Online<S> operator()(Online<S> x, Online<S> y) const {
    const S M = max_c(x.m, y.m);
    online_rescale(x, M);
    online_rescale(y, M);
    return {M, x.s + y.s, x.a + y.a, x.b + y.b};
  }
};

template <typename T, int BLOCK>
// (float and half rows: at least 3 blocks of 512 per SM, i.e. at most 40 registers, which
// nvcc would otherwise exceed since the shard statistics)
__global__ void __launch_bounds__(BLOCK, sizeof(T) == 8 ? 1 : 1536 / BLOCK) rows_streaming(const RowArgs<T> a) {
  using S = compute_t<T>;
  SIMT_SHARED(BlockStorage, storage);
  using Weights = WeightSum<S, BLOCK>;
  SIMT_SHARED(Weights, weights);
  BlockTeam<BLOCK> team(storage);
  const Flags<T> f(a);
  const int tid = static_cast<int>(threadIdx.x);
  const S ninf = neg_inf<S>();
  const S eps_c = a.eps / static_cast<S>(a.c);
  const bool capping = a.softcap != S(0);
  if (a.shard_wsum) sum_all_weights<T, BLOCK>(a, weights);

  for (int64_t row = blockIdx.x; row < a.n; row += gridDim.x) {
    const T* xr = a.x + row * a.x_stride;
    const T* qr = f.prob ? a.q + row * a.q_stride : nullptr;
    int64_t t;
    const int state = read_target(a, f, true, row, t);
    const S fixed_m = a.lse_in ? a.lse[row] : S(0);

    // pass 1
    Online<S> st{a.lse_in ? fixed_m : ninf, S(0), S(0), S(0)};
    ArgMax<S> best{ninf, INT_MAX};
    for (int c = tid; c < a.c; c += BLOCK) {
      S xv = to_compute(xr[c]);
      if (a.argmax != nullptr) argmax_update(best, xv, c);  // of the original logits
      if (capping) xv = capped(a, xv);
      if (!a.lse_in) {
        if (xv > st.m) online_rescale(st, xv);  // exp(xv - xv) below: NaN for +inf, as PyTorch
        st.s += (xv == ninf) ? S(0) : exp_shifted(xv, st.m, scaled_max(st.m));
      }
      S u = S(0);
      if (f.smooth) {
        u = a.w ? a.w[c] : S(1);
      } else if (f.prob) {
        const S qq = (S(1) - a.eps) * to_compute(qr[c]) + eps_c;
        u = a.w ? a.w[c] * qq : qq;
      }
      if (u != S(0)) {
        // u (x - m) with x = -inf is -inf or, for a negative weight, +inf (as v2 and PyTorch);
        // written out because st.m may itself still be -inf here
        st.a += (xv == ninf) ? (u > S(0) ? ninf : -ninf) : u * (xv - st.m);
        st.b += u;
      }
    }
    // x_t from memory (when this shard holds it), before any write (the block barriers below
    // order it)
    S tm = S(0);
    if (t >= 0 && t < a.c) tm = capping ? capped(a, to_compute(xr[t])) : to_compute(xr[t]);

    S m = st.m;
    int amax = 0;
    if (a.argmax != nullptr) {
      best = team.reduce(best, ArgMaxOp{});
      amax = best.i;
    }
    st = team.reduce(st, OnlineOp{});
    m = a.lse_in ? fixed_m : st.m;
    if (a.argmax != nullptr && !a.lse_in && isnan(best.v)) m = best.v;  // as v2: NaN row -> NaN
    Sum4<S> acc{a.lse_in ? S(1) : st.s, st.a, st.b, tm - m};
    if (f.smooth && a.w == nullptr) acc.b = static_cast<S>(a.total);
    if (a.shard_wsum) acc.b = weights.total;
    const RowPlan<S> p = finish_row(a, f, tid == 0, row, m, amax, acc, state, t);

    // pass 2
    if (f.write) {
      T* orow = a.out + row * a.out_stride;
      for (int c = tid; c < a.c; c += BLOCK) {
        const S qc = f.prob ? to_compute(qr[c]) : S(0);
        const S xv = capping ? capped(a, to_compute(xr[c])) : to_compute(xr[c]);  // capped again
        const S d = row_output(a, f, p, xv, c, qc);
        orow[c] = from_compute<T>(capping ? d * cap_slope(a, xv) : d);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

// A per-device cache of one int per kernel instance (occupancy results), -1 = unknown.
struct DeviceIntCache {
  int v[64];
  DeviceIntCache() {
    for (int& x : v) x = -1;
  }
};

// Launches the resident kernel of Team; a cluster team runs in clusters of k blocks (2..16).
// Returns false where the GPU cannot run that cluster shape.
template <typename T, typename Team, int NV, bool Plain>
bool launch_resident(const RowArgs<T>& a, int device, const DeviceProps& props, cudaStream_t stream, int k = 1) {
  constexpr auto kernel = Plain ? rows_plain<T, Team, NV> : rows_resident<T, Team, NV>;
  static DeviceIntCache caches[5];  // by cluster size: 1, 2, 4, 8, 16
  DeviceIntCache& cache = caches[k >= 16 ? 4 : k >= 8 ? 3 : k >= 4 ? 2 : k >= 2 ? 1 : 0];
  const int slot = device >= 0 && device < 64 ? device : 0;
  if constexpr (!Team::kClustered) {
    if (cache.v[slot] < 0) cache.v[slot] = blocks_per_sm(kernel, Team::kBlock);
    constexpr int rows_per_block = Team::kBlock / Team::kThreads;
    const int64_t blocks_needed = (a.n + rows_per_block - 1) / rows_per_block;
    const unsigned grid = grid_for(blocks_needed, props.sm_count, cache.v[slot]);
    trace_launch("%s n=%lld c=%d: %d threads per row, blocks of %d, "
                 "%d packs per thread, grid %u (%d blocks per SM)", Plain ? "rows_plain" : "rows_resident",
                 static_cast<long long>(a.n), a.c, Team::kThreads, Team::kBlock, NV, grid, cache.v[slot]);
    simt::launch<kernel>(grid, Team::kBlock, stream, a);
    check_launch("rows_resident");
    return true;
  } else {
    if (props.major < 9) return false;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = k;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.blockDim = dim3(Team::kBlock, 1, 1);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cache.v[slot] < 0) {
      if (k > 8 && cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
        (void)cudaGetLastError();
      cfg.gridDim = dim3(k, 1, 1);
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
        (void)cudaGetLastError();
        clusters = 0;
      }
      cache.v[slot] = clusters;
    }
    if (cache.v[slot] <= 0) return false;
    const int64_t clusters = a.n < cache.v[slot] ? a.n : cache.v[slot];
    cfg.gridDim = dim3(static_cast<unsigned>(clusters * k), 1, 1);
    trace_launch("%s n=%lld c=%d: clusters of %d blocks of %d, %d packs "
                 "per thread, grid %lld clusters (%d clusters fit)", Plain ? "rows_plain" : "rows_resident",
                 static_cast<long long>(a.n), a.c, k, Team::kBlock, NV, static_cast<long long>(clusters), cache.v[slot]);
    check(simt::launch_ex<kernel>(cfg, a), "rows_resident (cluster)");
    return true;
  }
}

template <typename T>
void launch_streaming(const RowArgs<T>& a, int device, const DeviceProps& props, cudaStream_t stream) {
  constexpr int kBlock = 512;
  constexpr auto kernel = rows_streaming<T, kBlock>;
  static DeviceIntCache cache;
  const int slot = device >= 0 && device < 64 ? device : 0;
  if (cache.v[slot] < 0) cache.v[slot] = blocks_per_sm(kernel, kBlock);
  const unsigned grid = grid_for(a.n, props.sm_count, cache.v[slot]);
  trace_launch("rows_streaming n=%lld c=%d: blocks of %d, grid %u (%d blocks per SM)",
               static_cast<long long>(a.n), a.c, kBlock, grid, cache.v[slot]);
  simt::launch<kernel>(grid, kBlock, stream, a);
  check_launch("rows_streaming");
}

// Team by row length, in 16-byte packs: the smallest team whose registers hold the row;
// rows_plain where the call's options allow it (Plain), rows_resident otherwise. Returns false
// where the row is too long for any of them.
template <typename T, bool Plain>
bool launch_resident_by_length(const RowArgs<T>& a, int device, const DeviceProps& props, cudaStream_t stream) {
  constexpr int VEC = Pack<T>::N;
  const int64_t packs = (int64_t{a.c} + VEC - 1) / VEC;
  if (packs <= 4) return launch_resident<T, SubWarpTeam<4, 256>, 1, Plain>(a, device, props, stream);
  if (packs <= 16) return launch_resident<T, SubWarpTeam<16, 256>, 1, Plain>(a, device, props, stream);
  if (packs <= 64) return launch_resident<T, SubWarpTeam<32, 256>, 2, Plain>(a, device, props, stream);
  if (packs <= 256) return launch_resident<T, SubWarpTeam<32, 256>, 8, Plain>(a, device, props, stream);
  if (packs <= 2048) return launch_resident<T, BlockTeam<256>, 8, Plain>(a, device, props, stream);
  // sm_90: clusters of 256-thread blocks (two blocks per SM overlap one row's reductions with
  // the other's loads); up to 32768 packs, then 512-thread blocks. Older GPUs (or a cluster
  // shape the GPU cannot place): one 512-thread block up to 4096 packs, then streaming.
  if constexpr (sizeof(T) < 8) {  // float64 is not a speed target: no cluster kernels for it
    if (packs <= 4096 && launch_resident<T, ClusterTeam<256>, 8, Plain>(a, device, props, stream, 2)) return true;
    if (packs <= 8192 && launch_resident<T, ClusterTeam<256>, 8, Plain>(a, device, props, stream, 4)) return true;
    if (packs <= 16384 && launch_resident<T, ClusterTeam<256>, 8, Plain>(a, device, props, stream, 8)) return true;
    if (packs <= 32768 && launch_resident<T, ClusterTeam<256>, 8, Plain>(a, device, props, stream, 16)) return true;
    if (packs <= 65536 && launch_resident<T, ClusterTeam<512>, 8, Plain>(a, device, props, stream, 16)) return true;
  }
  if (packs <= 4096) return launch_resident<T, BlockTeam<512>, 8, Plain>(a, device, props, stream);
  return false;
}

template <typename T>
void launch_rows(const RowArgs<T>& a, int device, cudaStream_t stream) {
  const DeviceProps props = device_props(device);
  if (!simple_kernels_forced()) {
    if (plain_row_op(a) ? launch_resident_by_length<T, true>(a, device, props, stream)
                        : launch_resident_by_length<T, false>(a, device, props, stream))
      return;
  }
  launch_streaming(a, device, props, stream);
}

}  // namespace

// One dtype's row op (instantiated once per dtype, in cross_entropy_<dtype>.cu).
template <typename T>
void run_row_op_typed(RowMode mode, const Rows& x, const Target& target, const LossOptions& opt,
                      const RowStats& stats, const Rows& out, const Launch& launch,
                      const ShardStats* shard_out) {
  using S = compute_t<T>;
  RowArgs<T> a{};
  a.x = reinterpret_cast<const T*>(x.data);
  a.x_stride = x.row_stride;
  a.n = x.rows;
  a.c = checked_cols(x.cols, "row op");
  a.mode = mode;
  const bool ce = mode == kLossOnly || mode == kLossGrad || mode == kShardStats;
  a.offset = 0;
  a.total = a.c;
  a.out = (mode != kLossOnly) ? reinterpret_cast<T*>(out.data) : nullptr;
  a.out_stride = out.row_stride;
  a.tkind = ce ? static_cast<int>(target.kind) : static_cast<int>(TargetKind::None);
  if (a.tkind == static_cast<int>(TargetKind::ClassIndex)) {
    a.idx = reinterpret_cast<const void*>(target.data);
    a.idx64 = target.dtype == DType::Int64;
    a.idx_stride = target.stride;
  } else if (a.tkind == static_cast<int>(TargetKind::Probabilities)) {
    a.q = reinterpret_cast<const T*>(target.data);
    a.q_stride = target.stride;
  }
  if (ce) {
    a.w = reinterpret_cast<const S*>(opt.weight);
    a.eps = static_cast<S>(opt.label_smoothing);
    a.ignore = opt.ignore_index;
    a.z_loss = static_cast<S>(opt.z_loss);
    // a shard (cross_entropy.cu checked its options): global class indices and weights
    a.shard = mode == kShardStats || is_shard(opt, x.cols);
    if (a.shard) {
      a.offset = opt.class_offset;
      a.total = total_classes(opt, x.cols);
      if (a.w != nullptr) a.w += a.offset;
    }
    if (mode == kShardStats) {  // neither smoothing nor z-loss: statistics of the logits
      a.eps = S(0);
      a.z_loss = S(0);
    }
    if (opt.softcap != 0.0) {
      a.softcap = static_cast<S>(opt.softcap);
      a.inv_softcap = static_cast<S>(1.0 / opt.softcap);
    }
    a.loss = reinterpret_cast<S*>(stats.loss);
    a.lse = reinterpret_cast<S*>(stats.lse);
    a.lse_in = stats.lse_is_input && stats.lse != 0;
    a.argmax = reinterpret_cast<int64_t*>(stats.argmax);
    a.g = reinterpret_cast<const S*>(stats.grad);
    a.g_stride = stats.grad_stride != 0 ? 1 : 0;
    a.shard_wsum = a.shard && mode == kLossGrad && a.w != nullptr && a.eps > S(0);
  }
  if (mode == kShardStats && shard_out != nullptr) {
    a.st_max = reinterpret_cast<S*>(shard_out->max);
    a.st_sum = reinterpret_cast<S*>(shard_out->sum);
    a.st_target = reinterpret_cast<S*>(shard_out->target);
    a.st_dot = reinterpret_cast<S*>(shard_out->dot);
  }
  a.vec = rows_vectorizable<T>(x.data, x.rows, x.row_stride) &&
          (a.out == nullptr || rows_vectorizable<T>(out.data, x.rows, out.row_stride)) &&
          (a.q == nullptr || rows_vectorizable<T>(target.data, x.rows, target.stride));
  if (a.n <= 0) return;
  if (mode == kLossOnly && a.loss == nullptr && a.lse == nullptr && a.argmax == nullptr) return;
  if (mode == kShardStats && a.st_max == nullptr && a.st_sum == nullptr && a.st_target == nullptr &&
      a.st_dot == nullptr)
    return;
  if (mode != kLossOnly && mode != kShardStats && a.out == nullptr &&
      (!ce || (a.loss == nullptr && a.lse == nullptr && a.argmax == nullptr)))
    return;
  DeviceGuard guard(launch.device);
  launch_rows(a, launch.device, stream_of(launch));
}

}  // namespace detail
}  // namespace cuda
}  // namespace fusedce
