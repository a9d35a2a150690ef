// libDivvyMalloc's switches (read once, before any heap exists) and the reports of its hardened mode.
//
// DIVVY_MALLOC_HARDENED=1 draws a random key (getrandom(2)) that every free-list link is XORed with, and makes the
// exported functions call the checked entry points (Sources/DivvyMalloc/MallocHardening.swift), which check every
// pointer given to free and realloc. DIVVY_MALLOC_GUARD=1 puts a PROT_NONE page after each block over 16 KiB.
// DIVVY_MALLOC_STATS=1 prints malloc_stats() at exit (statistics.c). See docs/malloc.md.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "CDivvyMalloc.h"
#include "text.h"

#define DIVVY_INTERNAL __attribute__((visibility("hidden")))

DIVVY_INTERNAL divvy_malloc_options_t divvy_malloc_options;

// "1" (or any value but "0" and the empty string) turns a switch on.
static int divvy_switch(const char *name) {
    const char *value = getenv(name);  // getenv allocates nothing
    return value != NULL && value[0] != '\0' && !(value[0] == '0' && value[1] == '\0');
}

// A non-zero key from getrandom(2); without entropy yet (GRND_NONBLOCK fails early in boot) a mix of the clock and
// addresses that ASLR randomises, which still makes a stray write decode to a wild address.
static unsigned long long divvy_random_key(void) {
    unsigned long long key = 0;
    if (getrandom(&key, sizeof key, GRND_NONBLOCK) != (ssize_t)sizeof key) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        key = (unsigned long long)now.tv_nsec * 0x9E3779B97F4A7C15ULL ^ (unsigned long long)(uintptr_t)&key
            ^ ((unsigned long long)(uintptr_t)&divvy_malloc_options << 17) ^ (unsigned long long)getpid();
    }
    // Bit 0 set: a link of 0 never decodes to a 16-byte-aligned block, nor does a block left as zeroes.
    return key | 1;
}

// Called once by the library's constructor (shim.c), before the heap can be created.
DIVVY_INTERNAL void divvy_malloc_read_switches(void) {
    divvy_malloc_options.hardened = divvy_switch("DIVVY_MALLOC_HARDENED");
    divvy_malloc_options.guard_pages = divvy_switch("DIVVY_MALLOC_GUARD");
    divvy_malloc_options.statistics_at_exit = divvy_switch("DIVVY_MALLOC_STATS");
    divvy_malloc_options.checked = divvy_malloc_options.hardened || divvy_malloc_options.guard_pages;
    if (divvy_malloc_options.hardened) divvy_malloc_options.link_key = divvy_random_key();
    // A copy of stderr for the statistics at exit, which may come after the program has closed fd 2.
    if (divvy_malloc_options.statistics_at_exit) {
        int copy = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
        divvy_malloc_options.statistics_fd = copy >= 0 ? copy : STDERR_FILENO;
    }
}

static _Noreturn void divvy_abort_with(divvy_text_t *text) {
    divvy_text_add(text, "\n");
    divvy_text_write(text, STDERR_FILENO);
    abort();
}

// "64-byte block, size class 4", or "12582912-byte huge block" (size_class < 0).
static void divvy_add_block(divvy_text_t *text, long block_size, long size_class) {
    divvy_text_add_signed(text, block_size);
    if (size_class < 0) {
        divvy_text_add(text, "-byte huge block");
        return;
    }
    divvy_text_add(text, "-byte block, size class ");
    divvy_text_add_signed(text, size_class);
}

DIVVY_INTERNAL _Noreturn void divvy_malloc_report_misuse(
    int problem, int in_realloc, const void *pointer, long block_size, long size_class, long detail) {
    divvy_text_t text = {.length = 0};
    divvy_text_add(&text, "divvy-malloc: ");
    if (problem == DIVVY_MALLOC_DOUBLE_FREE) {
        divvy_text_add(&text, in_realloc ? "realloc of freed block " : "double free of ");
    } else {
        divvy_text_add(&text, in_realloc ? "invalid realloc of " : "invalid free of ");
    }
    divvy_text_add_hex(&text, (uintptr_t)pointer);
    switch (problem) {
    case DIVVY_MALLOC_DOUBLE_FREE:
        divvy_text_add(&text, " (");
        break;
    case DIVVY_MALLOC_NOT_OURS:
        divvy_text_add(&text, " (not a block of this heap)");
        divvy_abort_with(&text);
    case DIVVY_MALLOC_INTERIOR:
        divvy_text_add(&text, " (interior pointer: ");
        divvy_text_add_signed(&text, detail);
        divvy_text_add(&text, " bytes into a ");
        break;
    case DIVVY_MALLOC_NEVER_ALLOCATED:
        divvy_text_add(&text, " (never handed out: a ");
        break;
    default:
        divvy_text_add(&text, " (in a page with no live block: a ");
        break;
    }
    divvy_add_block(&text, block_size, size_class);
    divvy_text_add(&text, ")");
    divvy_abort_with(&text);
}

DIVVY_INTERNAL _Noreturn void divvy_malloc_report_corrupted_link(
    const void *block, unsigned long long decoded, long block_size, long size_class) {
    divvy_text_t text = {.length = 0};
    divvy_text_add(&text, "divvy-malloc: corrupted free list: the free block ");
    divvy_text_add_hex(&text, (uintptr_t)block);
    divvy_text_add(&text, " (");
    divvy_add_block(&text, block_size, size_class);
    divvy_text_add(&text, ") links to ");
    divvy_text_add_hex(&text, decoded);
    divvy_text_add(&text, ", outside its page (a write after free?)");
    divvy_abort_with(&text);
}
