// Server-style, larson-like. Models a server whose connection threads keep replacing entries of a table they all
// share (a session cache, a connection table, an object store's index) and which retires its worker threads after a
// while and starts new ones. A table of 32 768 slots; four threads at a time, each step picking a random slot,
// allocating a block of 16–512 B (one in sixteen up to 4 KiB), writing it and swapping it into the slot with an
// atomic exchange, then reading and freeing the block it took out, which another thread, or one that has exited
// since, usually allocated. After its steps a thread exits and a new one takes its place; the table outlives them.
// Stresses: cross-thread frees at a high rate with no queue in between (the remote-free path, with several threads
// freeing into the same pages), adopting the pages exited threads leave with live blocks, and the memory blocks
// freed far from their owner keep in use.
#include "bench.h"
#include <pthread.h>
#include <stdatomic.h>

enum { THREADS = 4, GENERATIONS = 6, TABLE = 32768 };

static _Atomic(unsigned char *) table[TABLE];
static long STEPS = 100000;  // argument: steps per thread

static void *worker(void *argument) {
    uint64_t state = 0x1A2503ULL ^ ((uint64_t)(uintptr_t)argument * 0x9E3779B97F4A7C15ULL);
    unsigned long long checksum = 0;
    for (long step = 0; step < STEPS; step++) {
        uint64_t r = bench_next(&state);
        size_t size = (r & 15) == 0 ? 512 + (size_t)((r >> 8) % 3585) : 16 + (size_t)((r >> 8) % 497);
        unsigned char *p = malloc(size);
        memset(p, (int)(r >> 56), size < 64 ? size : 64);
        p[size - 1] = 3;
        unsigned char *old = atomic_exchange_explicit(&table[(r >> 32) % TABLE], p, memory_order_acq_rel);
        // Each block's first byte is counted once, when it is freed: the total does not depend on thread timing.
        if (old != NULL) {
            checksum += old[0];
            free(old);
        }
    }
    return (void *)(uintptr_t)checksum;
}

int main(int argc, char **argv) {
    STEPS = bench_count(argc, argv, STEPS);
    unsigned long long checksum = 0;
    double start = bench_now_ms();
    pthread_t threads[THREADS];
    // Generations overlap: thread i of generation g+1 starts as soon as thread i of generation g has been joined.
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (int g = 1; g <= GENERATIONS; g++) {
        for (int i = 0; i < THREADS; i++) {
            void *result;
            pthread_join(threads[i], &result);
            checksum += (uintptr_t)result;
            if (g < GENERATIONS)
                pthread_create(&threads[i], NULL, worker, (void *)(uintptr_t)(g * THREADS + i + 1));
        }
    }
    for (int i = 0; i < TABLE; i++) {
        unsigned char *p = atomic_load_explicit(&table[i], memory_order_relaxed);
        if (p != NULL) checksum += p[0];
        free(p);
    }
    bench_report("larson", start, checksum);
    return 0;
}
