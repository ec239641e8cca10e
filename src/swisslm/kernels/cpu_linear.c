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

#include "swisslm_kernels.h"
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

SWL_AVX2_BEGIN

#define NB 4  // weight rows per register block

// Software prefetch, PF_BLOCKS row blocks ahead of the one being read. Rows are short (576
// int8 = 9 cache lines for a 135M model), so each block touches a new stretch of memory before
// the hardware prefetcher has ramped up; without this int8 decode ran at well under half of the
// memory bandwidth fp32 reached. Prefetching past the end of the matrix is harmless.
#ifndef PF_BLOCKS
#define PF_BLOCKS 1
#endif
#ifndef F32_PF_BLOCKS
#define F32_PF_BLOCKS 1
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1
#endif
// Keeps a loaded vector in a register: without it gcc folds the weight load into both FMAs
// that use it, loading every weight vector twice and running out of load ports.
#define IN_REG(v) __asm__("" : "+x"(v))
#define PREFETCH(p) _mm_prefetch((const char *)(p), PF_HINT)
// Bytes of the block consumed by one 8-column step of the DOT kernels, prefetched ahead.
#define PF_STEP(k)                                                                 \
    do {                                                                           \
        const char *a_ = pf_base + (k) * NB * (int64_t)sizeof(*w);                 \
        for (int64_t o_ = 0; o_ < NB * 8 * (int64_t)sizeof(*w); o_ += 64) PREFETCH(a_ + o_); \
    } while (0)

// PF_SPREAD: with several activation-row passes over a weight block, pass p prefetches the p-th
// of P slices of the next block, so requests go out evenly while the passes compute instead of
// all in the first pass (whose misses then serialise with the cached passes' arithmetic).
#ifndef PF_SPREAD
#define PF_SPREAD 1
#endif
#define PF_PASS(k, PFB)                                                                             \
    do {                                                                                         \
        if (!(PFB)) break;                                                                       \
        if (P == 1) {                                                                            \
            if (m == 0) PF_STEP(k);                                                              \
        } else {                                                                                 \
            PREFETCH(pf_chunk + (p * chunk_bytes + ((k) - ks) * NB * (int64_t)sizeof(*w)) / P);  \
        }                                                                                        \
    } while (0)

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

// Columns per pass of the DOT kernels. A block's NB weight rows of KC columns plus two
// activation rows stay in the 32 KB L1 cache while every activation row pair passes over them;
// with whole 2048-wide rows they did not, and at MoE-expert sizes (tens of rows) the kernel
// fell from ~160 to ~120 GFLOP/s. Partial sums go through y between passes. The split depends
// only on K, so a row's result still does not depend on the other rows.
#ifndef KC
#define KC 1024
#endif

static inline void add_rows(float *y, int64_t N, int64_t m, int64_t n0, int nb, __m128 v, const float *scale) {
    float t[4];
    _mm_storeu_ps(t, v);
    for (int i = 0; i < nb; i++) y[m * N + n0 + i] += scale ? t[i] * scale[n0 + i] : t[i];
}

#define DEFINE_DOT_KERNEL(NAME, WT, LOADW, PFB)                                                        \
    static void NAME(const float *x, const WT *w, const float *scale, const float *bias, float *y, \
                     int64_t M, int64_t K, int64_t N, int64_t n0, int nb) {                        \
        const WT *r[NB];                                                                           \
        for (int i = 0; i < NB; i++) r[i] = w + (i < nb ? i : nb - 1) * K; /* w: row n0 */                \
        const int64_t K8 = K & ~(int64_t)7;                                                        \
        /* the block is NB * K contiguous weights; an 8-column step consumes NB * 8 of them:   \
           prefetch those bytes PFB blocks ahead, as one sequential stream (see int16 path) */  \
        const char *pf_base = (const char *)w + PFB * NB * K * (int64_t)sizeof(WT);               \
        const int64_t nchunks = K8 ? (K8 + KC - 1) / KC : 1;                                       \
        for (int64_t c = 0; c < nchunks; c++) {                                                    \
        const int64_t ks = c * KC, ke = ks + KC < K8 ? ks + KC : K8;                               \
        const int tail = c == nchunks - 1 && K8 < K;                                               \
        /* the next block's bytes for this chunk, spread over the P row passes (see PF_SPREAD) */ \
        const int64_t P = PF_SPREAD ? M / 3 + (M % 3 != 0) : 1;                                    \
        const int64_t chunk_bytes = (ke - ks) * NB * (int64_t)sizeof(WT);                         \
        const char *pf_chunk = pf_base + ks * NB * (int64_t)sizeof(WT);                            \
        int64_t p = 0;                                                                             \
        int64_t m = 0;                                                                             \
        for (; m + 3 <= M; m += 3, p++) { /* 12 accumulators: enough FMAs in flight to cover latency */ \
            const float *x0 = x + m * K, *x1 = x0 + K, *x2 = x1 + K;                               \
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;                     \
            __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;                                     \
            __m256 a20 = a00, a21 = a00, a22 = a00, a23 = a00;                                     \
            for (int64_t k = ks; k < ke; k += 8) {                                                 \
                PF_PASS(k, PFB);                                                                      \
                __m256 v0 = _mm256_loadu_ps(x0 + k), v1 = _mm256_loadu_ps(x1 + k);                \
                __m256 v2 = _mm256_loadu_ps(x2 + k);                                               \
                __m256 w0 = LOADW(r[0] + k);                                                       \
                a00 = _mm256_fmadd_ps(w0, v0, a00); a10 = _mm256_fmadd_ps(w0, v1, a10);           \
                a20 = _mm256_fmadd_ps(w0, v2, a20);                                                \
                __m256 w1 = LOADW(r[1] + k);                                                       \
                a01 = _mm256_fmadd_ps(w1, v0, a01); a11 = _mm256_fmadd_ps(w1, v1, a11);           \
                a21 = _mm256_fmadd_ps(w1, v2, a21);                                                \
                __m256 w2 = LOADW(r[2] + k);                                                       \
                a02 = _mm256_fmadd_ps(w2, v0, a02); a12 = _mm256_fmadd_ps(w2, v1, a12);           \
                a22 = _mm256_fmadd_ps(w2, v2, a22);                                                \
                __m256 w3 = LOADW(r[3] + k);                                                       \
                a03 = _mm256_fmadd_ps(w3, v0, a03); a13 = _mm256_fmadd_ps(w3, v1, a13);           \
                a23 = _mm256_fmadd_ps(w3, v2, a23);                                                \
            }                                                                                      \
            __m128 s[3] = {hsum4(a00, a01, a02, a03), hsum4(a10, a11, a12, a13),                   \
                           hsum4(a20, a21, a22, a23)};                                             \
            for (int j = 0; j < 3; j++) {                                                          \
                const float *xj = x0 + j * K;                                                      \
                if (tail) {                                                                        \
                    float t[4];                                                                    \
                    _mm_storeu_ps(t, s[j]);                                                        \
                    for (int i = 0; i < NB; i++)                                                   \
                        for (int64_t kk = K8; kk < K; kk++) t[i] += xj[kk] * (float)r[i][kk];     \
                    s[j] = _mm_loadu_ps(t);                                                        \
                }                                                                                  \
                if (c == 0) store_rows(y, N, m + j, n0, nb, s[j], scale, bias);                    \
                else add_rows(y, N, m + j, n0, nb, s[j], scale);                                   \
            }                                                                                      \
        }                                                                                          \
        for (; m + 2 <= M; m += 2, p++) {                                                          \
            const float *x0 = x + m * K, *x1 = x0 + K;                                             \
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;                     \
            __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;                                     \
            for (int64_t k = ks; k < ke; k += 8) {                                                 \
                PF_PASS(k, PFB);                                                                      \
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
            if (tail) {                                                                            \
                float t0[4], t1[4];                                                                \
                _mm_storeu_ps(t0, s0); _mm_storeu_ps(t1, s1);                                      \
                for (int i = 0; i < NB; i++)                                                       \
                    for (int64_t k = K8; k < K; k++) {                                             \
                        t0[i] += x0[k] * (float)r[i][k]; t1[i] += x1[k] * (float)r[i][k];          \
                    }                                                                              \
                s0 = _mm_loadu_ps(t0); s1 = _mm_loadu_ps(t1);                                      \
            }                                                                                      \
            if (c == 0) {                                                                          \
                store_rows(y, N, m, n0, nb, s0, scale, bias);                                      \
                store_rows(y, N, m + 1, n0, nb, s1, scale, bias);                                  \
            } else {                                                                               \
                add_rows(y, N, m, n0, nb, s0, scale);                                              \
                add_rows(y, N, m + 1, n0, nb, s1, scale);                                          \
            }                                                                                      \
        }                                                                                          \
        for (; m < M; m++, p++) { /* one activation row; same summation order as the pair loop, so  \
                                 a row's result never depends on how many rows came with it */   \
            const float *x0 = x + m * K;                                                           \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                            \
            for (int64_t k = ks; k < ke; k += 8) {                                                 \
                PF_PASS(k, PFB);                                                                      \
                __m256 v0 = _mm256_loadu_ps(x0 + k);                                               \
                a0 = _mm256_fmadd_ps(LOADW(r[0] + k), v0, a0);                                     \
                a1 = _mm256_fmadd_ps(LOADW(r[1] + k), v0, a1);                                     \
                a2 = _mm256_fmadd_ps(LOADW(r[2] + k), v0, a2);                                     \
                a3 = _mm256_fmadd_ps(LOADW(r[3] + k), v0, a3);                                     \
            }                                                                                      \
            __m128 s = hsum4(a0, a1, a2, a3);                                                      \
            if (tail) {                                                                            \
                float t[4];                                                                        \
                _mm_storeu_ps(t, s);                                                               \
                for (int i = 0; i < NB; i++)                                                       \
                    for (int64_t kk = K8; kk < K; kk++) t[i] += x0[kk] * (float)r[i][kk];          \
                s = _mm_loadu_ps(t);                                                               \
            }                                                                                      \
            if (c == 0) store_rows(y, N, m, n0, nb, s, scale, bias);                               \
            else add_rows(y, N, m, n0, nb, s, scale);                                              \
        }                                                                                          \
        }                                                                                          \
    }

#define LOAD_F32(p) _mm256_loadu_ps(p)
#define LOAD_I8(p) load_i8(p)
DEFINE_DOT_KERNEL(block_f32, float, LOAD_F32, F32_PF_BLOCKS)
DEFINE_DOT_KERNEL(block_i8, int8_t, LOAD_I8, PF_BLOCKS)


// Row blocks go to threads in contiguous chunks (guided: large first, smaller towards the end),
// so each thread streams long runs of the weight matrix front to back, and a thread slowed down
// by the host (shared VM cores) does not hold the other back at the end of every call: measured
// 2-6% faster than equal static halves at batch 1 on the 2-core CI VM.
#ifndef ROW_SCHEDULE
#define ROW_SCHEDULE "omp parallel for schedule(guided, 4) num_threads(nthreads) if(nthreads > 1)"
#endif
#define PARALLEL_ROW_BLOCKS(CALL)                                            \
    const int64_t nblocks = (N + NB - 1) / NB;                               \
    _Pragma(ROW_SCHEDULE) \
    for (int64_t b = 0; b < nblocks; b++) {                                  \
        const int64_t n0 = b * NB;                                           \
        const int nb = (int)(N - n0 < NB ? N - n0 : NB);                     \
        CALL;                                                                \
    }

// ---- fp32 weights on AVX-512 CPUs ---------------------------------------------------------------
// Above one activation row the fp32 product is no longer purely memory-bound: at batch 8 the
// AVX2 kernel spent most of a SmolLM2 step in FMAs (~60 GFLOP/s on two cores, half the memory
// bandwidth), and torch's own AVX-512 GEMM closed in on it. Where the CPU has AVX-512 the same
// blocking runs on 16-wide vectors, and four activation rows per pass instead of three (32
// registers hold 16 accumulators), so the weights are read from L1 half as often at batch 8.
// The columns that do not fill a vector are loaded under a mask (no scalar tail). Like the
// AVX2 kernel, every activation row is summed in the same order whatever rows come with it.
// Chosen at run time (swl_f32_isa), so one build serves both kinds of CPU.
#define TARGET_512 __attribute__((target("avx512f,avx2,fma")))

TARGET_512 static inline __m256 fold512(__m512 a) {
    return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}

// One 16-column step's mask (the columns left may not fill a vector) and the prefetch of this
// pass's share of the next block's bytes: the AVX2 kernel's PF_PASS for each of its two 8-column
// halves.
#define STEP512_BEGIN(k)                                                                           \
    const __mmask16 msk = ke - (k) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (ke - (k))) - 1);   \
    PF_PASS(k, F32_PF_BLOCKS);                                                                     \
    PF_PASS((k) + 8, F32_PF_BLOCKS);
#define LOADX512(j) _mm512_maskz_loadu_ps(msk, xr + (j) * K + k)
// Weight row i times every activation vector of the pass; the weight stays in a register
// (see IN_REG). Accumulators are named variables: as an array gcc kept a copy in memory and
// stored all of them on every step, which halved the kernel's speed.
#define W512(i) __m512 w##i = _mm512_maskz_loadu_ps(msk, r[i] + k); __asm__("" : "+v"(w##i))
#define FMA512(acc, w, xv) acc = _mm512_fmadd_ps(w, xv, acc)
#define ROW_OUT512(j, A0, A1, A2, A3)                                                              \
    do {                                                                                           \
        __m128 s4 = hsum4(fold512(A0), fold512(A1), fold512(A2), fold512(A3));                     \
        if (c == 0) store_rows(y, N, m + (j), n0, nb, s4, NULL, bias);                             \
        else add_rows(y, N, m + (j), n0, nb, s4, NULL);                                            \
    } while (0)

TARGET_512 static void block_f32_512(const float *x, const float *w, const float *bias, float *y, int64_t M,
                                     int64_t K, int64_t N, int64_t n0, int nb) {
    const float *r[NB];
    for (int i = 0; i < NB; i++) r[i] = w + (i < nb ? i : nb - 1) * K;
    const char *pf_base = (const char *)w + F32_PF_BLOCKS * NB * K * (int64_t)sizeof(float);
    // passes over the block: 4 rows at a time, then 2, then 1
    const int64_t P = PF_SPREAD ? M / 4 + (M % 4) / 2 + (M % 2) : 1;
    const int64_t nchunks = K ? (K + KC - 1) / KC : 1;  // K = 0: one empty pass stores the bias
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t ks = c * KC, ke = ks + KC < K ? ks + KC : K;
        const int64_t chunk_bytes = (ke - ks) * NB * (int64_t)sizeof(float);
        const char *pf_chunk = pf_base + ks * NB * (int64_t)sizeof(float);
        int64_t m = 0, p = 0;
        for (; m + 4 <= M; m += 4, p++) {  // 16 accumulators: 4 activation rows x 4 weight rows
            const float *xr = x + m * K;
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00;
            __m512 a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00;
            __m512 a33 = a00;
            for (int64_t k = ks; k < ke; k += 16) {
                STEP512_BEGIN(k)
                const __m512 x0 = LOADX512(0), x1 = LOADX512(1), x2 = LOADX512(2), x3 = LOADX512(3);
                W512(0); FMA512(a00, w0, x0); FMA512(a10, w0, x1); FMA512(a20, w0, x2); FMA512(a30, w0, x3);
                W512(1); FMA512(a01, w1, x0); FMA512(a11, w1, x1); FMA512(a21, w1, x2); FMA512(a31, w1, x3);
                W512(2); FMA512(a02, w2, x0); FMA512(a12, w2, x1); FMA512(a22, w2, x2); FMA512(a32, w2, x3);
                W512(3); FMA512(a03, w3, x0); FMA512(a13, w3, x1); FMA512(a23, w3, x2); FMA512(a33, w3, x3);
            }
            ROW_OUT512(0, a00, a01, a02, a03);
            ROW_OUT512(1, a10, a11, a12, a13);
            ROW_OUT512(2, a20, a21, a22, a23);
            ROW_OUT512(3, a30, a31, a32, a33);
        }
        for (; m + 2 <= M; m += 2, p++) {
            const float *xr = x + m * K;
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
            __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            for (int64_t k = ks; k < ke; k += 16) {
                STEP512_BEGIN(k)
                const __m512 x0 = LOADX512(0), x1 = LOADX512(1);
                W512(0); FMA512(a00, w0, x0); FMA512(a10, w0, x1);
                W512(1); FMA512(a01, w1, x0); FMA512(a11, w1, x1);
                W512(2); FMA512(a02, w2, x0); FMA512(a12, w2, x1);
                W512(3); FMA512(a03, w3, x0); FMA512(a13, w3, x1);
            }
            ROW_OUT512(0, a00, a01, a02, a03);
            ROW_OUT512(1, a10, a11, a12, a13);
        }
        for (; m < M; m++, p++) {
            const float *xr = x + m * K;
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
            for (int64_t k = ks; k < ke; k += 16) {
                STEP512_BEGIN(k)
                const __m512 x0 = LOADX512(0);
                W512(0); FMA512(a00, w0, x0);
                W512(1); FMA512(a01, w1, x0);
                W512(2); FMA512(a02, w2, x0);
                W512(3); FMA512(a03, w3, x0);
            }
            ROW_OUT512(0, a00, a01, a02, a03);
        }
    }
}

// Which fp32 kernel runs: 1 = AVX-512 where the CPU has it, 0 = AVX2. Set once from the CPU,
// changeable for A/B runs and tests (swl_f32_isa).
static int use_512 = -1;

int swl_f32_isa(int want) {
    __builtin_cpu_init();
    const int have = __builtin_cpu_supports("avx512f") != 0;
    if (want >= 0) use_512 = want && have;
    else if (use_512 < 0) use_512 = have;
    return use_512;
}

// Activation rows per pass over the weights: the rows' KC-column slices (MB * 4 KB) stay in the
// 512 KB L2 while every weight row block passes over them. Larger M re-streams the weights once
// per MB rows, which costs far less than missing L2 on every activation load.
#define MB 64

void swl_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t K,
                    int64_t N, int nthreads) {
    const int wide = use_512 >= 0 ? use_512 : swl_f32_isa(-1);
    for (int64_t m0 = 0; m0 < M; m0 += MB) {
        const int64_t mb = M - m0 < MB ? M - m0 : MB;
        if (wide) {
            PARALLEL_ROW_BLOCKS(block_f32_512(x + m0 * K, w + n0 * K, bias, y + m0 * N, mb, K, N, n0, nb))
        } else {
            PARALLEL_ROW_BLOCKS(block_f32(x + m0 * K, w + n0 * K, NULL, bias, y + m0 * N, mb, K, N, n0, nb))
        }
    }
}

// ---- int8 weights x 16-bit activations: integer multiply-adds ----------------------------------
// Each activation row is scaled to int16 (one scale per row, |x| max -> 32767: a relative error
// of ~1e-5 on the dot product, far below the int8 weight's own ~1e-2, and each row's result
// still depends on that row alone). vpmaddwd then does 16 multiply-adds per instruction where
// the fp32 path needs a sign-extend, a convert and an FMA for every 8 -- a third of the work per
// weight at batch 8, which is compute-bound. Accumulators are int32: a lane gains at most
// 2 * 32767 * 127 per step, so they are flushed to fp32 every FLUSH_K columns, long before
// they could overflow.

#define FLUSH_K 4096

static void quantize_rows_i16(const float *x, int16_t *xq, float *xs, int64_t M, int64_t K) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * K;
        __m256 vmx = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) vmx = _mm256_max_ps(vmx, _mm256_andnot_ps(sign, _mm256_loadu_ps(r + k)));
        float t[8], mx = 0.0f;
        _mm256_storeu_ps(t, vmx);
        for (int i = 0; i < 8; i++) mx = fmaxf(mx, t[i]);
        for (; k < K; k++) mx = fmaxf(mx, fabsf(r[k]));
        const float s = mx > 0.0f ? mx / 32767.0f : 1.0f, inv = 1.0f / s;
        xs[m] = s;
        const __m256 vi = _mm256_set1_ps(inv);
        int16_t *q = xq + m * K;
        for (k = 0; k + 16 <= K; k += 16) {  // round to nearest (MXCSR default), saturating pack
            __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(r + k), vi));
            __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(r + k + 8), vi));
            __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);  // undo lane interleave
            _mm256_storeu_si256((__m256i *)(q + k), p);
        }
        for (; k < K; k++) q[k] = (int16_t)lrintf(r[k] * inv);
    }
}

static inline __m256i load_w16(const int8_t *p) {  // 16 int8 -> 16 int16
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
}

// Rows n0..n0+nb-1 of w (pointer at row n0) against all M quantized activation rows.
static void block_i8_i16(const int16_t *xq, const float *xs, const float *x, const int8_t *w, const float *scale,
                         const float *bias, float *y, int64_t M, int64_t K, int64_t N, int64_t n0, int nb) {
    const int8_t *r[NB];
    for (int i = 0; i < NB; i++) r[i] = w + (i < nb ? i : nb - 1) * K;
    const int64_t K16 = K & ~(int64_t)15;
    // A block's NB rows are one contiguous stretch of NB * K bytes, and each 16-column step
    // consumes NB * 16 = 64 of them: prefetch the same 64 bytes PF_BLOCKS blocks ahead, so the
    // memory system sees one sequential stream instead of NB interleaved ones.
    const char *pf_base = (const char *)w + PF_BLOCKS * NB * K;
#define PREFETCH_BLOCK(k) PREFETCH(pf_base + (k) * NB)
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {
        const int16_t *x0 = xq + m * K, *x1 = x0 + K;
        __m256 f0[NB], f1[NB];
        for (int i = 0; i < NB; i++) f0[i] = f1[i] = _mm256_setzero_ps();
        for (int64_t k0 = 0; k0 < K16; k0 += FLUSH_K) {
            const int64_t k1 = k0 + FLUSH_K < K16 ? k0 + FLUSH_K : K16;
            __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00;
            __m256i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            for (int64_t k = k0; k < k1; k += 16) {
                if (m == 0) PREFETCH_BLOCK(k);
                __m256i v0 = _mm256_loadu_si256((const __m256i *)(x0 + k));
                __m256i v1 = _mm256_loadu_si256((const __m256i *)(x1 + k));
                __m256i w0 = load_w16(r[0] + k), w1 = load_w16(r[1] + k);
                a00 = _mm256_add_epi32(a00, _mm256_madd_epi16(w0, v0));
                a10 = _mm256_add_epi32(a10, _mm256_madd_epi16(w0, v1));
                a01 = _mm256_add_epi32(a01, _mm256_madd_epi16(w1, v0));
                a11 = _mm256_add_epi32(a11, _mm256_madd_epi16(w1, v1));
                __m256i w2 = load_w16(r[2] + k), w3 = load_w16(r[3] + k);
                a02 = _mm256_add_epi32(a02, _mm256_madd_epi16(w2, v0));
                a12 = _mm256_add_epi32(a12, _mm256_madd_epi16(w2, v1));
                a03 = _mm256_add_epi32(a03, _mm256_madd_epi16(w3, v0));
                a13 = _mm256_add_epi32(a13, _mm256_madd_epi16(w3, v1));
            }
            f0[0] = _mm256_add_ps(f0[0], _mm256_cvtepi32_ps(a00));
            f0[1] = _mm256_add_ps(f0[1], _mm256_cvtepi32_ps(a01));
            f0[2] = _mm256_add_ps(f0[2], _mm256_cvtepi32_ps(a02));
            f0[3] = _mm256_add_ps(f0[3], _mm256_cvtepi32_ps(a03));
            f1[0] = _mm256_add_ps(f1[0], _mm256_cvtepi32_ps(a10));
            f1[1] = _mm256_add_ps(f1[1], _mm256_cvtepi32_ps(a11));
            f1[2] = _mm256_add_ps(f1[2], _mm256_cvtepi32_ps(a12));
            f1[3] = _mm256_add_ps(f1[3], _mm256_cvtepi32_ps(a13));
        }
        __m128 s0 = _mm_mul_ps(hsum4(f0[0], f0[1], f0[2], f0[3]), _mm_set1_ps(xs[m]));
        __m128 s1 = _mm_mul_ps(hsum4(f1[0], f1[1], f1[2], f1[3]), _mm_set1_ps(xs[m + 1]));
        if (K16 < K) {  // tail columns in fp32 from the unquantized rows
            float t0[4], t1[4];
            _mm_storeu_ps(t0, s0);
            _mm_storeu_ps(t1, s1);
            for (int i = 0; i < NB; i++)
                for (int64_t k = K16; k < K; k++) {
                    t0[i] += x[m * K + k] * (float)r[i][k];
                    t1[i] += x[(m + 1) * K + k] * (float)r[i][k];
                }
            s0 = _mm_loadu_ps(t0);
            s1 = _mm_loadu_ps(t1);
        }
        store_rows(y, N, m, n0, nb, s0, scale, bias);
        store_rows(y, N, m + 1, n0, nb, s1, scale, bias);
    }
    for (; m < M; m++) {  // same per-row arithmetic as the pair loop: results are batch-invariant
        const int16_t *x0 = xq + m * K;
        __m256 f0[NB];
        for (int i = 0; i < NB; i++) f0[i] = _mm256_setzero_ps();
        for (int64_t k0 = 0; k0 < K16; k0 += FLUSH_K) {
            const int64_t k1 = k0 + FLUSH_K < K16 ? k0 + FLUSH_K : K16;
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t k = k0; k < k1; k += 16) {
                PREFETCH_BLOCK(k);
                __m256i v0 = _mm256_loadu_si256((const __m256i *)(x0 + k));
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(load_w16(r[0] + k), v0));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(load_w16(r[1] + k), v0));
                a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(load_w16(r[2] + k), v0));
                a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(load_w16(r[3] + k), v0));
            }
            f0[0] = _mm256_add_ps(f0[0], _mm256_cvtepi32_ps(a0));
            f0[1] = _mm256_add_ps(f0[1], _mm256_cvtepi32_ps(a1));
            f0[2] = _mm256_add_ps(f0[2], _mm256_cvtepi32_ps(a2));
            f0[3] = _mm256_add_ps(f0[3], _mm256_cvtepi32_ps(a3));
        }
        __m128 s0 = _mm_mul_ps(hsum4(f0[0], f0[1], f0[2], f0[3]), _mm_set1_ps(xs[m]));
        if (K16 < K) {
            float t0[4];
            _mm_storeu_ps(t0, s0);
            for (int i = 0; i < NB; i++)
                for (int64_t k = K16; k < K; k++) t0[i] += x[m * K + k] * (float)r[i][k];
            s0 = _mm_loadu_ps(t0);
        }
        store_rows(y, N, m, n0, nb, s0, scale, bias);
    }
}

// act16 = 1: activations as int16 (integer multiply-adds, the fast path); 0: fp32 activations
// converted weight by weight (exact weight-only product; tests compare the two).
void swl_linear_i8(const float *x, const int8_t *w, const float *scales, const float *bias, float *y,
                   int64_t M, int64_t K, int64_t N, int act16, int nthreads) {
    if (!act16) {
        PARALLEL_ROW_BLOCKS(block_i8(x, w + n0 * K, scales, bias, y, M, K, N, n0, nb))
        return;
    }
    int16_t *xq = malloc(sizeof(int16_t) * M * K);
    float *xs = malloc(sizeof(float) * M);
    quantize_rows_i16(x, xq, xs, M, K);
    PARALLEL_ROW_BLOCKS(block_i8_i16(xq, xs, x, w + n0 * K, scales, bias, y, M, K, N, n0, nb))
    free(xq);
    free(xs);
}

// ---- int4 weights x 16-bit activations -------------------------------------------------------
// W[n, k] = q * scale[n, g] + min[n, g] for the group g of column k, so with int16 activation
// rows xq (scale xs, as for int8):
//   y[m, n] = xs[m] * sum_g (scale[n, g] * sum_{k in g} q[n, k] xq[m, k] + min[n, g] * X[m, g])
// where X[m, g] = sum_{k in g} xq[m, k] is computed once per call. Nibbles are widened to int16
// in registers and multiplied with vpmaddwd; a group's int32 sums (at most 8 steps of
// 2 * 15 * 32767) go to fp32 with the group's scale, lane by lane. Half the bytes of int8.

static inline __m256i load_q4x16(const uint8_t *p) {  // 8 bytes = 16 nibbles -> 16 int16, column order
    const __m128i low = _mm_set1_epi8(0x0F);
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
    return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(lo, hi));
}

static void block_i4_i16(const int16_t *xq, const float *xs, const int32_t *xg, const uint8_t *w,
                         const float *scales, const float *mins, const float *bias, float *y, int64_t M, int64_t K,
                         int64_t N, int64_t n0, int nb, int64_t gs) {
    const int64_t G = K / gs, KB = K / 2;
    const uint8_t *r[NB];
    const float *sc[NB], *mn[NB];
    for (int i = 0; i < NB; i++) {
        const int64_t row = i < nb ? i : nb - 1;
        r[i] = w + row * KB;
        sc[i] = scales + row * G;
        mn[i] = mins + row * G;
    }
    const char *pf_base = (const char *)w + PF_BLOCKS * NB * KB;  // one sequential stream, as for int8
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {  // two activation rows per unpacked weight vector
        const int16_t *x0 = xq + m * K, *x1 = x0 + K;
        __m256 f[2][NB];
        for (int i = 0; i < NB; i++) f[0][i] = f[1][i] = _mm256_setzero_ps();
        for (int64_t g = 0; g < G; g++) {
            __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00;
            __m256i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            for (int64_t k = g * gs; k < (g + 1) * gs; k += 16) {
                if (m == 0) PREFETCH(pf_base + k * NB / 2);
                __m256i v0 = _mm256_loadu_si256((const __m256i *)(x0 + k));
                __m256i v1 = _mm256_loadu_si256((const __m256i *)(x1 + k));
                __m256i w0 = load_q4x16(r[0] + k / 2), w1 = load_q4x16(r[1] + k / 2);
                a00 = _mm256_add_epi32(a00, _mm256_madd_epi16(w0, v0));
                a10 = _mm256_add_epi32(a10, _mm256_madd_epi16(w0, v1));
                a01 = _mm256_add_epi32(a01, _mm256_madd_epi16(w1, v0));
                a11 = _mm256_add_epi32(a11, _mm256_madd_epi16(w1, v1));
                __m256i w2 = load_q4x16(r[2] + k / 2), w3 = load_q4x16(r[3] + k / 2);
                a02 = _mm256_add_epi32(a02, _mm256_madd_epi16(w2, v0));
                a12 = _mm256_add_epi32(a12, _mm256_madd_epi16(w2, v1));
                a03 = _mm256_add_epi32(a03, _mm256_madd_epi16(w3, v0));
                a13 = _mm256_add_epi32(a13, _mm256_madd_epi16(w3, v1));
            }
            const __m256 s0 = _mm256_set1_ps(sc[0][g]), s1 = _mm256_set1_ps(sc[1][g]);
            const __m256 s2 = _mm256_set1_ps(sc[2][g]), s3 = _mm256_set1_ps(sc[3][g]);
            f[0][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a00), s0, f[0][0]);
            f[0][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a01), s1, f[0][1]);
            f[0][2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a02), s2, f[0][2]);
            f[0][3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a03), s3, f[0][3]);
            f[1][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a10), s0, f[1][0]);
            f[1][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a11), s1, f[1][1]);
            f[1][2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a12), s2, f[1][2]);
            f[1][3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a13), s3, f[1][3]);
        }
        for (int j = 0; j < 2; j++) {
            float t[4];
            _mm_storeu_ps(t, hsum4(f[j][0], f[j][1], f[j][2], f[j][3]));
            for (int i = 0; i < NB; i++) {
                float mterm = 0.0f;
                for (int64_t g = 0; g < G; g++) mterm += mn[i][g] * (float)xg[(m + j) * G + g];
                t[i] = (t[i] + mterm) * xs[m + j];
            }
            store_rows(y, N, m + j, n0, nb, _mm_loadu_ps(t), NULL, bias);
        }
    }
    for (; m < M; m++) {  // same arithmetic per row as the pair loop: batch-invariant
        const int16_t *x0 = xq + m * K;
        __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
        for (int64_t g = 0; g < G; g++) {
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t k = g * gs; k < (g + 1) * gs; k += 16) {
                PREFETCH(pf_base + k * NB / 2);
                __m256i v = _mm256_loadu_si256((const __m256i *)(x0 + k));
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(load_q4x16(r[0] + k / 2), v));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(load_q4x16(r[1] + k / 2), v));
                a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(load_q4x16(r[2] + k / 2), v));
                a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(load_q4x16(r[3] + k / 2), v));
            }
            f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), _mm256_set1_ps(sc[0][g]), f0);
            f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), _mm256_set1_ps(sc[1][g]), f1);
            f2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a2), _mm256_set1_ps(sc[2][g]), f2);
            f3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a3), _mm256_set1_ps(sc[3][g]), f3);
        }
        float t[4];
        _mm_storeu_ps(t, hsum4(f0, f1, f2, f3));
        for (int i = 0; i < NB; i++) {
            float mterm = 0.0f;
            for (int64_t g = 0; g < G; g++) mterm += mn[i][g] * (float)xg[m * G + g];
            t[i] = (t[i] + mterm) * xs[m];
        }
        store_rows(y, N, m, n0, nb, _mm_loadu_ps(t), NULL, bias);
    }
}

// ---- int4 weights, groups a multiple of 32: each nibble unpacked once per call ------------------
// The kernel above widens every nibble to int16 again for each pair of activation rows, and it
// keeps 8 int32 + 8 fp32 accumulators for a pair, more than AVX2's 16 registers: at 8 rows it
// ran 3-5x slower than int8 (measured), though it streams half the bytes. Here:
//  - 64 columns of a row are one 32-byte load: as 16 int16 lanes each holds 4 nibbles, so 3
//    shifts and 3 ands give 4 vectors of 16 weights, vector t lane i = column 4i + t. The
//    activation rows are permuted once per call to the same order, so no byte shuffles at all.
//  - With 2+ rows a weight block (4 rows x up to I4_KCH columns) is unpacked once into an int16
//    buffer that stays in L1 and every activation row pair multiplies from there.
//  - Per 64 columns the 4 rows' int32 sums fold with two hadd levels into one vector
//    (low lane half = columns 0-31, high = 32-63, rows 0-3 in each), so group scales and mins
//    apply in one FMA each per activation row: 2 fp32 accumulators per row pair, no spills.
// The integer sums are exact, and the fp32 steps for a row are the same whatever rows come with
// it and whichever path (buffer or registers) produced its sums: batch-invariant.

#define I4_KCH 2048  // columns per unpacked chunk: 4 rows x 2048 int16 = 16 KB of L1

// 64 columns (32 bytes) of one row -> 4 x 16 int16, vector t lane i = column 4i + t. `half`:
// only 32 columns left (16 bytes; lanes 8-15 zero).
static inline void unpack_q4x64(const uint8_t *p, int half, __m256i *v0, __m256i *v1, __m256i *v2, __m256i *v3) {
    const __m256i low = _mm256_set1_epi16(0x000F);
    const __m256i v = half ? _mm256_inserti128_si256(_mm256_setzero_si256(), _mm_loadu_si128((const __m128i *)p), 0)
                           : _mm256_loadu_si256((const __m256i *)p);
    *v0 = _mm256_and_si256(v, low);
    *v1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    *v2 = _mm256_and_si256(_mm256_srli_epi16(v, 8), low);
    *v3 = _mm256_srli_epi16(v, 12);
}

// One 64-column step of one activation row: 4 rows' int32 sums -> f += sums * scales + mins * X
// (8 lanes: rows 0-3 of the first 32 columns, rows 0-3 of the next 32).
static inline __m256 i4_fold(__m256i a0, __m256i a1, __m256i a2, __m256i a3, const float *sc8, const float *mn8,
                             const float *xh8, __m256 f) {
    const __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_loadu_ps(sc8), f);
    return _mm256_fmadd_ps(_mm256_loadu_ps(mn8), _mm256_loadu_ps(xh8), f);
}

static inline void i4_store(float *y, int64_t N, int64_t m, int64_t n0, int nb, __m256 f, float xs,
                            const float *bias) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
    store_rows(y, N, m, n0, nb, _mm_mul_ps(s, _mm_set1_ps(xs)), NULL, bias);
}

// Scales or mins of the block's 4 rows for the 32-column halves [h0, h1), lane order of i4_fold:
// out[(h - h0) * 4 + i] = v[i][(32 h) / gs], 0 past K. With groups of 32 (halves = groups) 8 of
// them at a time are a 4 x 8 transpose in registers: the scalar loop cost a fifth of the whole
// kernel's time at one activation row.
static void i4_halves(const float *const v[NB], int64_t gs, int64_t K, int64_t h0, int64_t h1, float *out) {
    int64_t h = h0;
    if (gs == 32) {
        for (; h + 8 <= h1 && 32 * (h + 8) <= K; h += 8) {
            const __m256 A = _mm256_loadu_ps(v[0] + h), B = _mm256_loadu_ps(v[1] + h);
            const __m256 C = _mm256_loadu_ps(v[2] + h), D = _mm256_loadu_ps(v[3] + h);
            const __m256 t0 = _mm256_unpacklo_ps(A, B), t1 = _mm256_unpackhi_ps(A, B);
            const __m256 t2 = _mm256_unpacklo_ps(C, D), t3 = _mm256_unpackhi_ps(C, D);
            const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            float *o = out + (h - h0) * NB;
            _mm256_storeu_ps(o, _mm256_permute2f128_ps(u0, u1, 0x20));
            _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
            _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
            _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
        }
    }
    const int64_t per = gs / 32;  // halves per group (one division per call: they cost ~100x a load here)
    int64_t g = h / per, left = per - h % per;
    for (; h < h1; h++) {
        for (int i = 0; i < NB; i++) out[(h - h0) * NB + i] = 32 * h < K ? v[i][g] : 0.0f;
        if (--left == 0) {
            g++;
            left = per;
        }
    }
}

// The empty asm keeps each accumulator a running sum in its register: without it gcc unrolls
// the 4 steps, reassociates the integer adds into trees and spills 16 of the products.
#define I4_MADD4(A0, A1, A2, A3, V, W0, W1, W2, W3)                                                      \
    A0 = _mm256_add_epi32(A0, _mm256_madd_epi16(W0, V)); A1 = _mm256_add_epi32(A1, _mm256_madd_epi16(W1, V)); \
    A2 = _mm256_add_epi32(A2, _mm256_madd_epi16(W2, V)); A3 = _mm256_add_epi32(A3, _mm256_madd_epi16(W3, V)); \
    __asm__("" : "+x"(A0), "+x"(A1), "+x"(A2), "+x"(A3))

// Weight row i's vector t times both rows of a pair: one load (IN_REG: gcc would otherwise fold
// the load into both multiply-adds, and the loads, not the multiply-adds, set the pace).
#define I4_MADD_PAIR(A0, A1, i)                                                                    \
    do {                                                                                          \
        __m256i w_ = _mm256_load_si256(wv + 4 * (i) + t);                                         \
        IN_REG(w_);                                                                               \
        A0 = _mm256_add_epi32(A0, _mm256_madd_epi16(w_, v0));                                     \
        A1 = _mm256_add_epi32(A1, _mm256_madd_epi16(w_, v1));                                     \
        __asm__("" : "+x"(A0), "+x"(A1));                                                         \
    } while (0)

// Rows n0..n0+nb-1 (w at row n0) against M activation rows xp (permuted, Kp = K rounded up to 64
// columns per row), xh4 (each 32-column sum of xq repeated 4 times, Kp / 8 per row).
static void block_i4_q64(const int16_t *xp, const float *xs, const float *xh4, const uint8_t *w,
                         const float *scales, const float *mins, const float *bias, float *y, int64_t M, int64_t K,
                         int64_t N, int64_t n0, int nb, int64_t gs) {
    const int64_t G = K / gs, KB = K / 2, Kp = (K + 63) & ~(int64_t)63;
    const uint8_t *r[NB];
    const float *sc[NB], *mn[NB];
    for (int i = 0; i < NB; i++) {
        const int64_t row = i < nb ? i : nb - 1;
        r[i] = w + row * KB;
        sc[i] = scales + row * G;
        mn[i] = mins + row * G;
    }
    const char *pf_base = (const char *)w + PF_BLOCKS * NB * KB;  // the next block: 128 bytes per 64 columns
    float sc8[I4_KCH / 8], mn8[I4_KCH / 8];
    if (M == 1) {  // one row: unpack in registers, nothing to share
        __m256 f = _mm256_setzero_ps();
        for (int64_t ks = 0; ks < K; ks += I4_KCH) {
            const int64_t ke = ks + I4_KCH < K ? ks + I4_KCH : K, nblk = (ke - ks + 63) / 64;
            i4_halves(sc, gs, K, ks / 32, ks / 32 + 2 * nblk, sc8);
            i4_halves(mn, gs, K, ks / 32, ks / 32 + 2 * nblk, mn8);
            for (int64_t b = 0; b < nblk; b++) {
                const int64_t col = ks + 64 * b;
                const int half = K - col < 64;
                PREFETCH(pf_base + col * 2);
                PREFETCH(pf_base + col * 2 + 64);
                const int16_t *xv = xp + col;
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                for (int i = 0; i < NB; i++) {
                    __m256i w0, w1, w2, w3;
                    unpack_q4x64(r[i] + col / 2, half, &w0, &w1, &w2, &w3);
                    __m256i s = _mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i *)xv));
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i *)(xv + 16))));
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(w2, _mm256_loadu_si256((const __m256i *)(xv + 32))));
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(w3, _mm256_loadu_si256((const __m256i *)(xv + 48))));
                    if (i == 0) a0 = s; else if (i == 1) a1 = s; else if (i == 2) a2 = s; else a3 = s;
                }
                f = i4_fold(a0, a1, a2, a3, sc8 + 8 * b, mn8 + 8 * b, xh4 + col / 8, f);
            }
        }
        i4_store(y, N, 0, n0, nb, f, xs[0], bias);
        return;
    }
    int16_t wb[NB * I4_KCH] __attribute__((aligned(32)));
    float facc[M * 8];  // each row's fp32 accumulator between chunks
    memset(facc, 0, sizeof(facc));
    for (int64_t ks = 0; ks < K; ks += I4_KCH) {
        const int64_t ke = ks + I4_KCH < K ? ks + I4_KCH : K, nblk = (ke - ks + 63) / 64;
        i4_halves(sc, gs, K, ks / 32, ks / 32 + 2 * nblk, sc8);
        i4_halves(mn, gs, K, ks / 32, ks / 32 + 2 * nblk, mn8);
        for (int64_t b = 0; b < nblk; b++) {  // unpack the chunk once: wb[b][i][t][16]
            const int64_t col = ks + 64 * b;
            const int half = K - col < 64;
            PREFETCH(pf_base + col * 2);
            PREFETCH(pf_base + col * 2 + 64);
            for (int i = 0; i < NB; i++) {
                __m256i *o = (__m256i *)(wb + (b * NB + i) * 64);
                unpack_q4x64(r[i] + col / 2, half, o, o + 1, o + 2, o + 3);
            }
        }
        int64_t m = 0;
        for (; m + 2 <= M; m += 2) {
            __m256 f0 = _mm256_loadu_ps(facc + m * 8), f1 = _mm256_loadu_ps(facc + (m + 1) * 8);
            const int16_t *x0 = xp + m * Kp + ks, *x1 = x0 + Kp;
            const float *h0 = xh4 + m * (Kp / 8) + ks / 8, *h1 = h0 + Kp / 8;
            for (int64_t b = 0; b < nblk; b++) {
                const __m256i *wv = (const __m256i *)(wb + b * NB * 64);
                __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00;
                __m256i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
                for (int t = 0; t < 4; t++) {
                    const __m256i v0 = _mm256_loadu_si256((const __m256i *)(x0 + 64 * b + 16 * t));
                    const __m256i v1 = _mm256_loadu_si256((const __m256i *)(x1 + 64 * b + 16 * t));
                    I4_MADD_PAIR(a00, a10, 0);
                    I4_MADD_PAIR(a01, a11, 1);
                    I4_MADD_PAIR(a02, a12, 2);
                    I4_MADD_PAIR(a03, a13, 3);
                }
                f0 = i4_fold(a00, a01, a02, a03, sc8 + 8 * b, mn8 + 8 * b, h0 + 8 * b, f0);
                f1 = i4_fold(a10, a11, a12, a13, sc8 + 8 * b, mn8 + 8 * b, h1 + 8 * b, f1);
            }
            _mm256_storeu_ps(facc + m * 8, f0);
            _mm256_storeu_ps(facc + (m + 1) * 8, f1);
        }
        for (; m < M; m++) {  // the odd row: same sums from the same buffer, same fp32 steps
            __m256 f0 = _mm256_loadu_ps(facc + m * 8);
            const int16_t *x0 = xp + m * Kp + ks;
            const float *h0 = xh4 + m * (Kp / 8) + ks / 8;
            for (int64_t b = 0; b < nblk; b++) {
                const __m256i *wv = (const __m256i *)(wb + b * NB * 64);
                __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00;
                for (int t = 0; t < 4; t++) {
                    const __m256i v0 = _mm256_loadu_si256((const __m256i *)(x0 + 64 * b + 16 * t));
                    I4_MADD4(a00, a01, a02, a03, v0, _mm256_load_si256(wv + t), _mm256_load_si256(wv + 4 + t),
                             _mm256_load_si256(wv + 8 + t), _mm256_load_si256(wv + 12 + t));
                }
                f0 = i4_fold(a00, a01, a02, a03, sc8 + 8 * b, mn8 + 8 * b, h0 + 8 * b, f0);
            }
            _mm256_storeu_ps(facc + m * 8, f0);
        }
    }
    for (int64_t m = 0; m < M; m++) i4_store(y, N, m, n0, nb, _mm256_loadu_ps(facc + m * 8), xs[m], bias);
}

// Returns 0, or -1 when the group size is not a multiple of 16 or does not divide K. Groups that
// are a multiple of 32 (all that quant makes) take block_i4_q64; others block_i4_i16.
int swl_linear_i4(const float *x, const uint8_t *w, const float *scales, const float *mins, const float *bias,
                  float *y, int64_t M, int64_t K, int64_t N, int64_t group_size, int nthreads) {
    if (group_size <= 0 || group_size % 16 || K % group_size) return -1;
    const int64_t G = K / group_size;
    int16_t *xq = malloc(sizeof(int16_t) * M * K);
    float *xs = malloc(sizeof(float) * M);
    quantize_rows_i16(x, xq, xs, M, K);
    if (group_size % 32 == 0) {
        // Permute each row to the unpacked weights' order (64-column blocks, column 4i + t at
        // t * 16 + i; a last 32-column block padded with zeros) and sum each 32 columns once.
        const int64_t Kp = (K + 63) & ~(int64_t)63;
        int16_t *xp = malloc(sizeof(int16_t) * M * Kp);
        float *xh4 = malloc(sizeof(float) * M * (Kp / 8));
        for (int64_t m = 0; m < M; m++) {
            const int16_t *q = xq + m * K;
            int16_t *o = xp + m * Kp;
            int64_t c = 0;
            for (; c + 64 <= K; c += 64)
                for (int i = 0; i < 16; i++)
                    for (int t = 0; t < 4; t++) o[c + 16 * t + i] = q[c + 4 * i + t];
            if (c < K) {  // a last 32 columns: lanes 8-15 of each vector stay zero
                memset(o + c, 0, 64 * sizeof(int16_t));
                for (int i = 0; i < 8; i++)
                    for (int t = 0; t < 4; t++) o[c + 16 * t + i] = q[c + 4 * i + t];
            }
            for (int64_t h = 0; h < Kp / 32; h++) {
                int32_t s = 0;
                for (int64_t k = 32 * h; k < 32 * h + 32 && k < K; k++) s += q[k];
                for (int i = 0; i < NB; i++) xh4[m * (Kp / 8) + h * NB + i] = (float)s;
            }
        }
        PARALLEL_ROW_BLOCKS(block_i4_q64(xp, xs, xh4, w + n0 * (K / 2), scales + n0 * G, mins + n0 * G, bias, y, M,
                                         K, N, n0, nb, group_size))
        free(xp);
        free(xh4);
    } else {
        int32_t *xg = malloc(sizeof(int32_t) * M * G);
        for (int64_t m = 0; m < M; m++)
            for (int64_t g = 0; g < G; g++) {
                int32_t s = 0;
                for (int64_t k = g * group_size; k < (g + 1) * group_size; k++) s += xq[m * K + k];
                xg[m * G + g] = s;
            }
        PARALLEL_ROW_BLOCKS(block_i4_i16(xq, xs, xg, w + n0 * (K / 2), scales + n0 * G, mins + n0 * G, bias, y, M,
                                         K, N, n0, nb, group_size))
        free(xg);
    }
    free(xq);
    free(xs);
    return 0;
}

SWL_AVX2_END
