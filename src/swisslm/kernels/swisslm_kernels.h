// SPDX-License-Identifier: Apache-2.0
// The C entry points of swisslm's CPU kernels, shared by the files that define them
// (cpu_linear.c, cpu_decode.c, cpu_layer.c) and the ones that call them (cpu_layer.c,
// pymodule.c), so a signature or the SwlLinear layout exists once and the compiler checks
// every definition against it.
#ifndef SWISSLM_KERNELS_H
#define SWISSLM_KERNELS_H
#include <stdint.h>

// A linear layer as the kernels see it. kind: 0 fp32 weight [N, K]; 1 int8 [N, K] + scales [N];
// 2 int4 [N, K/2] + scales, mins [N, K/group] (see cpu_linear.c).
typedef struct {
    int64_t kind;
    const void *w;
    const float *scales, *mins, *bias;
    int64_t group;
} SwlLinear;

// cpu_linear.c
void swl_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t K, int64_t N,
                    int nthreads);
void swl_linear_i8(const float *x, const int8_t *w, const float *scales, const float *bias, float *y, int64_t M,
                   int64_t K, int64_t N, int act16, int nthreads);
int swl_linear_i4(const float *x, const uint8_t *w, const float *scales, const float *mins, const float *bias,
                  float *y, int64_t M, int64_t K, int64_t N, int64_t group_size, int nthreads);
int swl_cpu_supported(void);
int swl_f32_isa(int want);  // fp32 kernel: -1 query, 0 AVX2, 1 AVX-512 (where the CPU has it)

// cpu_decode.c
void swl_rmsnorm(const float *x, const float *w, float *y, int64_t rows, int64_t C, float eps);
void swl_rope(const float *x, int64_t sb, int64_t st, int64_t sh, const float *cos_, const float *sin_, float *y,
              int64_t B, int64_t T, int64_t H, int64_t D, int64_t rd);
void swl_decode_attention(const float *q, int64_t qb, int64_t qh, const float *k, const float *v, int64_t kb,
                          int64_t kh, int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, float *out, int64_t B,
                          int64_t H, int64_t Hkv, int64_t S, int64_t D, float scale, int nthreads);
void swl_silu_mul(const float *h, float *out, int64_t R, int64_t I, const float *row_scale, int nthreads);
int swl_attention_step(const float *qkv, int64_t qkv_stride, const int64_t *pos, int64_t pb, const float *cos_,
                       const float *sin_, int64_t cb, int64_t rd, float *kc, float *vc, int64_t kb, int64_t kh,
                       int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, float *out, float *qbuf, int64_t B,
                       int64_t H, int64_t Hkv, int64_t S, int64_t D, float scale, int nthreads);

// cpu_layer.c
int swl_layer_step(const float *x, float *y, int64_t B, int64_t C, const float *ln1, const float *ln2, float eps,
                   float res_mult, const SwlLinear *lins, int64_t I, const int64_t *pos, int64_t pb,
                   const float *cos_, const float *sin_, int64_t cb, int64_t rd, float *kc, float *vc, int64_t kb,
                   int64_t kh, int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, int64_t H, int64_t Hkv,
                   int64_t S, int64_t D, float scale, int nthreads);
int swl_stack_step(const float *x, float *y, int64_t B, int64_t C, int64_t L, const int64_t *ip, const double *fp,
                   const int64_t *pos, int64_t pb, const float *cos_, const float *sin_, int64_t cb, int64_t rd,
                   const uint8_t *mask, int64_t mb, int64_t ms, int nthreads);

#endif
