/// When each call of one model runs: at once on the loop (a model that measures tiny), at
/// once on the worker pool (under the concurrency limit), after waiting in a bounded queue, or
/// not at all (the queue is full, or the deadline passed while it waited).
///
/// A value type in the manner of the SWIM instance: the shell reports events (a call
/// arrives, a started call finishes, a run was timed) with the time, and carries out the
/// decisions it gets back. It reads no clock and runs nothing, so tests drive it by hand.
struct Admission<Ticket> {
    struct Settings: Sendable {
        /// Calls running at once on the worker pool.
        var concurrency: Int
        /// Calls waiting to start; past it, new calls are refused.
        var queueLimit: Int
        /// A model whose average run is shorter runs on the loop itself.
        var inlineThresholdNanos: Double
    }

    enum Decision {
        /// Run it now, on the loop, and report nothing back.
        case runInline(Ticket)
        /// Start it now on the worker pool and report ``Admission/finished(now:)`` when done.
        case start(Ticket)
        /// It waits; a later ``Admission/finished(now:)`` starts it.
        case queued
        /// The queue is full: refuse it (429).
        case overloaded(Ticket)
        /// Its deadline passed before it could start: answer that (504).
        case expired(Ticket)
    }

    let settings: Settings
    /// Calls started on the pool and not finished.
    private(set) var running = 0
    private var queue: [(ticket: Ticket, deadline: UInt64)] = []
    private var queueHead = 0
    /// Run time, exponentially averaged, in nanoseconds; nil until a run is measured.
    private(set) var averageRunNanos: Double?

    init(_ settings: Settings) { self.settings = settings }

    /// Calls waiting to start.
    var waiting: Int { queue.count - queueHead }

    /// A call arrives at `now`.
    mutating func arrive(_ ticket: Ticket, deadline: UInt64, now: UInt64) -> Decision {
        if now > deadline { return .expired(ticket) }
        if let average = averageRunNanos, average < settings.inlineThresholdNanos, running == 0 {
            // A tiny model: running it on the loop costs less than handing it to a worker.
            return .runInline(ticket)
        }
        if running < settings.concurrency {
            running += 1
            return .start(ticket)
        }
        if waiting < settings.queueLimit {
            queue.append((ticket, deadline))
            return .queued
        }
        return .overloaded(ticket)
    }

    /// A call started by ``Decision/start(_:)`` finished at `now`: the waiting calls that start
    /// now, and those whose deadline passed while they waited.
    mutating func finished(now: UInt64) -> [Decision] {
        running -= 1
        var next: [Decision] = []
        while running < settings.concurrency, waiting > 0 {
            let (ticket, deadline) = queue[queueHead]
            queueHead += 1
            if now > deadline {
                next.append(.expired(ticket))
                continue
            }
            running += 1
            next.append(.start(ticket))
        }
        if queueHead == queue.count {
            queue.removeAll(keepingCapacity: queue.capacity <= 64)
            queueHead = 0
        } else if queueHead > 64 && queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        return next
    }

    /// A run took `nanoseconds` (of the thread's CPU time).
    mutating func measured(_ nanoseconds: UInt64) {
        let x = Double(nanoseconds)
        averageRunNanos = averageRunNanos.map { $0 * 0.9 + x * 0.1 } ?? x
    }

    /// Takes every waiting call out of the queue (to answer them when the node stops).
    mutating func removeAllWaiting() -> [Ticket] {
        let tickets = queue[queueHead...].map(\.ticket)
        queue.removeAll()
        queueHead = 0
        return tickets
    }
}
