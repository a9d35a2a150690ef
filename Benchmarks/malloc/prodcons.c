// Multi-thread producer/consumer with cross-thread frees: PAIRS pairs of threads (1 by default, so the two threads
// fit the two CPUs of the machine docs/benchmarks.md's table comes from). The producer allocates messages (16–1024 bytes),
// writes them and passes them through a single-producer single-consumer ring; the consumer reads and frees them.
// Every free is a free of another thread's block.
#include "bench.h"
#include <pthread.h>
#include <stdatomic.h>

enum { PAIRS = 1, RING = 1024 };
static unsigned long MESSAGES = 8000000;  // argument: messages per pair

typedef struct {
    _Alignas(64) _Atomic unsigned long head;  // written by the producer
    _Alignas(64) _Atomic unsigned long tail;  // written by the consumer
    unsigned char *items[RING];
    unsigned long long checksum;
    int id;
} ring_t;

static ring_t rings[PAIRS];

static void *producer(void *argument) {
    ring_t *ring = argument;
    uint64_t state = 0x1234567ULL + (uint64_t)ring->id;
    for (unsigned long i = 0; i < MESSAGES; i++) {
        uint64_t r = bench_next(&state);
        size_t size = 16 + (r % 8 == 0 ? r >> 40 & 1023 : r >> 40 & 127);
        unsigned char *p = malloc(size);
        p[0] = (unsigned char)i;
        p[size - 1] = (unsigned char)size;
        unsigned long head = atomic_load_explicit(&ring->head, memory_order_relaxed);
        while (head - atomic_load_explicit(&ring->tail, memory_order_acquire) == RING) sched_yield();
        ring->items[head % RING] = p;
        atomic_store_explicit(&ring->head, head + 1, memory_order_release);
    }
    return NULL;
}

static void *consumer(void *argument) {
    ring_t *ring = argument;
    unsigned long long checksum = 0;
    for (unsigned long i = 0; i < MESSAGES; i++) {
        unsigned long tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
        while (atomic_load_explicit(&ring->head, memory_order_acquire) == tail) sched_yield();
        unsigned char *p = ring->items[tail % RING];
        atomic_store_explicit(&ring->tail, tail + 1, memory_order_release);
        checksum += p[0];
        free(p);
    }
    ring->checksum = checksum;
    return NULL;
}

int main(int argc, char **argv) {
    MESSAGES = (unsigned long)bench_count(argc, argv, (long)MESSAGES);
    pthread_t threads[2 * PAIRS];
    double start = bench_now_ms();
    for (int i = 0; i < PAIRS; i++) {
        rings[i].id = i;
        pthread_create(&threads[2 * i], NULL, producer, &rings[i]);
        pthread_create(&threads[2 * i + 1], NULL, consumer, &rings[i]);
    }
    unsigned long long checksum = 0;
    for (int i = 0; i < 2 * PAIRS; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < PAIRS; i++) checksum += rings[i].checksum;
    bench_report("prodcons", start, checksum);
    return 0;
}
