// SPDX-License-Identifier: Apache-2.0
// Decode-step kernels beside the matmuls: RMSNorm, rotary embedding and one-query attention
// over the static KV cache.
//
// Why: at batch 1 a SmolLM2 token runs ~30 layers x ~30 small torch ops; each costs 3-8 us of
// dispatch on tensors of a few hundred floats, which added up to more time than the int8
// matmuls. One call here replaces 4-8 torch ops. Attention also stops at the last position
// the mask lets through instead of scanning the whole preallocated cache, which SDPA does
// (its cost grew with max cache length, not with the tokens actually cached).
#include <immintrin.h>

#include "swisslm_kernels.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

SWL_AVX2_BEGIN

// exp on 8 floats (Cephes' polynomial, as in the widely used avx_mathfun): ~1 ulp, clamped to
// +-88.38, so exp(-inf) comes out as ~1e-38, not 0 -- callers that need exact zeros mask them.
static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)), _mm256_set1_ps(88.3762626647949f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(0x7f)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// y[r, :] = w * (x[r, :] / sqrt(mean(x[r, :]^2) + eps)); rows contiguous (HF LlamaRMSNorm order:
// normalise, then scale by the weight).
void swl_rmsnorm(const float *x, const float *w, float *y, int64_t rows, int64_t C, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        __m256 acc = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + 8 <= C; c += 8) {
            __m256 v = _mm256_loadu_ps(xr + c);
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        float t[8];
        _mm256_storeu_ps(t, acc);
        float ss = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
        for (; c < C; c++) ss += xr[c] * xr[c];
        const float inv = 1.0f / sqrtf(ss / (float)C + eps);
        const __m256 vi = _mm256_set1_ps(inv);
        for (c = 0; c + 8 <= C; c += 8)
            _mm256_storeu_ps(yr + c, _mm256_mul_ps(_mm256_loadu_ps(w + c),
                                                   _mm256_mul_ps(_mm256_loadu_ps(xr + c), vi)));
        for (; c < C; c++) yr[c] = w[c] * (xr[c] * inv);
    }
}

// Rotate-half rotary of one head: y = x * cos + rotate_half(x) * sin over the first rd channels
// (cos/sin rows of rd, both halves equal, as rope_cos_sin builds them); channels >= rd pass
// through (partial rotary).
static void rope_row(const float *x, const float *c, const float *s, float *y, int64_t D, int64_t rd) {
    const int64_t half = rd / 2;
    int64_t i = 0;
    for (; i + 8 <= half; i += 8) {
        __m256 x1 = _mm256_loadu_ps(x + i), x2 = _mm256_loadu_ps(x + half + i);
        __m256 c1 = _mm256_loadu_ps(c + i), s1 = _mm256_loadu_ps(s + i);
        __m256 c2 = _mm256_loadu_ps(c + half + i), s2 = _mm256_loadu_ps(s + half + i);
        _mm256_storeu_ps(y + i, _mm256_sub_ps(_mm256_mul_ps(x1, c1), _mm256_mul_ps(x2, s1)));
        _mm256_storeu_ps(y + half + i, _mm256_add_ps(_mm256_mul_ps(x2, c2), _mm256_mul_ps(x1, s2)));
    }
    for (; i < half; i++) {
        float x1 = x[i], x2 = x[half + i];
        y[i] = x1 * c[i] - x2 * s[i];
        y[half + i] = x2 * c[half + i] + x1 * s[half + i];
    }
    for (i = rd; i < D; i++) y[i] = x[i];
}

// rope_row over x viewed as (B, T, H, D) with element strides (sb, st, sh) and contiguous D,
// into y (B, T, H, D) contiguous; cos/sin: (B, T, rd) contiguous.
void swl_rope(const float *x, int64_t sb, int64_t st, int64_t sh, const float *cos_, const float *sin_,
              float *y, int64_t B, int64_t T, int64_t H, int64_t D, int64_t rd) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            const float *c = cos_ + (b * T + t) * rd, *s = sin_ + (b * T + t) * rd;
            for (int64_t h = 0; h < H; h++)
                rope_row(x + b * sb + t * st + h * sh, c, s, y + ((b * T + t) * H + h) * D, D, rd);
        }
}

static inline float dot(const float *a, const float *b, int64_t D) {
    __m256 acc = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc);
    float t[8];
    _mm256_storeu_ps(t, acc);
    float s = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
    for (; d < D; d++) s += a[d] * b[d];
    return s;
}

// One query per row: out[b, h, :] = softmax(scale * q[b, h] . k[b, h / rep, j]) @ v[b, h / rep, j]
// over cache positions j < S where mask[b, j] is true (mask may be NULL: all of j < S).
// q: (B, H, D) with element strides (qb, qh), contiguous D. k, v: (B, Hkv, S, D) with the same
// element strides (kb, kh, ks) and contiguous D (views into a larger cache are fine).
// mask: bytes with strides (mb, ms). out: (B, H, D) contiguous. Softmax in fp32 with max shift.
void swl_decode_attention(const float *q, int64_t qb, int64_t qh, const float *k, const float *v, int64_t kb,
                          int64_t kh, int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, float *out, int64_t B,
                          int64_t H, int64_t Hkv, int64_t S, int64_t D, float scale, int nthreads) {
    const int64_t rep = H / Hkv;
    // A thread team costs more than a very short context's attention, so only longer ones are
    // split. The cached keys and values arrive cold (the weight streams evicted them since the
    // last step), and two threads fetch them twice as fast: 30 SmolLM2 layers at 100 cached
    // positions took 0.76-0.79 ms split against 0.94-1.05 ms on one thread.
#ifndef ATTN_PAR_MIN
#define ATTN_PAR_MIN (1 << 14)
#endif
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && B * H * S * D > ATTN_PAR_MIN)
    {
        float *p = malloc(sizeof(float) * (S > 0 ? S : 1));
        float *acc = malloc(sizeof(float) * D);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            const int64_t b = bh / H, h = bh % H, kvh = h / rep;
            const float *qr = q + b * qb + h * qh;
            const float *kr0 = k + b * kb + kvh * kh, *vr0 = v + b * kb + kvh * kh;
            const uint8_t *mr = mask ? mask + b * mb : NULL;
            int64_t Sb = S;  // the static cache is mostly empty: stop after the last visible key
            if (mr)
                while (Sb > 0 && !mr[(Sb - 1) * ms]) Sb--;
            float mx = -INFINITY;
            for (int64_t j = 0; j < Sb; j++) {
                if (mr && !mr[j * ms]) { p[j] = -INFINITY; continue; }
                p[j] = scale * dot(qr, kr0 + j * ks, D);
                if (p[j] > mx) mx = p[j];
            }
            float *o = out + (b * H + h) * D;
            if (mx == -INFINITY) {  // nothing to attend to (a fully masked row): zeros, not NaN
                for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
                continue;
            }
            // p <- exp(p - max), masked keys exactly 0; then out = sum_j p_j v_j / sum_j p_j.
            const __m256 vmx = _mm256_set1_ps(mx), ninf = _mm256_set1_ps(-INFINITY);
            __m256 vsum = _mm256_setzero_ps();
            int64_t j = 0;
            for (; j + 8 <= Sb; j += 8) {
                __m256 pv = _mm256_loadu_ps(p + j);
                __m256 e = _mm256_andnot_ps(_mm256_cmp_ps(pv, ninf, _CMP_EQ_OQ), exp256(_mm256_sub_ps(pv, vmx)));
                _mm256_storeu_ps(p + j, e);
                vsum = _mm256_add_ps(vsum, e);
            }
            float t[8], sum = 0.0f;
            _mm256_storeu_ps(t, vsum);
            for (int i = 0; i < 8; i++) sum += t[i];
            for (; j < Sb; j++) {
                p[j] = p[j] == -INFINITY ? 0.0f : expf(p[j] - mx);
                sum += p[j];
            }
            const float inv = 1.0f / sum;
            int64_t d0 = 0;
            for (; d0 + 64 <= D; d0 += 64) {  // 64 output dims in 8 registers across all keys
                __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
                for (j = 0; j < Sb; j++) {
                    const float *vr = vr0 + j * ks + d0;
                    const __m256 e = _mm256_set1_ps(p[j]);
                    c0 = _mm256_fmadd_ps(e, _mm256_loadu_ps(vr), c0);
                    c1 = _mm256_fmadd_ps(e, _mm256_loadu_ps(vr + 8), c1);
                    c2 = _mm256_fmadd_ps(e, _mm256_loadu_ps(vr + 16), c2);
                    c3 = _mm256_fmadd_ps(e, _mm256_loadu_ps(vr + 24), c3);
                    c4 = _mm256_fmadd_ps(e, _mm256_loadu_ps(vr + 32), c4);
                    c5 = _mm256_fmadd_ps(e, _mm256_loadu_ps(vr + 40), c5);
                    c6 = _mm256_fmadd_ps(e, _mm256_loadu_ps(vr + 48), c6);
                    c7 = _mm256_fmadd_ps(e, _mm256_loadu_ps(vr + 56), c7);
                }
                const __m256 vi = _mm256_set1_ps(inv);
                _mm256_storeu_ps(o + d0, _mm256_mul_ps(c0, vi));
                _mm256_storeu_ps(o + d0 + 8, _mm256_mul_ps(c1, vi));
                _mm256_storeu_ps(o + d0 + 16, _mm256_mul_ps(c2, vi));
                _mm256_storeu_ps(o + d0 + 24, _mm256_mul_ps(c3, vi));
                _mm256_storeu_ps(o + d0 + 32, _mm256_mul_ps(c4, vi));
                _mm256_storeu_ps(o + d0 + 40, _mm256_mul_ps(c5, vi));
                _mm256_storeu_ps(o + d0 + 48, _mm256_mul_ps(c6, vi));
                _mm256_storeu_ps(o + d0 + 56, _mm256_mul_ps(c7, vi));
            }
            if (d0 < D) {  // head dims that are not a multiple of 64
                for (int64_t d = d0; d < D; d++) acc[d] = 0.0f;
                for (j = 0; j < Sb; j++) {
                    const float *vr = vr0 + j * ks;
                    for (int64_t d = d0; d < D; d++) acc[d] += p[j] * vr[d];
                }
                for (int64_t d = d0; d < D; d++) o[d] = acc[d] * inv;
            }
        }
        free(p);
        free(acc);
    }
}

// silu(gate) * up for h = [gate | up] rows (R, 2I) -> out (R, I): one call for the SwiGLU
// activation instead of split + silu + mul. row_scale (R,) or NULL multiplies each output row
// (a MoE's routing weights: one pass over the sorted expert rows instead of three).
void swl_silu_mul(const float *h, float *out, int64_t R, int64_t I, const float *row_scale, int nthreads) {
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1 && R * I >= 65536)")
    for (int64_t r = 0; r < R; r++) {
        const float *g = h + r * 2 * I, *u = g + I;
        float *o = out + r * I;
        const float rs = row_scale ? row_scale[r] : 1.0f;
        const __m256 vrs = _mm256_set1_ps(rs);
        int64_t i = 0;
        for (; i + 8 <= I; i += 8) {
            __m256 gv = _mm256_loadu_ps(g + i);
            __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv));
            __m256 sv = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
            __m256 p = _mm256_mul_ps(sv, _mm256_loadu_ps(u + i));
            _mm256_storeu_ps(o + i, row_scale ? _mm256_mul_ps(p, vrs) : p);
        }
        for (; i < I; i++) {
            const float p = g[i] / (1.0f + expf(-g[i])) * u[i];
            o[i] = row_scale ? p * rs : p;
        }
    }
}

// The whole one-token attention of a Llama-style layer after the qkv projection:
//   split qkv (B, (H + 2 Hkv) D) rows -> rotary on q, k (rd channels; rd = 0: none) -> write k, v
//   into the caches at each row's position -> attention over the visible cached keys
//   -> out (B, H D), the layout the output projection reads.
// st: the rows' positions, rotary rows and mask (SwlStep); a: shapes and caches (SwlAttention).
int swl_attention_step(const float *qkv, int64_t qkv_stride, int64_t B, const SwlAttention *a, const SwlStep *st,
                       float *out, float *qbuf, int nthreads) {
    const int64_t H = a->H, Hkv = a->Hkv, D = a->D, S = a->S, pb = st->pb, cb = st->cb;
    const int64_t rd = a->rotary ? st->rd : 0, kb = a->kb, kh = a->kh, ks = a->ks;
    const int64_t *pos = st->pos;
    float *kc = a->k, *vc = a->v;
    for (int64_t b = 0; b < B; b++)
        if (pos[b * pb] < 0 || pos[b * pb] >= S) return -1;
    for (int64_t b = 0; b < B; b++) {
        const float *row = qkv + b * qkv_stride;
        const float *c = rd ? st->cos + b * cb : NULL, *s = rd ? st->sin + b * cb : NULL;
        const int64_t p = pos[b * pb];
        // rope_row with rd = 0 (no rotary) is a plain copy
        for (int64_t h = 0; h < H; h++) rope_row(row + h * D, c, s, qbuf + (b * H + h) * D, D, rd);
        for (int64_t h = 0; h < Hkv; h++) {
            const float *vr = row + (H + Hkv + h) * D;
            float *vd = vc + b * kb + h * kh + p * ks;
            rope_row(row + (H + h) * D, c, s, kc + b * kb + h * kh + p * ks, D, rd);
            for (int64_t d = 0; d < D; d++) vd[d] = vr[d];
        }
    }
    swl_decode_attention(qbuf, H * D, D, kc, vc, kb, kh, ks, st->mask, st->mb, st->ms, out, B, H, Hkv, S, D, a->scale,
                         nthreads);
    return 0;
}

SWL_AVX2_END
