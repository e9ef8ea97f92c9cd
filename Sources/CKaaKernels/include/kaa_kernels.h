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

#ifdef __cplusplus
}
#endif
#endif
