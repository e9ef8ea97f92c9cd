@testable import KaaIO
import Testing

/// The minimum-rate deadlines take sizes from the network: their arithmetic saturates instead
/// of overflowing.
@Suite struct TransferRateTests {
    @Test func millisecondsAtARateRoundUpAndSaturate() {
        #expect(transferMilliseconds(0, atRate: 100) == 0)
        #expect(transferMilliseconds(-5, atRate: 100) == 0)
        #expect(transferMilliseconds(1, atRate: 1000) == 1)
        #expect(transferMilliseconds(1001, atRate: 1000) == 1001)
        #expect(transferMilliseconds(1001, atRate: 3000) == 334)
        #expect(transferMilliseconds(64 << 10, atRate: 64 << 10) == 1000)
        #expect(transferMilliseconds(5, atRate: 0) == 5000) // a rate below 1 counts as 1
        #expect(transferMilliseconds(Int.max, atRate: 1) == UInt64.max)
        #expect(transferMilliseconds(Int.max, atRate: Int.max) == 1000)
        #expect(transferMilliseconds(Int.max - 1, atRate: Int.max) == 1000)
        #expect(transferMilliseconds(Int.max / 2, atRate: Int.max) == 500)
        #expect(UInt64.max.addingSaturated(1) == UInt64.max)
        #expect(UInt64(5).addingSaturated(6) == 11)
    }
}
