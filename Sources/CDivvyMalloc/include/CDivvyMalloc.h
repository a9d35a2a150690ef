// CDivvyMalloc: the C allocation ABI of libDivvyMalloc.so. Only what Swift cannot express lives here: the exported
// malloc-family symbols, a thread-local re-entry depth, the process-wide lock and its fork handlers, and a static
// bootstrap arena for allocations made while the heap itself is being built. The allocator is Swift
// (`DivvyMalloc.swift`, over `CAllocationAdapter`). Every symbol of our own is prefixed `divvy_malloc_`.
#ifndef CDIVVY_MALLOC_H
#define CDIVVY_MALLOC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Bytes of the static bootstrap arena handed out so far (allocations made before the heap was ready, or by the
/// heap itself while it builds objects). For tests and diagnostics.
size_t divvy_malloc_bootstrap_bytes(void);

#ifdef __cplusplus
}
#endif

#endif
