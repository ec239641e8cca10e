// SPDX-License-Identifier: Apache-2.0
// The Python entry points of the kernels: a plain CPython extension (no torch headers) whose
// functions take data pointers and sizes as Python ints and release the GIL while they run.
// A ctypes call with ten arguments cost ~4 us here and a decode token makes ~240 kernel calls;
// METH_FASTCALL parsing costs a fraction of a microsecond.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

void swl_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t K, int64_t N,
                    int nthreads);
void swl_linear_i8(const float *x, const int8_t *w, const float *scales, const float *bias, float *y, int64_t M,
                   int64_t K, int64_t N, int act16, int nthreads);
int swl_linear_i4(const float *x, const uint8_t *w, const float *scales, const float *mins, const float *bias,
                  float *y, int64_t M, int64_t K, int64_t N, int64_t group_size, int nthreads);
int swl_cpu_supported(void);
void swl_rmsnorm(const float *x, const float *w, float *y, int64_t rows, int64_t C, float eps);
void swl_rope(const float *x, int64_t sb, int64_t st, int64_t sh, const float *cos_, const float *sin_, float *y,
              int64_t B, int64_t T, int64_t H, int64_t D, int64_t rd);
void swl_decode_attention(const float *q, int64_t qb, int64_t qh, const float *k, const float *v, int64_t kb,
                          int64_t kh, int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, float *out, int64_t B,
                          int64_t H, int64_t Hkv, int64_t S, int64_t D, float scale, int nthreads);
void swl_silu_mul(const float *h, float *out, int64_t R, int64_t I, const float *row_scale, int nthreads);
typedef struct {
    int64_t kind;
    const void *w;
    const float *scales, *mins, *bias;
    int64_t group;
} SwlLinear;
int swl_layer_step(const float *x, float *y, int64_t B, int64_t C, const float *ln1, const float *ln2, float eps,
                   float res_mult, const SwlLinear *lins, int64_t I, const int64_t *pos, int64_t pb,
                   const float *cos_, const float *sin_, int64_t cb, int64_t rd, float *kc, float *vc, int64_t kb,
                   int64_t kh, int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, int64_t H, int64_t Hkv,
                   int64_t S, int64_t D, float scale, int nthreads);
int swl_stack_step(const float *x, float *y, int64_t B, int64_t C, int64_t L, const int64_t *ip, const double *fp,
                   const int64_t *pos, int64_t pb, const float *cos_, const float *sin_, int64_t cb, int64_t rd,
                   const uint8_t *mask, int64_t mb, int64_t ms, int nthreads);
int swl_attention_step(const float *qkv, int64_t qkv_stride, const int64_t *pos, int64_t pb, const float *cos_,
                        const float *sin_, int64_t cb, int64_t rd, float *kc, float *vc, int64_t kb, int64_t kh,
                        int64_t ks, const uint8_t *mask, int64_t mb, int64_t ms, float *out, float *qbuf, int64_t B,
                        int64_t H, int64_t Hkv, int64_t S, int64_t D, float scale, int nthreads);

typedef union {
    void *p;
    int64_t i;
    float f;
} Arg;

// fmt: one letter per argument: p = pointer (int or None -> NULL), i = int64, f = float.
static int parse(PyObject *const *args, Py_ssize_t n, const char *fmt, Arg *out) {
    Py_ssize_t want = (Py_ssize_t)strlen(fmt);
    if (n != want) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", want, n);
        return 0;
    }
    for (Py_ssize_t a = 0; a < n; a++) {
        PyObject *o = args[a];
        switch (fmt[a]) {
            case 'p':
                out[a].p = o == Py_None ? NULL : PyLong_AsVoidPtr(o);
                break;
            case 'i':
                out[a].i = PyLong_AsLongLong(o);
                break;
            default:
                out[a].f = (float)PyFloat_AsDouble(o);
        }
    }
    return !PyErr_Occurred();
}

#define WRAP(NAME, FMT, CALL)                                                     \
    static PyObject *py_##NAME(PyObject *self, PyObject *const *args, Py_ssize_t n) { \
        Arg a[64];                                                                \
        (void)self;                                                               \
        if (!parse(args, n, FMT, a)) return NULL;                                 \
        Py_BEGIN_ALLOW_THREADS CALL;                                              \
        Py_END_ALLOW_THREADS Py_RETURN_NONE;                                      \
    }

WRAP(linear_f32, "ppppiiii",
     swl_linear_f32(a[0].p, a[1].p, a[2].p, a[3].p, a[4].i, a[5].i, a[6].i, (int)a[7].i))
WRAP(linear_i8, "pppppiiiii",
     swl_linear_i8(a[0].p, a[1].p, a[2].p, a[3].p, a[4].p, a[5].i, a[6].i, a[7].i, (int)a[8].i, (int)a[9].i))
WRAP(rmsnorm, "pppiif", swl_rmsnorm(a[0].p, a[1].p, a[2].p, a[3].i, a[4].i, a[5].f))
WRAP(rope, "piiipppiiiii",
     swl_rope(a[0].p, a[1].i, a[2].i, a[3].i, a[4].p, a[5].p, a[6].p, a[7].i, a[8].i, a[9].i, a[10].i, a[11].i))
WRAP(decode_attention, "piippiiipiipiiiiifi",
     swl_decode_attention(a[0].p, a[1].i, a[2].i, a[3].p, a[4].p, a[5].i, a[6].i, a[7].i, a[8].p, a[9].i, a[10].i,
                          a[11].p, a[12].i, a[13].i, a[14].i, a[15].i, a[16].i, a[17].f, (int)a[18].i))
WRAP(silu_mul, "ppiipi", swl_silu_mul(a[0].p, a[1].p, a[2].i, a[3].i, a[4].p, (int)a[5].i))
// attention_step: returns False (nothing written) when a position is outside the cache.
static PyObject *py_attention_step(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    Arg a[64];
    int rc;
    (void)self;
    if (!parse(args, n, "pipippiippiiipiippiiiiifi", a)) return NULL;
    Py_BEGIN_ALLOW_THREADS rc = swl_attention_step(
        a[0].p, a[1].i, a[2].p, a[3].i, a[4].p, a[5].p, a[6].i, a[7].i, a[8].p, a[9].p, a[10].i, a[11].i, a[12].i,
        a[13].p, a[14].i, a[15].i, a[16].p, a[17].p, a[18].i, a[19].i, a[20].i, a[21].i, a[22].i, a[23].f,
        (int)a[24].i);
    Py_END_ALLOW_THREADS return PyBool_FromLong(rc == 0);
}

// layer_step: the four linears come as 6 arguments each (kind, w, scales, mins, bias, group).
// Returns 0, -1 (cache position out of range) or -2 (a linear the kernels cannot run).
static PyObject *py_layer_step(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    Arg a[64];
    SwlLinear lins[4];
    int rc;
    (void)self;
    if (!parse(args, n, "ppiippff" "ippppi" "ippppi" "ippppi" "ippppi" "ipippiippiiipiiiiiifi", a)) return NULL;
    for (int i = 0; i < 4; i++) {
        const Arg *l = a + 8 + 6 * i;
        lins[i] = (SwlLinear){l[0].i, l[1].p, l[2].p, l[3].p, l[4].p, l[5].i};
    }
    const Arg *r = a + 32;
    Py_BEGIN_ALLOW_THREADS rc = swl_layer_step(
        a[0].p, a[1].p, a[2].i, a[3].i, a[4].p, a[5].p, a[6].f, a[7].f, lins, r[0].i, r[1].p, r[2].i, r[3].p,
        r[4].p, r[5].i, r[6].i, r[7].p, r[8].p, r[9].i, r[10].i, r[11].i, r[12].p, r[13].i, r[14].i, r[15].i,
        r[16].i, r[17].i, r[18].i, r[19].f, (int)r[20].i);
    Py_END_ALLOW_THREADS return PyLong_FromLong(rc);
}

// stack_step: same return codes as layer_step.
static PyObject *py_stack_step(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    Arg a[64];
    int rc;
    (void)self;
    if (!parse(args, n, "ppiiipppippiipiii", a)) return NULL;
    Py_BEGIN_ALLOW_THREADS rc = swl_stack_step(a[0].p, a[1].p, a[2].i, a[3].i, a[4].i, a[5].p, a[6].p, a[7].p, a[8].i,
                                               a[9].p, a[10].p, a[11].i, a[12].i, a[13].p, a[14].i, a[15].i,
                                               (int)a[16].i);
    Py_END_ALLOW_THREADS return PyLong_FromLong(rc);
}

// linear_i4 reports an unsupported group size: returns True when it ran.
static PyObject *py_linear_i4(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    Arg a[64];
    int rc;
    (void)self;
    if (!parse(args, n, "ppppppiiiii", a)) return NULL;
    Py_BEGIN_ALLOW_THREADS rc = swl_linear_i4(a[0].p, a[1].p, a[2].p, a[3].p, a[4].p, a[5].p, a[6].i, a[7].i, a[8].i,
                                              a[9].i, (int)a[10].i);
    Py_END_ALLOW_THREADS return PyBool_FromLong(rc == 0);
}

static PyObject *py_cpu_supported(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(swl_cpu_supported());
}

#define FAST(NAME) {#NAME, (PyCFunction)(void (*)(void))py_##NAME, METH_FASTCALL, NULL}
static PyMethodDef methods[] = {
    FAST(linear_f32), FAST(linear_i8), FAST(linear_i4), FAST(rmsnorm), FAST(rope),
    FAST(decode_attention), FAST(silu_mul), FAST(attention_step), FAST(layer_step), FAST(stack_step),
    {"cpu_supported", py_cpu_supported, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_swisslm_cpu", NULL, -1, methods};

PyMODINIT_FUNC PyInit__swisslm_cpu(void) { return PyModule_Create(&module); }
