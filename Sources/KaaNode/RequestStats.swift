import KaaCore

/// The calls this node served in the last ``window`` seconds, one bucket a second: for the
/// node as a whole and for each model that had a call in the window. What `GET /kaa/v1/stats`
/// and the dashboard (`/ui`) show as request rate and latency.
///
/// A value type with no clock of its own: the caller passes the time (monotonic nanoseconds)
/// with every record and every report, so a test drives it by hand. The node keeps one in
/// ``ServingMetrics``, on its loop.
///
/// Memory is bounded whatever the traffic: a model's series exists only while it had a call
/// in the window (an idle one is dropped at the next sweep, at most once a second), and at
/// most ``maxModels`` models have their own; calls of models past that are counted in one
/// series named ``otherModels``. A series is ``window`` buckets of 24 bytes, so 120 s and
/// 1,000 models hold under 3 MB.
public struct RequestStats: Sendable {
    /// One second of calls.
    public struct Bucket: Sendable, Equatable {
        /// Calls that ended in this second (answered or failed).
        public var calls: UInt32 = 0
        /// Of them, those answered with an error.
        public var errors: UInt32 = 0
        /// The sum and the largest of their latencies, received to answered, in nanoseconds.
        public var latencyTotal: UInt64 = 0
        public var latencyMax: UInt64 = 0

        /// The mean latency in microseconds, 0 without calls.
        public var meanMicroseconds: UInt64 { calls == 0 ? 0 : latencyTotal / UInt64(calls) / 1_000 }

        mutating func add(failed: Bool, latency: UInt64) {
            calls &+= 1
            if failed { errors &+= 1 }
            latencyTotal &+= latency
            latencyMax = max(latencyMax, latency)
        }
    }

    /// One ring of buckets: slot `s % window` holds second `s` while `s` is within the window
    /// of ``last``, the latest second recorded.
    struct Series: Sendable {
        var slots: [Bucket]
        var last: Int64

        init(window: Int, now: Int64) {
            slots = Array(repeating: Bucket(), count: window)
            last = now
        }

        mutating func record(second: Int64, failed: Bool, latency: UInt64) {
            let window = Int64(slots.count)
            if second > last {
                // Clear the slots of the seconds skipped since the last call (all of them when
                // more than a window has passed).
                var s = max(last + 1, second - window + 1)
                while s <= second {
                    slots[Int(s % window)] = Bucket()
                    s += 1
                }
                last = second
            } else if second <= last - window {
                return // older than the window: a late record counts nowhere
            }
            slots[Int(second % window)].add(failed: failed, latency: latency)
        }

        /// The window ending at second `now`, oldest first.
        func buckets(endingAt now: Int64) -> [Bucket] {
            let window = Int64(slots.count)
            return (now - window + 1 ... now).map { s in
                // A slot is second `s`'s only when `s` is within the window of the last record.
                s <= last && s > last - window && s >= 0 ? slots[Int(s % window)] : Bucket()
            }
        }
    }

    /// The name of the series that counts models past ``maxModels``.
    public static let otherModels = "_other"

    /// Seconds kept.
    public let window: Int
    /// Models with a series of their own, at most.
    public let maxModels: Int
    private(set) var total: Series
    private(set) var models: [String: Series] = [:]
    /// The second of the last sweep of idle series.
    private var swept: Int64

    public init(window: Int = 120, maxModels: Int = 1_000) {
        precondition(window >= 2 && maxModels >= 1, "a window of at least 2 seconds and room for a model")
        self.window = window
        self.maxModels = maxModels
        total = Series(window: window, now: 0)
        swept = 0
    }

    /// Counts one call of `model` that ended at `now` (monotonic nanoseconds) after `latency`
    /// nanoseconds.
    public mutating func record(model: String, failed: Bool, latency: UInt64, now: UInt64) {
        let second = Int64(now / 1_000_000_000)
        sweep(second)
        total.record(second: second, failed: failed, latency: latency)
        if models[model] != nil {
            models[model]!.record(second: second, failed: failed, latency: latency)
            return
        }
        // A model past the cap shares the `_other` series, which takes no room of its own.
        let key = models.count - (models[Self.otherModels] == nil ? 0 : 1) >= maxModels ? Self.otherModels : model
        models[key, default: Series(window: window, now: second)].record(second: second, failed: failed, latency: latency)
    }

    /// Drops the series of models without a call in the window ending at `second`; at most
    /// once a second, so a record costs O(1) amortised.
    private mutating func sweep(_ second: Int64) {
        guard second > swept else { return }
        swept = second
        let horizon = second - Int64(window)
        if models.values.contains(where: { $0.last <= horizon }) {
            models = models.filter { $0.value.last > horizon }
        }
    }

    /// Models with a series now (those with a call in the window, as of the last sweep).
    public var modelCount: Int { models.count }

    /// What a report shows of one series: its buckets oldest first, and its calls in all.
    public struct Window: Sendable, Equatable {
        public var name: String
        public var buckets: [Bucket]
        public var calls: UInt64 { buckets.reduce(0) { $0 + UInt64($1.calls) } }
    }

    /// The window ending at `now`: the node's series and the `top` busiest models' (by calls
    /// in the window, then by name), and how many models had calls. Costs O(models × window):
    /// take the value on the loop (a copy shares its storage) and call this off it.
    public func report(now: UInt64, top: Int) -> (total: Window, models: [Window], modelsWithCalls: Int) {
        let second = Int64(now / 1_000_000_000)
        let all = models.map { Window(name: $0.key, buckets: $0.value.buckets(endingAt: second)) }.filter { $0.calls > 0 }
        let busiest = all.sorted { ($0.calls, $1.name) > ($1.calls, $0.name) }.prefix(max(0, top))
        return (Window(name: "", buckets: total.buckets(endingAt: second)), Array(busiest), all.count)
    }
}
