import Dispatch
@testable import KaaIO
import Synchronization
import Testing

/// What happened, in order, across threads.
private final class Log: Sendable {
    private let entries = Mutex<[String]>([])
    func add(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
}

/// Records when the queue flushes it.
private final class Recorder: CycleEndFlushable {
    let name: String
    let log: Log
    let flushed: DispatchSemaphore?
    init(_ name: String, _ log: Log, flushed: DispatchSemaphore? = nil) {
        self.name = name
        self.log = log
        self.flushed = flushed
    }
    func flushAtCycleEnd() {
        log.add("flush \(name)")
        flushed?.signal()
    }
}

@Suite struct CycleEndQueueTests {
    /// Output queued in a callback leaves after the callback returns, once per item, in order.
    @Test func flushesAfterTheCallbackThatQueued() throws {
        let loop = EventLoop.start(name: "cycle-end")
        defer { loop.shutdown() }
        let log = Log()
        let done = DispatchSemaphore(value: 0)
        let queue = loop.runBlocking { LoopBound(CycleEndQueue(loop: loop), loop: loop) }
        loop.execute {
            let a = Recorder("a", log), b = Recorder("b", log, flushed: done)
            queue.value.enqueue(a)
            queue.value.enqueue(b)
            log.add("callback returns")
        }
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(log.all == ["callback returns", "flush a", "flush b"])
        loop.runBlocking { queue.value.close() }
    }

    /// Output queued from a timer (outside the poll phase) is written on the next cycle even when
    /// no other event would wake the loop: the idle handle keeps the poll from blocking.
    @Test func outputQueuedByATimerIsNotLeftWaitingForIO() throws {
        let loop = EventLoop.start(name: "cycle-end-timer")
        defer { loop.shutdown() }
        let log = Log()
        let done = DispatchSemaphore(value: 0)
        let queue = loop.runBlocking { LoopBound(CycleEndQueue(loop: loop), loop: loop) }
        // A repeating timer: a one-shot one closes itself, and a closing handle alone would
        // keep that cycle's poll from blocking.
        let timer = loop.runBlocking {
            LoopBound(loop.schedule(after: .milliseconds(5), repeating: .seconds(600)) {
                queue.value.enqueue(Recorder("timer", log, flushed: done))
            }, loop: loop)
        }
        // Nothing else would wake the loop for 10 minutes: without the idle handle this times out.
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(log.all == ["flush timer"])
        loop.runBlocking {
            timer.value.cancel()
            queue.value.close()
        }
    }

    /// Once closed, the queue flushes at once: a late answer is never stranded.
    @Test func afterCloseItemsFlushImmediately() throws {
        let loop = EventLoop.start(name: "cycle-end-closed")
        defer { loop.shutdown() }
        let log = Log()
        let handles = loop.runBlocking { () -> Int in
            let before = loop.openHandleCount
            let queue = CycleEndQueue(loop: loop)
            queue.close()
            queue.enqueue(Recorder("late", log))
            log.add("after enqueue")
            return before
        }
        #expect(log.all == ["flush late", "after enqueue"])
        // Both handles are closed: the loop is back to its count before the queue.
        let after = loop.runBlocking { loop.openHandleCount }
        #expect(after == handles)
    }

    /// A queue dropped without `close()` (a server whose listener failed to bind) frees its
    /// handles, and the loop goes on turning.
    @Test func aDroppedQueueFreesItsHandles() throws {
        let loop = EventLoop.start(name: "cycle-end-dropped")
        defer { loop.shutdown() }
        let before = loop.runBlocking { loop.openHandleCount }
        loop.runBlocking { _ = CycleEndQueue(loop: loop) }
        // Later turns run the check phase again; a leaked handle would still be counted.
        let ran = DispatchSemaphore(value: 0)
        loop.execute { loop.schedule(after: .milliseconds(5)) { ran.signal() } }
        #expect(ran.wait(timeout: .now() + 10) == .success)
        #expect(loop.runBlocking { loop.openHandleCount } == before)
    }
}
