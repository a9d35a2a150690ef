// libDivvyMalloc's statistics: divvy_malloc_statistics() fills a divvy_malloc_statistics_t (CDivvyMalloc.h) from a
// walk of the heap's pages (Sources/DivvyMalloc/MallocStatistics.swift), and glibc's two reporting calls print it:
// malloc_stats() to stderr, malloc_info() as XML to a stream. DIVVY_MALLOC_STATS=1 runs malloc_stats() at exit.
//
// Nothing is counted on the fast paths: the walk derives blocks and bytes in use from each page's own counters, and
// the only running counters are a thread heap's slow-path events (refills, pages taken and given back).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "CDivvyMalloc.h"
#include "text.h"

#define DIVVY_EXPORT __attribute__((visibility("default")))
#define DIVVY_INTERNAL __attribute__((visibility("hidden")))

// Implemented in Swift (MallocStatistics.swift) and in shim.c.
extern DIVVY_INTERNAL void divvy_malloc_swift_statistics(void *global, divvy_malloc_statistics_t *statistics);
extern DIVVY_INTERNAL void *divvy_malloc_global_state(void);

static void divvy_collect(divvy_malloc_statistics_t *all) {
    memset(all, 0, sizeof *all);
    all->size = sizeof *all;
    // Before the first heap exists there is no global state: the walk then only fills in the block sizes.
    divvy_malloc_lock();
    divvy_malloc_swift_statistics(divvy_malloc_global_state(), all);
    divvy_malloc_unlock();
    all->thread_exits = (size_t)divvy_malloc_stat(4);
    all->hardened = (size_t)divvy_malloc_options.hardened;
    all->guard_pages = (size_t)divvy_malloc_options.guard_pages;
    all->bootstrap_bytes = divvy_malloc_bootstrap_bytes();
}

DIVVY_EXPORT int divvy_malloc_statistics(divvy_malloc_statistics_t *statistics, size_t size) {
    if (statistics == NULL) {
        errno = EINVAL;
        return -1;
    }
    divvy_malloc_statistics_t all;
    divvy_collect(&all);
    memcpy(statistics, &all, size < sizeof all ? size : sizeof all);
    return 0;
}

// MARK: malloc_stats: a table on stderr (write(2): usable at exit and from signal-free contexts, allocates nothing)

static void divvy_line(divvy_text_t *text, int fd, const char *label, unsigned long long value, const char *unit) {
    divvy_text_add(text, label);
    divvy_text_add_column(text, value, 16);
    divvy_text_add(text, unit);
    divvy_text_add(text, "\n");
    divvy_text_write(text, fd);
}

static void divvy_print_statistics(int fd) {
    divvy_malloc_statistics_t s;
    divvy_collect(&s);
    divvy_text_t text = {.length = 0};
    divvy_text_add(&text, "divvy-malloc statistics (pid ");
    divvy_text_add_unsigned(&text, (unsigned long long)getpid());
    divvy_text_add(&text, s.hardened ? ", hardened" : "");
    divvy_text_add(&text, s.guard_pages ? ", guard pages" : "");
    divvy_text_add(&text, ")\n");
    divvy_text_write(&text, fd);
    divvy_line(&text, fd, "reserved      ", s.bytes_reserved, " bytes");
    divvy_line(&text, fd, "mapped        ", s.bytes_mapped, " bytes (segments of 4 MiB in use)");
    divvy_line(&text, fd, "in use        ", s.bytes_in_use, " bytes");
    divvy_line(&text, fd, "empty pages   ", s.bytes_in_empty_pages, " bytes");
    divvy_line(&text, fd, "huge in use   ", s.huge_bytes_in_use, " bytes");
    divvy_line(&text, fd, "huge cached   ", s.huge_bytes_cached, " bytes");
    divvy_line(&text, fd, "segments      ", s.segments_in_use, "");
    divvy_line(&text, fd, "pages in use  ", s.pages_in_use, "");
    divvy_line(&text, fd, "pages empty   ", s.pages_empty, "");
    divvy_line(&text, fd, "abandoned     ", s.pages_abandoned, " pages");
    divvy_line(&text, fd, "huge blocks   ", s.huge_blocks, "");
    divvy_line(&text, fd, "thread heaps  ", s.thread_heaps, "");
    divvy_line(&text, fd, "thread exits  ", s.thread_exits, "");
    divvy_text_add(&text, "class  block size  pages  blocks in use  capacity  bytes in use\n");
    divvy_text_write(&text, fd);
    for (long i = 0; i < DIVVY_MALLOC_STATISTICS_CLASSES; i++) {
        const divvy_malloc_class_statistics_t *c = &s.classes[i];
        if (c->pages == 0) continue;
        divvy_text_add_column(&text, (unsigned long long)i, 5);
        divvy_text_add_column(&text, c->block_size, 12);
        divvy_text_add_column(&text, c->pages, 7);
        divvy_text_add_column(&text, c->blocks_in_use, 15);
        divvy_text_add_column(&text, c->blocks_capacity, 10);
        divvy_text_add_column(&text, c->bytes_in_use, 14);
        divvy_text_add(&text, "\n");
        divvy_text_write(&text, fd);
    }
    divvy_text_add(&text, "heap            pages  bytes in use  refills  pages acquired  pages retired\n");
    divvy_text_write(&text, fd);
    for (size_t i = 0; i < s.heaps_listed && i < DIVVY_MALLOC_STATISTICS_HEAPS; i++) {
        const divvy_malloc_heap_statistics_t *h = &s.heaps[i];
        divvy_text_t id = {.length = 0};
        if (h->heap == 0) {
            divvy_text_add(&id, "abandoned");
        } else {
            divvy_text_add_hex(&id, h->heap);
        }
        for (size_t j = 0; j < id.length; j++) text.bytes[text.length++] = id.bytes[j];
        for (size_t j = id.length; j < 14; j++) divvy_text_add(&text, " ");
        divvy_text_add_column(&text, h->pages, 7);
        divvy_text_add_column(&text, h->bytes_in_use, 14);
        divvy_text_add_column(&text, h->refills, 9);
        divvy_text_add_column(&text, h->pages_acquired, 16);
        divvy_text_add_column(&text, h->pages_retired, 15);
        divvy_text_add(&text, "\n");
        divvy_text_write(&text, fd);
    }
    if (s.pages_unlisted > 0) divvy_line(&text, fd, "unlisted pages", s.pages_unlisted, "");
}

DIVVY_EXPORT void malloc_stats(void) { divvy_print_statistics(STDERR_FILENO); }

// MARK: malloc_info: the same figures as XML (glibc's call; the format is libDivvyMalloc's, docs/malloc.md)

static void divvy_attribute(divvy_text_t *text, const char *name, unsigned long long value) {
    divvy_text_add(text, " ");
    divvy_text_add(text, name);
    divvy_text_add(text, "=\"");
    divvy_text_add_unsigned(text, value);
    divvy_text_add(text, "\"");
}

static int divvy_emit(divvy_text_t *text, FILE *stream) {
    int ok = fwrite(text->bytes, 1, text->length, stream) == text->length;
    text->length = 0;
    return ok;
}

DIVVY_EXPORT int malloc_info(int options, FILE *stream) {
    if (options != 0 || stream == NULL) {
        errno = EINVAL;
        return -1;
    }
    divvy_malloc_statistics_t s;
    divvy_collect(&s);
    divvy_text_t text = {.length = 0};
    int ok = 1;
    divvy_text_add(&text, "<malloc version=\"divvy-1\">\n<options");
    divvy_attribute(&text, "hardened", s.hardened);
    divvy_attribute(&text, "guard", s.guard_pages);
    divvy_text_add(&text, "/>\n<system type=\"reserved\"");
    divvy_attribute(&text, "size", s.bytes_reserved);
    divvy_text_add(&text, "/>\n<system type=\"mapped\"");
    divvy_attribute(&text, "size", s.bytes_mapped);
    divvy_attribute(&text, "segments", s.segments_in_use);
    divvy_text_add(&text, "/>\n");
    ok &= divvy_emit(&text, stream);
    divvy_text_add(&text, "<total type=\"in-use\"");
    divvy_attribute(&text, "size", s.bytes_in_use);
    divvy_text_add(&text, "/>\n<total type=\"empty-pages\"");
    divvy_attribute(&text, "size", s.bytes_in_empty_pages);
    divvy_attribute(&text, "count", s.pages_empty);
    divvy_text_add(&text, "/>\n<total type=\"huge\"");
    divvy_attribute(&text, "count", s.huge_blocks);
    divvy_attribute(&text, "size", s.huge_bytes_in_use);
    divvy_attribute(&text, "cached", s.huge_bytes_cached);
    divvy_text_add(&text, "/>\n<pages");
    divvy_attribute(&text, "in-use", s.pages_in_use);
    divvy_attribute(&text, "empty", s.pages_empty);
    divvy_attribute(&text, "abandoned", s.pages_abandoned);
    divvy_text_add(&text, "/>\n<sizes>\n");
    ok &= divvy_emit(&text, stream);
    for (long i = 0; i < DIVVY_MALLOC_STATISTICS_CLASSES; i++) {
        const divvy_malloc_class_statistics_t *c = &s.classes[i];
        if (c->pages == 0) continue;
        divvy_text_add(&text, "<size");
        divvy_attribute(&text, "class", (unsigned long long)i);
        divvy_attribute(&text, "block", c->block_size);
        divvy_attribute(&text, "pages", c->pages);
        divvy_attribute(&text, "count", c->blocks_in_use);
        divvy_attribute(&text, "capacity", c->blocks_capacity);
        divvy_attribute(&text, "size", c->bytes_in_use);
        divvy_text_add(&text, "/>\n");
        ok &= divvy_emit(&text, stream);
    }
    divvy_text_add(&text, "</sizes>\n<heaps");
    divvy_attribute(&text, "live", s.thread_heaps);
    divvy_attribute(&text, "exits", s.thread_exits);
    divvy_attribute(&text, "unlisted-pages", s.pages_unlisted);
    divvy_text_add(&text, ">\n");
    ok &= divvy_emit(&text, stream);
    for (size_t i = 0; i < s.heaps_listed && i < DIVVY_MALLOC_STATISTICS_HEAPS; i++) {
        const divvy_malloc_heap_statistics_t *h = &s.heaps[i];
        divvy_text_add(&text, "<heap id=\"");
        if (h->heap == 0) {
            divvy_text_add(&text, "abandoned");
        } else {
            divvy_text_add_hex(&text, h->heap);
        }
        divvy_text_add(&text, "\"");
        divvy_attribute(&text, "pages", h->pages);
        divvy_attribute(&text, "size", h->bytes_in_use);
        divvy_attribute(&text, "refills", h->refills);
        divvy_attribute(&text, "acquired", h->pages_acquired);
        divvy_attribute(&text, "retired", h->pages_retired);
        divvy_text_add(&text, "/>\n");
        ok &= divvy_emit(&text, stream);
    }
    divvy_text_add(&text, "</heaps>\n</malloc>\n");
    ok &= divvy_emit(&text, stream);
    return ok ? 0 : -1;
}

// DIVVY_MALLOC_STATS=1: the statistics when the process exits normally (exit(3) or a return from main). A destructor
// runs from ld.so's exit handler, after the program's atexit handlers; and some of those close stderr (coreutils'
// close_stdout does), so the constructor keeps a copy of it for this (hardening.c: divvy_malloc_read_switches).
__attribute__((destructor)) static void divvy_malloc_statistics_at_exit(void) {
    if (divvy_malloc_options.statistics_at_exit) divvy_print_statistics(divvy_malloc_options.statistics_fd);
}
