// exp() on a vector of floats or doubles, for the kernels' inner loops.
//
// float: exp(x) = 2^(k/16) * exp(r) with k = round(16 x / ln2) and r = x - (k/16) ln2,
// |r| <= ln2/32. 2^(k/16) is 2^floor(k/16) (V::ldexp) times 2^((k mod 16)/16) from a table of
// 16 floats (V::table16); exp(r) = 1 + r + r^2 (c2 + c3 r), coefficients fitted here to exp on
// [-ln2/32, ln2/32] (1.6e-9 relative error before rounding). Each table entry is 2^(j/16)
// rounded to float (up to 4.7e-8 relative), the largest error left.
// double: exp(x) = 2^n * exp(r) with n = round(x / ln2), |r| <= ln2/2, and the Taylor series
// to r^13.
// Both split ln2 in a high part (exact in n * ln2_hi) and a low part (Cody & Waite).
// tests/test_exp.py measures the whole function against numpy's exp: relative error below
// 3e-7 (float: 1.1e-7 measured) and 1e-15 (double), a few ulp.
// Arguments below the smallest normal result (-87.3 float, -708.4 double), -inf included,
// give exactly 0: the subnormal range is flushed, an absolute error below 1.2e-38 / 2.3e-308.
// NaN gives NaN. Kernels call it on x - max(x) or x - lse, <= 0 unless a caller's lse is
// wrong; larger arguments are clamped to 88 / 709 on the paths whose 2^n construction would
// wrap (AVX2, portable), to 128 (float, still inf) on AVX-512. The softmax sweeps (sum_exp in
// rowwise.h), whose arguments are <= 0 by construction, call vexp_nonpositive below, which
// needs no clamp from above.
// The fused kernels are bound by this function, not by memory, on one core (Zen 4: the table
// took the float version from about 14 to 10 cycles per 16 values, 9 to 7 multiply-adds), so
// every operation saved here shows in the benchmark.
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
  // 1.5 2^19: x + shifter - shifter rounds x to a multiple of 1/16, and the sum's last four
  // mantissa bits hold 16 x mod 16 (valid while |x| < 2^18)
  static constexpr float shifter = 786432.0f;
  static constexpr float c2 = 0.5000163316726685f, c3 = 0.16667009890079498f;
  // 2^(j/16), j = 0..15, each rounded to the nearest float
  static constexpr float exp2_sixteenths[16] = {
      0x1p+0f,         0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fe0p+0f, 0x1.3dea64p+0f,
      0x1.4bfdaep+0f,  0x1.5ab07ep+0f, 0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
      0x1.ae89fap+0f,  0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f};
};
template <> struct ExpConstants<double> {
  static constexpr double lowest = -708.3964185322641, highest = 709.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93145751953125e-1, ln2_lo = 1.42860682030941723212e-6;
  static constexpr double shifter = 6755399441055744.0;  // 1.5 2^52
};

// r = xc - n ln2, with ln2 in two parts (Cody & Waite): n ln2_hi is exact.
template <class V>
inline V reduce_by_ln2(V xc, V n) {
  using K = ExpConstants<typename V::T>;
  return V::fma(n, V::set1(-K::ln2_lo), V::fma(n, V::set1(-K::ln2_hi), xc));
}

// float: exp(x) for x or its clamped value xc (the table's 2^(k/16): see the top of this file).
// Lanes of x below `lowest` are zeroed, whatever the arithmetic made of them.
template <class V>
inline V exp_float(V x, V xc) {
  using K = ExpConstants<float>;
  const V shifter = V::set1(K::shifter);
  const V s = V::fma(xc, V::set1(K::log2e), shifter);  // k/16 + shifter, k mod 16 in its last bits
  const V n = s - shifter;                              // k/16
  const V r = reduce_by_ln2(xc, n);
  const V expm1_r = V::fma(V::fma(V::set1(K::c3), r, V::set1(K::c2)), r * r, r);
  const V t = V::table16(K::exp2_sixteenths, s);         // 2^((k mod 16) / 16)
  return V::zero_if_less(x, V::set1(K::lowest), V::ldexp(V::fma(t, expm1_r, t), n));
}

// double: sum_{k=0}^{13} r^k / k!, Horner form; the r^14 term is < 5e-18.
template <class V>
inline V exp_poly_double(V r) {
  constexpr double inv_fact[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720,
                                    1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800,
                                    1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
  V p = V::set1(inv_fact[13]);
  for (int k = 12; k >= 0; --k) p = V::fma(p, r, V::set1(inv_fact[k]));
  return p;
}

// double: 2^n exp(r) with r = xc - n ln2, where xc is x or x clamped and n is xc / ln2 rounded
// to an integer. Lanes of x below `lowest` are zeroed.
template <class V>
inline V exp_double(V x, V xc, V n) {
  using K = ExpConstants<double>;
  return V::zero_if_less(x, V::set1(K::lowest), V::ldexp(exp_poly_double(reduce_by_ln2(xc, n)), n));
}

template <class V>
inline V vexp(V x) {
  using K = ExpConstants<typename V::T>;
  if constexpr (sizeof(typename V::T) == 4) {
    // AVX-512's scalef builds 2^n for any n; there only the shifter's range needs a bound
    // (above: 2^128 is inf all the same; below: such lanes are zeroed).
    if constexpr (V::ldexp_any_n) return exp_float(x, V::min(V::set1(128.0f), x));
    return exp_float(x, V::min(V::set1(K::highest), V::max(V::set1(K::lowest), x)));
  } else {
    V xc = x;
    // AVX-512's scalef builds 2^n for any n; elsewhere n must stay inside the exponent range.
    if constexpr (!V::ldexp_any_n) xc = V::min(V::set1(K::highest), V::max(V::set1(K::lowest), x));
    return exp_double(x, xc, V::round_nearest(xc * V::set1(K::log2e)));
  }
}

// vexp for arguments known to be <= 0 (or NaN): the kernels' x - max(x). No clamp from above
// is needed, and the lower one only where an out-of-range n cannot be turned into 2^n
// (!ldexp_any_n). For double, n is rounded by the shifter trick fused into the multiply,
// fma(x, log2e, shifter) - shifter (valid while |x log2e| < 2^51; lanes below `lowest` are
// zeroed anyway): two operations where a multiply and a rounding take three on Intel (round
// and AVX-512's rndscale are two uops each). n may differ from vexp's by one where x log2e
// lies within an ulp of a half-integer; both stay within the bound above.
template <class V>
inline V vexp_nonpositive(V x) {
  using K = ExpConstants<typename V::T>;
  V xc = x;
  if constexpr (!V::ldexp_any_n) xc = V::max(V::set1(K::lowest), x);
  if constexpr (sizeof(typename V::T) == 4) {
    return exp_float(x, xc);
  } else {
    const V shifter = V::set1(K::shifter);
    return exp_double(x, xc, V::fma(xc, V::set1(K::log2e), shifter) - shifter);
  }
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
