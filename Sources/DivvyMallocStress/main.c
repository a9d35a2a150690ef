// divvy-malloc-stress: a multi-threaded workout of the malloc family, meant to run under
// LD_PRELOAD=libDivvyMalloc.so and to print exactly what it prints without it.
//
// Threads allocate blocks of random sizes and alignments (malloc, calloc, posix_memalign, aligned_alloc, memalign),
// fill them with a pattern derived from a tag, grow and shrink some with realloc chains, and pass half of them to the
// next thread through a locked mailbox, which checks and frees them (cross-thread frees). Every block's contents are
// checked before it is freed or resized; any mismatch is counted and reported. The output depends only on the seed.
//
// Two more modes (an argument selects one):
//   fork         threads churn (with cross-thread frees) while the main thread forks 12 times; each child frees
//                blocks the parent's threads allocated, runs threads of its own that allocate and free heavily,
//                and must exit 0 within 30 s (a lock inherited held, or a corrupted heap, fails it).
//   misuse KIND  one deliberate heap error (double free, invalid free, a write after free, an overflow: see
//                misuse_main), for the hardened-mode tests; prints "survived" if nothing stopped it.
//   thread-exit  generations of short-lived threads allocate blocks, hand some to a long-lived consumer and exit
//                while it still holds (and frees) them; later generations allocate the same sizes again (adopting
//                the pages the exited threads left behind). Under libDivvyMalloc the heap's statistics go to stderr.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>
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
        if (p) {
            for (size_t i = 0; i < b->size; i++) {
                if (((unsigned char *)p)[i] != 0) {
                    fprintf(stderr, "calloc(1, %zu) = %p: byte %zu is not zero\n", b->size, p, i);
                    return -1;
                }
            }
        }
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
    if (p == NULL) {
        fprintf(stderr, "allocation of %zu bytes aligned to %zu failed\n", b->size, b->alignment);
        return -1;
    }
    if (malloc_usable_size(p) < b->size) {
        fprintf(stderr, "malloc_usable_size(%p) = %zu < %zu\n", p, malloc_usable_size(p), b->size);
        return -1;
    }
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

static int stress_main(void) {
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

// MARK: fork

static atomic_int churn_stop;
// One block at a time handed from the churning threads to the main thread (allocated on their heaps).
static _Atomic(block_t *) handoff;

static void *churn(void *argument) {
    int id = (int)(intptr_t)argument;
    uint64_t state = 0xD1B54A32D192ED03ULL * (uint64_t)(id + 1);
    block_t live[64];
    int count = 0;
    unsigned long long errors = 0, checksum = 0;
    while (!atomic_load_explicit(&churn_stop, memory_order_relaxed)) {
        uint64_t roll = next_random(&state) % 100;
        if (count > 0 && (count == 64 || roll < 45)) {
            int index = (int)(next_random(&state) % (uint64_t)count);
            block_t b = live[index];
            live[index] = live[--count];
            errors += check(&b, b.size, &checksum);
            if (roll < 5) {
                block_t *boxed = malloc(sizeof *boxed);
                if (boxed == NULL) { errors++; free(b.pointer); continue; }
                *boxed = b;
                boxed = atomic_exchange(&handoff, boxed);
                if (boxed != NULL) {  // the main thread did not take the previous one: free it here
                    errors += check(boxed, boxed->size, &checksum);
                    free(boxed->pointer);
                    free(boxed);
                }
            } else {
                free(b.pointer);
            }
        } else if (count < 64) {
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
    pthread_mutex_unlock(&totals_lock);
    return NULL;
}

typedef struct {
    block_t *blocks;
    int from, to;
    unsigned long long errors;
} child_share_t;

static void *child_worker(void *argument) {
    child_share_t *share = argument;
    unsigned long long checksum = 0;
    // Frees (remote frees) of blocks the child's main thread allocated, then a private churn.
    for (int i = share->from; i < share->to; i++) {
        share->errors += check(&share->blocks[i], share->blocks[i].size, &checksum);
        free(share->blocks[i].pointer);
    }
    uint64_t state = 0x2545F4914F6CDD1DULL + (uint64_t)share->from;
    block_t live[128];
    int count = 0;
    for (int round = 0; round < 5000; round++) {
        uint64_t roll = next_random(&state) % 100;
        if (count > 0 && (count == 128 || roll < 45)) {
            int index = (int)(next_random(&state) % (uint64_t)count);
            share->errors += check(&live[index], live[index].size, &checksum);
            free(live[index].pointer);
            live[index] = live[--count];
        } else if (count > 0 && roll >= 90) {
            block_t *b = &live[(int)(next_random(&state) % (uint64_t)count)];
            size_t size = random_size(&state) + 1;
            unsigned char *moved = realloc(b->pointer, size);
            if (moved == NULL) { share->errors++; continue; }
            b->pointer = moved;
            b->alignment = 16;
            share->errors += check(b, b->size < size ? b->size : size, &checksum);
            size_t old = b->size;
            b->size = size;
            if (size > old) fill(b, old);
        } else if (allocate(&live[count], &state) != 0) {
            share->errors++;
        } else {
            count++;
        }
    }
    for (int i = 0; i < count; i++) {
        share->errors += check(&live[i], live[i].size, &checksum);
        free(live[i].pointer);
    }
    return NULL;
}

// The child of a fork: only the forking thread exists. It frees what the parent's threads allocated, then
// allocates, hands blocks to two new threads and churns.
static int fork_child(block_t *inherited, int inherited_count) {
    alarm(30);
    unsigned long long errors = 0, checksum = 0;
    for (int i = 0; i < inherited_count; i++) {
        errors += check(&inherited[i], inherited[i].size, &checksum);
        free(inherited[i].pointer);
    }
    enum { SHARED = 2000 };
    block_t *blocks = malloc(SHARED * sizeof *blocks);
    if (blocks == NULL) return 1;
    uint64_t state = 42;
    for (int i = 0; i < SHARED; i++) {
        if (allocate(&blocks[i], &state) != 0) return 1;
    }
    child_share_t shares[2] = {{blocks, 0, SHARED / 2, 0}, {blocks, SHARED / 2, SHARED, 0}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        if (pthread_create(&threads[i], NULL, child_worker, &shares[i]) != 0) return 1;
    }
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    free(blocks);
    return errors + shares[0].errors + shares[1].errors == 0 ? 0 : 1;
}

static int fork_main(void) {
    enum { FORKS = 12, KEPT = 256 };
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, churn, (void *)(intptr_t)i);
    block_t kept[KEPT];
    int kept_count = 0;
    int failures = 0;
    unsigned long long checksum = 0;
    for (int f = 0; f < FORKS; f++) {
        // Collect some blocks the churning threads allocated, so the child frees blocks of threads it lacks.
        for (int spin = 0; spin < 100000 && kept_count < KEPT; spin++) {
            block_t *boxed = atomic_exchange(&handoff, NULL);
            if (boxed == NULL) continue;
            kept[kept_count++] = *boxed;
            free(boxed);
            if (kept_count % 8 == 0) break;
        }
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) { failures++; continue; }
        if (pid == 0) _exit(fork_child(kept, kept_count));
        int status = 0;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) failures++;
    }
    atomic_store(&churn_stop, 1);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    block_t *last = atomic_exchange(&handoff, NULL);
    if (last != NULL) { kept[kept_count++ % KEPT] = *last; free(last); }
    for (int i = 0; i < kept_count && i < KEPT; i++) {
        errors_total += check(&kept[i], kept[i].size, &checksum);
        free(kept[i].pointer);
    }
    printf("forks %d failed children %d errors %llu\n", FORKS, failures, errors_total);
    return failures == 0 && errors_total == 0 ? 0 : 1;
}

// MARK: thread-exit

enum { QUEUE = 4096 };
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    block_t items[QUEUE];
    int head, count, producers_left;
} queue_t;

static queue_t exit_queue = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {{0}}, 0, 0, 0};

static void *short_lived(void *argument) {
    uint64_t state = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(intptr_t)argument;
    unsigned long long errors = 0, checksum = 0;
    block_t own[200];
    for (int i = 0; i < 600; i++) {
        block_t b;
        if (allocate(&b, &state) != 0) { errors++; continue; }
        if (i % 3 == 0) {
            // Handed to the consumer, which frees it while (or after) this thread exits.
            pthread_mutex_lock(&exit_queue.lock);
            if (exit_queue.count < QUEUE) {
                exit_queue.items[(exit_queue.head + exit_queue.count++) % QUEUE] = b;
                b.pointer = NULL;
                pthread_cond_signal(&exit_queue.ready);
            }
            pthread_mutex_unlock(&exit_queue.lock);
            if (b.pointer != NULL) free(b.pointer);
        } else if (i % 3 == 1) {
            own[i / 3] = b;
        } else {
            errors += check(&b, b.size, &checksum);
            free(b.pointer);
        }
    }
    // Free every other kept block; the rest stay allocated in pages this thread abandons when it exits, and are
    // freed by the consumer later.
    for (int i = 0; i < 200; i++) {
        if (i % 2 == 0) {
            errors += check(&own[i], own[i].size, &checksum);
            free(own[i].pointer);
        } else {
            pthread_mutex_lock(&exit_queue.lock);
            if (exit_queue.count < QUEUE) {
                exit_queue.items[(exit_queue.head + exit_queue.count++) % QUEUE] = own[i];
                own[i].pointer = NULL;
                pthread_cond_signal(&exit_queue.ready);
            }
            pthread_mutex_unlock(&exit_queue.lock);
            if (own[i].pointer != NULL) free(own[i].pointer);
        }
    }
    pthread_mutex_lock(&exit_queue.lock);
    exit_queue.producers_left--;
    pthread_cond_signal(&exit_queue.ready);
    pthread_mutex_unlock(&exit_queue.lock);
    pthread_mutex_lock(&totals_lock);
    errors_total += errors;
    pthread_mutex_unlock(&totals_lock);
    return NULL;
}

static void *consumer(void *argument) {
    (void)argument;
    unsigned long long errors = 0, checksum = 0, freed = 0;
    pthread_mutex_lock(&exit_queue.lock);
    for (;;) {
        while (exit_queue.count == 0 && exit_queue.producers_left > 0) {
            pthread_cond_wait(&exit_queue.ready, &exit_queue.lock);
        }
        if (exit_queue.count == 0) break;
        block_t b = exit_queue.items[exit_queue.head];
        exit_queue.head = (exit_queue.head + 1) % QUEUE;
        exit_queue.count--;
        pthread_mutex_unlock(&exit_queue.lock);
        errors += check(&b, b.size, &checksum);
        free(b.pointer);
        freed++;
        pthread_mutex_lock(&exit_queue.lock);
    }
    pthread_mutex_unlock(&exit_queue.lock);
    pthread_mutex_lock(&totals_lock);
    errors_total += errors;
    checksum_total += freed;
    pthread_mutex_unlock(&totals_lock);
    return NULL;
}

static int thread_exit_main(void) {
    enum { GENERATIONS = 10, PER_GENERATION = 4 };
    exit_queue.producers_left = GENERATIONS * PER_GENERATION;
    pthread_t eater;
    pthread_create(&eater, NULL, consumer, NULL);
    for (int g = 0; g < GENERATIONS; g++) {
        pthread_t threads[PER_GENERATION];
        for (int i = 0; i < PER_GENERATION; i++) {
            pthread_create(&threads[i], NULL, short_lived, (void *)(intptr_t)(g * PER_GENERATION + i));
        }
        for (int i = 0; i < PER_GENERATION; i++) pthread_join(threads[i], NULL);
    }
    pthread_join(eater, NULL);
    printf("thread exits %d handed over %llu errors %llu\n", GENERATIONS * PER_GENERATION, checksum_total,
           errors_total);
    long (*stat)(int) = (long (*)(int))dlsym(RTLD_DEFAULT, "divvy_malloc_stat");
    if (stat != NULL) {
        fprintf(stderr, "divvy: abandoned %ld adopted %ld segments %ld heaps %ld exits %ld\n", stat(0), stat(1),
                stat(2), stat(3), stat(4));
    }
    return errors_total == 0 ? 0 : 1;
}

// MARK: misuse: one deliberate heap error, for the hardened-mode tests

// Progress on stdout with write(2): an abort must not lose it in a stdio buffer.
static void say(const char *text) {
    ssize_t ignored = write(STDOUT_FILENO, text, strlen(text));
    (void)ignored;
}

static void *free_in_thread(void *pointer) {
    free(pointer);
    return NULL;
}

// Each kind commits one error, then says "survived" and exits 0 if nothing stopped it. Under
// DIVVY_MALLOC_HARDENED=1 (or DIVVY_MALLOC_GUARD=1 for guard-overflow) libDivvyMalloc must stop it instead.
static int misuse_main(const char *kind) {
    // Volatile: the compiler must not reason about (or drop) the deliberate errors below.
    unsigned char *volatile a = malloc(64);
    unsigned char *volatile b = malloc(64);
    a[0] = b[0] = 1;
    say("ready\n");
    if (strcmp(kind, "double-free") == 0) {
        free(a);
        free(a);
    } else if (strcmp(kind, "double-free-remote") == 0) {
        // Another thread frees it (onto the page's remote-free stack), then its owner frees it again.
        pthread_t thread;
        pthread_create(&thread, NULL, free_in_thread, a);
        pthread_join(thread, NULL);
        free(a);
    } else if (strcmp(kind, "double-free-large") == 0) {
        unsigned char *volatile large = malloc(100000);
        free(large);
        free(large);
    } else if (strcmp(kind, "double-free-huge") == 0) {
        unsigned char *volatile huge = malloc(8 << 20);
        free(huge);
        free(huge);
    } else if (strcmp(kind, "realloc-freed") == 0) {
        free(a);
        a = realloc(a, 100);
    } else if (strcmp(kind, "interior") == 0) {
        free(a + 16);
    } else if (strcmp(kind, "into-free-block") == 0) {
        free(a);
        free(a + 32);
    } else if (strcmp(kind, "never-allocated") == 0) {
        // A 64-byte-block boundary well past the blocks this page has handed out.
        free(a + 64 * 300);
    } else if (strcmp(kind, "metadata") == 0) {
        // Inside the heap's memory, but in a segment's header, not in any block.
        free((void *)(((uintptr_t)a & ~(((uintptr_t)4 << 20) - 1)) + 256));
    } else if (strcmp(kind, "corrupt-link") == 0) {
        // A write after free into a block on a free list, then allocations until that block is popped.
        unsigned char *blocks[8];
        for (int i = 0; i < 8; i++) blocks[i] = malloc(64);
        free(blocks[3]);
        *(volatile uintptr_t *)blocks[3] = 0x1000;
        for (int i = 0; i < 100000; i++) {
            void *p = malloc(64);
            if (p == (void *)0x1000) {
                say("wild pointer handed out\n");
                break;
            }
        }
    } else if (strcmp(kind, "guard-overflow") == 0) {
        unsigned char *volatile large = malloc(40000);
        size_t usable = malloc_usable_size(large);
        large[usable - 1] = 1;
        say("writing past the usable size\n");
        large[usable] = 1;
        free(large);
    } else if (strcmp(kind, "probe-links") == 0) {
        // How a free block's link is stored: the address of the next free block (plain) or not (encoded).
        free(a);
        free(b);
        say(*(void *volatile *)b == (void *)a ? "links plain\n" : "links encoded\n");
    } else {
        fprintf(stderr, "unknown misuse %s\n", kind);
        return 2;
    }
    say("survived\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "misuse") == 0) return misuse_main(argv[2]);
    if (argc > 1 && strcmp(argv[1], "fork") == 0) return fork_main();
    if (argc > 1 && strcmp(argv[1], "thread-exit") == 0) return thread_exit_main();
    return stress_main();
}
