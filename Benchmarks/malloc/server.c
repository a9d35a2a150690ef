// A server-like mix of sizes and lifetimes: worker threads handle "requests". Each request allocates a burst of
// short-lived objects (headers, strings, nodes: 16 B–2 KiB), a body buffer (4 KiB–256 KiB, now and then 1–4 MiB)
// that is grown with realloc, and a few long-lived entries it puts in a shared cache (LRU-ish: random eviction),
// so entries are freed by whichever thread evicts them, long after and far from where they were allocated.
#include "bench.h"
#include <pthread.h>

enum { THREADS = 2, CACHE = 16384, BURST = 64 };
static int REQUESTS = 60000;  // argument: requests per thread

static unsigned char *cache[CACHE];
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *argument) {
    uint64_t state = 0xABCDEF12345ULL + (uint64_t)(uintptr_t)argument;
    unsigned long long checksum = 0;
    unsigned char *burst[BURST];
    for (int request = 0; request < REQUESTS; request++) {
        uint64_t r = bench_next(&state);
        int objects = 16 + (int)(r % (BURST - 16));
        for (int i = 0; i < objects; i++) {
            uint64_t s = bench_next(&state);
            size_t size = s % 16 == 0 ? 256 + (s >> 20) % 1793 : 16 + (s >> 20) % 113;
            burst[i] = malloc(size);
            memset(burst[i], (int)i, size < 64 ? size : 64);
        }
        size_t body = r % 64 == 0 ? ((size_t)1 << 20) + (r >> 16) % (3u << 20) : 4096 + (r >> 16) % (252u << 10);
        unsigned char *buffer = malloc(body / 4);
        buffer[0] = 1;
        buffer = realloc(buffer, body / 2);
        buffer = realloc(buffer, body);
        for (size_t offset = 0; offset < body; offset += 4096) buffer[offset] = (unsigned char)offset;
        checksum += buffer[0] + buffer[(body / 2) & ~(size_t)4095];  // bytes written above
        free(buffer);
        for (int k = 0; k < 3; k++) {
            uint64_t s = bench_next(&state);
            size_t size = 32 + (s >> 20) % 480;
            unsigned char *entry = malloc(size);
            entry[0] = (unsigned char)s;
            pthread_mutex_lock(&cache_lock);
            unsigned char *old = cache[s % CACHE];
            cache[s % CACHE] = entry;
            pthread_mutex_unlock(&cache_lock);
            if (old != NULL) {
                checksum += old[0];
                free(old);
            }
        }
        for (int i = 0; i < objects; i++) {
            checksum += burst[i][0];
            free(burst[i]);
        }
    }
    return (void *)(uintptr_t)checksum;
}

int main(int argc, char **argv) {
    REQUESTS = (int)bench_count(argc, argv, REQUESTS);
    double start = bench_now_ms();
    unsigned long long checksum = bench_run_threads(THREADS, worker, 0);
    // Entries still cached count too, so the checksum covers every entry once whichever thread evicted it.
    for (int i = 0; i < CACHE; i++) {
        if (cache[i] != NULL) checksum += cache[i][0];
        free(cache[i]);
    }
    bench_report("server", start, checksum);
    return 0;
}
