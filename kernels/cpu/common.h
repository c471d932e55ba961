// Shared SIMD helpers of the visionattn CPU kernels: batched dot products, axpy and exp over float/double rows.
// AVX2/FMA (and AVX-512F) paths for float, portable loops elsewhere (auto-vectorized at -O3).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace visionattn_cpu {

// out[j] = dot(x, rows[j]) for j < n, rows of length d.
template <typename T>
inline void dots(const T* x, const T* const* rows, int64_t n, int64_t d, T* out) {
  for (int64_t j = 0; j < n; ++j) {
    const T* r = rows[j];
    T acc = 0;
    for (int64_t i = 0; i < d; ++i) acc += x[i] * r[i];
    out[j] = acc;
  }
}

#ifdef __AVX2__
static inline __m256 hsum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                             __m256 a7) {
  __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  __m256 t2 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31));
}

template <>
inline void dots<float>(const float* x, const float* const* rows, int64_t n, int64_t d, float* out) {
  if (d % 8 != 0) {
    for (int64_t j = 0; j < n; ++j) {
      const float* r = rows[j];
      float acc = 0.f;
      for (int64_t i = 0; i < d; ++i) acc += x[i] * r[i];
      out[j] = acc;
    }
    return;
  }
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const float *r0 = rows[j], *r1 = rows[j + 1], *r2 = rows[j + 2], *r3 = rows[j + 3];
    const float *r4 = rows[j + 4], *r5 = rows[j + 5], *r6 = rows[j + 6], *r7 = rows[j + 7];
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t i = 0; i < d; i += 8) {
      __m256 xv = _mm256_loadu_ps(x + i);
      a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r0 + i), a0);
      a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r1 + i), a1);
      a2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r2 + i), a2);
      a3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r3 + i), a3);
      a4 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r4 + i), a4);
      a5 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r5 + i), a5);
      a6 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r6 + i), a6);
      a7 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r7 + i), a7);
    }
    _mm256_storeu_ps(out + j, hsum8x8(a0, a1, a2, a3, a4, a5, a6, a7));
  }
  for (; j < n; ++j) {
    const float* r = rows[j];
    __m256 a = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(r + i), a);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    out[j] = _mm_cvtss_f32(s);
  }
}

// Cephes-style exp on 8 floats (relative error ~2 ulp); inputs are clamped to -86 so that results stay normal
// (exp of masked -inf lanes would otherwise make denormals, a microcode assist each).
static inline __m256 exp256(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-86.f);
  x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#endif

// x[j] = exp(x[j] - m); returns the sum.
template <typename T>
inline T exp_sub_sum(T* x, int64_t n, T m) {
  T s = 0;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - m);
    s += x[j];
  }
  return s;
}

#ifdef __AVX2__
template <>
inline float exp_sub_sum<float>(float* x, int64_t n, float m) {
  __m256 mv = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
    _mm256_storeu_ps(x + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  float buf[8];
  _mm256_storeu_ps(buf, acc);
  float s = buf[0] + buf[1] + buf[2] + buf[3] + buf[4] + buf[5] + buf[6] + buf[7];
  for (; j < n; ++j) {
    x[j] = std::exp(x[j] - m);
    s += x[j];
  }
  return s;
}
#endif

// y += a * x over d entries.
template <typename T>
inline void axpy(T* __restrict y, T a, const T* __restrict x, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += a * x[i];
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t d) {
  T acc = 0;
  for (int64_t i = 0; i < d; ++i) acc += a[i] * b[i];
  return acc;
}

// out = scale * sum_j p[j] * rows[j] over d entries.
template <typename T>
inline void weighted_sum(const T* p, const T* const* rows, int64_t m, int64_t d, T scale, T* acc, T* out) {
  for (int64_t i = 0; i < d; ++i) acc[i] = 0;
  for (int64_t j = 0; j < m; ++j) axpy<T>(acc, p[j], rows[j], d);
  for (int64_t i = 0; i < d; ++i) out[i] = acc[i] * scale;
}

#ifdef __AVX2__
// accumulators held in registers: d = 8 * NV
template <int NV>
inline void weighted_sum_avx(const float* p, const float* const* rows, int64_t m, float scale, float* out) {
  __m256 acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t j = 0; j < m; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    const float* r = rows[j];
    for (int i = 0; i < NV; ++i) acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(r + 8 * i), acc[i]);
  }
  const __m256 sv = _mm256_set1_ps(scale);
  for (int i = 0; i < NV; ++i) _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(acc[i], sv));
}

template <>
inline void weighted_sum<float>(const float* p, const float* const* rows, int64_t m, int64_t d, float scale,
                                float* acc, float* out) {
  switch (d) {
    case 8: return weighted_sum_avx<1>(p, rows, m, scale, out);
    case 16: return weighted_sum_avx<2>(p, rows, m, scale, out);
    case 24: return weighted_sum_avx<3>(p, rows, m, scale, out);
    case 32: return weighted_sum_avx<4>(p, rows, m, scale, out);
    case 48: return weighted_sum_avx<6>(p, rows, m, scale, out);
    case 64: return weighted_sum_avx<8>(p, rows, m, scale, out);
    default: break;
  }
  for (int64_t i = 0; i < d; ++i) acc[i] = 0;
  for (int64_t j = 0; j < m; ++j) axpy<float>(acc, p[j], rows[j], d);
  for (int64_t i = 0; i < d; ++i) out[i] = acc[i] * scale;
}
#endif

}  // namespace visionattn_cpu
