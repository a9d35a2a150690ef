// divvy-c-example: a C program using libdivvy (divvy.h) against a running divvyd, and the C ABI's end-to-end check.
//
// Build (from a build dir; see run.sh, or use pkg-config for an installed prefix):
//     cc -std=c11 -Wall -Wextra -I Sources/CDivvyC/include Examples/c-client/main.c
//        -L .build/debug -ldivvy -Wl,-rpath,$PWD/.build/debug -lpthread -o divvy-c-example
//
// Usage:
//     divvy-c-example [--socket PATH] [--mode any|direct|mediated] [--child-mode any|direct|mediated]
//         The whole scenario (the default): allocate blocks (single and batch), write a pattern, pass the handles to
//         a second process (this program again, spawned with pipes), which connects on its own, adopts, checks the
//         pattern, writes a reply pattern, frees its holdings and passes back a block of its own; the parent checks
//         the reply, frees everything, checks bad inputs and error codes, runs threads with one client each, and
//         checks that its stats show nothing held. Exit 0 only if every check passed.
//     divvy-c-example quota|heap-full [--socket PATH] [--mode M]
//         Against a daemon with a small quota (or a small heap and a large quota): allocates until
//         DIVVY_EQUOTA_EXCEEDED (DIVVY_EHEAP_FULL), checks that refusals change nothing, frees, allocates again.
//     divvy-c-example expect-connect CODE [--socket PATH] [--mode M]
//         Expects divvy_connect to return CODE (a number; 0 = success, then prints the granted mode).
//     divvy-c-example no-daemon PATH
//         Expects DIVVY_ENO_DAEMON from divvy_connect at PATH (nothing listens there).
//     divvy-c-example daemon-gone [--socket PATH] [--mode M]
//         Connects, allocates, prints READY and waits for a line on stdin (stop the daemon meanwhile); then
//         expects DIVVY_EDAEMON_GONE (or DIVVY_ESHUTTING_DOWN) from the next calls, and DIVVY_ENO_DAEMON from
//         divvy_reconnect.
//
// Output: one line per step; "FAIL <what>" for each failed check; "OK" last when everything passed.
#define _GNU_SOURCE
#include <divvy.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int failures = 0;
static pthread_mutex_t output_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *format, ...) {
    va_list arguments;
    va_start(arguments, format);
    pthread_mutex_lock(&output_lock);
    vfprintf(stdout, format, arguments);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&output_lock);
    va_end(arguments);
}

static void fail(const char *format, ...) {
    va_list arguments;
    va_start(arguments, format);
    pthread_mutex_lock(&output_lock);
    failures++;
    fputs("FAIL ", stdout);
    vfprintf(stdout, format, arguments);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&output_lock);
    va_end(arguments);
}

// Checks that `call` returned `expected`; on a mismatch prints both codes, their descriptions and the message.
#define EXPECT(call, expected)                                                                                      \
    do {                                                                                                            \
        int expect_result_ = (call);                                                                                \
        if (expect_result_ != (expected)) {                                                                         \
            fail("%s:%d: %s returned %d (%s; %s), expected %d (%s)", __FILE__, __LINE__, #call, expect_result_,     \
                 divvy_strerror(expect_result_), divvy_last_error_message(), (int)(expected),                      \
                 divvy_strerror(expected));                                                                         \
        }                                                                                                           \
    } while (0)

#define CHECK(condition, ...)                                                                                       \
    do {                                                                                                            \
        if (!(condition)) {                                                                                         \
            fail(__VA_ARGS__);                                                                                      \
        }                                                                                                           \
    } while (0)

// --- Handles ---------------------------------------------------------------------------------------------------------

// A handle as text: 32 hex digits, high word first (the 128-bit number low | high << 64), and back.
#define HANDLE_FORMAT "%016" PRIx64 "%016" PRIx64
#define HANDLE_SCAN "%16" SCNx64 "%16" SCNx64
#define HANDLE_ARGS(handle) (handle).high, (handle).low

static int same_handle(divvy_handle_t a, divvy_handle_t b) {
    return a.low == b.low && a.high == b.high;
}

static const divvy_handle_t no_handle = {0, 0};

// --- Patterns -------------------------------------------------------------------------------------------------------

static uint8_t pattern_byte(uint64_t seed, size_t index) {
    return (uint8_t)(seed * 31u + index * 7u + (index >> 8) + 1u);
}

static void write_pattern(void *block, size_t size, uint64_t seed) {
    uint8_t *bytes = block;
    for (size_t index = 0; index < size; index++) {
        bytes[index] = pattern_byte(seed, index);
    }
}

// The index of the first byte that differs from the pattern, or SIZE_MAX if all match.
static size_t check_pattern(const void *block, size_t size, uint64_t seed) {
    const uint8_t *bytes = block;
    for (size_t index = 0; index < size; index++) {
        if (bytes[index] != pattern_byte(seed, index)) {
            return index;
        }
    }
    return SIZE_MAX;
}

static int parse_mode(const char *text) {
    if (strcmp(text, "any") == 0) return DIVVY_MODE_ANY;
    if (strcmp(text, "direct") == 0) return DIVVY_MODE_DIRECT;
    if (strcmp(text, "mediated") == 0) return DIVVY_MODE_MEDIATED;
    fprintf(stderr, "unknown mode '%s' (any, direct, mediated)\n", text);
    exit(2);
}

static const char *mode_name(int mode) {
    switch (mode) {
    case DIVVY_MODE_DIRECT: return "direct";
    case DIVVY_MODE_MEDIATED: return "mediated";
    default: return "any";
    }
}

// Checks that `client` holds nothing. The daemon counts the holdings of mediated clients only (a direct client's
// blocks live in shared memory; divvy.h, divvy_stats): for a direct client this checks what the daemon knows.
static int expect_nothing_held(divvy_client *client, const char *who) {
    struct divvy_stats stats;
    memset(&stats, 0xAB, sizeof stats);
    int result = divvy_stats(client, &stats);
    if (result != DIVVY_OK) {
        fail("%s: divvy_stats: %s (%s)", who, divvy_strerror(result), divvy_last_error_message());
        return 0;
    }
    CHECK(stats.blocks_held == 0 && stats.bytes_held == 0, "%s: still holds %" PRIu64 " blocks, %" PRIu64 " bytes",
          who, stats.blocks_held, stats.bytes_held);
    return stats.blocks_held == 0 && stats.bytes_held == 0;
}

// --- Bad input, without a daemon -------------------------------------------------------------------------------------

static void check_arguments_without_a_client(const char *socket_path) {
    divvy_client *client = (divvy_client *)(uintptr_t)1;
    EXPECT(divvy_connect(socket_path, "bad", DIVVY_MODE_ANY, NULL), DIVVY_EINVAL);
    CHECK(strstr(divvy_last_error_message(), "out is NULL") != NULL, "connect(NULL out) message: '%s'",
          divvy_last_error_message());
    EXPECT(divvy_connect(socket_path, "bad", 7, &client), DIVVY_EINVAL);
    CHECK(client == NULL, "a failed divvy_connect sets *out to NULL");
    EXPECT(divvy_connect("", "bad", DIVVY_MODE_ANY, &client), DIVVY_EINVAL);
    char long_path[200];
    memset(long_path, 'a', sizeof long_path - 1);
    long_path[0] = '/';
    long_path[sizeof long_path - 1] = '\0';
    EXPECT(divvy_connect(long_path, "bad", DIVVY_MODE_ANY, &client), DIVVY_EINVAL);
    CHECK(strstr(divvy_last_error_message(), "199 bytes") != NULL, "long path message: '%s'",
          divvy_last_error_message());
    EXPECT(divvy_connect(socket_path, "bad", -1, &client), DIVVY_EINVAL);
    CHECK(strstr(divvy_last_error_message(), "unknown mode -1") != NULL, "bad mode message: '%s'",
          divvy_last_error_message());

    divvy_handle_t handle = {0, 0};
    void *pointer = NULL;
    int released = 0;
    struct divvy_stats stats;
    divvy_share_info info;
    divvy_handle_t handles[2] = {{1, 0}, {2, 0}};
    const divvy_handle_t one = {1, 0};
    int results[2];
    int mode = 0;
    uint32_t id = 0;
    size_t size = 0;
    EXPECT(divvy_alloc(NULL, 64, &handle, &pointer), DIVVY_EINVAL);
    CHECK(strstr(divvy_last_error_message(), "divvy_alloc: the client is NULL") != NULL, "NULL client message: '%s'",
          divvy_last_error_message());
    EXPECT(divvy_free(NULL, one, &released), DIVVY_EINVAL);
    EXPECT(divvy_alloc_batch(NULL, 64, 2, handles), DIVVY_EINVAL);
    EXPECT(divvy_free_batch(NULL, handles, 2, results, NULL), DIVVY_EINVAL);
    uint64_t token = 0;
    EXPECT(divvy_share(NULL, one, &token, &info), DIVVY_EINVAL);
    EXPECT(divvy_adopt(NULL, one, 1, &pointer, &size), DIVVY_EINVAL);
    EXPECT(divvy_pointer(NULL, one, &pointer), DIVVY_EINVAL);
    EXPECT(divvy_handle_for_pointer(NULL, &handle, &handle), DIVVY_EINVAL);
    EXPECT(divvy_stats(NULL, &stats), DIVVY_EINVAL);
    EXPECT(divvy_ping(NULL), DIVVY_EINVAL);
    EXPECT(divvy_reconnect(NULL), DIVVY_EINVAL);
    EXPECT(divvy_client_info(NULL, &mode, &id), DIVVY_EINVAL);
    EXPECT(divvy_close(NULL), DIVVY_OK);

    // Every code has its own description; unknown codes get the generic one; never NULL.
    static const int codes[] = {
        DIVVY_OK, DIVVY_EMALFORMED_FRAME, DIVVY_EUNSUPPORTED_VERSION, DIVVY_EUNKNOWN_MESSAGE_TYPE,
        DIVVY_EFRAME_TOO_LARGE, DIVVY_ENOT_AUTHORIZED, DIVVY_EHANDSHAKE_REQUIRED, DIVVY_EWRONG_MODE,
        DIVVY_EQUOTA_EXCEEDED, DIVVY_EHEAP_FULL, DIVVY_EUNSUPPORTED_SIZE, DIVVY_EINVALID_HANDLE,
        DIVVY_EMISALIGNED_HANDLE, DIVVY_ESTALE_HANDLE, DIVVY_EDOUBLE_FREE, DIVVY_ENOT_HOLDER, DIVVY_EBATCH_TOO_LARGE,
        DIVVY_EADMIN_REQUIRED, DIVVY_ENO_SUCH_CLIENT, DIVVY_ETOO_MANY_CLIENTS, DIVVY_ESHUTTING_DOWN,
        DIVVY_EINTERNAL_ERROR,
        DIVVY_EINVALID_PARTICIPANT, DIVVY_EDIRECT_UNAVAILABLE, DIVVY_EALREADY_HOLDER, DIVVY_EFOREIGN_HANDLE,
        DIVVY_EBAD_SHARE_TOKEN, DIVVY_ENO_DAEMON, DIVVY_EDAEMON_GONE, DIVVY_ETIMED_OUT, DIVVY_ESYSTEM,
        DIVVY_EINVAL, DIVVY_EPROTOCOL,
    };
    const size_t count = sizeof codes / sizeof codes[0];
    const char *unknown = divvy_strerror(99);
    CHECK(unknown != NULL && strstr(unknown, "unknown") != NULL, "divvy_strerror(99) is '%s'", unknown);
    CHECK(divvy_strerror(-5) == unknown && divvy_strerror(1 << 30) == unknown, "unknown codes share one text");
    for (size_t i = 0; i < count; i++) {
        const char *text = divvy_strerror(codes[i]);
        CHECK(text != NULL && text[0] != '\0' && text != unknown, "divvy_strerror(%d) is not specific", codes[i]);
        for (size_t j = 0; j < i; j++) {
            CHECK(text != divvy_strerror(codes[j]) && strcmp(text, divvy_strerror(codes[j])) != 0,
                  "codes %d and %d share a description", codes[i], codes[j]);
        }
    }
    say("arguments: NULL clients and bad modes give DIVVY_EINVAL; %zu error descriptions", count);
}

// --- The child: adopts what the parent passed ------------------------------------------------------------------------

typedef struct passed_block {
    divvy_handle_t handle;
    uint64_t token; /* the share token the parent got for this block (divvy_share) */
    size_t size;
    uint64_t seed;
} passed_block;

#define MAX_PASSED 256

static int run_child(const char *socket_path, int mode) {
    divvy_client *client = NULL;
    int result = divvy_connect(socket_path, "c-example-child", mode, &client);
    if (result != DIVVY_OK) {
        fail("child: divvy_connect: %s (%s)", divvy_strerror(result), divvy_last_error_message());
        return 1;
    }
    int granted = -1;
    EXPECT(divvy_client_info(client, &granted, NULL), DIVVY_OK);
    say("child: connected (%s)", mode_name(granted));

    passed_block blocks[MAX_PASSED];
    size_t count = 0;
    char line[256];
    while (fgets(line, sizeof line, stdin) != NULL && strncmp(line, "END", 3) != 0) {
        passed_block block;
        if (sscanf(line, "BLOCK " HANDLE_SCAN " %" SCNx64 " %zu %" SCNu64, &block.handle.high, &block.handle.low,
                   &block.token, &block.size, &block.seed) == 5 &&
            count < MAX_PASSED) {
            blocks[count++] = block;
        }
    }
    // Blocks the child does not hold yet: freeing or sharing them is refused, and changes nothing.
    if (count > 0) {
        EXPECT(divvy_free(client, blocks[0].handle, NULL), DIVVY_ENOT_HOLDER);
        uint64_t token = 0;
        EXPECT(divvy_share(client, blocks[0].handle, &token, NULL), DIVVY_ENOT_HOLDER);
        // Sharing is a capability: a mediated client adopts only with the token the holder got for this handle.
        // No token, a guess, or another block's token is refused, and changes nothing (a direct client adopts in
        // shared memory, which it may write anyway: it needs no token).
        if (granted == DIVVY_MODE_MEDIATED && count > 1) {
            EXPECT(divvy_adopt(client, blocks[0].handle, 0, NULL, NULL), DIVVY_EBAD_SHARE_TOKEN);
            EXPECT(divvy_adopt(client, blocks[0].handle, blocks[0].token ^ 1, NULL, NULL), DIVVY_EBAD_SHARE_TOKEN);
            EXPECT(divvy_adopt(client, blocks[0].handle, blocks[1].token, NULL, NULL), DIVVY_EBAD_SHARE_TOKEN);
            CHECK(strstr(divvy_last_error_message(), "badShareToken") != NULL, "child: bad token message: '%s'",
                  divvy_last_error_message());
            expect_nothing_held(client, "child after refused adopts");
        }
    }
    // Adopt every block, check the parent's pattern, write the reply pattern (seed + 1000).
    for (size_t i = 0; i < count; i++) {
        void *pointer = NULL;
        size_t size = 0;
        result = divvy_adopt(client, blocks[i].handle, blocks[i].token, &pointer, &size);
        if (result != DIVVY_OK) {
            fail("child: divvy_adopt(0x" HANDLE_FORMAT "): %s (%s)", HANDLE_ARGS(blocks[i].handle),
                 divvy_strerror(result), divvy_last_error_message());
            blocks[i].handle = no_handle;
            continue;
        }
        CHECK(size >= blocks[i].size, "child: adopted block of %zu bytes, asked %zu", size, blocks[i].size);
        size_t bad = check_pattern(pointer, blocks[i].size, blocks[i].seed);
        CHECK(bad == SIZE_MAX, "child: block 0x" HANDLE_FORMAT " differs from the parent's pattern at byte %zu",
              HANDLE_ARGS(blocks[i].handle), bad);
        write_pattern(pointer, blocks[i].size, blocks[i].seed + 1000);
        divvy_share_info info;
        uint64_t token = 0;
        EXPECT(divvy_share(client, blocks[i].handle, &token, &info), DIVVY_OK);
        CHECK(token != 0 && token != blocks[i].token, "child: share gave token %" PRIx64, token);
        CHECK(info.holders == 2 && same_handle(info.handle, blocks[i].handle) && info.block_size == size,
              "child: share after adopt: holders %u, block_size %" PRIu64, info.holders, info.block_size);
    }
    // Free the holdings: the first half one by one, the rest in one batch. The parent still holds each block.
    size_t half = count / 2;
    for (size_t i = 0; i < half; i++) {
        if (same_handle(blocks[i].handle, no_handle)) continue;
        int released = -1;
        EXPECT(divvy_free(client, blocks[i].handle, &released), DIVVY_OK);
        CHECK(released == 0, "child: free of an adopted block released it (released %d)", released);
    }
    if (count > half) {
        divvy_handle_t handles[MAX_PASSED];
        int results[MAX_PASSED];
        int released[MAX_PASSED];
        for (size_t i = half; i < count; i++) handles[i - half] = blocks[i].handle;
        EXPECT(divvy_free_batch(client, handles, count - half, results, released), DIVVY_OK);
        for (size_t i = 0; i < count - half; i++) {
            CHECK(results[i] == DIVVY_OK && released[i] == 0, "child: batch free #%zu: result %d released %d", i,
                  results[i], released[i]);
        }
    }
    expect_nothing_held(client, "child after freeing the adopted blocks");

    // A block of the child's own for the parent to adopt: allocate, write, pass back, wait for the parent.
    divvy_handle_t own = no_handle;
    void *pointer = NULL;
    EXPECT(divvy_alloc(client, 3000, &own, &pointer), DIVVY_OK);
    if (pointer != NULL) write_pattern(pointer, 3000, 777);
    uint64_t own_token = 0;
    EXPECT(divvy_share(client, own, &own_token, NULL), DIVVY_OK);
    say("CHILD-BLOCK " HANDLE_FORMAT " %016" PRIx64 " 3000 777", HANDLE_ARGS(own), own_token);
    say("READY");
    if (fgets(line, sizeof line, stdin) == NULL || strncmp(line, "ADOPTED", 7) != 0) {
        fail("child: the parent did not confirm the adoption");
    }
    int released = -1;
    EXPECT(divvy_free(client, own, &released), DIVVY_OK);
    CHECK(released == 0, "child: the parent's adoption keeps the child's block alive (released %d)", released);
    expect_nothing_held(client, "child at the end");
    EXPECT(divvy_close(client), DIVVY_OK);
    say(failures == 0 ? "CHILD OK" : "CHILD FAILED");
    return failures == 0 ? 0 : 1;
}

// --- The parent side of the hand-over -------------------------------------------------------------------------------

typedef struct child_process {
    pid_t pid;
    FILE *to_child;
    FILE *from_child;
} child_process;

static int spawn_child(const char *socket_path, int mode, child_process *child) {
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) {
        fail("pipe: %s", strerror(errno));
        return 0;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to_child[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, from_child[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, to_child[1]);
    posix_spawn_file_actions_addclose(&actions, from_child[0]);
    char self[4096];
    ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
    if (length <= 0) {
        fail("readlink /proc/self/exe: %s", strerror(errno));
        return 0;
    }
    self[length] = '\0';
    char *arguments[] = {self, "--child", (char *)socket_path, (char *)mode_name(mode), NULL};
    int result = posix_spawn(&child->pid, self, &actions, NULL, arguments, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(to_child[0]);
    close(from_child[1]);
    if (result != 0) {
        fail("posix_spawn %s: %s", self, strerror(result));
        return 0;
    }
    child->to_child = fdopen(to_child[1], "w");
    child->from_child = fdopen(from_child[0], "r");
    return child->to_child != NULL && child->from_child != NULL;
}

#define SINGLES 12
#define BATCH 64
#define BATCH_SIZE 256

static void run_handover(divvy_client *client, const char *socket_path, int child_mode) {
    static const size_t sizes[SINGLES] = {1, 16, 24, 100, 256, 700, 1000, 2048, 3000, 4000, 33, 512};
    divvy_handle_t handles[SINGLES];
    uint64_t tokens[SINGLES]; /* a share token per block, for the child */
    void *pointers[SINGLES];
    uint64_t total = 0;

    // Single allocations: write a pattern; check pointer ↔ handle translation.
    for (size_t i = 0; i < SINGLES; i++) {
        handles[i] = no_handle;
        pointers[i] = NULL;
        EXPECT(divvy_alloc(client, sizes[i], &handles[i], &pointers[i]), DIVVY_OK);
        if (pointers[i] == NULL) continue;
        write_pattern(pointers[i], sizes[i], i);
        void *again = NULL;
        EXPECT(divvy_pointer(client, handles[i], &again), DIVVY_OK);
        CHECK(again == pointers[i], "divvy_pointer(0x" HANDLE_FORMAT ") = %p, divvy_alloc gave %p",
              HANDLE_ARGS(handles[i]), again, pointers[i]);
        divvy_handle_t back = no_handle;
        EXPECT(divvy_handle_for_pointer(client, pointers[i], &back), DIVVY_OK);
        // The exact handle in both modes (mediated clients answer from the blocks they hold).
        CHECK(same_handle(back, handles[i]), "divvy_handle_for_pointer gave 0x" HANDLE_FORMAT ", expected 0x"
              HANDLE_FORMAT, HANDLE_ARGS(back), HANDLE_ARGS(handles[i]));
        // A real handle names its heap: the heap id (high bits 32-63) is never 0.
        CHECK(handles[i].high >> 32 != 0, "handle 0x" HANDLE_FORMAT " has heap id 0", HANDLE_ARGS(handles[i]));
        divvy_share_info info;
        tokens[i] = 0;
        EXPECT(divvy_share(client, handles[i], &tokens[i], &info), DIVVY_OK);
        CHECK(same_handle(info.handle, handles[i]) && info.holders == 1 && tokens[i] != 0 &&
                  info.block_size >= sizes[i],
              "share: handle 0x" HANDLE_FORMAT " holders %u block_size %" PRIu64, HANDLE_ARGS(info.handle),
              info.holders, info.block_size);
        total += info.block_size;
    }
    // A batch.
    divvy_handle_t batch[BATCH];
    uint64_t batch_tokens[BATCH];
    EXPECT(divvy_alloc_batch(client, BATCH_SIZE, BATCH, batch), DIVVY_OK);
    for (size_t i = 0; i < BATCH; i++) {
        void *pointer = NULL;
        batch_tokens[i] = 0;
        EXPECT(divvy_share(client, batch[i], &batch_tokens[i], NULL), DIVVY_OK);
        EXPECT(divvy_pointer(client, batch[i], &pointer), DIVVY_OK);
        if (pointer != NULL) write_pattern(pointer, BATCH_SIZE, 100 + i);
        for (size_t j = 0; j < i; j++) CHECK(!same_handle(batch[j], batch[i]), "the batch repeats a handle");
    }
    struct divvy_stats stats;
    usleep(150 * 1000); /* the daemon's heap figures may be up to 100 ms old (PROTOCOL.md, stats) */
    EXPECT(divvy_stats(client, &stats), DIVVY_OK);
    CHECK(stats.blocks_held == SINGLES + BATCH, "stats: %" PRIu64 " blocks held, expected %d",
          stats.blocks_held, SINGLES + BATCH);
    CHECK(stats.bytes_held >= total + BATCH * BATCH_SIZE, "stats: %" PRIu64 " bytes held", stats.bytes_held);
    CHECK(stats.heap_bytes_used >= total + BATCH * BATCH_SIZE, "stats: the heap uses %" PRIu64 " bytes, fewer than "
          "this client's blocks", stats.heap_bytes_used);
    CHECK(stats.clients >= 1 && stats.quota_bytes >= stats.bytes_held, "stats: clients %u quota %" PRIu64,
          stats.clients, stats.quota_bytes);
    say("parent: %d blocks and a batch of %d allocated, %" PRIu64 " bytes in use in the heap", SINGLES, BATCH,
        stats.heap_bytes_used);

    // Pass every handle to a second process.
    child_process child;
    if (!spawn_child(socket_path, child_mode, &child)) return;
    for (size_t i = 0; i < SINGLES; i++) {
        fprintf(child.to_child, "BLOCK " HANDLE_FORMAT " %016" PRIx64 " %zu %zu\n", HANDLE_ARGS(handles[i]), tokens[i],
                sizes[i], i);
    }
    for (size_t i = 0; i < BATCH; i++) {
        fprintf(child.to_child, "BLOCK " HANDLE_FORMAT " %016" PRIx64 " %d %zu\n", HANDLE_ARGS(batch[i]),
                batch_tokens[i], BATCH_SIZE, 100 + i);
    }
    fputs("END\n", child.to_child);
    fflush(child.to_child);

    // The child's own block comes back; adopt it, check it, tell the child.
    divvy_handle_t theirs = no_handle;
    uint64_t their_token = 0;
    size_t their_size = 0;
    uint64_t their_seed = 0;
    char line[512];
    while (fgets(line, sizeof line, child.from_child) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        say("  %s", line);
        if (strncmp(line, "FAIL", 4) == 0) failures++;
        sscanf(line, "CHILD-BLOCK " HANDLE_SCAN " %" SCNx64 " %zu %" SCNu64, &theirs.high, &theirs.low, &their_token,
               &their_size, &their_seed);
        if (strcmp(line, "READY") == 0) break;
    }
    void *their_pointer = NULL;
    size_t their_block = 0;
    EXPECT(divvy_adopt(client, theirs, their_token, &their_pointer, &their_block), DIVVY_OK);
    if (their_pointer != NULL) {
        CHECK(their_block >= their_size, "adopted the child's block: %zu bytes, expected %zu", their_block,
              their_size);
        size_t bad = check_pattern(their_pointer, their_size, their_seed);
        CHECK(bad == SIZE_MAX, "the child's block differs from its pattern at byte %zu", bad);
    }
    fputs("ADOPTED\n", child.to_child);
    fflush(child.to_child);
    while (fgets(line, sizeof line, child.from_child) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        say("  %s", line);
        if (strncmp(line, "FAIL", 4) == 0) failures++;
    }
    fclose(child.to_child);
    fclose(child.from_child);
    int status = 0;
    while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child ended with status 0x%x", status);

    // The child wrote the reply pattern into every block; the parent sees it. Then free everything.
    for (size_t i = 0; i < SINGLES; i++) {
        if (pointers[i] == NULL) continue;
        size_t bad = check_pattern(pointers[i], sizes[i], i + 1000);
        CHECK(bad == SIZE_MAX, "block %zu lacks the child's reply at byte %zu", i, bad);
        int released = -1;
        EXPECT(divvy_free(client, handles[i], &released), DIVVY_OK);
        CHECK(released == 1, "the parent's free of block %zu did not release it (released %d)", i, released);
    }
    int results[BATCH];
    int released[BATCH];
    for (size_t i = 0; i < BATCH; i++) {
        void *pointer = NULL;
        if (divvy_pointer(client, batch[i], &pointer) == DIVVY_OK) {
            size_t bad = check_pattern(pointer, BATCH_SIZE, 100 + i + 1000);
            CHECK(bad == SIZE_MAX, "batch block %zu lacks the child's reply at byte %zu", i, bad);
        }
    }
    EXPECT(divvy_free_batch(client, batch, BATCH, results, released), DIVVY_OK);
    for (size_t i = 0; i < BATCH; i++) {
        CHECK(results[i] == DIVVY_OK && released[i] == 1, "batch free #%zu: result %d released %d", i, results[i],
              released[i]);
    }
    int their_released = -1;
    EXPECT(divvy_free(client, theirs, &their_released), DIVVY_OK);
    CHECK(their_released == 1, "the parent's free of the child's block released it (released %d)", their_released);
    expect_nothing_held(client, "parent after the hand-over");
    say("hand-over: %d + %d blocks passed to a %s child and back, all freed", SINGLES, BATCH, mode_name(child_mode));
}

// --- Errors from the daemon and the library with a live client -------------------------------------------------------

static int is_one_of(int code, int a, int b) {
    return code == a || code == b;
}

static void check_errors(divvy_client *client, int granted) {
    struct divvy_stats before, after;
    EXPECT(divvy_stats(client, &before), DIVVY_OK);
    divvy_handle_t handle = {0xDEAD, 0xBEEF};
    void *pointer = (void *)0x1;
    EXPECT(divvy_alloc(client, 0, &handle, &pointer), DIVVY_EUNSUPPORTED_SIZE);
    CHECK(handle.low == 0xDEAD && handle.high == 0xBEEF && pointer == (void *)0x1,
          "a failed divvy_alloc wrote its outputs");
    CHECK(divvy_last_error_message()[0] != '\0', "a failed call leaves a message");
    EXPECT(divvy_alloc(client, SIZE_MAX, &handle, &pointer), DIVVY_EUNSUPPORTED_SIZE);
    EXPECT(divvy_alloc(client, (size_t)1 << 40, &handle, &pointer), DIVVY_EUNSUPPORTED_SIZE);
    EXPECT(divvy_alloc(client, 64, NULL, &pointer), DIVVY_EINVAL);
    divvy_handle_t handles[4];
    EXPECT(divvy_alloc_batch(client, 64, 0, handles), DIVVY_EBATCH_TOO_LARGE);
    EXPECT(divvy_alloc_batch(client, 64, DIVVY_MAX_BATCH + 1, handles), DIVVY_EBATCH_TOO_LARGE);
    EXPECT(divvy_alloc_batch(client, 64, (size_t)-1, handles), DIVVY_EBATCH_TOO_LARGE);
    EXPECT(divvy_alloc_batch(client, 64, 4, NULL), DIVVY_EINVAL);
    EXPECT(divvy_alloc_batch(client, 0, 4, handles), DIVVY_EUNSUPPORTED_SIZE);
    EXPECT(divvy_free_batch(client, handles, 0, NULL, NULL), DIVVY_EBATCH_TOO_LARGE);
    EXPECT(divvy_free_batch(client, NULL, 4, NULL, NULL), DIVVY_EINVAL);
    EXPECT(divvy_pointer(client, handle, NULL), DIVVY_EINVAL);
    EXPECT(divvy_handle_for_pointer(client, NULL, &handle), DIVVY_EINVAL);
    EXPECT(divvy_handle_for_pointer(client, &handle, NULL), DIVVY_EINVAL);
    EXPECT(divvy_stats(client, NULL), DIVVY_EINVAL);
    // An address outside the shared region is no block.
    int local = 0;
    EXPECT(divvy_handle_for_pointer(client, &local, &handle), DIVVY_EINVALID_HANDLE);
    // A handle far outside the data area (of this daemon's heap: the heap id of a real handle).
    divvy_handle_t probe = no_handle;
    EXPECT(divvy_alloc(client, 64, &probe, NULL), DIVVY_OK);
    EXPECT(divvy_free(client, probe, NULL), DIVVY_OK);
    divvy_handle_t far = {0xFFFFFFFFFFFFu, probe.high};
    EXPECT(divvy_pointer(client, far, &pointer), DIVVY_EINVALID_HANDLE);
    int code = divvy_free(client, far, NULL);
    CHECK(code == DIVVY_EINVALID_HANDLE, "free of an out-of-range handle: %d (%s)", code, divvy_strerror(code));
    code = divvy_adopt(client, far, 1, NULL, NULL);
    CHECK(code == DIVVY_EINVALID_HANDLE, "adopt of an out-of-range handle: %d (%s)", code, divvy_strerror(code));
    // The zero handle is never valid.
    code = divvy_free(client, no_handle, NULL);
    CHECK(code == DIVVY_EINVALID_HANDLE, "free of the zero handle: %d (%s)", code, divvy_strerror(code));

    // A freed block: freeing or adopting it again is refused, and nothing changes.
    divvy_handle_t freed = no_handle;
    void *freed_pointer = NULL;
    EXPECT(divvy_alloc(client, 128, &freed, &freed_pointer), DIVVY_OK);
    EXPECT(divvy_free(client, freed, NULL), DIVVY_OK);
    if (granted == DIVVY_MODE_DIRECT) {
        // Direct clients check translations against the heap: a freed block has no address and no handle.
        code = divvy_pointer(client, freed, &pointer);
        CHECK(code == DIVVY_ESTALE_HANDLE, "direct: divvy_pointer of a freed block: %d (%s)", code,
              divvy_strerror(code));
        code = divvy_handle_for_pointer(client, freed_pointer, &handle);
        CHECK(code == DIVVY_ESTALE_HANDLE, "direct: divvy_handle_for_pointer of a freed block: %d (%s)", code,
              divvy_strerror(code));
    } else {
        // Mediated clients know the blocks they hold: a freed one is no longer among them.
        code = divvy_handle_for_pointer(client, freed_pointer, &handle);
        CHECK(code == DIVVY_ENOT_HOLDER, "mediated: divvy_handle_for_pointer of a freed block: %d (%s)", code,
              divvy_strerror(code));
    }
    code = divvy_free(client, freed, NULL);
    CHECK(is_one_of(code, DIVVY_EDOUBLE_FREE, DIVVY_ESTALE_HANDLE), "double free: %d (%s: %s)", code,
          divvy_strerror(code), divvy_last_error_message());
    code = divvy_adopt(client, freed, 1, &pointer, NULL);
    CHECK(is_one_of(code, DIVVY_EDOUBLE_FREE, DIVVY_ESTALE_HANDLE), "adopt of a freed block: %d (%s)", code,
          divvy_strerror(code));
    uint64_t token = 0;
    code = divvy_share(client, freed, &token, NULL);
    CHECK(is_one_of(code, DIVVY_EDOUBLE_FREE, DIVVY_ESTALE_HANDLE), "share of a freed block: %d (%s)", code,
          divvy_strerror(code));
    // A batch free with one good and one freed handle: the good one is freed, the other reported.
    divvy_handle_t live = no_handle;
    void *live_pointer = NULL;
    EXPECT(divvy_alloc(client, 128, &live, &live_pointer), DIVVY_OK);
    // divvy_share needs somewhere to put the token.
    EXPECT(divvy_share(client, live, NULL, NULL), DIVVY_EINVAL);
    // A client holds a block once, in either mode: adopting its own block again (even with a live token) is
    // refused, nothing changes.
    EXPECT(divvy_share(client, live, &token, NULL), DIVVY_OK);
    code = divvy_adopt(client, live, token, NULL, NULL);
    CHECK(code == DIVVY_EALREADY_HOLDER, "adopt of a block this client holds: %d (%s)", code, divvy_strerror(code));
    // The same block named with another heap's id (as a handle kept from before a daemon restart would be): every
    // call that checks the handle refuses it as foreign, in both modes, and nothing changes.
    divvy_handle_t foreign = {live.low, live.high ^ 0xFFFFFFFF00000000u};
    code = divvy_free(client, foreign, NULL);
    CHECK(code == DIVVY_EFOREIGN_HANDLE, "free of a foreign handle: %d (%s)", code, divvy_strerror(code));
    code = divvy_adopt(client, foreign, token, NULL, NULL);
    CHECK(code == DIVVY_EFOREIGN_HANDLE, "adopt of a foreign handle: %d (%s)", code, divvy_strerror(code));
    code = divvy_share(client, foreign, &token, NULL);
    CHECK(code == DIVVY_EFOREIGN_HANDLE, "share of a foreign handle: %d (%s)", code, divvy_strerror(code));
    if (granted == DIVVY_MODE_DIRECT) {
        // Direct clients check translations against the heap, heap id included.
        code = divvy_pointer(client, foreign, &pointer);
        CHECK(code == DIVVY_EFOREIGN_HANDLE, "direct: divvy_pointer of a foreign handle: %d (%s)", code,
              divvy_strerror(code));
    }
    if (live_pointer != NULL) {
        // An address inside a block is not a block start: direct clients say so (the heap), mediated clients hold
        // no block starting there.
        code = divvy_handle_for_pointer(client, (char *)live_pointer + 16, &handle);
        if (granted == DIVVY_MODE_DIRECT) {
            CHECK(code == DIVVY_EMISALIGNED_HANDLE, "direct: divvy_handle_for_pointer inside a block: %d (%s)", code,
                  divvy_strerror(code));
        } else {
            CHECK(code == DIVVY_ENOT_HOLDER, "mediated: divvy_handle_for_pointer inside a block: %d (%s)", code,
                  divvy_strerror(code));
        }
    }
    divvy_handle_t mixed[2] = {live, freed};
    int results[2] = {-1, -1};
    int released[2] = {-1, -1};
    code = divvy_free_batch(client, mixed, 2, results, released);
    CHECK(is_one_of(code, DIVVY_EDOUBLE_FREE, DIVVY_ESTALE_HANDLE) && results[0] == DIVVY_OK && released[0] == 1 &&
              results[1] == code && released[1] == 0,
          "mixed batch free: returned %d, results %d %d, released %d %d", code, results[0], results[1], released[0],
          released[1]);
    CHECK(strstr(divvy_last_error_message(), "handle #1") != NULL, "mixed batch message: '%s'",
          divvy_last_error_message());
    EXPECT(divvy_stats(client, &after), DIVVY_OK);
    CHECK(after.blocks_held == before.blocks_held && after.bytes_held == before.bytes_held,
          "the refused calls changed the holdings (%" PRIu64 " → %" PRIu64 " blocks)", before.blocks_held,
          after.blocks_held);
    say("errors: bad sizes, counts, handles and pointers are refused with their codes; nothing changed");
}

// --- Threads: one client each, blocks passed between threads ---------------------------------------------------------

#define THREADS 4
#define PER_THREAD 50

typedef struct thread_state {
    int index;
    const char *socket_path;
    int mode;
    divvy_handle_t handles[PER_THREAD];
    uint64_t tokens[PER_THREAD]; /* a share token per block, for the next thread's client */
    pthread_barrier_t *barrier;
    struct thread_state *all;
} thread_state;

static void *thread_main(void *argument) {
    thread_state *state = argument;
    divvy_client *client = NULL;
    char name[32];
    snprintf(name, sizeof name, "c-example-thread-%d", state->index);
    int result = divvy_connect(state->socket_path, name, state->mode, &client);
    if (result != DIVVY_OK) {
        fail("thread %d: divvy_connect: %s (%s)", state->index, divvy_strerror(result), divvy_last_error_message());
    }
    for (int i = 0; i < PER_THREAD && client != NULL; i++) {
        void *pointer = NULL;
        state->handles[i] = no_handle;
        EXPECT(divvy_alloc(client, 64 + (size_t)i * 8, &state->handles[i], &pointer), DIVVY_OK);
        if (pointer != NULL) write_pattern(pointer, 64 + (size_t)i * 8, (uint64_t)state->index * 1000 + i);
        state->tokens[i] = 0;
        EXPECT(divvy_share(client, state->handles[i], &state->tokens[i], NULL), DIVVY_OK);
    }
    // Each thread leaves its own error message behind; the messages are per thread.
    char expected_message[64];
    snprintf(expected_message, sizeof expected_message, "count %d is not in", 5000 + state->index);
    divvy_handle_t unused[1];
    if (client != NULL) {
        EXPECT(divvy_alloc_batch(client, 64, 5000 + state->index, unused), DIVVY_EBATCH_TOO_LARGE);
    }
    pthread_barrier_wait(state->barrier);
    // Adopt the next thread's blocks, check them, free them (the owner still holds them).
    thread_state *next = &state->all[(state->index + 1) % THREADS];
    for (int i = 0; i < PER_THREAD && client != NULL; i++) {
        void *pointer = NULL;
        EXPECT(divvy_adopt(client, next->handles[i], next->tokens[i], &pointer, NULL), DIVVY_OK);
        if (pointer != NULL) {
            size_t bad = check_pattern(pointer, 64 + (size_t)i * 8, (uint64_t)next->index * 1000 + i);
            CHECK(bad == SIZE_MAX, "thread %d: thread %d's block %d differs at %zu", state->index, next->index, i, bad);
        }
        int released = -1;
        EXPECT(divvy_free(client, next->handles[i], &released), DIVVY_OK);
        CHECK(released == 0, "thread %d: a borrowed block was released", state->index);
    }
    CHECK(strstr(divvy_last_error_message(), expected_message) != NULL,
          "thread %d: its last error message is '%s', expected one with '%s'", state->index,
          divvy_last_error_message(), expected_message);
    pthread_barrier_wait(state->barrier);
    for (int i = 0; i < PER_THREAD && client != NULL; i++) {
        int released = -1;
        EXPECT(divvy_free(client, state->handles[i], &released), DIVVY_OK);
        CHECK(released == 1, "thread %d: its own block %d was not released", state->index, i);
    }
    if (client != NULL) {
        expect_nothing_held(client, "a thread at the end");
    }
    divvy_close(client);
    return NULL;
}

static void run_threads(const char *socket_path, int mode) {
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, THREADS);
    thread_state states[THREADS];
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        states[i] = (thread_state){.index = i, .socket_path = socket_path, .mode = mode, .barrier = &barrier,
                                   .all = states};
    }
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, thread_main, &states[i]);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&barrier);
    say("threads: %d clients in %d threads passed %d blocks each around", THREADS, THREADS, PER_THREAD);
}

// --- Scenarios -------------------------------------------------------------------------------------------------------

static int run_all(const char *socket_path, int mode, int child_mode) {
    check_arguments_without_a_client(socket_path);

    divvy_client *client = NULL;
    int result = divvy_connect(socket_path, "c-example", mode, &client);
    if (result != DIVVY_OK) {
        fail("divvy_connect(%s): %s (%s)", socket_path ? socket_path : "default", divvy_strerror(result),
             divvy_last_error_message());
        return 1;
    }
    int granted = -1;
    uint32_t id = 0;
    EXPECT(divvy_client_info(client, &granted, &id), DIVVY_OK);
    CHECK(granted == DIVVY_MODE_DIRECT || granted == DIVVY_MODE_MEDIATED, "granted mode %d", granted);
    CHECK(mode == DIVVY_MODE_ANY || granted == mode, "asked for %s, granted %s", mode_name(mode), mode_name(granted));
    EXPECT(divvy_ping(client), DIVVY_OK);
    expect_nothing_held(client, "a new client");
    say("connected: client %u, %s", id, mode_name(granted));

    run_handover(client, socket_path, child_mode);
    check_errors(client, granted);
    run_threads(socket_path, mode);

    // Reconnecting drops what the old connection held.
    divvy_handle_t dropped = no_handle;
    EXPECT(divvy_alloc(client, 64, &dropped, NULL), DIVVY_OK);
    EXPECT(divvy_reconnect(client), DIVVY_OK);
    expect_nothing_held(client, "after divvy_reconnect");
    EXPECT(divvy_ping(client), DIVVY_OK);
    EXPECT(divvy_close(client), DIVVY_OK);

    // The heap's use once every client of this program is gone. Not checked here: a block whose last holder freed it
    // after the page's owner left (the child's block) counts as used until a participant takes the page over; the
    // daemon's audit (CClientTests) checks that no block is left allocated.
    divvy_client *last = NULL;
    EXPECT(divvy_connect(socket_path, "c-example-last", DIVVY_MODE_MEDIATED, &last), DIVVY_OK);
    if (last != NULL) {
        struct divvy_stats stats;
        EXPECT(divvy_stats(last, &stats), DIVVY_OK);
        expect_nothing_held(last, "a new client");
        say("end: the heap uses %" PRIu64 " bytes, %u clients connected", stats.heap_bytes_used, stats.clients);
        divvy_close(last);
    }
    if (failures == 0) {
        say("OK");
        return 0;
    }
    say("FAILED: %d checks", failures);
    return 1;
}

static int run_no_daemon(const char *socket_path) {
    divvy_client *client = (divvy_client *)(uintptr_t)1;
    EXPECT(divvy_connect(socket_path, "c-example", DIVVY_MODE_ANY, &client), DIVVY_ENO_DAEMON);
    CHECK(client == NULL, "a failed divvy_connect sets *out to NULL");
    CHECK(strstr(divvy_last_error_message(), socket_path) != NULL, "the message names the path: '%s'",
          divvy_last_error_message());
    say("no daemon: %s", divvy_last_error_message());
    say(failures == 0 ? "OK" : "FAILED");
    return failures == 0 ? 0 : 1;
}

static int run_daemon_gone(const char *socket_path, int mode) {
    divvy_client *client = NULL;
    int result = divvy_connect(socket_path, "c-example-gone", mode, &client);
    if (result != DIVVY_OK) {
        fail("divvy_connect: %s (%s)", divvy_strerror(result), divvy_last_error_message());
        return 1;
    }
    divvy_handle_t handle = no_handle;
    void *pointer = NULL;
    EXPECT(divvy_alloc(client, 64, &handle, &pointer), DIVVY_OK);
    say("READY");
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL) {
        fail("no go-ahead on stdin");
    }
    // Calls that need the daemon fail cleanly: shutting down (while it drains) or gone.
    int code = divvy_ping(client);
    CHECK(is_one_of(code, DIVVY_EDAEMON_GONE, DIVVY_ESHUTTING_DOWN), "ping after the daemon stopped: %d (%s)", code,
          divvy_strerror(code));
    code = divvy_ping(client);
    CHECK(code == DIVVY_EDAEMON_GONE, "the second ping: %d (%s; %s)", code, divvy_strerror(code),
          divvy_last_error_message());
    code = divvy_stats(client, &(struct divvy_stats){0});
    CHECK(code == DIVVY_EDAEMON_GONE, "stats: %d (%s)", code, divvy_strerror(code));
    code = divvy_reconnect(client);
    CHECK(code == DIVVY_ENO_DAEMON, "reconnect with no daemon: %d (%s; %s)", code, divvy_strerror(code),
          divvy_last_error_message());
    code = divvy_alloc(client, 64, &handle, &pointer);
    CHECK(code == DIVVY_EDAEMON_GONE, "alloc on the disconnected client: %d (%s)", code, divvy_strerror(code));
    // A request-level failure of a batch free reaches every handle's result.
    divvy_handle_t handles[3] = {handle, {handle.low + 1, handle.high}, {handle.low + 2, handle.high}};
    int results[3] = {-1, -1, -1};
    int released[3] = {-1, -1, -1};
    code = divvy_free_batch(client, handles, 3, results, released);
    CHECK(code == DIVVY_EDAEMON_GONE && results[0] == code && results[1] == code && results[2] == code &&
              released[0] == 0 && released[1] == 0 && released[2] == 0,
          "free_batch on the disconnected client: %d, results %d %d %d", code, results[0], results[1], results[2]);
    EXPECT(divvy_close(client), DIVVY_OK);
    say(failures == 0 ? "OK" : "FAILED");
    return failures == 0 ? 0 : 1;
}

// Connects in `mode` and expects `expected` (a divvy_error number; 0: success, then prints the granted mode).
static int run_expect_connect(const char *socket_path, int mode, int expected) {
    divvy_client *client = NULL;
    int code = divvy_connect(socket_path, "c-example-connect", mode, &client);
    CHECK(code == expected, "divvy_connect(%s): %d (%s; %s), expected %d (%s)", mode_name(mode), code,
          divvy_strerror(code), divvy_last_error_message(), expected, divvy_strerror(expected));
    if (code == DIVVY_OK) {
        int granted = -1;
        EXPECT(divvy_client_info(client, &granted, NULL), DIVVY_OK);
        say("connected: %s", mode_name(granted));
        divvy_close(client);
    } else {
        CHECK(client == NULL, "a failed divvy_connect sets *out to NULL");
        say("refused: %s: %s", divvy_strerror(code), divvy_last_error_message());
    }
    say(failures == 0 ? "OK" : "FAILED");
    return failures == 0 ? 0 : 1;
}

// Against a daemon with a small quota (expected DIVVY_EQUOTA_EXCEEDED) or a small heap (DIVVY_EHEAP_FULL): allocates
// 1000-byte blocks until `expected`, checks that the refusal changed nothing and that a batch beyond the limit
// allocates none, frees everything and allocates as many again.
#define QUOTA_MAX_BLOCKS 4096
// A small size class: direct clients get whole pages under the quota, and blocks of a small class fill them.
#define QUOTA_BLOCK 1000
static int run_fill(const char *socket_path, int mode, int expected, const char *spec_name) {
    divvy_client *client = NULL;
    int code = divvy_connect(socket_path, "c-example-quota", mode, &client);
    if (code != DIVVY_OK) {
        fail("divvy_connect: %s (%s)", divvy_strerror(code), divvy_last_error_message());
        return 1;
    }
    int granted = -1;
    EXPECT(divvy_client_info(client, &granted, NULL), DIVVY_OK);
    static divvy_handle_t handles[QUOTA_MAX_BLOCKS];
    size_t count = 0;
    while (count < QUOTA_MAX_BLOCKS) {
        void *pointer = NULL;
        code = divvy_alloc(client, QUOTA_BLOCK, &handles[count], &pointer);
        if (code != DIVVY_OK) break;
        write_pattern(pointer, QUOTA_BLOCK, count);
        count++;
    }
    CHECK(code == expected, "allocating until refused ended with %d (%s; %s), expected %d", code,
          divvy_strerror(code), divvy_last_error_message(), expected);
    CHECK(count > 0 && count < QUOTA_MAX_BLOCKS, "%zu blocks fit in the quota", count);
    CHECK(strstr(divvy_last_error_message(), spec_name) != NULL, "the message: '%s'", divvy_last_error_message());
    struct divvy_stats before, after;
    usleep(150 * 1000); /* heap figures may be up to 100 ms old: let them catch up with the allocations */
    EXPECT(divvy_stats(client, &before), DIVVY_OK);
    divvy_handle_t extra = no_handle;
    EXPECT(divvy_alloc(client, QUOTA_BLOCK, &extra, NULL), expected);
    divvy_handle_t batch[8];
    EXPECT(divvy_alloc_batch(client, QUOTA_BLOCK, 8, batch), expected);
    usleep(150 * 1000);
    EXPECT(divvy_stats(client, &after), DIVVY_OK);
    CHECK(after.bytes_held == before.bytes_held && after.blocks_held == before.blocks_held &&
              after.heap_bytes_used == before.heap_bytes_used,
          "the refusals changed the holdings (%" PRIu64 " → %" PRIu64 " bytes in use)", before.heap_bytes_used,
          after.heap_bytes_used);
    for (size_t i = 0; i < count; i++) {
        void *pointer = NULL;
        EXPECT(divvy_pointer(client, handles[i], &pointer), DIVVY_OK);
        if (pointer != NULL) CHECK(check_pattern(pointer, QUOTA_BLOCK, i) == SIZE_MAX, "block %zu was overwritten", i);
        EXPECT(divvy_free(client, handles[i], NULL), DIVVY_OK);
    }
    expect_nothing_held(client, "after freeing");
    // The room is back: the same number of blocks fits again, here as batches of at most 8.
    size_t again = 0;
    while (again < count) {
        size_t chunk = count - again < 8 ? count - again : 8;
        EXPECT(divvy_alloc_batch(client, QUOTA_BLOCK, chunk, batch), DIVVY_OK);
        EXPECT(divvy_free_batch(client, batch, chunk, NULL, NULL), DIVVY_OK);
        again += chunk;
    }
    say("fill: %zu blocks of %d bytes fit (%s), then %s; nothing changed by the refusals", count, QUOTA_BLOCK,
        mode_name(granted), spec_name);
    divvy_close(client);
    say(failures == 0 ? "OK" : "FAILED");
    return failures == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    // A child that dies must not kill the parent with SIGPIPE; write errors are checked instead.
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 4 && strcmp(argv[1], "--child") == 0) {
        return run_child(argv[2], parse_mode(argv[3]));
    }
    if (argc == 3 && strcmp(argv[1], "no-daemon") == 0) {
        return run_no_daemon(argv[2]);
    }
    const char *socket_path = NULL;
    int mode = DIVVY_MODE_ANY;
    int child_mode = -1;
    const char *scenario = "all";
    int expected = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "daemon-gone") == 0 || strcmp(argv[i], "quota") == 0 || strcmp(argv[i], "heap-full") == 0) {
            scenario = argv[i];
        } else if (strcmp(argv[i], "expect-connect") == 0 && i + 1 < argc) {
            scenario = argv[i];
            expected = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
            socket_path = argv[++i];
        } else if (strcmp(argv[i], "--mode") == 0 && i + 1 < argc) {
            mode = parse_mode(argv[++i]);
        } else if (strcmp(argv[i], "--child-mode") == 0 && i + 1 < argc) {
            child_mode = parse_mode(argv[++i]);
        } else {
            fprintf(stderr,
                    "usage: %s [--socket PATH] [--mode any|direct|mediated] [--child-mode any|direct|mediated]\n"
                    "       %s daemon-gone|quota|heap-full [--socket PATH] [--mode M]\n"
                    "       %s expect-connect CODE [--socket PATH] [--mode M]\n"
                    "       %s no-daemon PATH\n",
                    argv[0], argv[0], argv[0], argv[0]);
            return 2;
        }
    }
    if (socket_path == NULL) socket_path = getenv("DIVVY_SOCKET");
    if (socket_path == NULL) {
        fprintf(stderr, "%s: pass --socket PATH or set DIVVY_SOCKET (the child process needs the path)\n", argv[0]);
        return 2;
    }
    if (strcmp(scenario, "daemon-gone") == 0) return run_daemon_gone(socket_path, mode);
    if (strcmp(scenario, "quota") == 0) return run_fill(socket_path, mode, DIVVY_EQUOTA_EXCEEDED, "quotaExceeded");
    if (strcmp(scenario, "heap-full") == 0) return run_fill(socket_path, mode, DIVVY_EHEAP_FULL, "heapFull");
    if (strcmp(scenario, "expect-connect") == 0) return run_expect_connect(socket_path, mode, expected);
    return run_all(socket_path, mode, child_mode < 0 ? mode : child_mode);
}
