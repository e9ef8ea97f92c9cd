// Int8 matrix product against a B packed once at load, and ONNX DynamicQuantizeLinear (see
// kaa_kernels.h, "int8 products").
//
// A is uint8 (m×k, rows unpadded), B int8 packed in panels of 16 columns with 4 consecutive k
// of a column side by side (64 bytes per panel per group of 4 k: one 512-bit vector, the
// operand layout of vpdpbusd). Each variant accumulates exact int32 dot products of the raw
// bytes in registers, then applies the zero points in the epilogue:
//   Σ (a − za)(b − zb) = Σ ab − za·colsum[j] − zb[j]·rowsum(A_i) + k·za·zb[j]
// (rowsum only when B has zero points; all of it in 32-bit wrapping arithmetic, so every
// variant gives the same int32 bits), and converts to float as (float)r · scale, then + bias,
// then Relu, each rounded on its own (no FMA contraction: FP_CONTRACT is off for the file), so
// float results too are bit-identical across variants.
//
// Variants, chosen at run time from CPUID like sgemm.c (no build flag narrows the CPUs):
//  - baseline: plain C with vector types, tiles of 4 rows × 16 columns as 16-int vectors: per
//    group of 4 k, B deinterleaved into one vector per k (ld4 on NEON), 4 multiply-adds per row.
//  - avx2: B widened to int16 (vpmovsxbw), 4 bytes of A zero-extended and broadcast, vpmaddwd
//    then vpaddd: 4 accumulators per row (4 columns × 2 partial sums each), summed pairwise
//    (vphaddd) at the end. Exact (vpmaddubsw is not used: it saturates). Tiles 2 rows × 16.
//  - avx-vnni: vpdpbusd on 256-bit vectors (VEX), tiles 6 rows × 16 columns (12 accumulators,
//    2 B vectors, a broadcast: the 16 YMM registers).
//  - avx512-vnni: vpdpbusd (non-saturating) on 512-bit vectors, tiles of up to 12 rows × 2
//    panels (24 accumulators), 1 panel for an odd last one; row blocks of 96.
// Small row counts run U independent accumulator sets over successive groups of k to hide the
// latency of vpdpbusd (as sgemm.c does for the FMA).
//
// Measured on AMD Zen 4 (EPYC, 2 vCPUs; clang -O2, standalone benchmark, best of 7), µs per
// call and GOP/s (2mkn); float: kaa_sgemm_packed with bias and Relu, int8: float epilogue with
// bias and Relu. avx-vnni was measured through its EVEX twin (see KAA_QGEMM_EVEX_VNNI256).
//   m×k×n        f32 avx512    int8 avx512-vnni  int8 avx-vnni   int8 avx2      int8 baseline
//   1×784×256    10.9   37     2.57  156         2.78  144        4.68   86      23.8   17
//   1×256×128     1.23  53     0.67   97         0.69   95        0.94   69       4.16  16
//   1×128×10      0.14  19     0.10   26         0.10   26        0.14   18       0.31   8
//   64×784×256  228    113    58.7   438        60.3   426       218    118     1114     23
//   64×256×128   38.3  110    10.8   389        11.2   374        35.1  120      183     23
//   64×128×10     2.87  57     0.79  207         1.19  138        2.70   61      12.4   13
//   256×784×256 913    113   234     439       241     427       857    120     4363     24
//   256×256×128 151    111    42.8   392        43.8   383       140    120      742     23
//   256×128×10   11.3   58     3.8   172         5.4   122        15.2   43       72.7    9
// The AVX-512 tile shapes compared (64×784×256 / 64×256×128 µs; run-to-run noise ±8%):
// 12 rows × 2 panels 59-66 / 11-12.7 (kept); 16 × 1 panel 59-66 / 10.7-12.9; 10 × 2 63-69 /
// 12-14; 8 × 2 67 / 12.4; 6 × 4 panels 77 / 13.7; 14 × 2 129 / 21 (spills); 4 × 4 169 / 28.
// Row blocks of 48, 96 and 192 rows measured the same. AVX2 tiles: 2 rows 207 / 36 (kept),
// 1 row 251 / 41, 3 rows 301 / 53, 4 rows 399 / 59 (spills).
//
// A row's tail (k % 4 bytes) is loaded byte-wise, so nothing past a row's k bytes is read.
// B's zero padding past k makes the padding of A irrelevant.
#include "kaa_kernels.h"
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#pragma STDC FP_CONTRACT OFF

#define QNR KAA_QGEMM_PANEL
/// Bytes of one panel for one group of 4 k.
#define QGROUP (QNR * 4)
/// Most panels one tile covers (the AVX-512 tile's two).
#define QNP_MAX 2
/// Most rows of A per block (the rowsum buffer's size).
#define QMC_MAX 96

size_t kaa_qgemm_packed_size(size_t k, size_t n) {
    return (n + QNR - 1) / QNR * QNR * ((k + 3) / 4 * 4);
}

void kaa_qgemm_pack_b(size_t k, size_t n, const void *b, int b_unsigned, int transposed, signed char *out,
                      int *colsum) {
    size_t panels = (n + QNR - 1) / QNR, groups = (k + 3) / 4;
    const unsigned char *bu = b;
    const signed char *bs = b;
    for (size_t p = 0; p < panels; p++) {
        for (size_t j = 0; j < QNR; j++) {
            size_t col = p * QNR + j;
            unsigned sum = 0;
            for (size_t g = 0; g < groups; g++) {
                for (size_t t = 0; t < 4; t++) {
                    size_t kk = g * 4 + t;
                    int v = 0;
                    if (col < n && kk < k) {
                        size_t at = transposed ? col * k + kk : kk * n + col;
                        v = b_unsigned ? (int)bu[at] - 128 : (int)bs[at];
                    }
                    out[(p * groups + g) * QGROUP + j * 4 + t] = (signed char)v;
                    sum += (unsigned)v;
                }
            }
            if (col < n && colsum) colsum[col] = (int)sum;
        }
    }
}

// MARK: Epilogue

/// The epilogue's per-column values for the columns of one tile (up to QNP_MAX panels), zero
/// past n, so that vector code loads them whole.
typedef struct {
    /// k·a_zero·b_zero[j] − a_zero·colsum[j], wrapping.
    int colterm[QNP_MAX * QNR];
    int bzero[QNP_MAX * QNR];
    float scale[QNP_MAX * QNR];
    float bias[QNP_MAX * QNR];
    /// B has zero points (the rowsum term applies).
    int has_bz;
    int to_float, has_bias, relu;
} qepi;

static void epi_init(qepi *q, const kaa_qgemm_epilogue *e) {
    q->has_bz = e->b_zero != NULL;
    q->to_float = e->scale != NULL;
    q->has_bias = e->bias != NULL;
    q->relu = e->relu != 0;
}

/// Fills q's columns for the tile's columns j0 ..< j0 + width.
static void epi_columns(qepi *q, const kaa_qgemm_epilogue *e, size_t n, size_t k, size_t j0, int width) {
    unsigned za = (unsigned)e->a_zero;
    for (int j = 0; j < width; j++) {
        size_t col = j0 + (size_t)j;
        int in = col < n;
        unsigned zb = in && e->b_zero ? (unsigned)e->b_zero[col] : 0;
        unsigned cs = in && e->colsum ? (unsigned)e->colsum[col] : 0;
        q->colterm[j] = (int)((unsigned)k * za * zb - za * cs);
        q->bzero[j] = (int)zb;
        q->scale[j] = in && e->scale ? e->scale[e->scale_per_column ? col : 0] : 0;
        q->bias[j] = in && e->bias ? e->bias[col] : 0;
    }
}

/// One result of the epilogue, in the order every variant uses.
static inline __attribute__((always_inline)) void epi_scalar(const qepi *q, int j, unsigned dot, unsigned rowsum,
                                                             int *ci, float *cf) {
    unsigned r = dot + (unsigned)q->colterm[j];
    if (q->has_bz) r -= (unsigned)q->bzero[j] * rowsum;
    if (!q->to_float) { *ci = (int)r; return; }
    float f = (float)(int)r;
    f = f * q->scale[j];
    if (q->has_bias) f = f + q->bias[j];
    if (q->relu) f = f < 0 ? 0.0f : f;
    *cf = f;
}

static unsigned rowsum_scalar(const unsigned char *a, size_t k) {
    unsigned s = 0;
    for (size_t i = 0; i < k; i++) s += a[i];
    return s;
}

/// The blocking loops around a variant's tile: row blocks of MCV (A stays in L2, rowsums
/// computed once per block), then groups of NPV panels (their B, k/4 × 64 × NPV bytes, stays in
/// L1 while the row tiles of the block go past), then row tiles of MRV.
#define QGEMM_LOOP(MCV, MRV, NPV, ROWSUM, TILE_ROWS)                                                    \
    do {                                                                                                 \
        size_t panels_ = (n + QNR - 1) / QNR, pstride_ = (k + 3) / 4 * QGROUP;                          \
        unsigned rs_[QMC_MAX];                                                                           \
        qepi q_;                                                                                         \
        epi_init(&q_, e);                                                                                \
        for (size_t i0 = 0; i0 < m; i0 += (MCV)) {                                                       \
            size_t mc = m - i0 < (size_t)(MCV) ? m - i0 : (size_t)(MCV);                                 \
            const unsigned char *ab = a + i0 * lda;                                                      \
            if (q_.has_bz)                                                                               \
                for (size_t i = 0; i < mc; i++) rs_[i] = ROWSUM(ab + i * lda, k);                        \
            for (size_t p = 0; p < panels_; p += (NPV)) {                                                \
                int np = panels_ - p < (size_t)(NPV) ? (int)(panels_ - p) : (NPV);                      \
                size_t left = n - p * QNR;                                                               \
                int cols = left < (size_t)(np * QNR) ? (int)left : np * QNR;                             \
                epi_columns(&q_, e, n, k, p * QNR, np * QNR);                                            \
                for (size_t i = 0; i < mc; i += (MRV)) {                                                 \
                    int rows = mc - i < (size_t)(MRV) ? (int)(mc - i) : (MRV);                           \
                    size_t at = (i0 + i) * ldc + p * QNR;                                                \
                    TILE_ROWS(rows, np, k, ab + i * lda, lda, packed + p * pstride_, pstride_, &q_,      \
                              rs_ + i, ci ? ci + at : NULL, cf ? cf + at : NULL, ldc, cols);             \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
    } while (0)

// MARK: Baseline

#define MR_BASE 4
#define MC_BASE 64

typedef signed char qv64c __attribute__((vector_size(64), aligned(1)));
typedef int qv16i __attribute__((vector_size(64)));
typedef unsigned qv16u __attribute__((vector_size(64)));

/// A packed group's 16 values at k offset t (bytes t, t + 4, …, t + 60: columns 0-15) as ints.
#define GROUP_K(b, t)                                                                                  \
    __builtin_convertvector(__builtin_shufflevector(b, b, t, t + 4, t + 8, t + 12, t + 16, t + 20, t + 24, \
                                                    t + 28, t + 32, t + 36, t + 40, t + 44, t + 48,     \
                                                    t + 52, t + 56, t + 60), qv16i)

/// Baseline tile, ROWS × 16 columns, in vectors of 16 ints (four 128-bit registers each on
/// SSE2 or NEON): per group of 4 k, B deinterleaved into one vector per k (ld4 on NEON), then
/// 4 multiply-adds per row. Sums wrap as unsigned, like the vector variants.
static inline __attribute__((always_inline)) void tile_base(
    const int ROWS, size_t k, const unsigned char *a, size_t lda, const signed char *bp, const qepi *q,
    const unsigned *rowsum, int *ci, float *cf, size_t ldc, int cols)
{
    qv16u acc[ROWS];
    for (int r = 0; r < ROWS; r++) acc[r] = (qv16u){0};
    size_t groups = (k + 3) / 4;
    for (size_t g = 0; g < groups; g++) {
        qv64c b = *(const qv64c *)(bp + g * QGROUP);
        qv16i bk[4] = {GROUP_K(b, 0), GROUP_K(b, 1), GROUP_K(b, 2), GROUP_K(b, 3)};
        size_t have = k - g * 4 < 4 ? k - g * 4 : 4;
        for (int r = 0; r < ROWS; r++) {
            const unsigned char *ar = a + r * lda + g * 4;
            for (int t = 0; t < 4; t++) {
                int av = (size_t)t < have ? ar[t] : 0;
                acc[r] += (qv16u)(bk[t] * av);
            }
        }
    }
    for (int r = 0; r < ROWS; r++) {
        unsigned sums[QNR];
        memcpy(sums, &acc[r], sizeof sums);
        for (int j = 0; j < cols; j++)
            epi_scalar(q, j, sums[j], q->has_bz ? rowsum[r] : 0, ci ? ci + r * ldc + j : NULL,
                       cf ? cf + r * ldc + j : NULL);
    }
}

static inline __attribute__((always_inline)) void tile_rows_base(
    int rows, int np, size_t k, const unsigned char *a, size_t lda, const signed char *bp, size_t pstride,
    const qepi *q, const unsigned *rowsum, int *ci, float *cf, size_t ldc, int cols)
{
    (void)np;
    (void)pstride;
    switch (rows) {
    case 4: tile_base(4, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols); break;
    case 3: tile_base(3, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols); break;
    case 2: tile_base(2, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols); break;
    default: tile_base(1, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols); break;
    }
}

static void qgemm_baseline(size_t m, size_t n, size_t k, const unsigned char *a, size_t lda, const signed char *packed,
                           const kaa_qgemm_epilogue *e, int *ci, float *cf, size_t ldc) {
    QGEMM_LOOP(MC_BASE, MR_BASE, 1, rowsum_scalar, tile_rows_base);
}

#if defined(__x86_64__)

/// 4 bytes of A (a group of k) as one int, unaligned.
static inline __attribute__((always_inline)) int load4(const unsigned char *p) {
    int v;
    memcpy(&v, p, 4);
    return v;
}

/// The last `rem` (1-3) bytes of a row, zero-extended: nothing past the row is read.
static inline __attribute__((always_inline)) int load_tail(const unsigned char *p, size_t rem) {
    int v = 0;
    unsigned char t[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < rem; i++) t[i] = p[i];
    memcpy(&v, t, 4);
    return v;
}

// MARK: 256-bit variants (AVX2, AVX-VNNI)

#define T_AVX2 __attribute__((target("avx2")))

static inline __attribute__((always_inline)) T_AVX2 unsigned rowsum_avx2(const unsigned char *a, size_t k) {
    __m256i s = _mm256_setzero_si256(), z = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 32 <= k; i += 32) s = _mm256_add_epi64(s, _mm256_sad_epu8(_mm256_loadu_si256((const void *)(a + i)), z));
    __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    unsigned sum = (unsigned)(_mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1));
    for (; i < k; i++) sum += a[i];
    return sum;
}

/// The epilogue of one row of a 16-column panel held as two 8-int vectors.
static inline __attribute__((always_inline)) T_AVX2 void epi_row256(
    __m256i lo, __m256i hi, const qepi *q, unsigned rowsum, int *ci, float *cf, int cols)
{
    __m256i v[2] = {lo, hi};
    for (int h = 0; h < 2; h++) {
        v[h] = _mm256_add_epi32(v[h], _mm256_loadu_si256((const void *)(q->colterm + 8 * h)));
        if (q->has_bz)
            v[h] = _mm256_sub_epi32(v[h], _mm256_mullo_epi32(_mm256_loadu_si256((const void *)(q->bzero + 8 * h)),
                                                             _mm256_set1_epi32((int)rowsum)));
    }
    if (!q->to_float) {
        if (cols == QNR) {
            _mm256_storeu_si256((void *)ci, v[0]);
            _mm256_storeu_si256((void *)(ci + 8), v[1]);
        } else {
            int t[QNR];
            _mm256_storeu_si256((void *)t, v[0]);
            _mm256_storeu_si256((void *)(t + 8), v[1]);
            memcpy(ci, t, (size_t)cols * sizeof(int));
        }
        return;
    }
    __m256 f[2];
    for (int h = 0; h < 2; h++) {
        f[h] = _mm256_mul_ps(_mm256_cvtepi32_ps(v[h]), _mm256_loadu_ps(q->scale + 8 * h));
        if (q->has_bias) f[h] = _mm256_add_ps(f[h], _mm256_loadu_ps(q->bias + 8 * h));
        // vmaxps returns its second operand when either is NaN: NaN stays, as in epi_scalar.
        if (q->relu) f[h] = _mm256_max_ps(_mm256_setzero_ps(), f[h]);
    }
    if (cols == QNR) {
        _mm256_storeu_ps(cf, f[0]);
        _mm256_storeu_ps(cf + 8, f[1]);
    } else {
        float t[QNR];
        _mm256_storeu_ps(t, f[0]);
        _mm256_storeu_ps(t + 8, f[1]);
        memcpy(cf, t, (size_t)cols * sizeof(float));
    }
}

#define MR_AVX2 2
#define MC_AVX2 64

/// AVX2 tile, ROWS × 16 columns: per group of 4 k, B as four 16-lane int16 vectors (4 columns
/// × 4 k each) and A's 4 bytes as int16 repeated; vpmaddwd gives each column two partial sums.
static inline __attribute__((always_inline)) T_AVX2 void tile_avx2(
    const int ROWS, size_t k, const unsigned char *a, size_t lda, const signed char *bp, const qepi *q,
    const unsigned *rowsum, int *ci, float *cf, size_t ldc, int cols)
{
    __m256i acc[ROWS][4];
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm256_setzero_si256();
    size_t groups = k / 4, rem = k % 4;
    for (size_t g = 0; g <= groups; g++) {
        if (g == groups && !rem) break;
        __m256i b[4];
        for (int c = 0; c < 4; c++)
            b[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const void *)(bp + g * QGROUP + 16 * c)));
        for (int r = 0; r < ROWS; r++) {
            const unsigned char *ar = a + r * lda + g * 4;
            int a4 = g < groups ? load4(ar) : load_tail(ar, rem);
            __m256i av = _mm256_cvtepu8_epi16(_mm_set1_epi32(a4));
            for (int c = 0; c < 4; c++) acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(b[c], av));
        }
    }
    for (int r = 0; r < ROWS; r++) {
        // hadd pairs the partial sums: [c0 c1 c4 c5 | c2 c3 c6 c7]; vpermq puts them in order.
        __m256i lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8);
        __m256i hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][2], acc[r][3]), 0xD8);
        epi_row256(lo, hi, q, q->has_bz ? rowsum[r] : 0, ci ? ci + r * ldc : NULL, cf ? cf + r * ldc : NULL, cols);
    }
}

static inline __attribute__((always_inline)) T_AVX2 void tile_rows_avx2(
    int rows, int np, size_t k, const unsigned char *a, size_t lda, const signed char *bp, size_t pstride,
    const qepi *q, const unsigned *rowsum, int *ci, float *cf, size_t ldc, int cols)
{
    (void)np;
    (void)pstride;
    if (rows == 2) tile_avx2(2, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols);
    else tile_avx2(1, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols);
}

T_AVX2 static void qgemm_avx2(size_t m, size_t n, size_t k, const unsigned char *a, size_t lda, const signed char *packed,
                              const kaa_qgemm_epilogue *e, int *ci, float *cf, size_t ldc) {
    QGEMM_LOOP(MC_AVX2, MR_AVX2, 1, rowsum_avx2, tile_rows_avx2);
}

// The AVX-VNNI kernel. KAA_QGEMM_EVEX_VNNI256 (for tests only, never in a build of the
// package) compiles the same code with the EVEX vpdpbusd of AVX512-VNNI+VL instead, so that a
// CPU with AVX-512 VNNI but without AVX-VNNI (AMD Zen 4) runs it.
#if defined(KAA_QGEMM_EVEX_VNNI256)
#define T_VNNI256 __attribute__((target("avx2,avx512f,avx512vl,avx512vnni")))
#define DPBUSD256 _mm256_dpbusd_epi32
#else
#define T_VNNI256 __attribute__((target("avx2,avxvnni")))
#define DPBUSD256 _mm256_dpbusd_avx_epi32
#endif
#define MR_VNNI256 6
#define MC_VNNI256 96

static inline __attribute__((always_inline)) T_VNNI256 void tile_vnni256(
    const int ROWS, const int U, size_t k, const unsigned char *a, size_t lda, const signed char *bp,
    const qepi *q, const unsigned *rowsum, int *ci, float *cf, size_t ldc, int cols)
{
    __m256i acc[U][ROWS][2];
    for (int u = 0; u < U; u++)
        for (int r = 0; r < ROWS; r++) acc[u][r][0] = acc[u][r][1] = _mm256_setzero_si256();
    size_t groups = k / 4, rem = k % 4, g = 0;
    for (; g + U <= groups; g += U) {
        for (int u = 0; u < U; u++) {
            const signed char *b = bp + (g + u) * QGROUP;
            __m256i b0 = _mm256_loadu_si256((const void *)b), b1 = _mm256_loadu_si256((const void *)(b + 32));
            for (int r = 0; r < ROWS; r++) {
                __m256i av = _mm256_set1_epi32(load4(a + r * lda + (g + u) * 4));
                acc[u][r][0] = DPBUSD256(acc[u][r][0], av, b0);
                acc[u][r][1] = DPBUSD256(acc[u][r][1], av, b1);
            }
        }
    }
    for (; g <= groups; g++) {
        if (g == groups && !rem) break;
        const signed char *b = bp + g * QGROUP;
        __m256i b0 = _mm256_loadu_si256((const void *)b), b1 = _mm256_loadu_si256((const void *)(b + 32));
        for (int r = 0; r < ROWS; r++) {
            const unsigned char *ar = a + r * lda + g * 4;
            __m256i av = _mm256_set1_epi32(g < groups ? load4(ar) : load_tail(ar, rem));
            acc[0][r][0] = DPBUSD256(acc[0][r][0], av, b0);
            acc[0][r][1] = DPBUSD256(acc[0][r][1], av, b1);
        }
    }
    for (int u = 1; u < U; u++)
        for (int r = 0; r < ROWS; r++) {
            acc[0][r][0] = _mm256_add_epi32(acc[0][r][0], acc[u][r][0]);
            acc[0][r][1] = _mm256_add_epi32(acc[0][r][1], acc[u][r][1]);
        }
    for (int r = 0; r < ROWS; r++)
        epi_row256(acc[0][r][0], acc[0][r][1], q, q->has_bz ? rowsum[r] : 0, ci ? ci + r * ldc : NULL,
                   cf ? cf + r * ldc : NULL, cols);
}

static inline __attribute__((always_inline)) T_VNNI256 void tile_rows_vnni256(
    int rows, int np, size_t k, const unsigned char *a, size_t lda, const signed char *bp, size_t pstride,
    const qepi *q, const unsigned *rowsum, int *ci, float *cf, size_t ldc, int cols)
{
    (void)np;
    (void)pstride;
    switch (rows) {
    case 6: tile_vnni256(6, 1, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols); break;
    case 5: tile_vnni256(5, 1, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols); break;
    case 4: tile_vnni256(4, 1, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols); break;
    case 3: tile_vnni256(3, 2, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols); break;
    case 2: tile_vnni256(2, 2, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols); break;
    default: tile_vnni256(1, 4, k, a, lda, bp, q, rowsum, ci, cf, ldc, cols); break;
    }
}

T_VNNI256 static void qgemm_vnni256(size_t m, size_t n, size_t k, const unsigned char *a, size_t lda,
                                    const signed char *packed, const kaa_qgemm_epilogue *e, int *ci, float *cf,
                                    size_t ldc) {
    QGEMM_LOOP(MC_VNNI256, MR_VNNI256, 1, rowsum_avx2, tile_rows_vnni256);
}

// MARK: AVX-512 VNNI

#define T_VNNI512 __attribute__((target("avx2,avx512f,avx512bw,avx512vnni")))
#define MR_VNNI512 12
#define MC_VNNI512 96

static inline __attribute__((always_inline)) T_VNNI512 unsigned rowsum_vnni512(const unsigned char *a, size_t k) {
    __m512i s = _mm512_setzero_si512(), z = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 64 <= k; i += 64) s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_loadu_si512((const void *)(a + i)), z));
    if (i < k) {
        __mmask64 mask = ~0ull >> (64 - (k - i));
        s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(mask, a + i), z));
    }
    return (unsigned)_mm512_reduce_add_epi64(s);
}

/// C[ROWS × NP panels] from the panels at bp, bp + pstride: per group of 4 k, NP B vectors and
/// a broadcast of 4 bytes of A per row, ROWS × NP vpdpbusd.
static inline __attribute__((always_inline)) T_VNNI512 void tile_vnni512(
    const int ROWS, const int NP, const int U, size_t k, const unsigned char *a, size_t lda, const signed char *bp,
    size_t pstride, const qepi *q, const unsigned *rowsum, int *ci, float *cf, size_t ldc, int cols)
{
    __m512i acc[U][ROWS][NP];
    for (int u = 0; u < U; u++)
        for (int r = 0; r < ROWS; r++)
            for (int p = 0; p < NP; p++) acc[u][r][p] = _mm512_setzero_si512();
    size_t groups = k / 4, rem = k % 4, g = 0;
    for (; g + U <= groups; g += U) {
        for (int u = 0; u < U; u++) {
            __m512i b[NP];
            for (int p = 0; p < NP; p++) b[p] = _mm512_loadu_si512((const void *)(bp + p * pstride + (g + u) * QGROUP));
            for (int r = 0; r < ROWS; r++) {
                __m512i av = _mm512_set1_epi32(load4(a + r * lda + (g + u) * 4));
                for (int p = 0; p < NP; p++) acc[u][r][p] = _mm512_dpbusd_epi32(acc[u][r][p], av, b[p]);
            }
        }
    }
    for (; g <= groups; g++) {
        if (g == groups && !rem) break;
        __m512i b[NP];
        for (int p = 0; p < NP; p++) b[p] = _mm512_loadu_si512((const void *)(bp + p * pstride + g * QGROUP));
        for (int r = 0; r < ROWS; r++) {
            const unsigned char *ar = a + r * lda + g * 4;
            __m512i av = _mm512_set1_epi32(g < groups ? load4(ar) : load_tail(ar, rem));
            for (int p = 0; p < NP; p++) acc[0][r][p] = _mm512_dpbusd_epi32(acc[0][r][p], av, b[p]);
        }
    }
    for (int u = 1; u < U; u++)
        for (int r = 0; r < ROWS; r++)
            for (int p = 0; p < NP; p++) acc[0][r][p] = _mm512_add_epi32(acc[0][r][p], acc[u][r][p]);

    __m512i colterm[NP], bz[NP];
    __m512 sc[NP], bias[NP];
    __mmask16 mask[NP];
    for (int p = 0; p < NP; p++) {
        colterm[p] = _mm512_loadu_si512((const void *)(q->colterm + p * QNR));
        bz[p] = _mm512_loadu_si512((const void *)(q->bzero + p * QNR));
        sc[p] = _mm512_loadu_ps(q->scale + p * QNR);
        bias[p] = _mm512_loadu_ps(q->bias + p * QNR);
        int c = cols - p * QNR;
        mask[p] = c >= QNR ? (__mmask16)0xFFFF : c <= 0 ? 0 : (__mmask16)((1u << c) - 1);
    }
    for (int r = 0; r < ROWS; r++) {
        __m512i rs = _mm512_set1_epi32(q->has_bz ? (int)rowsum[r] : 0);
        for (int p = 0; p < NP; p++) {
            __m512i v = _mm512_add_epi32(acc[0][r][p], colterm[p]);
            if (q->has_bz) v = _mm512_sub_epi32(v, _mm512_mullo_epi32(bz[p], rs));
            if (!q->to_float) {
                _mm512_mask_storeu_epi32(ci + r * ldc + p * QNR, mask[p], v);
                continue;
            }
            __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), sc[p]);
            if (q->has_bias) f = _mm512_add_ps(f, bias[p]);
            if (q->relu) f = _mm512_max_ps(_mm512_setzero_ps(), f);
            _mm512_mask_storeu_ps(cf + r * ldc + p * QNR, mask[p], f);
        }
    }
}

#define VNNI512_ROWS(NP)                                                                            \
    switch (rows) {                                                                                  \
    case 12: tile_vnni512(12, NP, 1, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;   \
    case 11: tile_vnni512(11, NP, 1, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;   \
    case 10: tile_vnni512(10, NP, 1, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;   \
    case 9: tile_vnni512(9, NP, 1, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;     \
    case 8: tile_vnni512(8, NP, 1, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;     \
    case 7: tile_vnni512(7, NP, 1, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;     \
    case 6: tile_vnni512(6, NP, 1, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;     \
    case 5: tile_vnni512(5, NP, 1, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;     \
    case 4: tile_vnni512(4, NP, 2, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;     \
    case 3: tile_vnni512(3, NP, 2, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;     \
    case 2: tile_vnni512(2, NP, 2, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;     \
    default: tile_vnni512(1, NP, 4, k, a, lda, bp, pstride, q, rowsum, ci, cf, ldc, cols); break;    \
    }

static inline __attribute__((always_inline)) T_VNNI512 void tile_rows_vnni512(
    int rows, int np, size_t k, const unsigned char *a, size_t lda, const signed char *bp, size_t pstride,
    const qepi *q, const unsigned *rowsum, int *ci, float *cf, size_t ldc, int cols)
{
    if (np == 2) {
        VNNI512_ROWS(2)
    } else {
        VNNI512_ROWS(1)
    }
}

_Static_assert(MC_BASE <= QMC_MAX && MC_AVX2 <= QMC_MAX && MC_VNNI256 <= QMC_MAX && MC_VNNI512 <= QMC_MAX,
               "row blocks fit the rowsum buffer");

T_VNNI512 static void qgemm_vnni512(size_t m, size_t n, size_t k, const unsigned char *a, size_t lda,
                                    const signed char *packed, const kaa_qgemm_epilogue *e, int *ci, float *cf,
                                    size_t ldc) {
    QGEMM_LOOP(MC_VNNI512, MR_VNNI512, 2, rowsum_vnni512, tile_rows_vnni512);
}

// MARK: CPU features

enum { HAS_VNNI512 = 1, HAS_AVXVNNI = 2 };

/// AVX-512 VNNI (CPUID.7.0:ECX bit 11) with AVX-512 BW (CPUID.7.0:EBX bit 30) on a CPU at level
/// avx512; AVX-VNNI (CPUID.7.1:EAX bit 4) on one at level avx2. The OS's saving of the
/// registers is checked by kaa_cpu_level.
static int detect_vnni(void) {
    unsigned a, b, c, d;
    int level = kaa_cpu_level(), has = 0;
    if (level < KAA_LEVEL_AVX2 || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (level >= KAA_LEVEL_AVX512 && ((b >> 30) & 1) && ((c >> 11) & 1)) has |= HAS_VNNI512;
#if defined(KAA_QGEMM_EVEX_VNNI256)
    if (has & HAS_VNNI512) has |= HAS_AVXVNNI;
#else
    if (a >= 1) { // CPUID.7.0:EAX: the highest subleaf
        __cpuid_count(7, 1, a, b, c, d);
        if ((a >> 4) & 1) has |= HAS_AVXVNNI;
    }
#endif
    return has;
}

static int vnni_features(void) {
    static int features = -1;
    int f = __atomic_load_n(&features, __ATOMIC_RELAXED);
    if (f < 0) {
        f = detect_vnni();
        __atomic_store_n(&features, f, __ATOMIC_RELAXED);
    }
    return f;
}
#endif

// MARK: Dispatch

typedef void (*qgemm_fn)(size_t, size_t, size_t, const unsigned char *, size_t, const signed char *,
                         const kaa_qgemm_epilogue *, int *, float *, size_t);

/// Whether this CPU runs `variant`.
static int runs(int variant) {
    switch (variant) {
    case KAA_QGEMM_BASELINE: return 1;
#if defined(__x86_64__)
    case KAA_QGEMM_AVX2: return kaa_cpu_level() >= KAA_LEVEL_AVX2;
    case KAA_QGEMM_AVXVNNI: return (vnni_features() & HAS_AVXVNNI) != 0;
    case KAA_QGEMM_AVX512VNNI: return (vnni_features() & HAS_VNNI512) != 0;
#endif
    default: return 0;
    }
}

static qgemm_fn qkernel_at(int variant) {
    if (!runs(variant)) return NULL;
#if defined(__x86_64__)
    if (variant == KAA_QGEMM_AVX512VNNI) return qgemm_vnni512;
    if (variant == KAA_QGEMM_AVXVNNI) return qgemm_vnni256;
    if (variant == KAA_QGEMM_AVX2) return qgemm_avx2;
#endif
    return qgemm_baseline;
}

int kaa_qgemm_variant(void) {
    int level = kaa_kernel_level();
    if (level >= KAA_LEVEL_AVX512 && runs(KAA_QGEMM_AVX512VNNI)) return KAA_QGEMM_AVX512VNNI;
    if (level >= KAA_LEVEL_AVX2 && runs(KAA_QGEMM_AVXVNNI)) return KAA_QGEMM_AVXVNNI;
    if (level >= KAA_LEVEL_AVX2 && runs(KAA_QGEMM_AVX2)) return KAA_QGEMM_AVX2;
    return KAA_QGEMM_BASELINE;
}

const char *kaa_qgemm_variant_name(int variant) {
    switch (variant) {
    case KAA_QGEMM_AVX512VNNI: return "avx512-vnni";
    case KAA_QGEMM_AVXVNNI: return "avx-vnni";
    case KAA_QGEMM_AVX2: return "avx2";
    default: return "baseline";
    }
}

/// The output the epilogue writes to, or NULL when it is missing.
static int outputs_ok(const kaa_qgemm_epilogue *e, const int *ci, const float *cf) {
    return e && (e->scale ? cf != NULL : ci != NULL);
}

void kaa_qgemm_packed(size_t m, size_t n, size_t k, const unsigned char *a, size_t lda, const signed char *packed,
                      const kaa_qgemm_epilogue *e, int *ci, float *cf, size_t ldc) {
    if (m == 0 || n == 0 || !outputs_ok(e, ci, cf)) return;
    static qgemm_fn fn;
    qgemm_fn f = __atomic_load_n(&fn, __ATOMIC_RELAXED);
    if (!f) {
        f = qkernel_at(kaa_qgemm_variant());
        __atomic_store_n(&fn, f, __ATOMIC_RELAXED);
    }
    f(m, n, k, a, lda, packed, e, e->scale ? NULL : ci, e->scale ? cf : NULL, ldc);
}

int kaa_qgemm_packed_variant(int variant, size_t m, size_t n, size_t k, const unsigned char *a, size_t lda,
                             const signed char *packed, const kaa_qgemm_epilogue *e, int *ci, float *cf, size_t ldc) {
    qgemm_fn f = qkernel_at(variant);
    if (!f) return -1;
    if (m == 0 || n == 0 || !outputs_ok(e, ci, cf)) return 0;
    f(m, n, k, a, lda, packed, e, e->scale ? NULL : ci, e->scale ? cf : NULL, ldc);
    return 0;
}

// MARK: DynamicQuantizeLinear
//
// Two passes: min(x, 0), max(x, 0) and a check for NaN (infinities show in the min or the max),
// then the quantization, which divides by the scale as ONNX does (a reciprocal multiply rounds
// some values to the other side of a tie). The vector variants give the scalar one's bytes:
// vdivps rounds like the scalar division, vcvtps2dq rounds half to even like round_even, and
// |x / scale| ≤ 255 (a little more for a subnormal scale) so that adding the zero point as an
// int and saturating to bytes (vpackssdw, vpackuswb) clamps exactly like the scalar code.
// 64×784 floats take 7.5 µs on Zen 4 with AVX-512 (the division is the bottleneck; a reciprocal
// multiply with a division only near ties measured 4.7 µs for the second pass against 5.4, not
// worth the argument that it is exact).

/// rint in the default rounding mode (to nearest, ties to even) without libm: adding and
/// subtracting 2^23 rounds away the fraction of any |x| < 2^23; larger floats are integers.
static inline float round_even(float x) {
    const float big = 8388608.0f;
    if (x >= big || x <= -big) return x;
    return x >= 0 ? (x + big) - big : (x - big) + big;
}

/// The scale and zero point from min(x, 0) and max(x, 0); 0 when the scale is 0 (all zero).
static int dql_params(float lo, float hi, float *scale, float *zero) {
    float s = (hi - lo) / 255.0f;
    if (!(s > 0)) return 0;
    float z = round_even(0.0f - lo / s);
    z = z < 0 ? 0 : z > 255 ? 255 : z;
    *scale = s;
    *zero = z;
    return 1;
}

static inline __attribute__((always_inline)) unsigned char dql_one(float x, float s, float z) {
    float v = round_even(x / s) + z;
    v = v < 0 ? 0 : v > 255 ? 255 : v;
    return (unsigned char)v;
}

/// min(x, 0) and max(x, 0) of x[0 ..< n] folded into *lo, *hi; -1 for a NaN or infinity.
static int dql_range_scalar(const float *x, size_t n, float *lo, float *hi) {
    float l = *lo, h = *hi;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        if (!__builtin_isfinite(v)) return -1;
        l = v < l ? v : l;
        h = v > h ? v : h;
    }
    *lo = l;
    *hi = h;
    return 0;
}

static void dql_apply_scalar(const float *x, size_t n, float s, float z, unsigned char *out) {
    for (size_t i = 0; i < n; i++) out[i] = dql_one(x[i], s, z);
}

#if defined(__x86_64__)
/// As dql_range_scalar; four sets of accumulators keep the pass from waiting on the latency
/// of one.
T_AVX2 static int dql_range_avx2(const float *x, size_t n, float *lo, float *hi) {
    __m256 zero = _mm256_setzero_ps(), l[4], h[4], nan[4];
    for (int u = 0; u < 4; u++) l[u] = h[u] = nan[u] = zero;
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int u = 0; u < 4; u++) {
            __m256 v = _mm256_loadu_ps(x + i + 8 * u);
            l[u] = _mm256_min_ps(l[u], v);
            h[u] = _mm256_max_ps(h[u], v);
            nan[u] = _mm256_or_ps(nan[u], _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        }
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        l[0] = _mm256_min_ps(l[0], v);
        h[0] = _mm256_max_ps(h[0], v);
        nan[0] = _mm256_or_ps(nan[0], _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    for (int u = 1; u < 4; u++) {
        l[0] = _mm256_min_ps(l[0], l[u]);
        h[0] = _mm256_max_ps(h[0], h[u]);
        nan[0] = _mm256_or_ps(nan[0], nan[u]);
    }
    if (_mm256_movemask_ps(nan[0])) return -1;
    float tl[8], th[8];
    _mm256_storeu_ps(tl, l[0]);
    _mm256_storeu_ps(th, h[0]);
    float L = 0, H = 0;
    for (int j = 0; j < 8; j++) {
        L = tl[j] < L ? tl[j] : L;
        H = th[j] > H ? th[j] : H;
    }
    if (!__builtin_isfinite(L) || !__builtin_isfinite(H)) return -1;
    *lo = L;
    *hi = H;
    return dql_range_scalar(x + i, n - i, lo, hi);
}

T_AVX2 static void dql_apply_avx2(const float *x, size_t n, float s, float z, unsigned char *out) {
    __m256 sv = _mm256_set1_ps(s);
    __m256i zi = _mm256_set1_epi32((int)z);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i w0 = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(x + i), sv)), zi);
        __m256i w1 = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(x + i + 8), sv)), zi);
        // As int16: [0..3 8..11 | 4..7 12..15]; vpermq restores the order, then bytes.
        __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(w0, w1), 0xD8);
        __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
        _mm_storeu_si128((void *)(out + i), bytes);
    }
    dql_apply_scalar(x + i, n - i, s, z, out + i);
}

#define T_AVX512F __attribute__((target("avx2,avx512f")))

T_AVX512F static int dql_range_avx512(const float *x, size_t n, float *lo, float *hi) {
    __m512 l[4], h[4];
    __mmask16 nan = 0;
    for (int u = 0; u < 4; u++) l[u] = h[u] = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int u = 0; u < 4; u++) {
            __m512 v = _mm512_loadu_ps(x + i + 16 * u);
            l[u] = _mm512_min_ps(l[u], v);
            h[u] = _mm512_max_ps(h[u], v);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        }
    for (; i < n; i += 16) {
        // Lanes past n load as 0, which the range includes anyway.
        __mmask16 mask = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(mask, x + i);
        l[0] = _mm512_min_ps(l[0], v);
        h[0] = _mm512_max_ps(h[0], v);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    }
    if (nan) return -1;
    for (int u = 1; u < 4; u++) {
        l[0] = _mm512_min_ps(l[0], l[u]);
        h[0] = _mm512_max_ps(h[0], h[u]);
    }
    float L = _mm512_reduce_min_ps(l[0]), H = _mm512_reduce_max_ps(h[0]);
    if (!__builtin_isfinite(L) || !__builtin_isfinite(H)) return -1;
    *lo = L;
    *hi = H;
    return 0;
}

T_AVX512F static void dql_apply_avx512(const float *x, size_t n, float s, float z, unsigned char *out) {
    __m512 sv = _mm512_set1_ps(s);
    __m512i zi = _mm512_set1_epi32((int)z);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i q = _mm512_add_epi32(_mm512_cvt_roundps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + i), sv),
                                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zi);
        // Negative values to 0, then vpmovusdb saturates the rest to 255.
        q = _mm512_max_epi32(q, _mm512_setzero_si512());
        _mm_storeu_si128((void *)(out + i), _mm512_cvtusepi32_epi8(q));
    }
    dql_apply_scalar(x + i, n - i, s, z, out + i);
}
#endif

/// DynamicQuantizeLinear at one instruction-set level (for tests; the public function uses
/// kaa_kernel_level()).
static int quantize_u8_at(int level, const float *x, size_t n, unsigned char *out, float *scale,
                          unsigned char *zero_point) {
    float lo = 0, hi = 0, s = 0, z = 0;
    int bad;
    (void)level;
#if defined(__x86_64__)
    if (level >= KAA_LEVEL_AVX512) bad = dql_range_avx512(x, n, &lo, &hi);
    else if (level >= KAA_LEVEL_AVX2) bad = dql_range_avx2(x, n, &lo, &hi);
    else
#endif
        bad = dql_range_scalar(x, n, &lo, &hi);
    if (bad) return -1;
    if (!dql_params(lo, hi, &s, &z)) {
        *scale = 0;
        *zero_point = 0;
        if (n) memset(out, 0, n);
        return 0;
    }
    *scale = s;
    *zero_point = (unsigned char)z;
#if defined(__x86_64__)
    if (level >= KAA_LEVEL_AVX512) dql_apply_avx512(x, n, s, z, out);
    else if (level >= KAA_LEVEL_AVX2) dql_apply_avx2(x, n, s, z, out);
    else
#endif
        dql_apply_scalar(x, n, s, z, out);
    return 0;
}

int kaa_quantize_u8(const float *x, size_t n, unsigned char *out, float *scale, unsigned char *zero_point) {
    return quantize_u8_at(kaa_kernel_level(), x, n, out, scale, zero_point);
}
