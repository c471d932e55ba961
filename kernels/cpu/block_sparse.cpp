// Fused CPU block-sparse attention forward and backward (visionattn.ops.block_sparse semantics).
//
// query [B, Nq, Tq, H, D], key [B, Nk, Tk, H, D], value [B, Nk, Tk, H, Dv] contiguous fp32/fp64; index int64
// [B, H, Nq, topk] (validated in range by the Python wrapper); optional bias [B, H, Nq, topk] and key mask uint8
// [B, Nk, Tk]. Each query reads its keys through the index list, never gathering K/V: the listed blocks form one
// softmax, a block listed twice contributes its keys twice, masked keys are skipped, and a query with no key gets a
// zero output (lse -inf) and zero gradients. Forward threads over (batch, head, query block), backward over
// (batch, head) so that dK/dV are accumulated without races.
//
// Two paths: the row path (one query row at a time against row pointers of its keys: best for small key blocks,
// where per-call GEMM overheads dominate) and, for key blocks of >= gemm_min_tokens tokens, the GEMM path: a
// query block (or a chunk of its rows) x one listed key block is a dense strided GEMM read in place (lda = heads *
// D), through the BLAS that torch links (sgemm_/dgemm_, MKL on x86 wheels; a portable loop where torch exports
// none), with the softmax over all listed blocks of a row chunk held in a small per-thread buffer. A negative
// gemm_min_tokens takes the GEMM path everywhere with the portable GEMM (tests).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.h"
#include "lanes.h"  // exp512

namespace visionattn_cpu {
namespace {

struct BsaShape {
  int64_t B, Nq, Tq, H, D, Nk, Tk, Dv, K;
};

// Rows per chunk of the GEMM path: the logits of a chunk (rows x topk * Tk) stay within ~512 KiB (fp32).
inline int64_t gemm_rows(const BsaShape& s) {
  return std::min(s.Tq, std::max<int64_t>(8, (int64_t(1) << 17) / std::max<int64_t>(1, s.K * s.Tk)));
}

// Row stride of the GEMM path's buffers: topk * Tk rounded up to 16 (aligned rows for the BLAS).
inline int64_t gemm_ld(const BsaShape& s) { return (s.K * s.Tk + 15) / 16 * 16; }

// max of x[0 .. n) (-inf for n = 0): 8 independent accumulators (a single one waits on each max's latency).
template <typename T>
inline T row_max(const T* x, int64_t n) {
  T m[8];
  for (int i = 0; i < 8; ++i) m[i] = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int i = 0; i < 8; ++i) m[i] = std::max(m[i], x[j + i]);
  for (; j < n; ++j) m[0] = std::max(m[0], x[j]);
  for (int i = 1; i < 8; ++i) m[0] = std::max(m[0], m[i]);
  return m[0];
}

#ifdef __AVX512F__
template <>
inline float row_max<float>(const float* x, int64_t n) {
  __m512 a = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), b = a;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    a = _mm512_max_ps(a, _mm512_loadu_ps(x + j));
    b = _mm512_max_ps(b, _mm512_loadu_ps(x + j + 16));
  }
  for (; j + 16 <= n; j += 16) a = _mm512_max_ps(a, _mm512_loadu_ps(x + j));
  if (j < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - j)) - 1u);
    a = _mm512_mask_max_ps(a, k, a, _mm512_maskz_loadu_ps(k, x + j));
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(a, b));
}
#endif

// d[t] = p[t] * (d[t] - delta) over n entries, returns their sum (16 independent partial sums: vectorized).
template <typename T>
inline T ds_row(const T* __restrict p, T* __restrict d, int64_t n, T delta) {
  T acc[16] = {};
  int64_t t = 0;
  for (; t + 16 <= n; t += 16)
    for (int i = 0; i < 16; ++i) {
      d[t + i] = p[t + i] * (d[t + i] - delta);
      acc[i] += d[t + i];
    }
  for (; t < n; ++t) {
    d[t] = p[t] * (d[t] - delta);
    acc[0] += d[t];
  }
  T sum = 0;
  for (int i = 0; i < 16; ++i) sum += acc[i];
  return sum;
}

// x[j] = exp(x[j] - m), returns the sum: 16 lanes where the CPU has AVX-512, else common.h's exp_sub_sum.
template <typename T>
inline T exp_sub_sum_row(T* x, int64_t n, T m) {
  return exp_sub_sum<T>(x, n, m);
}

#ifdef __AVX512F__
template <>
inline float exp_sub_sum_row<float>(float* x, int64_t n, float m) {
  const __m512 mv = _mm512_set1_ps(m);
  __m512 acc = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), mv));
    _mm512_storeu_ps(x + j, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (j < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - j)) - 1u);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), mv));
    _mm512_mask_storeu_ps(x + j, k, e);
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(k, e));
  }
  return _mm512_reduce_add_ps(acc);
}
#endif

// Probabilities of masked keys set to exactly 0 (the SIMD exp of -inf gives ~1e-38, not 0).
template <typename T>
void zero_masked(const BsaShape& s, const int64_t* li, const uint8_t* kmask, int64_t b, int64_t rr, T* sc) {
  const int64_t L = gemm_ld(s);
  for (int64_t j = 0; j < s.K; ++j) {
    const uint8_t* km = kmask + (b * s.Nk + li[j]) * s.Tk;
    for (int64_t t = 0; t < s.Tk; ++t)
      if (!km[t])
        for (int64_t r = 0; r < rr; ++r) sc[r * L + j * s.Tk + t] = T(0);
  }
}

// BLAS that torch links (Fortran interface, LP64). Weak (ELF): where torch exports none, the portable loop below
// runs; elsewhere (no weak undefined symbols, e.g. Mach-O) the portable loop always.
#if defined(__linux__) && defined(__GNUC__)
#define VISIONATTN_WEAK_BLAS 1
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}
#endif

// Column-major C[m x n] = alpha * op(A) op(B) + beta * C (BLAS semantics: beta = 0 never reads C).
template <typename T>
void gemm_portable(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
                   int64_t ldb, T beta, T* c, int64_t ldc) {
  std::vector<T> col(m);
  for (int64_t j = 0; j < n; ++j) {
    std::fill(col.begin(), col.end(), T(0));
    for (int64_t p = 0; p < k; ++p) {
      const T bv = tb ? b[j + p * ldb] : b[p + j * ldb];
      if (ta) {
        for (int64_t i = 0; i < m; ++i) col[i] += a[p + i * lda] * bv;
      } else {
        const T* ac = a + p * lda;
        for (int64_t i = 0; i < m; ++i) col[i] += ac[i] * bv;
      }
    }
    T* cc = c + j * ldc;
    for (int64_t i = 0; i < m; ++i) cc[i] = alpha * col[i] + (beta == T(0) ? T(0) : beta * cc[i]);
  }
}

template <typename T>
void gemm(bool blas, bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
#ifdef VISIONATTN_WEAK_BLAS
  const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb), ildc = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>) {
    if (blas && sgemm_) return sgemm_(&cta, &ctb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
  } else {
    if (blas && dgemm_) return dgemm_(&cta, &ctb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
  }
#endif
  gemm_portable<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// keys of query block (b, h, n): row offsets (token index within batch b) and slot of each; returns the count
inline int64_t bsa_keys(const BsaShape& s, const int64_t* idx, const uint8_t* kmask, int64_t b, int64_t h, int64_t n,
                        int64_t* tok, int64_t* slot) {
  const int64_t* li = idx + ((b * s.H + h) * s.Nq + n) * s.K;
  int64_t c = 0;
  for (int64_t j = 0; j < s.K; ++j) {
    const int64_t m = li[j];
    const uint8_t* km = kmask ? kmask + (b * s.Nk + m) * s.Tk : nullptr;
    for (int64_t t = 0; t < s.Tk; ++t) {
      if (km && !km[t]) continue;
      tok[c] = m * s.Tk + t;
      slot[c] = j;
      ++c;
    }
  }
  return c;
}

template <typename T>
void bsa_fwd_kernel(const BsaShape& s, const T* q, const T* k, const T* v, const int64_t* idx, const T* bias,
                    const uint8_t* kmask, T scale, T* out, T* lse) {
  const int64_t H = s.H, D = s.D, Dv = s.Dv;
  at::parallel_for(0, s.B * H * s.Nq, 1, [&](int64_t begin, int64_t end) {
    const int64_t W = s.K * s.Tk;
    std::vector<int64_t> tok(W), slot(W);
    std::vector<const T*> krow(W), vrow(W);
    std::vector<T> sc(W), acc(Dv), kb(W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task % s.Nq, h = (task / s.Nq) % H, b = task / (s.Nq * H);
      const int64_t m = bsa_keys(s, idx, kmask, b, h, n, tok.data(), slot.data());
      const T* bl = bias ? bias + ((b * H + h) * s.Nq + n) * s.K : nullptr;
      for (int64_t j = 0; j < m; ++j) {
        krow[j] = k + ((b * s.Nk * s.Tk + tok[j]) * H + h) * D;
        vrow[j] = v + ((b * s.Nk * s.Tk + tok[j]) * H + h) * Dv;
        kb[j] = bl ? bl[slot[j]] : T(0);
      }
      for (int64_t t = 0; t < s.Tq; ++t) {
        const int64_t row = ((b * s.Nq + n) * s.Tq + t) * H + h;
        T* o = out + row * Dv;
        T* l = lse + ((b * H + h) * s.Nq + n) * s.Tq + t;
        if (m == 0) {
          std::fill(o, o + Dv, T(0));
          *l = -std::numeric_limits<T>::infinity();
          continue;
        }
        dots<T>(q + row * D, krow.data(), m, D, sc.data());
        for (int64_t j = 0; j < m; ++j) sc[j] = sc[j] * scale + kb[j];
        const T mx = row_max<T>(sc.data(), m);
        const T sum = exp_sub_sum_row<T>(sc.data(), m, mx);
        weighted_sum<T>(sc.data(), vrow.data(), m, Dv, T(1) / sum, acc.data(), o);
        *l = mx + std::log(sum);
      }
    }
  });
}

template <typename T>
void bsa_bwd_kernel(const BsaShape& s, const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                    const int64_t* idx, const T* bias, const uint8_t* kmask, T scale, T* dq, T* dk, T* dv,
                    T* dbias) {
  const int64_t H = s.H, D = s.D, Dv = s.Dv;
  at::parallel_for(0, s.B * H, 1, [&](int64_t begin, int64_t end) {
    const int64_t W = s.K * s.Tk;
    std::vector<int64_t> tok(W), slot(W);
    std::vector<const T*> krow(W), vrow(W);
    std::vector<T*> dkrow(W), dvrow(W);
    std::vector<T> sc(W), dp(W), kb(W), dqa(D), dsl(s.K);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task % H, b = task / H;
      for (int64_t n = 0; n < s.Nq; ++n) {
        const int64_t m = bsa_keys(s, idx, kmask, b, h, n, tok.data(), slot.data());
        const T* bl = bias ? bias + ((b * H + h) * s.Nq + n) * s.K : nullptr;
        T* dbl = dbias + ((b * H + h) * s.Nq + n) * s.K;
        std::fill(dsl.begin(), dsl.end(), T(0));
        for (int64_t j = 0; j < m; ++j) {
          const int64_t r = (b * s.Nk * s.Tk + tok[j]) * H + h;
          krow[j] = k + r * D;
          vrow[j] = v + r * Dv;
          dkrow[j] = dk + r * D;
          dvrow[j] = dv + r * Dv;
          kb[j] = bl ? bl[slot[j]] : T(0);
        }
        for (int64_t t = 0; t < s.Tq; ++t) {
          const int64_t row = ((b * s.Nq + n) * s.Tq + t) * H + h;
          T* dqr = dq + row * D;
          if (m == 0) {
            std::fill(dqr, dqr + D, T(0));
            continue;
          }
          const T* qr = q + row * D;
          const T* gor = dout + row * Dv;
          const T l = lse[((b * H + h) * s.Nq + n) * s.Tq + t];
          const T di = dot<T>(gor, out + row * Dv, Dv);
          dots<T>(qr, krow.data(), m, D, sc.data());
          dots<T>(gor, vrow.data(), m, Dv, dp.data());
          for (int64_t j = 0; j < m; ++j) sc[j] = sc[j] * scale + kb[j] - l;
          exp_sub_sum_row<T>(sc.data(), m, T(0));
          std::fill(dqa.begin(), dqa.end(), T(0));
          for (int64_t j = 0; j < m; ++j) {
            const T p = sc[j], ds = p * (dp[j] - di);
            axpy<T>(dvrow[j], p, gor, Dv);
            axpy<T>(dkrow[j], ds * scale, qr, D);
            axpy<T>(dqa.data(), ds * scale, krow[j], D);
            dsl[slot[j]] += ds;
          }
          std::copy(dqa.begin(), dqa.end(), dqr);
        }
        std::copy(dsl.begin(), dsl.end(), dbl);
      }
    }
  });
}

// Logits of rows r0 .. r0 + rr of query block (b, h, n) against every listed block: sc[rr][K * Tk] (scaled, slot
// bias added, masked keys -inf).
template <typename T>
void gemm_logits(const BsaShape& s, bool blas, const T* q, const T* k, const int64_t* li, const T* bl,
                 const uint8_t* kmask, T scale, int64_t b, int64_t h, int64_t n, int64_t r0, int64_t rr, T* sc) {
  const int64_t H = s.H, D = s.D, L = gemm_ld(s);
  const T* qp = q + (((b * s.Nq + n) * s.Tq + r0) * H + h) * D;
  for (int64_t j = 0; j < s.K; ++j) {
    const int64_t m = li[j];
    // column-major: S^T[Tk x rr] (ld L) = K_m[D x Tk]^T Q^T[D x rr]
    gemm<T>(blas, true, false, s.Tk, rr, D, scale, k + ((b * s.Nk + m) * s.Tk * H + h) * D, H * D, qp, H * D, T(0),
            sc + j * s.Tk, L);
    const T bj = bl ? bl[j] : T(0);
    const uint8_t* km = kmask ? kmask + (b * s.Nk + m) * s.Tk : nullptr;
    if (bj == T(0) && !km) continue;
    for (int64_t r = 0; r < rr; ++r) {
      T* row = sc + r * L + j * s.Tk;
      for (int64_t t = 0; t < s.Tk; ++t) row[t] = km && !km[t] ? -std::numeric_limits<T>::infinity() : row[t] + bj;
    }
  }
}

template <typename T>
void bsa_fwd_gemm(const BsaShape& s, bool blas, const T* q, const T* k, const T* v, const int64_t* idx, const T* bias,
                  const uint8_t* kmask, T scale, T* out, T* lse) {
  const int64_t H = s.H, Dv = s.Dv, W = s.K * s.Tk, L = gemm_ld(s), R = gemm_rows(s);
  at::parallel_for(0, s.B * H * s.Nq, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> sc(R * L), inv(R);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task % s.Nq, h = (task / s.Nq) % H, b = task / (s.Nq * H);
      const int64_t* li = idx + ((b * H + h) * s.Nq + n) * s.K;
      const T* bl = bias ? bias + ((b * H + h) * s.Nq + n) * s.K : nullptr;
      for (int64_t r0 = 0; r0 < s.Tq; r0 += R) {
        const int64_t rr = std::min(R, s.Tq - r0);
        gemm_logits<T>(s, blas, q, k, li, bl, kmask, scale, b, h, n, r0, rr, sc.data());
        for (int64_t r = 0; r < rr; ++r) {  // rows of probabilities, normalized
          T* row = sc.data() + r * L;
          T* l = lse + ((b * H + h) * s.Nq + n) * s.Tq + r0 + r;
          const T mx = row_max<T>(row, W);
          if (mx == -std::numeric_limits<T>::infinity()) {
            std::fill(row, row + W, T(0));
            inv[r] = T(0);
            *l = mx;
            continue;
          }
          const T sum = exp_sub_sum_row<T>(row, W, mx);
          inv[r] = T(1) / sum;
          *l = mx + std::log(sum);
        }
        if (kmask) zero_masked<T>(s, li, kmask, b, rr, sc.data());
        T* op = out + (((b * s.Nq + n) * s.Tq + r0) * H + h) * Dv;
        for (int64_t j = 0; j < s.K; ++j) {
          // column-major: O^T[Dv x rr] (+)= V_m^T[Dv x Tk] P^T[Tk x rr]
          gemm<T>(blas, false, false, Dv, rr, s.Tk, T(1), v + ((b * s.Nk + li[j]) * s.Tk * H + h) * Dv, H * Dv,
                  sc.data() + j * s.Tk, L, j ? T(1) : T(0), op, H * Dv);
        }
        for (int64_t r = 0; r < rr; ++r)  // normalized here: Dv products per row instead of topk * Tk
          for (int64_t i = 0; i < Dv; ++i) op[r * H * Dv + i] *= inv[r];
      }
    }
  });
}

template <typename T>
void bsa_bwd_gemm(const BsaShape& s, bool blas, const T* dout, const T* q, const T* k, const T* v, const T* out,
                  const T* lse, const int64_t* idx, const T* bias, const uint8_t* kmask, T scale, T* dq, T* dk, T* dv,
                  T* dbias) {
  const int64_t H = s.H, D = s.D, Dv = s.Dv, W = s.K * s.Tk, L = gemm_ld(s), R = gemm_rows(s);
  at::parallel_for(0, s.B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> p(R * L), ds(R * L), delta(R);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task % H, b = task / H;
      for (int64_t n = 0; n < s.Nq; ++n) {
        const int64_t* li = idx + ((b * H + h) * s.Nq + n) * s.K;
        const T* bl = bias ? bias + ((b * H + h) * s.Nq + n) * s.K : nullptr;
        T* dbl = dbias + ((b * H + h) * s.Nq + n) * s.K;
        std::fill(dbl, dbl + s.K, T(0));
        for (int64_t r0 = 0; r0 < s.Tq; r0 += R) {
          const int64_t rr = std::min(R, s.Tq - r0);
          const int64_t row0 = ((b * s.Nq + n) * s.Tq + r0) * H + h;
          const T *qp = q + row0 * D, *gp = dout + row0 * Dv;
          gemm_logits<T>(s, blas, q, k, li, bl, kmask, scale, b, h, n, r0, rr, p.data());
          for (int64_t r = 0; r < rr; ++r) {
            T* row = p.data() + r * L;
            const T l = lse[((b * H + h) * s.Nq + n) * s.Tq + r0 + r];
            if (l == -std::numeric_limits<T>::infinity()) {
              std::fill(row, row + W, T(0));
            } else {
              exp_sub_sum_row<T>(row, W, l);
            }
            delta[r] = dot<T>(gp + r * H * Dv, out + (row0 + r * H) * Dv, Dv);
          }
          if (kmask) zero_masked<T>(s, li, kmask, b, rr, p.data());
          for (int64_t j = 0; j < s.K; ++j) {
            // column-major: dP^T[Tk x rr] = V_m[Dv x Tk]^T dO^T[Dv x rr]
            gemm<T>(blas, true, false, s.Tk, rr, Dv, T(1), v + ((b * s.Nk + li[j]) * s.Tk * H + h) * Dv, H * Dv, gp,
                    H * Dv, T(0), ds.data() + j * s.Tk, L);
          }
          for (int64_t r = 0; r < rr; ++r) {
            T *dr = ds.data() + r * L, *pr = p.data() + r * L;
            for (int64_t j = 0; j < s.K; ++j) dbl[j] += ds_row<T>(pr + j * s.Tk, dr + j * s.Tk, s.Tk, delta[r]);
          }
          T* dqp = dq + row0 * D;
          for (int64_t j = 0; j < s.K; ++j) {
            const int64_t off = (b * s.Nk + li[j]) * s.Tk * H + h;
            // dV_m^T[Dv x Tk] += dO^T[Dv x rr] P[rr x Tk]; dK_m^T[D x Tk] += scale Q^T[D x rr] dS[rr x Tk]
            gemm<T>(blas, false, true, Dv, s.Tk, rr, T(1), gp, H * Dv, p.data() + j * s.Tk, L, T(1), dv + off * Dv,
                    H * Dv);
            gemm<T>(blas, false, true, D, s.Tk, rr, scale, qp, H * D, ds.data() + j * s.Tk, L, T(1), dk + off * D,
                    H * D);
            // dQ^T[D x rr] (+)= scale K_m^T[D x Tk] dS^T[Tk x rr]
            gemm<T>(blas, false, false, D, rr, s.Tk, scale, k + off * D, H * D, ds.data() + j * s.Tk, L,
                    j ? T(1) : T(0), dqp, H * D);
          }
        }
      }
    }
  });
}

template <typename T>
void bsa_bwd_rows(const BsaShape& s, bool, const T* dout, const T* q, const T* k, const T* v, const T* out,
                  const T* lse, const int64_t* idx, const T* bias, const uint8_t* kmask, T scale, T* dq, T* dk, T* dv,
                  T* dbias) {
  bsa_bwd_kernel<T>(s, dout, q, k, v, out, lse, idx, bias, kmask, scale, dq, dk, dv, dbias);
}

BsaShape bsa_shape(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& idx) {
  TORCH_CHECK(q.dim() == 5 && k.dim() == 5 && v.dim() == 5 && idx.dim() == 4, "bsa_cpu: ranks");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && idx.is_contiguous(),
              "bsa_cpu: inputs must be contiguous");
  TORCH_CHECK(idx.scalar_type() == torch::kInt64, "bsa_cpu: index must be int64");
  BsaShape s{q.size(0), q.size(1), q.size(2), q.size(3), q.size(4), k.size(1), k.size(2), v.size(4), idx.size(3)};
  TORCH_CHECK(idx.size(0) == s.B && idx.size(1) == s.H && idx.size(2) == s.Nq, "bsa_cpu: index shape");
  return s;
}

std::tuple<torch::Tensor, torch::Tensor> bsa_fwd(const torch::Tensor& q, const torch::Tensor& k,
                                                 const torch::Tensor& v, const torch::Tensor& idx,
                                                 const c10::optional<torch::Tensor>& bias,
                                                 const c10::optional<torch::Tensor>& key_mask, double scale,
                                                 int64_t gemm_min_tokens) {
  BsaShape s = bsa_shape(q, k, v, idx);
  const bool use_gemm = gemm_min_tokens < 0 || s.Tk >= gemm_min_tokens, blas = gemm_min_tokens >= 0;
  auto out = torch::empty({s.B, s.Nq, s.Tq, s.H, s.Dv}, q.options());
  auto lse = torch::empty({s.B, s.H, s.Nq, s.Tq}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "bsa_cpu_fwd", [&] {
    const scalar_t* b = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    const uint8_t* km = key_mask.has_value() ? key_mask->data_ptr<uint8_t>() : nullptr;
    if (use_gemm) {
      bsa_fwd_gemm<scalar_t>(s, blas, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                             idx.data_ptr<int64_t>(), b, km, static_cast<scalar_t>(scale), out.data_ptr<scalar_t>(),
                             lse.data_ptr<scalar_t>());
    } else {
      bsa_fwd_kernel<scalar_t>(s, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                               idx.data_ptr<int64_t>(), b, km, static_cast<scalar_t>(scale), out.data_ptr<scalar_t>(),
                               lse.data_ptr<scalar_t>());
    }
  });
  return {out, lse};
}

std::vector<torch::Tensor> bsa_bwd(const torch::Tensor& dout, const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& out, const torch::Tensor& lse,
                                   const torch::Tensor& idx, const c10::optional<torch::Tensor>& bias,
                                   const c10::optional<torch::Tensor>& key_mask, double scale,
                                   int64_t gemm_min_tokens) {
  BsaShape s = bsa_shape(q, k, v, idx);
  const bool use_gemm = gemm_min_tokens < 0 || s.Tk >= gemm_min_tokens, blas = gemm_min_tokens >= 0;
  TORCH_CHECK(dout.is_contiguous() && out.is_contiguous() && lse.is_contiguous(), "bsa_cpu: contiguous");
  auto dq = torch::empty_like(q);
  auto dk = torch::zeros_like(k);
  auto dv = torch::zeros_like(v);
  auto dbias = torch::empty({s.B, s.H, s.Nq, s.K}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "bsa_cpu_bwd", [&] {
    const scalar_t* b = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    const uint8_t* km = key_mask.has_value() ? key_mask->data_ptr<uint8_t>() : nullptr;
    auto kernel = use_gemm ? bsa_bwd_gemm<scalar_t> : bsa_bwd_rows<scalar_t>;
    kernel(s, blas, dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
           out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), b, km,
           static_cast<scalar_t>(scale), dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
           dbias.data_ptr<scalar_t>());
  });
  return {dq, dk, dv, dbias};
}

}  // namespace
}  // namespace visionattn_cpu

TORCH_LIBRARY_FRAGMENT(visionattn_cpu, m) {
  m.def(
      "bsa_fwd(Tensor q, Tensor k, Tensor v, Tensor index, Tensor? bias, Tensor? key_mask, float scale, "
      "int gemm_min_tokens) -> (Tensor, Tensor)");
  m.def(
      "bsa_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor index, Tensor? bias, "
      "Tensor? key_mask, float scale, int gemm_min_tokens) -> Tensor[]");
  m.impl("bsa_fwd", c10::DispatchKey::CPU, TORCH_FN(visionattn_cpu::bsa_fwd));
  m.impl("bsa_bwd", c10::DispatchKey::CPU, TORCH_FN(visionattn_cpu::bsa_bwd));
}
