// libdivvy's C ABI driven from C, for direct-ratios: the loop below calls divvy_alloc / divvy_free exactly as a C
// program linked against libdivvy.so does (the real divvy.h; the symbols come from the `divvy` product).
#ifndef CLIBDIVVYBENCH_H
#define CLIBDIVVYBENCH_H
#include <stddef.h>

/// Connects to the daemon at `socket_path` in DIVVY_MODE_DIRECT; *client receives the opaque divvy_client.
/// Returns DIVVY_OK (0) or the divvy error code (divvy_bench_c_message() says why).
int divvy_bench_c_connect(const char *socket_path, void **client);
/// `pairs` times: divvy_alloc(client, size, &handle, &pointer), then divvy_free(client, handle, NULL).
/// Returns DIVVY_OK or the first error code.
int divvy_bench_c_pairs(void *client, size_t size, long pairs);
/// divvy_close.
void divvy_bench_c_close(void *client);
/// divvy_last_error_message().
const char *divvy_bench_c_message(void);
#endif
