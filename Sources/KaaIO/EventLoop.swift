internal import CLibUV
import Dispatch
import Foundation
import KaaCore
import Synchronization

/// One libuv loop running on its own thread; it owns every handle opened on it.
///
/// Handles (timers, sockets, signal watchers) are created and used on the loop thread only.
/// Other threads reach the loop through ``execute(_:)`` (a `uv_async_t` wake-up); CPU work leaves
/// the loop through ``offload(_:then:)`` (libuv's thread pool).
public final class EventLoop: @unchecked Sendable {
    // SAFETY: `raw`, `handles`, `threadID` after start, and every handle are touched only on the
    // loop thread (checked by `assertInLoop()` in debug builds). `pending` is guarded by its
    // lock. `threadID` is written once before the loop thread signals `started`, and read
    // after that signal.
    let raw: UnsafeMutablePointer<uv_loop_t>
    private let wakeup: UnsafeMutablePointer<uv_async_t>
    private let pending = Locked<Pending>(Pending())
    private var threadID: pthread_t?
    private var handles: [ObjectIdentifier: LoopHandle] = [:]
    private let finished = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)
    private let offloads = Atomic<Int>(0)
    /// Scratch buffer for socket reads: data is consumed inside the read callback, so one
    /// buffer serves every connection on the loop.
    let readBuffer: UnsafeMutableRawBufferPointer
    public let name: String

    /// Starts a loop on a new thread named `name`.
    /// A write to a socket the peer has reset raises SIGPIPE, whose default action ends the
    /// process; libuv reports the error (EPIPE) to the writer instead once it is ignored. Set
    /// once, before the first loop runs.
    private static let ignoreBrokenPipes: Void = { signal(SIGPIPE, SIG_IGN) }()

    public static func start(name: String = "kaa-loop") -> EventLoop {
        ignoreBrokenPipes
        let loop = EventLoop(name: name)
        let started = DispatchSemaphore(value: 0)
        let thread = Thread { [loop] in
            EventLoop.blockBrokenPipeSignal()
            loop.threadID = pthread_self()
            started.signal()
            loop.run()
        }
        thread.name = name
        thread.stackSize = 8 << 20
        thread.start()
        started.wait()
        return loop
    }

    private init(name: String) {
        self.name = name
        _ = EventLoop.threadPoolConfigured
        raw = .allocate(capacity: 1)
        precondition(uv_loop_init(raw) == 0, "uv_loop_init failed")
        wakeup = .allocate(capacity: 1)
        readBuffer = .allocate(byteCount: 64 * 1024, alignment: 16)
        raw.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        precondition(uv_async_init(raw, wakeup) { async in
            let loop = Unmanaged<EventLoop>.fromOpaque(async!.pointee.data).takeUnretainedValue()
            loop.drainPending()
        } == 0, "uv_async_init failed")
        wakeup.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    /// Keeps SIGPIPE from killing the process when a socket write on this thread meets a peer
    /// that has gone (libuv writes with `write(2)`): the write fails with EPIPE instead, and the
    /// connection closes as for any failed write. Blocked on the loop thread only, where every
    /// socket write happens, so the rest of the process keeps the default.
    private static func blockBrokenPipeSignal() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGPIPE)
        let rc = pthread_sigmask(SIG_BLOCK, &set, nil)
        precondition(rc == 0, "pthread_sigmask(SIG_BLOCK, SIGPIPE) failed: \(rc)")
    }

    /// libuv sizes its thread pool from `UV_THREADPOOL_SIZE` on first use: one worker per core.
    private static let threadPoolConfigured: Bool = {
        if getenv("UV_THREADPOOL_SIZE") == nil {
            setenv("UV_THREADPOOL_SIZE", String(max(2, ProcessInfo.processInfo.activeProcessorCount)), 1)
        }
        return true
    }()

    private func run() {
        uv_run(raw, UV_RUN_DEFAULT)
        // Everything is closed: release the loop's own memory.
        let rc = uv_loop_close(raw)
        assert(rc == 0, "loop closed with open handles")
        raw.deallocate()
        wakeup.deallocate()
        readBuffer.deallocate()
        finished.signal()
    }

    /// True on the loop's own thread.
    public var inLoop: Bool {
        guard let id = threadID else { return false }
        return pthread_equal(id, pthread_self()) != 0
    }

    /// Traps in debug builds when called off the loop thread.
    @inline(__always)
    public func assertInLoop(file: StaticString = #fileID, line: UInt = #line) {
        assert(inLoop, "must run on event loop \(name)", file: file, line: line)
    }

    private struct Pending {
        var queue: [@Sendable () -> Void] = []
        /// Set once the wake-up handle is closed: later work is dropped.
        var closed = false
    }

    /// Runs `work` on the loop thread, soon. Safe from any thread, including the loop's own.
    /// Work handed to a loop that has shut down is dropped.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        pending.withLock {
            guard !$0.closed else { return }
            $0.queue.append(work)
            uv_async_send(wakeup) // under the lock, so the handle cannot be closed meanwhile
        }
    }

    private func drainPending() {
        let work = pending.withLock { state -> [@Sendable () -> Void] in
            let taken = state.queue
            state.queue.removeAll(keepingCapacity: true)
            return taken
        }
        for item in work { item() }
        if stopping.load(ordering: .relaxed) { closeEverything() }
    }

    /// Runs `body` on the loop and waits for its result. Called on the loop, runs it directly.
    public func runBlocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        if inLoop { return try body() }
        let done = DispatchSemaphore(value: 0)
        let result = Locked<Result<T, any Error>?>(nil)
        execute {
            let r = Result { try body() }
            result.withLock { $0 = r }
            done.signal()
        }
        done.wait()
        return try result.withLock { $0! }.get()
    }

    /// Runs `body` on the loop and waits for it; for work that cannot fail.
    public func runBlocking<T: Sendable>(_ body: @escaping @Sendable () -> T) -> T {
        try! runBlocking { () throws -> T in body() }
    }

    /// Runs `work` on libuv's thread pool, then `then` with its result on the loop thread.
    /// MUST be called on the loop.
    public func offload<T>(_ work: @escaping @Sendable () -> T, then: @escaping (T) -> Void) {
        assertInLoop()
        let job: OffloadJob = TypedOffloadJob(work: work, then: then)
        offloads.add(1, ordering: .relaxed)
        let req = UnsafeMutablePointer<uv_work_t>.allocate(capacity: 1)
        req.pointee.data = Unmanaged.passRetained(job).toOpaque()
        let rc = uv_queue_work(raw, req, { req in
            Unmanaged<OffloadJob>.fromOpaque(req!.pointee.data).takeUnretainedValue().perform()
        }, { req, status in
            let job = Unmanaged<OffloadJob>.fromOpaque(req!.pointee.data).takeRetainedValue()
            Unmanaged<EventLoop>.fromOpaque(req!.pointee.loop.pointee.data).takeUnretainedValue().offloads.subtract(1, ordering: .relaxed)
            req!.deallocate()
            job.finish()
        })
        precondition(rc == 0, "uv_queue_work failed: \(rc)")
    }

    /// Jobs handed to the thread pool by ``offload(_:then:)`` whose `then` has not run yet. The
    /// loop does not end before they have. Safe from any thread.
    public var offloadsInFlight: Int { offloads.load(ordering: .relaxed) }

    /// Asks the loop to close every handle and return; blocks until the loop thread ends.
    /// MUST NOT be called on the loop thread.
    public func shutdown() {
        precondition(!inLoop, "EventLoop.shutdown() called on its own thread")
        if stopping.exchange(true, ordering: .relaxed) { return }
        pending.withLock { if !$0.closed { uv_async_send(wakeup) } }
        finished.wait()
    }

    private func closeEverything() {
        for handle in Array(handles.values) { handle.close() }
        let leftovers = pending.withLock { state -> [@Sendable () -> Void] in
            state.closed = true
            defer { state.queue = [] }
            return state.queue
        }
        for item in leftovers { item() } // last hand-offs still see a running loop
        for handle in Array(handles.values) { handle.close() }
        uv_close(UnsafeMutableRawPointer(wakeup).assumingMemoryBound(to: uv_handle_t.self), nil)
    }

    // MARK: handle registry

    func register(_ handle: LoopHandle) { handles[ObjectIdentifier(handle)] = handle }
    func unregister(_ handle: LoopHandle) { handles[ObjectIdentifier(handle)] = nil }

    /// Handle owners the loop keeps alive (open or closing). MUST be called on the loop.
    var registeredHandleCount: Int {
        assertInLoop()
        return handles.count
    }

    /// Handles open on this loop, as libuv counts them (the loop's own wake-up excluded).
    /// MUST be called on the loop.
    public var openHandleCount: Int {
        assertInLoop()
        var count = 0
        uv_walk(raw, { handle, arg in
            if uv_is_closing(handle) == 0 { arg!.assumingMemoryBound(to: Int.self).pointee += 1 }
        }, &count)
        return count - 1
    }

    /// The loop's cached time in milliseconds (updated once per loop iteration).
    public var nowMilliseconds: UInt64 { uv_now(raw) }

    /// The monotonic clock in nanoseconds, read now (any thread).
    public var nowNanoseconds: UInt64 { uv_hrtime() }
}

/// A unit of thread-pool work; `perform` runs on a pool thread, `finish` on the loop.
private class OffloadJob {
    func perform() {}
    func finish() {}
}

private final class TypedOffloadJob<T>: OffloadJob, @unchecked Sendable {
    // SAFETY: `result` is written by `perform` on a pool thread and read by `finish` on the loop
    // thread; libuv orders the two (after_work_cb runs after work_cb returns).
    private let work: @Sendable () -> T
    private let then: (T) -> Void
    private var result: T?

    init(work: @escaping @Sendable () -> T, then: @escaping (T) -> Void) {
        self.work = work
        self.then = then
    }

    override func perform() { result = work() }
    override func finish() { then(result!) }
}
