// divvy-malloc-stress: a multi-threaded workout of the malloc family, meant to run under
// LD_PRELOAD=libDivvyMalloc.so and to print exactly what it prints without it.
//
// Threads allocate blocks of random sizes and alignments (malloc, calloc, posix_memalign, aligned_alloc, memalign),
// fill them with a pattern derived from a tag, grow and shrink some with realloc chains, and pass half of them to the
// next thread through a locked mailbox, which checks and frees them (cross-thread frees). Every block's contents are
// checked before it is freed or resized; any mismatch is counted and reported. The output depends only on the seed.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define ROUNDS 20000
#define LIVE 256
#define MAILBOX 1024

typedef struct {
    unsigned char *pointer;
    size_t size;
    size_t alignment;
    uint32_t tag;
} block_t;

typedef struct {
    pthread_mutex_t lock;
    block_t items[MAILBOX];
    int count;
} mailbox_t;

static mailbox_t mailboxes[THREADS];
static unsigned long long errors_total;
static unsigned long long checksum_total;
static pthread_mutex_t totals_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t next_random(uint64_t *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return *state >> 17;
}

static void fill(block_t *b, size_t from) {
    for (size_t i = from; i < b->size; i++) b->pointer[i] = (unsigned char)(b->tag + i * 7);
}

// Returns the number of wrong bytes among the first `count` and adds them to a checksum.
static unsigned long long check(const block_t *b, size_t count, unsigned long long *checksum) {
    unsigned long long wrong = 0;
    if (b->alignment && ((uintptr_t)b->pointer % b->alignment) != 0) wrong++;
    for (size_t i = 0; i < count; i++) {
        if (b->pointer[i] != (unsigned char)(b->tag + i * 7)) wrong++;
        *checksum += b->pointer[i];
    }
    return wrong;
}

static size_t random_size(uint64_t *state) {
    uint64_t roll = next_random(state) % 100;
    if (roll < 70) return next_random(state) % 257;
    if (roll < 95) return 257 + next_random(state) % 8000;
    return 8257 + next_random(state) % 200000;
}

static int allocate(block_t *b, uint64_t *state) {
    b->size = random_size(state);
    b->tag = (uint32_t)next_random(state);
    b->alignment = 16;
    void *p = NULL;
    switch (next_random(state) % 5) {
    case 0: p = malloc(b->size); break;
    case 1:
        p = calloc(1, b->size);
        if (p) for (size_t i = 0; i < b->size; i++) if (((unsigned char *)p)[i] != 0) return -1;
        break;
    case 2:
        b->alignment = (size_t)8 << (next_random(state) % 14);  // 8 … 64 KiB
        if (posix_memalign(&p, b->alignment, b->size) != 0) p = NULL;
        break;
    case 3:
        b->alignment = (size_t)1 << (next_random(state) % 13);
        p = aligned_alloc(b->alignment, b->size);
        break;
    default:
        b->alignment = (size_t)1 << (next_random(state) % 17);
        p = memalign(b->alignment, b->size);
        break;
    }
    if (p == NULL) return -1;
    if (malloc_usable_size(p) < b->size) return -1;
    b->pointer = p;
    fill(b, 0);
    return 0;
}

static void *worker(void *argument) {
    int id = (int)(intptr_t)argument;
    uint64_t state = 0x9E3779B97F4A7C15ULL * (uint64_t)(id + 1);
    block_t live[LIVE];
    int count = 0;
    unsigned long long errors = 0, checksum = 0;
    for (int round = 0; round < ROUNDS; round++) {
        uint64_t roll = next_random(&state) % 100;
        if (roll < 10) {
            // Drain our mailbox: blocks other threads allocated, freed here.
            mailbox_t *box = &mailboxes[id];
            pthread_mutex_lock(&box->lock);
            for (int i = 0; i < box->count; i++) {
                errors += check(&box->items[i], box->items[i].size, &checksum);
                free(box->items[i].pointer);
            }
            box->count = 0;
            pthread_mutex_unlock(&box->lock);
        } else if (count > 0 && (count == LIVE || roll < 45)) {
            int index = (int)(next_random(&state) % (uint64_t)count);
            block_t b = live[index];
            live[index] = live[--count];
            errors += check(&b, b.size, &checksum);
            mailbox_t *box = &mailboxes[(id + 1) % THREADS];
            pthread_mutex_lock(&box->lock);
            if (roll % 2 == 0 && box->count < MAILBOX) {
                box->items[box->count++] = b;  // freed by the next thread
                b.pointer = NULL;
            }
            pthread_mutex_unlock(&box->lock);
            free(b.pointer);
        } else if (count > 0 && roll >= 85) {
            // A realloc chain: grow or shrink a few times, contents checked at each step.
            int index = (int)(next_random(&state) % (uint64_t)count);
            block_t *b = &live[index];
            for (int step = 0; step < 3; step++) {
                size_t size = random_size(&state);
                if (size == 0) size = 1;
                unsigned char *moved = realloc(b->pointer, size);
                if (moved == NULL) { errors++; break; }
                b->pointer = moved;
                b->alignment = 16;  // realloc promises only malloc's alignment
                errors += check(b, b->size < size ? b->size : size, &checksum);
                size_t old = b->size;
                b->size = size;
                if (size > old) fill(b, old);
            }
        } else if (count < LIVE) {
            if (allocate(&live[count], &state) != 0) errors++;
            else count++;
        }
    }
    for (int i = 0; i < count; i++) {
        errors += check(&live[i], live[i].size, &checksum);
        free(live[i].pointer);
    }
    pthread_mutex_lock(&totals_lock);
    errors_total += errors;
    checksum_total += checksum;
    pthread_mutex_unlock(&totals_lock);
    return NULL;
}

int main(void) {
    // The C-semantics corner cases, through whatever malloc is installed.
    errno = 0;
    void *zero = malloc(0);
    int corner_ok = zero != NULL;
    free(zero);
    free(NULL);
    errno = 0;
    corner_ok &= calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM;
    void *out = (void *)1;
    corner_ok &= posix_memalign(&out, 24, 8) == EINVAL && out == (void *)1;
    void *page = valloc(10);
    corner_ok &= page != NULL && ((uintptr_t)page % 4096) == 0;
    free(page);

    for (int i = 0; i < THREADS; i++) pthread_mutex_init(&mailboxes[i].lock, NULL);
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    unsigned long long checksum = 0;
    for (int i = 0; i < THREADS; i++) {
        for (int j = 0; j < mailboxes[i].count; j++) {
            errors_total += check(&mailboxes[i].items[j], mailboxes[i].items[j].size, &checksum);
            free(mailboxes[i].items[j].pointer);
        }
    }
    printf("corner cases %s\nerrors %llu\nchecksum %llu\n", corner_ok ? "ok" : "FAILED", errors_total,
           checksum_total + checksum);
    return errors_total == 0 && corner_ok ? 0 : 1;
}
