// exp() on a vector of floats or doubles, for the kernels' inner loops.
//
// exp(x) = 2^n * exp(r) with n = round(x / ln2) and r = x - n ln2, |r| <= ln2/2; ln2 is split
// in a high part (exact in n * ln2_hi) and a low part (Cody & Waite), and exp(r) is a
// polynomial: Cephes' minimax coefficients for float, the Taylor series to r^13 for double.
// Measured against a float64 / long-double exp over [-88, 0] and [-708, 0] (tests/test_exp.py):
// at most 2 ulp for float and 2 ulp for double, relative error < 2.4e-7 and < 4.5e-16.
// Arguments below the smallest normal result (-87.3 float, -708.3 double), -inf included,
// give exactly 0: the subnormal range is flushed, an absolute error below 1.2e-38 / 2.3e-308.
// NaN gives NaN. Arguments above 88 / 709 are clamped (never needed: kernels call exp on
// x - max(x) <= 0).
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
};
template <> struct ExpConstants<double> {
  static constexpr double lowest = -708.3964185322641, highest = 709.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93145751953125e-1, ln2_lo = 1.42860682030941723212e-6;
};

template <class V>
inline V exp_poly(V r, float) {
  // 1 + r + r^2 (c2 + c3 r + ... + c7 r^5)
  V p = V::set1(1.9875691500e-4f);
  p = V::fma(p, r, V::set1(1.3981999507e-3f));
  p = V::fma(p, r, V::set1(8.3334519073e-3f));
  p = V::fma(p, r, V::set1(4.1665795894e-2f));
  p = V::fma(p, r, V::set1(1.6666665459e-1f));
  p = V::fma(p, r, V::set1(5.0000001201e-1f));
  return V::fma(p, r * r, r + V::set1(1.0f));
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

template <class V>
inline V vexp(V x) {
  using T = typename V::T;
  using K = ExpConstants<T>;
  const V lowest = V::set1(K::lowest);
  V xc = V::min(V::set1(K::highest), V::max(lowest, x));  // NaN passes both (second operand)
  V n = V::round_nearest(xc * V::set1(K::log2e));
  V r = V::fma(n, V::set1(-K::ln2_hi), xc);
  r = V::fma(n, V::set1(-K::ln2_lo), r);
  V e = V::ldexp(exp_poly(r, T{}), n);
  return V::zero_if_less(x, lowest, e);
}

}  // namespace
}  // namespace fusedce::cpu
