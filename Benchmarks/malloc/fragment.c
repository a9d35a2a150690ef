// Fragmentation-heavy long run. Models a long-lived process whose data change shape over its life: an in-memory
// database or cache whose record sizes drift, a document editor over a long session, a language server reparsing.
// Rounds of allocating about 24 MiB of blocks from a size range that moves from round to round (16–128 B, 64–512 B,
// 256 B–2 KiB, 1–8 KiB, 4–32 KiB, then back to small), written in full; then every other block of the round is freed,
// leaving holes between survivors. The survivors live through the next round (whose sizes mostly do not fit the
// holes) and are then freed too, except one in sixteen, which lives to the end of the program.
// Stresses: reuse of freed space across size classes, giving back pages that are partly empty, and the peak RSS of a
// long run: here peak RSS is the key figure (the live data peak at about 24 MiB + 12 MiB + the survivors).
#include "bench.h"

enum { ROUND_BYTES = 24 << 20 };

typedef struct {
    unsigned char **blocks;
    size_t *sizes;
    long count;
} generation_t;

static const size_t ranges[][2] = {
    {16, 128}, {64, 512}, {256, 2048}, {1024, 8192}, {4096, 32768}, {24, 96}, {512, 4096}, {48, 1024},
};
enum { RANGES = sizeof ranges / sizeof ranges[0] };

int main(int argc, char **argv) {
    const long ROUNDS = bench_count(argc, argv, 10);  // argument: rounds
    uint64_t state = 0xF4A6ULL;
    unsigned long long checksum = 0;
    generation_t previous = {0}, survivors = {0};
    survivors.blocks = malloc(sizeof(unsigned char *) * (size_t)(ROUNDS * (ROUND_BYTES / 16 / 32 + 1)));
    survivors.sizes = malloc(sizeof(size_t) * (size_t)(ROUNDS * (ROUND_BYTES / 16 / 32 + 1)));
    double start = bench_now_ms();
    for (long round = 0; round < ROUNDS; round++) {
        size_t lo = ranges[round % RANGES][0], hi = ranges[round % RANGES][1];
        long capacity = (long)(ROUND_BYTES / lo) + 1;
        generation_t current = {malloc(sizeof(unsigned char *) * (size_t)capacity),
                                malloc(sizeof(size_t) * (size_t)capacity), 0};
        size_t bytes = 0;
        while (bytes < ROUND_BYTES) {
            uint64_t r = bench_next(&state);
            size_t size = lo + (size_t)(r % (hi - lo + 1));
            unsigned char *p = malloc(size);
            memset(p, (int)(r >> 56), size);
            current.blocks[current.count] = p;
            current.sizes[current.count++] = size;
            bytes += size;
        }
        // Holes: every other block of this round goes now.
        for (long i = 0; i < current.count; i += 2) {
            checksum += current.blocks[i][current.sizes[i] - 1];
            free(current.blocks[i]);
        }
        // The previous round's survivors go now, but one in sixteen of them stays to the end.
        for (long i = 1; i < previous.count; i += 2) {
            if (i % 32 == 1) {
                survivors.blocks[survivors.count] = previous.blocks[i];
                survivors.sizes[survivors.count++] = previous.sizes[i];
                continue;
            }
            checksum += previous.blocks[i][previous.sizes[i] / 2];
            free(previous.blocks[i]);
        }
        free(previous.blocks);
        free(previous.sizes);
        previous = current;
    }
    for (long i = 1; i < previous.count; i += 2) {
        checksum += previous.blocks[i][0];
        free(previous.blocks[i]);
    }
    free(previous.blocks);
    free(previous.sizes);
    for (long i = 0; i < survivors.count; i++) {
        checksum += survivors.blocks[i][survivors.sizes[i] - 1];
        free(survivors.blocks[i]);
    }
    free(survivors.blocks);
    free(survivors.sizes);
    bench_report("fragment", start, checksum);
    return 0;
}
