import Divvy
import Foundation
import XCTest

/// The version is written once (`DivvyVersion.string`); everything else derives from it or is checked against it.
final class DivvyVersionTests: XCTestCase {
    private var repository: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    func testTheVersionIsThreeNumbersAndItsPartsAgree() {
        let parts = DivvyVersion.string.split(separator: ".", omittingEmptySubsequences: false)
        XCTAssertEqual(parts.count, 3, "DivvyVersion.string must be MAJOR.MINOR.PATCH")
        XCTAssertTrue(parts.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isASCII) && Int($0) != nil })
        XCTAssertEqual("\(DivvyVersion.major).\(DivvyVersion.minor).\(DivvyVersion.patch)", DivvyVersion.string)
        XCTAssertEqual(DivvyVersion.number, DivvyVersion.major * 10_000 + DivvyVersion.minor * 100 + DivvyVersion.patch)
    }

    /// A release without its CHANGELOG entry is a release nobody can read about.
    func testTheChangelogHasAnEntryForThisVersion() throws {
        let changelog = try String(contentsOf: repository.appendingPathComponent("CHANGELOG.md"), encoding: .utf8)
        XCTAssertTrue(
            changelog.contains("## [\(DivvyVersion.string)]"),
            "CHANGELOG.md has no '## [\(DivvyVersion.string)]' section")
    }

    /// The packaging scripts read the version from the source with one sed expression; keep the line they read.
    func testThePackagingScriptsCanReadTheVersion() throws {
        let source = try String(
            contentsOf: repository.appendingPathComponent("Sources/Divvy/Core/DivvyVersion.swift"), encoding: .utf8)
        let line = source.split(separator: "\n").first { $0.contains("public static let string = \"") }
        XCTAssertEqual(line.map(String.init), "    public static let string = \"\(DivvyVersion.string)\"")
    }
}
