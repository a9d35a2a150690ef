// Internal to libdivvy: what the Swift half of the C ABI (Sources/DivvyC) needs from the C half. Not installed;
// C programs include only divvy.h.
#ifndef DIVVY_C_INTERNAL_H
#define DIVVY_C_INTERNAL_H

#include <stddef.h>

#include "divvy.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Stores `length` bytes of `message` (UTF-8, need not be NUL-terminated) as the calling thread's last error
/// message, cut to fit the buffer (at a UTF-8 boundary) and NUL-terminated.
__attribute__((visibility("hidden")))
void divvy_c_set_last_error(const char *message, size_t length);

/// The size of the thread-local message buffer, terminator included.
#define DIVVY_C_LAST_ERROR_CAPACITY 1024

#ifdef __cplusplus
}
#endif

#endif
