import Glibc

/// A value guarded by a pthread mutex.
///
/// Kaa uses this instead of `Synchronization.Mutex` because ThreadSanitizer sees the ordering a
/// pthread mutex gives (it intercepts `pthread_mutex_lock`), while the standard library's Mutex
/// locks in code built without the sanitizer: under `--sanitize=thread` every hand-off through it
/// would be reported as a race. With this, a TSan run reports real races only.
public final class Locked<Value>: @unchecked Sendable {
    // SAFETY: `value` is read and written only inside `withLock`, between `pthread_mutex_lock`
    // and `pthread_mutex_unlock` of `mutex`, so no two threads touch it at once. Callers MUST NOT
    // let a reference-typed `Value`'s non-Sendable state escape the closure.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with the value, holding the lock.
    @inline(__always)
    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
