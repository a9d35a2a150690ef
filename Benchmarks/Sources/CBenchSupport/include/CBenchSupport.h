// glibc exports its allocator under these names too. Calling them bypasses any interposed `malloc` (the
// benchmark harness interposes one to count allocations), so the baseline is glibc's real cost.
#ifndef CBENCHSUPPORT_H
#define CBENCHSUPPORT_H
#include <stddef.h>
void *__libc_malloc(size_t size);
void __libc_free(void *pointer);
static inline void *divvy_bench_libc_malloc(size_t size) { return __libc_malloc(size); }
static inline void divvy_bench_libc_free(void *pointer) { __libc_free(pointer); }
#include <stdint.h>
extern uint64_t divvy_bench_word;
/// Two dependent compare-and-swaps (acquire-release) on one shared word: what a Treiber pop+push costs at least.
static inline void divvy_bench_two_cas(void) {
    uint64_t expected = __atomic_load_n(&divvy_bench_word, __ATOMIC_ACQUIRE);
    __atomic_compare_exchange_n(&divvy_bench_word, &expected, expected + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    expected = __atomic_load_n(&divvy_bench_word, __ATOMIC_RELAXED);
    __atomic_compare_exchange_n(&divvy_bench_word, &expected, expected + 1, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}
#endif
