// Elementwise and reduction kernels that show in profiles of the sample models: the Scaler of
// scikit-learn pipelines and Softmax over contiguous rows.
//
// One C body per kernel, compiled for each level with a `target` attribute (as sgemm.c does) and
// vectorized by the compiler: 16-float vectors with AVX-512, 8 with AVX2, 4 with the baseline.
// FP_CONTRACT is off, so every level rounds each multiply and add on its own and all levels
// give the same floats. Softmax uses its own exponential (range reduction by ln 2 and a degree-6
// polynomial, about 1 ulp from expf), which the compiler can vectorize where libm's expf cannot.
#include "kaa_kernels.h"
#include <math.h>
#include <string.h>

#pragma STDC FP_CONTRACT OFF

#define BODY static inline __attribute__((always_inline))

BODY void scale_columns(const float *x, size_t rows, size_t width, const float *offset, const float *scale, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * width;
        float *o = out + r * width;
        for (size_t j = 0; j < width; j++) o[j] = (xr[j] - offset[j]) * scale[j];
    }
}

/// e^x for x ≤ 0 (softmax's arguments): x = n·ln2 + r with |r| ≤ ln2/2, e^r by Cephes' expf
/// polynomial, times 2^n built in the exponent bits. Below -87.3 the result is the smallest
/// normal's neighbourhood's 0-side: returns 0, as expf's subnormals round the softmax the same.
BODY float exp_neg(float x) {
    if (x < -87.3f) return 0.0f;
    const float big = 8388608.0f;
    // round to nearest even of x·log2(e), |·| < 2^23 here.
    float t = x * 1.44269504088896341f;
    float n = (t - big) + big;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int e = (int)n + 127;
    unsigned bits = (unsigned)e << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

/// Softmax (or log-softmax) of each row of n floats. Returns -1, having written rows before
/// the first one, when a row holds NaN or an infinity: the caller then computes the tensor its
/// own way, which defines those cases.
BODY int softmax_rows(const float *x, size_t rows, size_t n, float *out, int log_softmax) {
    for (size_t row = 0; row < rows; row++) {
        const float *v = x + row * n;
        float *o = out + row * n;
        float m = -INFINITY;
        int finite = 1;
        for (size_t j = 0; j < n; j++) {
            m = v[j] > m ? v[j] : m;
            finite &= (v[j] - v[j]) == 0.0f;
        }
        if (!finite) return -1;
        // The exponentials in one pass (vectorized), their sum in another, in order: a float
        // sum is not reassociated, so every level adds in the same order.
        for (size_t j = 0; j < n; j++) o[j] = exp_neg(v[j] - m);
        float sum = 0;
        for (size_t j = 0; j < n; j++) sum += o[j];
        if (log_softmax) {
            float ls = logf(sum);
            for (size_t j = 0; j < n; j++) o[j] = v[j] - m - ls;
        } else {
            for (size_t j = 0; j < n; j++) o[j] = o[j] / sum;
        }
    }
    return 0;
}

#if defined(__x86_64__)
#define T512 __attribute__((target("avx2,fma,avx512f,avx512vl,avx512dq,avx512bw")))
#define T256 __attribute__((target("avx2,fma")))
T512 static void scale_columns_avx512(const float *x, size_t rows, size_t w, const float *of, const float *sc, float *o) { scale_columns(x, rows, w, of, sc, o); }
T256 static void scale_columns_avx2(const float *x, size_t rows, size_t w, const float *of, const float *sc, float *o) { scale_columns(x, rows, w, of, sc, o); }
T512 static int softmax_rows_avx512(const float *x, size_t rows, size_t n, float *o, int l) { return softmax_rows(x, rows, n, o, l); }
T256 static int softmax_rows_avx2(const float *x, size_t rows, size_t n, float *o, int l) { return softmax_rows(x, rows, n, o, l); }
#endif
static void scale_columns_baseline(const float *x, size_t rows, size_t w, const float *of, const float *sc, float *o) { scale_columns(x, rows, w, of, sc, o); }
static int softmax_rows_baseline(const float *x, size_t rows, size_t n, float *o, int l) { return softmax_rows(x, rows, n, o, l); }

void kaa_scale_columns(const float *x, size_t rows, size_t width, const float *offset, const float *scale, float *out) {
#if defined(__x86_64__)
    int level = kaa_kernel_level();
    if (level >= KAA_LEVEL_AVX512) return scale_columns_avx512(x, rows, width, offset, scale, out);
    if (level >= KAA_LEVEL_AVX2) return scale_columns_avx2(x, rows, width, offset, scale, out);
#endif
    scale_columns_baseline(x, rows, width, offset, scale, out);
}

int kaa_softmax_rows(const float *x, size_t rows, size_t n, float *out, int log_softmax) {
#if defined(__x86_64__)
    int level = kaa_kernel_level();
    if (level >= KAA_LEVEL_AVX512) return softmax_rows_avx512(x, rows, n, out, log_softmax);
    if (level >= KAA_LEVEL_AVX2) return softmax_rows_avx2(x, rows, n, out, log_softmax);
#endif
    return softmax_rows_baseline(x, rows, n, out, log_softmax);
}
