/* visionattn CPU kernels: per-row top-k (sparse) attention forward and exact row-wise top-k selection.
 *
 * Plain C99 with OpenMP (or pthreads without it), compiled on first use by visionattn/ops/cpu/__init__.py and called
 * through ctypes (which releases the GIL). Written for the compiler's vectorizer (-O3 -march=native), with an AVX2 +
 * FMA row kernel for float32 where the CPU has it; rows are split over threads in contiguous ranges.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* exp for x <= 0 (softmax after the row max is subtracted), Cephes' expf: range reduction by ln 2, degree-6
 * polynomial, within 2 ulp of expf; vectorizes inside an omp simd loop. Underflows to 0 below -87.3. */
static inline float va_expf(float x) {
    const float lo = -87.33654475f;
    float xc = x < lo ? lo : x;
    float fx = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - fx * 0.693359375f + fx * 2.12194440e-4f;
    float z = r * r;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1.0f;
    union { int32_t i; float f; } p;
    p.i = ((int32_t)fx + 127) << 23;
    return x < lo ? 0.0f : y * p.f;
}

static inline double va_exp(double x) { return exp(x); }

/* Row kernels: the softmax attention of one query qi over n key rows kr[j] and value rows vr[j]; s is scratch of n
 * entries and ends holding the probabilities; o [Dv] receives the output. */
#define DEFINE_ROW_GENERIC(T, SUF, SOFTMAX)                                                                           \
static void row_##SUF(const T *qi, const T *const *kr, const T *const *vr, int64_t n, int64_t D, int64_t Dv,          \
                      T scale, T *s, T *o) {                                                                          \
    int64_t j = 0;                                                                                                    \
    for (; j + 4 <= n; j += 4) {  /* four dot products at once */                                                     \
        const T *k0 = kr[j], *k1 = kr[j + 1], *k2 = kr[j + 2], *k3 = kr[j + 3];                                       \
        T a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                                                             \
        _Pragma("omp simd reduction(+:a0,a1,a2,a3)")                                                                  \
        for (int64_t d = 0; d < D; ++d) {                                                                             \
            a0 += qi[d] * k0[d]; a1 += qi[d] * k1[d]; a2 += qi[d] * k2[d]; a3 += qi[d] * k3[d];                       \
        }                                                                                                             \
        s[j] = a0 * scale; s[j + 1] = a1 * scale; s[j + 2] = a2 * scale; s[j + 3] = a3 * scale;                       \
    }                                                                                                                 \
    for (; j < n; ++j) {                                                                                              \
        const T *k0 = kr[j];                                                                                          \
        T a0 = 0;                                                                                                     \
        _Pragma("omp simd reduction(+:a0)")                                                                           \
        for (int64_t d = 0; d < D; ++d) a0 += qi[d] * k0[d];                                                          \
        s[j] = a0 * scale;                                                                                            \
    }                                                                                                                 \
    SOFTMAX(s, n);                                                                                                    \
    for (int64_t d = 0; d < Dv; ++d) o[d] = 0;                                                                        \
    for (j = 0; j + 4 <= n; j += 4) {                                                                                 \
        const T *v0 = vr[j], *v1 = vr[j + 1], *v2 = vr[j + 2], *v3 = vr[j + 3];                                       \
        const T p0 = s[j], p1 = s[j + 1], p2 = s[j + 2], p3 = s[j + 3];                                               \
        _Pragma("omp simd")                                                                                           \
        for (int64_t d = 0; d < Dv; ++d) o[d] += p0 * v0[d] + p1 * v1[d] + p2 * v2[d] + p3 * v3[d];                   \
    }                                                                                                                 \
    for (; j < n; ++j) {                                                                                              \
        const T *v0 = vr[j];                                                                                          \
        const T p0 = s[j];                                                                                            \
        _Pragma("omp simd")                                                                                           \
        for (int64_t d = 0; d < Dv; ++d) o[d] += p0 * v0[d];                                                          \
    }                                                                                                                 \
}

#define DEFINE_SOFTMAX(T, SUF, EXP)                                                                                   \
static void softmax_##SUF(T *s, int64_t n) {                                                                          \
    T m = s[0];                                                                                                       \
    _Pragma("omp simd reduction(max:m)")                                                                              \
    for (int64_t j = 1; j < n; ++j) m = s[j] > m ? s[j] : m;                                                          \
    T sum = 0;                                                                                                        \
    _Pragma("omp simd reduction(+:sum)")                                                                              \
    for (int64_t j = 0; j < n; ++j) { s[j] = EXP(s[j] - m); sum += s[j]; }                                            \
    const T inv = (T)1 / sum;                                                                                         \
    for (int64_t j = 0; j < n; ++j) s[j] *= inv;                                                                      \
}

DEFINE_SOFTMAX(float, f32, va_expf)
DEFINE_SOFTMAX(double, f64, va_exp)
DEFINE_ROW_GENERIC(float, f32_generic, softmax_f32)
DEFINE_ROW_GENERIC(double, f64, softmax_f64)

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* The sums of each of eight vectors, as one vector. */
static inline __m256 hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

static inline float hsum1(__m256 a) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* AVX2 + FMA, D and Dv multiples of 8: eight keys per step share each load of q (one register-blocked 1 x 8 product,
 * summed across lanes by one hadd tree); the output is accumulated in registers, 32 columns per pass over the keys (64
 * is no faster). The rows of K and V come from L2 (a head of DeiT-S is 2 x 50 KB): at N = 197 the kernel streams them
 * at about the L2 bandwidth; copying a head to contiguous rows first was slower. */
static void row_f32(const float *qi, const float *const *kr, const float *const *vr, int64_t n, int64_t D, int64_t Dv,
                    float scale, float *s, float *o) {
    if (D % 8 || Dv % 8) {
        row_f32_generic(qi, kr, vr, n, D, Dv, scale, s, o);
        return;
    }
    const __m256 vscale = _mm256_set1_ps(scale);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        const float *const *k = kr + j;
        for (int64_t d = 0; d < D; d += 8) {
            const __m256 x = _mm256_loadu_ps(qi + d);
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[0] + d), a0);
            a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[1] + d), a1);
            a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[2] + d), a2);
            a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[3] + d), a3);
            a4 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[4] + d), a4);
            a5 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[5] + d), a5);
            a6 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[6] + d), a6);
            a7 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[7] + d), a7);
        }
        _mm256_storeu_ps(s + j, _mm256_mul_ps(hsum8(a0, a1, a2, a3, a4, a5, a6, a7), vscale));
    }
    for (; j < n; ++j) {
        __m256 a0 = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + d), _mm256_loadu_ps(kr[j] + d), a0);
        s[j] = hsum1(a0) * scale;
    }
    softmax_f32(s, n);
    int64_t c = 0;
    for (; c + 32 <= Dv; c += 32) {
        __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0;
        for (j = 0; j < n; ++j) {
            const __m256 p = _mm256_broadcast_ss(s + j);
            const float *v = vr[j] + c;
            o0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v), o0);
            o1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8), o1);
            o2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 16), o2);
            o3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 24), o3);
        }
        _mm256_storeu_ps(o + c, o0);
        _mm256_storeu_ps(o + c + 8, o1);
        _mm256_storeu_ps(o + c + 16, o2);
        _mm256_storeu_ps(o + c + 24, o3);
    }
    for (; c < Dv; c += 8) {
        __m256 o0 = _mm256_setzero_ps();
        for (j = 0; j < n; ++j) o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(s + j), _mm256_loadu_ps(vr[j] + c), o0);
        _mm256_storeu_ps(o + c, o0);
    }
}
#else
#define row_f32 row_f32_generic
#endif

typedef struct {
    int64_t row0, row1;  /* rows [row0, row1) of the flattened (b, h, i) order: one head's keys stay in cache */
    const void *q, *k, *v;
    const int64_t *index;
    void *out, *probs;
    int64_t B, Nq, Nk, H, D, Dv, K, nd;
    int64_t qs[3], ks[3], vs[3];  /* element strides of the batch, token and head dims (the channel stride is 1) */
    double scale;
} attn_args;

/* Rows (b, h, i): query i of head h attends to the K keys index[b, h, i - nd, :] (i >= nd) or to all Nk keys (i < nd).
 * out [B, Nq, H, Dv] contiguous; probs [B, Nq - nd, H, K] contiguous or NULL. */
#define DEFINE_ATTN(T, SUF)                                                                                           \
static void *attn_rows_##SUF(void *arg) {                                                                             \
    const attn_args *a = (const attn_args *)arg;                                                                      \
    const T *q = (const T *)a->q, *k = (const T *)a->k, *v = (const T *)a->v;                                         \
    T *out = (T *)a->out, *probs = (T *)a->probs;                                                                     \
    const int64_t H = a->H, Nq = a->Nq, K = a->K, nd = a->nd, Nr = Nq - nd;                                           \
    const int64_t nmax = a->Nk > K ? a->Nk : K;                                                                       \
    T *s = (T *)malloc(sizeof(T) * (size_t)nmax);                                                                     \
    const T **kr = (const T **)malloc(sizeof(T *) * (size_t)nmax * 2);                                                \
    if (!s || !kr) { free(s); free(kr); return (void *)1; }                                                           \
    const T **vr = kr + nmax;                                                                                         \
    for (int64_t r = a->row0; r < a->row1; ++r) {                                                                     \
        const int64_t i = r % Nq, bh = r / Nq, h = bh % H, b = bh / H;                                                \
        const int64_t *idx = i >= nd ? a->index + (bh * Nr + (i - nd)) * K : NULL;                                    \
        const int64_t n = idx ? K : a->Nk;                                                                            \
        const T *kb = k + b * a->ks[0] + h * a->ks[2], *vb = v + b * a->vs[0] + h * a->vs[2];                         \
        for (int64_t j = 0; j < n; ++j) {                                                                             \
            const int64_t t = idx ? idx[j] : j;                                                                       \
            if (t < 0 || t >= a->Nk) { free(s); free(kr); return (void *)2; }                                         \
            kr[j] = kb + t * a->ks[1];                                                                                \
            vr[j] = vb + t * a->vs[1];                                                                                \
        }                                                                                                             \
        row_##SUF(q + b * a->qs[0] + i * a->qs[1] + h * a->qs[2], kr, vr, n, a->D, a->Dv, (T)a->scale, s,             \
                  out + ((b * Nq + i) * H + h) * a->Dv);                                                              \
        if (probs && idx) memcpy(probs + ((b * Nr + (i - nd)) * H + h) * K, s, sizeof(T) * (size_t)K);                \
    }                                                                                                                 \
    free(s); free(kr);                                                                                                \
    return NULL;                                                                                                      \
}

DEFINE_ATTN(float, f32)
DEFINE_ATTN(double, f64)

/* Runs fn over rows [0, rows) split into nthreads contiguous ranges, each on a copy of the argument struct (of size
 * bytes, starting with row0, row1). With OpenMP the ranges run on the OpenMP thread pool: loaded after torch, this
 * library binds to the libgomp torch already loaded (same soname), so it shares torch's pool instead of competing
 * with its spinning threads (separate threads ran 1.6x slower right after a torch op on 2 cores). Without OpenMP,
 * pthreads (the calling thread takes the first range). Returns 0, or the nonzero code a range returned: 1 out of
 * memory, 2 an index out of range. */
static int run_split(void *(*fn)(void *), const void *base, size_t size, int64_t rows, int nthreads) {
    if (nthreads > rows) nthreads = (int)rows;
    if (nthreads < 1) nthreads = 1;
    char *args = (char *)malloc(size * (size_t)nthreads);
    if (!args) return 1;
    for (int t = 0; t < nthreads; ++t) {
        int64_t *range = (int64_t *)(args + size * (size_t)t);
        memcpy(range, base, size);
        range[0] = rows * t / nthreads;
        range[1] = rows * (t + 1) / nthreads;
    }
    intptr_t err = 0;
    if (nthreads == 1) {  /* no team at all: also safe in forked workers, where libgomp's pool is gone */
        err = (intptr_t)fn(args);
        free(args);
        return (int)err;
    }
#ifdef _OPENMP
    _Pragma("omp parallel for num_threads(nthreads) schedule(static, 1)")
    for (int t = 0; t < nthreads; ++t) {
        const intptr_t ret = (intptr_t)fn(args + size * (size_t)t);
        if (ret) {
            _Pragma("omp critical")
            err = ret;
        }
    }
#else
    pthread_t *tid = (pthread_t *)malloc(sizeof(pthread_t) * (size_t)nthreads);
    int *started = (int *)calloc((size_t)nthreads, sizeof(int));
    if (!tid || !started) { free(args); free(tid); free(started); return 1; }
    intptr_t ret;
    for (int t = 1; t < nthreads; ++t)
        started[t] = pthread_create(&tid[t], NULL, fn, args + size * (size_t)t) == 0;
    for (int t = 1; t < nthreads; ++t)
        if (!started[t] && (ret = (intptr_t)fn(args + size * (size_t)t))) err = ret;  /* no thread: run it here */
    if ((ret = (intptr_t)fn(args))) err = ret;
    for (int t = 1; t < nthreads; ++t) {
        void *r = NULL;
        if (started[t] && pthread_join(tid[t], &r) != 0) err = 1;
        if (r) err = (intptr_t)r;
    }
    free(tid); free(started);
#endif
    free(args);
    return (int)err;
}

#define DEFINE_ATTN_ENTRY(T, SUF)                                                                                     \
int va_topk_attn_fwd_##SUF(const T *q, const T *k, const T *v, const int64_t *index, T *out, T *probs,                \
                           int64_t B, int64_t Nq, int64_t Nk, int64_t H, int64_t D, int64_t Dv, int64_t K,            \
                           int64_t nd, const int64_t *qs, const int64_t *ks, const int64_t *vs, double scale,         \
                           int nthreads) {                                                                            \
    attn_args a;                                                                                                      \
    memset(&a, 0, sizeof(a));                                                                                         \
    a.q = q; a.k = k; a.v = v; a.index = index; a.out = out; a.probs = probs;                                         \
    a.B = B; a.Nq = Nq; a.Nk = Nk; a.H = H; a.D = D; a.Dv = Dv; a.K = K; a.nd = nd; a.scale = scale;                  \
    for (int t = 0; t < 3; ++t) { a.qs[t] = qs[t]; a.ks[t] = ks[t]; a.vs[t] = vs[t]; }                                \
    return run_split(attn_rows_##SUF, &a, sizeof(a), B * Nq * H, nthreads);                                           \
}

DEFINE_ATTN_ENTRY(float, f32)
DEFINE_ATTN_ENTRY(double, f64)

/* ---------------------------------------------------------------------------------------------------------------- */
/* Exact top-k selection of the rows of a float32 matrix.                                                           */
/* ---------------------------------------------------------------------------------------------------------------- */

typedef struct {
    int64_t row0, row1;
    const float *x;
    int64_t N, ld, k;
    int64_t *out;
    uint8_t *fallback;
} select_args;

static inline int32_t float_key(float f) {  /* integer keys in the order of the floats */
    union { float f; int32_t i; } u;
    u.f = f + 0.0f;  /* -0 -> +0: torch.topk treats them as equal */
    return u.i < 0 ? u.i ^ INT32_MAX : u.i;
}

static inline int32_t count_ge(const int32_t *key, int64_t N, int32_t t) {
    int32_t c = 0;
    _Pragma("omp simd reduction(+:c)")
    for (int64_t j = 0; j < N; ++j) c += key[j] >= t;
    return c;
}

#define SELECT_SMALL 8

/* The k largest entries of each row, written in increasing index order. A bracket [lo, hi) of the order-preserving
 * integer keys of the floats with count(key >= lo) >= k > count(key >= hi) is narrowed by vectorized counts, the
 * next pivot interpolated linearly between the bracket's keys (about the log of positive values: fewer steps than
 * interpolating the values on Sparsifiner's skewed scores), or their bisection when the last step did not halve the
 * bracket, until at most SELECT_SMALL entries lie inside; their ranks give the k-th largest value t,
 * and the entries >= t are taken. Rows where the entries equal to t do not all fit (a tie at the boundary,
 * whose pick is implementation-defined in torch.topk) or with a NaN are flagged instead and left to the caller. */
static void *select_rows(void *arg) {
    const select_args *a = (const select_args *)arg;
    const int64_t N = a->N;
    const int32_t k = (int32_t)a->k;
    int32_t *key = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * N + 1));
    int64_t *pos = (int64_t *)malloc(sizeof(int64_t) * (size_t)(N + 1));
    if (!key || !pos) { free(key); free(pos); return (void *)1; }
    int32_t *cand = key + N;
    for (int64_t r = a->row0; r < a->row1; ++r) {
        const float *x = a->x + r * a->ld;
        int nan = 0;
        int32_t kmin = INT32_MAX, kmax = INT32_MIN;
        for (int64_t j = 0; j < N; ++j) {
            const int32_t kk = float_key(x[j]);
            nan |= x[j] != x[j];
            key[j] = kk;
            kmin = kk < kmin ? kk : kmin;
            kmax = kk > kmax ? kk : kmax;
        }
        a->fallback[r] = 1;
        if (nan) continue;
        int64_t lo = kmin, hi = (int64_t)kmax + 1;
        int32_t c_lo = (int32_t)N, c_hi = 0, last = c_lo - c_hi;
        int bisect = 0;
        while (c_lo - c_hi > SELECT_SMALL && hi - lo > 1) {
            int64_t mid = lo + (hi - lo) / 2;
            if (!bisect) {
                mid = lo + (int64_t)((double)(hi - 1 - lo) * ((double)(c_lo - k) + 0.5) / (double)(c_lo - c_hi));
                mid = mid <= lo ? lo + 1 : mid >= hi ? hi - 1 : mid;
            }
            const int32_t c = count_ge(key, N, (int32_t)mid);
            if (c >= k) { lo = mid; c_lo = c; } else { hi = mid; c_hi = c; }
            bisect = 2 * (c_lo - c_hi) > last;
            last = c_lo - c_hi;
        }
        /* the need = k - c_hi largest of the m entries in [lo, hi): the one with fewer than need entries above it
         * and at least need at or above it (ranks by counting; branch-free loops, the branchy ones mispredict) */
        const int32_t need = k - c_hi;
        int32_t t = (int32_t)lo, m = 0, tie = c_lo - c_hi > need;
        if (hi - lo > 1) {
            for (int64_t j = 0; j < N; ++j) {
                cand[m] = key[j];
                m += (key[j] >= lo) & (key[j] < hi);
            }
            for (int32_t u = 0; u < m; ++u) {
                int32_t gt = 0, ge = 0;
                for (int32_t w = 0; w < m; ++w) { gt += cand[w] > cand[u]; ge += cand[w] >= cand[u]; }
                if (gt < need && need <= ge) { t = cand[u]; tie = ge > need; }
            }
        }
        if (tie) continue;
        int32_t c = 0;
        for (int64_t j = 0; j < N; ++j) {
            pos[c] = j;
            c += key[j] >= t;
        }
        memcpy(a->out + r * k, pos, sizeof(int64_t) * (size_t)k);
        a->fallback[r] = 0;
    }
    free(key); free(pos);
    return NULL;
}

/* x: [R, N] float32 with row stride ld; out: [R, k] int64; fallback: [R] uint8 (1: row not written). */
int va_topk_select_f32(const float *x, int64_t R, int64_t N, int64_t ld, int64_t k, int64_t *out, uint8_t *fallback,
                       int nthreads) {
    select_args a = {0, 0, x, N, ld, k, out, fallback};
    return run_split(select_rows, &a, sizeof(a), R, nthreads);
}
