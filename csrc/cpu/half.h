// The two 16-bit storage formats the CPU kernels read and write natively, float16 (IEEE
// binary16) and bfloat16 (the top half of a float32), and their scalar conversions.
//
// Half inputs are computed in float32: each value is widened when it is loaded (exact), and
// each result is rounded once when it is stored, to nearest with ties to even, NaN kept
// quiet, subnormals kept (as the CUDA kernels' __float2half_rn / __float2bfloat16_rn and
// PyTorch's conversions do). The vector types of each instruction set (vec_*.h) do the same
// conversions on whole vectors; these scalar ones serve the portable path and the tails.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fusedce::cpu {

// Storage only: no arithmetic is ever done on these. Half is IEEE binary16 (NumPy's float16).
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

namespace {  // internal linkage: each instruction set's translation unit keeps its own copy

inline float float_from_bits(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
inline uint32_t bits_of(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

inline float widen(float v) { return v; }
inline double widen(double v) { return v; }
inline float widen(BFloat16 h) { return float_from_bits(uint32_t(h.bits) << 16); }
inline float widen(Half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu, mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1f) return float_from_bits(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return float_from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
  const float tiny = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // subnormal: m 2^-24
  return sign ? -tiny : tiny;
}

inline BFloat16 to_bf16(float v) {
  uint32_t bits = bits_of(v);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return {uint16_t((bits >> 16) | 0x40u)};  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // ties to even; a carry moves into the exponent
  return {uint16_t(bits >> 16)};
}

inline Half to_f16(float v) {
  uint32_t bits = bits_of(v);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  bits &= 0x7fffffffu;
  if (bits > 0x7f800000u) return {uint16_t(sign | 0x7e00u | ((bits >> 13) & 0x3ffu))};  // NaN
  if (bits >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // from 65520 up: inf
  if (bits < 0x38800000u) {
    // Below 2^-14: a subnormal m 2^-24. |v| 2^24 < 2^10 is exact, and adding and removing
    // 1.5 * 2^23 rounds it to an integer, ties to even (m = 1024 is 2^-14, the smallest normal).
    const float scaled = float_from_bits(bits) * 16777216.0f;
    const float shifted = scaled + 12582912.0f;  // not folded away: never -ffast-math
    return {uint16_t(sign | static_cast<uint16_t>(shifted - 12582912.0f))};
  }
  bits += 0xfffu + ((bits >> 13) & 1u);  // round the 13 dropped bits, ties to even
  bits -= (127u - 15u) << 23;            // rebias the exponent
  return {uint16_t(sign | (bits >> 13))};
}

// A compute-dtype value stored as X (float and double unchanged).
template <class X, class T>
inline X narrow(T v) {
  if constexpr (std::is_same_v<X, Half>) return to_f16(static_cast<float>(v));
  else if constexpr (std::is_same_v<X, BFloat16>) return to_bf16(static_cast<float>(v));
  else return static_cast<X>(v);
}

}  // namespace
}  // namespace fusedce::cpu
