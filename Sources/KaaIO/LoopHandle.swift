internal import CLibUV
import KaaCore
import Synchronization

/// The owner of one libuv handle's memory.
///
/// The handle is allocated in `init` and freed in exactly one place: the close callback, after
/// libuv is done with it. While open, the loop's registry keeps the owner alive, so libuv never
/// holds a pointer to freed memory. Loop-confined: every method runs on the loop thread.
public class LoopHandle {
    enum State { case open, closing, closed }

    unowned let loop: EventLoop
    let handle: UnsafeMutablePointer<uv_handle_t>
    private(set) var state: State = .open
    /// Called once after the handle is closed and freed.
    var onClose: (() -> Void)?

    /// Allocates the handle memory for `type`; the subclass MUST initialize it with `uv_X_init`
    /// and call ``adopt()`` on success or ``discardUninitialized()`` on failure.
    init(loop: EventLoop, type: uv_handle_type) {
        loop.assertInLoop()
        self.loop = loop
        let size = uv_handle_size(type)
        handle = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
            .initializeMemory(as: UInt8.self, repeating: 0, count: size)
            .withMemoryRebound(to: uv_handle_t.self, capacity: 1) { $0 }
        LiveObjects.loopHandles.add(1, ordering: .relaxed)
    }

    /// Registers an initialized handle with the loop.
    final func adopt() {
        handle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        loop.register(self)
    }

    /// Frees a handle whose `uv_X_init` failed (libuv never saw it).
    final func discardUninitialized() {
        state = .closed
        handle.deallocate()
    }

    public var isOpen: Bool { state == .open }

    /// Closes the handle; idempotent. Subclasses override ``willClose()`` to stop their work.
    public final func close() {
        guard state == .open else { return }
        state = .closing
        willClose()
        uv_close(handle) { handle in
            let owner = Unmanaged<LoopHandle>.fromOpaque(handle!.pointee.data).takeUnretainedValue()
            owner.didClose()
        }
    }

    /// Runs just before `uv_close`; the handle is still valid.
    func willClose() {}

    private func didClose() {
        withExtendedLifetime(self) {
            state = .closed
            handle.deallocate()
            let callback = onClose
            onClose = nil
            loop.unregister(self)
            callback?()
        }
    }

    deinit {
        precondition(state == .closed, "\(type(of: self)) deallocated while its libuv handle is open")
        LiveObjects.loopHandles.subtract(1, ordering: .relaxed)
    }

    static func owner<T: LoopHandle>(_ handle: UnsafeMutablePointer<uv_handle_t>?, as: T.Type) -> T {
        Unmanaged<LoopHandle>.fromOpaque(handle!.pointee.data).takeUnretainedValue() as! T
    }

    /// libuv's allocation callback for reads: lends the loop's scratch buffer (every read is
    /// consumed before the callback returns).
    static func lendReadBuffer(_ handle: UnsafeMutablePointer<uv_handle_t>?, _ buf: UnsafeMutablePointer<uv_buf_t>?) {
        let loop = Unmanaged<LoopHandle>.fromOpaque(handle!.pointee.data).takeUnretainedValue().loop
        buf!.pointee = uv_buf_init(loop.readBuffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                   UInt32(loop.readBuffer.count))
    }

    func cast<T>(to: T.Type) -> UnsafeMutablePointer<T> {
        UnsafeMutableRawPointer(handle).assumingMemoryBound(to: T.self)
    }
}

/// A one-shot or repeating timer on the loop. Loop-confined.
public final class LoopTimer {
    fileprivate let inner: TimerHandle

    fileprivate init(inner: TimerHandle) { self.inner = inner }

    /// Stops the timer and frees it; idempotent.
    public func cancel() { inner.close() }

    public var isActive: Bool { inner.isOpen }
}

final class TimerHandle: LoopHandle {
    var callback: (() -> Void)?
    let repeats: Bool

    init(loop: EventLoop, delayMs: UInt64, repeatMs: UInt64, callback: @escaping () -> Void) {
        self.callback = callback
        self.repeats = repeatMs > 0
        super.init(loop: loop, type: UV_TIMER)
        let timer = cast(to: uv_timer_t.self)
        precondition(uv_timer_init(loop.raw, timer) == 0)
        adopt()
        // The loop's clock is read once per iteration; a timer set late in a long iteration
        // would otherwise fire early by that much.
        uv_update_time(loop.raw)
        uv_timer_start(timer, { timer in
            let owner = LoopHandle.owner(UnsafeMutableRawPointer(timer!).assumingMemoryBound(to: uv_handle_t.self), as: TimerHandle.self)
            owner.fire()
        }, delayMs, repeatMs)
    }

    private func fire() {
        guard isOpen, let callback else { return }
        if !repeats { close() }
        callback()
    }

    override func willClose() {
        uv_timer_stop(cast(to: uv_timer_t.self))
        callback = nil
    }
}

extension EventLoop {
    /// Calls `callback` on the loop after `delay`, then every `repeating` if given.
    /// MUST be called on the loop. Keep the returned timer to cancel it; dropping it does not.
    @discardableResult
    public func schedule(after delay: Duration, repeating: Duration? = nil,
                         _ callback: @escaping () -> Void) -> LoopTimer {
        let handle = TimerHandle(loop: self, delayMs: delay.millisecondsRoundedUp,
                                 repeatMs: repeating.map { max(1, $0.millisecondsRoundedUp) } ?? 0,
                                 callback: callback)
        return LoopTimer(inner: handle)
    }
}
