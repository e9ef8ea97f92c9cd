import KaaCore

/// What one kernel call produces: one tensor, two (a classifier's labels and scores) or three
/// (DynamicQuantizeLinear's values, scale and zero point).
///
/// Held inline rather than in an array, so that returning it allocates nothing.
struct Outputs {
    /// Optional only so that the plan can move a result out (``take(_:)``) without copying
    /// it; a kernel always sets it.
    private var first: Tensor?
    private var second: Tensor?
    private var third: Tensor?

    init(_ first: Tensor) { self.first = first }
    init(_ first: Tensor, _ second: Tensor) {
        self.first = first
        self.second = second
    }
    init(_ first: Tensor, _ second: Tensor, _ third: Tensor) {
        self.first = first
        self.second = second
        self.third = third
    }

    var count: Int { third != nil ? 3 : second != nil ? 2 : 1 }

    /// Moves output `i` (under ``count``) out; it is nil afterwards.
    mutating func take(_ i: Int) -> Tensor? {
        switch i {
        case 0: first.take()
        case 1: second.take()
        default: third.take()
        }
    }
}

/// The memory one run of a plan works in: its value slots, and the element arrays and
/// shapes of earlier runs, handed back to kernels for their outputs.
///
/// A plan's steps ask for the same sizes in the same order whenever the batch size is the
/// same, so from the second run with a given batch size on, every output a kernel asks for is
/// an array that an earlier run released: the run allocates nothing. Arrays that outlive the
/// run (the outputs the caller receives) return when the caller hands them back (see
/// ``Model/run(_:into:limits:)``).
///
/// A workspace is used by one run at a time; ``WorkspacePool`` hands it out.
final class Workspace: @unchecked Sendable {
    /// What a run changes. It lives behind a pointer rather than in stored `var`s: a workspace
    /// serves one run at a time on one thread, and each access to a class's stored `var` pays
    /// a dynamic exclusivity check, which for a small model costs more than its arithmetic.
    struct Memory {
        /// The run's value slots (the plan's template, then inputs and step outputs).
        var slots: [Tensor?] = []
        /// Per slot that may share its elements (``Plan/shareSlots``): the address of the
        /// elements it holds, so a release can tell whether another live slot still holds them.
        var shared: [UnsafeRawPointer?] = []
        /// The argument list handed to each step.
        var args: [Tensor?] = []
        /// Addresses of element arrays this workspace must never reuse: the caller's inputs and
        /// the model's constants, which others still hold.
        var foreign: [UnsafeRawPointer] = []
        /// How many of `foreign` are the model's constants (the rest are this run's inputs).
        var constantCount = 0

        var float32: [[Float]] = []
        var float64: [[Double]] = []
        var int64: [[Int64]] = []
        var int32: [[Int32]] = []
        var bool: [[Bool]] = []
        var string: [[String]] = []
        var uint8: [[UInt8]] = []
        var int8: [[Int8]] = []
        var scratchInts: [Int] = []
        var shapeScratch: [Int] = []
        /// Shapes handed out before, shared by every tensor of that shape (a shape array is
        /// never mutated once in a tensor; if it were, it would be copied first).
        var shapes: [[Int]] = []
        /// Bytes of element arrays kept for reuse.
        var keptBytes = 0
        /// Bytes of element arrays the current run holds: charged when a kernel asks for an
        /// array (``Workspace/array(_:_:)``, ``Workspace/strings(_:_:)``,
        /// ``Workspace/charge(_:_:what:)``), uncharged when the run releases it.
        var held = 0
        /// The most ``held`` may reach in the current run (``RunLimits/maxBytes``).
        var limit = Int.max
    }

    let m: UnsafeMutablePointer<Memory>

    init() {
        m = .allocate(capacity: 1)
        m.initialize(to: Memory())
    }

    deinit {
        m.deinitialize(count: 1)
        m.deallocate()
    }

    /// Bytes of element arrays kept for reuse.
    var keptBytes: Int { m.pointee.keptBytes }
    /// At most this many bytes of element arrays are kept between runs; larger batches
    /// allocate what does not fit.
    static let keptBytesLimit = 1 << 20
    static let shapeLimit = 64

    // MARK: Outputs for kernels

    /// `n` elements, filled by `fill`, which MUST write every one (the memory may hold an
    /// earlier run's values). Throws ``EngineError/Code/limitExceeded`` before taking the
    /// memory when the run would hold more than its limit (see ``charge(_:_:what:)``).
    @inline(__always)
    func array<T: Reusable>(_ n: Int, _ fill: (UnsafeMutableBufferPointer<T>) throws -> Void) throws -> [T] {
        try charge(n, MemoryLayout<T>.stride, what: T.self)
        var a = T.take(n, self)
        try a.withUnsafeMutableBufferPointer { try fill($0) }
        return a
    }

    /// `n` elements, all `value`.
    @inline(__always)
    func array<T: Reusable>(_ n: Int, repeating value: T) throws -> [T] {
        try array(n) { $0.initialize(repeating: value) }
    }

    /// Counts `n` elements of `stride` bytes against the run's limit, before the caller
    /// allocates them: every array a kernel makes outside ``array(_:_:)`` and
    /// ``strings(_:_:)`` (text it builds, a string's bytes) MUST be charged first. Throws
    /// ``EngineError/Code/limitExceeded`` when the run would then hold more than its limit,
    /// and ``EngineError/Code/invalidInput`` when `n` is negative or above
    /// ``Limits/maxElements`` (which no run may hold in one array, whatever its limit).
    @inline(__always)
    func charge(_ n: Int, _ stride: Int, what: Any.Type) throws {
        let (bytes, o1) = n.multipliedReportingOverflow(by: stride)
        let (total, o2) = m.pointee.held.addingReportingOverflow(bytes)
        guard n >= 0, n <= Limits.maxElements, !o1, !o2, total <= m.pointee.limit else {
            throw refusal(n, stride, what)
        }
        m.pointee.held = total
    }

    /// Uncounts `bytes` the run charged and has released.
    @inline(__always)
    func uncharge(_ bytes: Int) {
        m.pointee.held -= bytes
    }

    /// The error for an array of `n` elements of `stride` bytes that the run may not take.
    @inline(never)
    private func refusal(_ n: Int, _ stride: Int, _ type: Any.Type) -> EngineError {
        let held = m.pointee.held, limit = m.pointee.limit
        let what = switch ObjectIdentifier(type) {
        case ObjectIdentifier(Float.self): "float32 elements"
        case ObjectIdentifier(Double.self): "float64 elements"
        case ObjectIdentifier(String.self): "strings"
        case ObjectIdentifier(TextBytes.self): "bytes of text"
        case ObjectIdentifier(UInt8.self): "uint8 elements"
        case ObjectIdentifier(Int8.self): "int8 elements"
        case ObjectIdentifier(Int.self): "scratch indices"
        default: "\(type) elements".lowercased()
        }
        guard n >= 0, n <= Limits.maxElements else {
            return EngineError.input("needs an array of \(n) \(what); one tensor may hold at most \(Limits.maxElements): the inputs are too large for this model, send a smaller batch")
        }
        let needed = Int(exactly: Double(held) + Double(n) * Double(stride)).map(EngineError.bytes) ?? "more than \(Int.max) bytes"
        return EngineError(.limitExceeded, "the call needs \(needed): \(EngineError.bytes(n * stride)) for \(n) \(what) on top of \(EngineError.bytes(held)) it already holds; the per-call limit is \(EngineError.bytes(limit)). Send a smaller batch, or raise the per-call memory limit")
    }

    /// Takes back a scratch array a kernel got from ``array(_:_:)`` and no longer needs. The
    /// caller MUST keep no other copy of it.
    func giveBack<T: Reusable>(_ a: [T]) {
        guard !a.isEmpty else { return }
        let bytes = a.count * MemoryLayout<T>.stride
        uncharge(bytes)
        guard m.pointee.keptBytes + bytes <= Self.keptBytesLimit else { return }
        T.put(a, self)
        m.pointee.keptBytes += bytes
    }

    /// `n` strings (initialized, possibly to an earlier run's values), set by `fill`. Charges
    /// their headers as ``array(_:_:)`` does; a kernel that makes new text charges its bytes
    /// with ``charge(_:_:what:)``.
    func strings(_ n: Int, _ fill: (UnsafeMutableBufferPointer<String>) throws -> Void) throws -> [String] {
        try charge(n, MemoryLayout<String>.stride, what: String.self)
        var a: [String]
        if let i = m.pointee.string.firstIndex(where: { $0.count == n }) {
            m.pointee.string.swapAt(i, m.pointee.string.count - 1)
            a = m.pointee.string.removeLast()
            m.pointee.keptBytes -= n * MemoryLayout<String>.stride
        } else {
            a = [String](repeating: "", count: n)
        }
        try a.withUnsafeMutableBufferPointer { try fill($0) }
        return a
    }

    /// A tensor of `x`'s element type and `n` elements, each copied from `x` at the index
    /// `index(i)` gives for output element `i`, which MUST be in range.
    func gather(_ x: Tensor.Storage, _ n: Int, _ index: (Int) -> Int) throws -> Tensor.Storage {
        switch x {
        case .float32(let v): .float32(try array(n) { o in v.withUnsafeBufferPointer { p in for i in 0..<n { o[i] = p[index(i)] } } })
        case .float64(let v): .float64(try array(n) { o in v.withUnsafeBufferPointer { p in for i in 0..<n { o[i] = p[index(i)] } } })
        case .int64(let v): .int64(try array(n) { o in v.withUnsafeBufferPointer { p in for i in 0..<n { o[i] = p[index(i)] } } })
        case .int32(let v): .int32(try array(n) { o in v.withUnsafeBufferPointer { p in for i in 0..<n { o[i] = p[index(i)] } } })
        case .bool(let v): .bool(try array(n) { o in v.withUnsafeBufferPointer { p in for i in 0..<n { o[i] = p[index(i)] } } })
        case .string(let v): .string(try strings(n) { o in for i in 0..<n { o[i] = v[index(i)] } })
        case .uint8(let v): .uint8(try array(n) { o in v.withUnsafeBufferPointer { p in for i in 0..<n { o[i] = p[index(i)] } } })
        case .int8(let v): .int8(try array(n) { o in v.withUnsafeBufferPointer { p in for i in 0..<n { o[i] = p[index(i)] } } })
        }
    }

    /// Scratch integers for the duration of `body` (not kept by any tensor), charged against
    /// the run's limit while it lasts. Kept for the next call unless larger than
    /// ``keptBytesLimit``.
    func withScratch<R>(_ n: Int, _ body: (UnsafeMutableBufferPointer<Int>) throws -> R) throws -> R {
        try charge(n, MemoryLayout<Int>.stride, what: Int.self)
        defer {
            uncharge(n * MemoryLayout<Int>.stride)
            if m.pointee.scratchInts.count * MemoryLayout<Int>.stride > Self.keptBytesLimit { m.pointee.scratchInts = [] }
        }
        if m.pointee.scratchInts.count < n { m.pointee.scratchInts = [Int](repeating: 0, count: n) }
        return try m.pointee.scratchInts.withUnsafeMutableBufferPointer { try body(UnsafeMutableBufferPointer(rebasing: $0[0..<n])) }
    }

    // MARK: Shapes

    /// The shape `[a]`.
    func shape(_ a: Int) -> [Int] {
        for s in m.pointee.shapes where s.count == 1 && s[0] == a { return s }
        return remember([a])
    }

    /// The shape `[a, b]`.
    func shape(_ a: Int, _ b: Int) -> [Int] {
        for s in m.pointee.shapes where s.count == 2 && s[0] == a && s[1] == b { return s }
        return remember([a, b])
    }

    /// The shape of `rank` dimensions that `fill` writes.
    func shape(rank: Int, _ fill: (UnsafeMutableBufferPointer<Int>) -> Void) -> [Int] {
        if m.pointee.shapeScratch.count < rank { m.pointee.shapeScratch = [Int](repeating: 0, count: rank) }
        return m.pointee.shapeScratch.withUnsafeMutableBufferPointer { all in
            let dims = UnsafeMutableBufferPointer(rebasing: all[0..<rank])
            fill(dims)
            for s in m.pointee.shapes where s.count == rank && s.elementsEqual(dims) { return s }
            return remember(Array(dims))
        }
    }

    private func remember(_ s: [Int]) -> [Int] {
        if m.pointee.shapes.count >= Self.shapeLimit { m.pointee.shapes.removeAll(keepingCapacity: true) }
        m.pointee.shapes.append(s)
        return s
    }

    // MARK: Reuse

    @inline(__always)
    fileprivate func take<T>(_ n: Int, _ list: inout [[T]]) -> [T] {
        var i = list.count - 1
        while i >= 0 {
            if list[i].count == n {
                list.swapAt(i, list.count - 1)
                let a = list.removeLast()
                m.pointee.keptBytes -= n * MemoryLayout<T>.stride
                return a
            }
            i -= 1
        }
        return [T](unsafeUninitializedCapacity: n) { _, c in c = n }
    }

    /// Keeps `t`'s element array for a later output, unless it is foreign, empty, already
    /// kept, or over the limit. The caller MUST hold no other reference to it that it will
    /// read again (a live slot sharing it is checked by ``Plan``).
    func keep(_ t: Tensor) {
        keep(t, released: false)
    }

    /// Releases an array of the current run that no live value holds any more: uncharges it
    /// (unless it is foreign, which the run never charged) and keeps it as ``keep(_:)`` does.
    func release(_ t: Tensor) {
        keep(t, released: true)
    }

    private func keep(_ t: Tensor, released: Bool) {
        guard let address = t.storage.address, !m.pointee.foreign.contains(address) else { return }
        let bytes = t.count * t.dtype.byteWidth
        func put<T>(_ a: [T], _ list: inout [[T]]) {
            // Already kept: released (and uncharged) before.
            for k in list where k.withUnsafeBufferPointer({ UnsafeRawPointer($0.baseAddress) == address }) { return }
            if released { uncharge(bytes) }
            guard m.pointee.keptBytes + bytes <= Self.keptBytesLimit else { return }
            list.append(a)
            m.pointee.keptBytes += bytes
        }
        switch t.storage {
        case .float32(let v): put(v, &m.pointee.float32)
        case .float64(let v): put(v, &m.pointee.float64)
        case .int64(let v): put(v, &m.pointee.int64)
        case .int32(let v): put(v, &m.pointee.int32)
        case .bool(let v): put(v, &m.pointee.bool)
        case .string(let v): put(v, &m.pointee.string)
        case .uint8(let v): put(v, &m.pointee.uint8)
        case .int8(let v): put(v, &m.pointee.int8)
        }
    }
}

/// An element type whose arrays a ``Workspace`` keeps for reuse.
protocol Reusable {
    static func take(_ n: Int, _ ws: Workspace) -> [Self]
    static func put(_ a: [Self], _ ws: Workspace)
}

extension Float: Reusable {
    @inline(__always) static func take(_ n: Int, _ ws: Workspace) -> [Float] { ws.take(n, &ws.m.pointee.float32) }
    static func put(_ a: [Float], _ ws: Workspace) { ws.m.pointee.float32.append(a) }
}

extension Double: Reusable {
    @inline(__always) static func take(_ n: Int, _ ws: Workspace) -> [Double] { ws.take(n, &ws.m.pointee.float64) }
    static func put(_ a: [Double], _ ws: Workspace) { ws.m.pointee.float64.append(a) }
}

extension Int64: Reusable {
    @inline(__always) static func take(_ n: Int, _ ws: Workspace) -> [Int64] { ws.take(n, &ws.m.pointee.int64) }
    static func put(_ a: [Int64], _ ws: Workspace) { ws.m.pointee.int64.append(a) }
}

extension Int32: Reusable {
    @inline(__always) static func take(_ n: Int, _ ws: Workspace) -> [Int32] { ws.take(n, &ws.m.pointee.int32) }
    static func put(_ a: [Int32], _ ws: Workspace) { ws.m.pointee.int32.append(a) }
}

extension Bool: Reusable {
    @inline(__always) static func take(_ n: Int, _ ws: Workspace) -> [Bool] { ws.take(n, &ws.m.pointee.bool) }
    static func put(_ a: [Bool], _ ws: Workspace) { ws.m.pointee.bool.append(a) }
}

extension UInt8: Reusable {
    @inline(__always) static func take(_ n: Int, _ ws: Workspace) -> [UInt8] { ws.take(n, &ws.m.pointee.uint8) }
    static func put(_ a: [UInt8], _ ws: Workspace) { ws.m.pointee.uint8.append(a) }
}

extension Int8: Reusable {
    @inline(__always) static func take(_ n: Int, _ ws: Workspace) -> [Int8] { ws.take(n, &ws.m.pointee.int8) }
    static func put(_ a: [Int8], _ ws: Workspace) { ws.m.pointee.int8.append(a) }
}

/// What text operators name when they charge the bytes of strings they make
/// (``Workspace/charge(_:_:what:)``).
enum TextBytes {}

extension Tensor.Storage {
    /// Where the elements live, for telling whether two tensors share them; `nil` when empty.
    var address: UnsafeRawPointer? {
        switch self {
        case .float32(let v): v.isEmpty ? nil : v.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
        case .float64(let v): v.isEmpty ? nil : v.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
        case .int64(let v): v.isEmpty ? nil : v.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
        case .int32(let v): v.isEmpty ? nil : v.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
        case .bool(let v): v.isEmpty ? nil : v.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
        case .string(let v): v.isEmpty ? nil : v.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
        case .uint8(let v): v.isEmpty ? nil : v.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
        case .int8(let v): v.isEmpty ? nil : v.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
        }
    }
}

/// The idle workspaces of one plan. A run takes one (or makes one when none is idle) and
/// gives it back; at most ``limit`` stay idle, so a burst of concurrent calls leaves no more
/// memory behind than a few runs need.
final class WorkspacePool: Sendable {
    private let idle = Locked<[Workspace]>([])
    let limit: Int

    init(limit: Int) { self.limit = limit }

    func take() -> Workspace {
        idle.withLock { $0.popLast() } ?? Workspace()
    }

    func give(_ ws: Workspace) {
        idle.withLock { if $0.count < limit { $0.append(ws) } }
    }

    /// Bytes the idle workspaces keep for reuse.
    var keptBytes: Int { idle.withLock { $0.reduce(0) { $0 + $1.keptBytes } } }
}
