// Single-thread small-object churn: a working set of 20 000 live objects (8–512 bytes, most under 128), each step
// frees a random one and allocates a replacement. The classic malloc micro-workload (object graphs, strings).
#include "bench.h"

int main(int argc, char **argv) {
    enum { LIVE = 20000 };
    const long STEPS = bench_count(argc, argv, 30000000);  // argument: free+malloc steps
    static unsigned char *slots[LIVE];
    uint64_t state = 0x9E3779B97F4A7C15ULL;
    unsigned long long checksum = 0;
    for (int i = 0; i < LIVE; i++) {
        slots[i] = malloc(16);
        slots[i][0] = 0;  // read when the slot is replaced: the checksum must not depend on what malloc left there
    }
    double start = bench_now_ms();
    for (long step = 0; step < STEPS; step++) {
        uint64_t r = bench_next(&state);
        unsigned index = (unsigned)(r % LIVE);
        size_t size = (r >> 32) % 8 == 0 ? 8 + (r >> 40) % 505 : 8 + (r >> 40) % 121;
        checksum += slots[index][0];
        free(slots[index]);
        unsigned char *p = malloc(size);
        p[0] = (unsigned char)step;
        slots[index] = p;
    }
    for (int i = 0; i < LIVE; i++) free(slots[i]);
    bench_report("churn", start, checksum);
    return 0;
}
