#ifndef KAA_KERNELS_H
#define KAA_KERNELS_H
// Kaa's own float kernels, chosen at run time for the CPU (AVX-512 or AVX2+FMA where present,
// else the baseline vector instructions). Every symbol is prefixed `kaa_`.
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Columns of one packed panel of B.
#define KAA_SGEMM_PANEL 16

/// Flags for kaa_sgemm_packed.
enum {
    /// C += A·B instead of C = A·B (+ bias).
    KAA_SGEMM_ACCUMULATE = 1,
    /// Clamp the result at 0 (a following Relu).
    KAA_SGEMM_RELU = 2,
};

/// Floats a packed B of k rows and n columns takes (n rounded up to whole panels).
size_t kaa_sgemm_packed_size(size_t k, size_t n);

/// Packs B (k×n, or n×k when `transposed`) times `alpha` into panels of KAA_SGEMM_PANEL
/// columns: out[p][kk][j] = alpha * B[kk][p*16+j], zero past column n.
void kaa_sgemm_pack_b(size_t k, size_t n, const float *b, int transposed, float alpha, float *out);

/// C (m×n, row stride ldc) = A (m×k, row stride lda) · packed B, plus bias[j] when bias is not
/// NULL, or C += A·B with KAA_SGEMM_ACCUMULATE; then max(0, ·) with KAA_SGEMM_RELU.
void kaa_sgemm_packed(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                      float *c, size_t ldc, const float *bias, int flags);

/// Instruction-set levels of the kernels, lowest first.
enum {
    KAA_LEVEL_BASELINE = 0,
    /// AVX2 with FMA.
    KAA_LEVEL_AVX2 = 1,
    /// AVX-512 F and VL.
    KAA_LEVEL_AVX512 = 2,
    /// For tests: the AVX-512 kernel's tiling compiled for AVX2 (runs where AVX2 does).
    KAA_VARIANT_WIDE_AVX2 = 100,
};

/// The highest level this CPU (and its OS) supports.
int kaa_cpu_level(void);

/// The level the kernels run at: the CPU's, or a lower one the environment variable
/// KAA_ENGINE_LEVEL (`baseline`, `avx2`, `avx512`) names; read once, at the first call.
int kaa_kernel_level(void);

/// `baseline`, `avx2` or `avx512`.
const char *kaa_level_name(int level);

/// The level a name (as KAA_ENGINE_LEVEL takes it) stands for, or -1.
int kaa_level_named(const char *name);

/// kaa_sgemm_packed with the kernel of one level (or KAA_VARIANT_WIDE_AVX2), for tests;
/// returns -1, computing nothing, when this CPU cannot run it.
int kaa_sgemm_packed_variant(int variant, size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                             float *c, size_t ldc, const float *bias, int flags);


// MARK: int8 products

/// Columns of one packed panel of an int8 B.
#define KAA_QGEMM_PANEL 16

/// Variants of the int8 product, lowest first.
enum {
    /// Plain C, exact int32 sums.
    KAA_QGEMM_BASELINE = 0,
    /// AVX2: bytes widened to 16 bits and multiplied pairwise (vpmaddwd), exact.
    KAA_QGEMM_AVX2 = 1,
    /// AVX-VNNI (VEX-encoded vpdpbusd on 256-bit vectors).
    KAA_QGEMM_AVXVNNI = 2,
    /// AVX-512 VNNI (vpdpbusd on 512-bit vectors).
    KAA_QGEMM_AVX512VNNI = 3,
};

/// Bytes a packed int8 B of k rows and n columns takes: n rounded up to whole panels, k rounded
/// up to a multiple of 4.
size_t kaa_qgemm_packed_size(size_t k, size_t n);

/// Packs B (k×n row-major, or n×k when `transposed`) into panels of KAA_QGEMM_PANEL columns,
/// 4 consecutive k of one column side by side: out[p][k/4][j][k%4] = B[k][p*16+j], zero past
/// column n and past row k. `b_unsigned`: B holds uint8 values, packed as B − 128 (the caller
/// lowers B's zero points by 128 to match). colsum[j] (j < n) gets the sum over k of column j
/// as packed.
void kaa_qgemm_pack_b(size_t k, size_t n, const void *b, int b_unsigned, int transposed, signed char *out,
                      int *colsum);

/// What an int8 product does with each int32 sum before it stores it.
typedef struct {
    /// A's zero point (A is uint8).
    int a_zero;
    /// B's zero point per column, in the packed (int8) domain, or NULL when all are 0.
    const int *b_zero;
    /// The column sums kaa_qgemm_pack_b wrote.
    const int *colsum;
    /// NULL: store the exact integer results into `ci`. Otherwise store float results into
    /// `cf`: scale[j] (or scale[0] unless scale_per_column) times the integer result.
    const float *scale;
    int scale_per_column;
    /// Added per column after the scale (float results only), or NULL.
    const float *bias;
    /// Float results only: clamp at 0 (a following Relu).
    int relu;
} kaa_qgemm_epilogue;

/// C (m×n, row stride ldc) = Σ_k (A[i][k] − a_zero)·(B[k][j] − b_zero[j]) for uint8 A (m×k, row
/// stride lda) and a B packed by kaa_qgemm_pack_b, then the epilogue: into `ci` (int32) when
/// e->scale is NULL, else into `cf` (float).
void kaa_qgemm_packed(size_t m, size_t n, size_t k, const unsigned char *a, size_t lda, const signed char *packed,
                      const kaa_qgemm_epilogue *e, int *ci, float *cf, size_t ldc);

/// The variant kaa_qgemm_packed runs: the best this CPU has at the level kaa_kernel_level()
/// allows (AVX-512 VNNI needs level avx512, AVX-VNNI and AVX2 need avx2).
int kaa_qgemm_variant(void);

/// `baseline`, `avx2`, `avx-vnni` or `avx512-vnni`.
const char *kaa_qgemm_variant_name(int variant);

/// kaa_qgemm_packed with one variant, for tests; returns -1, computing nothing, when this CPU
/// cannot run it.
int kaa_qgemm_packed_variant(int variant, size_t m, size_t n, size_t k, const unsigned char *a, size_t lda,
                             const signed char *packed, const kaa_qgemm_epilogue *e, int *ci, float *cf, size_t ldc);

/// ONNX DynamicQuantizeLinear on n floats: scale = (max(x, 0) − min(x, 0)) / 255, zero point =
/// round(−min(x, 0) / scale) saturated to [0, 255], out[i] = saturate(round(x[i] / scale) + zero
/// point), rounding half to even. All-zero (or empty) input: scale 0, zero point 0, all 0.
/// Returns -1, writing nothing, when x holds a NaN or an infinity.
int kaa_quantize_u8(const float *x, size_t n, unsigned char *out, float *scale, unsigned char *zero_point);

// MARK: elementwise

/// out[r][j] = (x[r][j] − offset[j]) · scale[j] for `rows` rows of `width` floats (ONNX-ML
/// Scaler), at the level kaa_kernel_level() names; the same floats at every level.
void kaa_scale_columns(const float *x, size_t rows, size_t width, const float *offset, const float *scale, float *out);

/// Softmax (log-softmax when `log_softmax`) of each of `rows` contiguous rows of n floats, at
/// the level kaa_kernel_level() names; the same floats at every level, within about 2 ulp of
/// expf-based softmax. Returns -1 when a row holds NaN or an infinity (rows before it are
/// written): the caller computes such tensors its own way.
int kaa_softmax_rows(const float *x, size_t rows, size_t n, float *out, int log_softmax);

#ifdef __cplusplus
}
#endif
#endif
