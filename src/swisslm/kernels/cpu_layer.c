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
// scratch buffers. Python decides when a layer may take it (kernels/fused_step.py: every slot at
// its default, plain modules, no hooks) and fills the SwlLayer / SwlStep structs.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "swisslm_kernels.h"

SWL_AVX2_BEGIN

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
        case 3:
            return swl_linear_g8(x, (const int8_t *)l->w, l->scales, l->mins, l->bias, y, M, K, N, l->group, nt);
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
        const int grouped = lins[i].kind == 2 || lins[i].kind == 3;
        if (lins[i].kind < 0 || lins[i].kind > 3 || (grouped && (g <= 0 || g % 16 || in_width[i] % g)))
            return -2;
    }
    return 0;
}

static int check_positions(const SwlStep *st, int64_t B, int64_t S) {
    for (int64_t b = 0; b < B; b++)
        if (st->pos[b * st->pb] < 0 || st->pos[b * st->pb] >= S) return -1;
    return 0;
}

// The layer's arithmetic, arguments already checked; buf holds B * (C + W + 2Q + C + 3I) floats.
static void layer_run(const float *x, float *y, int64_t B, int64_t C, const SwlLayer *l, const SwlStep *st,
                      int nthreads, float *buf) {
    const SwlAttention *a = &l->attn;
    const int64_t Q = a->H * a->D, W = (a->H + 2 * a->Hkv) * a->D, I = l->inter;
    const SwlLinear *lins = l->lin;
    float *n = buf, *qkv = n + B * C, *qbuf = qkv + B * W, *att = qbuf + B * Q, *t = att + B * Q;
    float *h = t + B * C, *act = h + B * 2 * I;
    swl_rmsnorm(x, l->norm1, n, B, C, l->eps);
    linear_apply(&lins[0], n, qkv, B, C, W, nthreads);
    swl_attention_step(qkv, W, B, a, st, att, qbuf, nthreads);
    linear_apply(&lins[1], att, t, B, Q, C, nthreads);
    residual(x, t, y, B * C, l->res_mult);
    swl_rmsnorm(y, l->norm2, n, B, C, l->eps);
    linear_apply(&lins[2], n, h, B, C, 2 * I, nthreads);
    swl_silu_mul(h, act, B, I, NULL, 1);
    linear_apply(&lins[3], act, t, B, I, C, nthreads);
    residual(y, t, y, B * C, l->res_mult);
}

static size_t layer_scratch(int64_t B, int64_t C, const SwlLayer *l) {
    const SwlAttention *a = &l->attn;
    return sizeof(float) * (size_t)(B * (C + (a->H + 2 * a->Hkv) * a->D + 2 * a->H * a->D + C + 3 * l->inter));
}

// Checks one layer before anything runs: 0, -1 (a position outside its cache) or -2 (a linear).
static int check_layer(const SwlLayer *l, const SwlStep *st, int64_t B, int64_t C) {
    if (check_positions(st, B, l->attn.S)) return -1;
    return check_linears(l->lin, C, l->attn.H * l->attn.D, l->inter);
}

// x, y: (B, C) rows (y may not alias x).
int swl_layer_step(const float *x, float *y, int64_t B, int64_t C, const SwlLayer *layer, const SwlStep *st,
                   int nthreads) {
    const int rc = check_layer(layer, st, B, C);
    if (rc) return rc;
    float *buf = malloc(layer_scratch(B, C, layer));
    if (!buf) return -2;
    layer_run(x, y, B, C, layer, st, nthreads, buf);
    free(buf);
    return 0;
}

// Every layer of the model in one call (kernels.stack_step): between separate per-layer calls
// the Python in between ran ~3x slower than alone (the weight stream had just evicted its working
// set), ~2 ms per SmolLM2 token. Every layer is checked before the first one runs.
int swl_stack_step(const float *x, float *y, int64_t B, int64_t C, int64_t L, const SwlLayer *layers,
                   const SwlStep *st, int nthreads) {
    size_t scratch = 0;
    for (int64_t l = 0; l < L; l++) {
        const int rc = check_layer(&layers[l], st, B, C);
        if (rc) return rc;
        const size_t need = layer_scratch(B, C, &layers[l]);
        if (need > scratch) scratch = need;
    }
    float *buf = malloc(scratch + sizeof(float) * (size_t)(B * C));
    if (!buf) return -2;
    float *other = buf + scratch / sizeof(float);
    // Ping-pong between y and `other` so that the last layer writes y.
    const float *src = x;
    float *dst = (L % 2) ? y : other;
    for (int64_t l = 0; l < L; l++) {
        layer_run(src, dst, B, C, &layers[l], st, nthreads, buf);
        src = dst;
        dst = dst == y ? other : y;
    }
    if (L == 0) memcpy(y, x, sizeof(float) * (size_t)(B * C));
    free(buf);
    return 0;
}

SWL_AVX2_END

int64_t swl_layout_size(int which) {
    switch (which) {
        case 0:
            return (int64_t)sizeof(SwlLinear);
        case 1:
            return (int64_t)sizeof(SwlStep);
        case 2:
            return (int64_t)sizeof(SwlAttention);
        case 3:
            return (int64_t)sizeof(SwlLayer);
        default:
            return -1;
    }
}
