/*
 * divvy.h — the C client of divvyd, the Divvy shared-memory allocator daemon.
 *
 * Link with libdivvy:   cc prog.c $(pkg-config --cflags --libs divvy)
 * or, from a build dir: cc prog.c -I<src>/Sources/CDivvyC/include -L<dir> -ldivvy -Wl,-rpath,<dir>
 *
 * A process connects to the daemon (divvy_connect), allocates blocks of the daemon's shared memory
 * (divvy_alloc), reads and writes them through ordinary pointers, and passes a block to another process by
 * sending its 128-bit handle (divvy_handle_t: two uint64_t words) and a share token (divvy_share: one
 * uint64_t, for one adopter) by any means (a pipe, a socket, argv, a file). The other process adopts the handle
 * with the token (divvy_adopt): the block then has two holders and stays alive until both freed it (divvy_free).
 * Handles are predictable; the token is what lets another process in, once.
 *
 * ABI version 2 (SONAME libdivvy.so.1, symbol version DIVVY_1) — a breaking change from ABI 1 (libdivvy.so.0,
 * DIVVY_0): handles were uint64_t and are now divvy_handle_t, passed and returned by value (or through a
 * divvy_handle_t pointer where ABI 1 used a uint64_t pointer); DIVVY_MAX_BATCH went from 4096 to 4093; the code
 * DIVVY_EFOREIGN_HANDLE was added; divvy_share returns a share token and divvy_adopt takes one
 * (DIVVY_EBAD_SHARE_TOKEN). Programs built against ABI 1 keep loading libdivvy.so.0, which speaks protocol
 * version 1 and is refused (DIVVY_EUNSUPPORTED_VERSION) by a daemon speaking protocol version 2 only. Rebuild
 * them against this header: every uint64_t that held a handle becomes a divvy_handle_t.
 *
 * Errors
 *   Every function except divvy_strerror and divvy_last_error_message returns an int: DIVVY_OK (0) on success,
 *   otherwise one of the divvy_error codes below (codes 1..99 are the daemon's protocol error codes, the same
 *   numbers as on the wire — a newer daemon may send codes this header does not name; codes from 100 are raised
 *   on the client side). A failing call also stores a message for people in a thread-local buffer, read with
 *   divvy_last_error_message(). Output parameters are written only on success unless stated otherwise.
 *   Nothing here aborts the process on bad input: NULL where a pointer is required gives DIVVY_EINVAL, a stale
 *   or foreign handle gives the daemon's code (DIVVY_ESTALE_HANDLE, DIVVY_ENOT_HOLDER, ...), and a daemon that
 *   died gives DIVVY_EDAEMON_GONE on the next call that needs it (divvy_reconnect to go on; a direct client
 *   allocates and frees in shared memory without the daemon until its page lease runs out). As in any C API,
 *   pointers that are not NULL must be valid: a closed client, a string without its terminator or an array
 *   shorter than its count is undefined behaviour.
 *
 * Threads
 *   A divvy_client is not thread-safe: use one client per thread (or serialise every call on a client with your
 *   own lock). Different clients may be used concurrently from different threads. Blocks themselves are plain
 *   shared memory: any thread of any process may read and write them; synchronising those accesses is yours.
 *   A handle allocated through one client may be freed through another client only after that client adopted it.
 *
 * Processes
 *   A client belongs to the process that connected it. After fork(), the child must not use the parent's client
 *   (not even divvy_close); it connects its own.
 *
 * Lifetime
 *   Blocks a client still holds when it closes (or when its process dies) are released by the daemon. A pointer
 *   to a block is valid while some holder in this process holds it and the client that produced it is open.
 */
#ifndef DIVVY_H
#define DIVVY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this header's ABI: 2 since handles are 128 bits (libdivvy.so.1); 1 was libdivvy.so.0. */
#define DIVVY_ABI_VERSION 2

/* The most handles one divvy_alloc_batch / divvy_free_batch call takes (the protocol's batch limit: the most
   16-byte handles one frame carries). */
#define DIVVY_MAX_BATCH 4093

/* The longest client name the daemon keeps, in bytes (longer names are cut). */
#define DIVVY_MAX_NAME_LENGTH 255

/* A connection to divvyd. Opaque: created by divvy_connect, destroyed by divvy_close. */
typedef struct divvy_client divvy_client;

/*
 * A block's handle: 128 bits that name the same block in every process attached to the same daemon (and heap).
 * Treat it as opaque: copy it, send it (both words), compare it (both words), never make one up. The layout is the
 * protocol's (Protocol/PROTOCOL.md, section 8): low bits 0-47 are the block's data-area offset / 16, low bits
 * 48-63 and high bits 0-31 its generation (48 bits, never reused), high bits 32-63 the id of the heap that issued
 * it. A handle from another heap (kept from before the daemon restarted) gives DIVVY_EFOREIGN_HANDLE. The zero
 * handle {0, 0} is never valid: use it for "no handle".
 */
typedef struct divvy_handle {
    uint64_t low;
    uint64_t high;
} divvy_handle_t;

/* Access modes for divvy_connect. */
enum divvy_mode {
    /* Direct when the daemon's policy allows it and a heap participant slot is free, mediated otherwise (the usual
       choice). */
    DIVVY_MODE_ANY = 0,
    /* The fast path: the whole region is mapped and blocks are allocated and freed in shared memory with no
       system call. Refused (DIVVY_EWRONG_MODE) unless the daemon's policy grants direct access to this uid/gid, and
       (DIVVY_EDIRECT_UNAVAILABLE) while every participant slot of the daemon's heap is taken. */
    DIVVY_MODE_DIRECT = 1,
    /* Every allocate/free/adopt is a round trip to the daemon; only the data area is mapped. */
    DIVVY_MODE_MEDIATED = 2
};

/* Error codes: what every function returns (0 = success). */
typedef enum divvy_error {
    DIVVY_OK = 0,

    /* --- The daemon's protocol error codes (Protocol/PROTOCOL.md, "Error codes"; same numbers) --------------- */
    /* The daemon could not parse a frame this client sent (a bug in this library). The connection is closed. */
    DIVVY_EMALFORMED_FRAME = 1,
    /* The daemon speaks no protocol version this library speaks. The connection is closed. */
    DIVVY_EUNSUPPORTED_VERSION = 2,
    /* The daemon does not know the request (an older daemon). */
    DIVVY_EUNKNOWN_MESSAGE_TYPE = 3,
    /* A frame was too large for the daemon (a bug in this library). The connection is closed. */
    DIVVY_EFRAME_TOO_LARGE = 4,
    /* The daemon's policy does not admit this process's uid/gid. The connection is closed. */
    DIVVY_ENOT_AUTHORIZED = 5,
    /* A request came before the handshake finished (a bug in this library). */
    DIVVY_EHANDSHAKE_REQUIRED = 6,
    /* The request is not available in this mode, or direct mode was asked for and not permitted. */
    DIVVY_EWRONG_MODE = 7,
    /* The request would exceed this client's byte quota (or direct page allowance). Nothing changed. */
    DIVVY_EQUOTA_EXCEEDED = 8,
    /* The shared heap has no room for the request. Nothing changed. */
    DIVVY_EHEAP_FULL = 9,
    /* The size is 0 or larger than the largest block the heap serves (its extent area). Nothing changed. */
    DIVVY_EUNSUPPORTED_SIZE = 10,
    /* The handle does not name a block of the data area. Nothing changed. */
    DIVVY_EINVALID_HANDLE = 11,
    /* The handle's offset is not the start of a block. Nothing changed. */
    DIVVY_EMISALIGNED_HANDLE = 12,
    /* The block was freed (and maybe reused) since the handle was made. Nothing changed. */
    DIVVY_ESTALE_HANDLE = 13,
    /* The block is already free. Nothing changed. */
    DIVVY_EDOUBLE_FREE = 14,
    /* The block is live but this client does not hold it (adopt it first). Nothing changed. */
    DIVVY_ENOT_HOLDER = 15,
    /* A batch count is 0 or larger than DIVVY_MAX_BATCH. Nothing changed. */
    DIVVY_EBATCH_TOO_LARGE = 16,
    /* An admin operation needs an admin uid/gid (not used by this header's calls). */
    DIVVY_EADMIN_REQUIRED = 17,
    /* An admin operation named a client that is not connected (not used by this header's calls). */
    DIVVY_ENO_SUCH_CLIENT = 18,
    /* The daemon serves as many clients as it is configured to. The connection is closed. */
    DIVVY_ETOO_MANY_CLIENTS = 19,
    /* The daemon is shutting down and takes no new work. */
    DIVVY_ESHUTTING_DOWN = 20,
    /* The daemon failed in a way that is not the client's fault; the request had no effect. */
    DIVVY_EINTERNAL_ERROR = 21,
    /* A direct-mode participant problem (a bug in this library or a daemon mismatch). */
    DIVVY_EINVALID_PARTICIPANT = 22,
    /* DIVVY_MODE_DIRECT was asked for and is permitted, but every participant slot of the daemon's heap is taken.
       Connect with DIVVY_MODE_ANY (served mediated then) or DIVVY_MODE_MEDIATED, or retry later. */
    DIVVY_EDIRECT_UNAVAILABLE = 23,
    /* divvy_adopt of a block this client already holds (a client holds a block once); nothing changed. */
    DIVVY_EALREADY_HOLDER = 24,
    /* The handle was issued by another heap than the daemon's (typically kept from before the daemon restarted);
       the block it named is gone. Nothing changed. */
    DIVVY_EFOREIGN_HANDLE = 25,
    /* divvy_adopt (mediated client) with a share token that does not let this client adopt this handle: never
       issued (0 never is), already used, issued for another handle (or an earlier use of this block), or dead
       because the client that got it from divvy_share freed the block or disconnected. Nothing changed: ask a
       holder for a new token (divvy_share). */
    DIVVY_EBAD_SHARE_TOKEN = 26,

    /* --- Client-side codes --------------------------------------------------------------------------------- */
    /* Nothing listens at the socket path: divvyd is not running there (start it, or set DIVVY_SOCKET). */
    DIVVY_ENO_DAEMON = 100,
    /* The daemon went away or closed this connection; blocks of the connection are gone. divvy_reconnect. */
    DIVVY_EDAEMON_GONE = 101,
    /* No reply from the daemon in time (10 s). The connection stays open. */
    DIVVY_ETIMED_OUT = 102,
    /* A system call failed (connecting, mapping the region); the message names it and errno's text. */
    DIVVY_ESYSTEM = 103,
    /* A bad argument: a NULL pointer where one is required, an unknown mode, a size that does not fit. Nothing
       was sent to the daemon and nothing changed. */
    DIVVY_EINVAL = 104,
    /* The daemon's reply made no sense for the request (a version mismatch or a bug). */
    DIVVY_EPROTOCOL = 105
} divvy_error;

/* This client's usage and the heap's totals (divvy_stats). A struct tag only: `divvy_stats` is also the function. */
struct divvy_stats {
    /* Bytes this client holds (sum of its blocks' sizes): through the daemon, plus, for a direct client, the
       blocks its heap participant holds in shared memory (counted by the library when divvy_stats is called). */
    uint64_t bytes_held;
    /* Blocks this client holds (see bytes_held). */
    uint64_t blocks_held;
    /* The most bytes this client may hold. */
    uint64_t quota_bytes;
    /* Bytes in use in the whole heap (all clients), as of at most 100 ms ago (the daemon counts it that often). */
    uint64_t heap_bytes_used;
    /* Bytes free in the whole heap (as old as heap_bytes_used). */
    uint64_t heap_bytes_free;
    /* Pages this client may own (direct clients; 0 for mediated ones). */
    uint32_t page_allowance;
    /* Clients connected to the daemon, this one included. */
    uint32_t clients;
};

/* What divvy_share reports about a block. */
typedef struct divvy_share_info {
    /* The block's handle (what another process passes to divvy_adopt). */
    divvy_handle_t handle;
    /* The block's offset from the start of the data area. */
    uint64_t offset;
    /* The block's usable size in bytes. */
    uint64_t block_size;
    /* How many clients hold the block now (each client once). */
    uint32_t holders;
} divvy_share_info;

/* --- Connecting ------------------------------------------------------------------------------------------------ */

/*
 * Connects to divvyd, performs the handshake and maps the daemon's shared region.
 *
 *   socket_path  the daemon's socket; NULL: $DIVVY_SOCKET, else the default ($XDG_RUNTIME_DIR/divvy/divvyd.sock,
 *                or /run/divvy/divvyd.sock as root). Copied.
 *   name         a name for this client in `divvyctl clients` (at most DIVVY_MAX_NAME_LENGTH bytes are kept);
 *                NULL: "c-client". Copied.
 *   mode         a divvy_mode.
 *   out          receives the new client (NULL on failure). Required.
 *
 * Returns DIVVY_OK; DIVVY_EINVAL (out NULL, unknown mode, a socket path of 0 or more than 107 bytes);
 * DIVVY_ENO_DAEMON; DIVVY_ENOT_AUTHORIZED,
 * DIVVY_EWRONG_MODE, DIVVY_EDIRECT_UNAVAILABLE, DIVVY_EUNSUPPORTED_VERSION, DIVVY_ETOO_MANY_CLIENTS (the daemon
 * refused);
 * DIVVY_ETIMED_OUT; DIVVY_ESYSTEM; DIVVY_EPROTOCOL.
 * Ownership: the caller owns *out and must pass it to divvy_close exactly once.
 */
int divvy_connect(const char *socket_path, const char *name, int mode, divvy_client **out);

/*
 * Ends the connection and destroys the client: a direct client leaves the heap, the daemon releases every
 * block the client still holds (other holders keep theirs), and the client's memory is freed. Pointers into
 * blocks obtained through this client become invalid. `client` may be NULL (nothing happens).
 * Always returns DIVVY_OK.
 */
int divvy_close(divvy_client *client);

/*
 * Closes the connection (if still open) and connects again with the same socket path, name and mode. Blocks
 * held through the old connection are gone (the daemon released them); their handles and pointers are invalid.
 * The usual answer to DIVVY_EDAEMON_GONE. Returns as divvy_connect (DIVVY_EINVAL: client NULL). On failure the
 * client stays valid but disconnected (calls give DIVVY_EDAEMON_GONE); retry, or divvy_close it.
 */
int divvy_reconnect(divvy_client *client);

/*
 * The mode the daemon granted (DIVVY_MODE_DIRECT or DIVVY_MODE_MEDIATED) into *mode, and this connection's
 * client id (as `divvyctl clients` shows it) into *client_id. Either output may be NULL. No daemon round trip.
 * Returns DIVVY_OK; DIVVY_EINVAL (client NULL).
 */
int divvy_client_info(const divvy_client *client, int *mode, uint32_t *client_id);

/* --- Blocks ---------------------------------------------------------------------------------------------------- */

/*
 * Allocates a block of at least `size` bytes (the smallest size class that fits), held by this client.
 *
 *   handle   receives the block's handle. Required.
 *   pointer  receives the block's address in this process; may be NULL (use divvy_pointer later).
 *
 * The block's contents are unspecified (not zeroed). Returns DIVVY_OK; DIVVY_EINVAL (client or handle NULL);
 * DIVVY_EUNSUPPORTED_SIZE (0 or above the largest block: the extent area); DIVVY_EQUOTA_EXCEEDED; DIVVY_EHEAP_FULL;
 * DIVVY_EDAEMON_GONE. Ownership: the caller frees the handle with divvy_free (or closes the client).
 */
int divvy_alloc(divvy_client *client, size_t size, divvy_handle_t *handle, void **pointer);

/*
 * Drops this client's holding of `handle`. The block goes back to the heap when no holder is left.
 *
 *   released  receives 1 when this call released the block (no holder left), 0 when other holders remain;
 *             may be NULL.
 *
 * Returns DIVVY_OK; DIVVY_EINVAL (client NULL); DIVVY_EDOUBLE_FREE, DIVVY_ESTALE_HANDLE, DIVVY_ENOT_HOLDER,
 * DIVVY_EINVALID_HANDLE, DIVVY_EMISALIGNED_HANDLE, DIVVY_EFOREIGN_HANDLE (nothing changed); DIVVY_EDAEMON_GONE.
 */
int divvy_free(divvy_client *client, divvy_handle_t handle, int *released);

/*
 * Allocates `count` blocks of at least `size` bytes each, all or none (mediated clients: one round trip).
 *
 *   handles  an array of `count` elements that receives the handles. Required.
 *
 * Returns DIVVY_OK; DIVVY_EINVAL (client or handles NULL); DIVVY_EBATCH_TOO_LARGE (count 0 or above
 * DIVVY_MAX_BATCH); and the errors of divvy_alloc, in which case no block stays allocated.
 */
int divvy_alloc_batch(divvy_client *client, size_t size, size_t count, divvy_handle_t *handles);

/*
 * Frees `count` handles (mediated clients: one round trip). Each handle succeeds or fails on its own.
 *
 *   handles   an array of `count` handles. Required.
 *   results   an array of `count` elements, or NULL: results[i] receives DIVVY_OK when handles[i]'s holding was
 *             dropped, else that handle's error code (DIVVY_EDOUBLE_FREE, ...). On a request-level failure
 *             (DIVVY_EDAEMON_GONE, ...) every element receives that code.
 *   released  an array of `count` elements, or NULL: released[i] receives 1 when that free released the block
 *             (no holder left), else 0.
 *
 * Returns DIVVY_OK when every handle was freed; otherwise the first failing handle's code (the others may still
 * have been freed: see results), or the request-level code; DIVVY_EINVAL (client or handles NULL) and
 * DIVVY_EBATCH_TOO_LARGE (count 0 or above DIVVY_MAX_BATCH), with nothing freed and nothing written.
 */
int divvy_free_batch(
    divvy_client *client, const divvy_handle_t *handles, size_t count, int *results, int *released);

/* --- Passing blocks between processes --------------------------------------------------------------------------- */

/*
 * Lets one other process adopt a block this client holds: the daemon checks the holding, describes the block and
 * issues a share token. Send the handle and *token to the other process (by any means); its divvy_adopt needs
 * both. A token lets one client adopt once: call divvy_share once per adopter. It dies when it is used, when this
 * client stops holding the block (divvy_free, divvy_close), or when this client disconnects, so free your holding
 * only after the adopter says it adopted. A direct client's divvy_share also works for blocks it allocated in
 * shared memory.
 *
 *   token  receives the share token: random, never 0. Required.
 *   info   receives the description; may be NULL.
 *
 * Returns DIVVY_OK; DIVVY_EINVAL (client or token NULL); DIVVY_ENOT_HOLDER, DIVVY_ESTALE_HANDLE,
 * DIVVY_EINVALID_HANDLE, DIVVY_EMISALIGNED_HANDLE, DIVVY_EFOREIGN_HANDLE; DIVVY_EQUOTA_EXCEEDED (this client has as
 * many tokens outstanding as the daemon's max-share-tokens-per-client allows, 256 by default: tokens not used yet
 * for blocks it still holds); DIVVY_EDAEMON_GONE.
 */
int divvy_share(divvy_client *client, divvy_handle_t handle, uint64_t *token, divvy_share_info *info);

/*
 * Imports a block: takes a holding of a block another process shared (divvy_share) and passed the handle and
 * share token of. The block stays alive until every holder freed it.
 *
 *   token    the share token the sharer got for this handle. A mediated client's adopt uses it up; a direct
 *            client adopts in shared memory (which it may write anyway) and does not need it (pass it, or 0).
 *   pointer  receives the block's address in this process; may be NULL.
 *   size     receives the block's usable size; may be NULL.
 *
 * A client holds a block once: adopting a block it already holds gives DIVVY_EALREADY_HOLDER (nothing changed),
 * and one divvy_free drops its holding.
 *
 * Returns DIVVY_OK; DIVVY_EINVAL (client NULL); DIVVY_EBAD_SHARE_TOKEN (mediated: the token does not let this
 * client adopt this handle; nothing changed); DIVVY_ESTALE_HANDLE (the block was freed since the handle was
 * issued, reused or not: adopting never reports DIVVY_EDOUBLE_FREE, which is about frees), DIVVY_EINVALID_HANDLE,
 * DIVVY_EMISALIGNED_HANDLE, DIVVY_EFOREIGN_HANDLE, DIVVY_EALREADY_HOLDER, DIVVY_EQUOTA_EXCEEDED;
 * DIVVY_EDAEMON_GONE. Ownership: the caller frees the handle with divvy_free.
 */
int divvy_adopt(divvy_client *client, divvy_handle_t handle, uint64_t token, void **pointer, size_t *size);

/* --- Translation ------------------------------------------------------------------------------------------------ */

/*
 * The address of `handle`'s block in this process into *pointer. Direct clients check the handle against the
 * heap (a stale handle gives DIVVY_ESTALE_HANDLE, another heap's DIVVY_EFOREIGN_HANDLE); mediated clients, which
 * do not map the heap's metadata, can only check that it lies in the data area (DIVVY_EINVALID_HANDLE otherwise).
 * No daemon round trip.
 * Returns DIVVY_OK; DIVVY_EINVAL (client or pointer NULL); DIVVY_EINVALID_HANDLE, DIVVY_ESTALE_HANDLE,
 * DIVVY_EMISALIGNED_HANDLE, DIVVY_EFOREIGN_HANDLE; DIVVY_EDAEMON_GONE (the client is disconnected).
 */
int divvy_pointer(divvy_client *client, divvy_handle_t handle, void **pointer);

/*
 * The exact handle (with its generation) of the block that starts at `pointer` into *handle. Direct clients
 * check it against the heap (any allocated block). Mediated clients, which do not map the heap's metadata,
 * answer from the blocks this connection holds (each came through it: divvy_alloc, divvy_alloc_batch,
 * divvy_adopt). No daemon round trip.
 * Returns DIVVY_OK; DIVVY_EINVAL (client, pointer or handle NULL); DIVVY_EINVALID_HANDLE (not in the data area);
 * direct clients: DIVVY_EMISALIGNED_HANDLE (not the start of a block), DIVVY_ESTALE_HANDLE (no allocated block
 * there); mediated clients: DIVVY_ENOT_HOLDER (this connection holds no block there); DIVVY_EDAEMON_GONE
 * (disconnected).
 */
int divvy_handle_for_pointer(divvy_client *client, const void *pointer, divvy_handle_t *handle);

/* --- The daemon ------------------------------------------------------------------------------------------------- */

/*
 * This client's usage and the heap's totals, from the daemon, into *stats.
 * Returns DIVVY_OK; DIVVY_EINVAL (client or stats NULL); DIVVY_EDAEMON_GONE; DIVVY_ETIMED_OUT.
 */
int divvy_stats(divvy_client *client, struct divvy_stats *stats);

/*
 * A round trip to the daemon (is it there and answering?).
 * Returns DIVVY_OK; DIVVY_EINVAL (client NULL); DIVVY_EDAEMON_GONE; DIVVY_ETIMED_OUT.
 */
int divvy_ping(divvy_client *client);

/* --- Errors ----------------------------------------------------------------------------------------------------- */

/*
 * A short constant description of `code` ("stale handle: the block was freed since"), for any int: unknown
 * codes give "unknown divvy error code". Never NULL; static storage; thread-safe.
 */
const char *divvy_strerror(int code);

/*
 * The detail message of the last failing divvy call on the calling thread (what happened, to what, and what to
 * do), or "" if none failed yet. Never NULL. Thread-local: valid until the next failing call on this thread.
 */
const char *divvy_last_error_message(void);

/* --- Version ---------------------------------------------------------------------------------------------------- */

/*
 * The release of the loaded library, "MAJOR.MINOR.PATCH" (e.g. "0.2.0"); the same string as `divvyd --version`.
 * Never NULL; static storage; thread-safe. The library's SONAME follows its ABI, not its release: libdivvy.so.1
 * (ABI version 2, 128-bit handles; libdivvy.so.0 was ABI 1), and its functions carry the symbol version DIVVY_1.
 */
const char *divvy_version(void);

/*
 * The same release as one number, MAJOR * 10000 + MINOR * 100 + PATCH (0.2.0 gives 200): for comparisons such as
 * `divvy_version_number() >= 200`. Thread-safe.
 */
unsigned divvy_version_number(void);

#ifdef __cplusplus
}
#endif

#endif /* DIVVY_H */
