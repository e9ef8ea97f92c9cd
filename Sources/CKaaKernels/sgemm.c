// Float matrix product against a B packed once at load (see kaa_kernels.h).
//
// One C body, compiled twice: for the baseline instruction set (8-float vectors lower to two
// SSE / NEON registers) and, on x86-64, with the `avx2,fma` target attribute, chosen at run
// time from CPUID. No build flag narrows the CPUs the binary runs on.
#include "kaa_kernels.h"
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

// Register tile: up to MR rows of C by one 16-column panel, as two 8-float vectors per row:
// 12 accumulators, two B vectors and a broadcast fill the 16 AVX registers.
#define NR KAA_SGEMM_PANEL
#define MR 6
// Deepest pass over a panel: up to KC × 16 floats of B (64 KiB) stay in L2 while every row
// tile of the block goes past them. Deeper products are split into equal passes. (Passes of
// 256 or 392, sized for L1, measured 4-8% slower at 64×784×256 on Zen 3; prefetching the next
// panel by hand gained nothing.)
#define KC 1024
// Rows of A per outer block: MC × KC floats of A (288 KiB) stay in L2 across the panels.
#define MC 72

typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef int v8i __attribute__((vector_size(32), aligned(4)));

size_t kaa_sgemm_packed_size(size_t k, size_t n) {
    return (n + NR - 1) / NR * NR * k;
}

void kaa_sgemm_pack_b(size_t k, size_t n, const float *b, int transposed, float alpha, float *out) {
    size_t panels = (n + NR - 1) / NR;
    for (size_t p = 0; p < panels; p++) {
        float *dst = out + p * NR * k;
        for (size_t kk = 0; kk < k; kk++) {
            for (size_t j = 0; j < NR; j++) {
                size_t col = p * NR + j;
                float v = 0;
                if (col < n) v = transposed ? b[col * k + kk] : b[kk * n + col];
                dst[kk * NR + j] = alpha * v;
            }
        }
    }
}

/// max(x, 0) per lane, keeping NaN (as ONNX Relu does): zero the lanes where x < 0.
#define RELU(x) ((v8)((v8i)(x) & ~((x) < (v8){0})))

/// How a tile's accumulators start.
enum { FROM_C, FROM_BIAS, FROM_ZERO };

/// C[ROWS × cols] (=|+=) A[ROWS × kc] · Bpanel[kc × 16], with ROWS and U constants so the
/// accumulators live in registers. U independent accumulator sets over successive k hide the
/// multiply-add latency when ROWS is small.
static inline __attribute__((always_inline)) void tile(
    const int ROWS, const int U, size_t kc, const float *a, size_t lda, const float *bp,
    float *c, size_t ldc, int cols, const float *bias, int start, int relu)
{
    v8 acc[U][ROWS][2];
    for (int u = 0; u < U; u++)
        for (int r = 0; r < ROWS; r++) { acc[u][r][0] = (v8){0}; acc[u][r][1] = (v8){0}; }
    if (start == FROM_C) {
        for (int r = 0; r < ROWS; r++) {
            float t[NR] = {0};
            const float *src = c + r * ldc;
            if (cols < NR) { memcpy(t, src, (size_t)cols * sizeof(float)); src = t; }
            acc[0][r][0] = *(const v8 *)src;
            acc[0][r][1] = *(const v8 *)(src + 8);
        }
    } else if (start == FROM_BIAS) {
        for (int r = 0; r < ROWS; r++) {
            acc[0][r][0] = *(const v8 *)bias;
            acc[0][r][1] = *(const v8 *)(bias + 8);
        }
    }
    size_t kk = 0;
    for (; kk + U <= kc; kk += U) {
        for (int u = 0; u < U; u++) {
            v8 b0 = *(const v8 *)(bp + (kk + u) * NR);
            v8 b1 = *(const v8 *)(bp + (kk + u) * NR + 8);
            for (int r = 0; r < ROWS; r++) {
                float av = a[r * lda + kk + u];
                acc[u][r][0] += av * b0;
                acc[u][r][1] += av * b1;
            }
        }
    }
    for (; kk < kc; kk++) {
        v8 b0 = *(const v8 *)(bp + kk * NR);
        v8 b1 = *(const v8 *)(bp + kk * NR + 8);
        for (int r = 0; r < ROWS; r++) {
            float av = a[r * lda + kk];
            acc[0][r][0] += av * b0;
            acc[0][r][1] += av * b1;
        }
    }
    for (int u = 1; u < U; u++)
        for (int r = 0; r < ROWS; r++) { acc[0][r][0] += acc[u][r][0]; acc[0][r][1] += acc[u][r][1]; }
    for (int r = 0; r < ROWS; r++) {
        v8 lo = acc[0][r][0], hi = acc[0][r][1];
        if (relu) { lo = RELU(lo); hi = RELU(hi); }
        if (cols == NR) {
            *(v8 *)(c + r * ldc) = lo;
            *(v8 *)(c + r * ldc + 8) = hi;
        } else {
            float t[NR];
            *(v8 *)t = lo;
            *(v8 *)(t + 8) = hi;
            memcpy(c + r * ldc, t, (size_t)cols * sizeof(float));
        }
    }
}

static inline __attribute__((always_inline)) void tile_rows(
    int rows, size_t kc, const float *a, size_t lda, const float *bp,
    float *c, size_t ldc, int cols, const float *bias, int start, int relu)
{
    switch (rows) {
    case 6: tile(6, 1, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 5: tile(5, 1, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 4: tile(4, 1, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 3: tile(3, 2, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 2: tile(2, 2, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    default: tile(1, 4, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    }
}

/// The blocking loops around the tile, shared by both instantiations.
static inline __attribute__((always_inline)) void sgemm_body(
    size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
    float *c, size_t ldc, const float *bias, int flags)
{
    size_t panels = (n + NR - 1) / NR;
    int accumulate = flags & KAA_SGEMM_ACCUMULATE, relu = (flags & KAA_SGEMM_RELU) != 0;
    float biasTail[NR];
    for (size_t i0 = 0; i0 < m; i0 += MC) {
        size_t mc = m - i0 < MC ? m - i0 : MC;
        // k == 0 still makes one pass, which writes the bias (or zeros).
        size_t passes = k == 0 ? 1 : (k + KC - 1) / KC, depth = (k + passes - 1) / passes;
        size_t k0 = 0;
        do {
            size_t kc = k - k0 < depth ? k - k0 : depth;
            int first = k0 == 0, last = k0 + kc >= k;
            for (size_t p = 0; p < panels; p++) {
                int cols = n - p * NR < NR ? (int)(n - p * NR) : NR;
                const float *bp = packed + p * NR * k + k0 * NR;
                const float *pb = NULL;
                int start = FROM_C;
                if (first && !accumulate) {
                    start = bias ? FROM_BIAS : FROM_ZERO;
                    if (bias) {
                        pb = bias + p * NR;
                        if (cols < NR) {
                            memset(biasTail, 0, sizeof biasTail);
                            memcpy(biasTail, pb, (size_t)cols * sizeof(float));
                            pb = biasTail;
                        }
                    }
                }
                for (size_t i = 0; i < mc; i += MR) {
                    int rows = mc - i < MR ? (int)(mc - i) : MR;
                    tile_rows(rows, kc, a + (i0 + i) * lda + k0, lda, bp,
                              c + (i0 + i) * ldc + p * NR, ldc, cols, pb, start, relu && last);
                }
            }
            k0 += kc;
        } while (k0 < k);
    }
}

static void sgemm_baseline(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                           float *c, size_t ldc, const float *bias, int flags) {
    sgemm_body(m, n, k, a, lda, packed, c, ldc, bias, flags);
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
static void sgemm_avx2(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                       float *c, size_t ldc, const float *bias, int flags) {
    sgemm_body(m, n, k, a, lda, packed, c, ldc, bias, flags);
}

/// AVX2 and FMA in the CPU, and the OS saving the YMM registers (OSXSAVE, XCR0 bits 1 and 2).
static int has_avx2_fma(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!fma || !osxsave || !avx) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 5) & 1;
}
#endif

typedef void (*sgemm_fn)(size_t, size_t, size_t, const float *, size_t, const float *, float *, size_t,
                         const float *, int);

static sgemm_fn chosen(void) {
    // Threads racing through the first call all store the same pointer.
    static sgemm_fn fn;
    sgemm_fn f = __atomic_load_n(&fn, __ATOMIC_RELAXED);
    if (f) return f;
    f = sgemm_baseline;
#if defined(__x86_64__)
    if (has_avx2_fma()) f = sgemm_avx2;
#endif
    __atomic_store_n(&fn, f, __ATOMIC_RELAXED);
    return f;
}

void kaa_sgemm_packed(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                      float *c, size_t ldc, const float *bias, int flags) {
    if (m == 0 || n == 0) return;
    chosen()(m, n, k, a, lda, packed, c, ldc, bias, flags);
}

void kaa_sgemm_packed_baseline(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                               float *c, size_t ldc, const float *bias, int flags) {
    if (m == 0 || n == 0) return;
    sgemm_baseline(m, n, k, a, lda, packed, c, ldc, bias, flags);
}

const char *kaa_sgemm_kernel_name(void) {
#if defined(__x86_64__)
    if (chosen() == sgemm_avx2) return "avx2-fma";
#endif
    return "baseline";
}
