// Large-block churn. Models a program whose working data are multi-megabyte buffers that come and go: an image or
// video pipeline's frames, a compressor's windows, a column store's batches. Twelve live buffers of 5–25 MiB; each
// step replaces one at random with a new buffer that is written in full, as a decoder fills a frame. One step in
// four resizes the new buffer with realloc after writing it (grown by up to half and the new tail written, as when
// the input was longer than guessed, or shrunk to what was used).
// Stresses: how huge blocks are obtained and given back (mmap/munmap per block, or keeping freed ones to reuse),
// the page faults of touching fresh memory, realloc of huge blocks (mremap, growing in place, or copying), and how
// much freed memory stays resident.
#include "bench.h"

enum { SLOTS = 12 };

int main(int argc, char **argv) {
    const long STEPS = bench_count(argc, argv, 240);  // argument: buffers replaced
    static unsigned char *slots[SLOTS];
    static size_t sizes[SLOTS];
    uint64_t state = 0x1A26E5ULL;
    unsigned long long checksum = 0;
    double start = bench_now_ms();
    for (long step = 0; step < STEPS; step++) {
        uint64_t r = bench_next(&state);
        unsigned index = (unsigned)(r % SLOTS);
        if (slots[index] != NULL) {
            // Read the buffer being dropped at a few places: its contents must have survived.
            size_t size = sizes[index];
            checksum += slots[index][0] + slots[index][size / 3] + slots[index][size - 1];
            free(slots[index]);
        }
        size_t size = ((size_t)5 << 20) + (size_t)((r >> 16) % ((size_t)20 << 20));
        unsigned char *p = malloc(size);
        memset(p, (int)(step & 0xFF), size);
        if ((r >> 8) % 4 == 0) {
            uint64_t s = bench_next(&state);
            size_t change = (size_t)((s >> 8) % (size / 2));
            size_t resized = s % 2 == 0 ? size + change : size / 2 + change;
            p = realloc(p, resized);
            if (resized > size) memset(p + size, (int)((step + 1) & 0xFF), resized - size);
            size = resized;
        }
        slots[index] = p;
        sizes[index] = size;
    }
    for (int i = 0; i < SLOTS; i++) {
        if (slots[i] != NULL) checksum += slots[i][sizes[i] - 1];
        free(slots[i]);
    }
    bench_report("large", start, checksum);
    return 0;
}
