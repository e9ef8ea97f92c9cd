import KaaCore
import KaaIO
import Logging

/// How late the node's loop runs what is due: one long piece of work on the loop delays every
/// gossip probe, answer and transfer behind it, and a probe answered late reads as a dead
/// member elsewhere. A timer due every `interval` records how much later than due it ran, in
/// `kaa_loop_lag_seconds`; a lag over `warnAbove` is logged (at most once every `warnEvery`).
/// Loop-confined.
final class LoopLag {
    static let interval = Duration.milliseconds(100)
    static let warnAbove = Duration.seconds(1)
    static let warnEvery = Duration.seconds(10)

    private let loop: EventLoop
    private let logger: Logger
    private var timer: LoopTimer?
    private var due: UInt64 = 0
    private(set) var histogram = LatencyHistogram()
    private(set) var worstNanoseconds: UInt64 = 0
    private var lastWarning: UInt64 = 0

    init(loop: EventLoop, logger: Logger) {
        self.loop = loop
        self.logger = logger
    }

    func start() {
        loop.assertInLoop()
        let step = UInt64(Self.interval.nanosecondsClamped)
        due = loop.nowNanoseconds + step
        timer = loop.schedule(after: Self.interval, repeating: Self.interval) { [weak self] in
            guard let self else { return }
            let now = self.loop.nowNanoseconds
            self.record(lag: now > self.due ? now - self.due : 0, at: now)
            self.due = now + step
        }
    }

    func stop() {
        timer?.cancel()
        timer = nil
    }

    private func record(lag: UInt64, at now: UInt64) {
        histogram.record(lag)
        worstNanoseconds = max(worstNanoseconds, lag)
        let warnAbove = UInt64(Self.warnAbove.nanosecondsClamped)
        guard lag > warnAbove, lastWarning == 0 || now - lastWarning > UInt64(Self.warnEvery.nanosecondsClamped) else { return }
        lastWarning = now
        logger.warning("the event loop was blocked; gossip probes, calls and transfers waited behind it (see kaa_loop_lag_seconds)",
                       metadata: ["seconds": "\(Double(lag) / 1e9)"])
    }

    /// Lines for `/metrics`.
    var metricsText: String {
        """
        # HELP kaa_loop_lag_seconds How much later than due the node's event loop ran a timer it checks every 100 ms.
        # TYPE kaa_loop_lag_seconds histogram
        \(histogram.exposition(name: "kaa_loop_lag_seconds"))# HELP kaa_loop_lag_max_seconds The longest such lag since the node started.
        # TYPE kaa_loop_lag_max_seconds gauge
        kaa_loop_lag_max_seconds \(Double(worstNanoseconds) / 1e9)

        """
    }
}
