// The C half of libdivvy's ABI: the error descriptions and the thread-local last-error message. Everything else
// is Swift (`@_cdecl` functions in Sources/DivvyC/DivvyC.swift) over the DivvyClient library.
#include "divvy_c_internal.h"

#include <string.h>

// Thread-local: each thread sees the message of its own last failing call. Zero-initialised: "" until then.
static _Thread_local char divvy_c_last_error[DIVVY_C_LAST_ERROR_CAPACITY];

void divvy_c_set_last_error(const char *message, size_t length) {
    if (message == NULL) {
        length = 0;
    }
    if (length >= DIVVY_C_LAST_ERROR_CAPACITY) {
        length = DIVVY_C_LAST_ERROR_CAPACITY - 1;
        // Do not cut a UTF-8 sequence in two: back up over continuation bytes (10xxxxxx) to a lead byte.
        while (length > 0 && (((unsigned char)message[length]) & 0xC0) == 0x80) {
            length--;
        }
    }
    if (length > 0) {
        memcpy(divvy_c_last_error, message, length);
    }
    divvy_c_last_error[length] = '\0';
}

const char *divvy_last_error_message(void) {
    return divvy_c_last_error;
}

const char *divvy_strerror(int code) {
    switch (code) {
    case DIVVY_OK: return "success";
    case DIVVY_EMALFORMED_FRAME: return "malformed frame: the daemon could not parse a request (connection closed)";
    case DIVVY_EUNSUPPORTED_VERSION: return "unsupported protocol version: the daemon and this library share none";
    case DIVVY_EUNKNOWN_MESSAGE_TYPE: return "unknown message type: the daemon does not know this request";
    case DIVVY_EFRAME_TOO_LARGE: return "frame too large (connection closed)";
    case DIVVY_ENOT_AUTHORIZED: return "not authorized: the daemon's policy does not admit this uid/gid";
    case DIVVY_EHANDSHAKE_REQUIRED: return "handshake required before this request";
    case DIVVY_EWRONG_MODE: return "wrong mode: not available in this mode, or direct mode not permitted";
    case DIVVY_EQUOTA_EXCEEDED: return "quota exceeded: this client may not hold more";
    case DIVVY_EHEAP_FULL: return "heap full: the shared heap has no room";
    case DIVVY_EUNSUPPORTED_SIZE: return "unsupported size: 0 or larger than the largest size class";
    case DIVVY_EINVALID_HANDLE: return "invalid handle: not a block of the data area";
    case DIVVY_EMISALIGNED_HANDLE: return "misaligned handle: not the start of a block";
    case DIVVY_ESTALE_HANDLE: return "stale handle: the block was freed since";
    case DIVVY_EDOUBLE_FREE: return "double free: the block is already free";
    case DIVVY_ENOT_HOLDER: return "not holder: this client does not hold the block";
    case DIVVY_EBATCH_TOO_LARGE: return "batch count is 0 or larger than DIVVY_MAX_BATCH";
    case DIVVY_EADMIN_REQUIRED: return "admin required: the operation needs an admin uid/gid";
    case DIVVY_ENO_SUCH_CLIENT: return "no such client";
    case DIVVY_ETOO_MANY_CLIENTS: return "too many clients: the daemon serves as many as it may";
    case DIVVY_ESHUTTING_DOWN: return "the daemon is shutting down";
    case DIVVY_EINTERNAL_ERROR: return "internal error in the daemon (the request had no effect)";
    case DIVVY_EINVALID_PARTICIPANT: return "invalid participant (direct mode)";
    case DIVVY_EDIRECT_UNAVAILABLE: return "direct mode unavailable: every heap participant slot is taken";
    case DIVVY_EALREADY_HOLDER: return "this client already holds the block (free it before adopting it again)";
    case DIVVY_EFOREIGN_HANDLE: return "foreign handle: issued by another heap (from before a daemon restart?)";
    case DIVVY_EBAD_SHARE_TOKEN: return "bad share token: not a live token for this handle (ask a holder to share it)";
    case DIVVY_ENO_DAEMON: return "no daemon: nothing listens at the socket path (start divvyd or set DIVVY_SOCKET)";
    case DIVVY_EDAEMON_GONE: return "the daemon is gone: call divvy_reconnect";
    case DIVVY_ETIMED_OUT: return "timed out waiting for the daemon";
    case DIVVY_ESYSTEM: return "a system call failed";
    case DIVVY_EINVAL: return "invalid argument";
    case DIVVY_EPROTOCOL: return "protocol violation: the daemon's reply made no sense";
    default: return "unknown divvy error code";
    }
}
