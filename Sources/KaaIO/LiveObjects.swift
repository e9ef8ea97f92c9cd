import Synchronization

/// How many objects of each kind the I/O layer holds right now, process-wide.
///
/// The leak tests compare these before and after thousands of connections: a count that does
/// not come back is a leak, whatever the allocator does with memory. One relaxed atomic add
/// when such an object is made and one when it is freed (per connection or timer, never per
/// request on a kept-alive connection).
enum LiveObjects {
    /// ``LoopHandle`` owners (timers, sockets, listeners, phase handles), open or closed.
    static let loopHandles = Atomic<Int>(0)
    static let httpServerConnections = Atomic<Int>(0)
    static let httpClientConnections = Atomic<Int>(0)
    static let frameConnections = Atomic<Int>(0)
}
