// Interposes the allocation functions of glibc in the executable that links this file: each
// call forwards to glibc's own implementation (__libc_malloc, ...) and, while the calling
// thread counts, adds one to its count and the block's usable size to its net bytes (a free
// or a realloc takes the old block's size off). Nothing else changes, so tests that do not
// count run as before.
#include "kaa_allocation_counter.h"
#include <stddef.h>
#include <errno.h>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
// A sanitizer interposes the allocation functions itself; counting is then unavailable and the
// tests that need it are skipped.
#define KAA_SANITIZED 1
#endif
#endif

#if defined(__GLIBC__) && !defined(KAA_SANITIZED)
#include <malloc.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static __thread int counting;
static __thread long count;
static __thread long net;

// Called for each counted allocation; a debugger can break on it to see who allocates.
__attribute__((noinline)) void kaa_allocation_counted(void) { count++; __asm__ volatile(""); }

static inline void *note(void *p) {
    if (counting) {
        kaa_allocation_counted();
        if (p) net += (long)malloc_usable_size(p);
    }
    return p;
}
static inline void forget(void *p) { if (counting && p) net -= (long)malloc_usable_size(p); }

void *malloc(size_t n) { return note(__libc_malloc(n)); }
void *calloc(size_t a, size_t b) { return note(__libc_calloc(a, b)); }
void *realloc(void *p, size_t n) {
    forget(p);
    void *q = __libc_realloc(p, n);
    // A failed realloc leaves the old block in place.
    if (!q && n && p && counting) net += (long)malloc_usable_size(p);
    return note(q);
}
void *aligned_alloc(size_t alignment, size_t n) { return note(__libc_memalign(alignment, n)); }
int posix_memalign(void **out, size_t alignment, size_t n) {
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return EINVAL;
    void *p = note(__libc_memalign(alignment, n));
    if (!p && n) return ENOMEM;
    *out = p;
    return 0;
}
void free(void *p) { forget(p); __libc_free(p); }

int kaa_allocations_available(void) { return 1; }
void kaa_allocations_start(void) { count = 0; net = 0; counting = 1; }
long kaa_allocations_stop(void) { counting = 0; return count; }
long kaa_allocations_net_bytes(void) { return net; }
#else
int kaa_allocations_available(void) { return 0; }
void kaa_allocations_start(void) {}
long kaa_allocations_stop(void) { return -1; }
long kaa_allocations_net_bytes(void) { return -1; }
#endif
