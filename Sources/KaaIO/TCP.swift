internal import CLibUV
import Glibc
import KaaCore

/// What a ``TCPConnection`` tells its owner. Every call comes on the loop thread.
public protocol TCPConnectionDelegate: AnyObject {
    /// Bytes arrived; they are valid only during the call.
    func connection(_ connection: TCPConnection, received bytes: UnsafeRawBufferPointer)
    /// The peer closed its side (`nil`) or the connection failed. The connection stays open
    /// until its owner closes it (so queued responses can still be written).
    func connection(_ connection: TCPConnection, readEndedWith error: IOError?)
    /// Pending output crossed the high watermark (`false`) or drained below the low one (`true`).
    func connection(_ connection: TCPConnection, writabilityChanged writable: Bool)
    /// The connection is closed and its handle freed.
    func connectionClosed(_ connection: TCPConnection)
}

extension TCPConnectionDelegate {
    public func connection(_ connection: TCPConnection, writabilityChanged writable: Bool) {}
    public func connectionClosed(_ connection: TCPConnection) {}
}

/// One TCP connection on a loop: reads into the loop's scratch buffer, writes with
/// back-pressure. Loop-confined.
///
/// Writes first try the socket directly; what the kernel does not take is copied into one
/// heap block (request + bytes) freed in the write callback. ``pendingWriteBytes`` counts it;
/// past ``highWatermark`` the owner is told to stop producing (``isWritable`` turns false).
public final class TCPConnection: LoopHandle {
    /// Strong, and cleared when the connection closes: that breaks the delegate's cycle without
    /// a weak reference (which would move every retain of the delegate to a slow path).
    public var delegate: (any TCPConnectionDelegate)?
    /// Bytes handed to the kernel's queue but not yet written.
    public private(set) var pendingWriteBytes = 0
    public var highWatermark = 1 << 20
    public var lowWatermark = 256 << 10
    /// The most bytes handed to libuv in one call: libuv counts a buffer's length in 32 bits
    /// (and `uv_try_write` returns it in an `Int32`), so larger writes go in slices.
    var maxWriteSlice = 1 << 30
    public private(set) var isWritable = true
    public private(set) var isReading = false
    private var closeWhenFlushed = false
    private var lingerTimer: LoopTimer?
    /// The peer's address, when known.
    public private(set) var remoteAddress: SocketAddress?

    var stream: UnsafeMutablePointer<uv_stream_t> { cast(to: uv_stream_t.self) }
    var tcp: UnsafeMutablePointer<uv_tcp_t> { cast(to: uv_tcp_t.self) }

    init(loop: EventLoop) throws(IOError) {
        super.init(loop: loop, type: UV_TCP)
        let rc = uv_tcp_init(loop.raw, cast(to: uv_tcp_t.self))
        if rc < 0 {
            discardUninitialized()
            throw IOError(uv: rc, "create TCP socket")
        }
        adopt()
    }

    /// Connects to `address`; `completion` runs on the loop exactly once.
    /// A `timeout` ends the attempt with ``IOError/Code/timedOut``.
    public static func connect(on loop: EventLoop, to address: SocketAddress, timeout: Duration? = nil,
                               completion: @escaping (Result<TCPConnection, IOError>) -> Void) {
        loop.assertInLoop()
        let connection: TCPConnection
        do { connection = try TCPConnection(loop: loop) } catch {
            completion(.failure(error))
            return
        }
        let attempt = ConnectAttempt(connection: connection, address: address, completion: completion)
        let req = UnsafeMutablePointer<uv_connect_t>.allocate(capacity: 1)
        req.pointee.data = Unmanaged.passRetained(attempt).toOpaque()
        let rc = address.withSockAddr { uv_tcp_connect(req, connection.tcp, $0) { req, status in
            let attempt = Unmanaged<ConnectAttempt>.fromOpaque(req!.pointee.data).takeRetainedValue()
            req!.deallocate()
            attempt.finish(status: status)
        } }
        if rc < 0 {
            Unmanaged<ConnectAttempt>.fromOpaque(req.pointee.data).release()
            req.deallocate()
            connection.close()
            completion(.failure(IOError(uv: rc, "connect to \(address)")))
            return
        }
        if let timeout {
            attempt.timer = loop.schedule(after: timeout) { [weak attempt] in attempt?.timeOut(after: timeout) }
        }
    }

    private final class ConnectAttempt {
        let connection: TCPConnection
        let address: SocketAddress
        var completion: ((Result<TCPConnection, IOError>) -> Void)?
        var timer: LoopTimer?

        init(connection: TCPConnection, address: SocketAddress,
             completion: @escaping (Result<TCPConnection, IOError>) -> Void) {
            self.connection = connection
            self.address = address
            self.completion = completion
        }

        func finish(status: Int32) {
            timer?.cancel()
            guard let completion else { return } // timed out already
            self.completion = nil
            if status < 0 {
                connection.close()
                completion(.failure(IOError(uv: status, "connect to \(address)")))
            } else {
                connection.configureAccepted()
                completion(.success(connection))
            }
        }

        func timeOut(after timeout: Duration) {
            guard let completion else { return }
            self.completion = nil
            connection.close() // the connect callback then runs with ECANCELED and is ignored
            completion(.failure(IOError(.timedOut, "connect to \(address): no answer within \(timeout)")))
        }
    }

    func configureAccepted() {
        uv_tcp_nodelay(tcp, 1)
        remoteAddress = SocketAddress.read { uv_tcp_getpeername(tcp, $0, $1) }
    }

    /// Starts delivering bytes to the delegate.
    public func startReading() {
        guard isOpen, !isReading else { return }
        isReading = true
        uv_read_start(stream, { handle, _, buf in LoopHandle.lendReadBuffer(handle, buf) }, { stream, nread, buf in
            let connection = LoopHandle.owner(UnsafeMutableRawPointer(stream!).assumingMemoryBound(to: uv_handle_t.self),
                                              as: TCPConnection.self)
            connection.didRead(nread: nread, base: buf!.pointee.base)
        })
    }

    /// Stops reading; the kernel's buffers fill and the peer slows down (back-pressure).
    public func stopReading() {
        guard isOpen, isReading else { return }
        isReading = false
        uv_read_stop(stream)
    }

    private func didRead(nread: Int, base: UnsafeMutablePointer<CChar>?) {
        if nread > 0 {
            if closeWhenFlushed { return } // lingering: discard what the peer still sends
            delegate?.connection(self, received: UnsafeRawBufferPointer(start: base, count: nread))
        } else if nread < 0 {
            stopReading()
            if closeWhenFlushed { close(); return }
            let error: IOError? = nread == Int(UV_EOF.rawValue) ? nil : IOError(uv: Int32(nread), "read")
            if let delegate { delegate.connection(self, readEndedWith: error) } else { close() }
        }
    }

    /// Queues `bytes` for writing, in order. Never blocks; watch ``isWritable``.
    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard isOpen, !bytes.isEmpty else { return }
        guard bytes.count <= maxWriteSlice else {
            var offset = 0
            while offset < bytes.count && isOpen {
                let end = offset + min(maxWriteSlice, bytes.count - offset)
                write(UnsafeRawBufferPointer(rebasing: bytes[offset..<end]))
                offset = end
            }
            return
        }
        var remaining = bytes
        if pendingWriteBytes == 0 {
            var buf = uv_buf_init(UnsafeMutablePointer(mutating: bytes.baseAddress!.assumingMemoryBound(to: CChar.self)),
                                  UInt32(bytes.count))
            let written = uv_try_write(stream, &buf, 1)
            if written == Int32(bytes.count) { return }
            if written > 0 {
                remaining = UnsafeRawBufferPointer(rebasing: bytes[Int(written)...])
            } else if written != UV_EAGAIN.rawValue && written != UV_ENOSYS.rawValue {
                failWrite(IOError(uv: written, "write"))
                return
            }
        }
        // One block: the request, then a copy of the bytes; freed in the write callback.
        let headerSize = (MemoryLayout<uv_write_t>.size + 15) & ~15
        let block = UnsafeMutableRawPointer.allocate(byteCount: headerSize + remaining.count, alignment: 16)
        let req = block.bindMemory(to: uv_write_t.self, capacity: 1)
        let data = block + headerSize
        data.copyMemory(from: remaining.baseAddress!, byteCount: remaining.count)
        var buf = uv_buf_init(data.assumingMemoryBound(to: CChar.self), UInt32(remaining.count))
        req.pointee.data = UnsafeMutableRawPointer(bitPattern: remaining.count)
        let rc = uv_write(req, stream, &buf, 1) { req, status in
            let count = Int(bitPattern: req!.pointee.data)
            let handle = req!.pointee.handle!
            UnsafeMutableRawPointer(req!).deallocate()
            let connection = LoopHandle.owner(UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self),
                                              as: TCPConnection.self)
            connection.didWrite(count: count, status: status)
        }
        if rc < 0 {
            block.deallocate()
            failWrite(IOError(uv: rc, "write"))
            return
        }
        pendingWriteBytes += remaining.count
        if isWritable && pendingWriteBytes > highWatermark {
            isWritable = false
            delegate?.connection(self, writabilityChanged: false)
        }
    }

    public func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { write($0) }
    }

    private func didWrite(count: Int, status: Int32) {
        pendingWriteBytes -= count
        guard state == .open else { return }
        if status < 0 {
            failWrite(IOError(uv: status, "write"))
            return
        }
        if !isWritable && pendingWriteBytes <= lowWatermark {
            isWritable = true
            delegate?.connection(self, writabilityChanged: true)
        }
        if closeWhenFlushed && pendingWriteBytes == 0 { finishGracefulClose() }
    }

    private func failWrite(_ error: IOError) {
        if closeWhenFlushed { close(); return }
        stopReading()
        if let delegate { delegate.connection(self, readEndedWith: error) } else { close() }
    }

    /// Whether ``closeAfterFlush(linger:)`` was called: the connection closes by itself once written.
    public var isClosingAfterFlush: Bool { closeWhenFlushed }

    /// Closes once everything queued is written: sends FIN, then discards what the peer still
    /// sends for up to `linger` (so the peer reads our last response instead of a reset).
    public func closeAfterFlush(linger: Duration = .seconds(2)) {
        guard isOpen, !closeWhenFlushed else { return }
        closeWhenFlushed = true
        lingerTimer = loop.schedule(after: linger) { [weak self] in self?.close() }
        if pendingWriteBytes == 0 { finishGracefulClose() }
    }

    private func finishGracefulClose() {
        let req = UnsafeMutablePointer<uv_shutdown_t>.allocate(capacity: 1)
        let rc = uv_shutdown(req, stream) { req, _ in req!.deallocate() }
        if rc < 0 {
            req.deallocate()
            close()
            return
        }
        if !isReading { startReading() } // read until the peer's FIN, discarding
    }

    override func willClose() {
        lingerTimer?.cancel()
        lingerTimer = nil
        if isReading { uv_read_stop(stream); isReading = false }
        let delegate = self.delegate
        self.delegate = nil
        onClose = { [self] in delegate?.connectionClosed(self) }
    }
}

/// A listening TCP socket. Loop-confined.
public final class TCPListener: LoopHandle {
    private var onAccept: ((TCPConnection) -> Void)?
    /// The address the socket is bound to (with the real port when 0 was asked for).
    public private(set) var localAddress: SocketAddress

    /// Binds and listens on `address`; `onAccept` gets each new connection, not yet reading.
    public init(loop: EventLoop, address: SocketAddress, backlog: Int32 = 1024,
                onAccept: @escaping (TCPConnection) -> Void) throws(IOError) {
        self.onAccept = onAccept
        self.localAddress = address
        super.init(loop: loop, type: UV_TCP)
        let tcp = cast(to: uv_tcp_t.self)
        let rc = uv_tcp_init(loop.raw, tcp)
        if rc < 0 {
            discardUninitialized()
            throw IOError(uv: rc, "create TCP socket")
        }
        adopt()
        do {
            try uvCheck(address.withSockAddr { uv_tcp_bind(tcp, $0, 0) }, "bind \(address)")
            try uvCheck(uv_listen(cast(to: uv_stream_t.self), backlog) { server, status in
                let listener = LoopHandle.owner(UnsafeMutableRawPointer(server!).assumingMemoryBound(to: uv_handle_t.self),
                                                as: TCPListener.self)
                listener.accept(status: status)
            }, "listen on \(address)")
        } catch {
            close()
            throw error
        }
        if let bound = SocketAddress.read({ uv_tcp_getsockname(tcp, $0, $1) }) { localAddress = bound }
    }

    private func accept(status: Int32) {
        guard status >= 0, isOpen, let onAccept else { return }
        guard let connection = try? TCPConnection(loop: loop) else { return }
        if uv_accept(cast(to: uv_stream_t.self), connection.stream) < 0 {
            connection.close()
            return
        }
        connection.configureAccepted()
        onAccept(connection)
    }

    override func willClose() { onAccept = nil }
}
