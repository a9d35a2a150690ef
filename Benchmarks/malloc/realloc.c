// realloc growth: 512 buffers grow by appending small chunks (8–200 bytes at a time), as string builders and
// dynamic arrays do; each is freed and started over when it reaches its target size (mostly up to 64 KiB, one in
// 32 up to 1 MiB).
#include "bench.h"

int main(int argc, char **argv) {
    enum { BUFFERS = 512 };
    const long APPENDS = bench_count(argc, argv, 4000000);  // argument: appends
    static unsigned char *buffers[BUFFERS];
    static size_t sizes[BUFFERS], targets[BUFFERS];
    uint64_t state = 0x5DEECE66DULL;
    unsigned long long checksum = 0;
    for (int i = 0; i < BUFFERS; i++) targets[i] = 1024;
    double start = bench_now_ms();
    for (long step = 0; step < APPENDS; step++) {
        uint64_t r = bench_next(&state);
        unsigned i = (unsigned)(r % BUFFERS);
        size_t chunk = 8 + (r >> 32) % 193;
        if (sizes[i] + chunk > targets[i]) {
            checksum += buffers[i] ? buffers[i][sizes[i] / 2] : 0;
            free(buffers[i]);
            buffers[i] = NULL;
            sizes[i] = 0;
            uint64_t t = bench_next(&state);
            targets[i] = t % 32 == 0 ? 65536 + (t >> 16) % (1u << 20) : 256 + (t >> 16) % 65536;
            continue;
        }
        unsigned char *grown = realloc(buffers[i], sizes[i] + chunk);
        memset(grown + sizes[i], (int)step, chunk);
        buffers[i] = grown;
        sizes[i] += chunk;
    }
    for (int i = 0; i < BUFFERS; i++) free(buffers[i]);
    bench_report("realloc", start, checksum);
    return 0;
}
