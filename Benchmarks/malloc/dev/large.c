// Dev workload: large-block churn (the shape of mimalloc-bench's old malloc-large). 20 live buffers of 5–25 MiB;
// each step frees one at random and allocates a new one of a random size, written in full. One step in eight grows
// the new buffer with realloc by up to half (the new tail written too).  Argument: steps (default 300).
#include "devbench.h"

enum { SLOTS = 20 };

int main(int argc, char **argv) {
    long steps = argc > 1 ? atol(argv[1]) : 300;
    static unsigned char *slots[SLOTS];
    static size_t sizes[SLOTS];
    uint64_t state = 42;
    unsigned long long checksum = 0;
    double start = dev_now_ms();
    for (long step = 0; step < steps; step++) {
        uint64_t r = dev_next(&state);
        unsigned i = (unsigned)(r % SLOTS);
        if (slots[i]) {
            checksum += slots[i][0] + slots[i][sizes[i] - 1];
            free(slots[i]);
        }
        size_t size = ((size_t)5 << 20) + (size_t)((r >> 20) % ((size_t)20 << 20));
        unsigned char *p = malloc(size);
        memset(p, (int)step, size);
        if ((r >> 8) % 8 == 0) {
            size_t grown = size + (size_t)((r >> 40) % (size / 2 + 1));
            p = realloc(p, grown);
            memset(p + size, (int)step + 1, grown - size);
            size = grown;
        }
        slots[i] = p;
        sizes[i] = size;
    }
    for (int i = 0; i < SLOTS; i++) free(slots[i]);
    dev_report("large", start, checksum);
    return 0;
}
