/// A point on a monotonic clock, in nanoseconds since an arbitrary origin.
///
/// State machines take `Instant`s from their caller instead of reading a clock, so tests and
/// simulations drive time by hand.
public struct Instant: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }

    public static func + (a: Instant, d: Duration) -> Instant {
        let ns = d.nanosecondsClamped
        return ns >= 0 ? Instant(nanoseconds: a.nanoseconds &+ UInt64(ns))
                       : Instant(nanoseconds: a.nanoseconds &- min(a.nanoseconds, UInt64(-ns)))
    }

    public static func - (a: Instant, b: Instant) -> Duration {
        a >= b ? .nanoseconds(Int64(clamping: a.nanoseconds - b.nanoseconds))
               : .nanoseconds(-Int64(clamping: b.nanoseconds - a.nanoseconds))
    }

    public var description: String { "\(Double(nanoseconds) / 1e9)s" }

    /// The process's monotonic clock (`CLOCK_MONOTONIC`); only shells call this.
    public static func now() -> Instant {
        let d = ContinuousClock.now - ContinuousClock.Instant.processStart
        return Instant(nanoseconds: UInt64(max(0, d.nanosecondsClamped)))
    }
}

extension ContinuousClock.Instant {
    fileprivate static let processStart = ContinuousClock.now - .seconds(1)
}

extension Duration {
    /// The duration in whole nanoseconds, clamped to `Int64`.
    public var nanosecondsClamped: Int64 {
        let (s, a) = components
        let (ns, o) = s.multipliedReportingOverflow(by: 1_000_000_000)
        if o { return s < 0 ? .min : .max }
        let (sum, o2) = ns.addingReportingOverflow(a / 1_000_000_000)
        return o2 ? (s < 0 ? .min : .max) : sum
    }

    /// The duration in milliseconds, clamped to `UInt64` and rounded up (for timers).
    public var millisecondsRoundedUp: UInt64 {
        let ns = nanosecondsClamped
        if ns <= 0 { return 0 }
        return (UInt64(ns) + 999_999) / 1_000_000
    }

    /// The duration in seconds as a `Double`.
    public var seconds: Double { Double(nanosecondsClamped) / 1e9 }
}
