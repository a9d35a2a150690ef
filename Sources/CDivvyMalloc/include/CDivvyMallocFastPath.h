// libDivvyMalloc's two fast paths — a small malloc served from the current page's free list, and a free of a block
// the calling thread owns that leaves its page non-empty — and the layout facts they read. They are written once,
// here, as static inline C: the exported `malloc`/`free` (shim.c) run them before anything else, and the Swift heap
// (`HeapRef.malloc`/`HeapRef.free` in Sources/DivvyMalloc) calls the same functions, which Swift inlines. The Swift
// heap's views (`MallocLayout.swift`) take the offsets below from this header, so the two languages cannot disagree
// about where a field is.
//
// Each fast path either does the whole job or changes nothing and returns "no": the caller then takes the full
// path, which handles everything (empty lists, new pages, remote frees, an emptied page, huge blocks, alignment).
// Neither calls any function, so neither can re-enter malloc.
#ifndef CDIVVY_MALLOC_FAST_PATH_H
#define CDIVVY_MALLOC_FAST_PATH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Layout constants shared by the C fast paths and the Swift heap (see MallocLayout.swift for the whole layout).
enum {
    /// Segments are 4 MiB, aligned to 4 MiB; a segment's first word is its page shift.
    DIVVY_MALLOC_SEGMENT_SHIFT = 22,
    /// Page descriptors start this far into their segment, one every DIVVY_MALLOC_DESCRIPTOR_SIZE bytes.
    DIVVY_MALLOC_DESCRIPTOR_OFFSET = 64,
    DIVVY_MALLOC_DESCRIPTOR_SIZE = 192,
    /// Descriptor fields: the owning heap (atomic word; bit 0 set when frees must round down to a block), the
    /// owner's free list, its count of blocks handed out (int32), and its list of blocks freed by the owner.
    DIVVY_MALLOC_PAGE_OWNER = 0,
    DIVVY_MALLOC_PAGE_FREE = 64,
    DIVVY_MALLOC_PAGE_USED = 72,
    DIVVY_MALLOC_PAGE_LOCAL_FREE = 104,
    /// The largest size the malloc fast path serves (classes 0…20).
    DIVVY_MALLOC_FAST_MAX = 1024,
    /// Where a heap keeps its direct table: the current page for each 16-byte size step up to FAST_MAX, indexed by
    /// (size + 15) >> 4 (65 entries; the Swift heap keeps it in step with the current page of each class).
    DIVVY_MALLOC_HEAP_DIRECT = 1088,
};

/// The size class serving `size` bytes, 0 ≤ size ≤ 1 MiB: 16-byte steps up to 128 bytes (classes 0…8), then four
/// classes per power of two (class 60 is 1 MiB).
static inline __attribute__((always_inline)) size_t divvy_malloc_size_class(size_t size) {
    if (size <= 128) return (size + 15) >> 4;
    // 2^(bits-1) < size <= 2^bits, bits in 8…20 for the sizes allowed here.
    unsigned bits = 64 - (unsigned)__builtin_clzll((unsigned long long)size - 1);
    return 9 + (size_t)(bits - 8) * 4 + (((size - 1) >> (bits - 3)) & 3);
}

/// A block of `size` bytes from the current page of its class, or NULL (nothing changed) when `size` is above
/// DIVVY_MALLOC_FAST_MAX, the class has no page, or its page's free list is empty.
static inline __attribute__((always_inline)) void *divvy_malloc_fast_malloc(void *heap, size_t size) {
    if (size > DIVVY_MALLOC_FAST_MAX) return NULL;
    char *page = ((char **)((char *)heap + DIVVY_MALLOC_HEAP_DIRECT))[(size + 15) >> 4];
    if (page == NULL) return NULL;
    void **block = *(void ***)(page + DIVVY_MALLOC_PAGE_FREE);
    if (block == NULL) return NULL;
    *(void ***)(page + DIVVY_MALLOC_PAGE_FREE) = (void **)*block;
    *(int32_t *)(page + DIVVY_MALLOC_PAGE_USED) += 1;
    return block;
}

/// Frees `pointer` when `heap` owns its page (without interior pointers) and the page keeps other blocks: returns
/// 1. Otherwise returns 0 and changes nothing. `pointer` must be a live block of the heap's segments.
static inline __attribute__((always_inline)) int divvy_malloc_fast_free(void *heap, void *pointer) {
    char *segment = (char *)((uintptr_t)pointer & ~(((uintptr_t)1 << DIVVY_MALLOC_SEGMENT_SHIFT) - 1));
    // The page shift is 16, 20 or 22, or 40 for a huge run (index 0); masking keeps the shift defined in C.
    size_t index = ((uintptr_t)pointer - (uintptr_t)segment) >> (*(uint64_t *)segment & 63);
    char *page = segment + DIVVY_MALLOC_DESCRIPTOR_OFFSET + index * DIVVY_MALLOC_DESCRIPTOR_SIZE;
    // Relaxed in effect (a plain aligned load of a word only ever written whole): a thread sees its own heap's
    // address here only if it stored it, or was handed the page under the heap's lock after the last store.
    if (__atomic_load_n((uintptr_t *)(page + DIVVY_MALLOC_PAGE_OWNER), __ATOMIC_RELAXED) != (uintptr_t)heap) return 0;
    int32_t *used = (int32_t *)(page + DIVVY_MALLOC_PAGE_USED);
    if (*used <= 1) return 0;  // the last block: the full path retires the page
    *(void **)pointer = *(void **)(page + DIVVY_MALLOC_PAGE_LOCAL_FREE);
    *(void **)(page + DIVVY_MALLOC_PAGE_LOCAL_FREE) = pointer;
    *used -= 1;
    return 1;
}

#ifdef __cplusplus
}
#endif

#endif
