import Divvy
import XCTest

/// Asserts that `body` throws an `AllocationError` with `code`, and returns the error for further checks.
///
/// Works with noncopyable results (which `XCTAssertThrowsError` cannot take): discard them inside `body`.
@discardableResult
public func assertAllocationError(
    _ code: AllocationError.Code, _ message: @autoclosure () -> String = "", file: StaticString = #filePath,
    line: UInt = #line, _ body: () throws -> Void
) -> AllocationError? {
    do {
        try body()
        XCTFail("expected AllocationError \(code), nothing was thrown. \(message())", file: file, line: line)
        return nil
    } catch let error as AllocationError {
        XCTAssertEqual(error.code, code, "wrong code in \(error). \(message())", file: file, line: line)
        return error
    } catch {
        XCTFail("expected AllocationError \(code), got \(error). \(message())", file: file, line: line)
        return nil
    }
}
