#ifndef KAA_COPENBLAS_SHIM_H
#define KAA_COPENBLAS_SHIM_H
// OpenBLAS (Debian libopenblas-serial-dev: single-threaded, CPU kernels chosen at run time).
#include <cblas.h>
#endif
