// libDivvyMalloc.so's C allocation ABI. See include/CDivvyMalloc.h and Sources/DivvyMalloc/DivvyMalloc.swift.
//
// Every exported function is a thin gate in front of the Swift heap:
//   1. Re-entry: the Swift heap may itself call malloc (the Swift runtime allocates class instances and metadata
//      when a pool builds a slab for a new size class). A thread-local depth counter marks "inside the heap"; a
//      malloc made at depth > 0 is served from a static bump arena instead, which never frees. The arena also
//      serves everything before the library's constructor has run (ld.so and libc start-up).
//   2. Thread safety: the default composition is single-threaded (a Pool), so one process-wide recursive mutex
//      serialises it. pthread_atfork holds the mutex across fork(), so a child never inherits it locked.
// Thread-locals use the initial-exec TLS model: no __tls_get_addr, which may call malloc (the library is meant to
// be LD_PRELOADed, so its TLS is in the static block).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "CDivvyMalloc.h"

#define DIVVY_EXPORT __attribute__((visibility("default")))

// Implemented in Swift (DivvyMalloc.swift), with @_cdecl.
extern void *divvy_malloc_swift_create(void);
extern void *divvy_malloc_swift_malloc(void *heap, size_t size);
extern void divvy_malloc_swift_free(void *heap, void *pointer);
extern void *divvy_malloc_swift_calloc(void *heap, size_t count, size_t size);
extern void *divvy_malloc_swift_realloc(void *heap, void *pointer, size_t size);
extern int divvy_malloc_swift_posix_memalign(void *heap, void **out, size_t alignment, size_t size);
extern void *divvy_malloc_swift_memalign(void *heap, size_t alignment, size_t size);
extern void *divvy_malloc_swift_aligned_alloc(void *heap, size_t alignment, size_t size);
extern void *divvy_malloc_swift_valloc(void *heap, size_t size);
extern void *divvy_malloc_swift_pvalloc(void *heap, size_t size);
extern size_t divvy_malloc_swift_usable_size(void *heap, void *pointer);

#define DIVVY_TLS __thread __attribute__((tls_model("initial-exec")))

// MARK: Bootstrap arena

#define DIVVY_ARENA_SIZE ((size_t)16 << 20)
// Untouched pages of .bss cost nothing; only what is used is ever committed.
static _Alignas(4096) unsigned char divvy_arena[DIVVY_ARENA_SIZE];
static _Atomic size_t divvy_arena_used;

static inline int divvy_in_arena(const void *pointer) {
    const unsigned char *byte = pointer;
    return byte >= divvy_arena && byte < divvy_arena + DIVVY_ARENA_SIZE;
}

// A block: [size_t size][pad to 16] payload. The size sits in the 8 bytes before the payload.
static void *divvy_arena_alloc(size_t size, size_t alignment) {
    if (alignment < 16) alignment = 16;
    if (size > DIVVY_ARENA_SIZE || alignment > DIVVY_ARENA_SIZE) { errno = ENOMEM; return NULL; }
    size_t need = size + alignment + 16;
    // Relaxed: the offset only partitions the arena; each thread then writes its own part.
    size_t start = atomic_fetch_add_explicit(&divvy_arena_used, need, memory_order_relaxed);
    if (start > DIVVY_ARENA_SIZE - need) { errno = ENOMEM; return NULL; }
    uintptr_t base = (uintptr_t)(divvy_arena + start) + 16;
    uintptr_t payload = (base + alignment - 1) & ~(uintptr_t)(alignment - 1);
    ((size_t *)payload)[-1] = size;
    return (void *)payload;
}

static inline size_t divvy_arena_size(const void *pointer) { return ((const size_t *)pointer)[-1]; }

DIVVY_EXPORT size_t divvy_malloc_bootstrap_bytes(void) {
    return atomic_load_explicit(&divvy_arena_used, memory_order_relaxed);
}

// MARK: State

static DIVVY_TLS int divvy_depth;
static pthread_mutex_t divvy_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static pthread_mutex_t divvy_init_lock = PTHREAD_MUTEX_INITIALIZER;
static void *_Atomic divvy_heap;
// Set by the library's constructor, which runs after its dependencies' (libswiftCore, libstdc++, …) initialisers:
// until then the Swift runtime may not be usable, so every allocation comes from the arena.
//
// `volatile` is what keeps this flag real. Without it, LLVM's GlobalOpt (at -O, so only in release builds)
// evaluates the constructor at compile time, on the assumption that a module's constructors run before any of its
// other code: it deletes the constructor, folds the flag to 1 from the start and the check in divvy_heap_slow to
// true. A preloaded malloc breaks that assumption (ld.so and the dependencies' initialisers call malloc before our
// constructor), so the release library built the Swift heap inside libstdc++'s initialiser, before libswiftCore's,
// and crashed every program at startup. Volatile accesses may be neither folded nor removed.
static volatile _Atomic int divvy_ready;

static void divvy_prefork(void) { pthread_mutex_lock(&divvy_lock); }
static void divvy_postfork_parent(void) { pthread_mutex_unlock(&divvy_lock); }
// The child's only thread has a new thread id, so it cannot unlock a recursive mutex the parent's thread owns
// (EPERM): it starts over with a fresh one, as glibc's malloc does with its arenas' locks.
static void divvy_postfork_child(void) {
    pthread_mutex_t fresh = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
    memcpy(&divvy_lock, &fresh, sizeof fresh);
    pthread_mutex_t fresh_init = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&divvy_init_lock, &fresh_init, sizeof fresh_init);
}

// Until this runs, ld.so, libc and the Swift runtime are still starting: serve them from the arena. See divvy_ready
// for why the flag must stay volatile (DivvyMallocPreloadTests checks that this constructor survives -O2).
__attribute__((constructor)) static void divvy_malloc_constructor(void) {
    atomic_store_explicit(&divvy_ready, 1, memory_order_release);
}

static __attribute__((noinline)) void *divvy_heap_slow(void) {
    if (!atomic_load_explicit(&divvy_ready, memory_order_acquire)) return NULL;
    pthread_mutex_lock(&divvy_init_lock);
    void *heap = atomic_load_explicit(&divvy_heap, memory_order_acquire);
    if (heap == NULL) {
        divvy_depth++;
        heap = divvy_malloc_swift_create();
        pthread_atfork(divvy_prefork, divvy_postfork_parent, divvy_postfork_child);
        divvy_depth--;
        // Release: the heap object's fields are visible to every thread that acquires the pointer.
        atomic_store_explicit(&divvy_heap, heap, memory_order_release);
    }
    pthread_mutex_unlock(&divvy_init_lock);
    return heap;
}

// The heap, or NULL while allocations must come from the arena (re-entry, or before the constructor).
static inline void *divvy_heap_or_null(void) {
    if (divvy_depth != 0) return NULL;
    // Acquire: pairs with the release store in divvy_heap_slow.
    void *heap = atomic_load_explicit(&divvy_heap, memory_order_acquire);
    return heap != NULL ? heap : divvy_heap_slow();
}

#define DIVVY_ENTER() do { divvy_depth++; pthread_mutex_lock(&divvy_lock); } while (0)
#define DIVVY_LEAVE() do { pthread_mutex_unlock(&divvy_lock); divvy_depth--; } while (0)

// MARK: The C allocation ABI

DIVVY_EXPORT void *malloc(size_t size) {
    void *heap = divvy_heap_or_null();
    if (heap == NULL) return divvy_arena_alloc(size, 16);
    DIVVY_ENTER();
    void *pointer = divvy_malloc_swift_malloc(heap, size);
    DIVVY_LEAVE();
    return pointer;
}

DIVVY_EXPORT void free(void *pointer) {
    if (pointer == NULL || divvy_in_arena(pointer)) return;
    // A block not from the arena came from the heap, so the heap exists (even at depth > 0: the lock is recursive).
    void *heap = atomic_load_explicit(&divvy_heap, memory_order_acquire);
    if (heap == NULL) return;  // not ours and no heap yet: nothing to give it back to
    DIVVY_ENTER();
    divvy_malloc_swift_free(heap, pointer);
    DIVVY_LEAVE();
}

DIVVY_EXPORT void *calloc(size_t count, size_t size) {
    void *heap = divvy_heap_or_null();
    if (heap == NULL) {
        size_t bytes;
        if (__builtin_mul_overflow(count, size, &bytes)) { errno = ENOMEM; return NULL; }
        void *pointer = divvy_arena_alloc(bytes, 16);
        if (pointer != NULL) memset(pointer, 0, bytes);
        return pointer;
    }
    DIVVY_ENTER();
    void *pointer = divvy_malloc_swift_calloc(heap, count, size);
    DIVVY_LEAVE();
    return pointer;
}

DIVVY_EXPORT void *realloc(void *pointer, size_t size) {
    if (pointer != NULL && divvy_in_arena(pointer)) {
        // Arena blocks never move back: copy into a fresh block (from the heap when it is ready). realloc(p, 0)
        // frees (a no-op for the arena) and returns NULL, as for heap blocks.
        if (size == 0) return NULL;
        void *moved = malloc(size);
        if (moved == NULL) return NULL;
        size_t old = divvy_arena_size(pointer);
        memcpy(moved, pointer, old < size ? old : size);
        return moved;
    }
    void *heap = divvy_heap_or_null();
    if (heap == NULL) {
        if (pointer == NULL) return divvy_arena_alloc(size, 16);
        heap = atomic_load_explicit(&divvy_heap, memory_order_acquire);
        if (heap == NULL) { errno = ENOMEM; return NULL; }
    }
    DIVVY_ENTER();
    void *moved = divvy_malloc_swift_realloc(heap, pointer, size);
    DIVVY_LEAVE();
    return moved;
}

DIVVY_EXPORT void *reallocarray(void *pointer, size_t count, size_t size) {
    size_t bytes;
    if (__builtin_mul_overflow(count, size, &bytes)) { errno = ENOMEM; return NULL; }
    return realloc(pointer, bytes);
}

DIVVY_EXPORT int posix_memalign(void **out, size_t alignment, size_t size) {
    void *heap = divvy_heap_or_null();
    if (heap == NULL) {
        if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment % sizeof(void *) != 0) return EINVAL;
        int saved = errno;
        void *pointer = divvy_arena_alloc(size, alignment);
        errno = saved;
        if (pointer == NULL) return ENOMEM;
        *out = pointer;
        return 0;
    }
    DIVVY_ENTER();
    int result = divvy_malloc_swift_posix_memalign(heap, out, alignment, size);
    DIVVY_LEAVE();
    return result;
}

DIVVY_EXPORT void *aligned_alloc(size_t alignment, size_t size) {
    void *heap = divvy_heap_or_null();
    if (heap == NULL) {
        if (alignment == 0 || (alignment & (alignment - 1)) != 0) { errno = EINVAL; return NULL; }
        return divvy_arena_alloc(size, alignment);
    }
    DIVVY_ENTER();
    void *pointer = divvy_malloc_swift_aligned_alloc(heap, alignment, size);
    DIVVY_LEAVE();
    return pointer;
}

DIVVY_EXPORT void *memalign(size_t alignment, size_t size) {
    void *heap = divvy_heap_or_null();
    if (heap == NULL) {
        size_t rounded = 16;
        while (rounded < alignment && rounded != 0) rounded <<= 1;
        if (rounded == 0) { errno = EINVAL; return NULL; }
        return divvy_arena_alloc(size, rounded);
    }
    DIVVY_ENTER();
    void *pointer = divvy_malloc_swift_memalign(heap, alignment, size);
    DIVVY_LEAVE();
    return pointer;
}

DIVVY_EXPORT void *valloc(size_t size) {
    void *heap = divvy_heap_or_null();
    if (heap == NULL) return divvy_arena_alloc(size, (size_t)sysconf(_SC_PAGESIZE));
    DIVVY_ENTER();
    void *pointer = divvy_malloc_swift_valloc(heap, size);
    DIVVY_LEAVE();
    return pointer;
}

DIVVY_EXPORT void *pvalloc(size_t size) {
    void *heap = divvy_heap_or_null();
    if (heap == NULL) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        return divvy_arena_alloc(((size ? size : 1) + page - 1) & ~(page - 1), page);
    }
    DIVVY_ENTER();
    void *pointer = divvy_malloc_swift_pvalloc(heap, size);
    DIVVY_LEAVE();
    return pointer;
}

DIVVY_EXPORT size_t malloc_usable_size(void *pointer) {
    if (pointer == NULL) return 0;
    if (divvy_in_arena(pointer)) return divvy_arena_size(pointer);
    void *heap = atomic_load_explicit(&divvy_heap, memory_order_acquire);
    if (heap == NULL) return 0;
    DIVVY_ENTER();
    size_t size = divvy_malloc_swift_usable_size(heap, pointer);
    DIVVY_LEAVE();
    return size;
}
