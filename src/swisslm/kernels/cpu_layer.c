// SPDX-License-Identifier: Apache-2.0
// One whole pre-norm decoder layer (Llama, SmolLM2, Granite) for a one-token decode step:
//
//   x' = x + m * out(attention(rope(qkv(rmsnorm(x)))))        m: residual multiplier (Granite)
//   y  = x' + m * down(silu(gate(n)) * up(n)),  n = rmsnorm(x')
//
// Why: at batch 1 the layer's kernels take ~0.6 ms, and calling them one by one from Python
// (module calls, slot attributes, argument checks, output tensors: ~10 calls per layer) cost
// another ~0.13 ms per layer, 4 ms of a 24 ms SmolLM2 token. Here the layer is one call that
// chains the same kernels the module path runs (same functions, same order, same numerics) over
// scratch buffers. Python decides when a layer may take it (core/fused_step.py: every slot at its
// default, plain modules, no hooks) and builds the arguments.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "swisslm_kernels.h"

static int linear_apply(const SwlLinear *l, const float *x, float *y, int64_t M, int64_t K, int64_t N, int nt) {
    switch (l->kind) {
        case 0:
            swl_linear_f32(x, (const float *)l->w, l->bias, y, M, K, N, nt);
            return 0;
        case 1:
            swl_linear_i8(x, (const int8_t *)l->w, l->scales, l->bias, y, M, K, N, 1, nt);
            return 0;
        case 2:
            return swl_linear_i4(x, (const uint8_t *)l->w, l->scales, l->mins, l->bias, y, M, K, N, l->group, nt);
        default:
            return -1;
    }
}

// y = x + m * t, in the module path's order (branch scaled first; m == 1: a plain add).
static void residual(const float *x, const float *t, float *y, int64_t n, float m) {
    if (m == 1.0f)
        for (int64_t i = 0; i < n; i++) y[i] = x[i] + t[i];
    else
        for (int64_t i = 0; i < n; i++) {
            const float b = t[i] * m;
            y[i] = x[i] + b;
        }
}

static int check_linears(const SwlLinear *lins, int64_t C, int64_t Q, int64_t I) {
    const int64_t in_width[4] = {C, Q, C, I};
    for (int i = 0; i < 4; i++) {
        const int64_t g = lins[i].group;
        if (lins[i].kind < 0 || lins[i].kind > 2 || (lins[i].kind == 2 && (g <= 0 || g % 16 || in_width[i] % g)))
            return -2;
    }
    return 0;
}

static int check_positions(const int64_t *pos, int64_t pb, int64_t B, int64_t S) {
    for (int64_t b = 0; b < B; b++)
        if (pos[b * pb] < 0 || pos[b * pb] >= S) return -1;
    return 0;
}

// The layer's arithmetic, arguments already checked; buf holds B * (C + W + 2Q + C + 3I) floats.
static void layer_run(const float *x, float *y, int64_t B, int64_t C, const float *ln1, const float *ln2, float eps,
                      float res_mult, const SwlLinear *lins, int64_t I, const int64_t *pos, int64_t pb,
                      const float *cos_, const float *sin_, int64_t cb, int64_t rd, float *kc, float *vc, int64_t kb,
                      int64_t kh, int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, int64_t H, int64_t Hkv,
                      int64_t S, int64_t D, float scale, int nthreads, float *buf) {
    const int64_t Q = H * D, W = (H + 2 * Hkv) * D;
    float *n = buf, *qkv = n + B * C, *qbuf = qkv + B * W, *att = qbuf + B * Q, *t = att + B * Q;
    float *h = t + B * C, *a = h + B * 2 * I;
    swl_rmsnorm(x, ln1, n, B, C, eps);
    linear_apply(&lins[0], n, qkv, B, C, W, nthreads);
    swl_attention_step(qkv, W, pos, pb, cos_, sin_, cb, rd, kc, vc, kb, kh, ks, mask, mb, ms, att, qbuf, B, H, Hkv,
                       S, D, scale, nthreads);
    linear_apply(&lins[1], att, t, B, Q, C, nthreads);
    residual(x, t, y, B * C, res_mult);
    swl_rmsnorm(y, ln2, n, B, C, eps);
    linear_apply(&lins[2], n, h, B, C, 2 * I, nthreads);
    swl_silu_mul(h, a, B, I, NULL, 1);
    linear_apply(&lins[3], a, t, B, I, C, nthreads);
    residual(y, t, y, B * C, res_mult);
}

static size_t layer_scratch(int64_t B, int64_t C, int64_t H, int64_t Hkv, int64_t D, int64_t I) {
    return sizeof(float) * (size_t)(B * (C + (H + 2 * Hkv) * D + 2 * H * D + C + 3 * I));
}

// x, y: (B, C) rows (y may not alias x). lins: qkv, out, gate_up, down. I: MLP inner width.
// Attention arguments as swl_attention_step. Returns 0; -1 when a cache position is out of
// range, -2 when a linear cannot run (unknown kind, int4 group not a multiple of 16 or not
// dividing K); in both cases before anything is written.
int swl_layer_step(const float *x, float *y, int64_t B, int64_t C, const float *ln1, const float *ln2, float eps,
                   float res_mult, const SwlLinear *lins, int64_t I, const int64_t *pos, int64_t pb,
                   const float *cos_, const float *sin_, int64_t cb, int64_t rd, float *kc, float *vc, int64_t kb,
                   int64_t kh, int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, int64_t H, int64_t Hkv,
                   int64_t S, int64_t D, float scale, int nthreads) {
    if (check_positions(pos, pb, B, S)) return -1;
    if (check_linears(lins, C, H * D, I)) return -2;
    float *buf = malloc(layer_scratch(B, C, H, Hkv, D, I));
    if (!buf) return -2;
    layer_run(x, y, B, C, ln1, ln2, eps, res_mult, lins, I, pos, pb, cos_, sin_, cb, rd, kc, vc, kb, kh, ks, mask, mb,
              ms, H, Hkv, S, D, scale, nthreads, buf);
    free(buf);
    return 0;
}

// Every layer of the model in one call (kernels.stack_step): between separate per-layer calls
// the Python in between ran ~3x slower than alone (the weight stream had just evicted its working
// set), ~2 ms per SmolLM2 token. Layer l is ip[l * STACK_NI ...] (ints; pointers as int64) and
// fp[l * STACK_NF ...] (eps, residual multiplier, attention scale), laid out as below and packed
// by kernels.stack_step. Every layer is checked before the first one runs.
#define STACK_NI 37
#define STACK_NF 3
int swl_stack_step(const float *x, float *y, int64_t B, int64_t C, int64_t L, const int64_t *ip, const double *fp,
                   const int64_t *pos, int64_t pb, const float *cos_, const float *sin_, int64_t cb, int64_t rd,
                   const uint8_t *mask, int64_t mb, int64_t ms, int nthreads) {
    SwlLinear *lins = malloc(sizeof(SwlLinear) * 4 * (size_t)(L ? L : 1));
    if (!lins) return -2;
    size_t scratch = 0;
    for (int64_t l = 0; l < L; l++) {
        const int64_t *p = ip + l * STACK_NI;
        for (int i = 0; i < 4; i++) {
            const int64_t *q = p + 2 + 6 * i;
            lins[4 * l + i] = (SwlLinear){q[0], (const void *)q[1], (const float *)q[2], (const float *)q[3],
                                          (const float *)q[4], q[5]};
        }
        const int64_t I = p[26], H = p[27], Hkv = p[28], D = p[29], S = p[36];
        if (check_positions(pos, pb, B, S)) {
            free(lins);
            return -1;
        }
        if (check_linears(lins + 4 * l, C, H * D, I)) {
            free(lins);
            return -2;
        }
        const size_t need = layer_scratch(B, C, H, Hkv, D, I);
        if (need > scratch) scratch = need;
    }
    float *buf = malloc(scratch + sizeof(float) * (size_t)(B * C));
    if (!buf) {
        free(lins);
        return -2;
    }
    float *other = buf + scratch / sizeof(float);
    // Ping-pong between y and `other` so that the last layer writes y.
    const float *src = x;
    float *dst = (L % 2) ? y : other;
    for (int64_t l = 0; l < L; l++) {
        const int64_t *p = ip + l * STACK_NI;
        const double *f = fp + l * STACK_NF;
        layer_run(src, dst, B, C, (const float *)p[0], (const float *)p[1], (float)f[0], (float)f[1], lins + 4 * l,
                  p[26], pos, pb, cos_, sin_, cb, p[30] ? rd : 0, (float *)p[31], (float *)p[32], p[33], p[34], p[35],
                  mask, mb, ms, p[27], p[28], p[36], p[29], (float)f[2], nthreads, buf);
        src = dst;
        dst = dst == y ? other : y;
    }
    if (L == 0) memcpy(y, x, sizeof(float) * (size_t)(B * C));
    free(buf);
    free(lins);
    return 0;
}
