// DivvyShm's system calls go through the DivvySystem layer. The one name kept here is for the files under Heap/
// (edited separately): they read /proc through it. New code calls `systemReadSmallTextFile` directly.
import DivvySystem

/// `systemReadSmallTextFile`: a small file under /proc or /sys as text, or nil when it cannot be read.
internal func readSmallTextFile(_ path: String) -> String? { systemReadSmallTextFile(path) }
