// AVX-512 (F + DQ) vectors: 16 floats or 8 doubles. Same interface as ScalarVec (vec_scalar.h).
#pragma once
#include <immintrin.h>
#include <cstdint>
#include <cstring>

#include "cpu/half.h"

namespace fusedce::cpu::avx512 {
namespace {
#include "vec_scalar.h"

struct V32 {
  using T = float;
  using Scalar = S32;
  static constexpr bool ldexp_any_n = true;  // see vexp() in vmath.h
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
  // The caller guarantees 15 * stride fits in int32 (see the small-class path).
  static __m512i lane_offsets(int64_t stride) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32(static_cast<int>(stride)));
  }
  static V32 gather(const float* base, int64_t stride) {
    return {_mm512_i32gather_ps(lane_offsets(stride), base, 4)};
  }
  void scatter(float* base, int64_t stride) const {
    _mm512_i32scatter_ps(base, lane_offsets(stride), v, 4);
  }

  // float16 and bfloat16 storage (half.h): 16 values in 32 bytes, widened on load, rounded
  // to nearest even on store. bfloat16 is rounded with integer arithmetic rather than
  // AVX512-BF16's VCVTNEPS2BF16, which flushes subnormals to zero: every instruction set then
  // stores the same bits, those of the portable path, of CUDA and of PyTorch.
  static V32 load(const Half* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))}; }
  static V32 load(const BFloat16* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))};
  }
  __m256i bits(Half*) const { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  __m256i bits(BFloat16*) const {
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
  template <class X>
  static V32 gather(const X* base, int64_t stride) {  // 16-bit lanes: no gather instruction
    alignas(32) X lanes[16];
    for (int i = 0; i < 16; ++i) lanes[i] = base[i * stride];
    return load(lanes);
  }
  template <class X>
  void scatter(X* base, int64_t stride) const {
    alignas(32) X lanes[16];
    store(lanes);
    for (int i = 0; i < 16; ++i) base[i * stride] = lanes[i];
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
  static V32 ldexp(V32 p, V32 n) { return {_mm512_scalef_ps(p.v, n.v)}; }
  float hsum() const { return _mm512_reduce_add_ps(v); }
  float hmax() const { return _mm512_reduce_max_ps(v); }
};

struct V64 {
  using T = double;
  using Scalar = S64;
  static constexpr bool ldexp_any_n = true;  // see vexp() in vmath.h
  static constexpr int width = 8;
  __m512d v;

  static V64 load(const double* p) { return {_mm512_loadu_pd(p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void stream(double* p) const { _mm512_stream_pd(p, v); }
  static void fence() { _mm_sfence(); }
  static V64 set1(double x) { return {_mm512_set1_pd(x)}; }
  static V64 from_indices(const int32_t* p) {
    return {_mm512_cvtepi32_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  static V64 from_indices(const int64_t* p) { return {_mm512_cvtepi64_pd(_mm512_loadu_si512(p))}; }
  static __m256i lane_offsets(int64_t stride) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                              _mm256_set1_epi32(static_cast<int>(stride)));
  }
  static V64 gather(const double* base, int64_t stride) {
    return {_mm512_i32gather_pd(lane_offsets(stride), base, 8)};
  }
  void scatter(double* base, int64_t stride) const {
    _mm512_i32scatter_pd(base, lane_offsets(stride), v, 8);
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
  static V64 ldexp(V64 p, V64 n) { return {_mm512_scalef_pd(p.v, n.v)}; }
  double hsum() const { return _mm512_reduce_add_pd(v); }
  double hmax() const { return _mm512_reduce_max_pd(v); }
};
}  // namespace
}  // namespace fusedce::cpu::avx512
