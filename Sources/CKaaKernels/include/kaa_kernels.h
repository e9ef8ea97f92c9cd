#ifndef KAA_KERNELS_H
#define KAA_KERNELS_H
// Kaa's own float kernels, chosen at run time for the CPU (AVX2+FMA where present, else the
// baseline vector instructions). Every symbol is prefixed `kaa_`.
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

/// kaa_sgemm_packed with the baseline kernel whatever the CPU has, for tests.
void kaa_sgemm_packed_baseline(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *packed,
                               float *c, size_t ldc, const float *bias, int flags);

/// Which kernel kaa_sgemm_packed runs on this CPU: "avx2-fma" or "baseline".
const char *kaa_sgemm_kernel_name(void);

#ifdef __cplusplus
}
#endif
#endif
