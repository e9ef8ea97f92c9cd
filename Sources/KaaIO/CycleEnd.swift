internal import CLibUV

/// Output gathered during a loop cycle, to be written once the cycle's I/O events are handled.
protocol CycleEndFlushable: AnyObject {
    func flushAtCycleEnd()
}

/// Flushes queued output after the loop has run every I/O callback of the current cycle.
///
/// A server that writes each answer as soon as it is made wakes its client once per answer;
/// answers to one batch of readable connections that leave together wake it once. A `uv_check`
/// handle runs right after the poll phase and flushes the queue; while anything is queued an
/// idle handle is active too, which keeps the next poll from blocking, so output queued outside
/// the poll phase (a timer, a close callback) is written on the next cycle instead of waiting
/// for unrelated I/O. Loop-confined.
final class CycleEndQueue {
    private var queued: [any CycleEndFlushable] = []
    private var spare: [any CycleEndFlushable] = []
    private let check: PhaseHandle
    private let idle: PhaseHandle

    init(loop: EventLoop) {
        var flush: (() -> Void)?
        check = PhaseHandle(loop: loop, type: UV_CHECK) { flush?() }
        idle = PhaseHandle(loop: loop, type: UV_IDLE) { flush?() }
        check.start()
        flush = { [weak self] in self?.flushAll() }
    }

    /// A queue dropped without ``close()`` (its owner failed to start) still frees its handles.
    deinit {
        check.close()
        idle.close()
    }

    /// Queues `item`; it is flushed once at the end of this cycle (or, once closed, now).
    func enqueue(_ item: any CycleEndFlushable) {
        guard check.isOpen else {
            item.flushAtCycleEnd()
            return
        }
        if queued.isEmpty { idle.start() }
        queued.append(item)
    }

    private func flushAll() {
        guard !queued.isEmpty else { return }
        idle.stop()
        // Flushing may queue more (a write failure that answers another request): swap lists.
        while !queued.isEmpty {
            swap(&queued, &spare)
            for item in spare { item.flushAtCycleEnd() }
            spare.removeAll(keepingCapacity: true)
        }
    }

    /// Flushes what is queued and closes both handles; later items are flushed at once.
    func close() {
        flushAll()
        check.close()
        idle.close()
    }
}

/// A `uv_check_t` or `uv_idle_t` handle that calls `callback` in its phase of every cycle while
/// started.
final class PhaseHandle: LoopHandle {
    private var callback: (() -> Void)?
    private let kind: uv_handle_type
    private var started = false

    init(loop: EventLoop, type: uv_handle_type, callback: @escaping () -> Void) {
        precondition(type == UV_CHECK || type == UV_IDLE, "PhaseHandle takes check or idle handles")
        self.callback = callback
        kind = type
        super.init(loop: loop, type: type)
        let rc = type == UV_CHECK ? uv_check_init(loop.raw, cast(to: uv_check_t.self))
                                  : uv_idle_init(loop.raw, cast(to: uv_idle_t.self))
        precondition(rc == 0, "uv_check_init/uv_idle_init cannot fail on a live loop")
        adopt()
    }

    func start() {
        guard isOpen, !started else { return }
        started = true
        if kind == UV_CHECK {
            uv_check_start(cast(to: uv_check_t.self)) { handle in
                LoopHandle.owner(UnsafeMutableRawPointer(handle!).assumingMemoryBound(to: uv_handle_t.self),
                                 as: PhaseHandle.self).fire()
            }
        } else {
            uv_idle_start(cast(to: uv_idle_t.self)) { handle in
                LoopHandle.owner(UnsafeMutableRawPointer(handle!).assumingMemoryBound(to: uv_handle_t.self),
                                 as: PhaseHandle.self).fire()
            }
        }
    }

    func stop() {
        guard isOpen, started else { return }
        started = false
        if kind == UV_CHECK { uv_check_stop(cast(to: uv_check_t.self)) } else { uv_idle_stop(cast(to: uv_idle_t.self)) }
    }

    private func fire() { callback?() }

    override func willClose() {
        stop()
        callback = nil
    }
}
