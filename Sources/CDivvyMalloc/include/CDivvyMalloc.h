// CDivvyMalloc: the C allocation ABI of libDivvyMalloc.so. Only what Swift cannot express lives here: the exported
// malloc-family symbols, the thread-local heap pointer and re-entry depth, the process-wide lock of the heap's slow
// paths and its fork handlers, the pthread key whose destructor hands a thread's pages back, and a static bootstrap
// arena for allocations made before the heap is ready. The allocator is Swift (`Sources/DivvyMalloc`). Every symbol
// of our own is prefixed `divvy_malloc_`.
#ifndef CDIVVY_MALLOC_H
#define CDIVVY_MALLOC_H

#include <stddef.h>

#include "CDivvyMallocFastPath.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Bytes of the static bootstrap arena handed out so far (allocations made before the heap was ready, or while a
/// thread was inside the heap). For tests and diagnostics.
size_t divvy_malloc_bootstrap_bytes(void);

/// Malloc-family calls made while the calling thread was already inside one (a re-entry: the heap's code called
/// malloc or free). Served by the arena and counted; it must stay 0 after start-up. For tests and diagnostics.
unsigned long divvy_malloc_reentries(void);

/// Makes one nested malloc as if from inside the heap, to prove in tests that `divvy_malloc_reentries` counts.
void divvy_malloc_test_reenter(void);

/// Heap statistics for tests: 0 abandoned pages now, 1 abandoned pages adopted so far, 2 segments in use,
/// 3 live thread heaps, 4 thread exits seen, 5 bytes retained (freed, still resident), 6 bytes purged by the
/// retention policy so far, 7 huge blocks moved by mremap so far.
long divvy_malloc_stat(int which);

/// Takes / releases the heap's global lock (recursive; held across fork by the atfork handlers). For the Swift
/// heap's slow paths only (hidden: not exported from libDivvyMalloc.so).
void divvy_malloc_lock(void);
void divvy_malloc_unlock(void);

/// Retention of freed memory (MallocRetention.swift), hidden like the lock. Milliseconds of CLOCK_MONOTONIC_COARSE
/// (a vDSO read, no syscall; ticks every few ms, which is all the decay needs).
long divvy_malloc_coarse_ms(void);
/// mremap(old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, target): moves the pages of [old, old + size) to `target`,
/// replacing what was mapped there, without copying them (mremap(2) is variadic: Swift cannot call it). Returns
/// `target`, or NULL with errno set.
void *divvy_malloc_move_pages(void *old, size_t size, void *target);
/// The retention knobs from the environment, read once when the heap is created (getenv(3) does not allocate):
/// DIVVY_MALLOC_RETAIN (bytes, with an optional K, M or G suffix; default 128M), DIVVY_MALLOC_RETAIN_PERCENT (default
/// 0) and DIVVY_MALLOC_DECAY_MS (default 1000; 0: no decay). A value that does not parse keeps the default.
void divvy_malloc_retention_knobs(long *floor_bytes, long *percent, long *decay_ms);

#ifdef __cplusplus
}
#endif

#endif
