import DivvyServer
import DivvyShm
import XCTest

/// `participant-capacity` and `direct-held-capacity`: the ranges divvyd accepts, and refusals that name the key.
final class ParticipantCapacityConfigurationTests: XCTestCase {
    func testCapacitiesAreCheckedAndRefusalsNameTheKey() throws {
        var configuration = ServerConfiguration()
        XCTAssertEqual(configuration.participantCapacity, 1024)
        XCTAssertEqual(configuration.directHeldCapacity, 4096)
        XCTAssertNoThrow(try configuration.validate())
        for good in [2, SharedHeapConfiguration.maximumParticipants] {
            configuration.participantCapacity = good
            XCTAssertNoThrow(try configuration.validate(), "\(good)")
        }
        for bad in [1, SharedHeapConfiguration.maximumParticipants + 1] {
            configuration.participantCapacity = bad
            XCTAssertThrowsError(try configuration.validate(), "\(bad)") { error in
                XCTAssertTrue("\(error)".contains("participant-capacity must be 2…4096"), "\(error)")
            }
        }
        configuration.participantCapacity = 1024
        configuration.directHeldCapacity = 0
        XCTAssertThrowsError(try configuration.validate()) { error in
            XCTAssertTrue("\(error)".contains("direct-held-capacity"), "\(error)")
        }
        XCTAssertThrowsError(try configuration.set("direct-held-capacity", "lots"))
    }
}
