// SPDX-License-Identifier: Apache-2.0
// Int8-per-group linear for decode shapes (M <= ~16 rows), AVX2:
//
//   y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]),   W[n, k] = q[n, k] * scales[n, g] (+ mins[n, g])
//
// for int8 codes q [N, K] and one fp32 scale (and optionally min) per group of `gs` columns
// (gs a multiple of 16). This is the layout GGUF's Q8_0 (gs 32), Q5_K (gs 32 with mins) and
// Q6_K (gs 16) repack into exactly (quant/gguf_blocks.py), so those files run without being
// expanded to fp32.
//
// Why its own kernel: cpu_linear.c's int8 kernel has one scale per row; with a scale per block of
// 16 or 32 the partial sums must be scaled per group. As in its int4 kernel, the activation rows
// are scaled to int16 (one scale per row, so a row's result does not depend on the other rows),
// multiplied with vpmaddwd (16 multiply-adds per instruction), the group's int32 lane sums go to
// fp32 times the group scale lane by lane, and a min contributes min * (sum of the group's
// activations), computed once per call. A group's int32 sums hold at most gs/16 steps of
// 2 * 127 * 32767 per lane: no overflow for any gs up to 2048.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "swisslm_kernels.h"

SWL_AVX2_BEGIN

#define GNB 4  // weight rows per register block

static inline __m256i g_load16(const int8_t *p) {  // 16 int8 -> 16 int16
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
}

// Each row scaled by its absmax to int16 (round to nearest), as cpu_linear.c's quantize_rows_i16.
static void g_quantize_rows(const float *x, int16_t *xq, float *xs, int64_t M, int64_t K) {
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * K;
        float mx = 0.0f;
        for (int64_t k = 0; k < K; k++) mx = fmaxf(mx, fabsf(r[k]));
        const float s = mx > 0.0f ? mx / 32767.0f : 1.0f, inv = 1.0f / s;
        xs[m] = s;
        const __m256 vi = _mm256_set1_ps(inv);
        int16_t *q = xq + m * K;
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) {
            __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(r + k), vi));
            __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(r + k + 8), vi));
            _mm256_storeu_si256((__m256i *)(q + k), _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8));
        }
        for (; k < K; k++) q[k] = (int16_t)lrintf(r[k] * inv);
    }
}

static inline __m128 g_hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// src rows [4][G] (row stride G) -> dst [G][4], so a group's 4 mins are one 128-bit load.
static void g_transpose4(const float *const src[GNB], float *dst, int64_t G) {
    int64_t g = 0;
    for (; g + 4 <= G; g += 4) {
        __m128 r0 = _mm_loadu_ps(src[0] + g), r1 = _mm_loadu_ps(src[1] + g);
        __m128 r2 = _mm_loadu_ps(src[2] + g), r3 = _mm_loadu_ps(src[3] + g);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        _mm_storeu_ps(dst + g * 4, r0);
        _mm_storeu_ps(dst + g * 4 + 4, r1);
        _mm_storeu_ps(dst + g * 4 + 8, r2);
        _mm_storeu_ps(dst + g * 4 + 12, r3);
    }
    for (; g < G; g++)
        for (int i = 0; i < GNB; i++) dst[g * 4 + i] = src[i][g];
}

// One activation row's 4 outputs: lane sums, + the mins term, * the row's scale, + bias. Shared
// by the one- and two-row loops, so a row's result does not depend on the batch.
static inline void g_store(float *y, int64_t N, int64_t m, int64_t n0, int nb, __m128 r, const float *mt,
                           const float *xg, int64_t G, float xs, const float *bias) {
    if (mt) {  // sum_g min[n, g] * X[m, g], 4 rows at a time: one FMA per group
        __m128 acc = _mm_setzero_ps();
        for (int64_t g = 0; g < G; g++) acc = _mm_fmadd_ps(_mm_loadu_ps(mt + g * 4), _mm_set1_ps(xg[g]), acc);
        r = _mm_add_ps(r, acc);
    }
    r = _mm_mul_ps(r, _mm_set1_ps(xs));
    float t[4];
    _mm_storeu_ps(t, r);
    for (int i = 0; i < nb; i++) y[m * N + n0 + i] = bias ? t[i] + bias[n0 + i] : t[i];
}

// Rows n0..n0+nb-1 (w, scales, mins at row n0) against every activation row. xg: per activation
// row and group the sum of its int16 activations (fp32, exact for gs <= 512; NULL without mins).
// mt: per-thread scratch of 4 * G floats for the block's mins, group-major.
static inline __attribute__((always_inline)) void block_g8(const int16_t *xq, const float *xs, const float *xg,
                                                           const int8_t *w, const float *scales, const float *mins,
                                                           const float *bias, float *y, int64_t M, int64_t K,
                                                           int64_t N, int64_t n0, int nb, int64_t gs, float *mt) {
    const int64_t G = K / gs;
    const int8_t *r[GNB];
    const float *sc[GNB], *mn[GNB];
    for (int i = 0; i < GNB; i++) {
        const int64_t row = i < nb ? i : nb - 1;
        r[i] = w + row * K;
        sc[i] = scales + row * G;
        mn[i] = mins ? mins + row * G : NULL;
    }
    if (mins) g_transpose4(mn, mt, G);
    const char *pf = (const char *)w + GNB * K;  // the next block: one sequential stream
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {  // two activation rows per loaded weight vector
        const int16_t *x0 = xq + m * K, *x1 = x0 + K;
        __m256 f00 = _mm256_setzero_ps(), f01 = f00, f02 = f00, f03 = f00;
        __m256 f10 = f00, f11 = f00, f12 = f00, f13 = f00;
        for (int64_t g = 0; g < G; g++) {
            __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00;
            __m256i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            for (int64_t k = g * gs; k < (g + 1) * gs; k += 16) {
                if (m == 0) _mm_prefetch(pf + k * GNB, _MM_HINT_T1);
                __m256i v0 = _mm256_loadu_si256((const __m256i *)(x0 + k));
                __m256i v1 = _mm256_loadu_si256((const __m256i *)(x1 + k));
                __m256i w0 = g_load16(r[0] + k), w1 = g_load16(r[1] + k);
                a00 = _mm256_add_epi32(a00, _mm256_madd_epi16(w0, v0));
                a10 = _mm256_add_epi32(a10, _mm256_madd_epi16(w0, v1));
                a01 = _mm256_add_epi32(a01, _mm256_madd_epi16(w1, v0));
                a11 = _mm256_add_epi32(a11, _mm256_madd_epi16(w1, v1));
                __m256i w2 = g_load16(r[2] + k), w3 = g_load16(r[3] + k);
                a02 = _mm256_add_epi32(a02, _mm256_madd_epi16(w2, v0));
                a12 = _mm256_add_epi32(a12, _mm256_madd_epi16(w2, v1));
                a03 = _mm256_add_epi32(a03, _mm256_madd_epi16(w3, v0));
                a13 = _mm256_add_epi32(a13, _mm256_madd_epi16(w3, v1));
            }
            const __m256 s0 = _mm256_set1_ps(sc[0][g]), s1 = _mm256_set1_ps(sc[1][g]);
            const __m256 s2 = _mm256_set1_ps(sc[2][g]), s3 = _mm256_set1_ps(sc[3][g]);
            f00 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a00), s0, f00);
            f01 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a01), s1, f01);
            f02 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a02), s2, f02);
            f03 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a03), s3, f03);
            f10 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a10), s0, f10);
            f11 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a11), s1, f11);
            f12 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a12), s2, f12);
            f13 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a13), s3, f13);
        }
        g_store(y, N, m, n0, nb, g_hsum4(f00, f01, f02, f03), mins ? mt : NULL, xg ? xg + m * G : NULL, G, xs[m],
                bias);
        g_store(y, N, m + 1, n0, nb, g_hsum4(f10, f11, f12, f13), mins ? mt : NULL, xg ? xg + (m + 1) * G : NULL,
                G, xs[m + 1], bias);
    }
    for (; m < M; m++) {  // the same arithmetic per (row, weight row): batch-invariant
        const int16_t *x0 = xq + m * K;
        __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
        for (int64_t g = 0; g < G; g++) {
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t k = g * gs; k < (g + 1) * gs; k += 16) {
                _mm_prefetch(pf + k * GNB, _MM_HINT_T1);
                __m256i v = _mm256_loadu_si256((const __m256i *)(x0 + k));
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(g_load16(r[0] + k), v));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(g_load16(r[1] + k), v));
                a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(g_load16(r[2] + k), v));
                a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(g_load16(r[3] + k), v));
            }
            f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), _mm256_set1_ps(sc[0][g]), f0);
            f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), _mm256_set1_ps(sc[1][g]), f1);
            f2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a2), _mm256_set1_ps(sc[2][g]), f2);
            f3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a3), _mm256_set1_ps(sc[3][g]), f3);
        }
        g_store(y, N, m, n0, nb, g_hsum4(f0, f1, f2, f3), mins ? mt : NULL, xg ? xg + m * G : NULL, G, xs[m],
                bias);
    }
}

// GGUF's group sizes as compile-time constants: the group loop is then fully unrolled (measured
// ~10-15% faster at 8-16 rows than with gs / 16 iterations decided at run time).
static void block_g8_16(const int16_t *xq, const float *xs, const float *xg, const int8_t *w, const float *scales,
                        const float *mins, const float *bias, float *y, int64_t M, int64_t K, int64_t N, int64_t n0,
                        int nb, float *mt) {
    block_g8(xq, xs, xg, w, scales, mins, bias, y, M, K, N, n0, nb, 16, mt);
}
static void block_g8_32(const int16_t *xq, const float *xs, const float *xg, const int8_t *w, const float *scales,
                        const float *mins, const float *bias, float *y, int64_t M, int64_t K, int64_t N, int64_t n0,
                        int nb, float *mt) {
    block_g8(xq, xs, xg, w, scales, mins, bias, y, M, K, N, n0, nb, 32, mt);
}
static void block_g8_any(const int16_t *xq, const float *xs, const float *xg, const int8_t *w, const float *scales,
                         const float *mins, const float *bias, float *y, int64_t M, int64_t K, int64_t N, int64_t n0,
                         int nb, int64_t gs, float *mt) {
    block_g8(xq, xs, xg, w, scales, mins, bias, y, M, K, N, n0, nb, gs, mt);
}

// Returns 0, or -1 when the group size is not a multiple of 16 or does not divide K.
int swl_linear_g8(const float *x, const int8_t *w, const float *scales, const float *mins, const float *bias,
                  float *y, int64_t M, int64_t K, int64_t N, int64_t gs, int nthreads) {
    if (gs <= 0 || gs % 16 || K % gs) return -1;
    const int64_t G = K / gs;
    int16_t *xq = malloc(sizeof(int16_t) * M * K);
    float *xs = malloc(sizeof(float) * M);
    float *xg = mins ? malloc(sizeof(float) * M * G) : NULL;
    g_quantize_rows(x, xq, xs, M, K);
    if (mins)
        for (int64_t m = 0; m < M; m++)
            for (int64_t g = 0; g < G; g++) {
                int32_t s = 0;
                for (int64_t k = g * gs; k < (g + 1) * gs; k++) s += xq[m * K + k];
                xg[m * G + g] = (float)s;
            }
    const int64_t nblocks = (N + GNB - 1) / GNB;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *mt = malloc(sizeof(float) * GNB * G);  // per thread scratch, see block_g8
#pragma omp for schedule(guided, 4)
        for (int64_t b = 0; b < nblocks; b++) {
            const int64_t n0 = b * GNB;
            const int nb = (int)(N - n0 < GNB ? N - n0 : GNB);
            const int8_t *wb = w + n0 * K;
            const float *sb = scales + n0 * G, *mb = mins ? mins + n0 * G : NULL;
            if (gs == 32)
                block_g8_32(xq, xs, xg, wb, sb, mb, bias, y, M, K, N, n0, nb, mt);
            else if (gs == 16)
                block_g8_16(xq, xs, xg, wb, sb, mb, bias, y, M, K, N, n0, nb, mt);
            else
                block_g8_any(xq, xs, xg, wb, sb, mb, bias, y, M, K, N, n0, nb, gs, mt);
        }
        free(mt);
    }
    free(xq);
    free(xs);
    free(xg);
    return 0;
}

SWL_AVX2_END
