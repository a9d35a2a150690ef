// Many threads in bursts. Models thread-per-task programs: a build tool's job pool, a test runner, a fork-join batch
// job. Rounds of 12 threads that are created, work, and are joined; each runs a few bursts: allocate 1000–3000
// blocks (mostly 16–256 B, one in eight up to 2 KiB, one in 128 a work buffer of up to 256 KiB), write them, then
// free them all (every other one first, then the rest backwards). A few blocks of every burst go into a shared pool,
// replacing blocks there that an earlier thread, often one that has exited since, allocated; that thread's memory
// stays in use.
// Stresses: the allocator's per-thread start-up and exit (creating a heap, handing back pages, abandoning pages that
// still hold live blocks and adopting them later), allocating bursts from fresh pages, short-lived mid-size buffers,
// freeing blocks whose owner has exited, and contention between more threads than CPUs.
#include "bench.h"
#include <pthread.h>

enum { THREADS = 12, BURSTS = 4, MAX_BURST = 3000, KEEP = 24, POOL = 4096 };

static unsigned char *pool[POOL];
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t burst_size(uint64_t r) {
    if ((r & 127) == 0) return 2048 + (size_t)((r >> 16) % (254u << 10));
    if ((r & 7) == 0) return 256 + (size_t)((r >> 16) % 1793);
    return 16 + (size_t)((r >> 16) % 241);
}

static void *worker(void *argument) {
    uint64_t state = 0xB0057ULL ^ ((uint64_t)(uintptr_t)argument * 0x9E3779B97F4A7C15ULL);
    unsigned long long checksum = 0;
    unsigned char **blocks = malloc(MAX_BURST * sizeof *blocks);
    for (int burst = 0; burst < BURSTS; burst++) {
        int count = 1000 + (int)(bench_next(&state) % (MAX_BURST - 1000));
        for (int i = 0; i < count; i++) {
            uint64_t r = bench_next(&state);
            size_t size = burst_size(r);
            unsigned char *p = malloc(size);
            memset(p, (int)(r >> 56), size < 128 ? size : 128);
            p[size - 1] = 1;
            blocks[i] = p;
        }
        for (int k = 0; k < KEEP; k++) {
            uint64_t r = bench_next(&state);
            int i = (int)(r % (uint64_t)count);
            if (blocks[i] == NULL) continue;
            pthread_mutex_lock(&pool_lock);
            unsigned char *old = pool[(r >> 32) % POOL];
            pool[(r >> 32) % POOL] = blocks[i];
            pthread_mutex_unlock(&pool_lock);
            blocks[i] = NULL;
            // The pooled block's first byte joins the checksum when it is freed, whenever and by whom that is: the
            // total does not depend on the order threads ran in.
            if (old != NULL) {
                checksum += old[0];
                free(old);
            }
        }
        for (int i = 0; i < count; i += 2) {
            if (blocks[i] != NULL) checksum += blocks[i][0];
            free(blocks[i]);
        }
        for (int i = (count - 1) % 2 == 1 ? count - 1 : count - 2; i > 0; i -= 2) {
            if (blocks[i] != NULL) checksum += blocks[i][0];
            free(blocks[i]);
        }
    }
    free(blocks);
    return (void *)(uintptr_t)checksum;
}

int main(int argc, char **argv) {
    const long ROUNDS = bench_count(argc, argv, 60);  // argument: rounds of THREADS threads
    unsigned long long checksum = 0;
    double start = bench_now_ms();
    for (long round = 0; round < ROUNDS; round++) {
        checksum += bench_run_threads(THREADS, worker, (uintptr_t)(round * THREADS + 1));
    }
    for (int i = 0; i < POOL; i++) {
        if (pool[i] != NULL) checksum += pool[i][0];
        free(pool[i]);
    }
    bench_report("bursts", start, checksum);
    return 0;
}
