// Dev workload: many-thread bursts (the shape of mimalloc-bench's mstress). ROUNDS rounds; each starts THREADS
// threads that allocate small blocks (8 B–1 KiB), keep a quarter of what they allocate until they end (80 B–100 KiB),
// one in a hundred of either a hundred times larger (up to 10 MiB), free two thirds of the rest at random, swap
// blocks with other threads through a shared array (so many frees are remote), grow their pointer array with
// realloc, and free everything when they end; the next round's threads start from what the last left behind.
// Arguments: threads (default 8), rounds (default 6), scale (default 6).
#include <pthread.h>
#include <stdatomic.h>

#include "devbench.h"

enum { TRANSFERS = 1000 };
static _Atomic(void *) transfer[TRANSFERS];
static long scale = 6;
static const uint64_t cookie = 0xbf58476d1ce4e5b9ULL;

static void *alloc_items(size_t items, uint64_t *r) {
    if (dev_next(r) % 100 == 0) items *= 100;
    uint64_t *p = malloc(items * 8);
    for (size_t i = 0; i < items; i++) p[i] = (items - i) ^ cookie;
    return p;
}

static void free_items(void *p) {
    if (p) {
        uint64_t *q = p;
        uint64_t items = q[0] ^ cookie;
        for (uint64_t i = 0; i < items; i++)
            if ((q[i] ^ cookie) != items - i) { fprintf(stderr, "corrupt block %p\n", p); abort(); }
    }
    free(p);
}

static void *stress(void *arg) {
    uintptr_t tid = (uintptr_t)arg;
    uint64_t r = tid * 7919 + 42;
    size_t allocs = 80 * (size_t)scale * (tid % 8 + 1), retain = allocs / 2;
    void **data = NULL, **retained = malloc(retain * sizeof(void *));
    size_t data_size = 0, data_top = 0, retain_top = 0;
    while (allocs > 0 || retain > 0) {
        if (retain == 0 || (dev_next(&r) % 2 == 0 && allocs > 0)) {
            allocs--;
            if (data_top >= data_size) {
                data_size += 100000;
                data = realloc(data, data_size * sizeof(void *));
            }
            data[data_top++] = alloc_items(dev_next(&r) % 128 + 1, &r);
        } else {
            retained[retain_top++] = alloc_items(10 * (dev_next(&r) % 1280 + 1), &r);
            retain--;
        }
        if (dev_next(&r) % 100 < 66 && data_top > 0) {
            size_t i = dev_next(&r) % data_top;
            free_items(data[i]);
            data[i] = NULL;
        }
        if (dev_next(&r) % 100 < 25 && data_top > 0) {
            size_t i = dev_next(&r) % data_top;
            data[i] = atomic_exchange(&transfer[dev_next(&r) % TRANSFERS], data[i]);
        }
    }
    for (size_t i = 0; i < retain_top; i++) free_items(retained[i]);
    for (size_t i = 0; i < data_top; i++) free_items(data[i]);
    free(retained);
    free(data);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 8;
    int rounds = argc > 2 ? atoi(argv[2]) : 6;
    if (argc > 3) scale = atol(argv[3]);
    pthread_t *ids = malloc(sizeof(pthread_t) * (size_t)threads);
    double start = dev_now_ms();
    for (int round = 0; round < rounds; round++) {
        for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, stress, (void *)(uintptr_t)(round * threads + t));
        for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    }
    for (int i = 0; i < TRANSFERS; i++) free_items(atomic_exchange(&transfer[i], NULL));
    free(ids);
    dev_report("bursts", start, 0);
    return 0;
}
