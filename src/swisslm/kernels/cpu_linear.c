// SPDX-License-Identifier: Apache-2.0
// Small-batch linear kernels for x86 CPUs with AVX2 + FMA (decode shapes: M <= ~16 rows).
//
//   y[m, n] = sum_k x[m, k] * W[n, k]  (+ bias[n])      W given as
//     f32:  float  [N, K]
//     i8:   int8   [N, K] and scales [N]                 W = scales[n] * q[n, k]
//     i4:   uint8  [N, K/2] (low nibble = even column), scales, mins [N, K/gs]
//                                                        W = q * scales[n, g] + mins[n, g]
//
// Why hand-written: decode multiplies a few activation rows by every weight of the model once
// per token, so it is bound by how fast the weights stream from memory. torch's CPU matmul for
// such shapes (MKL sgemv on this AMD machine) reaches about half the memory bandwidth, and its
// weight-only int8/int4 kernels have no fast AVX2 path. These kernels stream each weight row
// exactly once, keep up to 4 rows x 2 activation rows of accumulators in registers, and
// dequantize in registers (int8, int4), so int8 moves 4x fewer bytes than fp32 with exact
// weight-only numerics (activations stay fp32; nothing is re-quantized).
//
// Threads: OpenMP over blocks of output rows. The module is linked against the libgomp that
// torch already loaded (same soname), so kernels share torch's thread pool instead of fighting
// a second runtime for the cores.
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NB 4  // weight rows per register block

// Software prefetch, PF_BLOCKS row blocks ahead of the one being read. Rows are short (576
// int8 = 9 cache lines for a 135M model), so each block touches a new stretch of memory before
// the hardware prefetcher has ramped up; without this int8 decode ran at well under half of the
// memory bandwidth fp32 reached. Prefetching past the end of the matrix is harmless.
#ifndef PF_BLOCKS
#define PF_BLOCKS 1
#endif
#ifndef F32_PF_BLOCKS
#define F32_PF_BLOCKS 0
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T0
#endif
// Keeps a loaded vector in a register: without it gcc folds the weight load into both FMAs
// that use it, loading every weight vector twice and running out of load ports.
#define IN_REG(v) __asm__("" : "+x"(v))
#define PREFETCH(p) _mm_prefetch((const char *)(p), PF_HINT)

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_hadd_ps(lo, lo);
    lo = _mm_hadd_ps(lo, lo);
    return _mm_cvtss_f32(lo);
}

// 4 horizontal sums packed in one __m128: (sum a, sum b, sum c, sum d).
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

static inline __m256 load_i8(const int8_t *p) {  // 8 int8 -> 8 float
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline void store_rows(float *y, int64_t N, int64_t m, int64_t n0, int nb, __m128 v,
                              const float *scale, const float *bias) {
    float t[4];
    _mm_storeu_ps(t, v);
    for (int i = 0; i < nb; i++) {
        float s = t[i];
        if (scale) s *= scale[n0 + i];
        if (bias) s += bias[n0 + i];
        y[m * N + n0 + i] = s;
    }
}

// ---- fp32 / int8 weights: fused dot products, 4 weight rows x 2 activation rows ------------

#define DEFINE_DOT_KERNEL(NAME, WT, LOADW, PFB)                                                        \
    static void NAME(const float *x, const WT *w, const float *scale, const float *bias, float *y, \
                     int64_t M, int64_t K, int64_t N, int64_t n0, int nb) {                        \
        const WT *r[NB];                                                                           \
        for (int i = 0; i < NB; i++) r[i] = w + (i < nb ? i : nb - 1) * K; /* w: row n0 */                \
        const int64_t K8 = K & ~(int64_t)7;                                                        \
        const int64_t pf = PFB * NB * K; /* same row, PFB blocks ahead */                          \
        int64_t m = 0;                                                                             \
        for (; m + 2 <= M; m += 2) {                                                               \
            const float *x0 = x + m * K, *x1 = x0 + K;                                             \
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;                     \
            __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;                                     \
            for (int64_t k = 0; k < K8; k += 8) {                                                  \
                if (PFB && m == 0) for (int i = 0; i < NB; i++) PREFETCH(r[i] + k + pf);           \
                __m256 v0 = _mm256_loadu_ps(x0 + k), v1 = _mm256_loadu_ps(x1 + k);                \
                __m256 w0 = LOADW(r[0] + k), w1 = LOADW(r[1] + k);                                 \
                IN_REG(w0); IN_REG(w1);                                                            \
                a00 = _mm256_fmadd_ps(w0, v0, a00); a10 = _mm256_fmadd_ps(w0, v1, a10);           \
                a01 = _mm256_fmadd_ps(w1, v0, a01); a11 = _mm256_fmadd_ps(w1, v1, a11);           \
                __m256 w2 = LOADW(r[2] + k), w3 = LOADW(r[3] + k);                                 \
                IN_REG(w2); IN_REG(w3);                                                            \
                a02 = _mm256_fmadd_ps(w2, v0, a02); a12 = _mm256_fmadd_ps(w2, v1, a12);           \
                a03 = _mm256_fmadd_ps(w3, v0, a03); a13 = _mm256_fmadd_ps(w3, v1, a13);           \
            }                                                                                      \
            __m128 s0 = hsum4(a00, a01, a02, a03), s1 = hsum4(a10, a11, a12, a13);                 \
            if (K8 < K) {                                                                          \
                float t0[4], t1[4];                                                                \
                _mm_storeu_ps(t0, s0); _mm_storeu_ps(t1, s1);                                      \
                for (int i = 0; i < NB; i++)                                                       \
                    for (int64_t k = K8; k < K; k++) {                                             \
                        t0[i] += x0[k] * (float)r[i][k]; t1[i] += x1[k] * (float)r[i][k];          \
                    }                                                                              \
                s0 = _mm_loadu_ps(t0); s1 = _mm_loadu_ps(t1);                                      \
            }                                                                                      \
            store_rows(y, N, m, n0, nb, s0, scale, bias);                                          \
            store_rows(y, N, m + 1, n0, nb, s1, scale, bias);                                      \
        }                                                                                          \
        for (; m < M; m++) { /* one activation row; same summation order as the pair loop, so  \
                                 a row's result never depends on how many rows came with it */   \
            const float *x0 = x + m * K;                                                           \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                            \
            for (int64_t k = 0; k < K8; k += 8) {                                                  \
                if (PFB) for (int i = 0; i < NB; i++) PREFETCH(r[i] + k + pf);                     \
                __m256 v0 = _mm256_loadu_ps(x0 + k);                                               \
                a0 = _mm256_fmadd_ps(LOADW(r[0] + k), v0, a0);                                     \
                a1 = _mm256_fmadd_ps(LOADW(r[1] + k), v0, a1);                                     \
                a2 = _mm256_fmadd_ps(LOADW(r[2] + k), v0, a2);                                     \
                a3 = _mm256_fmadd_ps(LOADW(r[3] + k), v0, a3);                                     \
            }                                                                                      \
            __m128 s = hsum4(a0, a1, a2, a3);                                                      \
            if (K8 < K) {                                                                          \
                float t[4];                                                                        \
                _mm_storeu_ps(t, s);                                                               \
                for (int i = 0; i < NB; i++)                                                       \
                    for (int64_t kk = K8; kk < K; kk++) t[i] += x0[kk] * (float)r[i][kk];          \
                s = _mm_loadu_ps(t);                                                               \
            }                                                                                      \
            store_rows(y, N, m, n0, nb, s, scale, bias);                                           \
        }                                                                                          \
    }

#define LOAD_F32(p) _mm256_loadu_ps(p)
#define LOAD_I8(p) load_i8(p)
DEFINE_DOT_KERNEL(block_f32, float, LOAD_F32, F32_PF_BLOCKS)
DEFINE_DOT_KERNEL(block_i8, int8_t, LOAD_I8, PF_BLOCKS)


// Row blocks are spread over threads statically, in contiguous chunks, so each thread streams
// its own slice of the weight matrix front to back.
#define PARALLEL_ROW_BLOCKS(CALL)                                            \
    const int64_t nblocks = (N + NB - 1) / NB;                               \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1)") \
    for (int64_t b = 0; b < nblocks; b++) {                                  \
        const int64_t n0 = b * NB;                                           \
        const int nb = (int)(N - n0 < NB ? N - n0 : NB);                     \
        CALL;                                                                \
    }

void swl_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t K,
                    int64_t N, int nthreads) {
    PARALLEL_ROW_BLOCKS(block_f32(x, w + n0 * K, NULL, bias, y, M, K, N, n0, nb))
}

void swl_linear_i8(const float *x, const int8_t *w, const float *scales, const float *bias, float *y,
                   int64_t M, int64_t K, int64_t N, int nthreads) {
    PARALLEL_ROW_BLOCKS(block_i8(x, w + n0 * K, scales, bias, y, M, K, N, n0, nb))
}

// ---- int4 weights: dequantize a block of rows into an L1-resident fp32 tile, then block_f32 ----
// The tile holds the exact weights (q * scale + min), so results equal an fp32 matmul with the
// dequantized matrix up to summation order.

static void dequant_i4_row(const uint8_t *p, const float *scales, const float *mins, float *out, int64_t K,
                           int64_t gs) {
    const __m128i low = _mm_set1_epi8(0x0F);
    for (int64_t g0 = 0; g0 < K; g0 += gs) {
        const __m256 s = _mm256_set1_ps(scales[g0 / gs]), mn = _mm256_set1_ps(mins[g0 / gs]);
        for (int64_t k = g0; k < g0 + gs; k += 32) {  // 16 bytes = 32 nibbles per step
            __m128i b = _mm_loadu_si128((const __m128i *)(p + k / 2));
            __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
            __m128i q0 = _mm_unpacklo_epi8(lo, hi), q1 = _mm_unpackhi_epi8(lo, hi);  // in column order
            __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q0));
            __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q0, 8)));
            __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q1));
            __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q1, 8)));
            _mm256_storeu_ps(out + k, _mm256_fmadd_ps(f0, s, mn));
            _mm256_storeu_ps(out + k + 8, _mm256_fmadd_ps(f1, s, mn));
            _mm256_storeu_ps(out + k + 16, _mm256_fmadd_ps(f2, s, mn));
            _mm256_storeu_ps(out + k + 24, _mm256_fmadd_ps(f3, s, mn));
        }
    }
}

// Returns 0, or -1 when the group size is not a multiple of 32 (caller falls back).
int swl_linear_i4(const float *x, const uint8_t *w, const float *scales, const float *mins, const float *bias,
                  float *y, int64_t M, int64_t K, int64_t N, int64_t group_size, int nthreads) {
    if (group_size % 32 || K % group_size) return -1;
    const int64_t G = K / group_size;
    const int64_t nblocks = (N + NB - 1) / NB;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *tile = malloc(sizeof(float) * NB * K);  // per thread; stays in L1/L2 across the block
#pragma omp for schedule(static)
        for (int64_t b = 0; b < nblocks; b++) {
            const int64_t n0 = b * NB;
            const int nb = (int)(N - n0 < NB ? N - n0 : NB);
            for (int i = 0; i < nb; i++)
                dequant_i4_row(w + (n0 + i) * (K / 2), scales + (n0 + i) * G, mins + (n0 + i) * G, tile + i * K,
                               K, group_size);
            block_f32(x, tile, NULL, bias, y, M, K, N, n0, nb);
        }
        free(tile);
    }
    return 0;
}

// The build flags ask for AVX2 + FMA; Python checks this before calling anything else.
int swl_cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
