// Small-object program: strings. Models text processing: a log analyser, a template engine, a compiler's lexer and
// symbol table. One thread generates a stream of words (a skewed vocabulary: a few words are very common, most are
// rare; 3–32 characters), copies each into a string of its own, counts it in a hash table whose entries own their
// key (a repeated word's copy is freed at once), builds short-lived strings from it (a joined pair of words, a
// formatted line) that are hashed and dropped, and empties the table now and then, as a per-file or per-request
// table would be.
// Stresses: malloc and free of 8–64 B blocks at a high rate with short, mixed lifetimes, strdup/asprintf-style
// exact sizes (every size, not a few classes), and a table of many small live blocks freed all at once.
#include "bench.h"

typedef struct entry {
    struct entry *next;
    char *key;
    uint64_t hash;
    long count;
} entry_t;

enum { BUCKETS = 1 << 14, VOCABULARY = 1 << 17, CLEAR_EVERY = 150000 };

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xCBF29CE484222325ULL;  // FNV-1a
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001B3ULL;
    return h;
}

// The word with a given id: its letters and length come from the id alone, so a word repeats exactly.
static size_t make_word(uint64_t id, char *out) {
    uint64_t h = id * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    size_t length = 3 + (size_t)(h % 30);
    for (size_t i = 0; i < length; i++) {
        h ^= h >> 29;
        h *= 0xBF58476D1CE4E5B9ULL;
        out[i] = (char)('a' + (h >> 59) % 26);
    }
    out[length] = '\0';
    return length;
}

static unsigned long long clear(entry_t **table) {
    unsigned long long sum = 0;
    for (int b = 0; b < BUCKETS; b++) {
        entry_t *e = table[b];
        while (e != NULL) {
            entry_t *next = e->next;
            sum += (unsigned long long)e->count * (unsigned char)e->key[0];
            free(e->key);
            free(e);
            e = next;
        }
        table[b] = NULL;
    }
    return sum;
}

int main(int argc, char **argv) {
    const long WORDS = bench_count(argc, argv, 2000000);  // argument: words
    static entry_t *table[BUCKETS];
    uint64_t state = 0x5791ULL;
    unsigned long long checksum = 0;
    char word[40], previous[40] = "start";
    size_t previous_length = 5;
    double start = bench_now_ms();
    for (long w = 0; w < WORDS; w++) {
        uint64_t r = bench_next(&state);
        // Skewed: the id's range is chosen first, so small ids (common words) come up far more often.
        uint64_t id = (r >> 20) % (1u + (uint32_t)(VOCABULARY >> (r % 16)));
        size_t length = make_word(id, word);
        char *copy = malloc(length + 1);
        memcpy(copy, word, length + 1);
        uint64_t h = hash_bytes(copy, length);
        entry_t **bucket = &table[h % BUCKETS];
        entry_t *e = *bucket;
        while (e != NULL && !(e->hash == h && strcmp(e->key, copy) == 0)) e = e->next;
        if (e != NULL) {
            e->count++;
            free(copy);
        } else {
            e = malloc(sizeof *e);
            e->key = copy;
            e->hash = h;
            e->count = 1;
            e->next = *bucket;
            *bucket = e;
        }
        // A joined pair, as a bigram counter or a path builder makes, hashed and dropped.
        char *pair = malloc(previous_length + length + 2);
        memcpy(pair, previous, previous_length);
        pair[previous_length] = ' ';
        memcpy(pair + previous_length + 1, word, length + 1);
        checksum += hash_bytes(pair, previous_length + length + 1) & 0xFF;
        // Every fourth word, a formatted line (asprintf-like: sized, then filled), read and dropped.
        if (r % 4 == 0) {
            int needed = snprintf(NULL, 0, "%s=%ld;", word, e->count);
            char *line = malloc((size_t)needed + 1);
            snprintf(line, (size_t)needed + 1, "%s=%ld;", word, e->count);
            checksum += (unsigned char)line[needed - 1] + (unsigned long long)needed;
            free(line);
        }
        free(pair);
        memcpy(previous, word, length + 1);
        previous_length = length;
        if ((w + 1) % CLEAR_EVERY == 0) checksum += clear(table);
    }
    checksum += clear(table);
    bench_report("strings", start, checksum);
    return 0;
}
