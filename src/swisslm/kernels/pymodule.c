// SPDX-License-Identifier: Apache-2.0
// The Python entry points of the kernels: a plain CPython extension (no torch headers) whose
// functions take data pointers and sizes as Python ints and release the GIL while they run.
// A ctypes call with ten arguments cost ~4 us here and a decode token makes ~240 kernel calls;
// METH_FASTCALL parsing costs a fraction of a microsecond.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "swisslm_kernels.h"

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

// One entry point: parse FMT into a[], run CALL (its int status in `rc`) with the GIL released,
// return RESULT, the Python value made of `rc`.
#define WRAP_RC(NAME, FMT, CALL, RESULT)                                              \
    static PyObject *py_##NAME(PyObject *self, PyObject *const *args, Py_ssize_t n) { \
        Arg a[32];                                                                    \
        int rc;                                                                       \
        (void)self;                                                                   \
        if (!parse(args, n, FMT, a)) return NULL;                                     \
        Py_BEGIN_ALLOW_THREADS rc = CALL;                                             \
        Py_END_ALLOW_THREADS (void)rc;                                                \
        return RESULT;                                                                \
    }

// Kernels without a status return None.
#define WRAP(NAME, FMT, CALL) WRAP_RC(NAME, FMT, ((CALL), 0), (Py_INCREF(Py_None), Py_None))

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
// The one-token steps take their layouts as struct pointers (SwlAttention, SwlLayer, SwlStep;
// filled through the ctypes mirror in kernels/layout.py).
// attention_step: returns False (nothing written) when a position is outside the cache.
WRAP_RC(attention_step, "piipppp" "i",
        swl_attention_step(a[0].p, a[1].i, a[2].i, a[3].p, a[4].p, a[5].p, a[6].p, (int)a[7].i),
        PyBool_FromLong(rc == 0))
// layer_step / stack_step: 0, -1 (a cache position out of range) or -2 (a linear the kernels
// cannot run).
WRAP_RC(layer_step, "ppiippi", swl_layer_step(a[0].p, a[1].p, a[2].i, a[3].i, a[4].p, a[5].p, (int)a[6].i),
        PyLong_FromLong(rc))
WRAP_RC(stack_step, "ppiiippi",
        swl_stack_step(a[0].p, a[1].p, a[2].i, a[3].i, a[4].i, a[5].p, a[6].p, (int)a[7].i), PyLong_FromLong(rc))

// linear_i4 reports an unsupported group size: returns True when it ran.
WRAP_RC(linear_i4, "ppppppiiiii",
        swl_linear_i4(a[0].p, a[1].p, a[2].p, a[3].p, a[4].p, a[5].p, a[6].i, a[7].i, a[8].i, a[9].i, (int)a[10].i),
        PyBool_FromLong(rc == 0))

// linear_g8 likewise (group size not a multiple of 16 or not dividing K: False).
WRAP_RC(linear_g8, "ppppppiiiii",
        swl_linear_g8(a[0].p, a[1].p, a[2].p, a[3].p, a[4].p, a[5].p, a[6].i, a[7].i, a[8].i, a[9].i, (int)a[10].i),
        PyBool_FromLong(rc == 0))

// Compiled for the baseline x86-64 (no target attribute): asked before any AVX2 code runs.
int swl_cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static PyObject *py_cpu_supported(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(swl_cpu_supported());
}

// f32_isa(want): -1 asks which fp32 kernel runs, 0 / 1 picks AVX2 / AVX-512 (where the CPU has
// it); returns the one now in use.
static PyObject *py_f32_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const long want = PyLong_AsLong(arg);
    if (want == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLong(swl_f32_isa((int)want));
}

static PyObject *py_layout_size(PyObject *self, PyObject *arg) {
    (void)self;
    const long which = PyLong_AsLong(arg);
    if (which == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong(swl_layout_size((int)which));
}

#define FAST(NAME) {#NAME, (PyCFunction)(void (*)(void))py_##NAME, METH_FASTCALL, NULL}
static PyMethodDef methods[] = {
    FAST(linear_f32), FAST(linear_i8), FAST(linear_i4), FAST(linear_g8), FAST(rmsnorm), FAST(rope),
    FAST(decode_attention), FAST(silu_mul), FAST(attention_step), FAST(layer_step), FAST(stack_step),
    {"cpu_supported", py_cpu_supported, METH_NOARGS, NULL},
    {"f32_isa", py_f32_isa, METH_O, NULL},
    {"layout_size", py_layout_size, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_swisslm_cpu", NULL, -1, methods};

PyMODINIT_FUNC PyInit__swisslm_cpu(void) { return PyModule_Create(&module); }
