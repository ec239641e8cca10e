// SPDX-License-Identifier: Apache-2.0
// The C entry points of swisslm's CPU kernels, shared by the files that define them
// (cpu_linear.c, cpu_decode.c, cpu_layer.c) and the ones that call them (cpu_layer.c,
// pymodule.c), so a signature or the SwlLinear layout exists once and the compiler checks
// every definition against it.
#ifndef SWISSLM_KERNELS_H
#define SWISSLM_KERNELS_H
#include <stdint.h>

// The instruction set of the kernel code. The build passes no -mavx2: the kernel files are
// compiled for AVX2 + FMA between SWL_AVX2_BEGIN and SWL_AVX2_END, the module's init and
// swl_cpu_supported (pymodule.c) for the baseline x86-64, so importing the module on a CPU
// without AVX2 cannot fault; Python asks swl_cpu_supported before calling anything else.
#if defined(__clang__)
#define SWL_AVX2_BEGIN _Pragma("clang attribute push(__attribute__((target(\"avx2,fma\"))), apply_to = function)")
#define SWL_AVX2_END _Pragma("clang attribute pop")
#else
#define SWL_AVX2_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")")
#define SWL_AVX2_END _Pragma("GCC pop_options")
#endif

// ---- the layouts Python fills (kernels/layout.py mirrors each struct field by field; the
// module checks sizeof against ctypes.sizeof when it loads) --------------------------------

// A linear layer as the kernels see it. kind: 0 fp32 weight [N, K]; 1 int8 [N, K] + scales [N];
// 2 int4 [N, K/2] + scales, mins [N, K/group] (see cpu_linear.c); 3 int8 [N, K] + scales and
// optional mins [N, K/group] (cpu_group.c).
typedef struct {
    int64_t kind;
    const void *w;
    const float *scales, *mins, *bias;
    int64_t group;
} SwlLinear;

// What every layer of a one-token step shares: the rows' cache positions, their rotary
// cos/sin and the attention mask.
typedef struct {
    const int64_t *pos;     // cache position of row b at pos[b * pb] (pb 0: one for all rows)
    int64_t pb;
    const float *cos, *sin; // rotary rows (B, rd), row stride cb (0: shared); NULL when rd == 0
    int64_t cb, rd;
    const uint8_t *mask;    // bool, row b key s at mask[b * mb + s * ms] (True = attend); NULL: all
    int64_t mb, ms;
} SwlStep;

// One attention layer's shapes and KV cache: k and v are (B, Hkv, S, D) with the same element
// strides (kb, kh, ks) and a contiguous head dim; they may be windows of larger buffers.
typedef struct {
    int64_t H, Hkv, D, S;
    int64_t rotary;  // 0: no rotary (the step's cos/sin are not read)
    float *k, *v;
    int64_t kb, kh, ks;
    float scale;
} SwlAttention;

// One pre-norm decoder layer (cpu_layer.c): RMSNorm weights, the four linears (qkv, out,
// gate_up, down), the MLP inner width and the attention.
typedef struct {
    const float *norm1, *norm2;
    float eps, res_mult;  // res_mult: residual multiplier (Granite; 1 elsewhere)
    SwlLinear lin[4];
    int64_t inter;
    SwlAttention attn;
} SwlLayer;

// sizeof of each struct above (0 SwlLinear, 1 SwlStep, 2 SwlAttention, 3 SwlLayer; -1 else),
// for the load-time check against the Python mirror.
int64_t swl_layout_size(int which);

// cpu_linear.c
void swl_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t K, int64_t N,
                    int nthreads);
void swl_linear_i8(const float *x, const int8_t *w, const float *scales, const float *bias, float *y, int64_t M,
                   int64_t K, int64_t N, int act16, int nthreads);
int swl_linear_i4(const float *x, const uint8_t *w, const float *scales, const float *mins, const float *bias,
                  float *y, int64_t M, int64_t K, int64_t N, int64_t group_size, int nthreads);
int swl_f32_isa(int want);  // fp32 kernel: -1 query, 0 AVX2, 1 AVX-512 (where the CPU has it)

// cpu_group.c: int8 codes with a scale (and optional min, NULL: none) per group of `gs` columns.
// Returns 0, or -1 when gs is not a multiple of 16 or does not divide K.
int swl_linear_g8(const float *x, const int8_t *w, const float *scales, const float *mins, const float *bias,
                  float *y, int64_t M, int64_t K, int64_t N, int64_t gs, int nthreads);

// pymodule.c (baseline ISA: safe to call on any x86-64)
int swl_cpu_supported(void);

// cpu_decode.c
void swl_rmsnorm(const float *x, const float *w, float *y, int64_t rows, int64_t C, float eps);
void swl_rope(const float *x, int64_t sb, int64_t st, int64_t sh, const float *cos_, const float *sin_, float *y,
              int64_t B, int64_t T, int64_t H, int64_t D, int64_t rd);
void swl_decode_attention(const float *q, int64_t qb, int64_t qh, const float *k, const float *v, int64_t kb,
                          int64_t kh, int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, float *out, int64_t B,
                          int64_t H, int64_t Hkv, int64_t S, int64_t D, float scale, int nthreads);
void swl_silu_mul(const float *h, float *out, int64_t R, int64_t I, const float *row_scale, int nthreads);
// Returns 0; -1 (nothing written) when a row's position is outside the cache.
int swl_attention_step(const float *qkv, int64_t qkv_stride, int64_t B, const SwlAttention *a, const SwlStep *st,
                       float *out, float *qbuf, int nthreads);

// cpu_layer.c
// Both return 0; -1 when a cache position is out of range, -2 when a linear cannot run
// (unknown kind, int4 group not a multiple of 16 or not dividing K); nothing written then.
int swl_layer_step(const float *x, float *y, int64_t B, int64_t C, const SwlLayer *layer, const SwlStep *st,
                   int nthreads);
int swl_stack_step(const float *x, float *y, int64_t B, int64_t C, int64_t L, const SwlLayer *layers,
                   const SwlStep *st, int nthreads);

#endif
