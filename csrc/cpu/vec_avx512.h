// AVX-512 (F + DQ) vectors: 16 floats or 8 doubles. Same interface as ScalarVec (vec_scalar.h).
#pragma once
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/half.h"

namespace fusedce::cpu::avx512 {
namespace {
#include "vec_scalar.h"

// vmaxps at each width, for V32::reduce (NaN or a tie of zeros gives b, as vmaxps does)
inline __m128 max_of_pair(__m128 a, __m128 b) { return _mm_max_ps(a, b); }
inline __m256 max_of_pair(__m256 a, __m256 b) { return _mm256_max_ps(a, b); }
inline __m512 max_of_pair(__m512 a, __m512 b) { return _mm512_max_ps(a, b); }

struct V32 {
  using T = float;
  using Scalar = S32;
  static constexpr bool ldexp_any_n = true;  // see vexp() in vmath.h
  static constexpr bool reduces_together = true;  // see hsum_each below
  static constexpr int width = 16;
  __m512 v;

  static V32 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void stream(float* p) const { _mm512_stream_ps(p, v); }
  static void fence() { _mm_sfence(); }
  static V32 set1(float x) { return {_mm512_set1_ps(x)}; }
  static V32 from_indices(const int32_t* p) { return {_mm512_cvtepi32_ps(_mm512_loadu_si512(p))}; }
  static V32 from_indices(const int64_t* p) {
    const __m256 lo = _mm512_cvtepi64_ps(_mm512_loadu_si512(p));
    const __m256 hi = _mm512_cvtepi64_ps(_mm512_loadu_si512(p + 8));
    return {_mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1)};
  }

  // float16 and bfloat16 storage (half.h): 16 values in 32 bytes, widened on load, rounded
  // to nearest even on store. bfloat16 is rounded with integer arithmetic, which gives the
  // bits of the portable path, of CUDA and of PyTorch. Compiled with AVX512-BF16 (the
  // avx512_bf16 level, isa_avx512_bf16.cpp) it is rounded by VCVTNEPS2BF16 instead, one
  // instruction for the nine below: it rounds to nearest even and keeps NaNs quiet in the
  // same way, but flushes subnormal inputs to zero, so a vector holding one takes the
  // integer code (such gradients are below 1.2e-38: rare).
  static V32 from_bits(__m256i h, const Half*) { return {_mm512_cvtph_ps(h)}; }
  static V32 from_bits(__m256i h, const BFloat16*) {
#if defined(__AVX512VBMI__)
    // (the avx512_bf16 level) one byte permutation, VPERMB, puts value i in the high half of
    // lane i and zeroes the low halves: one operation where widening and shifting take two.
    // The sweeps of a bfloat16 row are bound by their vector operations: in cache, Intel
    // Xeon, 16 x 32000 in place 7.65 -> 6.76 ns per 16 values (median of six alternated runs).
    const __m512i to_high_halves = _mm512_set_epi8(  // byte 63 first: value i's two bytes
        31, 30, 0, 0, 29, 28, 0, 0, 27, 26, 0, 0, 25, 24, 0, 0, 23, 22, 0, 0, 21, 20, 0, 0, 19, 18, 0, 0,
        17, 16, 0, 0, 15, 14, 0, 0, 13, 12, 0, 0, 11, 10, 0, 0, 9, 8, 0, 0, 7, 6, 0, 0, 5, 4, 0, 0, 3, 2,
        0, 0, 1, 0, 0, 0);
    constexpr __mmask64 high_halves = 0xCCCCCCCCCCCCCCCCull;  // bytes 2 and 3 of each lane
    return {_mm512_castsi512_ps(_mm512_maskz_permutexvar_epi8(high_halves, to_high_halves, _mm512_castsi256_si512(h)))};
#else
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
#endif
  }
  static V32 load(const Half* p) { return from_bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), p); }
  static V32 load(const BFloat16* p) { return from_bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), p); }
  __m256i bits(Half*) const { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  __m256i bits(BFloat16* p) const {
#if defined(__AVX512BF16__)
    constexpr int kSubnormal = 0x20;  // VFPCLASSPS category
    if (__builtin_expect(_mm512_fpclass_ps_mask(v, kSubnormal) == 0, 1))
      return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
#endif
    return bits_by_integers(p);
  }
  __m256i bits_by_integers(BFloat16*) const {
    const __m512i x = _mm512_castps_si512(v), high = _mm512_srli_epi32(x, 16);
    const __m512i bias = _mm512_add_epi32(_mm512_and_si512(high, _mm512_set1_epi32(1)), _mm512_set1_epi32(0x7fff));
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(x, bias), 16);
    const __m512i quiet = _mm512_or_si512(high, _mm512_set1_epi32(0x40));  // NaN stays NaN
    return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), quiet));
  }
  template <class X>
  void store(X* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bits(p));
  }
  template <class X>
  void stream(X* p) const {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), bits(p));
  }
  // Two vectors side by side at p, streamed: for half types one 64-byte store of the line
  // (two 32-byte streaming stores apart in time may leave the line to be written in halves).
  static void stream2(float* p, V32 a, V32 b) {
    a.stream(p);
    b.stream(p + 16);
  }
  template <class X>
  static void stream2(X* p, V32 a, V32 b) {
    const __m512i line = _mm512_inserti64x4(_mm512_castsi256_si512(a.bits(p)), b.bits(p), 1);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), line);
  }

  // The first n <= 16 lanes from / to p (the rest loaded as 0, not stored): masked loads and
  // stores, which touch no memory outside those lanes (a row's end, the array's end).
  static __mmask16 first_lanes(int n) { return static_cast<__mmask16>((1u << n) - 1); }
  static V32 load_partial(const float* p, int n) { return {_mm512_maskz_loadu_ps(first_lanes(n), p)}; }
  void store_partial(float* p, int n) const { _mm512_mask_storeu_ps(p, first_lanes(n), v); }
  template <class X>
  static V32 load_partial(const X* p, int n) {
    return from_bits(_mm256_maskz_loadu_epi16(first_lanes(n), p), p);
  }
  template <class X>
  void store_partial(X* p, int n) const {
    _mm256_mask_storeu_epi16(p, first_lanes(n), bits(p));
  }

  // Transposes the 16 x 16 matrix whose row i is m[i]: lane j of m[i] swaps with lane i of
  // m[j]. Pairs of rows interleaved by 32 bits, then by 64 bits (each 128-bit lane now holds
  // one column of four rows), then the 128-bit lanes moved into place: 64 shuffles.
  static void transpose(V32* m) {
    __m512 t[16], s[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(m[i].v, m[i + 1].v);
      t[i + 1] = _mm512_unpackhi_ps(m[i].v, m[i + 1].v);
    }
    // s[4q + r], 128-bit lane k: column 4k + r of rows 4q .. 4q + 3
    for (int q = 0; q < 16; q += 4) {
      for (int h = 0; h < 2; ++h) {
        const __m512d a = _mm512_castps_pd(t[q + h]), b = _mm512_castps_pd(t[q + h + 2]);
        s[q + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        s[q + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
      }
    }
    for (int r = 0; r < 4; ++r) {
      const __m512 lo0 = _mm512_shuffle_f32x4(s[r], s[4 + r], 0x44);  // lanes 0, 1 of each
      const __m512 hi0 = _mm512_shuffle_f32x4(s[r], s[4 + r], 0xee);  // lanes 2, 3 of each
      const __m512 lo1 = _mm512_shuffle_f32x4(s[8 + r], s[12 + r], 0x44);
      const __m512 hi1 = _mm512_shuffle_f32x4(s[8 + r], s[12 + r], 0xee);
      m[r].v = _mm512_shuffle_f32x4(lo0, lo1, 0x88);
      m[4 + r].v = _mm512_shuffle_f32x4(lo0, lo1, 0xdd);
      m[8 + r].v = _mm512_shuffle_f32x4(hi0, hi1, 0x88);
      m[12 + r].v = _mm512_shuffle_f32x4(hi0, hi1, 0xdd);
    }
  }

  friend V32 operator+(V32 a, V32 b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend V32 operator-(V32 a, V32 b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend V32 operator*(V32 a, V32 b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend V32 operator/(V32 a, V32 b) { return {_mm512_div_ps(a.v, b.v)}; }
  static V32 select_eq(V32 a, V32 b, V32 yes, V32 no) {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ), no.v, yes.v)};
  }
  static V32 select_gt(V32 a, V32 b, V32 yes, V32 no) {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ), no.v, yes.v)};
  }
  static V32 split_exponent(V32 x, V32& e) {
    e.v = _mm512_getexp_ps(x.v);
    return {_mm512_getmant_ps(x.v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero)};
  }
  static V32 fma(V32 a, V32 b, V32 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static V32 max(V32 a, V32 b) { return {_mm512_max_ps(a.v, b.v)}; }
  static V32 min(V32 a, V32 b) { return {_mm512_min_ps(a.v, b.v)}; }
  static V32 zero_if_less(V32 x, V32 limit, V32 value) {
    return {_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x.v, limit.v, _CMP_NLT_UQ), value.v)};
  }
  static V32 round_nearest(V32 x) {
    return {_mm512_roundscale_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  static V32 ldexp(V32 p, V32 n) { return {_mm512_scalef_ps(p.v, n.v)}; }  // p 2^floor(n)
  // table[j], j the last four bits of each lane's bits: one permute of a register.
  static V32 table16(const float* table, V32 key) {
    return {_mm512_permutexvar_ps(_mm512_castps_si512(key.v), _mm512_loadu_ps(table))};
  }
  // The sum and the max of the lanes by halves: lanes j and j + 8, then j and j + 4, then
  // j and j + 2, then 0 and 1 (GCC's _mm512_reduce_add_ps / _max_ps, written out so that
  // hsum_each and hmax_each below pair the same lanes in the same order, on any compiler).
  template <class Op>
  static float reduce(__m512 x, Op op) {
    const __m256 a = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    const __m256 h = op(a, _mm512_castps512_ps256(x));
    const __m128 q = op(_mm256_extractf128_ps(h, 1), _mm256_castps256_ps128(h));
    const __m128 p = op(q, _mm_movehl_ps(q, q));  // lane 0: q0, q2; lane 1: q1, q3
    return _mm_cvtss_f32(op(p, _mm_movehdup_ps(p)));
  }
  float hsum() const {
    return reduce(v, [](auto a, auto b) { return a + b; });
  }
  float hmax() const {
    return reduce(v, [](auto a, auto b) { return max_of_pair(a, b); });
  }
  // out[i] = v[i].hsum() (hmax) for 16 vectors, bit for bit, by a transposed reduction: each
  // level pairs the lanes of two vectors at once, 46 operations where 16 reductions take
  // 128, with no chain of 8 dependent ones per vector (the row blocks' maxima and sums).
  template <class Op>
  static void reduce_each(const V32* v, float* out, Op op) {
    __m512 c[8], d[4], e[2];
    for (int k = 0; k < 8; ++k) {  // lanes j, j + 8: c[k] holds vector 2k in its low half, 2k + 1 in its high
      const __m512 lo = _mm512_shuffle_f32x4(v[2 * k].v, v[2 * k + 1].v, 0x44);
      const __m512 hi = _mm512_shuffle_f32x4(v[2 * k].v, v[2 * k + 1].v, 0xee);
      c[k] = op(hi, lo);
    }
    for (int k = 0; k < 4; ++k) {  // lanes j, j + 4: d[k], 128-bit lane i, vector 4k + i
      const __m512 lo = _mm512_shuffle_f32x4(c[2 * k], c[2 * k + 1], 0x88);
      const __m512 hi = _mm512_shuffle_f32x4(c[2 * k], c[2 * k + 1], 0xdd);
      d[k] = op(hi, lo);
    }
    for (int k = 0; k < 2; ++k) {  // lanes j, j + 2: e[k], lane i: vector 8k + i (low pair), 8k + 4 + i
      const __m512d a = _mm512_castps_pd(d[2 * k]), b = _mm512_castps_pd(d[2 * k + 1]);
      e[k] = op(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    // lanes 0, 1: 128-bit lane i holds vectors i, 4 + i, 8 + i, 12 + i
    const __m512 f = op(_mm512_shuffle_ps(e[0], e[1], 0x88), _mm512_shuffle_ps(e[0], e[1], 0xdd));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, f));
  }
  static void hsum_each(const V32* v, float* out) {
    reduce_each(v, out, [](auto a, auto b) { return a + b; });
  }
  static void hmax_each(const V32* v, float* out) {
    reduce_each(v, out, [](auto a, auto b) { return max_of_pair(a, b); });
  }
};

struct V64 {
  using T = double;
  using Scalar = S64;
  static constexpr bool ldexp_any_n = true;  // see vexp() in vmath.h
  static constexpr bool reduces_together = false;  // (vec_scalar.h)
  static constexpr int width = 8;
  __m512d v;

  static V64 load(const double* p) { return {_mm512_loadu_pd(p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void stream(double* p) const { _mm512_stream_pd(p, v); }
  static void fence() { _mm_sfence(); }
  static void stream2(double* p, V64 a, V64 b) {
    a.stream(p);
    b.stream(p + 8);
  }
  static V64 set1(double x) { return {_mm512_set1_pd(x)}; }
  static V64 from_indices(const int32_t* p) {
    return {_mm512_cvtepi32_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  static V64 from_indices(const int64_t* p) { return {_mm512_cvtepi64_pd(_mm512_loadu_si512(p))}; }

  // As V32's (the first n <= 8 lanes), and the 8 x 8 transpose: rows interleaved by 64 bits
  // (each 128-bit lane then holds one column of two rows), then 128-bit lanes moved: 24 shuffles.
  static __mmask8 first_lanes(int n) { return static_cast<__mmask8>((1u << n) - 1); }
  static V64 load_partial(const double* p, int n) { return {_mm512_maskz_loadu_pd(first_lanes(n), p)}; }
  void store_partial(double* p, int n) const { _mm512_mask_storeu_pd(p, first_lanes(n), v); }
  static void transpose(V64* m) {
    __m512d s[8];  // s[2q + r], 128-bit lane k: column 2k + r of rows 2q, 2q + 1
    for (int i = 0; i < 8; i += 2) {
      s[i] = _mm512_unpacklo_pd(m[i].v, m[i + 1].v);
      s[i + 1] = _mm512_unpackhi_pd(m[i].v, m[i + 1].v);
    }
    for (int r = 0; r < 2; ++r) {
      const __m512d lo0 = _mm512_shuffle_f64x2(s[r], s[2 + r], 0x44);
      const __m512d hi0 = _mm512_shuffle_f64x2(s[r], s[2 + r], 0xee);
      const __m512d lo1 = _mm512_shuffle_f64x2(s[4 + r], s[6 + r], 0x44);
      const __m512d hi1 = _mm512_shuffle_f64x2(s[4 + r], s[6 + r], 0xee);
      m[r].v = _mm512_shuffle_f64x2(lo0, lo1, 0x88);
      m[2 + r].v = _mm512_shuffle_f64x2(lo0, lo1, 0xdd);
      m[4 + r].v = _mm512_shuffle_f64x2(hi0, hi1, 0x88);
      m[6 + r].v = _mm512_shuffle_f64x2(hi0, hi1, 0xdd);
    }
  }

  friend V64 operator+(V64 a, V64 b) { return {_mm512_add_pd(a.v, b.v)}; }
  friend V64 operator-(V64 a, V64 b) { return {_mm512_sub_pd(a.v, b.v)}; }
  friend V64 operator*(V64 a, V64 b) { return {_mm512_mul_pd(a.v, b.v)}; }
  friend V64 operator/(V64 a, V64 b) { return {_mm512_div_pd(a.v, b.v)}; }
  static V64 select_eq(V64 a, V64 b, V64 yes, V64 no) {
    return {_mm512_mask_blend_pd(_mm512_cmp_pd_mask(a.v, b.v, _CMP_EQ_OQ), no.v, yes.v)};
  }
  static V64 select_gt(V64 a, V64 b, V64 yes, V64 no) {
    return {_mm512_mask_blend_pd(_mm512_cmp_pd_mask(a.v, b.v, _CMP_GT_OQ), no.v, yes.v)};
  }
  static V64 split_exponent(V64 x, V64& e) {
    e.v = _mm512_getexp_pd(x.v);
    return {_mm512_getmant_pd(x.v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero)};
  }
  static V64 fma(V64 a, V64 b, V64 c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
  static V64 max(V64 a, V64 b) { return {_mm512_max_pd(a.v, b.v)}; }
  static V64 min(V64 a, V64 b) { return {_mm512_min_pd(a.v, b.v)}; }
  static V64 zero_if_less(V64 x, V64 limit, V64 value) {
    return {_mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x.v, limit.v, _CMP_NLT_UQ), value.v)};
  }
  static V64 round_nearest(V64 x) {
    return {_mm512_roundscale_pd(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  static V64 ldexp(V64 p, V64 n) { return {_mm512_scalef_pd(p.v, n.v)}; }  // p 2^floor(n)
  double hsum() const { return _mm512_reduce_add_pd(v); }
  double hmax() const { return _mm512_reduce_max_pd(v); }
};
}  // namespace
}  // namespace fusedce::cpu::avx512
