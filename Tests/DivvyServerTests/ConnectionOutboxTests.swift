import XCTest

@testable import DivvyServer

/// A connection's outgoing side as a value: order, back-pressure on reading, and closing only after the replies.
final class ConnectionOutboxTests: XCTestCase {
    func testAnIdleConnectionReadsAndWritesDirectly() {
        var outbox = ConnectionOutbox()
        XCTAssertTrue(outbox.isIdle)
        XCTAssertNil(outbox.next)
        XCTAssertEqual(outbox.flushed, .readAgain)
        XCTAssertEqual(outbox.closeAfterReplies(), .now, "nothing waits: close at once")
        XCTAssertTrue(outbox.closesWhenFlushed)
    }

    func testWaitingRepliesStopReadingAndGoOutInOrder() {
        var outbox = ConnectionOutbox()
        XCTAssertTrue(outbox.hold([1], descriptors: [7]), "the first waiting frame: watch for writability")
        XCTAssertFalse(outbox.hold([2], descriptors: []), "already watching")
        XCTAssertFalse(outbox.isIdle, "no request is read while replies wait, nor a reply written past them")
        XCTAssertEqual(outbox.next?.bytes, [1])
        XCTAssertEqual(outbox.next?.descriptors, [7])
        outbox.sentNext()
        XCTAssertEqual(outbox.next?.bytes, [2])
        XCTAssertFalse(outbox.isIdle)
        outbox.sentNext()
        XCTAssertTrue(outbox.isIdle)
        XCTAssertEqual(outbox.flushed, .readAgain)
    }

    func testAClosingConnectionClosesOnlyOnceItsRepliesAreOut() {
        var outbox = ConnectionOutbox()
        _ = outbox.hold([1], descriptors: [])
        XCTAssertEqual(outbox.closeAfterReplies(), .afterFlush)
        XCTAssertEqual(outbox.next?.bytes, [1], "the reply is still sent")
        outbox.sentNext()
        XCTAssertEqual(outbox.flushed, .close)
    }
}
