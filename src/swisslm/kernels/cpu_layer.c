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
// scratch buffers. Python decides when a layer may take it (Block._fused_step: every slot at its
// default, plain modules, no hooks) and builds the arguments.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void swl_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t K, int64_t N,
                    int nthreads);
void swl_linear_i8(const float *x, const int8_t *w, const float *scales, const float *bias, float *y, int64_t M,
                   int64_t K, int64_t N, int act16, int nthreads);
int swl_linear_i4(const float *x, const uint8_t *w, const float *scales, const float *mins, const float *bias,
                  float *y, int64_t M, int64_t K, int64_t N, int64_t group_size, int nthreads);
void swl_rmsnorm(const float *x, const float *w, float *y, int64_t rows, int64_t C, float eps);
void swl_silu_mul(const float *h, float *out, int64_t R, int64_t I, const float *row_scale, int nthreads);
int swl_attention_step(const float *qkv, int64_t qkv_stride, const int64_t *pos, int64_t pb, const float *cos_,
                       const float *sin_, int64_t cb, int64_t rd, float *kc, float *vc, int64_t kb, int64_t kh,
                       int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, float *out, float *qbuf, int64_t B,
                       int64_t H, int64_t Hkv, int64_t S, int64_t D, float scale, int nthreads);

// A linear layer as the kernels see it. kind: 0 fp32 weight [N, K]; 1 int8 [N, K] + scales [N];
// 2 int4 [N, K/2] + scales, mins [N, K/group] (see cpu_linear.c).
typedef struct {
    int64_t kind;
    const void *w;
    const float *scales, *mins, *bias;
    int64_t group;
} SwlLinear;

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

// x, y: (B, C) rows (y may not alias x). lins: qkv, out, gate_up, down. I: MLP inner width.
// Attention arguments as swl_attention_step. Returns 0; -1 when a cache position is out of
// range, -2 when a linear cannot run (unknown kind, int4 group not a multiple of 16 or not
// dividing K); in both cases before anything is written.
int swl_layer_step(const float *x, float *y, int64_t B, int64_t C, const float *ln1, const float *ln2, float eps,
                   float res_mult, const SwlLinear *lins, int64_t I, const int64_t *pos, int64_t pb,
                   const float *cos_, const float *sin_, int64_t cb, int64_t rd, float *kc, float *vc, int64_t kb,
                   int64_t kh, int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, int64_t H, int64_t Hkv,
                   int64_t S, int64_t D, float scale, int nthreads) {
    for (int64_t b = 0; b < B; b++)
        if (pos[b * pb] < 0 || pos[b * pb] >= S) return -1;
    const int64_t Q = H * D, W = (H + 2 * Hkv) * D;
    const int64_t in_width[4] = {C, Q, C, I};
    for (int i = 0; i < 4; i++) {
        const int64_t g = lins[i].group;
        if (lins[i].kind < 0 || lins[i].kind > 2 || (lins[i].kind == 2 && (g <= 0 || g % 16 || in_width[i] % g)))
            return -2;
    }
    // One scratch block: normed rows, qkv, q after rotary, attention out, branch, gate|up, act.
    float *buf = malloc(sizeof(float) * (size_t)(B * (C + W + Q + Q + C + 2 * I + I)));
    if (!buf) return -2;
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
    free(buf);
    return 0;
}
