#include "CLibdivvyBench.h"

#include <divvy.h>

void *volatile divvy_bench_c_sink;

int divvy_bench_c_connect(const char *socket_path, void **client) {
    divvy_client *out = NULL;
    int code = divvy_connect(socket_path, "direct-ratios-c", DIVVY_MODE_DIRECT, &out);
    if (code == DIVVY_OK) *client = out;
    return code;
}

int divvy_bench_c_pairs(void *client, size_t size, long pairs) {
    divvy_client *c = client;
    for (long i = 0; i < pairs; ++i) {
        divvy_handle_t handle;
        void *pointer;
        int code = divvy_alloc(c, size, &handle, &pointer);
        if (code != DIVVY_OK) return code;
        divvy_bench_c_sink = pointer;
        code = divvy_free(c, handle, NULL);
        if (code != DIVVY_OK) return code;
    }
    return DIVVY_OK;
}

void divvy_bench_c_close(void *client) { divvy_close(client); }

const char *divvy_bench_c_message(void) { return divvy_last_error_message(); }
