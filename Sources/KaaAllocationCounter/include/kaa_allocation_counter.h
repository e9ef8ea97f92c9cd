// Counts heap allocations made by the calling thread, for tests that check a code path
// allocates nothing. Linked into the test executable only.
#ifndef KAA_ALLOCATION_COUNTER_H
#define KAA_ALLOCATION_COUNTER_H

/// Whether counting works on this platform (glibc: malloc and friends are interposed).
int kaa_allocations_available(void);
/// Starts counting this thread's malloc, calloc, realloc, posix_memalign and aligned_alloc calls.
void kaa_allocations_start(void);
/// Stops counting and returns how many calls were made since the start.
long kaa_allocations_stop(void);
/// The heap bytes this thread allocated and did not free between the last start and stop
/// (usable sizes, as glibc reports them), or -1 where counting does not work.
long kaa_allocations_net_bytes(void);

#endif
