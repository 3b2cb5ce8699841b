// AVX2 + FMA vectors: 8 floats or 4 doubles. Same interface as ScalarVec (vec_scalar.h).
#pragma once
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/half.h"

namespace fusedce::cpu::avx2 {
namespace {
#include "vec_scalar.h"

struct V32 {
  using T = float;
  using Scalar = S32;
  static constexpr bool ldexp_any_n = false;  // see vexp() in vmath.h
  static constexpr bool reduces_together = false;  // (vec_scalar.h)
  static constexpr int width = 8;
  __m256 v;

  static V32 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void stream(float* p) const { _mm256_stream_ps(p, v); }
  static void fence() { _mm_sfence(); }
  static V32 set1(float x) { return {_mm256_set1_ps(x)}; }
  static V32 from_indices(const int32_t* p) {
    return {_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  static V32 from_indices(const int64_t* p) {  // AVX2 cannot convert int64: lane by lane
    alignas(32) float lanes[8];
    for (int i = 0; i < 8; ++i) lanes[i] = static_cast<float>(p[i]);
    return {_mm256_load_ps(lanes)};
  }

  // float16 (F16C) and bfloat16 storage (half.h): 8 values in 16 bytes, widened on load,
  // rounded to nearest even on store (bfloat16 with integer arithmetic, NaN kept quiet).
  static V32 load(const Half* p) { return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))}; }
  static V32 load(const BFloat16* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))};
  }
  __m128i bits(Half*) const { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  __m128i bits(BFloat16*) const {
    const __m256i x = _mm256_castps_si256(v), high = _mm256_srli_epi32(x, 16);
    const __m256i bias = _mm256_add_epi32(_mm256_and_si256(high, _mm256_set1_epi32(1)), _mm256_set1_epi32(0x7fff));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(x, bias), 16);
    const __m256i quiet = _mm256_or_si256(high, _mm256_set1_epi32(0x40));  // NaN stays NaN
    rounded = _mm256_blendv_epi8(rounded, quiet, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    // pack the eight 32-bit lanes (each < 2^16) to 16 bits: per 128-bit half, then join halves
    const __m256i packed = _mm256_packus_epi32(rounded, rounded);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
  }
  template <class X>
  void store(X* p) const {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bits(p));
  }
  template <class X>
  void stream(X* p) const {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), bits(p));
  }
  // Two vectors side by side at p, streamed (for half types as one 32-byte store).
  static void stream2(float* p, V32 a, V32 b) {
    a.stream(p);
    b.stream(p + 8);
  }
  template <class X>
  static void stream2(X* p, V32 a, V32 b) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm256_set_m128i(b.bits(p), a.bits(p)));
  }

  // The first n <= 8 lanes from / to p (the rest loaded as 0, not stored), touching no memory
  // outside them: masked moves for floats; 16-bit lanes (no masked move) through a buffer.
  static __m256i first_lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V32 load_partial(const float* p, int n) { return {_mm256_maskload_ps(p, first_lanes(n))}; }
  void store_partial(float* p, int n) const { _mm256_maskstore_ps(p, first_lanes(n), v); }
  template <class X>
  static V32 load_partial(const X* p, int n) {
    alignas(16) X lanes[8] = {};
    std::memcpy(lanes, p, static_cast<std::size_t>(n) * sizeof(X));
    return load(lanes);
  }
  template <class X>
  void store_partial(X* p, int n) const {
    alignas(16) X lanes[8];
    store(lanes);
    std::memcpy(p, lanes, static_cast<std::size_t>(n) * sizeof(X));
  }

  // Transposes the 8 x 8 matrix whose row i is m[i]: rows interleaved by 32 bits, then by
  // 64 bits (each 128-bit lane then holds one column of four rows), then 128-bit lanes
  // swapped into place: 24 shuffles.
  static void transpose(V32* m) {
    __m256 t[8], s[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(m[i].v, m[i + 1].v);
      t[i + 1] = _mm256_unpackhi_ps(m[i].v, m[i + 1].v);
    }
    // s[4q + r], 128-bit lane k: column 4k + r of rows 4q .. 4q + 3
    for (int q = 0; q < 8; q += 4) {
      for (int h = 0; h < 2; ++h) {
        const __m256d a = _mm256_castps_pd(t[q + h]), b = _mm256_castps_pd(t[q + h + 2]);
        s[q + 2 * h] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, b));
        s[q + 2 * h + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, b));
      }
    }
    for (int r = 0; r < 4; ++r) {
      m[r].v = _mm256_permute2f128_ps(s[r], s[4 + r], 0x20);
      m[4 + r].v = _mm256_permute2f128_ps(s[r], s[4 + r], 0x31);
    }
  }

  friend V32 operator+(V32 a, V32 b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend V32 operator-(V32 a, V32 b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend V32 operator*(V32 a, V32 b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend V32 operator/(V32 a, V32 b) { return {_mm256_div_ps(a.v, b.v)}; }
  static V32 select_eq(V32 a, V32 b, V32 yes, V32 no) {
    return {_mm256_blendv_ps(no.v, yes.v, _mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ))};
  }
  static V32 select_gt(V32 a, V32 b, V32 yes, V32 no) {
    return {_mm256_blendv_ps(no.v, yes.v, _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ))};
  }
  static V32 split_exponent(V32 x, V32& e) {
    const __m256i bits = _mm256_castps_si256(x.v);
    e.v = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
    const __m256i m = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                                      _mm256_set1_epi32(0x3f800000));
    return {_mm256_castsi256_ps(m)};
  }
  static V32 fma(V32 a, V32 b, V32 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static V32 max(V32 a, V32 b) { return {_mm256_max_ps(a.v, b.v)}; }
  static V32 min(V32 a, V32 b) { return {_mm256_min_ps(a.v, b.v)}; }
  static V32 zero_if_less(V32 x, V32 limit, V32 value) {
    return {_mm256_andnot_ps(_mm256_cmp_ps(x.v, limit.v, _CMP_LT_OQ), value.v)};
  }
  static V32 round_nearest(V32 x) {
    return {_mm256_round_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  static V32 ldexp(V32 p, V32 n) {  // p 2^floor(n)
    const __m256i whole = _mm256_cvtps_epi32(_mm256_floor_ps(n.v));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(whole, _mm256_set1_epi32(127)), 23);
    return {_mm256_mul_ps(p.v, _mm256_castsi256_ps(e))};
  }
  // table[j], j the last four bits of each lane's bits: two 8-entry permutes, bit 3 chooses.
  static V32 table16(const float* table, V32 key) {
    const __m256i j = _mm256_castps_si256(key.v);
    const __m256 low = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), j);
    const __m256 high = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), j);
    return {_mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(j, 28)))};
  }
  float hsum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  float hmax() const {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
};

struct V64 {
  using T = double;
  using Scalar = S64;
  static constexpr bool ldexp_any_n = false;  // see vexp() in vmath.h
  static constexpr bool reduces_together = false;  // (vec_scalar.h)
  static constexpr int width = 4;
  __m256d v;

  static V64 load(const double* p) { return {_mm256_loadu_pd(p)}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  void stream(double* p) const { _mm256_stream_pd(p, v); }
  static void fence() { _mm_sfence(); }
  static void stream2(double* p, V64 a, V64 b) {
    a.stream(p);
    b.stream(p + 4);
  }
  static V64 set1(double x) { return {_mm256_set1_pd(x)}; }
  static V64 from_indices(const int32_t* p) {
    return {_mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  static V64 from_indices(const int64_t* p) {
    alignas(32) double lanes[4];
    for (int i = 0; i < 4; ++i) lanes[i] = static_cast<double>(p[i]);
    return {_mm256_load_pd(lanes)};
  }

  // As V32's (the first n <= 4 lanes), and the 4 x 4 transpose: rows interleaved by 64 bits
  // (each 128-bit lane then holds one column of two rows), then 128-bit lanes swapped.
  static __m256i first_lanes(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static V64 load_partial(const double* p, int n) { return {_mm256_maskload_pd(p, first_lanes(n))}; }
  void store_partial(double* p, int n) const { _mm256_maskstore_pd(p, first_lanes(n), v); }
  static void transpose(V64* m) {
    __m256d s[4];  // s[2q + r], 128-bit lane k: column 2k + r of rows 2q, 2q + 1
    for (int i = 0; i < 4; i += 2) {
      s[i] = _mm256_unpacklo_pd(m[i].v, m[i + 1].v);
      s[i + 1] = _mm256_unpackhi_pd(m[i].v, m[i + 1].v);
    }
    for (int r = 0; r < 2; ++r) {
      m[r].v = _mm256_permute2f128_pd(s[r], s[2 + r], 0x20);
      m[2 + r].v = _mm256_permute2f128_pd(s[r], s[2 + r], 0x31);
    }
  }

  friend V64 operator+(V64 a, V64 b) { return {_mm256_add_pd(a.v, b.v)}; }
  friend V64 operator-(V64 a, V64 b) { return {_mm256_sub_pd(a.v, b.v)}; }
  friend V64 operator*(V64 a, V64 b) { return {_mm256_mul_pd(a.v, b.v)}; }
  friend V64 operator/(V64 a, V64 b) { return {_mm256_div_pd(a.v, b.v)}; }
  static V64 select_eq(V64 a, V64 b, V64 yes, V64 no) {
    return {_mm256_blendv_pd(no.v, yes.v, _mm256_cmp_pd(a.v, b.v, _CMP_EQ_OQ))};
  }
  static V64 select_gt(V64 a, V64 b, V64 yes, V64 no) {
    return {_mm256_blendv_pd(no.v, yes.v, _mm256_cmp_pd(a.v, b.v, _CMP_GT_OQ))};
  }
  static V64 split_exponent(V64 x, V64& e) {
    const __m256i bits = _mm256_castpd_si256(x.v);
    // No int64 -> double conversion in AVX2: put the biased exponent under 2^52's bits.
    const __m256d two52 = _mm256_set1_pd(4503599627370496.0);
    const __m256d biased = _mm256_sub_pd(
        _mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(bits, 52), _mm256_castpd_si256(two52))), two52);
    e.v = _mm256_sub_pd(biased, _mm256_set1_pd(1023.0));
    const __m256i m = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000fffffffffffffLL)),
                                      _mm256_set1_epi64x(0x3ff0000000000000LL));
    return {_mm256_castsi256_pd(m)};
  }
  static V64 fma(V64 a, V64 b, V64 c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
  static V64 max(V64 a, V64 b) { return {_mm256_max_pd(a.v, b.v)}; }
  static V64 min(V64 a, V64 b) { return {_mm256_min_pd(a.v, b.v)}; }
  static V64 zero_if_less(V64 x, V64 limit, V64 value) {
    return {_mm256_andnot_pd(_mm256_cmp_pd(x.v, limit.v, _CMP_LT_OQ), value.v)};
  }
  static V64 round_nearest(V64 x) {
    return {_mm256_round_pd(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  static V64 ldexp(V64 p, V64 n) {  // p 2^floor(n)
    // AVX2 cannot convert doubles to int64: adding 1.5 * 2^52 puts n in the low mantissa bits.
    const __m256d shifter = _mm256_set1_pd(6755399441055744.0);
    __m256i bits = _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(_mm256_floor_pd(n.v), shifter)),
                                    _mm256_castpd_si256(shifter));
    __m256i e = _mm256_slli_epi64(_mm256_add_epi64(bits, _mm256_set1_epi64x(1023)), 52);
    return {_mm256_mul_pd(p.v, _mm256_castsi256_pd(e))};
  }
  double hsum() const {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  double hmax() const {
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
  }
};
}  // namespace
}  // namespace fusedce::cpu::avx2
