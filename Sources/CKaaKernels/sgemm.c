// Float matrix product against a B packed once at load (see kaa_kernels.h).
//
// One C body, compiled for each level: the baseline instruction set (8-float vectors lower to
// two SSE / NEON registers) and, on x86-64, with the `avx2,fma` target attribute (two 8-float
// vectors per panel row) and the `avx512f` one (one 16-float vector per panel row, and taller
// tiles in its 32 registers), chosen at run time from CPUID. `KAA_ENGINE_LEVEL` (`baseline`,
// `avx2`, `avx512`) forces a lower level. No build flag narrows the CPUs the binary runs on.
#include "kaa_kernels.h"
#include <stdlib.h>
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
typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int v16i __attribute__((vector_size(64), aligned(4)));
// Rows of the wide tile: 12 accumulators of one 16-float vector, a B vector and a broadcast
// leave AVX-512's 32 registers room.
#define MR_WIDE 12

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
#define RELU16(x) ((v16)((v16i)(x) & ~((x) < (v16){0})))

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

/// The tile with each panel row as one 16-float vector (the AVX-512 layout): as ``tile``.
static inline __attribute__((always_inline)) void tile_wide(
    const int ROWS, const int U, size_t kc, const float *a, size_t lda, const float *bp,
    float *c, size_t ldc, int cols, const float *bias, int start, int relu)
{
    v16 acc[U][ROWS];
    for (int u = 0; u < U; u++)
        for (int r = 0; r < ROWS; r++) acc[u][r] = (v16){0};
    if (start == FROM_C) {
        for (int r = 0; r < ROWS; r++) {
            float t[NR] = {0};
            const float *src = c + r * ldc;
            if (cols < NR) { memcpy(t, src, (size_t)cols * sizeof(float)); src = t; }
            acc[0][r] = *(const v16 *)src;
        }
    } else if (start == FROM_BIAS) {
        for (int r = 0; r < ROWS; r++) acc[0][r] = *(const v16 *)bias;
    }
    size_t kk = 0;
    for (; kk + U <= kc; kk += U) {
        for (int u = 0; u < U; u++) {
            v16 b = *(const v16 *)(bp + (kk + u) * NR);
            for (int r = 0; r < ROWS; r++) acc[u][r] += a[r * lda + kk + u] * b;
        }
    }
    for (; kk < kc; kk++) {
        v16 b = *(const v16 *)(bp + kk * NR);
        for (int r = 0; r < ROWS; r++) acc[0][r] += a[r * lda + kk] * b;
    }
    for (int u = 1; u < U; u++)
        for (int r = 0; r < ROWS; r++) acc[0][r] += acc[u][r];
    for (int r = 0; r < ROWS; r++) {
        v16 v = relu ? RELU16(acc[0][r]) : acc[0][r];
        if (cols == NR) {
            *(v16 *)(c + r * ldc) = v;
        } else {
            float t[NR];
            *(v16 *)t = v;
            memcpy(c + r * ldc, t, (size_t)cols * sizeof(float));
        }
    }
}

static inline __attribute__((always_inline)) void tile_rows_wide(
    int rows, size_t kc, const float *a, size_t lda, const float *bp,
    float *c, size_t ldc, int cols, const float *bias, int start, int relu)
{
    switch (rows) {
    case 12: tile_wide(12, 1, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 11: tile_wide(11, 1, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 10: tile_wide(10, 1, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 9: tile_wide(9, 1, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 8: tile_wide(8, 1, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 7: tile_wide(7, 2, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 6: tile_wide(6, 2, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 5: tile_wide(5, 2, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 4: tile_wide(4, 2, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 3: tile_wide(3, 3, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    case 2: tile_wide(2, 4, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    default: tile_wide(1, 8, kc, a, lda, bp, c, ldc, cols, bias, start, relu); break;
    }
}

/// The blocking loops around the tile, shared by every instantiation; `wide` picks the
/// one-vector-per-row tile (a constant at each call, so each instantiation keeps one).
static inline __attribute__((always_inline)) void sgemm_body(
    size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
    float *c, size_t ldc, const float *bias, int flags, const int wide)
{
    const int mr = wide ? MR_WIDE : MR;
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
                for (size_t i = 0; i < mc; i += (size_t)mr) {
                    int rows = mc - i < (size_t)mr ? (int)(mc - i) : mr;
                    if (wide) {
                        tile_rows_wide(rows, kc, a + (i0 + i) * lda + k0, lda, bp,
                                       c + (i0 + i) * ldc + p * NR, ldc, cols, pb, start, relu && last);
                    } else {
                        tile_rows(rows, kc, a + (i0 + i) * lda + k0, lda, bp,
                                  c + (i0 + i) * ldc + p * NR, ldc, cols, pb, start, relu && last);
                    }
                }
            }
            k0 += kc;
        } while (k0 < k);
    }
}

static void sgemm_baseline(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                           float *c, size_t ldc, const float *bias, int flags) {
    sgemm_body(m, n, k, a, lda, packed, c, ldc, bias, flags, 0);
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
static void sgemm_avx2(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                       float *c, size_t ldc, const float *bias, int flags) {
    sgemm_body(m, n, k, a, lda, packed, c, ldc, bias, flags, 0);
}

__attribute__((target("avx512f,avx512vl,avx2,fma")))
static void sgemm_avx512(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                         float *c, size_t ldc, const float *bias, int flags) {
    sgemm_body(m, n, k, a, lda, packed, c, ldc, bias, flags, 1);
}

/// The AVX-512 kernel's tiling compiled for AVX2, so that a machine without AVX-512 tests its
/// logic (the compiler splits each 16-float vector in two); never chosen for serving.
__attribute__((target("avx2,fma")))
static void sgemm_wide_avx2(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                            float *c, size_t ldc, const float *bias, int flags) {
    sgemm_body(m, n, k, a, lda, packed, c, ldc, bias, flags, 1);
}

/// The highest level the CPU and the OS support: AVX2 with FMA, and the OS saving the YMM
/// registers (OSXSAVE, XCR0 bits 1 and 2); AVX-512 F and VL, and the OS saving the opmask and
/// ZMM registers (XCR0 bits 5, 6 and 7).
static int detect_level(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return KAA_LEVEL_BASELINE;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!fma || !osxsave || !avx) return KAA_LEVEL_BASELINE;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6) return KAA_LEVEL_BASELINE;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return KAA_LEVEL_BASELINE;
    if (!((b >> 5) & 1)) return KAA_LEVEL_BASELINE;
    int avx512 = ((b >> 16) & 1) && ((b >> 31) & 1) && (lo & 0xE0) == 0xE0;
    return avx512 ? KAA_LEVEL_AVX512 : KAA_LEVEL_AVX2;
}
#else
static int detect_level(void) { return KAA_LEVEL_BASELINE; }
#endif

int kaa_cpu_level(void) {
    static int level = -1;
    int l = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (l < 0) {
        l = detect_level();
        __atomic_store_n(&level, l, __ATOMIC_RELAXED);
    }
    return l;
}

int kaa_level_named(const char *name) {
    if (!name) return -1;
    if (!strcmp(name, "baseline")) return KAA_LEVEL_BASELINE;
    if (!strcmp(name, "avx2")) return KAA_LEVEL_AVX2;
    if (!strcmp(name, "avx512")) return KAA_LEVEL_AVX512;
    return -1;
}

const char *kaa_level_name(int level) {
    switch (level) {
    case KAA_LEVEL_AVX512: return "avx512";
    case KAA_LEVEL_AVX2: return "avx2";
    default: return "baseline";
    }
}

int kaa_kernel_level(void) {
    // Threads racing through the first call all store the same value.
    static int level = -1;
    int l = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (l >= 0) return l;
    l = kaa_cpu_level();
    int forced = kaa_level_named(getenv("KAA_ENGINE_LEVEL"));
    if (forced >= 0 && forced < l) l = forced;
    __atomic_store_n(&level, l, __ATOMIC_RELAXED);
    return l;
}

typedef void (*sgemm_fn)(size_t, size_t, size_t, const float *, size_t, const float *, float *, size_t,
                         const float *, int);

static sgemm_fn kernel_at(int variant) {
    if (variant == KAA_VARIANT_WIDE_AVX2) {
#if defined(__x86_64__)
        return kaa_cpu_level() >= KAA_LEVEL_AVX2 ? sgemm_wide_avx2 : NULL;
#else
        return NULL;
#endif
    }
    if (variant < 0 || variant > kaa_cpu_level()) return NULL;
#if defined(__x86_64__)
    if (variant == KAA_LEVEL_AVX512) return sgemm_avx512;
    if (variant == KAA_LEVEL_AVX2) return sgemm_avx2;
#endif
    return sgemm_baseline;
}

void kaa_sgemm_packed(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                      float *c, size_t ldc, const float *bias, int flags) {
    if (m == 0 || n == 0) return;
    static sgemm_fn fn;
    sgemm_fn f = __atomic_load_n(&fn, __ATOMIC_RELAXED);
    if (!f) {
        f = kernel_at(kaa_kernel_level());
        __atomic_store_n(&fn, f, __ATOMIC_RELAXED);
    }
    f(m, n, k, a, lda, packed, c, ldc, bias, flags);
}

int kaa_sgemm_packed_variant(int variant, size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                             float *c, size_t ldc, const float *bias, int flags) {
    sgemm_fn f = kernel_at(variant);
    if (!f) return -1;
    if (m == 0 || n == 0) return 0;
    f(m, n, k, a, lda, packed, c, ldc, bias, flags);
    return 0;
}
