public import KaaCore

/// Lifeguard's dynamic suspicion timeout (hashicorp memberlist `suspicion.go`): it starts at
/// `maximum` and shrinks toward `minimum` as independent members confirm the suspicion,
/// `timeout = max(minimum, maximum − (maximum − minimum) · log(c + 1) / log(k + 1))`.
public struct Suspicion: Hashable, Sendable {
    public let startedAt: Instant
    public let minimum: Duration
    public let maximum: Duration
    /// Confirmations that bring the timeout down to `minimum`; 0 means always `minimum`.
    public let expectedConfirmations: Int
    /// Members that said so; the first is the originator and does not count as a confirmation.
    public private(set) var confirmers: Set<NodeID>

    public init(from: NodeID, startedAt: Instant, minimum: Duration, maximum: Duration, expectedConfirmations: Int) {
        self.startedAt = startedAt
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.expectedConfirmations = max(0, expectedConfirmations)
        self.confirmers = [from]
    }

    /// Independent confirmations so far.
    public var confirmations: Int { confirmers.count - 1 }

    /// Records `from`; returns false when it already confirmed or no more are needed.
    public mutating func confirm(_ from: NodeID) -> Bool {
        guard confirmations < expectedConfirmations else { return false }
        return confirmers.insert(from).inserted
    }

    /// The current timeout after `confirmations` confirmations.
    public var timeout: Duration {
        Self.timeout(confirmations: confirmations, k: expectedConfirmations, minimum: minimum, maximum: maximum)
    }

    /// When the suspicion expires into `dead`.
    public var deadline: Instant { startedAt + timeout }

    public static func timeout(confirmations c: Int, k: Int, minimum: Duration, maximum: Duration) -> Duration {
        if k <= 0 { return minimum }
        let fraction = _log(Double(c) + 1) / _log(Double(k) + 1)
        let span = (maximum - minimum).seconds
        let seconds = max(minimum.seconds, maximum.seconds - span * fraction)
        return .nanoseconds(Int64(seconds * 1e9))
    }
}

/// Natural logarithm without Foundation (Swift's stdlib has no `log`).
@inline(__always)
func _log(_ x: Double) -> Double {
    precondition(x > 0)
    // ln(x) = ln(m · 2^e) = ln(m) + e·ln 2, with m in [1, 2); ln(m) by atanh series.
    let e = x.exponent
    let m = x.significand
    let y = (m - 1) / (m + 1)
    let y2 = y * y
    var term = y
    var sum = 0.0
    var k = 1.0
    while abs(term) > 1e-17 {
        sum += term / k
        term *= y2
        k += 2
    }
    return 2 * sum + Double(e) * 0.693_147_180_559_945_3
}
