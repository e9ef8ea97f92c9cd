#ifndef KAA_CLIBUV_SHIM_H
#define KAA_CLIBUV_SHIM_H
#include <uv.h>
#endif
