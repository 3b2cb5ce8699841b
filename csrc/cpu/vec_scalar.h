// One-lane "vectors": the portable path, and the tail of every vectorised loop.
// Included inside the namespace of the instruction set being compiled (see isa_*.cpp).
// The interface below is what every Vec type offers; kernels are templates over it.

template <class T_, class Bits>
struct ScalarVec {
  using T = T_;
  using Scalar = ScalarVec;
  static constexpr bool ldexp_any_n = false;  // see vexp() in vmath.h
  // Whether the type has hsum_each and hmax_each, which reduce `width` vectors at once
  // (AVX-512 float only; see the row blocks in cross_entropy.h).
  static constexpr bool reduces_together = false;
  static constexpr int width = 1;
  T v;

  static ScalarVec load(const T* p) { return {*p}; }
  void store(T* p) const { *p = v; }
  // A store that bypasses the caches (see finish_from_exps); plain here. `p` must be aligned
  // to the vector's size for the SIMD versions.
  void stream(T* p) const { *p = v; }
  static void fence() {}
  // Two vectors side by side at p, streamed (see finish_line in rowwise.h).
  template <class X>
  static void stream2(X* p, ScalarVec a, ScalarVec b) {
    a.stream(p);
    b.stream(p + 1);
  }
  // Other storage (float16 and bfloat16, half.h): widened on load, rounded once on store.
  template <class X>
  static ScalarVec load(const X* p) {
    return {static_cast<T>(widen(*p))};
  }
  template <class X>
  void store(X* p) const {
    *p = narrow<X>(v);
  }
  template <class X>
  void stream(X* p) const {
    *p = narrow<X>(v);
  }
  static ScalarVec set1(T x) { return {x}; }
  // Class indices (int32 or int64, contiguous) converted to T, one per lane.
  template <class I>
  static ScalarVec from_indices(const I* p) {
    return {static_cast<T>(*p)};
  }
  // The first n <= width lanes from / to p, the others loaded as 0 and not stored, touching
  // no memory outside those lanes.
  template <class X>
  static ScalarVec load_partial(const X* p, int n) {
    return n > 0 ? load(p) : set1(T(0));
  }
  template <class X>
  void store_partial(X* p, int n) const {
    if (n > 0) store(p);
  }
  // Transposes the width x width matrix whose row i is m[i] (lane j of m[i] swaps with lane
  // i of m[j]); nothing to do with one lane.
  static void transpose(ScalarVec*) {}

  friend ScalarVec operator+(ScalarVec a, ScalarVec b) { return {a.v + b.v}; }
  friend ScalarVec operator-(ScalarVec a, ScalarVec b) { return {a.v - b.v}; }
  friend ScalarVec operator*(ScalarVec a, ScalarVec b) { return {a.v * b.v}; }
  friend ScalarVec operator/(ScalarVec a, ScalarVec b) { return {a.v / b.v}; }
  static ScalarVec fma(ScalarVec a, ScalarVec b, ScalarVec c) { return {a.v * b.v + c.v}; }
  // Like x86 max/min: when either operand is NaN the second one is returned.
  static ScalarVec max(ScalarVec a, ScalarVec b) { return {a.v > b.v ? a.v : b.v}; }
  static ScalarVec min(ScalarVec a, ScalarVec b) { return {a.v < b.v ? a.v : b.v}; }
  // x < limit ? 0 : value  (false for NaN x, so NaN survives)
  static ScalarVec zero_if_less(ScalarVec x, ScalarVec limit, ScalarVec value) {
    return {x.v < limit.v ? T(0) : value.v};
  }

  // a == b ? yes : no, and a > b ? yes : no (false when either is NaN).
  static ScalarVec select_eq(ScalarVec a, ScalarVec b, ScalarVec yes, ScalarVec no) {
    return {a.v == b.v ? yes.v : no.v};
  }
  static ScalarVec select_gt(ScalarVec a, ScalarVec b, ScalarVec yes, ScalarVec no) {
    return {a.v > b.v ? yes.v : no.v};
  }
  // For a positive normal x: its mantissa m in [1, 2), and e with x = m 2^e.
  static ScalarVec split_exponent(ScalarVec x, ScalarVec& e) {
    constexpr int mant = sizeof(T) == 4 ? 23 : 52;
    constexpr Bits bias = sizeof(T) == 4 ? 127 : 1023;
    constexpr Bits mant_mask = (Bits(1) << mant) - 1;
    Bits bits;
    std::memcpy(&bits, &x.v, sizeof(T));
    e.v = static_cast<T>(static_cast<int64_t>(bits >> mant) - static_cast<int64_t>(bias));
    bits = (bits & mant_mask) | (bias << mant);
    T m;
    std::memcpy(&m, &bits, sizeof(T));
    return {m};
  }

  // Round to the nearest integer, ties to even, without a libm call: adding and removing
  // 1.5 * 2^(mantissa bits) leaves the rounded value (valid for |x| < 2^22 or 2^51).
  static ScalarVec round_nearest(ScalarVec x) {
    constexpr T shifter = sizeof(T) == 4 ? T(12582912.0f) : T(6755399441055744.0);
    T t = x.v + shifter;  // not folded away: we never build with -ffast-math
    return {t - shifter};
  }
  // p * 2^floor(n) for floor(n) inside the exponent range: build 2^floor(n) from its bits.
  // (vexp passes float n in sixteenths: floor keeps the whole part, the table the rest.)
  static ScalarVec ldexp(ScalarVec p, ScalarVec n) {
    constexpr int mant = sizeof(T) == 4 ? 23 : 52;
    constexpr int64_t bias = sizeof(T) == 4 ? 127 : 1023;
    if (!(n.v == n.v)) return {n.v};  // NaN: converting it to an integer would be undefined
    Bits bits = static_cast<Bits>(static_cast<int64_t>(std::floor(n.v)) + bias) << mant;
    T scale;
    std::memcpy(&scale, &bits, sizeof(T));
    return {p.v * scale};
  }

  // table[j] for j the last four bits of each lane's bit pattern (vexp's 2^(j/16), whose key
  // is a float whose last four mantissa bits hold j).
  static ScalarVec table16(const T* table, ScalarVec key) {
    Bits bits;
    std::memcpy(&bits, &key.v, sizeof(T));
    return {table[bits & 15]};
  }

  T hsum() const { return v; }
  T hmax() const { return v; }
};

using S32 = ScalarVec<float, uint32_t>;
using S64 = ScalarVec<double, uint64_t>;
