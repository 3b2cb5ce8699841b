// exp() on a vector of floats or doubles, for the kernels' inner loops.
//
// exp(x) = 2^n * exp(r) with n = round(x / ln2) and r = x - n ln2, |r| <= ln2/2; ln2 is split
// in a high part (exact in n * ln2_hi) and a low part (Cody & Waite), and exp(r) is a
// polynomial in Horner form: degree 6 for float (coefficients fitted here to exp on
// [-ln2/2, ln2/2] in the Chebyshev sense, 1.9e-9 relative error before rounding), the Taylor
// series to r^13 for double. tests/test_exp.py measures the whole function against numpy's
// exp: relative error below 3e-7 (float) and 1e-15 (double), a few ulp.
// Arguments below the smallest normal result (-87.3 float, -708.4 double), -inf included,
// give exactly 0: the subnormal range is flushed, an absolute error below 1.2e-38 / 2.3e-308.
// NaN gives NaN. Kernels call it on x - max(x) or x - lse, <= 0 unless a caller's lse is
// wrong; larger arguments are clamped to 88 / 709 on the paths whose 2^n construction would
// wrap (AVX2, portable). The softmax sweeps (sum_exp in rowwise.h), whose arguments are <= 0
// by construction, call vexp_nonpositive below, one or two operations shorter.
// About 12 vector operations per vector of results: the fused kernels are bound by this,
// not by memory, on one core, so every operation saved here shows in the benchmark.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

namespace fusedce::cpu {
namespace {

template <class T> struct ExpConstants;
template <> struct ExpConstants<float> {
  static constexpr float lowest = -87.33654f, highest = 88.0f;
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  static constexpr float shifter = 12582912.0f;  // 1.5 2^23: x + shifter - shifter rounds x
};
template <> struct ExpConstants<double> {
  static constexpr double lowest = -708.3964185322641, highest = 709.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93145751953125e-1, ln2_lo = 1.42860682030941723212e-6;
  static constexpr double shifter = 6755399441055744.0;  // 1.5 2^52
};

template <class V>
inline V exp_poly(V r, float) {
  V p = V::set1(1.3829421950504184e-3f);
  p = V::fma(p, r, V::set1(8.374772034585476e-3f));
  p = V::fma(p, r, V::set1(4.16683591902256e-2f));
  p = V::fma(p, r, V::set1(1.666642129421234e-1f));
  p = V::fma(p, r, V::set1(4.9999991059303284e-1f));
  p = V::fma(p, r, V::set1(1.0f));
  return V::fma(p, r, V::set1(1.0f));
}

template <class V>
inline V exp_poly(V r, double) {
  // Taylor series: sum_{k=0}^{13} r^k / k!, Horner form; the r^14 term is < 5e-18.
  constexpr double inv_fact[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720,
                                    1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800,
                                    1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
  V p = V::set1(inv_fact[13]);
  for (int k = 12; k >= 0; --k) p = V::fma(p, r, V::set1(inv_fact[k]));
  return p;
}

// 2^n exp(r) with r = xc - n ln2, where xc is x or x clamped and n is xc / ln2 rounded to an
// integer: the part both versions below share. Lanes of x below `lowest` are zeroed,
// whatever the arithmetic made of them.
template <class V>
inline V exp_from_n(V x, V xc, V n) {
  using T = typename V::T;
  using K = ExpConstants<T>;
  V r = V::fma(n, V::set1(-K::ln2_hi), xc);
  r = V::fma(n, V::set1(-K::ln2_lo), r);
  return V::zero_if_less(x, V::set1(K::lowest), V::ldexp(exp_poly(r, T{}), n));
}

template <class V>
inline V vexp(V x) {
  using K = ExpConstants<typename V::T>;
  V xc = x;
  // AVX-512's scalef builds 2^n for any n; elsewhere n must stay inside the exponent range.
  if constexpr (!V::ldexp_any_n) xc = V::min(V::set1(K::highest), V::max(V::set1(K::lowest), x));
  return exp_from_n(x, xc, V::round_nearest(xc * V::set1(K::log2e)));
}

// vexp for arguments known to be <= 0 (or NaN): the kernels' x - max(x). n is rounded by the
// shifter trick fused into the multiply, fma(x, log2e, shifter) - shifter (valid while
// |x log2e| < 2^22, 2^51 for double; lanes below `lowest` are zeroed anyway): two operations
// where a multiply and a rounding take three on Intel (round and AVX-512's rndscale are two
// uops each), and no upper clamp is needed. The lower clamp stays where an out-of-range n
// cannot be turned into 2^n (!ldexp_any_n). n may differ from vexp's by one where x log2e
// lies within an ulp of a half-integer; both stay within the bound above.
template <class V>
inline V vexp_nonpositive(V x) {
  using K = ExpConstants<typename V::T>;
  V xc = x;
  if constexpr (!V::ldexp_any_n) xc = V::max(V::set1(K::lowest), x);
  const V shifter = V::set1(K::shifter);
  return exp_from_n(x, xc, V::fma(xc, V::set1(K::log2e), shifter) - shifter);
}

// log(x) for positive normal x (the small-class path's sums, which are >= 1); NaN gives NaN.
// x = m 2^e, m folded into [sqrt(1/2), sqrt(2)); log m = 2 atanh(z) = 2 (z + z^3/3 + ...)
// with z = (m - 1) / (m + 1), |z| < 0.172: 5 terms for float, 11 for double (last term
// dropped < 1e-9 and < 1e-17 relative).
template <class V>
inline V vlog(V x) {
  using T = typename V::T;
  V e;
  V m = V::split_exponent(x, e);
  const V sqrt2 = V::set1(T(1.41421356237309505)), half = V::set1(T(0.5)), one = V::set1(T(1));
  e = V::select_gt(m, sqrt2, e + one, e);
  m = V::select_gt(m, sqrt2, m * half, m);
  const V z = (m - one) / (m + one), z2 = z * z;
  constexpr int terms = sizeof(T) == 4 ? 5 : 11;
  V p = V::set1(T(1) / T(2 * terms - 1));
  for (int k = terms - 2; k >= 0; --k) p = V::fma(p, z2, V::set1(T(1) / T(2 * k + 1)));
  const V result = V::fma(e, V::set1(T(0.693147180559945309)), V::set1(T(2)) * z * p);
  return V::select_eq(x, x, result, x);
}

// tanh(y), for logit soft-capping (softcap * tanh(x / softcap)). Two formulas, each where it
// is accurate: for |y| >= 1/4, tanh|y| = (1 - e) / (1 + e) with e = exp(-2|y|) <= 0.61 (no
// cancellation worth a bit; exp(-inf) = 0 gives exactly 1); below, the odd Taylor series
// y + c3 y^3 + ..., whose terms shrink by (2|y|/pi)^2 < 1/39 each: to y^11 for float (first
// dropped term < 3e-10 relative) and y^23 for double (< 6e-20). The coefficients are
// 2^2n (2^2n - 1) B_2n / (2n)!, B the Bernoulli numbers. NaN gives NaN.
template <class V>
inline V vtanh(V y) {
  using T = typename V::T;
  constexpr double series[12] = {-0.3333333333333333,     0.13333333333333333,
                                 -0.05396825396825397,    0.021869488536155203,
                                 -0.008863235529902197,   0.003592128036572481,
                                 -0.0014558343870513183,  0.000590027440945586,
                                 -0.00023912911424355248, 9.691537956929451e-05,
                                 -3.927832388331683e-05,  1.5918905069328964e-05};
  constexpr int terms = sizeof(T) == 4 ? 5 : 11;  // coefficients after y: y^3 .. y^11 / y^23
  const V zero = V::set1(T(0)), one = V::set1(T(1));
  const V a = V::max(y, zero - y);  // |y| (NaN stays NaN)
  const V e = vexp(V::set1(T(-2)) * a);
  const V big = (one - e) / (one + e);
  const V y2 = y * y;
  V p = V::set1(static_cast<T>(series[terms - 1]));
  for (int k = terms - 2; k >= 0; --k) p = V::fma(p, y2, V::set1(static_cast<T>(series[k])));
  const V small = V::fma(y * y2, p, y);
  const V signed_big = V::select_gt(zero, y, zero - big, big);
  return V::select_gt(V::set1(T(0.25)), a, small, signed_big);
}

}  // namespace
}  // namespace fusedce::cpu
