#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The C library's `malloc` family as an allocator: the baseline every benchmark compares against.
///
/// Alignments up to 16 use `malloc`; stricter ones use `posix_memalign`. Reallocation with such alignments uses
/// `realloc`, which may resize in place. Thread-safe, because `malloc` is.
@frozen
public struct SystemAllocator: Allocator, Sendable {
    /// The alignment `malloc` guarantees on this platform (16 on x86_64 and arm64 Linux).
    public static let mallocAlignment = 16

    /// Creates the allocator. It has no state.
    @inlinable
    public init() {}

    /// `malloc(size)`, or `posix_memalign` when `layout.alignment > 16`.
    ///
    /// A zero-byte request gets a one-byte block, so every block has a distinct address.
    /// - Throws: `.outOfMemory` when the C library returns NULL.
    @inlinable
    public func allocate(_ layout: Layout) throws(AllocationError) -> UnsafeBlock {
        let size = Swift.max(layout.size, 1)
        if layout.alignment <= SystemAllocator.mallocAlignment {
            guard let pointer = malloc(size) else {
                throw AllocationError(.outOfMemory, "malloc returned NULL", size: layout.size)
            }
            return UnsafeBlock(start: pointer, size: size)
        }
        var pointer: UnsafeMutableRawPointer? = nil
        let result = posix_memalign(&pointer, layout.alignment, size)
        guard result == 0, let pointer else {
            throw AllocationError(
                .outOfMemory, "posix_memalign failed", size: layout.size, alignment: layout.alignment,
                systemError: result)
        }
        return UnsafeBlock(start: pointer, size: size)
    }

    /// `free(block.start)`.
    @inlinable
    public func deallocate(_ block: UnsafeBlock, layout: Layout) {
        free(block.start)
    }

    /// `realloc` when both alignments are at most 16; allocate, copy and free otherwise.
    @inlinable
    public func reallocate(_ block: UnsafeBlock, from old: Layout, to new: Layout) throws(AllocationError)
        -> UnsafeBlock
    {
        guard old.alignment <= SystemAllocator.mallocAlignment, new.alignment <= SystemAllocator.mallocAlignment
        else {
            let moved = try allocate(new)
            moved.start.copyMemory(from: block.start, byteCount: Swift.min(old.size, new.size))
            deallocate(block, layout: old)
            return moved
        }
        let size = Swift.max(new.size, 1)
        guard let pointer = realloc(block.start, size) else {
            throw AllocationError(.outOfMemory, "realloc returned NULL", size: new.size)
        }
        return UnsafeBlock(start: pointer, size: size)
    }
}
