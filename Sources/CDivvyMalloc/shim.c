// libDivvyMalloc.so's C allocation ABI. See include/CDivvyMalloc.h and Sources/DivvyMalloc/DivvyMalloc.swift.
//
// The C semantics of every function (size 0, alignment validation and rounding, calloc and reallocarray overflow,
// realloc(p, 0), pvalloc's pages, errno, posix_memalign's return codes) are CAllocationAdapter's, in Swift
// (Sources/Divvy/Global), applied to the per-thread heap through ThreadHeapStrategy. This file keeps only what C must
// do, and each exported function is a thin gate in front of the adapter:
//   1. The thread's heap: a thread-local pointer (initial-exec TLS, one %fs-relative load; no __tls_get_addr, which
//      may call malloc; the library is meant to be LD_PRELOADed, so its TLS is in the static block). It starts as a
//      placeholder that owns nothing; a thread's first allocation creates its heap and registers it with a pthread
//      key, whose destructor hands the heap's pages back when the thread exits.
//   2. Re-entry: a thread-local depth marks "inside the heap". The heap never calls malloc (see DivvyMalloc.swift),
//      but if anything it calls ever did, the nested call would corrupt the thread's heap mid-update; so a malloc
//      at depth > 0 is served from a static bump arena instead (which never frees) and counted. The arena also
//      serves everything before the library's constructor has run (ld.so and libc start-up), and keeps only the
//      checks it needs to stay in bounds (calloc's product, pvalloc's pages). The first heap created runs every
//      Swift entry point once as set-up code (depth 2), so a debug build's first-use metadata is not a re-entry.
//   3. Locks: the heap's slow paths (new pages, huge blocks, thread start/exit) take one process-wide recursive
//      mutex, `divvy_lock`. pthread_atfork holds it (and the init lock) across fork(), so a child never inherits a
//      lock held by a thread that no longer exists. The fast paths take no lock.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "CDivvyMalloc.h"

#define DIVVY_EXPORT __attribute__((visibility("default")))
// The Swift functions are public Swift symbols (default visibility). Declaring them hidden here makes the linker
// bind our calls directly (the most constraining visibility wins), instead of through the PLT.
#define DIVVY_INTERNAL __attribute__((visibility("hidden")))
#define DIVVY_LIKELY(x) __builtin_expect(!!(x), 1)
#define DIVVY_UNLIKELY(x) __builtin_expect(!!(x), 0)

// Implemented in Swift (DivvyMalloc.swift), with @_cdecl.
extern DIVVY_INTERNAL void *divvy_malloc_swift_global_create(void);
extern DIVVY_INTERNAL void *divvy_malloc_swift_heap_create(void *global);
extern DIVVY_INTERNAL void divvy_malloc_swift_heap_abandon(void *heap);
extern DIVVY_INTERNAL void divvy_malloc_swift_warm_up(void *heap);
// CAllocationAdapter's C functions over `heap` (the calling thread's): every C rule and errno are theirs.
extern DIVVY_INTERNAL void *divvy_malloc_swift_malloc(void *heap, size_t size);
extern DIVVY_INTERNAL void divvy_malloc_swift_free(void *heap, void *pointer);
extern DIVVY_INTERNAL void *divvy_malloc_swift_calloc(void *heap, size_t count, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_realloc(void *heap, void *pointer, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_reallocarray(void *heap, void *pointer, size_t count, size_t size);
extern DIVVY_INTERNAL int divvy_malloc_swift_posix_memalign(void *heap, void **out, size_t alignment, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_aligned_alloc(void *heap, size_t alignment, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_memalign(void *heap, size_t alignment, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_valloc(void *heap, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_pvalloc(void *heap, size_t size);
extern DIVVY_INTERNAL size_t divvy_malloc_swift_usable_size(void *heap, void *pointer);
extern DIVVY_INTERNAL long divvy_malloc_swift_stat(void *global, long which);
// The checked entry points (MallocHardening.swift): the same functions over CheckedHeapStrategy, which checks every
// pointer freed or reallocated (DIVVY_MALLOC_HARDENED) and keeps guard pages (DIVVY_MALLOC_GUARD).
extern DIVVY_INTERNAL void *divvy_malloc_swift_checked_malloc(void *heap, size_t size);
extern DIVVY_INTERNAL void divvy_malloc_swift_checked_free(void *heap, void *pointer);
extern DIVVY_INTERNAL void *divvy_malloc_swift_checked_calloc(void *heap, size_t count, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_checked_realloc(void *heap, void *pointer, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_checked_reallocarray(
    void *heap, void *pointer, size_t count, size_t size);
extern DIVVY_INTERNAL int divvy_malloc_swift_checked_posix_memalign(
    void *heap, void **out, size_t alignment, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_checked_aligned_alloc(void *heap, size_t alignment, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_checked_memalign(void *heap, size_t alignment, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_checked_valloc(void *heap, size_t size);
extern DIVVY_INTERNAL void *divvy_malloc_swift_checked_pvalloc(void *heap, size_t size);
extern DIVVY_INTERNAL void divvy_malloc_swift_checked_warm_up(void *heap);
// hardening.c
extern DIVVY_INTERNAL void divvy_malloc_read_switches(void);

// The Swift function `name` over the calling thread's heap: the checked one when DIVVY_MALLOC_HARDENED or
// DIVVY_MALLOC_GUARD is on. The switch was read once, by the constructor; this predictable branch sits in the full
// paths only (the fast paths in malloc and free never get here, and are disabled by data in hardened mode).
#define DIVVY_SWIFT(name, ...)                                                                                        \
    (DIVVY_UNLIKELY(divvy_malloc_options.checked) ? divvy_malloc_swift_checked_##name(__VA_ARGS__)                   \
                                                  : divvy_malloc_swift_##name(__VA_ARGS__))

#define DIVVY_TLS __thread __attribute__((tls_model("initial-exec")))

// MARK: Bootstrap arena

#define DIVVY_ARENA_SIZE ((size_t)16 << 20)
// Untouched pages of .bss cost nothing; only what is used is ever committed.
static _Alignas(4096) unsigned char divvy_arena[DIVVY_ARENA_SIZE];
static _Atomic size_t divvy_arena_used;

static inline __attribute__((always_inline)) int divvy_in_arena(const void *pointer) {
    // One compare: addresses below the arena wrap around to huge offsets.
    return (uintptr_t)pointer - (uintptr_t)divvy_arena < DIVVY_ARENA_SIZE;
}

// A block: [size_t size][pad to 16] payload. The size sits in the 8 bytes before the payload. Any alignment is
// rounded up to a power of two (the arena needs nothing more to stay in bounds; the C rules about alignments are the
// adapter's, for heap blocks). NULL when it does not fit; errno is the caller's to set.
static void *divvy_arena_alloc(size_t size, size_t alignment) {
    size_t rounded = 16;
    while (rounded < alignment && rounded <= DIVVY_ARENA_SIZE) rounded <<= 1;
    if (size > DIVVY_ARENA_SIZE || rounded > DIVVY_ARENA_SIZE) return NULL;
    size_t need = size + rounded + 16;
    // Relaxed: the offset only partitions the arena; each thread then writes its own part.
    size_t start = atomic_fetch_add_explicit(&divvy_arena_used, need, memory_order_relaxed);
    if (start > DIVVY_ARENA_SIZE - need) return NULL;
    uintptr_t base = (uintptr_t)(divvy_arena + start) + 16;
    uintptr_t payload = (base + rounded - 1) & ~(uintptr_t)(rounded - 1);
    ((size_t *)payload)[-1] = size;
    return (void *)payload;
}

static inline size_t divvy_arena_size(const void *pointer) { return ((const size_t *)pointer)[-1]; }

DIVVY_EXPORT size_t divvy_malloc_bootstrap_bytes(void) {
    return atomic_load_explicit(&divvy_arena_used, memory_order_relaxed);
}

// MARK: State

// What a thread's heap pointer is before its first allocation and after its exit: an address no page is ever
// owned by, so every free the thread makes then takes the remote path.
// It is as large as a heap (HeapRef.size), all zero, so the malloc fast path finds no page in it and declines.
static _Alignas(64) unsigned char divvy_no_heap[2048];
#define DIVVY_NO_HEAP ((void *)divvy_no_heap)

// Depth values: 0 outside the heap, 1 inside a malloc-family call (a nested call there is a re-entry: counted),
// 2 inside set-up code that may legitimately call malloc (pthread_setspecific, pthread_atfork, the Swift runtime's
// first use in a debug build).
typedef struct {
    void *heap;
    int depth;
} divvy_thread_t;

static DIVVY_TLS divvy_thread_t divvy_thread = {divvy_no_heap, 0};

static pthread_mutex_t divvy_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static pthread_mutex_t divvy_init_lock = PTHREAD_MUTEX_INITIALIZER;
static void *_Atomic divvy_global;
static pthread_key_t divvy_key;
static _Atomic unsigned long divvy_reentries;
static _Atomic unsigned long divvy_thread_exits;
// Whether divvy_malloc_swift_warm_up has run (once per process, under divvy_init_lock).
static _Atomic int divvy_warmed_up;

// Set by the library's constructor, which runs after its dependencies' (libswiftCore, libstdc++, …) initialisers:
// until then the Swift runtime may not be usable, so every allocation comes from the arena.
//
// `volatile` is what keeps this flag real. Without it, LLVM's GlobalOpt (at -O, so only in release builds)
// evaluates the constructor at compile time, on the assumption that a module's constructors run before any of its
// other code: it deletes the constructor, folds the flag to 1 from the start and the check in divvy_attach to
// true. A preloaded malloc breaks that assumption (ld.so and the dependencies' initialisers call malloc before our
// constructor), so the release library built the Swift heap inside libstdc++'s initialiser, before libswiftCore's,
// and crashed every program at startup. Volatile accesses may be neither folded nor removed.
static volatile _Atomic int divvy_ready;

DIVVY_INTERNAL void divvy_malloc_lock(void) { pthread_mutex_lock(&divvy_lock); }
DIVVY_INTERNAL void divvy_malloc_unlock(void) { pthread_mutex_unlock(&divvy_lock); }

// MARK: Retention helpers (MallocRetention.swift): what Swift cannot call (a variadic, a macro clock) or cannot parse
// without allocating (the environment).

DIVVY_INTERNAL long divvy_malloc_coarse_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return (long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

DIVVY_INTERNAL void *divvy_malloc_move_pages(void *old, size_t size, void *target) {
    void *moved = mremap(old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, target);
    return moved == MAP_FAILED ? NULL : moved;
}

// A decimal with an optional K/M/G suffix; -1 when `text` is not one.
static long divvy_parse_size(const char *text) {
    if (text == NULL || *text < '0' || *text > '9') return -1;
    long value = 0;
    for (; *text >= '0' && *text <= '9'; text++) {
        if (value > (1L << 50)) return -1;
        value = value * 10 + (*text - '0');
    }
    switch (*text) {
    case 'k': case 'K': value <<= 10; text++; break;
    case 'm': case 'M': value <<= 20; text++; break;
    case 'g': case 'G': value <<= 30; text++; break;
    default: break;
    }
    return *text == '\0' ? value : -1;
}

DIVVY_INTERNAL void divvy_malloc_retention_knobs(long *floor_bytes, long *percent, long *decay_ms) {
    long value;
    *floor_bytes = (value = divvy_parse_size(getenv("DIVVY_MALLOC_RETAIN"))) >= 0 ? value : 128L << 20;
    *percent = (value = divvy_parse_size(getenv("DIVVY_MALLOC_RETAIN_PERCENT"))) >= 0 && value <= 1000 ? value : 0;
    *decay_ms = (value = divvy_parse_size(getenv("DIVVY_MALLOC_DECAY_MS"))) >= 0 ? value : 1000;
}

static void divvy_prefork(void) {
    pthread_mutex_lock(&divvy_init_lock);
    pthread_mutex_lock(&divvy_lock);
}
static void divvy_postfork_parent(void) {
    pthread_mutex_unlock(&divvy_lock);
    pthread_mutex_unlock(&divvy_init_lock);
}
// The child's only thread has a new thread id, so it cannot unlock a recursive mutex the parent's thread owns
// (EPERM): it starts over with fresh ones, as glibc's malloc does with its arenas' locks. The heaps of the parent's
// other threads stay behind, owned by threads that do not exist in the child: blocks they handed out are still
// valid, and freeing them takes the remote path (the memory is simply not reused in the child).
static void divvy_postfork_child(void) {
    pthread_mutex_t fresh = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
    memcpy(&divvy_lock, &fresh, sizeof fresh);
    pthread_mutex_t fresh_init = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&divvy_init_lock, &fresh_init, sizeof fresh_init);
}

// The pthread key destructor: the thread is exiting. Its pages go back (empty ones to the pool, the others are
// abandoned for adoption). A destructor running after this one may still call malloc: the thread then gets a new
// heap and the key is set again, so this runs again (glibc repeats destructors up to PTHREAD_DESTRUCTOR_ITERATIONS).
static void divvy_thread_exit(void *heap) {
    divvy_thread_t *thread = &divvy_thread;
    if (heap == NULL || heap == DIVVY_NO_HEAP) return;
    int depth = thread->depth;
    thread->depth = 2;
    thread->heap = DIVVY_NO_HEAP;
    divvy_malloc_swift_heap_abandon(heap);
    thread->depth = depth;
    atomic_fetch_add_explicit(&divvy_thread_exits, 1, memory_order_relaxed);
}

// Until this runs, ld.so, libc and the Swift runtime are still starting: serve them from the arena. See divvy_ready
// for why the flag must stay volatile (DivvyMallocPreloadTests checks that this constructor survives -O2).
__attribute__((constructor)) static void divvy_malloc_constructor(void) {
    // The switches (DIVVY_MALLOC_HARDENED, _GUARD, _STATS), once, before any heap can exist: the heap's pages are
    // laid out for the mode from the first one on.
    divvy_malloc_read_switches();
    atomic_store_explicit(&divvy_ready, 1, memory_order_release);
}

static void *divvy_global_slow(void) {
    pthread_mutex_lock(&divvy_init_lock);
    void *global = atomic_load_explicit(&divvy_global, memory_order_acquire);
    if (global == NULL) {
        global = divvy_malloc_swift_global_create();
        if (global != NULL) {
            pthread_key_create(&divvy_key, divvy_thread_exit);
            pthread_atfork(divvy_prefork, divvy_postfork_parent, divvy_postfork_child);
            // Release: the global state is visible to every thread that acquires the pointer.
            atomic_store_explicit(&divvy_global, global, memory_order_release);
        }
    }
    pthread_mutex_unlock(&divvy_init_lock);
    return global;
}

// Runs every Swift entry point once, at depth 2 (set-up), so whatever the Swift runtime allocates on first use (a
// debug build's generic metadata) is a set-up allocation, not a re-entry counted inside malloc. Once per process;
// other threads attaching meanwhile wait on the init lock rather than race into the adapter's first use.
static __attribute__((noinline)) void divvy_warm_up(void *heap) {
    pthread_mutex_lock(&divvy_init_lock);
    if (!atomic_load_explicit(&divvy_warmed_up, memory_order_relaxed)) {
        int saved = errno;  // the warm-up exercises the failure paths too, which set errno
        divvy_malloc_swift_warm_up(heap);
        if (divvy_malloc_options.checked) divvy_malloc_swift_checked_warm_up(heap);
        errno = saved;
        atomic_store_explicit(&divvy_warmed_up, 1, memory_order_release);
    }
    pthread_mutex_unlock(&divvy_init_lock);
}

// The calling thread's first allocation (or its first after its heap was handed back): creates its heap. NULL while
// allocations must come from the arena (before the constructor, or when no memory can be reserved).
static __attribute__((noinline)) void *divvy_attach(void) {
    if (!atomic_load_explicit(&divvy_ready, memory_order_acquire)) return NULL;
    divvy_thread_t *thread = &divvy_thread;
    thread->depth = 2;
    // Acquire: pairs with the release store in divvy_global_slow.
    void *global = atomic_load_explicit(&divvy_global, memory_order_acquire);
    if (global == NULL) global = divvy_global_slow();
    void *heap = global != NULL ? divvy_malloc_swift_heap_create(global) : NULL;
    if (heap != NULL) {
        thread->heap = heap;
        pthread_setspecific(divvy_key, heap);
        // Acquire: pairs with the release store in divvy_warm_up (the runtime's first-use work is visible).
        if (!atomic_load_explicit(&divvy_warmed_up, memory_order_acquire)) divvy_warm_up(heap);
    }
    thread->depth = 0;
    return heap;
}

// A call the heap cannot serve, from the arena: the thread is inside the heap already (depth > 0; counted when it is
// a re-entry from a malloc-family call rather than from set-up code), or has no heap (before the constructor, or no
// memory for one). NULL when the arena is full; errno is the caller's to set.
static __attribute__((noinline)) void *divvy_fallback(size_t size, size_t alignment) {
    if (divvy_thread.depth == 1) atomic_fetch_add_explicit(&divvy_reentries, 1, memory_order_relaxed);
    return divvy_arena_alloc(size, alignment);
}

static __attribute__((noinline)) void *divvy_fallback_or_enomem(size_t size, size_t alignment) {
    void *pointer = divvy_fallback(size, alignment);
    if (pointer == NULL) errno = ENOMEM;
    return pointer;
}

DIVVY_EXPORT unsigned long divvy_malloc_reentries(void) {
    return atomic_load_explicit(&divvy_reentries, memory_order_relaxed);
}

// Makes one malloc/free pair as if from inside the heap (depth 1), so a test can check that the re-entry counter
// counts (it must go up by exactly 1: the nested malloc is counted, the arena block's free is not).
DIVVY_EXPORT void divvy_malloc_test_reenter(void) {
    divvy_thread_t *thread = &divvy_thread;
    int depth = thread->depth;
    thread->depth = 1;
    void *pointer = malloc(16);
    thread->depth = depth;
    free(pointer);
}

// The process-wide heap state, or NULL before the first heap (statistics.c).
DIVVY_INTERNAL void *divvy_malloc_global_state(void) {
    return atomic_load_explicit(&divvy_global, memory_order_acquire);
}

DIVVY_EXPORT long divvy_malloc_stat(int which) {
    void *global = atomic_load_explicit(&divvy_global, memory_order_acquire);
    if (which == 4) return (long)atomic_load_explicit(&divvy_thread_exits, memory_order_relaxed);
    if (global == NULL) return 0;
    pthread_mutex_lock(&divvy_lock);
    long value = divvy_malloc_swift_stat(global, which);
    pthread_mutex_unlock(&divvy_lock);
    return value;
}

// The gate every allocating function passes: the thread's heap (created on its first call), with the depth set to 1
// for the call; or NULL, depth untouched, when the arena must serve (see divvy_fallback).
static inline void *divvy_enter(divvy_thread_t *thread) {
    if (DIVVY_UNLIKELY(thread->depth != 0)) return NULL;
    void *heap = thread->heap;
    if (DIVVY_UNLIKELY(heap == DIVVY_NO_HEAP)) heap = divvy_attach();
    if (DIVVY_LIKELY(heap != NULL)) thread->depth = 1;
    return heap;
}

// MARK: The C allocation ABI
//
// malloc and free first try the heap's fast paths (CDivvyMallocFastPath.h): no call, no lock, no re-entry
// possible, and nothing changed when they decline (they serve only a successful small malloc and an owner's free, so
// no C rule is involved). Everything else takes the full path: pass the gate, call CAllocationAdapter's function over
// the thread's heap (which applies every C rule and sets errno), leave. The arena's side (the gate said no) is the
// only C semantics written here.
static __attribute__((noinline)) void *divvy_malloc_full(size_t size);
static __attribute__((noinline)) void divvy_free_full(void *pointer);

DIVVY_EXPORT void *malloc(size_t size) {
    divvy_thread_t *thread = &divvy_thread;
    if (DIVVY_LIKELY(thread->depth == 0)) {
        void *block = divvy_malloc_fast_malloc(thread->heap, size);
        if (DIVVY_LIKELY(block != NULL)) return block;
    }
    return divvy_malloc_full(size);
}

DIVVY_EXPORT void free(void *pointer) {
    divvy_thread_t *thread = &divvy_thread;
    if (DIVVY_LIKELY(pointer != NULL && !divvy_in_arena(pointer) && thread->depth == 0)
        && divvy_malloc_fast_free(thread->heap, pointer))
        return;
    divvy_free_full(pointer);
}

static void *divvy_malloc_full(size_t size) {
    divvy_thread_t *thread = &divvy_thread;
    void *heap = divvy_enter(thread);
    if (DIVVY_UNLIKELY(heap == NULL)) return divvy_fallback_or_enomem(size, 16);
    void *pointer = DIVVY_SWIFT(malloc, heap, size);
    thread->depth = 0;
    return pointer;
}

static void divvy_free_full(void *pointer) {
    // NULL and arena blocks (never freed) return before the thread's state is touched.
    if (pointer == NULL || divvy_in_arena(pointer)) return;
    divvy_thread_t *thread = &divvy_thread;
    if (DIVVY_UNLIKELY(thread->depth != 0)) {
        // A free from inside the heap would modify it mid-update: leak the block instead, and count a re-entry.
        if (thread->depth == 1) atomic_fetch_add_explicit(&divvy_reentries, 1, memory_order_relaxed);
        return;
    }
    // A thread without a heap frees through the placeholder, which owns nothing: the remote path.
    thread->depth = 1;
    DIVVY_SWIFT(free, thread->heap, pointer);
    thread->depth = 0;
}

static __attribute__((noinline)) void *divvy_fallback_calloc(size_t count, size_t size) {
    size_t bytes;
    if (__builtin_mul_overflow(count, size, &bytes)) { errno = ENOMEM; return NULL; }
    void *pointer = divvy_fallback_or_enomem(bytes, 16);
    if (pointer != NULL) memset(pointer, 0, bytes);
    return pointer;
}

DIVVY_EXPORT void *calloc(size_t count, size_t size) {
    divvy_thread_t *thread = &divvy_thread;
    void *heap = divvy_enter(thread);
    if (DIVVY_UNLIKELY(heap == NULL)) return divvy_fallback_calloc(count, size);
    void *pointer = DIVVY_SWIFT(calloc, heap, count, size);
    thread->depth = 0;
    return pointer;
}

// An arena block never moves back to the heap: realloc copies it into a fresh block (from the heap when it is ready).
// realloc(p, 0) frees it (a no-op for the arena) and returns NULL, as for heap blocks.
static __attribute__((noinline)) void *divvy_arena_realloc(void *pointer, size_t size) {
    if (size == 0) return NULL;
    void *moved = malloc(size);
    if (moved == NULL) return NULL;
    size_t old = divvy_arena_size(pointer);
    memcpy(moved, pointer, old < size ? old : size);
    return moved;
}

// realloc of a heap block (or NULL) when the gate said no: the copy goes to the arena. Inside the heap the old block
// must not be touched, so it leaks; a thread without a heap frees it (the remote path).
static __attribute__((noinline)) void *divvy_fallback_realloc(void *pointer, size_t size) {
    if (pointer == NULL) return divvy_fallback_or_enomem(size, 16);
    if (size == 0) {
        free(pointer);
        return NULL;
    }
    void *moved = divvy_fallback_or_enomem(size, 16);
    if (moved == NULL) return NULL;
    size_t old = divvy_malloc_swift_usable_size(divvy_thread.heap, pointer);
    memcpy(moved, pointer, old < size ? old : size);
    if (divvy_thread.depth == 0) free(pointer);
    return moved;
}

DIVVY_EXPORT void *realloc(void *pointer, size_t size) {
    if (DIVVY_UNLIKELY(divvy_in_arena(pointer))) return divvy_arena_realloc(pointer, size);
    divvy_thread_t *thread = &divvy_thread;
    void *heap = divvy_enter(thread);
    if (DIVVY_UNLIKELY(heap == NULL)) return divvy_fallback_realloc(pointer, size);
    void *moved = DIVVY_SWIFT(realloc, heap, pointer, size);
    thread->depth = 0;
    return moved;
}

DIVVY_EXPORT void *reallocarray(void *pointer, size_t count, size_t size) {
    divvy_thread_t *thread = &divvy_thread;
    void *heap = divvy_in_arena(pointer) ? NULL : divvy_enter(thread);
    if (DIVVY_UNLIKELY(heap == NULL)) {
        size_t bytes;
        if (__builtin_mul_overflow(count, size, &bytes)) { errno = ENOMEM; return NULL; }
        return realloc(pointer, bytes);
    }
    void *moved = DIVVY_SWIFT(reallocarray, heap, pointer, count, size);
    thread->depth = 0;
    return moved;
}

DIVVY_EXPORT int posix_memalign(void **out, size_t alignment, size_t size) {
    divvy_thread_t *thread = &divvy_thread;
    void *heap = divvy_enter(thread);
    if (DIVVY_UNLIKELY(heap == NULL)) {
        void *pointer = divvy_fallback(size, alignment);
        if (pointer == NULL) return ENOMEM;
        *out = pointer;
        return 0;
    }
    int result = DIVVY_SWIFT(posix_memalign, heap, out, alignment, size);
    thread->depth = 0;
    return result;
}

DIVVY_EXPORT void *aligned_alloc(size_t alignment, size_t size) {
    divvy_thread_t *thread = &divvy_thread;
    void *heap = divvy_enter(thread);
    if (DIVVY_UNLIKELY(heap == NULL)) return divvy_fallback_or_enomem(size, alignment);
    void *pointer = DIVVY_SWIFT(aligned_alloc, heap, alignment, size);
    thread->depth = 0;
    return pointer;
}

DIVVY_EXPORT void *memalign(size_t alignment, size_t size) {
    divvy_thread_t *thread = &divvy_thread;
    void *heap = divvy_enter(thread);
    if (DIVVY_UNLIKELY(heap == NULL)) return divvy_fallback_or_enomem(size, alignment);
    void *pointer = DIVVY_SWIFT(memalign, heap, alignment, size);
    thread->depth = 0;
    return pointer;
}

DIVVY_EXPORT void *valloc(size_t size) {
    divvy_thread_t *thread = &divvy_thread;
    void *heap = divvy_enter(thread);
    if (DIVVY_UNLIKELY(heap == NULL)) return divvy_fallback_or_enomem(size, (size_t)sysconf(_SC_PAGESIZE));
    void *pointer = DIVVY_SWIFT(valloc, heap, size);
    thread->depth = 0;
    return pointer;
}

DIVVY_EXPORT void *pvalloc(size_t size) {
    divvy_thread_t *thread = &divvy_thread;
    void *heap = divvy_enter(thread);
    if (DIVVY_UNLIKELY(heap == NULL)) {
        // The caller may use every byte of the pages: the arena block must span them.
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        size_t rounded;
        if (__builtin_add_overflow(size ? size : 1, page - 1, &rounded)) { errno = ENOMEM; return NULL; }
        return divvy_fallback_or_enomem(rounded & ~(page - 1), page);
    }
    void *pointer = DIVVY_SWIFT(pvalloc, heap, size);
    thread->depth = 0;
    return pointer;
}

DIVVY_EXPORT size_t malloc_usable_size(void *pointer) {
    if (divvy_in_arena(pointer)) return divvy_arena_size(pointer);
    // NULL may come before the Swift runtime is up, when nothing but C may answer.
    if (pointer == NULL) return 0;
    return divvy_malloc_swift_usable_size(divvy_thread.heap, pointer);
}
