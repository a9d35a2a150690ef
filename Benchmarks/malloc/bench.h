// Shared helpers of the malloc workloads: a fast seeded generator and the report line run.sh reads.
// Each workload prints one line: `<name> <milliseconds> <peak RSS KiB> <checksum>`. Time is measured inside the
// program (monotonic clock around the workload only); peak RSS is getrusage's ru_maxrss for the whole process.
#ifndef DIVVY_MALLOC_BENCH_H
#define DIVVY_MALLOC_BENCH_H
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static inline uint64_t bench_next(uint64_t *state) {
    // xorshift64*: cheap next to the allocator calls it drives.
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline double bench_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

// The optional first argument scales a workload's amount of work (a count whose meaning each workload states);
// without it, the workload's default, so `run.sh` figures stay comparable with earlier ones.
static inline long bench_count(int argc, char **argv, long fallback) {
    if (argc < 2) return fallback;
    long value = strtol(argv[1], NULL, 10);
    return value > 0 ? value : fallback;
}

// Runs `count` threads of `worker`, the i-th with argument `first + i`, joins them all and returns the sum of their
// results (each worker returns its part of the checksum as a pointer-sized integer). At most 64 threads.
static inline unsigned long long bench_run_threads(int count, void *(*worker)(void *), uintptr_t first) {
    pthread_t threads[64];
    for (int i = 0; i < count; i++) pthread_create(&threads[i], NULL, worker, (void *)(first + (uintptr_t)i));
    unsigned long long sum = 0;
    for (int i = 0; i < count; i++) {
        void *result;
        pthread_join(threads[i], &result);
        sum += (uintptr_t)result;
    }
    return sum;
}

static inline void bench_report(const char *name, double start_ms, unsigned long long checksum) {
    double elapsed = bench_now_ms() - start_ms;
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    printf("%s %.1f %ld %llu\n", name, elapsed, usage.ru_maxrss, checksum);
}
#endif
