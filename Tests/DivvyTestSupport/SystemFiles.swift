import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The contents of a (small, e.g. `/proc` or `/sys`) file, or nil if it cannot be read.
public func readText(_ path: String) -> String? {
    guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
    defer { try? handle.close() }
    return String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
}

/// A file holding one integer (e.g. `/proc/sys/vm/nr_hugepages`), or nil.
public func readInt(_ path: String) -> Int? {
    readText(path).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
}

/// Writes `text` to an existing file with one `write(2)` (as `/proc/sys` and `/sys` settings want); whether all of
/// it was written.
public func writeText(_ path: String, _ text: String) -> Bool {
    let fd = open(path, O_WRONLY)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    return text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) } == text.utf8.count
}
