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
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

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

// Rotate-half rotary embedding of x viewed as (B, T, H, D) with element strides (sb, st, sh) and
// contiguous D, into y (B, T, H, D) contiguous. cos/sin: (B, T, rd) contiguous (both halves
// equal, as rope_cos_sin builds them); channels >= rd pass through (partial rotary).
void swl_rope(const float *x, int64_t sb, int64_t st, int64_t sh, const float *cos_, const float *sin_,
              float *y, int64_t B, int64_t T, int64_t H, int64_t D, int64_t rd) {
    const int64_t half = rd / 2;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            const float *c = cos_ + (b * T + t) * rd, *s = sin_ + (b * T + t) * rd;
            for (int64_t h = 0; h < H; h++) {
                const float *xr = x + b * sb + t * st + h * sh;
                float *yr = y + ((b * T + t) * H + h) * D;
                int64_t i = 0;
                for (; i + 8 <= half; i += 8) {
                    __m256 x1 = _mm256_loadu_ps(xr + i), x2 = _mm256_loadu_ps(xr + half + i);
                    __m256 c1 = _mm256_loadu_ps(c + i), s1 = _mm256_loadu_ps(s + i);
                    __m256 c2 = _mm256_loadu_ps(c + half + i), s2 = _mm256_loadu_ps(s + half + i);
                    _mm256_storeu_ps(yr + i, _mm256_sub_ps(_mm256_mul_ps(x1, c1), _mm256_mul_ps(x2, s1)));
                    _mm256_storeu_ps(yr + half + i, _mm256_add_ps(_mm256_mul_ps(x2, c2), _mm256_mul_ps(x1, s2)));
                }
                for (; i < half; i++) {
                    float x1 = xr[i], x2 = xr[half + i];
                    yr[i] = x1 * c[i] - x2 * s[i];
                    yr[half + i] = x2 * c[half + i] + x1 * s[half + i];
                }
                for (i = rd; i < D; i++) yr[i] = xr[i];
            }
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
    // A thread team costs more than a short context's attention: only long ones are split.
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && B * H * S * D > (1 << 18))
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
            for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
            if (mx == -INFINITY) {  // nothing to attend to (a fully masked row): zeros, not NaN
                for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
                continue;
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < Sb; j++) {
                if (p[j] == -INFINITY) continue;
                const float e = expf(p[j] - mx);
                sum += e;
                const float *vr = vr0 + j * ks;
                const __m256 ve = _mm256_set1_ps(e);
                int64_t d = 0;
                for (; d + 8 <= D; d += 8)
                    _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(ve, _mm256_loadu_ps(vr + d), _mm256_loadu_ps(acc + d)));
                for (; d < D; d++) acc[d] += e * vr[d];
            }
            const float inv = 1.0f / sum;
            for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
        }
        free(p);
        free(acc);
    }
}

// silu(gate) * up for h = [gate | up] rows (R, 2I) -> out (R, I): one call for the SwiGLU
// activation instead of split + silu + mul.
void swl_silu_mul(const float *h, float *out, int64_t R, int64_t I) {
    for (int64_t r = 0; r < R; r++) {
        const float *g = h + r * 2 * I, *u = g + I;
        float *o = out + r * I;
        for (int64_t i = 0; i < I; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

static void rope_row(const float *x, const float *c, const float *s, float *y, int64_t D, int64_t rd) {
    const int64_t half = rd / 2;
    for (int64_t i = 0; i < half; i++) {
        float x1 = x[i], x2 = x[half + i];
        y[i] = x1 * c[i] - x2 * s[i];
        y[half + i] = x2 * c[half + i] + x1 * s[half + i];
    }
    for (int64_t i = rd; i < D; i++) y[i] = x[i];
}

// The whole one-token attention of a Llama-style layer after the qkv projection:
//   split qkv (B, (H + 2 Hkv) D) rows -> rotary on q, k (rd channels; rd = 0: none) -> write k, v
//   into the caches at each row's position -> attention over the visible cached keys
//   -> out (B, H D), the layout the output projection reads.
// pos: int64 cache position of each row, element stride pb (0: one position for all rows).
// cos/sin: (B, rd) rows with stride cb (0: shared). Attention as swl_decode_attention.
void swl_attention_step(const float *qkv, int64_t qkv_stride, const int64_t *pos, int64_t pb,
                        const float *cos_, const float *sin_, int64_t cb, int64_t rd, float *kc, float *vc,
                        int64_t kb, int64_t kh, int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms,
                        float *out, float *qbuf, int64_t B, int64_t H, int64_t Hkv, int64_t S, int64_t D,
                        float scale, int nthreads) {
    for (int64_t b = 0; b < B; b++) {
        const float *row = qkv + b * qkv_stride, *c = cos_ + b * cb, *s = sin_ + b * cb;
        const int64_t p = pos[b * pb];
        for (int64_t h = 0; h < H; h++) {
            if (rd) rope_row(row + h * D, c, s, qbuf + (b * H + h) * D, D, rd);
            else for (int64_t d = 0; d < D; d++) qbuf[(b * H + h) * D + d] = row[h * D + d];
        }
        for (int64_t h = 0; h < Hkv; h++) {
            const float *kr = row + (H + h) * D, *vr = row + (H + Hkv + h) * D;
            float *kd = kc + b * kb + h * kh + p * ks, *vd = vc + b * kb + h * kh + p * ks;
            if (rd) rope_row(kr, c, s, kd, D, rd);
            else for (int64_t d = 0; d < D; d++) kd[d] = kr[d];
            for (int64_t d = 0; d < D; d++) vd[d] = vr[d];
        }
    }
    swl_decode_attention(qbuf, H * D, D, kc, vc, kb, kh, ks, mask, mb, ms, out, B, H, Hkv, S, D, scale, nthreads);
}
