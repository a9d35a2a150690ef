#!/usr/bin/env python3
"""Generates the divvyd wire-protocol golden vectors (valid.json, invalid.json) in this directory.

This is a second, independent encoder of Protocol/PROTOCOL.md, written from the spec tables: the Swift tests
check that DivvyProtocol produces and accepts exactly these bytes. Run it with `python3 generate.py` after
changing the spec, then review the diff of the JSON files. Standard library only.
"""
import json
import os
import struct

MAGIC = 0x50595644
HEADER_SIZE = 24
MAX_FRAME_SIZE = 65536
MAX_BATCH = 4093  # the most 16-byte handles an allocatedBatch fits in one frame: (65512 - 12) // 16
HANDSHAKE_VERSION = 1  # header version of hello and the reply to it (PROTOCOL.md 6.1)
VERSION = 2  # header version of every other frame

# Message layouts: type name -> (code, [(field, kind)]). Kinds: u8 u16 u32 u64 bool str bytes handle u16[] u32[]
# handle[]. Arrays are a u32 count followed by the elements; str is u16 length + UTF-8; bytes is u32 length + raw
# bytes; a handle is 16 bytes: u64 low, u64 high.
MESSAGES = {
    "hello": (0x0001, [("minVersion", "u16"), ("maxVersion", "u16"), ("mode", "u8"), ("capabilities", "u32"),
                       ("name", "str")]),
    "welcome": (0x8001, [("version", "u16"), ("mode", "u8"), ("clientID", "u32"), ("quotaBytes", "u64"),
                         ("regionSize", "u64"), ("metadataOffset", "u64"), ("metadataSize", "u64"),
                         ("dataOffset", "u64"), ("dataSize", "u64"), ("pageSize", "u32"), ("pageKind", "u8"),
                         ("sizeClasses", "u32[]")]),
    "mapRegion": (0x0002, []),
    "region": (0x8002, [("access", "u8"), ("offset", "u64"), ("length", "u64")]),
    "join": (0x0003, [("participant", "u32")]),
    "joined": (0x8003, [("pageAllowance", "u32")]),
    "lease": (0x0004, [("pages", "u32")]),
    "leased": (0x8004, [("pageAllowance", "u32")]),
    "returnPages": (0x0005, [("pages", "u32")]),
    "returned": (0x8005, [("pageAllowance", "u32")]),
    "allocate": (0x0006, [("size", "u64")]),
    "allocated": (0x8006, [("handle", "handle"), ("blockSize", "u64")]),
    "free": (0x0007, [("handle", "handle")]),
    "freed": (0x8007, [("released", "bool")]),
    "allocateBatch": (0x0008, [("size", "u64"), ("count", "u32")]),
    "allocatedBatch": (0x8008, [("blockSize", "u64"), ("handles", "handle[]")]),
    "freeBatch": (0x0009, [("handles", "handle[]")]),
    "freedBatch": (0x8009, [("statuses", "u16[]")]),
    "share": (0x000A, [("handle", "handle")]),
    "shared": (0x800A, [("handle", "handle"), ("offset", "u64"), ("blockSize", "u64"), ("holders", "u32"),
                        ("token", "u64")]),
    "adopt": (0x000B, [("handle", "handle"), ("token", "u64")]),
    "adopted": (0x800B, [("handle", "handle"), ("blockSize", "u64")]),
    "stats": (0x000C, []),
    "statsReply": (0x800C, [("bytesHeld", "u64"), ("blocksHeld", "u64"), ("quotaBytes", "u64"),
                            ("pageAllowance", "u32"), ("heapBytesUsed", "u64"), ("heapBytesFree", "u64"),
                            ("clients", "u32")]),
    "ping": (0x000D, [("payload", "bytes")]),
    "pong": (0x800D, [("payload", "bytes")]),
    "goodbye": (0x000E, []),
    "farewell": (0x800E, []),
    "admin": (0x000F, [("op", "u8"), ("argument", "u32")]),
    "adminReply": (0x800F, [("op", "u8"), ("format", "u8"), ("body", "bytes")]),
    "shutdown": (0x8010, [("reason", "str")]),
    "error": (0x80FF, [("code", "u16"), ("requestType", "u16"), ("message", "str")]),
}
TYPE_CODES = {name: code for name, (code, _) in MESSAGES.items()}

ERROR_CODES = [
    "malformedFrame", "unsupportedVersion", "unknownMessageType", "frameTooLarge", "notAuthorized",
    "handshakeRequired", "wrongMode", "quotaExceeded", "heapFull", "unsupportedSize", "invalidHandle",
    "misalignedHandle", "staleHandle", "doubleFree", "notHolder", "batchTooLarge", "adminRequired", "noSuchClient",
    "tooManyClients", "shuttingDown", "internalError", "invalidParticipant", "directUnavailable",
    "alreadyHolder", "foreignHandle", "badShareToken",
]
CODE = {name: index + 1 for index, name in enumerate(ERROR_CODES)}

SCALARS = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q"}


def header(type_code, request_id, payload_length, version=VERSION, flags=0, magic=MAGIC):
    return struct.pack("<IHHQII", magic, version, type_code, request_id, payload_length, flags)


def encode_fields(type_name, fields):
    _, layout = MESSAGES[type_name]
    assert set(fields) == {name for name, _ in layout}, (type_name, fields)
    out = b""
    for name, kind in layout:
        value = fields[name]
        if kind in SCALARS:
            out += struct.pack(SCALARS[kind], int(value))
        elif kind == "handle":
            out += encode_handle(value)
        elif kind == "bool":
            out += bytes([1 if value else 0])
        elif kind == "str":
            data = value.encode("utf-8")
            out += struct.pack("<H", len(data)) + data
        elif kind == "bytes":
            data = bytes.fromhex(value)
            out += struct.pack("<I", len(data)) + data
        elif kind == "handle[]":
            out += struct.pack("<I", len(value)) + b"".join(encode_handle(v) for v in value)
        elif kind.endswith("[]"):
            element = SCALARS[kind[:-2]]
            out += struct.pack("<I", len(value)) + b"".join(struct.pack(element, int(v)) for v in value)
        else:
            raise ValueError(kind)
    return out


def encode_handle(value):
    return struct.pack("<QQ", int(value["low"]), int(value["high"]))


def frame(type_name, request_id, fields, version=VERSION):
    payload = encode_fields(type_name, fields)
    return header(TYPE_CODES[type_name], request_id, len(payload), version) + payload


def u64(value):
    """u64 fields are JSON strings (decimal) so that every JSON parser reads them exactly."""
    return str(value)


HEAP = 0x1D2C3B4A  # the heap id of the examples


def handle(index, generation, heap=HEAP):
    """A handle as PROTOCOL.md section 8 lays it out: index (48 bits) and generation (48 bits) and heap id (32)."""
    assert index < 1 << 48 and generation < 1 << 48 and heap < 1 << 32
    low = index | (generation & 0xFFFF) << 48
    high = generation >> 16 | heap << 32
    return {"low": u64(low), "high": u64(high)}


# ---------------------------------------------------------------------------------------------- valid vectors

valid = []


def add(name, type_name, request_id, fields, comment, version=None):
    if version is None:
        version = HANDSHAKE_VERSION if type_name in ("hello", "welcome") else VERSION
    valid.append({
        "name": name,
        "type": type_name,
        "typeCode": TYPE_CODES[type_name],
        "requestID": u64(request_id),
        "version": version,
        "fields": fields,
        "hex": frame(type_name, request_id, fields, version).hex(),
        "comment": comment,
    })


GIB = 1 << 30
add("hello-direct", "hello", 1,
    {"minVersion": 2, "maxVersion": 2, "mode": 1, "capabilities": 0, "name": "render-worker"},
    "a client asking for direct mode, speaking version 2 only; hello's header has version 1 (section 6.1)")
add("hello-version-1-only", "hello", 1,
    {"minVersion": 1, "maxVersion": 1, "mode": 2, "capabilities": 0, "name": "old-client"},
    "a version-1 client: well formed, and refused by a version-2 daemon with unsupportedVersion (semantic)")
add("hello-any-utf8-name", "hello", 1,
    {"minVersion": 1, "maxVersion": 3, "mode": 0, "capabilities": 0, "name": "caf\u00e9-\u6f22\u5b57-\U0001F600"},
    "mode any, a version range 1...3 and a name with 2-, 3- and 4-byte UTF-8 sequences")
add("hello-empty-name", "hello", 0,
    {"minVersion": 2, "maxVersion": 2, "mode": 2, "capabilities": 0, "name": ""},
    "mediated, empty name, request id 0 (allowed for requests)")
add("hello-name-at-limit", "hello", 2,
    {"minVersion": 2, "maxVersion": 2, "mode": 2, "capabilities": 0, "name": "n" * 255},
    "a name of exactly maxNameLength (255) bytes")
add("hello-capabilities", "hello", 3,
    {"minVersion": 2, "maxVersion": 2, "mode": 1, "capabilities": 0x80000001, "name": "future"},
    "unknown capability bits are carried, not rejected")
add("welcome-direct", "welcome", 1,
    {"version": 2, "mode": 1, "clientID": 7, "quotaBytes": u64(GIB), "regionSize": u64(4 * GIB + 2 * 1024 * 1024),
     "metadataOffset": u64(4096), "metadataSize": u64(2 * 1024 * 1024 - 4096), "dataOffset": u64(2 * 1024 * 1024),
     "dataSize": u64(4 * GIB), "pageSize": 65536, "pageKind": 0,
     "sizeClasses": [16, 32, 48, 64, 96, 128, 192, 256, 512, 1024, 4096, 65536]},
    "direct grant: 4 GiB data area after 2 MiB of metadata, base pages, 12 size classes")
add("welcome-mediated-huge", "welcome", 1,
    {"version": 2, "mode": 2, "clientID": 4294967295, "quotaBytes": u64(2**64 - 1), "regionSize": u64(8 * GIB),
     "metadataOffset": u64(0), "metadataSize": u64(1 << 30), "dataOffset": u64(1 << 30), "dataSize": u64(7 * GIB),
     "pageSize": 2097152, "pageKind": 2, "sizeClasses": []},
    "mediated grant on 2 MiB huge pages, maximal client id and quota, no size classes")
add("welcome-1g-pages", "welcome", 9,
    {"version": 2, "mode": 1, "clientID": 1, "quotaBytes": u64(0), "regionSize": u64(2 * GIB),
     "metadataOffset": u64(64), "metadataSize": u64(GIB - 64), "dataOffset": u64(GIB), "dataSize": u64(GIB),
     "pageSize": 1 << 30, "pageKind": 3, "sizeClasses": [1 << 20]},
    "page kind 3 (huge 1 GiB)")
add("welcome-thp", "welcome", 9,
    {"version": 2, "mode": 2, "clientID": 2, "quotaBytes": u64(1 << 20), "regionSize": u64(1 << 24),
     "metadataOffset": u64(0), "metadataSize": u64(1 << 16), "dataOffset": u64(1 << 16),
     "dataSize": u64((1 << 24) - (1 << 16)), "pageSize": 4096, "pageKind": 1, "sizeClasses": [64, 4096]},
    "page kind 1 (transparent huge pages)")
add("mapRegion", "mapRegion", 2, {}, "empty payload")
add("region-direct", "region", 2, {"access": 1, "offset": u64(0), "length": u64(4 * GIB + 2 * 1024 * 1024)},
    "read-write, the whole region (direct client); one fd rides along as SCM_RIGHTS")
add("region-mediated", "region", 2, {"access": 1, "offset": u64(2 * 1024 * 1024), "length": u64(4 * GIB)},
    "read-write, the data area only (mediated client)")
add("join", "join", 3, {"participant": 5}, "direct client joined participant slot 5")
add("joined", "joined", 3, {"pageAllowance": 16}, "participant may own 16 pages")
add("lease", "lease", 4, {"pages": 8}, "8 more pages wanted")
add("leased", "leased", 4, {"pageAllowance": 24}, "new total allowance 24")
add("returnPages", "returnPages", 5, {"pages": 4}, "4 pages given back")
add("returned", "returned", 5, {"pageAllowance": 20}, "allowance now 20")
add("allocate", "allocate", 6, {"size": u64(100)}, "allocate 100 bytes")
add("allocate-max-ids", "allocate", 2**64 - 1, {"size": u64(2**64 - 1)}, "maximal request id and size")
add("allocated", "allocated", 6, {"handle": handle(0x1234, 3), "blockSize": u64(128)},
    "handle: heap 0x1d2c3b4a, generation 3, data offset 0x1234 * 16 = 0x12340; block of 128 bytes")
add("allocated-all-bits", "allocated", 6,
    {"handle": {"low": u64(2**64 - 1), "high": u64(2**64 - 1)}, "blockSize": u64(2**64 - 1)},
    "every bit of the handle set: offset (2^48 - 1) * 16, generation 2^48 - 1, heap 0xffffffff")
add("allocated-high-generation", "allocated", 6, {"handle": handle(0xABCDEF012345, 0x123456789ABC, 0x80000001),
                                                   "blockSize": u64(64)},
    "a 48-bit offset index and a 48-bit generation split across both words (bits 0-15 in low, 16-47 in high)")
add("free", "free", 7, {"handle": handle(0x1234, 3)}, "free the block allocated above")
add("free-zero", "free", 7, {"handle": handle(0, 0, 0)},
    "the zero handle is well formed on the wire (the daemon answers invalidHandle)")
add("freed-released", "freed", 7, {"released": True}, "the block went back to the heap")
add("freed-still-held", "freed", 7, {"released": False}, "other holders remain")
add("allocateBatch", "allocateBatch", 8, {"size": u64(64), "count": 3}, "three 64-byte blocks, all or nothing")
add("allocatedBatch", "allocatedBatch", 8,
    {"blockSize": u64(64), "handles": [handle(0x10, 1), handle(0x14, 1), handle(0x18, 2)]},
    "three handles, data offsets 0x100, 0x140, 0x180")
add("freeBatch", "freeBatch", 9,
    {"handles": [handle(0x10, 1), handle(0x14, 1), handle(0x18, 1), handle(0, 0, 0)]},
    "four handles (the statuses below say what became of each)")
add("freedBatch", "freedBatch", 9, {"statuses": [0, 1, CODE["staleHandle"], CODE["invalidHandle"]]},
    "released, still held, staleHandle (13), invalidHandle (11)")
add("freedBatch-all-statuses", "freedBatch", 10,
    {"statuses": [0, 1] + [CODE[name] for name in ERROR_CODES[1:]] + [999]},
    "every status value incl. an unknown error code 999 (carried as is)")
add("share", "share", 11, {"handle": handle(0x20, 5)}, "share a held block")
add("shared", "shared", 11,
    {"handle": handle(0x20, 5), "offset": u64(0x200), "blockSize": u64(256), "holders": 2,
     "token": u64(0x8F3A_61C2_0D4E_B975)},
    "offset is the data-area offset (0x20 * 16); two holders now; the share token for one adopter")
add("adopt", "adopt", 12, {"handle": handle(0x20, 5), "token": u64(0x8F3A_61C2_0D4E_B975)},
    "adopt the shared block, redeeming the token from shared")
add("adopt-token-0", "adopt", 12, {"handle": handle(0x20, 5), "token": u64(0)},
    "token 0 is never issued: well formed; a mediated client gets badShareToken")
add("adopt-foreign", "adopt", 12, {"handle": handle(0x20, 5, 0x0BADBEEF), "token": u64(0x8F3A_61C2_0D4E_B975)},
    "a handle from another heap (heap id 0x0badbeef): well formed; the daemon answers foreignHandle")
add("adopted", "adopted", 12, {"handle": handle(0x20, 5), "blockSize": u64(256)}, "adopted")
add("stats", "stats", 13, {}, "empty payload")
add("statsReply", "statsReply", 13,
    {"bytesHeld": u64(4096), "blocksHeld": u64(32), "quotaBytes": u64(GIB), "pageAllowance": 20,
     "heapBytesUsed": u64(10 * 1024 * 1024), "heapBytesFree": u64(4 * GIB - 10 * 1024 * 1024), "clients": 3},
    "a client's accounting and heap totals")
add("ping", "ping", 14, {"payload": "0001027f80ff"}, "six payload bytes")
add("pong", "pong", 14, {"payload": "0001027f80ff"}, "the same bytes echoed")
add("ping-empty", "ping", 15, {"payload": ""}, "empty payload")
add("goodbye", "goodbye", 16, {}, "empty payload")
add("farewell", "farewell", 16, {}, "empty payload; the daemon closes next")
for op, name in enumerate(["status", "classes", "clients", "verify", "config", "disconnect", "metrics"], start=1):
    add("admin-" + name, "admin", 100 + op, {"op": op, "argument": 42 if name == "disconnect" else 0},
        "admin op %d (%s)%s" % (op, name, ", disconnect client 42" if name == "disconnect" else ""))
add("adminReply-json", "adminReply", 101, {"op": 1, "format": 0, "body": '{"clients":3}'.encode().hex()},
    'status as JSON: {"clients":3}')
add("adminReply-text", "adminReply", 107, {"op": 7, "format": 1, "body": "divvy.alloc.failures 0\n".encode().hex()},
    "metrics as text")
add("adminReply-empty", "adminReply", 106, {"op": 6, "format": 1, "body": ""}, "disconnect, empty body")
# Admin paging (PROTOCOL.md, "Admin paging"): the argument of `clients` is the id the page starts after; an empty
# array ends the listing.
add("admin-clients-after", "admin", 108, {"op": 3, "argument": 0xFFFFFFFE},
    "admin op 3 (clients), the page after client 4294967294")
add("adminReply-clients-last-page", "adminReply", 108, {"op": 3, "format": 0, "body": "[]".encode().hex()},
    "clients: an empty page, the end of the listing")
add("shutdown", "shutdown", 0, {"reason": "SIGTERM: daemon stopping"}, "unsolicited, request id 0")
add("shutdown-empty", "shutdown", 0, {"reason": ""}, "empty reason")
for code_name in ERROR_CODES:
    add("error-" + code_name, "error", 6,
        {"code": CODE[code_name], "requestType": TYPE_CODES["allocate"], "message": code_name + " for allocate"},
        "error %d (%s) answering an allocate" % (CODE[code_name], code_name))
add("error-unsupportedVersion-hello", "error", 1,
    {"code": CODE["unsupportedVersion"], "requestType": TYPE_CODES["hello"],
     "message": "client speaks protocol 1…1; this daemon speaks 2…2"},
    "the refusal of a version-1 hello: header version 1, as every reply to hello (section 6.1)",
    version=HANDSHAKE_VERSION)
add("stats-header-version-1", "stats", 13, {}, "header version 1 is accepted on any frame (check 4 accepts 1 and 2)",
    version=HANDSHAKE_VERSION)
add("error-unknown-request", "error", 0, {"code": CODE["malformedFrame"], "requestType": 0, "message": "short"},
    "an error answering a frame whose header could not be read: request id 0, requestType 0")
add("error-unknown-code", "error", 5, {"code": 999, "requestType": 0x1234, "message": ""},
    "an unknown error code and request type are carried as is (forward compatibility)")
add("error-message-at-limit", "error", 5, {"code": CODE["internalError"], "requestType": 6, "message": "m" * 4096},
    "a message of exactly maxMessageLength (4096) bytes")

# -------------------------------------------------------------------------------------------- invalid vectors

invalid = []


def bad(name, data, error, comment, request_id=0, request_type=0, append_zeros=0, on_seqpacket=None):
    entry = {
        "name": name,
        "hex": data.hex(),
        "error": error,
        "code": CODE[error],
        "requestID": u64(request_id),
        "requestType": request_type,
        "comment": comment,
    }
    if append_zeros:
        entry["appendZeros"] = append_zeros
    if on_seqpacket:
        entry["onSeqpacket"] = on_seqpacket
    invalid.append(entry)


def by_name(name):
    return next(v for v in valid if v["name"] == name)


def raw(type_code, request_id, payload, **kwargs):
    return header(type_code, request_id, len(payload), **kwargs) + payload


T = TYPE_CODES
alloc = raw(T["allocate"], 77, struct.pack("<Q", 64))

# Header-level failures, in decoding order.
bad("empty", b"", "malformedFrame",
    "zero bytes: no header. A decoder given these bytes reports malformedFrame, but on SOCK_SEQPACKET a 0-byte "
    "datagram reads as end of file: the daemon closes the connection without a reply (PROTOCOL.md section 1)",
    on_seqpacket="closes")
bad("short-header", alloc[:23], "malformedFrame", "23 bytes: one short of the header")
bad("bad-magic", b"DVYQ" + alloc[4:], "malformedFrame", "magic 'DVYQ'; request id not trusted, reported as 0")
bad("bad-magic-byte-order", struct.pack(">I", MAGIC) + alloc[4:], "malformedFrame", "magic in big-endian order")
bad("too-large", header(T["ping"], 9, MAX_FRAME_SIZE + 1 - HEADER_SIZE) + struct.pack("<I", MAX_FRAME_SIZE - 28 + 1),
    "frameTooLarge", "a 65537-byte ping (header + 65513 payload bytes, zeros appended)", 9, T["ping"],
    append_zeros=MAX_FRAME_SIZE + 1 - HEADER_SIZE - 4)
bad("too-large-before-version", header(T["stats"], 9, MAX_FRAME_SIZE + 1 - HEADER_SIZE, version=7),
    "frameTooLarge", "65537 bytes and version 7: size is checked before the version", 9, T["stats"],
    append_zeros=MAX_FRAME_SIZE + 1 - HEADER_SIZE)
bad("bad-magic-before-size", header(T["stats"], 9, MAX_FRAME_SIZE + 1 - HEADER_SIZE, magic=0),
    "malformedFrame", "65537 bytes with a zero magic: magic is checked first", 0, 0,
    append_zeros=MAX_FRAME_SIZE + 1 - HEADER_SIZE)
bad("version-0", raw(T["allocate"], 77, struct.pack("<Q", 64), version=0), "unsupportedVersion",
    "header version 0", 77, T["allocate"])
bad("version-3", raw(T["hello"], 1, encode_fields("hello", {"minVersion": 1, "maxVersion": 3, "mode": 0,
                                                            "capabilities": 0, "name": "x"}), version=3),
    "unsupportedVersion", "header version 3 (version-2 implementations accept headers of version 1 and 2)", 1,
    T["hello"])
bad("version-before-flags", raw(T["stats"], 3, b"", version=3, flags=1), "unsupportedVersion",
    "version 3 and flags 1: version is checked before flags", 3, T["stats"])
bad("nonzero-flags", raw(T["allocate"], 77, struct.pack("<Q", 64), flags=1), "malformedFrame",
    "reserved flags set", 77, T["allocate"])
bad("high-flag", raw(T["stats"], 5, b"", flags=0x80000000), "malformedFrame", "flags bit 31 set", 5, T["stats"])
bad("length-too-big", header(T["allocate"], 77, 9) + struct.pack("<Q", 64), "malformedFrame",
    "header says 9 payload bytes, 8 follow", 77, T["allocate"])
bad("length-too-small", header(T["allocate"], 77, 7) + struct.pack("<Q", 64), "malformedFrame",
    "header says 7 payload bytes, 8 follow", 77, T["allocate"])
bad("length-huge", header(T["allocate"], 77, 0xFFFFFFFF) + struct.pack("<Q", 64), "malformedFrame",
    "header says 4 GiB of payload", 77, T["allocate"])
bad("length-before-type", header(0x0042, 4, 1), "malformedFrame",
    "unknown type and a wrong length: the length is checked first", 4, 0x0042)
bad("unknown-type-0", raw(0x0000, 4, b""), "unknownMessageType", "type 0 is not a message", 4, 0)
bad("unknown-request-type", raw(0x0010, 4, b""), "unknownMessageType", "type 0x0010 (after admin)", 4, 0x0010)
bad("unknown-reply-type", raw(0x80FE, 4, b"\x00"), "unknownMessageType", "type 0x80FE", 4, 0x80FE)
bad("unknown-type-8000", raw(0x8000, 4, b""), "unknownMessageType", "type 0x8000", 4, 0x8000)
bad("unknown-type-ffff", raw(0xFFFF, 4, b""), "unknownMessageType", "type 0xFFFF", 4, 0xFFFF)

# Payload failures.
bad("truncated-allocate", raw(T["allocate"], 6, struct.pack("<Q", 64)[:7]), "malformedFrame",
    "allocate with a 7-byte size", 6, T["allocate"])
bad("truncated-empty-allocate", raw(T["allocate"], 6, b""), "malformedFrame", "allocate with no payload", 6,
    T["allocate"])
bad("truncated-allocated", raw(T["allocated"], 6, struct.pack("<QQI", 1, 2, 3)), "malformedFrame",
    "allocated missing 4 bytes of blockSize", 6, T["allocated"])
bad("free-version-1-handle", raw(T["free"], 7, struct.pack("<Q", 0x0000000300001234)), "malformedFrame",
    "free carrying a version-1 (8-byte) handle: a handle is 16 bytes", 7, T["free"])
bad("truncated-share-handle", raw(T["share"], 11, struct.pack("<QI", 1, 2)), "malformedFrame",
    "share with 12 of the handle's 16 bytes", 11, T["share"])
bad("trailing-adopt", raw(T["adopt"], 12, struct.pack("<QQQB", 1, 2, 3, 0)), "malformedFrame",
    "adopt with 25 payload bytes", 12, T["adopt"])
bad("adopt-without-token", raw(T["adopt"], 12, struct.pack("<QQ", 1, 2)), "malformedFrame",
    "adopt with a handle and no token (16 of 24 payload bytes)", 12, T["adopt"])
bad("truncated-shared-token", raw(T["shared"], 11, struct.pack("<QQQQIH", 1, 2, 3, 4, 5, 6)), "malformedFrame",
    "shared with 2 of the token's 8 bytes", 11, T["shared"])
bad("truncated-welcome", raw(T["welcome"], 1, frame("welcome", 1, by_name("welcome-direct")["fields"])[HEADER_SIZE:][:40]),
    "malformedFrame", "welcome cut after 40 bytes", 1, T["welcome"])
bad("truncated-stats-reply", raw(T["statsReply"], 13, b"\x00" * 47), "malformedFrame", "statsReply of 47 bytes", 13,
    T["statsReply"])
bad("truncated-string-length", raw(T["shutdown"], 0, b"\x05"), "malformedFrame", "one byte of a u16 string length",
    0, T["shutdown"])
bad("truncated-string", raw(T["shutdown"], 0, struct.pack("<H", 10) + b"abc"), "malformedFrame",
    "string says 10 bytes, 3 follow", 0, T["shutdown"])
bad("truncated-bytes", raw(T["ping"], 14, struct.pack("<I", 5) + b"abcd"), "malformedFrame",
    "ping payload says 5 bytes, 4 follow", 14, T["ping"])
bad("truncated-hello", raw(T["hello"], 1, struct.pack("<HHB", 1, 1, 1)), "malformedFrame",
    "hello cut before capabilities", 1, T["hello"])
bad("trailing-mapRegion", raw(T["mapRegion"], 2, b"\x00"), "malformedFrame", "mapRegion with 1 payload byte", 2,
    T["mapRegion"])
bad("trailing-allocate", raw(T["allocate"], 6, struct.pack("<Q", 64) + b"\x00"), "malformedFrame",
    "allocate with 9 payload bytes", 6, T["allocate"])
bad("trailing-hello", raw(T["hello"], 1, encode_fields("hello", {"minVersion": 1, "maxVersion": 1, "mode": 1,
                                                                 "capabilities": 0, "name": "ab"}) + b"c"),
    "malformedFrame", "a byte after hello's name", 1, T["hello"])
bad("trailing-farewell", raw(T["farewell"], 16, b"\x00\x00\x00\x00"), "malformedFrame", "farewell with 4 bytes", 16,
    T["farewell"])
bad("utf8-invalid-byte", raw(T["hello"], 1, struct.pack("<HHBIH", 1, 1, 1, 0, 3) + b"a\xffb"), "malformedFrame",
    "0xFF in hello's name", 1, T["hello"])
bad("utf8-overlong", raw(T["error"], 6, struct.pack("<HHH", 1, 6, 2) + b"\xc0\x80"), "malformedFrame",
    "overlong NUL (C0 80) in an error message", 6, T["error"])
bad("utf8-surrogate", raw(T["shutdown"], 0, struct.pack("<H", 3) + b"\xed\xa0\x80"), "malformedFrame",
    "UTF-16 surrogate U+D800 (ED A0 80) in a shutdown reason", 0, T["shutdown"])
bad("utf8-cut-sequence", raw(T["shutdown"], 0, struct.pack("<H", 2) + b"\xe6\xbc"), "malformedFrame",
    "a 3-byte sequence cut after 2 bytes", 0, T["shutdown"])
bad("utf8-lone-continuation", raw(T["hello"], 1, struct.pack("<HHBIH", 1, 1, 1, 0, 1) + b"\x80"), "malformedFrame",
    "a lone continuation byte", 1, T["hello"])
bad("utf8-beyond-unicode", raw(T["shutdown"], 0, struct.pack("<H", 4) + b"\xf4\x90\x80\x80"), "malformedFrame",
    "U+110000 (F4 90 80 80) is beyond Unicode", 0, T["shutdown"])
bad("name-too-long", raw(T["hello"], 1, struct.pack("<HHBIH", 1, 1, 1, 0, 256) + b"n" * 256), "malformedFrame",
    "a 256-byte name", 1, T["hello"])
bad("message-too-long", raw(T["error"], 6, struct.pack("<HHH", 21, 6, 4097) + b"\x00" * 4097)[:HEADER_SIZE + 6],
    "malformedFrame", "a 4097-byte error message (NUL bytes appended)", 6, T["error"], append_zeros=4097)
bad("reason-too-long", raw(T["shutdown"], 0, struct.pack("<H", 4097) + b"\x00" * 4097)[:HEADER_SIZE + 2],
    "malformedFrame", "a 4097-byte shutdown reason (NUL bytes appended)", 0, T["shutdown"], append_zeros=4097)
bad("ping-too-long", raw(T["ping"], 14, struct.pack("<I", 60001) + b"\x00" * 60001)[:HEADER_SIZE + 4],
    "malformedFrame", "a 60001-byte ping payload (> maxPingPayload; zeros appended)", 14, T["ping"],
    append_zeros=60001)
bad("pong-too-long", raw(T["pong"], 14, struct.pack("<I", 60001) + b"\x00" * 60001)[:HEADER_SIZE + 4],
    "malformedFrame", "a 60001-byte pong payload", 14, T["pong"], append_zeros=60001)
for type_name, prefix in [("allocateBatch", struct.pack("<Q", 64)), ("allocatedBatch", struct.pack("<Q", 64)),
                          ("freeBatch", b""), ("freedBatch", b"")]:
    bad("batch-zero-" + type_name, raw(T[type_name], 8, prefix + struct.pack("<I", 0)), "batchTooLarge",
        type_name + " with count 0", 8, T[type_name])
    element = {"allocateBatch": b"", "allocatedBatch": b"\x00" * 16, "freeBatch": b"\x00" * 16,
               "freedBatch": b"\x00" * 2}[type_name]
    elements = len(element) * (MAX_BATCH + 1)
    if HEADER_SIZE + len(prefix) + 4 + elements > MAX_FRAME_SIZE:
        # 4094 handles do not fit an allocatedBatch frame (that is why the limit is 4093): the count alone, which
        # is checked before the elements are looked for.
        elements = 0
    bad("batch-%d-%s" % (MAX_BATCH + 1, type_name),
        header(T[type_name], 8, len(prefix) + 4 + elements) + prefix + struct.pack("<I", MAX_BATCH + 1),
        "batchTooLarge",
        type_name + " with count %d (checked before the elements%s)" % (
            MAX_BATCH + 1, ", none present" if elements == 0 else ""), 8, T[type_name],
        append_zeros=elements)
    bad("batch-huge-" + type_name, raw(T[type_name], 8, prefix + struct.pack("<I", 0xFFFFFFFF)), "batchTooLarge",
        type_name + " with count 2^32-1", 8, T[type_name])
bad("count-more-than-bytes", raw(T["freeBatch"], 9, struct.pack("<IQQ", 2, 1, 0)), "malformedFrame",
    "freeBatch count 2, one handle present", 9, T["freeBatch"])
bad("count-less-than-bytes", raw(T["freeBatch"], 9, struct.pack("<IQQQQ", 1, 1, 0, 2, 0)), "malformedFrame",
    "freeBatch count 1, two handles present", 9, T["freeBatch"])
bad("count-version-1-handles", raw(T["freeBatch"], 9, struct.pack("<IQQ", 2, 1, 2)), "malformedFrame",
    "freeBatch count 2 with two 8-byte (version-1) handles: 16 bytes hold one handle", 9, T["freeBatch"])
bad("count-odd-bytes", raw(T["freedBatch"], 9, struct.pack("<IHB", 2, 0, 1)), "malformedFrame",
    "freedBatch count 2, three status bytes", 9, T["freedBatch"])
bad("allocatedBatch-short", raw(T["allocatedBatch"], 8, struct.pack("<QIQQQQ", 64, 3, 1, 0, 2, 0)),
    "malformedFrame",
    "allocatedBatch count 3, two handles present", 8, T["allocatedBatch"])
welcome_ok = encode_fields("welcome", by_name("welcome-direct")["fields"])
bad("welcome-class-count-high", raw(T["welcome"], 1, welcome_ok[:60] + struct.pack("<I", 13) + welcome_ok[64:]),
    "malformedFrame", "welcome classCount 13, 12 sizes present", 1, T["welcome"])
bad("welcome-class-count-low", raw(T["welcome"], 1, welcome_ok[:60] + struct.pack("<I", 11) + welcome_ok[64:]),
    "malformedFrame", "welcome classCount 11, 12 sizes present", 1, T["welcome"])
bad("welcome-class-count-huge", raw(T["welcome"], 1, welcome_ok[:60] + struct.pack("<I", 0xFFFFFFFF)),
    "malformedFrame", "welcome classCount 2^32-1, no sizes", 1, T["welcome"])
bad("hello-mode-3", raw(T["hello"], 1, struct.pack("<HHBIH", 1, 1, 3, 0, 0)), "malformedFrame", "ClientMode 3", 1,
    T["hello"])
bad("hello-mode-255", raw(T["hello"], 1, struct.pack("<HHBIH", 1, 1, 255, 0, 0)), "malformedFrame",
    "ClientMode 255", 1, T["hello"])
bad("welcome-mode-any", raw(T["welcome"], 1, welcome_ok[:2] + b"\x00" + welcome_ok[3:]), "malformedFrame",
    "welcome granting mode 0 (any): the daemon must grant direct or mediated", 1, T["welcome"])
bad("welcome-mode-3", raw(T["welcome"], 1, welcome_ok[:2] + b"\x03" + welcome_ok[3:]), "malformedFrame",
    "welcome mode 3", 1, T["welcome"])
bad("welcome-page-kind-4", raw(T["welcome"], 1, welcome_ok[:59] + b"\x04" + welcome_ok[60:]), "malformedFrame",
    "PageKind 4", 1, T["welcome"])
bad("admin-op-0", raw(T["admin"], 100, struct.pack("<BI", 0, 0)), "malformedFrame", "AdminOperation 0", 100,
    T["admin"])
bad("admin-op-8", raw(T["admin"], 100, struct.pack("<BI", 8, 0)), "malformedFrame", "AdminOperation 8", 100,
    T["admin"])
bad("adminReply-op-9", raw(T["adminReply"], 100, struct.pack("<BBI", 9, 0, 0)), "malformedFrame",
    "adminReply with AdminOperation 9", 100, T["adminReply"])
bad("adminReply-format-2", raw(T["adminReply"], 100, struct.pack("<BBI", 1, 2, 0)), "malformedFrame",
    "AdminFormat 2", 100, T["adminReply"])
bad("freed-bool-2", raw(T["freed"], 7, b"\x02"), "malformedFrame", "freed.released = 2 (bools are 0 or 1)", 7,
    T["freed"])
bad("freed-bool-255", raw(T["freed"], 7, b"\xff"), "malformedFrame", "freed.released = 255", 7, T["freed"])

# ------------------------------------------------------------------------------------------------------ write

here = os.path.dirname(os.path.abspath(__file__))
names = [v["name"] for v in valid] + [v["name"] for v in invalid]
assert len(names) == len(set(names)), "duplicate vector names"
# Each invalid vector must fail for its stated reason only: unless it is about the header's length, the header's
# payload length matches the bytes present (so a payload vector cannot pass by failing the length check).
for v in invalid:
    data = bytes.fromhex(v["hex"]) + b"\x00" * v.get("appendZeros", 0)
    if v["name"] in ("empty", "short-header") or v["name"].startswith("length-"):
        continue
    assert struct.unpack_from("<I", data, 16)[0] == len(data) - HEADER_SIZE, v["name"]
for file_name, vectors in [("valid.json", valid), ("invalid.json", invalid)]:
    with open(os.path.join(here, file_name), "w") as out:
        out.write('{\n "format": 2,\n "vectors": [\n')
        out.write(",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in vectors))
        out.write("\n ]\n}\n")
print("valid: %d, invalid: %d" % (len(valid), len(invalid)))
