// Realistic sizes with cross-thread frees. Models a pool of worker threads that pass work to each other: a message
// broker, an RPC server handing requests from I/O threads to handlers, a pipeline of stages. Four threads each keep
// a working set of 2048 live blocks; every step allocates a block from a size distribution weighted to small sizes
// with a long tail (about 40 % 16–64 B, 25 % up to 256 B, 20 % up to 1 KiB, 10 % up to 4 KiB, 4 % up to 32 KiB,
// 1 % up to 256 KiB), writes it, and either keeps it in its working set (freeing the block it replaces) or sends it
// to another thread in batches of 64 through that thread's queue (mutex and list); a thread reads and frees what
// arrives. The batches themselves are malloc'd and freed by the receiver too.
// Stresses: remote frees of every size at once (small classes and page-sized blocks alike), memory held by blocks
// freed far from their owner until the owner collects them, and the RSS a long-tailed distribution leaves behind.
#include "bench.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

enum { THREADS = 4, WORKING_SET = 2048, BATCH = 64, QUEUE_LIMIT = 32 };

typedef struct batch {
    struct batch *next;
    int count;
    unsigned char *blocks[BATCH];
} batch_t;

typedef struct {
    pthread_mutex_t lock;
    batch_t *head;
    int length;
    _Alignas(64) char pad;
} queue_t;

static queue_t queues[THREADS];
static long STEPS = 700000;  // argument: steps per thread
static _Atomic int senders_done;

static size_t block_size(uint64_t r) {
    unsigned bucket = (unsigned)(r % 100);
    uint64_t s = r >> 8;
    if (bucket < 40) return 16 + (size_t)(s % 49);
    if (bucket < 65) return 64 + (size_t)(s % 193);
    if (bucket < 85) return 256 + (size_t)(s % 769);
    if (bucket < 95) return 1024 + (size_t)(s % 3073);
    if (bucket < 99) return 4096 + (size_t)(s % (28u << 10));
    return 32768 + (size_t)(s % (224u << 10));
}

// Frees every block of a received batch after reading what the sender wrote into it.
static unsigned long long consume(batch_t *list) {
    unsigned long long sum = 0;
    while (list != NULL) {
        batch_t *next = list->next;
        for (int i = 0; i < list->count; i++) {
            sum += list->blocks[i][0];
            free(list->blocks[i]);
        }
        free(list);
        list = next;
    }
    return sum;
}

static unsigned long long drain(int self) {
    pthread_mutex_lock(&queues[self].lock);
    batch_t *list = queues[self].head;
    queues[self].head = NULL;
    queues[self].length = 0;
    pthread_mutex_unlock(&queues[self].lock);
    return consume(list);
}

static unsigned long long send(int self, int to, batch_t *batch) {
    unsigned long long sum = 0;
    for (;;) {
        pthread_mutex_lock(&queues[to].lock);
        if (queues[to].length < QUEUE_LIMIT) {
            batch->next = queues[to].head;
            queues[to].head = batch;
            queues[to].length++;
            pthread_mutex_unlock(&queues[to].lock);
            return sum;
        }
        pthread_mutex_unlock(&queues[to].lock);
        // The receiver is behind: work on our own queue meanwhile (so a cycle of full queues always drains).
        sum += drain(self);
        sched_yield();
    }
}

static void *worker(void *argument) {
    int self = (int)(uintptr_t)argument;
    uint64_t state = 0x4A4D0FFULL + (uint64_t)self * 0x9E3779B97F4A7C15ULL;
    unsigned long long checksum = 0;
    unsigned char **working = calloc(WORKING_SET, sizeof *working);
    batch_t *outgoing[THREADS] = {0};
    for (long step = 0; step < STEPS; step++) {
        uint64_t r = bench_next(&state);
        size_t size = block_size(r);
        unsigned char *p = malloc(size);
        p[0] = (unsigned char)(r >> 56);
        memset(p + 1, 0x5A, (size < 256 ? size : 256) - 1);
        p[size - 1] = 7;
        uint64_t d = r >> 40;
        if (d % 8 < 3) {
            int to = (self + 1 + (int)((d >> 3) % (THREADS - 1))) % THREADS;
            if (outgoing[to] == NULL) {
                outgoing[to] = malloc(sizeof(batch_t));
                outgoing[to]->count = 0;
            }
            outgoing[to]->blocks[outgoing[to]->count++] = p;
            if (outgoing[to]->count == BATCH) {
                checksum += send(self, to, outgoing[to]);
                outgoing[to] = NULL;
            }
        } else {
            unsigned slot = (unsigned)((d >> 8) % WORKING_SET);
            if (working[slot] != NULL) {
                checksum += working[slot][0];
                free(working[slot]);
            }
            working[slot] = p;
        }
        if (step % 256 == 0) checksum += drain(self);
    }
    for (int to = 0; to < THREADS; to++)
        if (outgoing[to] != NULL) checksum += send(self, to, outgoing[to]);
    atomic_fetch_add_explicit(&senders_done, 1, memory_order_acq_rel);
    while (atomic_load_explicit(&senders_done, memory_order_acquire) < THREADS) {
        checksum += drain(self);
        sched_yield();
    }
    checksum += drain(self);
    for (int i = 0; i < WORKING_SET; i++) {
        if (working[i] != NULL) checksum += working[i][0];
        free(working[i]);
    }
    free(working);
    return (void *)(uintptr_t)checksum;
}

int main(int argc, char **argv) {
    STEPS = bench_count(argc, argv, STEPS);
    for (int i = 0; i < THREADS; i++) pthread_mutex_init(&queues[i].lock, NULL);
    double start = bench_now_ms();
    unsigned long long checksum = bench_run_threads(THREADS, worker, 0);
    bench_report("handoff", start, checksum);
    return 0;
}
