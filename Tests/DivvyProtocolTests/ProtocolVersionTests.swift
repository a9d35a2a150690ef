import DivvyProtocol
import XCTest

final class ProtocolVersionTests: XCTestCase {
    func testCurrentVersionIsSupported() {
        XCTAssertTrue(ProtocolVersion.supported.contains(ProtocolVersion.current))
    }
}
