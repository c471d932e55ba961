// Lane vectors of the tiled GNA kernel: W queries side by side (one register), for AVX-512, AVX2 and a portable path.
// Masks are lane bitmasks (bit i: lane i).
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"  // exp256, immintrin.h

namespace visionattn_cpu {

// Portable lanes (fp64, or builds without AVX2): plain loops the compiler vectorizes.
template <typename T_, int W_ = 8>
struct VecG {
  using T = T_;
  static constexpr int W = W_;
  struct R {
    T v[W];
  };
  static inline R load(const T* p) {
    R r;
    for (int i = 0; i < W; ++i) r.v[i] = p[i];
    return r;
  }
  static inline void store(T* p, const R& a) {
    for (int i = 0; i < W; ++i) p[i] = a.v[i];
  }
  static inline R set1(T x) {
    R r;
    for (int i = 0; i < W; ++i) r.v[i] = x;
    return r;
  }
  static inline R zero() { return set1(T(0)); }
  static inline R fmadd(const R& a, const R& b, const R& c) {
    R r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
#define VA_BINOP(name, expr)                        \
  static inline R name(const R& a, const R& b) {    \
    R r;                                            \
    for (int i = 0; i < W; ++i) r.v[i] = (expr);    \
    return r;                                       \
  }
  VA_BINOP(add, a.v[i] + b.v[i])
  VA_BINOP(sub, a.v[i] - b.v[i])
  VA_BINOP(mul, a.v[i] * b.v[i])
  VA_BINOP(div, a.v[i] / b.v[i])
  VA_BINOP(max, a.v[i] > b.v[i] ? a.v[i] : b.v[i])
#undef VA_BINOP
  static inline R exp(const R& a) {
    R r;
    for (int i = 0; i < W; ++i) r.v[i] = std::exp(a.v[i]);
    return r;
  }
  static inline R select(uint32_t m, const R& a, const R& b) {  // lane i: bit i ? a : b
    R r;
    for (int i = 0; i < W; ++i) r.v[i] = (m >> i) & 1u ? a.v[i] : b.v[i];
    return r;
  }
  static inline R gather(const T* base, const int32_t* idx) {  // lane i: base[idx[i]]
    R r;
    for (int i = 0; i < W; ++i) r.v[i] = base[idx[i]];
    return r;
  }
  static inline void scatter(T* base, const int32_t* idx, uint32_t m, const R& a) {  // base[idx[i]] = a[i], bit i
    for (int i = 0; i < W; ++i)
      if ((m >> i) & 1u) base[idx[i]] = a.v[i];
  }
};

#ifdef __AVX2__
struct VecF8 {
  using T = float;
  static constexpr int W = 8;
  using R = __m256;
  static inline R load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, R a) { _mm256_storeu_ps(p, a); }
  static inline R set1(float x) { return _mm256_set1_ps(x); }
  static inline R zero() { return _mm256_setzero_ps(); }
  static inline R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static inline R add(R a, R b) { return _mm256_add_ps(a, b); }
  static inline R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static inline R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static inline R max(R a, R b) { return _mm256_max_ps(a, b); }
  static inline R div(R a, R b) { return _mm256_div_ps(a, b); }
  static inline R exp(R a) { return exp256(a); }
  static inline R select(uint32_t m, R a, R b) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(m)), bit), bit);
    return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(on));
  }
  static inline R gather(const float* base, const int32_t* idx) {
    return _mm256_i32gather_ps(base, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)), 4);
  }
  static inline void scatter(float* base, const int32_t* idx, uint32_t m, R a) {
    alignas(32) float t[8];
    _mm256_store_ps(t, a);
    for (int i = 0; i < 8; ++i)
      if ((m >> i) & 1u) base[idx[i]] = t[i];
  }
};
#endif

#ifdef __AVX512F__
static inline __m512 exp512(__m512 x) {
  const __m512 hi = _mm512_set1_ps(88.3762626647949f), lo = _mm512_set1_ps(-86.f);
  x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
  __m512 fx = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f));
  fx = _mm512_roundscale_ps(fx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500E-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507E-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073E-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894E-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201E-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.f)));
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

struct VecF16 {
  using T = float;
  static constexpr int W = 16;
  using R = __m512;
  static inline R load(const float* p) { return _mm512_loadu_ps(p); }
  static inline void store(float* p, R a) { _mm512_storeu_ps(p, a); }
  static inline R set1(float x) { return _mm512_set1_ps(x); }
  static inline R zero() { return _mm512_setzero_ps(); }
  static inline R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static inline R add(R a, R b) { return _mm512_add_ps(a, b); }
  static inline R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static inline R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static inline R max(R a, R b) { return _mm512_max_ps(a, b); }
  static inline R div(R a, R b) { return _mm512_div_ps(a, b); }
  static inline R exp(R a) { return exp512(a); }
  static inline R select(uint32_t m, R a, R b) { return _mm512_mask_blend_ps(static_cast<__mmask16>(m), b, a); }
  static inline R gather(const float* base, const int32_t* idx) {
    return _mm512_i32gather_ps(_mm512_loadu_si512(idx), base, 4);
  }
  static inline void scatter(float* base, const int32_t* idx, uint32_t m, R a) {
    _mm512_mask_i32scatter_ps(base, static_cast<__mmask16>(m), _mm512_loadu_si512(idx), a, 4);
  }
};

struct VecD8 {
  using T = double;
  static constexpr int W = 8;
  using R = __m512d;
  static inline R load(const double* p) { return _mm512_loadu_pd(p); }
  static inline void store(double* p, R a) { _mm512_storeu_pd(p, a); }
  static inline R set1(double x) { return _mm512_set1_pd(x); }
  static inline R zero() { return _mm512_setzero_pd(); }
  static inline R fmadd(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static inline R add(R a, R b) { return _mm512_add_pd(a, b); }
  static inline R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  static inline R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static inline R max(R a, R b) { return _mm512_max_pd(a, b); }
  static inline R div(R a, R b) { return _mm512_div_pd(a, b); }
  static inline R exp(R a) {  // fp64 keeps libm's exp (the oracle sweeps ask for 1e-10)
    alignas(64) double t[8];
    _mm512_store_pd(t, a);
    for (int i = 0; i < 8; ++i) t[i] = std::exp(t[i]);
    return _mm512_load_pd(t);
  }
  static inline R select(uint32_t m, R a, R b) { return _mm512_mask_blend_pd(static_cast<__mmask8>(m), b, a); }
  static inline R gather(const double* base, const int32_t* idx) {
    return _mm512_i32gather_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)), base, 8);
  }
  static inline void scatter(double* base, const int32_t* idx, uint32_t m, R a) {
    _mm512_mask_i32scatter_pd(base, static_cast<__mmask8>(m), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)),
                              a, 8);
  }
};

// 16x16 transpose in registers: r[i][j] -> r[j][i].
static inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
  }
}
#endif

// Packing of W rows (base + off[lane], C entries each) into lanes and back: dst[c * W + lane] = row[lane][c] * scale,
// and row[lane][c] = src[c * W + lane] * mul[lane] for the lanes in `valid`. Gathers/scatters by default; AVX-512
// fp32 transposes 16x16 blocks in registers (contiguous row loads and stores instead of per-element gathers).
template <class V>
inline void to_lanes(const typename V::T* base, const int32_t* off, int64_t C, typename V::R scale,
                     typename V::T* dst) {
  for (int64_t c = 0; c < C; ++c) V::store(dst + c * V::W, V::mul(V::gather(base + c, off), scale));
}

template <class V>
inline void from_lanes(const typename V::T* src, typename V::R mul, int64_t C, typename V::T* base,
                       const int32_t* off, uint32_t valid) {
  for (int64_t c = 0; c < C; ++c) V::scatter(base + c, off, valid, V::mul(V::load(src + c * V::W), mul));
}

#ifdef __AVX512F__
template <>
inline void to_lanes<VecF16>(const float* base, const int32_t* off, int64_t C, __m512 scale, float* dst) {
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    __m512 r[16];
    for (int l = 0; l < 16; ++l) r[l] = _mm512_loadu_ps(base + off[l] + c);
    transpose16(r);
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + (c + i) * 16, _mm512_mul_ps(r[i], scale));
  }
  for (; c < C; ++c) VecF16::store(dst + c * 16, _mm512_mul_ps(VecF16::gather(base + c, off), scale));
}

template <>
inline void from_lanes<VecF16>(const float* src, __m512 mul, int64_t C, float* base, const int32_t* off,
                               uint32_t valid) {
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_mul_ps(_mm512_loadu_ps(src + (c + i) * 16), mul);
    transpose16(r);
    for (int l = 0; l < 16; ++l)
      if ((valid >> l) & 1u) _mm512_storeu_ps(base + off[l] + c, r[l]);
  }
  for (; c < C; ++c) VecF16::scatter(base + c, off, valid, _mm512_mul_ps(VecF16::load(src + c * 16), mul));
}
#endif

}  // namespace visionattn_cpu
