import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A file descriptor with one owner: closed exactly once, by `close()` or when the owner is destroyed.
///
/// `~Copyable`, so two owners of one descriptor cannot exist: the compiler rejects a copy, and a `consuming`
/// `close()` or `take()` ends the value, so no use after close compiles. A descriptor handed elsewhere (to a child
/// process, to C code, to a type that keeps a raw `Int32`) leaves through `take()`, which does not close it.
///
/// Raw values of an owned descriptor may be read (`rawValue`) for the duration of a call; they must not outlive the
/// owner. Model: swift-system's `FileDescriptor` plus the `~Copyable` owners of swift-collections.
package struct OwnedDescriptor: ~Copyable, Sendable {
    /// The descriptor number, valid while `self` lives.
    package let rawValue: Int32

    /// Takes ownership of an open descriptor (one that nothing else will close).
    ///
    /// - Precondition: `rawValue` is not negative.
    package init(taking rawValue: Int32) {
        precondition(rawValue >= 0, "OwnedDescriptor: \(rawValue) is not a descriptor")
        self.rawValue = rawValue
    }

    deinit { systemClose(rawValue) }

    /// Closes the descriptor now (`close(2)`).
    package consuming func close() {
        // The consumed `self` ends here: `deinit` closes it, exactly once.
    }

    /// Gives up ownership without closing: the caller owns the returned descriptor from now on.
    package consuming func take() -> Int32 {
        let descriptor = rawValue
        discard self
        return descriptor
    }

    /// The descriptor as swift-system's (non-owning) `FileDescriptor`, valid while `self` lives.
    package var fileDescriptor: FileDescriptor { FileDescriptor(rawValue: rawValue) }
}

/// close(2). Never retried: on Linux the descriptor is released even when close reports `EINTR` (close(2), "Dealing
/// with error returns"). `EIO` and friends are ignored: the descriptor is gone either way.
///
/// Traps on `EBADF`: closing a descriptor that is not open means it was closed twice, and the second close may have
/// closed someone else's file.
package func systemClose(_ fd: Int32) {
    if close(fd) == -1 {
        let error = Errno(rawValue: errno)
        if error == .badFileDescriptor {
            preconditionFailure(
                "close(\(fd)) failed with EBADF: the descriptor was closed twice; this is a bug in Divvy")
        }
    }
}

/// Whether `fd` is an open descriptor of this process (`fcntl(F_GETFD)`; `EBADF` means no). For descriptors the
/// program did not open itself (inherited ones), before taking ownership of them.
package func systemDescriptorIsOpen(_ fd: Int32) -> Bool {
    fd >= 0 && systemFcntl(fd, F_GETFD, trapOnProgrammerError: false) != .failure(.badFileDescriptor)
}
