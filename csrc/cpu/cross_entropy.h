// Cross-entropy on the CPU: loss, log-sum-exp and argmax in one sweep; the fused loss and
// gradient in one read of the logits and one write of the gradient. The CUDA twin is
// csrc/cuda/cross_entropy.cu.
//
// Row x with C classes, class weights w (1 when absent), smoothing eps, lse = log sum exp x:
//   index target t:  loss = (1-eps) w_t (lse - x_t) + eps/C sum_c w_c (lse - x_c)
//                    dloss/dx_c = p_c A - (1-eps) w_t [c == t] - eps/C w_c,
//                    A = (1-eps) w_t + eps/C sum_c w_c
//   probabilities q: q' = (1-eps) q + eps/C, loss = sum_c w_c q'_c (lse - x_c)
//                    dloss/dx_c = p_c sum_k w_k q'_k - w_c q'_c
// With u_c = (a q_c + b) w_c (a = 1-eps, b = eps/C for probabilities; a = 0, b = 1 for the
// smoothing term of index targets) both losses need only lse, x_t, sum u_c x_c and
// sum u_c, which the forward sweep gathers while it reads the row (rowwise.h). The gradient
// is  g * (p_c A - u'_c) - [c == t] g (1-eps) w_t,  g the row's upstream factor.
// Ignored rows get loss 0 and gradient 0; an out-of-range index (only possible when the
// caller skipped validation) gets NaN for both, never a read outside the row.
//
// Language-model options (LossOptions::z_loss, ::softcap), on every path below:
//   z-loss z:   every counted row (an index target not ignored; any probability row) adds
//               z lse^2 to its loss and g 2 z lse p_c to its gradient, i.e. A grows by 2 z lse.
//   softcap c:  x is replaced by x' = c tanh(x / c) before anything else (lse, x_t and the
//               weighted sums are the capped ones), and the whole gradient row, target term
//               included, is multiplied by dx'/dx = 1 - (x'/c)^2. argmax stays that of x.
//
// Vocab-parallel shards (LossOptions::class_offset, ::total_classes; see types.h): the row
// holds classes [offset, offset + cols) of C = total_classes. cross_entropy_shard_stats
// gathers the shard's max, sum of exps, target logit and sum w_c x_c; the caller combines
// the shards' statistics into the global lse, and the gradient is the lse-given sweep below
// with C and sum_c w_c taken over all classes, w_t from the global weights, and the one-hot
// term only in the shard that holds the target (the small-class path is not used).
#pragma once
#include "cpu/rowwise.h"

namespace fusedce::cpu {
namespace {

// What the cross-entropy of one row needs to know before its sweep. Rows (logits, gradient,
// probability targets) are stored as X, and computed in T (float32 for half types).
template <class T, class X>
struct CeRow {
  const X* x;
  X* d;                     // gradient row or nullptr
  int64_t t = -1;           // class index, -1 for an ignored row or a probability target
  bool bad = false;         // out-of-range index
  T x_t = 0, w_t = 0;       // logit (capped, with a softcap) and weight of the target class
  T g = 1;                  // upstream factor, 0 for ignored rows
  ClassCoefficients<T, X> k;  // the u_c of the smoothing / probability term
  bool dot = false;         // whether the sweep must gather sum u_c x_c
  const X* q = nullptr;     // probability target row
  bool elsewhere = false;   // a counted class index in another shard (t is then -1)

  bool ignored() const { return t < 0 && !bad && !q && !elsewhere; }
};

template <class T, class X>
struct CeContext {
  const Rows& logits;
  const Target& target;
  const LossOptions& opt;
  const RowStats& stats;
  const T* w;    // the weights of this row's classes (a shard's: at class_offset) or nullptr
  const T* w_all;  // all total_classes weights or nullptr
  int64_t offset;  // the first class of the row (a shard's class_offset, else 0)
  int64_t total;   // C, all the classes (total_classes, else the row's cols)
  T w_sum;       // sum of all the class weights (C without weights)
  T eps;
  bool probs;
  T z;           // z-loss coefficient, 0 when off
  T cap;         // softcap, 0 when off

  CeContext(const Rows& l, const Target& t, const LossOptions& o, const RowStats& s)
      : logits(l), target(t), opt(o), stats(s),
        w_all(reinterpret_cast<const T*>(o.weight)), offset(o.class_offset),
        total(total_classes(o, l.cols)), eps(static_cast<T>(o.label_smoothing)),
        probs(t.kind == TargetKind::Probabilities), z(static_cast<T>(o.z_loss)),
        cap(static_cast<T>(o.softcap)) {
    w = w_all ? w_all + offset : nullptr;
    w_sum = static_cast<T>(total);
    if (w_all) {
      w_sum = 0;
      for (int64_t c = 0; c < total; ++c) w_sum += w_all[c];
    }
  }

  template <class S>
  CeRow<T, X> row(int64_t r, const Rows* dx) const {
    CeRow<T, X> row;
    const int64_t C = logits.cols;
    row.x = row_ptr<X>(logits, r);
    row.d = dx ? row_ptr<X>(*dx, r) : nullptr;
    row.g = grad_factor<T>(stats, r);
    row.k.w = w;
    if (probs) {
      row.k.q = row.q = reinterpret_cast<const X*>(target.data) + r * target.stride;
      row.k.a = 1 - eps;
      row.k.b = eps / static_cast<T>(C);
      row.dot = true;
      return row;
    }
    const int64_t y = class_index(target, r);
    const int64_t t = usable_class(y, total, opt.ignore_index);  // global class
    row.bad = t < 0 && y != opt.ignore_index;
    if (t < 0) {
      row.g = 0;
    } else {
      row.w_t = w_all ? w_all[t] : T(1);
      if (t - offset >= 0 && t - offset < C) {
        row.t = t - offset;
        row.x_t = capped<S>(widen(row.x[row.t]));  // read now: an in-place sweep overwrites it
      } else {
        row.elsewhere = true;  // another shard holds the target (and its one-hot term)
      }
    }
    row.k.a = 0;
    row.k.b = 1;
    row.dot = eps > 0;
    return row;
  }

  // softcap * tanh(v / softcap), the vector sweeps' arithmetic on S, the instruction set's
  // one-lane vector; v itself without a cap.
  template <class S>
  T capped(T v) const {
    return cap != 0 ? cap * vtanh(S{v * (T(1) / cap)}).v : v;
  }
  T z_term(const RowSummary<T>& s) const { return z != 0 ? z * s.lse * s.lse : T(0); }

  T loss(const CeRow<T, X>& row, const RowSummary<T>& s) const {
    if (row.bad) return quiet_nan<T>();
    if (probs) return s.usum * s.lse - s.dot + z_term(s);
    if (row.ignored()) return 0;
    T loss = (1 - eps) * row.w_t * (s.lse - row.x_t);
    if (eps > 0) loss += eps / static_cast<T>(total) * (w_sum * s.lse - s.dot);
    return loss + z_term(s);
  }

  // The factor A of p_c, and k turned into the subtracted term g u'_c, for the gradient.
  T gradient_terms(const CeRow<T, X>& row, const RowSummary<T>& s, ClassCoefficients<T, X>& k) const {
    if (row.bad) {
      k.a = 0;
      k.b = quiet_nan<T>();
      return quiet_nan<T>();
    }
    const T C = static_cast<T>(total);
    const T z_slope = z != 0 && !row.ignored() ? 2 * z * s.lse : T(0);  // d(z lse^2)/d lse
    if (probs) {
      k.a = row.g * (1 - eps);
      k.b = row.g * eps / C;
      return row.g * (s.usum + z_slope);
    }
    k.a = 0;
    k.b = row.g * eps / C;
    return row.g * ((1 - eps) * row.w_t + eps / C * w_sum + z_slope);
  }

  void write_stats(int64_t r, const CeRow<T, X>& row, const RowSummary<T>& s) const {
    if (stats.loss) reinterpret_cast<T*>(stats.loss)[r] = loss(row, s);
    if (stats.lse && !stats.lse_is_input) reinterpret_cast<T*>(stats.lse)[r] = s.lse;
    if (stats.argmax) reinterpret_cast<int64_t*>(stats.argmax)[r] = s.argmax;
  }

  // The one-hot term of the gradient, -g (1-eps) w_t at class t (none for other rows).
  T one_hot(const CeRow<T, X>& row) const { return row.t >= 0 ? row.g * (1 - eps) * row.w_t : T(0); }

  // The row's gradient as a PendingGradient, from its exps e taken against chunk_max, field
  // by field into `grad` (see cross_entropy_with_grad_rows); inv_cap, inv_sum and reversed
  // are the caller's.
  void set_gradient(PendingGradient<T, X>& grad, const CeRow<T, X>& row, const RowSummary<T>& s, const T* e,
                    const T* chunk_max) const {
    grad.k = row.k;
    grad.scale = gradient_terms(row, s, grad.k);
    grad.d = row.d;
    grad.e = e;
    grad.chunk_max = chunk_max;
    grad.lse = s.lse;
    grad.hot = row.t;
    grad.hot_value = one_hot(row);
  }
};

// ---- Few classes (C <= kSmallClasses), class-index targets ------------------------------
// One row per SIMD lane, blocks of rows read and written as transposed tiles (rowwise.h),
// two blocks at a time (Twice). Up to 96 classes: measured 1.5-2x faster than the row path
// from 49 to 96 classes, whose per-row reductions dominate there; slower from about 128.
constexpr int64_t kSmallClasses = 96;

template <class V, class T, class X>
void cross_entropy_small_block(const CeContext<T, X>& ce, int64_t r, const Rows* dx) {
  constexpr int W = V::width;
  const Rows& logits = ce.logits;
  const int64_t C = logits.cols, xs = logits.row_stride;
  const X* x = row_ptr<X>(logits, r);
  const T eps = ce.eps, inv_c = T(1) / static_cast<T>(C);
  const bool has_w = ce.w != nullptr;

  // The block's logits, class by class (lane i = row r + i), capped with a softcap, and
  // their row max.
  V xc[kSmallClasses], e[kSmallClasses];
  load_classes(x, xs, C, xc);
  if (dx) prefetch_rows_for_write(row_ptr<X>(*dx, r), dx->row_stride, C, W);
  V m = V::set1(neg_inf<T>());
  const T cap = ce.cap;
  for (int64_t c = 0; c < C; ++c) {
    if (cap != 0) xc[c] = V::set1(cap) * vtanh(xc[c] * V::set1(T(1) / cap));
    m = V::max(m, xc[c]);
  }
  // With a given lse (a backward from the forward's), p_c = exp(x_c - lse) directly.
  const bool given = ce.stats.lse_is_input;
  const V shift = given ? V::load(reinterpret_cast<const T*>(ce.stats.lse) + r) : m;
  V sum = V::set1(0), wx = V::set1(0);
  for (int64_t c = 0; c < C; ++c) {
    e[c] = vexp(xc[c] - shift);
    sum = sum + e[c];
    if (eps > 0) wx = V::fma(has_w ? V::set1(ce.w[c]) : V::set1(1), xc[c], wx);
  }
  const V lse = given ? shift : m + vlog(sum);
  if (given) sum = V::set1(1);

  // Each lane's target, as a T: its class t, whether it is ignored, whether it is out of
  // range (that row becomes NaN), its logit x_t and weight w_t, picked by comparing t with
  // every class (C <= kSmallClasses: cheaper than per-lane scalar code or a gather).
  const Target& tg = ce.target;
  const V t = tg.dtype == DType::Int32
                  ? V::from_indices(reinterpret_cast<const int32_t*>(tg.data) + r)
                  : V::from_indices(reinterpret_cast<const int64_t*>(tg.data) + r);
  const V zero = V::set1(0), one = V::set1(1), nan = V::set1(quiet_nan<T>());
  const V ignore = V::set1(static_cast<T>(ce.opt.ignore_index));
  // bad: t < 0 or t > C - 1; then ignored rows (which may look bad) are taken out
  V bad = V::select_gt(zero, t, one, V::select_gt(t, V::set1(static_cast<T>(C - 1)), one, zero));
  const V ignored = V::select_eq(t, ignore, one, zero);
  bad = V::select_eq(ignored, one, zero, bad);
  // (the class index as a vector is counted up, not converted and broadcast: fewer shuffles)
  V x_t = zero, wt = zero, cv = zero;
  for (int64_t c = 0; c < C; ++c, cv = cv + one) {
    x_t = V::select_eq(t, cv, xc[c], x_t);
    if (has_w) wt = V::select_eq(t, cv, V::set1(ce.w[c]), wt);
  }
  if (!has_w) wt = V::select_eq(bad, one, zero, one);  // 1 for an index in [0, C)
  wt = V::select_eq(ignored, one, zero, wt);  // ignore_index may be a valid class
  // upstream factor: 0 for ignored rows, NaN for bad ones
  V g = ce.stats.grad_stride ? V::load(reinterpret_cast<const T*>(ce.stats.grad) + r)
                             : V::set1(grad_factor<T>(ce.stats, r));
  g = V::select_eq(ignored, one, zero, V::select_eq(bad, one, nan, g));

  if (ce.stats.loss) {
    V loss = V::set1(1 - eps) * wt * (lse - x_t);
    if (eps > 0) loss = V::fma(V::set1(eps * inv_c), V::fma(V::set1(ce.w_sum), lse, zero - wx), loss);
    if (ce.z != 0) loss = V::fma(V::set1(ce.z) * lse, lse, loss);
    loss = V::select_eq(ignored, one, zero, V::select_eq(bad, one, nan, loss));
    loss.store(reinterpret_cast<T*>(ce.stats.loss) + r);
  }
  if (ce.stats.lse && !ce.stats.lse_is_input) lse.store(reinterpret_cast<T*>(ce.stats.lse) + r);
  if (ce.stats.argmax)
    for (int i = 0; i < W; ++i) reinterpret_cast<int64_t*>(ce.stats.argmax)[r + i] = argmax_of(x + i * xs, C);
  if (!dx) return;

  // d_c = g (p_c A - eps/C w_c) - g (1-eps) w_t [c == t], with p_c = e_c / sum and
  // A = (1-eps) w_t + eps/C sum_c w_c + 2 z lse; times the cap's slope with a softcap.
  V A = V::fma(V::set1(1 - eps), wt, V::set1(eps * inv_c * ce.w_sum));
  if (ce.z != 0) A = V::fma(V::set1(2 * ce.z), lse, A);
  const V a = g * A / sum;
  const V b = g * V::set1(eps * inv_c);
  const V one_hot = g * V::set1(1 - eps) * wt;
  V* dc = e;  // the gradient's class vectors replace the exps, then become rows
  V cls = zero;
  for (int64_t c = 0; c < C; ++c, cls = cls + one) {
    const V sub = has_w ? b * V::set1(ce.w[c]) : b;
    const V hot = V::select_eq(t, cls, one_hot, zero);
    V v = e[c] * a - sub - hot;
    if (cap != 0) v = through_cap(v, xc[c], T(1) / cap);
    // Ignored rows get exactly 0, even where their logits are NaN.
    dc[c] = V::select_eq(ignored, one, zero, v);
  }
  store_classes(dc, C, row_ptr<X>(*dx, r), dx->row_stride);
}

template <class V, class X, class T = typename V::T>
void cross_entropy_small_rows(const Rows& logits, const Target& target, const LossOptions& opt,
                              const RowStats& stats, const Rows* dx, int64_t r0, int64_t r1) {
  const CeContext<T, X> ce(logits, target, opt, stats);
  by_block_pairs<V>(r0, r1, [&](auto lanes, int64_t r) {
    cross_entropy_small_block<decltype(lanes)>(ce, r, dx);
  });
}

// Whether the small-class path can take this problem: index targets, few classes (a given
// lse is not needed: the path recomputes it from the row it holds anyway), contiguous
// targets, no class shard (vocab-parallel), and an ignore_index that float32 represents
// exactly (class indices are compared as floats there; any index beyond 2^24 is out of range
// anyway). Any row strides: rows are read and written one by one.
inline bool use_small_classes(const Rows& logits, const Target& target, const LossOptions& opt) {
  const int64_t exact = int64_t(1) << 24;
  return logits.cols <= kSmallClasses && target.kind == TargetKind::ClassIndex &&
         !is_shard(opt, logits.cols) && target.stride == 1 && -exact < opt.ignore_index &&
         opt.ignore_index < exact;
}

// Rows whose statistics wait for their lse, which lse_of_rows takes W rows at a time (one
// vector log instead of a libm call per row): written when W have gathered, and at the end.
template <class V, class T, class X>
struct LseBlock {
  static constexpr int W = V::width;
  int64_t r[W];
  CeRow<T, X> row[W];
  RowSummary<T> s[W];
  int n = 0;

  void add(const CeContext<T, X>& ce, int64_t r_, const CeRow<T, X>& row_, const RowSummary<T>& s_) {
    r[n] = r_;
    row[n] = row_;
    s[n] = s_;
    if (++n == W) flush(ce);
  }
  void flush(const CeContext<T, X>& ce) {
    if (n == 0) return;
    alignas(64) T max[W] = {}, sum[W] = {}, lse[W];  // (zeros: only n are read, which GCC cannot see)
    for (int i = 0; i < n; ++i) {
      max[i] = s[i].max;
      sum[i] = s[i].sum;
    }
    lse_of_rows<V>(max, sum, n, lse);
    for (int i = 0; i < n; ++i) {
      s[i].lse = lse[i];
      ce.write_stats(r[i], row[i], s[i]);
    }
    n = 0;
  }
};

// ---- Rows a little past the small-class path (use_row_blocks) ------------------------------
// W rows at a time, in phases: their maxima; their exp sweeps (the exps kept in scratch);
// their lses, by one vector log; their losses and gradients. The rows of a phase do not wait
// for one another, so the core overlaps one row's dependent chains (the max's reduction, the
// exp sweep that needs it, the sum's reduction) with the next row's work, where the row path
// below takes them one row after the other; and the general path's per-row bookkeeping
// (chunks, options) is not there. Each row goes through the row path's own functions
// (max_of, sum_exp, lse_of_rows, finish_range), so it gets the same bits.
// On AVX-512 float (V::reduces_together) the W rows' lane-wise maxima and sums are reduced
// together instead of row by row, by one transposed reduction each (V::hmax_each,
// hsum_each), which pairs the lanes as hmax and hsum do: in cache (2048x128, medians of five
// or six alternated runs) forward 4.78 -> 4.50 ns per 16, in place 6.32 -> 6.15, out= 6.66 ->
// 6.59; bfloat16 forward 4.91 -> 4.74, in place 6.57 -> 6.23; from memory within the noise.
// On AVX2 (8 rows, 22 operations for 8 reductions instead of 48) it lost: in place 9.35 ->
// 9.86 in cache, 10.5 -> 11.0 from memory.
// C++ harness (bench/kernel_ab.sh), AMD Zen 4, one thread, 32 MiB of float32 logits 16 bytes
// past a line, ns per 16 classes, the fastest of four or five alternated runs, row path ->
// blocks: 128 classes forward 6.5 -> 5.5, out= 11.1 -> 10.7, in place 10.4 -> 8.8 (in cache,
// 2048x128: 6.0 -> 4.6, 10.0 -> 7.6, 9.7 -> 7.4); 100 classes 7.7 -> 6.0, 13.8 -> 11.4,
// 12.8 -> 9.2; bfloat16 128 classes 6.5 -> 5.0, 10.5 -> 8.0, 10.4 -> 7.8.
constexpr int64_t kRowBlockClasses = 128;

// Longer rows (up to kRowBlockMaxClasses) take the blocks too when what a block works on
// fits in kRowBlockBytes: its rows and the next block's, asked for meanwhile; with a
// gradient the two blocks' exps; out=, the block's gradient rows and the next block's:
// W C (2 sizeof(X) + 2 sizeof(T) + 2 sizeof(X)) bytes. There they win: the harness, medians
// of four or five alternated runs, row path -> blocks, from memory unless said: float32
// forward 160 classes 5.4 -> 4.7, 192: 5.1 -> 4.6, 256: 4.5 -> 4.2; in place 160: 9.1 ->
// 7.1-8.1, 176: 8.7 -> 7.0, 192: 8.4 -> 8.0, in cache (2048 rows) 7.9 -> 5.6; bfloat16 in
// place 160: 9.0 -> 6.3, 192: 8.3 -> 5.9, 256: 7.3 -> 5.8-6.1, forward 256: 4.7 -> 4.0,
// out= 192: 8.6 -> 6.7. Past it they lose from memory, the row path's carry doing better:
// float32 in place 256 classes 7.2 -> 7.8, out= 160 classes 9.9 -> 11.2 (streamed 10.0 ->
// 11.1), 192: 10.0 -> 11.2. By default no gradient of these longer rows is streamed: only
// out= streams rows this short, from kStreamRowBytes on, such rows with out= do not fit, and
// a call that fits in cache (below) is under the streaming threshold (a lowered threshold
// streams it, and the blocks carry its rows as they do 128 classes).
// In cache, though, the memory no longer matters and the blocks win all the same: a call
// with a gradient whose logits (and out=, gradient) fit in half the cache that decides
// streaming (max(16 MiB, the last-level cache): streaming.h) takes them whatever its block's
// working set. Float32 out= 8192x192 (6 MiB) 8.0-8.2 -> 6.1-6.6, 2048x256 7.0 -> 5.4; a
// little past that border they still won (16384x160, 10 MiB: 9.6 -> 8.1) and a little
// further lost (16384x192, 12 MiB: 8.7 -> 9.3; 24576x192 9.1 -> 10.8). In place 2048x256
// 6.7 -> 5.2, 8192x256 6.8 -> 5.3, 16384x256 (16 MiB) 6.9 -> 5.3.
constexpr int64_t kRowBlockMaxClasses = 256;
constexpr int64_t kRowBlockBytes = int64_t(48) << 10;

// The plain loss: index targets, no weights, smoothing, softcap, z-loss, class shard, given
// lse or argmax; rows too long for the small-class path and short enough for a block
// (above). dx: the gradient, if there is one.
template <class V, class X, class T = typename V::T>
bool use_row_blocks(const Rows& logits, const Target& target, const LossOptions& opt, const RowStats& stats,
                    const Rows* dx) {
  const int64_t C = logits.cols;
  const bool plain = target.kind == TargetKind::ClassIndex && !opt.weight && opt.label_smoothing == 0 &&
                     opt.softcap == 0 && opt.z_loss == 0 && opt.class_offset == 0 &&
                     total_classes(opt, C) == C && !stats.lse_is_input && !stats.argmax;
  if (!plain || C <= kSmallClasses || C > kRowBlockMaxClasses) return false;
  if (C <= kRowBlockClasses) return true;
  constexpr int64_t x_bytes = sizeof(X), t_bytes = sizeof(T);
  const bool out = dx && dx->data != logits.data;
  const int64_t arrays = out ? 2 : 1;  // the logits, and with out= the gradient
  if (dx && arrays * logits.rows * C * x_bytes <= short_row_streaming_threshold_bytes() / 2) return true;
  const int64_t bytes_per_class = 2 * x_bytes + (dx ? 2 * t_bytes : 0) + (out ? 2 * x_bytes : 0);
  return V::width * C * bytes_per_class <= kRowBlockBytes;
}

// Rows [r0, r1) by blocks of W; with dx, the gradient too (over the logits when dx is them).
// Row i's gradient is written when row i of the next block is swept. Streamed, inside that
// sweep (sum_exp's Carry, as the row path carries the previous row), so that its streaming
// stores drain a line at a time while exps are computed (right after the sweep, each row's
// lines in a burst: 65536x128 out= 10.7 -> 12.5 ns per 16). With plain stores, right after
// that sweep, by finish_range alone: a row this short paid more for the carry's bookkeeping
// (its leading lines, its loop's checks, the copies of the pending row) than for its
// stores. C++ harness, Zen 4, alternated, carried -> after: 2048x128 out= 7.6 -> 6.5 ns per
// 16, in place 7.4 -> 6.3; 65536x128 in place 8.2 -> 7.2; bfloat16 65536x128 in place
// 7.7 -> 6.7, out= 8.0 -> 7.1 (a 16 MiB output: plain stores).
// False, having done nothing, when there is no scratch memory for two blocks' exps.
template <class V, class X, class T = typename V::T>
bool cross_entropy_row_blocks(const Rows& logits, const Target& target, const LossOptions& opt,
                              const RowStats& stats, const Rows* dx, int64_t r0, int64_t r1) {
  constexpr int W = V::width;
  const int64_t C = logits.cols;
  T* const scratch = dx ? static_cast<T*>(thread_scratch(static_cast<std::size_t>(2 * W * C) * sizeof(T))) : nullptr;
  if (dx && !scratch) return false;
  const CeContext<T, X> ce(logits, target, opt, stats);
  const bool stream = dx && stream_result<X>(logits, *dx);
  // out= with plain stores: each row's gradient in the next block is asked for (for writing)
  // while this block's same row is swept, as the row path does kWriteAheadRows ahead
  const bool write_ahead = dx && !stream && dx->data != logits.data;
  // the next block is asked for into L1 (8 KiB of float32 for 128 classes): into L2 it took
  // 65536x128 float32 forward 5.8 -> 5.2 ns per 16, out= 11.1 -> 9.8, in place 8.6 -> 7.8
  const bool ahead_l1 = true;
  CeRow<T, X> rows[W];
  bool skip[W];
  alignas(64) T max[2][W], sum[W], lse[W];
  constexpr bool together = V::reduces_together;  // (the maxima and sums: see above)
  V lanes[W];  // with `together`, the rows' lane-wise maxima, then sums
  PendingGradient<T, X> grads[2][W];  // each block's gradients, written during the next one's
  const PendingGradient<T, X>* pending[W] = {};  // row i's gradient still to write, if any
  int cur = 0;
  // row i's exps in this block's half of the scratch (the other half: the pending rows')
  const auto exps_of = [&](int i) { return scratch + (cur * W + i) * C; };
  with_flag(stream, [&](auto streamed) {
    constexpr bool Stream = decltype(streamed)::value;
    // a pending row's gradient outside a sweep: finish_range's stores, without the chunk
    // loop of finish_from_exps (a row here is one chunk, apart from its exps)
    const auto finish = [C](const PendingGradient<T, X>& p) {
      finish_range<V, false, false, Stream>(p, 0, C, p.chunk_scale(0));
    };
    for (int64_t b0 = r0; b0 < r1; b0 += W, cur ^= 1) {
      const int n = static_cast<int>(min_i64(W, r1 - b0));
      T* const m = max[cur];
      for (int i = 0; i < n; ++i) {
        rows[i] = ce.template row<typename V::Scalar>(b0 + i, dx);
        // an ignored row (loss 0, gradient 0) is not read unless its lse is asked for
        skip[i] = rows[i].ignored() && !stats.lse;
        if constexpr (together) lanes[i] = skip[i] ? V::set1(T(0)) : max_lanes<V>(rows[i].x, C);
        else m[i] = skip[i] ? T(0) : max_of<V>(rows[i].x, C);
      }
      if constexpr (together) {
        for (int i = n; i < W; ++i) lanes[i] = V::set1(T(0));  // (a last, partial block)
        V::hmax_each(lanes, m);
      }
      for (int i = 0; i < n; ++i) {
        const int64_t next = b0 + W + i;  // the same row of the next block, asked for meanwhile
        const X* ahead = next < r1 ? row_ptr<X>(logits, next) : nullptr;
        const X* write = write_ahead && next < r1 ? row_ptr<X>(*dx, next) : nullptr;
        // streamed: the lines that row shares with its neighbours (prefetch_edge_lines)
        if (stream && next < r1) prefetch_edge_lines(row_ptr<X>(*dx, next), C);
        T* const e = dx ? exps_of(i) : nullptr;
        const PendingGradient<T, X>* const carry = pending[i];
        if (skip[i] || m[i] == neg_inf<T>()) {  // (-inf everywhere: each exp(-inf) is 0)
          if (dx && !skip[i]) fill(e, C, T(0));
          if (carry) finish(*carry);
          sum[i] = skip[i] ? T(1) : T(0);
          if constexpr (together) lanes[i] = V::set1(T(0));  // (its sum is set again below)
        } else if (carry && Stream) {
          sum[i] = sum_exp<V, true, true, false, false, false, Stream>(rows[i].x, C, m[i], e, ahead, carry, 0,
                                                                       carry->chunk_scale(0), write, ahead_l1,
                                                                       together ? lanes + i : nullptr);
        } else if (dx) {
          sum[i] = sum_exp<V, true, false, false, false, false, Stream>(rows[i].x, C, m[i], e, ahead, carry, 0,
                                                                        T(0), write, ahead_l1,
                                                                        together ? lanes + i : nullptr);
          if (carry) finish(*carry);
        } else {
          sum[i] = sum_exp<V, false, false, false, false, false, false>(rows[i].x, C, m[i], e, ahead, carry, 0,
                                                                        T(0), static_cast<const X*>(nullptr),
                                                                        ahead_l1, together ? lanes + i : nullptr);
        }
        pending[i] = nullptr;
      }
      if constexpr (together) {
        for (int i = n; i < W; ++i) lanes[i] = V::set1(T(0));
        V::hsum_each(lanes, sum);
        for (int i = 0; i < n; ++i)
          if (skip[i] || m[i] == neg_inf<T>()) sum[i] = skip[i] ? T(1) : T(0);
      }
      lse_of_rows<V>(m, sum, n, lse);
      for (int i = 0; i < n; ++i) {
        RowSummary<T> s;
        s.max = m[i];
        s.sum = sum[i];
        s.lse = lse[i];
        const CeRow<T, X>& row = rows[i];
        ce.write_stats(b0 + i, row, s);
        if (!dx) continue;
        if (row.ignored()) {
          fill(row.d, C, T(0));  // exactly 0, even where the logits are NaN
          continue;
        }
        PendingGradient<T, X>& grad = grads[cur][i];
        ce.set_gradient(grad, row, s, exps_of(i), m + i);
        grad.inv_sum = T(1) / s.sum;
        pending[i] = &grad;
      }
    }
    for (int i = 0; i < W; ++i)  // (rows past a last partial block's are two blocks old)
      if (pending[i]) finish(*pending[i]);
  });
  if (stream) V::fence();  // order the streaming stores before the caller sees the result
  return true;
}

// Loss (and lse, argmax) only: one read of each row.
template <class V, class X = typename V::T, class T = typename V::T>
void cross_entropy_forward_rows(const Rows& logits, const Target& target, const LossOptions& opt,
                                const RowStats& stats, int64_t r0, int64_t r1) {
  if (use_small_classes(logits, target, opt))
    return cross_entropy_small_rows<V, X>(logits, target, opt, stats, nullptr, r0, r1);
  if (use_row_blocks<V, X>(logits, target, opt, stats, nullptr) &&
      cross_entropy_row_blocks<V, X>(logits, target, opt, stats, nullptr, r0, r1))
    return;
  const CeContext<T, X> ce(logits, target, opt, stats);
  alignas(64) T capped[kChunk];  // a softcap's buffer for one chunk (summarise_row)
  LseBlock<V, T, X> block;       // every row's lse is taken W rows at a time
  for (int64_t r = r0; r < r1; ++r) {
    const CeRow<T, X> row = ce.template row<typename V::Scalar>(r, nullptr);
    RowSummary<T> s;
    with_flags(ce.probs, ce.w != nullptr, [&](auto has_q, auto has_w) {
      constexpr bool HasQ = decltype(has_q)::value, HasW = decltype(has_w)::value;
      const bool argmax = stats.argmax != 0;
      const int64_t C = logits.cols;
      if (ce.cap != 0) {
        if (row.dot) s = summarise_row<V, false, true, HasQ, HasW, false, true>(row.x, C, row.k, capped, nullptr, argmax, nullptr, ce.cap, false);
        else s = summarise_row<V, false, false, HasQ, HasW, false, true>(row.x, C, row.k, capped, nullptr, argmax, nullptr, ce.cap, false);
      } else {
        if (row.dot) s = summarise_row<V, false, true, HasQ, HasW>(row.x, C, row.k, nullptr, nullptr, argmax, nullptr, 0, false);
        else s = summarise_row<V, false, false, HasQ, HasW>(row.x, C, row.k, nullptr, nullptr, argmax, nullptr, 0, false);
      }
    });
    block.add(ce, r, row, s);
  }
  block.flush(ce);
}

// out= with plain stores, rows of at most 4 KiB: the gradient row kWriteAheadRows ahead is
// asked for while the current row is swept, a line or two per step of its exp loop
// (sum_exp). Each plain store to a line not in cache must first fetch it; as we read the
// figures, the hardware prefetchers do not run far enough ahead of such stores and the
// store buffer fills while they wait (longer rows, streamed from 16 MiB, were not measured
// without it). Intel Xeon (Sapphire Rapids class VM), one thread, float32 from memory, ns
// per row, min of five alternated runs, prefetching for reading: 65536x128 202 -> 163,
// 65536x256 335 -> 262, 8192x1024 1338 -> 1041, 32768x600 644 -> 586; PREFETCHW (AVX-512
// builds) did better again:
// 65536x128 169 -> 141 for reading -> 112 in another run.
// Not in place: there the lines were just read, and asking for them again made 65536x128
// 143 -> 154 ns per row. The lines were first asked for all at once before each row; spread
// over the loop (2026-12-03, same machine, five alternated runs of each, ns per row):
// 32768x600 635-696 -> 552-612; 65536x128, 65536x256, 8192x1024, 32768x100 unchanged. The
// burst waited for free fill buffers (perf put 40% of the row loop's own samples on it).
constexpr int64_t kWriteAheadRows = 8;
constexpr int64_t kWriteAheadRowBytes = 4096;

// Rows whose scratch row is at least this long share one scratch row with the pending row
// (SharedSlots in rowwise.h): two of them and the row being read no longer fit in a 2 MiB
// L2. Shorter rows keep two scratch rows, where the copy through the staging chunk is a cost
// with nothing to gain. Intel Xeon VM (2 MiB L2), float32 out= / a streamed copy, medians
// of alternated processes, two rows against one shared: 2048x32000 (125 KiB rows)
// 11.1 / 12.1 ns per 16 classes (in place 9.7 / 11.7), 512x131072 10.3 / 11.5, 256x196608
// 11.9 / 11.1; 512x262144 1.43x / 1.26x a copy, 64x1000000 1.62x / 1.38x.
constexpr int64_t kSharedScratchRowBytes = int64_t(768) << 10;

// In place, a long row's gradient is streamed (stream_result in rowwise.h), but the first
// chunks carried are the row's last ones (mirrored_chunk), read lately: their lines are
// still in L2, where a plain store finds them and a streaming store would first have to
// evict them. So the carried chunks that cover the first kPlainCarriedBytes of the row take
// plain stores. Intel Xeon VM, float32 in place / a streamed copy, medians of alternated
// processes, streamed throughout against plain for the first 512 KiB: 512x262144 1.62x /
// 1.42x, 64x1000000 1.59x / 1.51x (plain for 256 KiB: 1.49x, 768 KiB: 1.60x).
constexpr int64_t kPlainCarriedBytes = int64_t(512) << 10;

// Loss and gradient. Sweep 1 reads the row and leaves exp(x - running max) in a scratch row;
// sweep 2 rescales that (still in cache) into the gradient and subtracts the target terms,
// so the gradient row is written once. For large outputs the gradient is streamed, and
// sweep 2 of each row runs inside sweep 1 of the next (PendingGradient in rowwise.h), so
// that its stores drain to memory while the next row's exps are computed; on rows of several
// chunks, the pending row's last chunks first (mirrored_chunk in rowwise.h). With
// stats.lse_is_input (a backward given the forward's lse), a single sweep suffices.
template <class V, class X = typename V::T, class T = typename V::T>
void cross_entropy_with_grad_rows(const Rows& logits, const Target& target, const LossOptions& opt,
                                  const RowStats& stats, const Rows& dx, int64_t r0, int64_t r1) {
  if (use_small_classes(logits, target, opt))
    return cross_entropy_small_rows<V, X>(logits, target, opt, stats, &dx, r0, r1);
  if (use_row_blocks<V, X>(logits, target, opt, stats, &dx) &&
      cross_entropy_row_blocks<V, X>(logits, target, opt, stats, &dx, r0, r1))
    return;
  const CeContext<T, X> ce(logits, target, opt, stats);
  const int64_t C = logits.cols;
  // Two scratch rows (the current row's exps, and the pending row's), or for long rows one
  // shared by both and a chunk's room to make the exps in (kSharedScratchRowBytes); without
  // scratch memory the exps go to the gradient row itself and nothing is pipelined, or, when
  // that row is too narrow to hold them (half types), lse is found first: two reads of the row.
  const int64_t len = chunk_length(C);
  const bool one_chunk = len >= C;  // (PendingGradient::chunk_scale)
  const bool shared = C * static_cast<int64_t>(sizeof(T)) >= kSharedScratchRowBytes;
  const int64_t scratch_size = shared ? C + len : 2 * C;
  T* scratch = static_cast<T*>(thread_scratch(static_cast<std::size_t>(scratch_size) * sizeof(T)));
  T* const stage = scratch && shared ? scratch + C : nullptr;
  constexpr bool narrower = !std::is_same_v<X, T>;
  const bool two_reads = narrower && !scratch;
  // Streaming stores for large outputs; in place only for rows too long to stay in cache.
  const bool stream = scratch && stream_result<X>(logits, dx);
  const bool argmax = stats.argmax != 0;
  const int64_t plain_chunks = stream && dx.data == logits.data && shared
                                   ? kPlainCarriedBytes / (len * static_cast<int64_t>(sizeof(X)))
                                   : 0;
  // out= with plain stores: the gradient's lines are asked for ahead (kWriteAheadRows)
  const bool write_ahead =
      !stream && dx.data != logits.data && C * static_cast<int64_t>(sizeof(X)) <= kWriteAheadRowBytes;
  with_flags(ce.probs, ce.w != nullptr, [&](auto has_q, auto has_w) {
   with_flag(ce.cap != 0, [&](auto has_cap) {
    constexpr bool HasQ = decltype(has_q)::value, HasW = decltype(has_w)::value;
    constexpr bool Cap = decltype(has_cap)::value;
    T chunk_max[2][kMaxChunks];
    int cur = 0;  // which scratch row, chunk_max and grads the current row uses
    // Each row's PendingGradient is filled in place, field by field, and never copied whole:
    // a copy of a struct whose fields were just stored reads them back in wider pieces than
    // they were written, and waits for those stores (store-to-load forwarding fails). On AMD
    // Zen 5 those waits were a fifth of 65536x128's time.
    PendingGradient<T, X> grads[2];
    const PendingGradient<T, X>* pending = nullptr;  // the row whose gradient is still to write
    bool have_pending = false;
    // Without a softcap or a z-loss, a row of one chunk swept into scratch needs no lse for
    // its gradient (its exps are scaled by 1 / sum): its lse is taken with others' (LseBlock)
    // for the stats.
    const bool defer_lse = one_chunk && !Cap && ce.z == 0 && !stats.lse_is_input && !two_reads;
    LseBlock<V, T, X> block;
    for (int64_t r = r0; r < r1; ++r) {
      const X* ahead_row =
          write_ahead && r + kWriteAheadRows < r1 ? row_ptr<X>(dx, r + kWriteAheadRows) : nullptr;
      // a streamed row of one chunk: the lines it shares with its neighbours, kEdgeAheadRows
      // ahead (prefetch_edge_lines; on rows of several chunks it made no measurable difference)
      if (stream && one_chunk && r + kEdgeAheadRows < r1)
        prefetch_edge_lines(row_ptr<X>(dx, r + kEdgeAheadRows), C);
      const CeRow<T, X> row = ce.template row<typename V::Scalar>(r, &dx);
      if (row.ignored() && (!stats.lse || stats.lse_is_input) && !argmax) {  // loss 0, grad 0
        if (ahead_row) prefetch_rows_for_write(ahead_row, dx.row_stride, C, 1);
        fill(row.d, C, T(0));
        ce.write_stats(r, row, RowSummary<T>{});
        continue;
      }
      RowSummary<T> s;
      if (stats.lse_is_input || two_reads) {
        if (ahead_row) prefetch_rows_for_write(ahead_row, dx.row_stride, C, 1);  // (no summarise_row)
        if constexpr (narrower) {
          if (two_reads) {
            alignas(64) T capped[kChunk];  // a softcap's buffer for one chunk (summarise_row)
            with_flag(row.dot, [&](auto dot) {
              s = summarise_row<V, false, decltype(dot)::value, HasQ, HasW, false, Cap>(
                  row.x, C, row.k, capped, nullptr, argmax, nullptr, ce.cap);
            });
          }
        }
        if (stats.lse_is_input) {
          s.lse = reinterpret_cast<const T*>(stats.lse)[r];
          // The loss and a probability target's gradient need the weighted sums: one more read.
          if (row.dot && (stats.loss || ce.probs))
            weighted_sums<V, HasQ, HasW>(row.x, C, row.k, s.dot, s.usum);
        }
        ClassCoefficients<T, X> k = row.k;
        const T A = ce.gradient_terms(row, s, k);
        gradient_from_lse<V, HasQ, HasW, Cap>(row.x, row.d, C, s.lse, A, k, ce.cap, row.t, ce.one_hot(row));
      } else {
        // With a softcap the scratch row receives the capped logits; without scratch, the
        // gradient row does (over the logits when in place: the gradient needs only them).
        T* e;
        const int64_t e_row = shared ? 0 : cur * C;  // (one scratch row shared: SharedSlots)
        if constexpr (narrower) e = scratch + e_row;
        else e = scratch ? scratch + e_row : row.d;
        SharedSlots<T> slots;
        if (have_pending && stage) {
          slots.stage = stage;
          slots.reversed = !pending->reversed;
        }
        // this row's sweep 1 carries the pending row's sweep 2 when there is one, streamed
        // or not as the output is
        with_flags(have_pending, row.dot, [&](auto carry, auto dot) {
          constexpr bool Carry = decltype(carry)::value, Dot = decltype(dot)::value;
          with_flag(stream, [&](auto streamed) {
            s = summarise_row<V, true, Dot, HasQ, HasW, Carry, Cap, decltype(streamed)::value>(
                row.x, C, row.k, e, chunk_max[cur], argmax, Carry ? pending : nullptr, ce.cap,
                !defer_lse, ahead_row, slots, plain_chunks);
          });
        });
        have_pending = false;
        PendingGradient<T, X>& grad = grads[cur];
        ce.set_gradient(grad, row, s, e, chunk_max[cur]);  // (row's fields were stored before the sweep)
        grad.inv_cap = Cap ? T(1) / ce.cap : T(0);
        grad.inv_sum = one_chunk ? T(1) / s.sum : T(0);
        grad.reversed = slots.reversed;
        if (row.ignored()) {
          // its gradient is the zeros written below
        } else if (scratch) {  // (the exps must be apart from the gradient row)
          pending = &grad;
          have_pending = true;
          cur ^= 1;
        } else {  // (without scratch nothing is streamed)
          finish_from_exps<V, HasQ, HasW, false, Cap>(grad, C);
        }
      }
      if (row.ignored()) fill(row.d, C, T(0));  // exactly 0, even where the logits are NaN
      if (defer_lse) block.add(ce, r, row, s);
      else ce.write_stats(r, row, s);
    }
    block.flush(ce);
    if (have_pending)
      with_flag(stream, [&](auto streamed) {
        finish_from_exps<V, HasQ, HasW, decltype(streamed)::value, Cap>(*pending, C);
      });
   });
  });
  V::fence();  // order the streaming stores before the caller sees the result
}

// Vocab-parallel statistics of a class shard (ShardStats in types.h): one read of each row,
// the forward sweep of cross_entropy_forward_rows with other outputs. Class-index targets.
template <class V, class X = typename V::T, class T = typename V::T>
void cross_entropy_shard_stats_rows(const Rows& logits, const Target& target, const LossOptions& opt,
                                    const ShardStats& out, int64_t r0, int64_t r1) {
  const RowStats no_stats{};
  const CeContext<T, X> ce(logits, target, opt, no_stats);
  const int64_t C = logits.cols;
  T* const out_max = reinterpret_cast<T*>(out.max);
  T* const out_sum = reinterpret_cast<T*>(out.sum);
  T* const out_target = reinterpret_cast<T*>(out.target);
  T* const out_dot = reinterpret_cast<T*>(out.dot);
  alignas(64) T capped[kChunk];  // a softcap's buffer for one chunk (summarise_row)
  with_flag(out_dot != nullptr, [&](auto want_dot) {
   with_flag(ce.w != nullptr, [&](auto has_w) {
    constexpr bool Dot = decltype(want_dot)::value, HasW = decltype(has_w)::value;
    for (int64_t r = r0; r < r1; ++r) {
      const CeRow<T, X> row = ce.template row<typename V::Scalar>(r, nullptr);
      RowSummary<T> s;
      if (row.ignored()) {  // contributes nothing: no read
        s.max = 0;
        s.sum = 1;
      } else if (ce.cap != 0) {
        s = summarise_row<V, false, Dot, false, HasW, false, true>(row.x, C, row.k, capped, nullptr, false,
                                                                   nullptr, ce.cap);
      } else {
        s = summarise_row<V, false, Dot, false, HasW>(row.x, C, row.k, nullptr, nullptr);
      }
      if (out_max) out_max[r] = s.max;
      if (out_sum) out_sum[r] = s.sum;
      if (out_target) out_target[r] = row.bad ? quiet_nan<T>() : (row.t >= 0 ? row.x_t : T(0));
      if (out_dot) out_dot[r] = s.dot;
    }
   });
  });
}

}  // namespace
}  // namespace fusedce::cpu
