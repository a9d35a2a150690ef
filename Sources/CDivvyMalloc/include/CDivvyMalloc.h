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

/// The statistics of one size class (`divvy_malloc_statistics_t.classes[class]`).
typedef struct {
    /// The usable size of each block of the class (16 … 1 MiB).
    size_t block_size;
    /// Pages serving the class now (owned by a thread or abandoned by an exited one).
    size_t pages;
    /// Blocks handed out and not freed (frees from other threads still waiting on a page count as freed).
    size_t blocks_in_use;
    /// Blocks those pages hold in all.
    size_t blocks_capacity;
    /// `blocks_in_use × block_size` (a block over 16 KiB: its usable size, which `realloc` may have grown).
    size_t bytes_in_use;
} divvy_malloc_class_statistics_t;

/// The statistics of one thread heap (`divvy_malloc_statistics_t.heaps[i]`).
typedef struct {
    /// The heap's address: an identifier, stable while its thread lives.
    size_t heap;
    /// Pages it owns now, and the bytes in use in them.
    size_t pages;
    size_t bytes_in_use;
    /// Counted on its slow paths since its thread started: how often a class's current page ran dry (a refill),
    /// pages it took (new, pooled, cached or adopted) and pages it gave back empty.
    size_t refills;
    size_t pages_acquired;
    size_t pages_retired;
} divvy_malloc_heap_statistics_t;

enum {
    /// Entries of `divvy_malloc_statistics_t.classes` (class 0 serves `malloc(0)`, class 60 is 1 MiB).
    DIVVY_MALLOC_STATISTICS_CLASSES = 61,
    /// Entries of `divvy_malloc_statistics_t.heaps`; the pages of further heaps are counted in `pages_unlisted`.
    DIVVY_MALLOC_STATISTICS_HEAPS = 64,
};

/// A snapshot of libDivvyMalloc's heap (`divvy_malloc_statistics`). Every field is a `size_t`; later versions only
/// append fields.
typedef struct {
    /// The size of this structure as the library knows it (may exceed what the caller asked for).
    size_t size;
    /// Address space reserved (`MAP_NORESERVE`: costs nothing until touched).
    size_t bytes_reserved;
    /// Segments handed out of the reservation (4 MiB each: pages, huge blocks, metadata), in bytes. An upper bound
    /// of what may be resident: pages are committed as blocks are carved, and pooled pages are trimmed.
    size_t bytes_mapped;
    /// Bytes in blocks handed out and not freed: every class's `bytes_in_use` plus `huge_bytes_in_use`.
    size_t bytes_in_use;
    /// Bytes of pages that hold no block now (kept in a thread's cache or the global pool for reuse).
    size_t bytes_in_empty_pages;
    size_t segments_in_use;
    /// Pages serving a class (owned or abandoned), pages holding no block, pages of exited threads with live blocks.
    size_t pages_in_use;
    size_t pages_empty;
    size_t pages_abandoned;
    /// Blocks over 1 MiB (runs of whole segments): live ones, their bytes, and the bytes of freed runs kept resident for
    /// reuse (the retention policy's segments: docs/malloc.md, "Large blocks and returning memory").
    size_t huge_blocks;
    size_t huge_bytes_in_use;
    size_t huge_bytes_cached;
    /// Thread heaps alive now, and thread exits seen.
    size_t thread_heaps;
    size_t thread_exits;
    /// Entries filled in `heaps` (heaps owning at least one page; heap 0 gathers abandoned pages), and the pages of
    /// heaps that did not fit in the table.
    size_t heaps_listed;
    size_t pages_unlisted;
    /// The switches read at start-up: DIVVY_MALLOC_HARDENED, DIVVY_MALLOC_GUARD (1 when on).
    size_t hardened;
    size_t guard_pages;
    /// `divvy_malloc_bootstrap_bytes()`.
    size_t bootstrap_bytes;
    divvy_malloc_class_statistics_t classes[DIVVY_MALLOC_STATISTICS_CLASSES];
    divvy_malloc_heap_statistics_t heaps[DIVVY_MALLOC_STATISTICS_HEAPS];
} divvy_malloc_statistics_t;

/// Fills `*statistics` with a snapshot of the heap: bytes reserved, mapped and in use, and per size class and per
/// thread heap counts. The pages are walked under the heap's lock (allocations on other threads' fast paths go on,
/// so the figures are exact only while they are quiet). `malloc_stats()` prints the same figures to stderr, and
/// `malloc_info(0, stream)` writes them as XML; `DIVVY_MALLOC_STATS=1` prints them at exit.
///
/// Pass `sizeof(divvy_malloc_statistics_t)` as `size`: the library fills at most that many bytes, so a program built
/// against this header keeps working with a later library whose structure has more fields at its end.
///
/// - Returns: 0, or -1 with `errno` set to `EINVAL` when `statistics` is NULL.
/// - Complexity: O(segments in use + pages in them).
int divvy_malloc_statistics(divvy_malloc_statistics_t *statistics, size_t size);

/// Accessors for the Swift heap (Swift sees the fixed arrays above as tuples).
static inline divvy_malloc_class_statistics_t *divvy_malloc_statistics_class(divvy_malloc_statistics_t *s, long i) {
    return &s->classes[i];
}
static inline divvy_malloc_heap_statistics_t *divvy_malloc_statistics_heap(divvy_malloc_statistics_t *s, long i) {
    return &s->heaps[i];
}

// MARK: Internal (hidden: not exported from libDivvyMalloc.so)

/// The switches, read once from the environment by the library's constructor, before any heap exists
/// (hardening.c). `link_key` is 0 unless DIVVY_MALLOC_HARDENED is on: free-list links are stored XORed with it.
typedef struct {
    unsigned long long link_key;
    /// DIVVY_MALLOC_HARDENED: free and realloc check their pointer; links are encoded and checked when followed.
    int hardened;
    /// DIVVY_MALLOC_GUARD: a PROT_NONE page after every block over 16 KiB (up to 1 MiB).
    int guard_pages;
    /// hardened || guard_pages: the exported functions call the checked entry points.
    int checked;
    /// DIVVY_MALLOC_STATS: print malloc_stats() at exit, to this copy of stderr.
    int statistics_at_exit;
    int statistics_fd;
} divvy_malloc_options_t;

extern __attribute__((visibility("hidden"))) divvy_malloc_options_t divvy_malloc_options;

/// The free-list link key (0 unless hardened): one load, for the Swift heap's `nextBlock` / `setNextBlock`.
static inline __attribute__((always_inline)) unsigned long long divvy_malloc_link_key(void) {
    return divvy_malloc_options.link_key;
}
static inline int divvy_malloc_guard_pages(void) { return divvy_malloc_options.guard_pages; }

/// The process-wide heap state (`GlobalRef`), or NULL before the first heap is created.
void *divvy_malloc_global_state(void);

/// What a hardened check found (`divvy_malloc_report_misuse`).
enum {
    DIVVY_MALLOC_DOUBLE_FREE = 0,
    /// Not inside any block the heap can have handed out (outside its segments, or in its metadata).
    DIVVY_MALLOC_NOT_OURS = 1,
    /// Inside a block, not at its start (`detail`: the offset).
    DIVVY_MALLOC_INTERIOR = 2,
    /// At a block the page has never handed out.
    DIVVY_MALLOC_NEVER_ALLOCATED = 3,
    /// In a page that holds no live block (freed already, or never used).
    DIVVY_MALLOC_FREE_PAGE = 4,
};

/// Writes one line to stderr with write(2) and aborts (SIGABRT), like glibc's "free(): double free detected":
/// `divvy-malloc: double free of 0x… (64-byte block, size class 4)`. `in_realloc` nonzero says the call was realloc.
/// Allocates nothing.
_Noreturn void divvy_malloc_report_misuse(
    int problem, int in_realloc, const void *pointer, long block_size, long size_class, long detail);

/// A free-list link that decodes to an address outside its page (a write into a freed block, most likely): one
/// line to stderr, then abort.
_Noreturn void divvy_malloc_report_corrupted_link(const void *block, unsigned long long decoded, long block_size,
    long size_class);

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
