/// Lifeguard local health awareness: a saturating score that rises when this node misses acks
/// and nacks it should have seen (a sign that *it* is slow or its network is lossy) and falls on
/// successful probes. Probe interval and timeouts are multiplied by `score + 1`.
public struct Awareness: Hashable, Sendable {
    public let maximum: Int
    public private(set) var score: Int = 0

    public init(maximum: Int) { self.maximum = max(0, maximum) }

    /// Adds `delta` (negative to lower), clamped to `0...maximum`.
    public mutating func apply(_ delta: Int) {
        score = min(maximum, max(0, score + delta))
    }

    /// `duration × (score + 1)`.
    public func scale(_ duration: Duration) -> Duration { duration * (score + 1) }
}
