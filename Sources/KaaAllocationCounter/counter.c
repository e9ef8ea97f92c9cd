// Interposes the allocation functions of glibc in the executable that links this file: each
// call forwards to glibc's own implementation (__libc_malloc, ...) and, while the calling
// thread counts, adds one to its count. Nothing else changes, so tests that do not count
// run as before.
#include "kaa_allocation_counter.h"
#include <stddef.h>
#include <errno.h>

#if defined(__GLIBC__)
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static __thread int counting;
static __thread long count;

// Called for each counted allocation; a debugger can break on it to see who allocates.
__attribute__((noinline)) void kaa_allocation_counted(void) { count++; __asm__ volatile(""); }

static inline void note(void) { if (counting) kaa_allocation_counted(); }

void *malloc(size_t n) { note(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { note(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { note(); return __libc_realloc(p, n); }
void *aligned_alloc(size_t alignment, size_t n) { note(); return __libc_memalign(alignment, n); }
int posix_memalign(void **out, size_t alignment, size_t n) {
    note();
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return EINVAL;
    void *p = __libc_memalign(alignment, n);
    if (!p && n) return ENOMEM;
    *out = p;
    return 0;
}

int kaa_allocations_available(void) { return 1; }
void kaa_allocations_start(void) { count = 0; counting = 1; }
long kaa_allocations_stop(void) { counting = 0; return count; }
#else
int kaa_allocations_available(void) { return 0; }
void kaa_allocations_start(void) {}
long kaa_allocations_stop(void) { return -1; }
#endif
