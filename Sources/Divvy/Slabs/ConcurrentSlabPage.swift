import Atomics

// The page format of the thread-safe slab (`ConcurrentSlab`).
//
// Every page is `pageSize` bytes, aligned to `pageSize`, so the page of a block is found by masking the block's
// address. A page starts with a 128-byte header in two cache lines, split by who writes them:
//
//   0..<64    `_ConcurrentSlabPageHeader`: touched only by the page's owner (the `Local` side). No atomics.
//   64..<72   remote-free stack head (atomic pointer): any thread pushes; the owner takes the whole stack.
//   72..<80   "queued" flag (atomic Int, 0 or 1): the page is on (or about to be on) the slab's notification stack.
//   80..<88   next page on the notification stack (plain; written only by the thread that set "queued").
//   88..<128  refill record, in the first page of each refill only (written at refill time, read at teardown).
//
// Blocks follow the header, starting at `alignUp(128, alignment)`. A free block's first word links it to the next
// free block, both in the local free list and in the remote-free stack.
//
// Keeping the owner's fields and the remote line apart means remote frees do not bounce the cache line the owner
// allocates from (mimalloc keeps `free`/`local_free` and `xthread_free` apart for the same reason).

/// The owner-only part of a page header (the first cache line of every page).
@usableFromInline
internal struct _ConcurrentSlabPageHeader {
    /// Head of the page's local free list (blocks freed by the owner, or collected from the remote stack).
    @usableFromInline var localFree: UnsafeMutableRawPointer?
    /// Next block never handed out yet; blocks are carved lazily so a fresh page costs one header write.
    @usableFromInline var carve: UnsafeMutableRawPointer
    /// End of the carvable blocks: `carve == carveEnd` means every block has been carved.
    @usableFromInline var carveEnd: UnsafeMutableRawPointer
    /// Next page on the owner's stack of pages that have free blocks.
    @usableFromInline var nextAvailable: UnsafeMutableRawPointer?
    /// Which owner list the page is on: `full`, `available` or `current`.
    @usableFromInline var list: Int
    /// The slab the page belongs to (its core's address), to catch foreign frees in checked builds.
    @usableFromInline var owner: UnsafeRawPointer

    /// The page is neither current nor on the available stack (it had no free block when last looked at).
    @usableFromInline static var full: Int { 0 }
    /// The page is on the available stack.
    @usableFromInline static var available: Int { 1 }
    /// The page is the one the owner allocates from.
    @usableFromInline static var current: Int { 2 }
}

/// Offsets and accessors for the raw page header.
@usableFromInline
internal enum _ConcurrentSlabPage {
    /// Bytes of header at the start of every page (two cache lines).
    @usableFromInline static var headerSize: Int { 128 }
    @usableFromInline static var remoteHeadOffset: Int { 64 }
    @usableFromInline static var queuedOffset: Int { 72 }
    @usableFromInline static var nextNotifiedOffset: Int { 80 }
    static var refillNextOffset: Int { 88 }
    static var refillBytesOffset: Int { 96 }
    static var refillBackingSizeOffset: Int { 104 }
    static var refillPagesOffset: Int { 112 }

    /// The owner-only header of `page`.
    @inlinable
    @inline(__always)
    static func header(_ page: UnsafeMutableRawPointer) -> UnsafeMutablePointer<_ConcurrentSlabPageHeader> {
        // Safe: `initialize` bound these bytes to the header type before the page's first block was handed out.
        page.assumingMemoryBound(to: _ConcurrentSlabPageHeader.self)
    }

    /// The page's remote-free stack head.
    @inlinable
    @inline(__always)
    static func remoteHead(_ page: UnsafeMutableRawPointer) -> UnsafeAtomic<UnsafeMutableRawPointer?> {
        UnsafeAtomic(
            at: (page + remoteHeadOffset).assumingMemoryBound(to: UnsafeAtomic<UnsafeMutableRawPointer?>.Storage.self))
    }

    /// The page's "queued on the notification stack" flag.
    @inlinable
    @inline(__always)
    static func queued(_ page: UnsafeMutableRawPointer) -> UnsafeAtomic<Int> {
        UnsafeAtomic(at: (page + queuedOffset).assumingMemoryBound(to: UnsafeAtomic<Int>.Storage.self))
    }

    /// The page's link on the notification stack (bound by `initialize`).
    @inlinable
    @inline(__always)
    static func nextNotified(_ page: UnsafeMutableRawPointer) -> UnsafeMutablePointer<UnsafeMutableRawPointer?> {
        (page + nextNotifiedOffset).assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
    }

    // Free-list links are read and written through typed pointers rather than raw `load`/`storeBytes`: a free block's
    // first word is bound to `UnsafeMutableRawPointer?` when the block is freed (`bindLink`), and read through that
    // binding while it is free (`link`). Besides being the sanctioned way to retype raw memory, typed accesses are
    // compiled into this module even in debug builds, where ThreadSanitizer sees them; raw `load(as:)` runs in the
    // uninstrumented standard library there, which would hide a missing memory ordering from TSan.

    /// The link word of a free block (bound by `bindLink` when the block was freed).
    @inlinable
    @inline(__always)
    static func link(_ block: UnsafeMutableRawPointer) -> UnsafeMutablePointer<UnsafeMutableRawPointer?> {
        block.assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
    }

    /// Binds the first word of a block being freed to a link and returns it. The caller owns the block.
    @inlinable
    @inline(__always)
    static func bindLink(_ block: UnsafeMutableRawPointer) -> UnsafeMutablePointer<UnsafeMutableRawPointer?> {
        block.bindMemory(to: UnsafeMutableRawPointer?.self, capacity: 1)
    }

    /// Formats a fresh page: binds and fills the header, empties both free lists. Blocks are carved later.
    ///
    /// Called by the owner before any block of the page exists, so no other thread can look at the page yet.
    static func initialize(
        _ page: UnsafeMutableRawPointer, firstBlockOffset: Int, blocks: Int, stride: Int, owner: UnsafeRawPointer
    ) {
        assert(MemoryLayout<_ConcurrentSlabPageHeader>.size <= remoteHeadOffset, "page header spills into the remote line")
        let first = page + firstBlockOffset
        page.bindMemory(to: _ConcurrentSlabPageHeader.self, capacity: 1).initialize(
            to: _ConcurrentSlabPageHeader(
                localFree: nil, carve: first, carveEnd: first + blocks * stride, nextAvailable: nil,
                list: _ConcurrentSlabPageHeader.current, owner: owner))
        (page + remoteHeadOffset).initializeMemory(
            as: UnsafeAtomic<UnsafeMutableRawPointer?>.Storage.self, repeating: .init(nil), count: 1)
        (page + queuedOffset).initializeMemory(as: UnsafeAtomic<Int>.Storage.self, repeating: .init(0), count: 1)
        (page + nextNotifiedOffset).initializeMemory(as: UnsafeMutableRawPointer?.self, repeating: nil, count: 1)
    }
}
