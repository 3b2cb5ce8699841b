// Building blocks shared by the CPU kernels: one row of C values at a time, vectorised with
// a Vec type V (vec_*.h). Everything here is a template over V and has internal linkage, so
// each instruction set's translation unit gets its own copy (see isa_kernels.h).
//
// The online softmax, by chunks. Milakov & Gimelshein's online softmax keeps a running max M
// and a running sum S of exp(x - M), rescaling S whenever M grows. Doing that per element
// costs two exps per element; we do it per chunk of a few thousand elements instead: take the
// chunk's max (one cheap sweep while the chunk comes into L1), rescale S once if M grew, then
// add exp(x - M) over the chunk (a second sweep, from L1). The row is read from memory once.
// With `Store`, exp(x - M) is also written out and M is remembered per chunk, so a later
// sweep can turn it into exp(x - lse) = stored * exp(M_chunk - lse) with one multiply: one
// exp per element for the whole forward+backward.
//
// Soft-capping (Cap): each chunk is first turned into softcap * tanh(x / softcap) in the
// scratch row (the chunk is in L1), and every sweep reads the capped chunk from there. The
// scratch then holds the capped logits rather than exps, and the gradient sweep computes
// exp(x' - lse) again plus the cap's slope 1 - (x'/softcap)^2: one tanh and two exps per
// element, still one read of the row from memory.
#pragma once
#include <math.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/types.h"
#include "cpu/half.h"
#include "cpu/streaming.h"
#include "cpu/thread_pool.h"
#include "cpu/vmath.h"

namespace fusedce::cpu {
namespace {

template <class T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}
template <class T>
constexpr T quiet_nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

// No std:: function templates in the kernels: an inline template instantiated in several
// instruction sets' translation units is merged by the linker into one copy, which might be
// the AVX-512 one, run on a CPU without AVX-512. Our own helpers have internal linkage.
inline float scalar_exp(float x) { return ::expf(x); }
inline double scalar_exp(double x) { return ::exp(x); }
inline float scalar_log(float x) { return ::logf(x); }
inline double scalar_log(double x) { return ::log(x); }
template <class T>
inline bool is_nan(T x) {
  return x != x;
}
inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
// n copies of value, stored as X (a half row gets value rounded once).
template <class X, class T>
inline void fill(X* d, int64_t n, T value) {
  const X stored = narrow<X>(value);
  for (int64_t i = 0; i < n; ++i) d[i] = stored;
}
// Rows are stored as X (float, double, or a half type of half.h) and computed in T, the
// instruction set's Vec::T: widen() reads a stored value, narrow<X>() stores one.
template <class X, class T>
inline int64_t first_index_of(const X* x, int64_t n, T value) {
  for (int64_t i = 0; i < n; ++i)
    if (widen(x[i]) == value) return i;
  return 0;
}
// First index of the row's largest value; NaN wins, as in numpy.argmax.
template <class X>
inline int64_t argmax_of(const X* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (is_nan(widen(x[i]))) return i;
    if (widen(x[i]) > widen(x[best])) best = i;
  }
  return best;
}

// A parameter of type NoDeduce<T>* takes nullptr without spoiling template deduction.
template <class T>
struct Identity {
  using type = T;
};
template <class T>
using NoDeduce = typename Identity<T>::type;

template <class T>
inline T* row_ptr(const Rows& a, int64_t r) {
  return reinterpret_cast<T*>(a.data) + r * a.row_stride;
}

// A chunk stays in L1 between its two sweeps; a row has at most kMaxChunks chunks so that
// the per-chunk maxima fit in a stack array.
constexpr int64_t kChunk = 4096;
constexpr int64_t kMaxChunks = 1024;
inline int64_t chunk_length(int64_t cols) {
  int64_t needed = (cols + kMaxChunks - 1) / kMaxChunks;
  const int64_t rounded = (needed + 63) / 64 * 64;
  return rounded > kChunk ? rounded : kChunk;
}

// The upstream gradient factor of row r (RowStats::grad), 1 when absent.
template <class T>
inline T grad_factor(const RowStats& s, int64_t r) {
  return s.grad ? reinterpret_cast<const T*>(s.grad)[s.grad_stride * r] : T(1);
}

inline int64_t class_index(const Target& t, int64_t r) {
  return t.dtype == DType::Int32 ? reinterpret_cast<const int32_t*>(t.data)[r * t.stride]
                                 : reinterpret_cast<const int64_t*>(t.data)[r * t.stride];
}

// The lane-wise max of n >= V::width values: its hmax() is max_of's result.
template <class V, class X>
V max_lanes(const X* x, int64_t n) {
  constexpr int W = V::width;
  V m0 = V::set1(neg_inf<typename V::T>()), m1 = m0;
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    m0 = V::max(m0, V::load(x + i));
    m1 = V::max(m1, V::load(x + i + W));
  }
  for (; i + W <= n; i += W) m0 = V::max(m0, V::load(x + i));
  // The last n - i < W values as the range's last vector, which overlaps the one before it
  // (a value seen twice leaves the max as it is): one vector instead of up to W - 1 scalars.
  if (i < n) m1 = V::max(m1, V::load(x + n - W));
  return V::max(m0, m1);
}

template <class V, class X, class T = typename V::T>
T max_of(const X* x, int64_t n) {
  if (n >= V::width) return max_lanes<V>(x, n).hmax();
  T m = neg_inf<T>();
  for (int64_t i = 0; i < n; ++i) m = widen(x[i]) > m ? widen(x[i]) : m;
  return m;
}

template <class V, class X, class T = typename V::T>
T sum_of(const X* x, int64_t n) {
  constexpr int W = V::width;
  V s0 = V::set1(0), s1 = s0;
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    s0 = s0 + V::load(x + i);
    s1 = s1 + V::load(x + i + W);
  }
  for (; i + W <= n; i += W) s0 = s0 + V::load(x + i);
  T s = (s0 + s1).hsum();
  for (; i < n; ++i) s += widen(x[i]);
  return s;
}

// Per-class coefficients u_c = (a q_c + b) w_c of a weighted sum over the row; q and w are
// left out (taken as 0 and 1) unless HasQ / HasW. q is stored like the logits (X), w in T.
template <class T, class X = T>
struct ClassCoefficients {
  const X* q = nullptr;  // probability target row
  const T* w = nullptr;  // class weights
  T a = 0, b = 1;
};

// u_j = (a q_j + b) w_j for the W classes starting at j (V may be the one-lane Scalar);
// with Partial, for the first n of them only (nothing beyond them is read).
template <class V, bool HasQ, bool HasW, bool Partial = false, class T, class X>
inline V coefficient(const ClassCoefficients<T, X>& k, int64_t j, int n = V::width) {
  V u = V::set1(k.b);
  if constexpr (HasQ) u = V::fma(V::set1(k.a), Partial ? V::load_partial(k.q + j, n) : V::load(k.q + j), u);
  if constexpr (HasW) u = u * (Partial ? V::load_partial(k.w + j, n) : V::load(k.w + j));
  return u;
}

// dot += sum_j u_j x_j and usum += sum_j u_j over the n classes of a chunk.
template <class V, bool HasQ, bool HasW, class Src, class T, class X>
void weighted_sums(const Src* x, int64_t n, const ClassCoefficients<T, X>& k, T& dot, T& usum) {
  using S = typename V::Scalar;
  constexpr int W = V::width;
  V d = V::set1(0), u = V::set1(0);
  int64_t i = 0;
  // A class whose coefficient is 0 adds 0, also where x is -inf (a masked class with no
  // target mass), instead of 0 * -inf = NaN.
  const V zero = V::set1(0);
  for (; i + W <= n; i += W) {
    V c = coefficient<V, HasQ, HasW>(k, i);
    d = d + V::select_eq(c, zero, zero, c * V::load(x + i));
    u = u + c;
  }
  T ds = d.hsum(), us = u.hsum();
  for (; i < n; ++i) {
    T c = coefficient<S, HasQ, HasW>(k, i).v;
    ds += c == T(0) ? T(0) : c * widen(x[i]);
    us += c;
  }
  dot += ds;
  usum += us;
}

// A row whose gradient is still to be written (the second sweep of the fused kernel), and
// the sweep itself over classes [begin, end): d_c = e_c s - u_c, u_c = (a q_c + b) w_c, with
// streaming stores when Stream (then d + begin must be aligned to a vector). The gradient
// row is stored as X; everything else is in T.
template <class T, class X = T>
struct PendingGradient {
  X* d = nullptr;                // the gradient row
  const T* e = nullptr;          // exp(x - chunk max) from the first sweep
  const T* chunk_max = nullptr;  // the running max each chunk was taken against
  T lse = 0, scale = 0;          // the row's log-sum-exp and factor of p_c
  ClassCoefficients<T, X> k;     // the subtracted terms
  int64_t hot = -1;              // the target class, where hot_value is subtracted too
  T hot_value = 0;               // (applied as the row is written: reading back a streamed
                                 // line afterwards would wait for memory)
  T inv_cap = 0;                 // 1 / softcap, when e holds capped logits (Cap)
  T inv_sum = 0;                 // 1 / sum of exps, for a row of one chunk (else 0)
  bool reversed = false;         // e holds the whole chunks in reverse order (SharedSlots)

  // The factor that turns chunk's stored exps into scale * p: exp(chunk max - lse), which
  // for a row of one chunk is 1 / sum (no exp call per row, and exact to an ulp, where
  // exp(max - lse) carries lse's rounding).
  T chunk_scale(int64_t chunk) const {
    return inv_sum != 0 ? scale * inv_sum : scale * scalar_exp(chunk_max[chunk] - lse);
  }

  // A copy for a loop that writes the gradient row. The loop's vector stores may alias any
  // memory as far as the compiler knows, so it would read every field it uses from *this
  // again after each store (five loads per vector); a local copy stays in registers. It is
  // made field by field: a whole-struct copy reads wider pieces than the fields were stored
  // in, and right after they were stored it waits for those stores (cross_entropy.h).
  PendingGradient loop_copy() const {
    PendingGradient c;
    c.d = d;
    c.e = e;
    c.chunk_max = chunk_max;
    c.lse = lse;
    c.scale = scale;
    c.k.q = k.q;
    c.k.w = k.w;
    c.k.a = k.a;
    c.k.b = k.b;
    c.hot = hot;
    c.hot_value = hot_value;
    c.inv_cap = inv_cap;
    c.inv_sum = inv_sum;
    c.reversed = reversed;
    return c;
  }

  // The classes from c0 on as a row of their own, whose exps (or capped logits) are at
  // `exps`, chunk `chunk` being the first: one chunk of a row whose chunks are not in order
  // in e (SharedSlots).
  PendingGradient from_class(int64_t c0, int64_t chunk, const T* exps) const {
    PendingGradient v = loop_copy();
    v.d = d + c0;
    v.e = exps;
    v.chunk_max = chunk_max + chunk;
    if (k.q) v.k.q = k.q + c0;
    if (k.w) v.k.w = k.w + c0;
    v.hot = hot - c0;  // (negative: no class of the view; -1 stays below 0 too)
    v.reversed = false;
    return v;
  }
};

// 0, 1, ..., W-1: each lane's index.
template <class V, class T = typename V::T>
inline V lane_indices() {
  alignas(64) static constexpr T iota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  static_assert(V::width <= 16, "lane_indices: at most 16 lanes");
  return V::load(iota);
}

// Streaming stores should write whole cache lines. A row's first and last lines are
// shared with the neighbouring rows; a line written by both a streaming and a plain store,
// or only partly streamed, goes to memory the slow way: on AMD Zen 5, 65536x128 float32
// out= took 5x as long streamed vector by vector (head and tail by overlapping plain
// stores) as not streamed. So a streamed range streams only the lines that lie wholly
// inside it, and stores the rest (at most a line at each end) lane by lane.
constexpr int64_t kLineBytes = 64;
template <class X>
constexpr int64_t kLineElems = kLineBytes / static_cast<int64_t>(sizeof(X));

// How many elements from d to the first cache-line boundary (d is aligned to its type).
template <class X>
inline int64_t to_line_boundary(const X* d) {
  const std::uintptr_t off = reinterpret_cast<std::uintptr_t>(d) % kLineBytes;
  return off ? static_cast<int64_t>((kLineBytes - off) / sizeof(X)) : 0;
}

// The whole lines of the output range [begin, end) of row d: [first, last).
template <class X>
struct WholeLines {
  int64_t first = 0, last = 0;
  WholeLines() = default;
  WholeLines(const X* d, int64_t begin, int64_t end) {
    first = min_i64(end, begin + to_line_boundary(d + begin));
    last = first + (end - first) / kLineElems<X> * kLineElems<X>;
  }
};

// d (1 - (x' / softcap)^2): a gradient with respect to capped logits x', taken back through
// the cap (tanh' = 1 - tanh^2).
template <class V, class T = typename V::T>
inline V through_cap(V d, V capped, T inv_cap) {
  const V t = capped * V::set1(inv_cap);
  return d * V::fma(t, V::set1(T(0)) - t, V::set1(T(1)));
}

// The first n values of `from` to `to` (n < 2 kLineElems<X>), in pieces of powers of two:
// each a single load and store of fixed size, where a loop would take one per value.
template <class X>
inline void copy_lanes(X* to, const X* from, int n) {
  int i = 0;
  for (int piece = static_cast<int>(kLineElems<X>); piece >= 1; piece /= 2)
    if (n & piece) {
      std::memcpy(to + i, from + i, static_cast<std::size_t>(piece) * sizeof(X));
      i += piece;
    }
}

// One vector of the gradient: p_c = e_c s (or exp(x'_c - lse) when Cap, where e holds the
// capped logits x'), times the row's factor, less the subtracted terms. With Partial, only
// classes [c, c + n) are read and written, each lane computed as in a full vector.
template <class V, bool HasQ, bool HasW, bool Cap = false, bool Partial = false, class T, class X>
inline V gradient_vector(const PendingGradient<T, X>& p, int64_t c, V s, int n = V::width) {
  const V e = Partial ? V::load_partial(p.e + c, n) : V::load(p.e + c);
  const V u = coefficient<V, HasQ, HasW, Partial>(p.k, c, n);
  V v;
  if constexpr (Cap) v = vexp(e - V::set1(p.lse)) * V::set1(p.scale) - u;
  else if (!HasQ && !HasW && p.k.b == T(0) && !std::signbit(p.k.b)) v = e * s;  // e s - (+0) is e s
  else v = e * s - u;
  if (p.hot >= c && p.hot < c + V::width) {  // once per row: the target's lane
    // (in registers: a store, a scalar update and a reload would stall on the reload)
    const V zero = V::set1(T(0));
    v = v - V::select_eq(lane_indices<V>(), V::set1(static_cast<T>(p.hot - c)), V::set1(p.hot_value), zero);
  }
  if constexpr (Cap) v = through_cap(v, e, p.inv_cap);
  return v;
}

// gradient_vector, stored at its place in the gradient row.
template <class V, bool HasQ, bool HasW, bool Stream, bool Cap = false, bool Partial = false, class T,
          class X>
inline void finish_vector(const PendingGradient<T, X>& p, int64_t c, V s, int n = V::width) {
  const V v = gradient_vector<V, HasQ, HasW, Cap, Partial>(p, c, s, n);
  if constexpr (Partial) {
    // (not a masked store: next to streamed lines AMD Zen 5 runs those very slowly;
    // 65536x128 float32 out= took 4x as long with them)
    alignas(64) X lanes[V::width];
    v.store(lanes);
    copy_lanes(p.d + c, lanes, n);
  } else if constexpr (Stream) {
    v.stream(p.d + c);
  } else {
    v.store(p.d + c);
  }
}

// The cache line of the gradient row that starts at class c (a line boundary), streamed.
// Vectors narrower than a line go out in pairs (V::stream2): for half types a pair is
// stored at once, since single half-line streaming stores far apart in time can reach memory
// as separate halves (bfloat16 8192x32000 out= on AMD Zen 5: 4.2x a copy streamed by
// halves, 3.0x not streamed at all).
template <class V, bool HasQ, bool HasW, bool Cap, class T, class X>
inline void finish_line(const PendingGradient<T, X>& p, int64_t c, V s) {
  constexpr int W = V::width;
  constexpr int64_t vectors = kLineElems<X> / W;  // per line: 1, 2, 4 or 16
  if constexpr (vectors <= 1) {
    static_assert(kLineElems<X> == W, "a vector wider than a cache line");
    finish_vector<V, HasQ, HasW, true, Cap>(p, c, s);
  } else {
    for (int64_t i = 0; i < vectors; i += 2)
      V::stream2(p.d + c + i * W, gradient_vector<V, HasQ, HasW, Cap>(p, c + i * W, s),
                 gradient_vector<V, HasQ, HasW, Cap>(p, c + (i + 1) * W, s));
  }
}

// Classes [begin, end) of a streamed range that do not fill a line of their own (less than
// a line), by vectors of which only those lanes are read and stored.
template <class V, bool HasQ, bool HasW, bool Cap, class T, class X>
inline void finish_partial_lines(const PendingGradient<T, X>& p, int64_t begin, int64_t end, V s) {
  for (int64_t c = begin; c < end; c += V::width)
    finish_vector<V, HasQ, HasW, false, Cap, true>(p, c, s, static_cast<int>(min_i64(V::width, end - c)));
}

template <class V, bool HasQ, bool HasW, bool Cap = false, class T, class X>
inline void finish_scalar(const PendingGradient<T, X>& p, int64_t c, T s) {
  using S = typename V::Scalar;
  T v = Cap ? vexp(S{p.e[c] - p.lse}).v * p.scale : p.e[c] * s;
  v -= coefficient<S, HasQ, HasW>(p.k, c).v;
  if (c == p.hot) v -= p.hot_value;
  if constexpr (Cap) v = through_cap(S{v}, S{p.e[c]}, p.inv_cap).v;
  p.d[c] = narrow<X>(v);
}

// What finish_range writes of [begin, end) (at least a vector wide) once its first part is
// done: streamed, the whole lines before `done` (from lines.first on); otherwise the vectors
// before `done` (from begin on). A sweep that carries a row's gradient (sum_exp) ends with
// this too, so every element is computed the same way on either path.
template <class V, bool HasQ, bool HasW, bool Stream, bool Cap, class T, class X>
void finish_rest(const PendingGradient<T, X>& pending, int64_t begin, int64_t end, const WholeLines<X>& lines,
                 int64_t done, V s) {
  constexpr int W = V::width;
  const PendingGradient<T, X> p = pending.loop_copy();
  if constexpr (Stream) {
    finish_partial_lines<V, HasQ, HasW, Cap>(p, begin, lines.first, s);
    for (; done < lines.last; done += kLineElems<X>) finish_line<V, HasQ, HasW, Cap>(p, done, s);
    finish_partial_lines<V, HasQ, HasW, Cap>(p, lines.last, end, s);
  } else {
    for (; done + W <= end; done += W) finish_vector<V, HasQ, HasW, false, Cap>(p, done, s);
    if (done < end) finish_vector<V, HasQ, HasW, false, Cap>(p, end - W, s);
  }
}

// Every class of a range at least a vector wide is computed by the vector code, wherever
// the row lies in memory. Streamed, the partial lines at both ends are written by partial
// vectors (see WholeLines); otherwise a short tail is done as one vector overlapping the
// one before (same inputs, same values). Either way each lane's arithmetic is that of a
// full vector: were some classes left to the scalar code, the last bit of their rounding
// would depend on the output's address or on the path. The overlap needs the exps apart
// from the output (e != d: always, except without scratch memory).
template <class V, bool HasQ, bool HasW, bool Stream, bool Cap = false, class T, class X>
void finish_range(const PendingGradient<T, X>& p, int64_t begin, int64_t end, T s) {
  constexpr int W = V::width;
  const V vs = V::set1(s);
  int64_t c = begin;
  if (end - begin >= W && static_cast<const void*>(p.e) != static_cast<const void*>(p.d)) {
    const WholeLines<X> lines = Stream ? WholeLines<X>(p.d, begin, end) : WholeLines<X>();
    return finish_rest<V, HasQ, HasW, Stream, Cap>(p, begin, end, lines, Stream ? lines.first : begin, vs);
  }
  for (; c + W <= end; c += W) finish_vector<V, HasQ, HasW, false, Cap>(p, c, vs);
  for (; c < end; ++c) finish_scalar<V, HasQ, HasW, Cap>(p, c, s);
}

// Asks for the lines of `rows` rows of C values at d, which are about to be written, to be
// brought into cache meanwhile. The small-class path writes a block's rows W x W tiles at a
// time, a pattern the hardware prefetchers miss: without this, each store waited for its
// line (AMD Zen 5, 65536x32 float32 out=: 1.0x-1.8x as long in three interleaved runs). The
// row path asks a few rows ahead (kWriteAheadRows in cross_entropy.h).
template <class X>
inline void prefetch_rows_for_write(const X* d, int64_t stride, int64_t C, int rows) {
  const int64_t bytes = C * static_cast<int64_t>(sizeof(X));
  for (int i = 0; i < rows; ++i) {
    const char* row = reinterpret_cast<const char*>(d + i * stride);
    for (int64_t b = 0; b < bytes; b += kLineBytes) __builtin_prefetch(row + b, 1, 3);
    __builtin_prefetch(row + bytes - 1, 1, 3);  // the last line, when the row starts mid-line
  }
}

// Asks for the first and last lines of the n values at d, about to be written, when they
// are shared with the values next to them (d, resp. d + n, not on a line boundary). In a
// streamed range those lines take plain stores (WholeLines), and a plain store to a line not
// in cache waits for it: the stores behind it, streaming ones included, wait in order, and
// the store buffer fills. Intel Xeon VM, float32 out= streamed, one thread, NumPy's 16-byte
// offset, time / a copy, medians of alternated processes without and with: 32768x600
// 1.75x -> 1.41x, 16384x2000 1.51x -> 1.40x. GCC 12 may drop these conditional prefetches
// altogether, depending on how the test and the call are spelled (through to_line_boundary,
// or through a helper taking the row index and reading out.cols: all of them gone, and
// 32768x600 back at 1.8-2.1x).
// Hence no branch: an end on a line boundary (a line streamed whole, which must not be
// fetched) asks for a line of its own that stays in L1 (spare_line), so the prefetches are
// unconditional and stay in the build.
constexpr int64_t kEdgeAheadRows = 8;  // rows of one chunk ask this many rows ahead
alignas(64) inline char spare_line[64];  // (written by no one)
template <class X>
inline void prefetch_edge_lines(const X* d, int64_t n) {
  const char* first = reinterpret_cast<const char*>(d);
  const char* last = reinterpret_cast<const char*>(d + n) - 1;
  __builtin_prefetch(reinterpret_cast<std::uintptr_t>(first) % kLineBytes != 0 ? first : spare_line, 1, 3);
  __builtin_prefetch(reinterpret_cast<std::uintptr_t>(last + 1) % kLineBytes != 0 ? last : spare_line, 1, 3);
}

// Where sum_exp asks for the logits `ahead` (the next chunk, kChunk values on): into L1
// (PREFETCHT0) when the row is one chunk and those lines fit in L1 beside the row's working
// set (the row, `scratch_rows` rows of T, and with `writes` a gradient row), else into L2
// (PREFETCHT1), which keeps L1 for the scratch of long rows. On AMD Zen 4 (EPYC VM, 32 KiB
// L1) PREFETCHT1 of the rows ahead slowed some one-chunk row lengths down badly, whatever
// the distance, and into L1 they ran as well as the others: C++ harness, float32 from
// memory, 16 bytes past a line, ns per 16 classes, T1 -> T0: 32768x600 forward 8.1 -> 4.6,
// out= 9.8 -> 6.1, in place 9.0 -> 6.2; 28571x700 out= 9.6 -> 6.7; 78125x256 out= 10.4 ->
// 8.8. Where the lines no longer fit, T0 cost instead (in place 19531x1024 5.8 -> 6.7,
// 10000x2000 5.9 -> 7.0; 625x32000, several chunks, out= 5.5 -> 7.1): hence the budget.
constexpr int64_t kL1AheadBudgetBytes = 28 * 1024;  // of a 32 KiB L1 (Zen 4, older Intel; newer: 48)
template <class X, class T>
inline bool ahead_into_l1(int64_t cols, int64_t len, int scratch_rows, bool writes) {
  if (cols > len) return false;
  const int64_t rows_x = len + cols + (writes ? cols : 0);  // ahead, the row, the gradient
  return rows_x * static_cast<int64_t>(sizeof(X)) + scratch_rows * cols * static_cast<int64_t>(sizeof(T)) <=
         kL1AheadBudgetBytes;
}

// How far ahead of the sweep's loads a carried gradient's stores start (sum_exp). A load
// whose address matches a store still in the store queue in its low 12 bits waits for
// that store (4K aliasing), and the store queue holds the streamed lines a while. NumPy's
// large arrays, logits and out= alike, start at the same offset in a page, so the pending
// row's gradient d[r-1][k] and this row's logits x[r][j] collide in those bits when
// j - k = -C (mod 4096 bytes), and for C within a few lines below a multiple of 1024
// float32 that puts every load just behind the store it collides with. C++ harness, AMD
// Zen 4 (EPYC VM), 19531x1024 out=, ns per 16 classes against the gradient's byte distance
// from the logits in a page: 0 9.4, 64 11.8, 192 8.3, 256 7.2, 384 6.5, 512 and more 6.0-6.6;
// with the logits and the gradient apart in their pages, 20000x1000 11.8 -> 6.2, 10000x2000
// 7.8 -> 5.7. So where the stores would start less than this far ahead (in a page), the
// carry writes enough lines before the sweep to be this far ahead (carry_lead_elems).
constexpr int64_t kStoreAliasReachBytes = 512;
constexpr std::uintptr_t kAliasSpanBytes = 4096;  // the address bits compared: the low 12
template <class X, class Src>
inline int64_t carry_lead_elems(const X* first_store, const Src* first_load) {
  const auto gap = static_cast<int64_t>(
      (reinterpret_cast<std::uintptr_t>(first_store) - reinterpret_cast<std::uintptr_t>(first_load)) %
      kAliasSpanBytes);
  if (sizeof(X) != sizeof(Src) || gap >= kStoreAliasReachBytes) return 0;  // (Src: capped, in scratch)
  return (kStoreAliasReachBytes - gap + kLineBytes - 1) / kLineBytes * kLineElems<X>;
}

// sum_i exp(x_i - m) over a chunk, also writing each exp to e[i] when Store (e may alias x).
// `ahead` (may be null) is prefetched at the same pace: the kernels pass the next chunk, so
// that memory is read while this loop computes (a compute-bound loop issues no misses of its
// own, and the hardware prefetcher alone runs only a little ahead of the demand); into L1
// when `ahead_l1`, else into L2 (ahead_into_l1).
// `write_ahead` (may be null), the same classes of a gradient row written later, is asked
// for (for writing) at that pace too: see kWriteAheadRows in cross_entropy.h.
// With Carry, the same chunk of the pending row `p` (chunk offset c0, factor ps) gets its
// gradient written in the same loop: its streaming stores then drain while this loop
// computes, instead of stalling a sweep of their own. Streamed (CarryStream), the loop writes
// the chunk's whole lines and its partial lines are finished after the loop; otherwise (in
// place, where the row's lines are still in cache) it writes plain vectors. Either way as
// finish_range does, so every element is computed the same way on every path.
template <class V, bool Store, bool Carry, bool HasQ, bool HasW, bool Cap, bool CarryStream, class Src,
          class X, class T = typename V::T>
T sum_exp(const Src* x, int64_t n, T m, NoDeduce<T>* e, const X* ahead,
          const PendingGradient<T, X>* p, int64_t c0, T ps, const X* write_ahead = nullptr,
          bool ahead_l1 = false, V* lanes = nullptr) {
  using S = typename V::Scalar;
  constexpr int W = V::width;
  const V vm = V::set1(m), vps = V::set1(ps);
  constexpr int64_t kCarriedLines = 2 * W >= kLineElems<X> ? 2 * W / kLineElems<X> : 1;
  // the carried chunk's whole lines [lines.first, carried) are done
  constexpr bool streamed = Carry && CarryStream;
  const WholeLines<X> lines = streamed && n >= W ? WholeLines<X>(p->d, c0, c0 + n) : WholeLines<X>();
  int64_t carried = streamed ? lines.first : c0;
  PendingGradient<T, X> g;  // *p for the loop (loop_copy); *p itself is passed on after it
  if constexpr (Carry) {
    g = p->loop_copy();
    // the lines that put the stores far enough ahead of the loads (kStoreAliasReachBytes)
    const int64_t lead_end = carried + carry_lead_elems(g.d + carried, x);
    if constexpr (streamed) {
      for (; carried < lead_end && carried < lines.last; carried += kLineElems<X>)
        finish_line<V, HasQ, HasW, Cap>(g, carried, vps);
    } else {
      for (; carried < lead_end && carried + W <= c0 + n; carried += W)
        finish_vector<V, HasQ, HasW, false, Cap>(g, carried, vps);
    }
  }
  V s0 = V::set1(0), s1 = s0;
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    if (ahead && ahead_l1) {
      __builtin_prefetch(ahead + i, 0, 3);
      __builtin_prefetch(ahead + i + W, 0, 3);
    } else if (ahead) {
      __builtin_prefetch(ahead + i, 0, 2);
      __builtin_prefetch(ahead + i + W, 0, 2);
    }
    if (write_ahead) {  // the step's lines (one or two)
      __builtin_prefetch(write_ahead + i, 1, 3);
      if constexpr (W * sizeof(X) >= kLineBytes) __builtin_prefetch(write_ahead + i + W, 1, 3);
    }
    V e0 = vexp_nonpositive(V::load(x + i) - vm);
    V e1 = vexp_nonpositive(V::load(x + i + W) - vm);
    if constexpr (Store) {
      e0.store(e + i);
      e1.store(e + i + W);
    }
    if constexpr (Carry) {
      if constexpr (streamed) {  // as many lines as this step's classes fill, at least one
        for (int64_t k = 0; k < kCarriedLines && carried < lines.last; ++k, carried += kLineElems<X>)
          finish_line<V, HasQ, HasW, Cap>(g, carried, vps);
      } else if (carried + 2 * W <= c0 + n) {
        finish_vector<V, HasQ, HasW, false, Cap>(g, carried, vps);
        finish_vector<V, HasQ, HasW, false, Cap>(g, carried + W, vps);
        carried += 2 * W;
      }
    }
    s0 = s0 + e0;
    s1 = s1 + e1;
  }
  for (; i + W <= n; i += W) {
    V e0 = vexp_nonpositive(V::load(x + i) - vm);
    if constexpr (Store) e0.store(e + i);
    s0 = s0 + e0;
  }
  // The last n - i < W classes as one vector whose other lanes add 0, so that every class
  // of a range at least a vector wide gets the vector's exp (the one-lane code rounds its
  // fma in two steps), and medium rows (600 classes: 8 left over) pay one vector, not 8 exps.
  if (i < n && n >= W) {
    const int rest = static_cast<int>(n - i);
    V e0 = vexp_nonpositive(V::load_partial(x + i, rest) - vm);
    e0 = V::select_gt(V::set1(static_cast<T>(rest)), lane_indices<V>(), e0, V::set1(T(0)));
    if constexpr (Store) e0.store_partial(e + i, rest);
    s1 = s1 + e0;
    i = n;
  }
  // the lines the loop's steps left, and always the row's last (a row that starts mid-line)
  if (write_ahead) prefetch_rows_for_write(write_ahead + i, 0, n - i, 1);
  // with `lanes` (n >= W), the sum is left in lanes, for the caller's hsum (hsum_each)
  if (lanes) *lanes = s0 + s1;
  T s = lanes ? T(0) : (s0 + s1).hsum();
  for (; i < n; ++i) {
    T ei = vexp_nonpositive(S{widen(x[i]) - m}).v;
    if constexpr (Store) e[i] = ei;
    s += ei;
  }
  if constexpr (Carry) {  // what the loop left of the pending chunk, as finish_range does it
    if (n >= W) {
      finish_rest<V, HasQ, HasW, CarryStream, Cap>(*p, c0, c0 + n, lines, carried, vps);
    } else {
      for (int64_t j = c0; j < c0 + n; ++j) finish_scalar<V, HasQ, HasW, Cap>(*p, j, ps);
    }
  }
  return s;
}

// What one sweep over a row learns about it.
template <class T>
struct RowSummary {
  T max = neg_inf<T>();
  T sum = 0;            // sum exp(x - max)
  int64_t argmax = 0;   // first index of the max (NaN handled in finish())
  T dot = 0, usum = 0;  // weighted sums, when asked for
  T lse = 0;
};

// softcap * tanh(x / softcap) for the n values of x, into out (which may be x).
template <class V, class X, class T = typename V::T>
void cap_logits(const X* x, int64_t n, T softcap, T* out) {
  using S = typename V::Scalar;
  constexpr int W = V::width;
  const V c = V::set1(softcap), inv = V::set1(T(1) / softcap);
  int64_t i = 0;
  for (; i + W <= n; i += W) (c * vtanh(V::load(x + i) * inv)).store(out + i);
  for (; i < n; ++i) out[i] = softcap * vtanh(S{widen(x[i]) * (T(1) / softcap)}).v;
}

// The chunk of the pending row that a sweep's chunk `chunk` carries: the row's whole chunks
// in reverse order, and a last, shorter chunk itself. The pending row's exps were written in
// order, so its last chunks, written last, are read first: on a long row they are still in
// L2, where in order every chunk had left it (a row and its scratch row of exps both pass
// through L2 between a chunk's write and its read).
inline int64_t mirrored_chunk(int64_t chunk, int64_t cols, int64_t len) {
  const int64_t whole = cols / len;
  return chunk < whole ? whole - 1 - chunk : chunk;
}

// One scratch row for a long row (kSharedScratchRowBytes in cross_entropy.h) and its
// pending row, instead of one each: the sweep's chunk j takes the room (slot) of the pending
// row's chunk that it carries, the chunk mirrored_chunk(j), whose lines the carry has just
// read. Each row's exps then find their lines in L1, where a second row's lines would have
// had to come from L3, and half as much scratch passes through L2, so that more of it is
// still there when read. The new exps are made in `stage` (a chunk's room, in L1) and
// copied into the slot once the carry has read it. Since mirrored_chunk is its own inverse,
// the slots simply run forwards and backwards on alternate rows (`reversed`: chunk j at
// slot mirrored_chunk(j)).
template <class T>
struct SharedSlots {
  T* stage = nullptr;  // null: nothing shared, chunk j at slot j
  bool reversed = false;
};

inline int64_t slot_of(int64_t chunk, int64_t cols, int64_t len, bool reversed) {
  return reversed ? mirrored_chunk(chunk, cols, len) : chunk;
}

// The online sweep described at the top of this file. With Dot it also accumulates
// sum u_c x_c and sum u_c (label smoothing, probability targets). With Store it writes
// exp(x - running max) to e (which may alias x) and each chunk's running max to chunk_max.
// With Carry it also writes the gradient of the previous row, `pending` (see sum_exp).
// `write_ahead`, when given, is a gradient row asked for as the sweep goes (see sum_exp).
// With Cap every sweep sees softcap * tanh(x / softcap) instead of x: each chunk is capped
// into e first (with Store, e is a row and keeps the capped row; without, e is a buffer of
// kChunk values reused by every chunk), and argmax is that of x as given.
// `slots` (with Store and Carry) lays the row out in e over the pending row's exps, one
// chunk's slot at a time (SharedSlots). With CarryStream, the first `plain_chunks` chunks
// carried take plain stores instead (in place, see kPlainCarriedBytes in cross_entropy.h).
template <class V, bool Store, bool Dot, bool HasQ, bool HasW, bool Carry = false, bool Cap = false,
          bool CarryStream = true, class X, class T = typename V::T>
RowSummary<T> summarise_row(const X* x, int64_t cols, const ClassCoefficients<T, NoDeduce<X>>& k,
                            NoDeduce<T>* e, NoDeduce<T>* chunk_max, bool want_argmax = false,
                            const PendingGradient<NoDeduce<T>, NoDeduce<X>>* pending = nullptr,
                            NoDeduce<T> softcap = 0, bool want_lse = true,
                            const NoDeduce<X>* write_ahead = nullptr,
                            SharedSlots<NoDeduce<T>> slots = {}, int64_t plain_chunks = 0) {
  RowSummary<T> s;
  // without Store no chunk maxima are kept, so Cap's buffer can fix the chunk length
  const int64_t len = Cap && !Store ? kChunk : chunk_length(cols);
  // (Store: this row's exps and the pending row's; Cap alone: the capped chunk)
  const bool ahead_l1 = ahead_into_l1<X, T>(cols, len, Store ? 2 : Cap ? 1 : 0, Store);
  // Cap may overwrite x (e == x, in place without scratch memory): find argmax first.
  if (Cap && want_argmax) s.argmax = argmax_of(x, cols);
  // argmax: remember the chunk where the max last grew and search it once at the end, unless
  // this sweep overwrites x (e == x), in which case search each such chunk right away.
  const bool search_now = want_argmax && Store && static_cast<const void*>(e) == x && !Cap;
  int64_t max_chunk_start = 0;
  for (int64_t c0 = 0, chunk = 0; c0 < cols; c0 += len, ++chunk) {
    const int64_t n = min_i64(len, cols - c0);
    using Src = std::conditional_t<Cap, T, X>;  // what the sweeps read: x, or its capped copy
    // where this chunk's exps (or capped logits) stay, and where they are made (SharedSlots)
    T* const e_slot = Store ? e + slot_of(chunk, cols, len, slots.reversed) * len : e;
    T* const e_chunk = slots.stage ? slots.stage : e_slot;
    const Src* src;
    if constexpr (Cap) {
      T* capped = e_chunk;
      cap_logits<V>(x + c0, n, softcap, capped);
      src = capped;
    } else {
      src = x + c0;
    }
    if constexpr (Dot) {
      ClassCoefficients<T, X> kc = k;
      if constexpr (HasQ) kc.q += c0;
      if constexpr (HasW) kc.w += c0;
      weighted_sums<V, HasQ, HasW>(src, n, kc, s.dot, s.usum);  // before e overwrites x
    }
    const T cm = max_of<V>(src, n);
    if (cm > s.max) {
      if (s.sum != 0) s.sum *= scalar_exp(s.max - cm);  // (0 before the first finite max)
      s.max = cm;
      max_chunk_start = c0;
      if (search_now) s.argmax = c0 + first_index_of(src, n, cm);
    }
    // The pending row's chunks go in the mirrored order (see mirrored_chunk); the carried
    // chunk has this one's length.
    const int64_t carried = Carry ? mirrored_chunk(chunk, cols, len) : chunk;
    const T ps = Carry ? pending->chunk_scale(carried) : T(0);
    // The carried chunk: at its offset in the pending row, or, with shared slots, as a row of
    // its own whose exps are in this chunk's slot.
    const PendingGradient<T, X>* carry = pending;
    int64_t carry_c0 = carried * len;
    PendingGradient<T, X> view;
    if constexpr (Carry) {
      if (slots.stage) {
        view = pending->from_class(carry_c0, carried, e_slot);
        carry = &view;
        carry_c0 = 0;
      }
    }
    // Store the exps, unless e holds the capped logits (Cap), which the gradient sweep reads.
    constexpr bool StoreExps = Store && !Cap;
    if (s.max == neg_inf<T>()) {  // every value so far is -inf: each contributes exp(-inf) = 0
      if constexpr (StoreExps) fill(e_chunk, n, T(0));
      if constexpr (Carry) finish_range<V, HasQ, HasW, CarryStream, Cap>(*carry, carry_c0, carry_c0 + n, ps);
    } else {
      // A long row's next chunk is asked for a quarter chunk further on: its last lines,
      // asked for at the end of this sweep, were otherwise still on their way when the next
      // chunk's max sweep, quick, reached them. AMD Zen 4, C++ harness, forward / a read,
      // medians of six to eight alternated runs: 2048x32000 1.46 -> 1.41, 512x262144
      // 1.39 -> 1.28 (1.35 -> 1.26 in another set; a lead of 512, 1536 values 1.29, 1.30),
      // bfloat16 2048x32000 3.02 -> 2.87; with a gradient unchanged (in place 0.85 -> 0.86,
      // out= 0.92 -> 0.90 a copy).
      const X* const ahead = x + c0 + len + (cols > len ? len / 4 : 0);
      const X* const wa = write_ahead ? write_ahead + c0 : nullptr;
      if (CarryStream && Carry && chunk < plain_chunks)
        s.sum += sum_exp<V, StoreExps, Carry, HasQ, HasW, Cap, false>(src, n, s.max, e_chunk, ahead, carry,
                                                                      carry_c0, ps, wa, ahead_l1);
      else
        s.sum += sum_exp<V, StoreExps, Carry, HasQ, HasW, Cap, CarryStream>(src, n, s.max, e_chunk, ahead, carry,
                                                                            carry_c0, ps, wa, ahead_l1);
    }
    if (slots.stage) std::memcpy(e_slot, e_chunk, static_cast<std::size_t>(n) * sizeof(T));
    if constexpr (Store) chunk_max[chunk] = s.max;
  }
  // lse = max + log(sum), unless the caller takes the logs of a block of rows at once
  // (lse_of_rows: one vector log instead of a libm call per row)
  if (want_lse) s.lse = s.max + scalar_log(s.sum);
  if (Cap) return s;
  if (want_argmax && !search_now)
    s.argmax = max_chunk_start + first_index_of(x + max_chunk_start, min_i64(len, cols - max_chunk_start), s.max);
  // A NaN lse (a NaN max or sum: a NaN or +inf in the row) is rare: rescan for the argmax.
  if (want_argmax && (is_nan(s.max) || is_nan(s.sum))) s.argmax = argmax_of(x, cols);
  return s;
}

// lse[i] = max[i] + log(sum[i]) for n <= V::width rows: one vector log. vlog takes positive
// normal values; a row's sum of exp(x - max) is at least 1 (its max contributes 1) unless
// the row is all -inf (sum 0), or holds NaN or +inf: those rows take the scalar log.
template <class V, class T = typename V::T>
void lse_of_rows(const T* max, const T* sum, int n, T* lse) {
  alignas(64) T m[V::width], s[V::width];
  for (int i = 0; i < V::width; ++i) {
    m[i] = i < n ? max[i] : T(0);
    s[i] = i < n ? sum[i] : T(1);
  }
  alignas(64) T out[V::width];
  (V::load(m) + vlog(V::max(V::set1(T(1)), V::load(s)))).store(out);
  for (int i = 0; i < n; ++i) {
    const bool usual = sum[i] >= T(1) && sum[i] < std::numeric_limits<T>::infinity();
    lse[i] = usual ? out[i] : max[i] + scalar_log(sum[i]);
  }
}

// Large outputs are written with streaming (non-temporal) stores: they will not be read
// again soon, and a streaming store skips reading each line before writing it, which would
// otherwise add a third of a copy's memory traffic. "Large" depends on the row length and
// on the last-level cache (streaming.h). Only the whole lines of a row are streamed
// (WholeLines), so rows of a few lines gain little: from 512 bytes (8 lines) on. On AMD
// Zen 5, out= with float32, one thread, against a copy: 65536x256 3.6x -> 2.1x, 32768x600
// 1.9x -> 1.35x (that one was streamed before, but vector by vector: 2.9x).
constexpr int64_t kStreamRowBytes = 512;

template <class X>
inline bool stream_output(const Rows& out) {
  const int64_t row_bytes = out.cols * static_cast<int64_t>(sizeof(X));
  return row_bytes >= kStreamRowBytes && out.rows * row_bytes >= streaming_threshold_bytes(row_bytes);
}

// In place (out over in), plain stores are usually the faster: each line was just read, so it
// is still in cache and needs no read before the write, and a streaming store would evict it
// first. Not for rows of kInPlaceStreamRowBytes and more: a row and its scratch row no longer
// fit in L2 together, the row's lines have left it by the second sweep, and a plain store
// would read each one back from memory (64x1000000 float32 in place, one thread: 2.6-2.7x
// a copy with plain stores, 1.9x streamed, as out= is).
constexpr int64_t kInPlaceStreamRowBytes = int64_t(1) << 20;

template <class X>
inline bool stream_result(const Rows& in, const Rows& out) {
  if (!stream_output<X>(out)) return false;
  return out.data != in.data || out.cols * static_cast<int64_t>(sizeof(X)) >= kInPlaceStreamRowBytes;
}

// The second sweep after a Store sweep, on its own: write the pending row's gradient,
// chunk by chunk (each chunk has its own factor). `next`, when given, is the next row of
// logits: it is prefetched meanwhile, so that reads and writes overlap.
template <class V, bool HasQ, bool HasW, bool Stream, bool Cap = false, class T, class X>
void finish_from_exps(const PendingGradient<T, X>& p, int64_t cols, const NoDeduce<X>* next = nullptr) {
  const int64_t len = chunk_length(cols);
  // A row of one chunk asks for the next row into L1 when it fits beside this row and its
  // exps, as sum_exp does (ahead_into_l1 with the next row as what is asked for). AMD Zen 4,
  // softmax out= / a copy, one thread, medians of five alternated runs, into L2 -> into L1:
  // 32768x600 1.38 -> 1.32, 65536x256 1.72 -> 1.64, 16384x2000 1.09 -> 1.04, 20000x1000
  // 1.21 -> 1.15 (a few percent: some single runs had it the other way).
  const bool next_l1 = len >= cols && ahead_into_l1<X, T>(cols, cols, 1, false);
  for (int64_t c0 = 0, chunk = 0; c0 < cols; c0 += len, ++chunk) {
    const int64_t end = min_i64(cols, c0 + len);
    if (next && next_l1)
      for (int64_t c = c0; c < end; c += kLineElems<X>) __builtin_prefetch(next + c, 0, 3);
    else if (next)
      for (int64_t c = c0; c < end; c += kLineElems<X>) __builtin_prefetch(next + c, 0, 2);
    const T s = Cap ? T(0) : p.chunk_scale(chunk);
    if (p.reversed) {
      const PendingGradient<T, X> view = p.from_class(c0, chunk, p.e + slot_of(chunk, cols, len, true) * len);
      finish_range<V, HasQ, HasW, Stream, Cap>(view, 0, end - c0, s);
    } else {
      finish_range<V, HasQ, HasW, Stream, Cap>(p, c0, end, s);
    }
  }
}

// One sweep when lse is already known: d_c = scale * exp(x_c - lse) - (alpha q_c + beta) w_c
// - [c == hot] hot_value, with Cap taken at the capped logits and multiplied by the cap's
// slope. The one-hot term is subtracted before the value is stored (rounded once).
template <class V, bool HasQ, bool HasW, bool Cap = false, class X, class T = typename V::T>
void gradient_from_lse(const X* x, X* d, int64_t cols, T lse, T scale,
                       const ClassCoefficients<T, NoDeduce<X>>& k, T softcap, int64_t hot,
                       T hot_value) {
  using S = typename V::Scalar;
  constexpr int W = V::width;
  const T inv_cap = Cap ? T(1) / softcap : T(0);
  const T x_hot = hot >= 0 ? T(widen(x[hot])) : T(0);  // read first: d may be x (in place)
  const auto one = [&](auto xv, auto u) {
    using U = decltype(xv);
    if constexpr (Cap) {
      const U capped = U::set1(softcap) * vtanh(xv * U::set1(inv_cap));
      return through_cap(vexp(capped - U::set1(lse)) * U::set1(scale) - u, capped, inv_cap);
    } else {
      return vexp(xv - U::set1(lse)) * U::set1(scale) - u;
    }
  };
  int64_t i = 0;
  for (; i + W <= cols; i += W) one(V::load(x + i), coefficient<V, HasQ, HasW>(k, i)).store(d + i);
  for (; i < cols; ++i) d[i] = narrow<X>(one(S::load(x + i), coefficient<S, HasQ, HasW>(k, i)).v);
  if (hot >= 0) {  // the target's value again, with its one-hot term
    const S u = coefficient<S, HasQ, HasW>(k, hot) + S{hot_value};
    d[hot] = narrow<X>(one(S{x_hot}, u).v);
  }
}

// ---- Blocks of rows, one row per SIMD lane (the few-classes paths) ---------------------
// A block of W rows becomes one vector per class (lane i = row i), so that max, exp and sums
// run across rows and the per-row overhead (horizontal reductions, chunk logic) disappears.
// The block is read and written as W x W tiles: row by row with (masked) vector loads and
// stores, transposed in registers. Gathers and scatters would move one element per lane and
// cost several times more than the arithmetic.

// Two vectors used as one of twice the width (lanes [0, W) in lo). A block's steps are
// chains of dependent operations (max, sum, log, divisions) with few vectors each; run on
// Twice, two blocks of rows go through them side by side and each hides the other's latency.
// Every operation is the one of V lane by lane, so each row gets the same bits either way.
template <class V>
struct Twice {
  using T = typename V::T;
  using Scalar = typename V::Scalar;
  static constexpr bool ldexp_any_n = V::ldexp_any_n;
  static constexpr int width = 2 * V::width;
  V lo, hi;

  static Twice load(const T* p) { return {V::load(p), V::load(p + V::width)}; }
  void store(T* p) const {
    lo.store(p);
    hi.store(p + V::width);
  }
  static Twice set1(T x) { return {V::set1(x), V::set1(x)}; }
  template <class I>
  static Twice from_indices(const I* p) {
    return {V::from_indices(p), V::from_indices(p + V::width)};
  }
  friend Twice operator+(Twice a, Twice b) { return {a.lo + b.lo, a.hi + b.hi}; }
  friend Twice operator-(Twice a, Twice b) { return {a.lo - b.lo, a.hi - b.hi}; }
  friend Twice operator*(Twice a, Twice b) { return {a.lo * b.lo, a.hi * b.hi}; }
  friend Twice operator/(Twice a, Twice b) { return {a.lo / b.lo, a.hi / b.hi}; }
  static Twice fma(Twice a, Twice b, Twice c) { return {V::fma(a.lo, b.lo, c.lo), V::fma(a.hi, b.hi, c.hi)}; }
  static Twice max(Twice a, Twice b) { return {V::max(a.lo, b.lo), V::max(a.hi, b.hi)}; }
  static Twice min(Twice a, Twice b) { return {V::min(a.lo, b.lo), V::min(a.hi, b.hi)}; }
  static Twice select_eq(Twice a, Twice b, Twice yes, Twice no) {
    return {V::select_eq(a.lo, b.lo, yes.lo, no.lo), V::select_eq(a.hi, b.hi, yes.hi, no.hi)};
  }
  static Twice select_gt(Twice a, Twice b, Twice yes, Twice no) {
    return {V::select_gt(a.lo, b.lo, yes.lo, no.lo), V::select_gt(a.hi, b.hi, yes.hi, no.hi)};
  }
  static Twice zero_if_less(Twice x, Twice limit, Twice value) {
    return {V::zero_if_less(x.lo, limit.lo, value.lo), V::zero_if_less(x.hi, limit.hi, value.hi)};
  }
  static Twice split_exponent(Twice x, Twice& e) {
    return {V::split_exponent(x.lo, e.lo), V::split_exponent(x.hi, e.hi)};
  }
  static Twice round_nearest(Twice x) { return {V::round_nearest(x.lo), V::round_nearest(x.hi)}; }
  static Twice ldexp(Twice p, Twice n) { return {V::ldexp(p.lo, n.lo), V::ldexp(p.hi, n.hi)}; }
  static Twice table16(const T* table, Twice key) { return {V::table16(table, key.lo), V::table16(table, key.hi)}; }
};

// Calls put(c, v) with the class vectors v of W rows at x (`stride` apart): lane i of v is
// class c of row i, for c < C. Reads nothing beyond each row's C values.
template <class V, class X, class Put>
inline void load_tiles(const X* x, int64_t stride, int64_t C, Put&& put) {
  constexpr int W = V::width;
  for (int64_t c0 = 0; c0 < C; c0 += W) {
    const int n = static_cast<int>(min_i64(W, C - c0));
    V tile[W];
    for (int i = 0; i < W; ++i) tile[i] = V::load_partial(x + i * stride + c0, n);
    V::transpose(tile);
    for (int j = 0; j < n; ++j) put(c0 + j, tile[j]);
  }
}

// The reverse: the class vectors get(c), c < C, into W rows at d. Writes nothing beyond
// each row's C values.
template <class V, class X, class Get>
inline void store_tiles(X* d, int64_t stride, int64_t C, Get&& get) {
  constexpr int W = V::width;
  for (int64_t c0 = 0; c0 < C; c0 += W) {
    const int n = static_cast<int>(min_i64(W, C - c0));
    V tile[W];
    for (int j = 0; j < W; ++j) tile[j] = j < n ? get(c0 + j) : V::set1(0);
    V::transpose(tile);
    for (int i = 0; i < W; ++i) tile[i].store_partial(d + i * stride + c0, n);
  }
}

// xc[c] (lane i = class c of row i) for the rows at x, and the reverse, dc[c] into rows at d.
template <class V, class X>
inline void load_classes(const X* x, int64_t stride, int64_t C, V* xc) {
  load_tiles<V>(x, stride, C, [&](int64_t c, V v) { xc[c] = v; });
}
template <class V, class X>
inline void load_classes(const X* x, int64_t stride, int64_t C, Twice<V>* xc) {
  load_tiles<V>(x, stride, C, [&](int64_t c, V v) { xc[c].lo = v; });
  load_tiles<V>(x + V::width * stride, stride, C, [&](int64_t c, V v) { xc[c].hi = v; });
}
template <class V, class X>
inline void store_classes(const V* dc, int64_t C, X* d, int64_t stride) {
  store_tiles<V>(d, stride, C, [&](int64_t c) { return dc[c]; });
}
template <class V, class X>
inline void store_classes(const Twice<V>* dc, int64_t C, X* d, int64_t stride) {
  store_tiles<V>(d, stride, C, [&](int64_t c) { return dc[c].lo; });
  store_tiles<V>(d + V::width * stride, stride, C, [&](int64_t c) { return dc[c].hi; });
}

// Runs block(lanes, r) over the rows [r0, r1): two blocks of W rows at a time (`lanes` a
// Twice<V>), then one (a V), then the rows left one by one (a V::Scalar).
template <class V, class Block>
void by_block_pairs(int64_t r0, int64_t r1, Block&& block) {
  int64_t r = r0;
  for (; r + 2 * V::width <= r1; r += 2 * V::width) block(Twice<V>{}, r);
  for (; r + V::width <= r1; r += V::width) block(V{}, r);
  for (; r < r1; ++r) block(typename V::Scalar{}, r);
}

// Calls f(flag) with the flag as a std::bool_constant value (see with_flags).
template <class F>
void with_flag(bool flag, F&& f) {
  if (flag) f(std::true_type{});
  else f(std::false_type{});
}

// Calls f(has_q, has_w) with the two flags as std::bool_constant values, so that the inner
// loops it instantiates carry no branches for options that are off.
template <class F>
void with_flags(bool has_q, bool has_w, F&& f) {
  using Yes = std::true_type;
  using No = std::false_type;
  if (has_q) {
    if (has_w) f(Yes{}, Yes{});
    else f(Yes{}, No{});
  } else {
    if (has_w) f(No{}, Yes{});
    else f(No{}, No{});
  }
}

}  // namespace
}  // namespace fusedce::cpu
