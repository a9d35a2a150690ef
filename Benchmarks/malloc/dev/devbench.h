// Helpers of the dev workloads (not part of the official suite): time, peak RSS, minor page faults and system time,
// on one line: `<name> <ms> <peak RSS KiB> <minor faults> <system ms> <checksum>`.
#ifndef DIVVY_DEV_BENCH_H
#define DIVVY_DEV_BENCH_H
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static inline uint64_t dev_next(uint64_t *state) {
    uint64_t x = *state;  // splitmix64
    x += 0x9E3779B97F4A7C15ULL;
    *state = x;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static inline double dev_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static inline void dev_report(const char *name, double start_ms, unsigned long long checksum) {
    double elapsed = dev_now_ms() - start_ms;
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    double sys = (double)u.ru_stime.tv_sec * 1e3 + (double)u.ru_stime.tv_usec / 1e3;
    printf("%s %.1f %ld %ld %.0f %llu\n", name, elapsed, u.ru_maxrss, u.ru_minflt, sys, checksum);
}
#endif
