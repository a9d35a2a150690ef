// glibc exports its allocator under these names too. Calling them bypasses any interposed `malloc` (the
// benchmark harness interposes one to count allocations), so the baseline is glibc's real cost.
#ifndef CBENCHSUPPORT_H
#define CBENCHSUPPORT_H
#include <stddef.h>
void *__libc_malloc(size_t size);
void __libc_free(void *pointer);
static inline void *divvy_bench_libc_malloc(size_t size) { return __libc_malloc(size); }
static inline void divvy_bench_libc_free(void *pointer) { __libc_free(pointer); }
#endif
