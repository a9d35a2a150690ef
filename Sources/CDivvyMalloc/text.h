// A line of text built on the stack, for messages written from inside malloc: no stdio, no allocation.
#ifndef DIVVY_MALLOC_TEXT_H
#define DIVVY_MALLOC_TEXT_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

typedef struct {
    char bytes[512];
    size_t length;
} divvy_text_t;

static inline void divvy_text_add(divvy_text_t *text, const char *string) {
    while (*string && text->length < sizeof text->bytes) text->bytes[text->length++] = *string++;
}

static inline void divvy_text_add_unsigned(divvy_text_t *text, unsigned long long value) {
    char digits[24];
    size_t count = 0;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (count > 0 && text->length < sizeof text->bytes) text->bytes[text->length++] = digits[--count];
}

static inline void divvy_text_add_signed(divvy_text_t *text, long long value) {
    if (value < 0) {
        divvy_text_add(text, "-");
        divvy_text_add_unsigned(text, 0ULL - (unsigned long long)value);
    } else {
        divvy_text_add_unsigned(text, (unsigned long long)value);
    }
}

static inline void divvy_text_add_hex(divvy_text_t *text, unsigned long long value) {
    char digits[16];
    size_t count = 0;
    do {
        digits[count++] = "0123456789abcdef"[value & 15];
        value >>= 4;
    } while (value != 0);
    divvy_text_add(text, "0x");
    while (count > 0 && text->length < sizeof text->bytes) text->bytes[text->length++] = digits[--count];
}

/// Right-aligns `value` in `width` columns.
static inline void divvy_text_add_column(divvy_text_t *text, unsigned long long value, size_t width) {
    divvy_text_t digits = {.length = 0};
    divvy_text_add_unsigned(&digits, value);
    for (size_t i = digits.length; i < width; i++) divvy_text_add(text, " ");
    for (size_t i = 0; i < digits.length && text->length < sizeof text->bytes; i++)
        text->bytes[text->length++] = digits.bytes[i];
}

/// Writes the text to `fd` (write(2), retried on EINTR and short writes) and empties it.
static inline void divvy_text_write(divvy_text_t *text, int fd) {
    size_t done = 0;
    while (done < text->length) {
        ssize_t written = write(fd, text->bytes + done, text->length - done);
        if (written <= 0) {
            if (written < 0 && errno == EINTR) continue;
            break;
        }
        done += (size_t)written;
    }
    text->length = 0;
}

#endif
