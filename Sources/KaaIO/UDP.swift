internal import CLibUV
import Glibc

/// A bound UDP socket for gossip. Loop-confined.
public final class UDPSocket: LoopHandle {
    private var onReceive: ((UnsafeRawBufferPointer, SocketAddress) -> Void)?
    public private(set) var localAddress: SocketAddress
    /// Datagrams dropped because the kernel would not take them at once and the send queue
    /// was already over its bound.
    public private(set) var droppedSends = 0
    private var queuedBytes = 0
    /// Bound on bytes queued for sending; past it, sends are dropped (UDP is lossy anyway).
    public var maxQueuedBytes = 4 << 20

    private var udp: UnsafeMutablePointer<uv_udp_t> { cast(to: uv_udp_t.self) }

    /// Binds to `address`; `onReceive` gets each datagram (bytes valid during the call only).
    public init(loop: EventLoop, address: SocketAddress,
                onReceive: @escaping (UnsafeRawBufferPointer, SocketAddress) -> Void) throws(IOError) {
        self.onReceive = onReceive
        self.localAddress = address
        super.init(loop: loop, type: UV_UDP)
        let rc = uv_udp_init(loop.raw, cast(to: uv_udp_t.self))
        if rc < 0 {
            discardUninitialized()
            throw IOError(uv: rc, "create UDP socket")
        }
        adopt()
        do {
            try uvCheck(address.withSockAddr { uv_udp_bind(udp, $0, 0) }, "bind UDP \(address)")
            try uvCheck(uv_udp_recv_start(udp, { handle, _, buf in LoopHandle.lendReadBuffer(handle, buf) }, { handle, nread, buf, addr, _ in
                guard nread > 0, let addr else { return }
                let socket = LoopHandle.owner(UnsafeMutableRawPointer(handle!).assumingMemoryBound(to: uv_handle_t.self),
                                              as: UDPSocket.self)
                var storage = sockaddr_storage()
                let length = addr.pointee.sa_family == sa_family_t(AF_INET6)
                    ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
                withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: addr, count: length)) }
                socket.onReceive?(UnsafeRawBufferPointer(start: buf!.pointee.base, count: nread),
                                  SocketAddress(storage: storage))
            }), "receive on UDP \(address)")
        } catch {
            close()
            throw error
        }
        if let bound = SocketAddress.read({ uv_udp_getsockname(udp, $0, $1) }) { localAddress = bound }
    }

    /// Sends one datagram. Never blocks; drops it when the send queue is over its bound.
    public func send(_ bytes: UnsafeRawBufferPointer, to address: SocketAddress) {
        guard isOpen, !bytes.isEmpty else { return }
        var buf = uv_buf_init(UnsafeMutablePointer(mutating: bytes.baseAddress!.assumingMemoryBound(to: CChar.self)),
                              UInt32(bytes.count))
        let sent = address.withSockAddr { uv_udp_try_send(udp, &buf, 1, $0) }
        if sent >= 0 { return }
        guard queuedBytes + bytes.count <= maxQueuedBytes else {
            droppedSends += 1
            return
        }
        let headerSize = (MemoryLayout<uv_udp_send_t>.size + 15) & ~15
        let block = UnsafeMutableRawPointer.allocate(byteCount: headerSize + bytes.count, alignment: 16)
        let req = block.bindMemory(to: uv_udp_send_t.self, capacity: 1)
        (block + headerSize).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        buf = uv_buf_init((block + headerSize).assumingMemoryBound(to: CChar.self), UInt32(bytes.count))
        req.pointee.data = UnsafeMutableRawPointer(bitPattern: bytes.count)
        let rc = address.withSockAddr { uv_udp_send(req, udp, &buf, 1, $0) { req, _ in
            let count = Int(bitPattern: req!.pointee.data)
            let handle = req!.pointee.handle!
            UnsafeMutableRawPointer(req!).deallocate()
            let socket = LoopHandle.owner(UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self),
                                          as: UDPSocket.self)
            socket.queuedBytes -= count
        } }
        if rc < 0 {
            block.deallocate()
            droppedSends += 1
            return
        }
        queuedBytes += bytes.count
    }

    public func send(_ bytes: [UInt8], to address: SocketAddress) {
        bytes.withUnsafeBytes { send($0, to: address) }
    }

    override func willClose() {
        uv_udp_recv_stop(udp)
        onReceive = nil
    }
}

/// Watches one POSIX signal on the loop. Loop-confined.
public final class SignalWatcher: LoopHandle {
    private var callback: (() -> Void)?

    /// Calls `callback` on the loop each time `signal` arrives (SIGTERM, SIGINT, ...).
    public init(loop: EventLoop, signal: Int32, callback: @escaping () -> Void) throws(IOError) {
        self.callback = callback
        super.init(loop: loop, type: UV_SIGNAL)
        let handle = cast(to: uv_signal_t.self)
        let rc = uv_signal_init(loop.raw, handle)
        if rc < 0 {
            discardUninitialized()
            throw IOError(uv: rc, "watch signal \(signal)")
        }
        adopt()
        uv_signal_start(handle, { handle, _ in
            let watcher = LoopHandle.owner(UnsafeMutableRawPointer(handle!).assumingMemoryBound(to: uv_handle_t.self),
                                           as: SignalWatcher.self)
            watcher.callback?()
        }, signal)
    }

    override func willClose() {
        uv_signal_stop(cast(to: uv_signal_t.self))
        callback = nil
    }
}
