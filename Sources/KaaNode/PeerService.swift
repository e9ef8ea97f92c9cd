import Foundation
import Glibc
import KaaCore
import KaaIO
import KaaSnapshot
import Logging

extension Node {
    /// The peer plane's frame types, in one registry: the node answers the types listed in
    /// ``all``, its unknown-type error names them, and `docs/peer-frames.md` lists them (a test
    /// compares the two).
    public enum PeerFrameType {
        public struct Entry: Sendable {
            public let type: UInt16
            public let name: String
            public let summary: String
        }

        /// Echoes its payload: a liveness check between nodes.
        public static let ping: UInt16 = 1
        /// SWIM push-pull state exchange (the payload sealed as gossip is).
        public static let pushPull: UInt16 = 2
        /// A snapshot's archive by name, version and digest, as a stream.
        public static let fetchSnapshot: UInt16 = 3
        /// Anti-entropy of the cluster's holdings and placement digests.
        public static let holdings: UInt16 = 4
        /// An Open Inference Protocol call sent on to a node that holds the model.
        public static let call: UInt16 = 5
        /// A copy of a dead letter to keep, or a listing of them.
        public static let deadLetters: UInt16 = 6
        /// The node's request series and dead-letter counts, for the cluster view of the stats.
        public static let stats: UInt16 = 7
        /// A published archive streamed on to a holder by the node that received the upload.
        public static let pushSnapshot: UInt16 = 8

        public static let all: [Entry] = [
            Entry(type: ping, name: "ping", summary: "any bytes; answered with the same bytes"),
            Entry(type: pushPull, name: "push-pull", summary: "this node's membership view; answered with the peer's"),
            Entry(type: fetchSnapshot, name: "fetch-snapshot",
                  summary: "JSON `{name, version, digest?}`; answered with JSON `{size, digest}` and the archive as a stream"),
            Entry(type: holdings, name: "holdings",
                  summary: "JSON `{from, entry, summary, members, table}`; answered with JSON `{from, entries, members, table}`"),
            Entry(type: call, name: "call",
                  summary: "a call's head (JSON) and body as received; answered with the HTTP answer's head and body"),
            Entry(type: deadLetters, name: "dead-letters",
                  summary: "JSON `{op: copy|list|replay|delete|get, ...}`; answered `{}`, a JSON list, a record, or a replay's HTTP answer"),
            Entry(type: stats, name: "stats",
                  summary: "JSON `{models}`; answered with the node's `GET /kaa/v1/stats` JSON"),
            Entry(type: pushSnapshot, name: "push-snapshot",
                  summary: "JSON `{name, version, digest, size}` and the archive as a stream; answered with JSON `{outcome, digest}` once stored"),
        ]

        /// `1 (ping), 2 (push-pull), ...`, for the unknown-type error.
        static var listing: String { all.map { "\($0.type) (\($0.name))" }.joined(separator: ", ") }
    }
}

/// Answers the peer plane's requests: one handler per frame type of ``Node/PeerFrameType``.
/// Loop-confined.
final class PeerService {
    typealias Handler = (Frame, FrameResponder) -> Void
    private var handlers: [UInt16: Handler] = [:]

    /// Sets the handler of `type`, which MUST be in the registry.
    func register(_ type: UInt16, _ handler: @escaping Handler) {
        precondition(Node.PeerFrameType.all.contains { $0.type == type }, "frame type \(type) is not in Node.PeerFrameType.all")
        handlers[type] = handler
    }

    func handle(_ frame: Frame, _ responder: FrameResponder) {
        guard let handler = handlers[frame.type] else {
            let known = Node.PeerFrameType.all.filter { handlers[$0.type] != nil }
            return responder.fail(.unknownType, "unknown frame type \(frame.type); this node speaks types "
                + known.map { "\($0.type) (\($0.name))" }.joined(separator: ", "))
        }
        handler(frame, responder)
    }
}

/// What a `fetch-snapshot` request names.
struct FetchRequest: Codable {
    var name: String
    var version: Int
    var digest: String?
}

/// The head of a `fetch-snapshot` answer.
struct FetchHead: Codable {
    var size: UInt64
    var digest: String
}

/// What a `push-snapshot` request names: the archive that follows it.
struct PushRequest: Codable {
    var name: String
    var version: Int
    var digest: String
    var size: UInt64
}

/// The answer to a `push-snapshot`: `stored` or `already-present`, and the stored digest.
struct PushAnswer: Codable {
    var outcome: String
    var digest: String
}

/// Sends one archive as a stream, reading it on the thread pool a chunk at a time: a stored
/// one (with a lease that keeps retention from deleting it meanwhile) to a node fetching it, or
/// an upload this node verified to a holder. Loop-confined.
final class ArchiveSender {
    let loop: EventLoop
    private let file: Int32
    private let size: UInt64
    private var offset: UInt64 = 0
    private var writer: FrameStreamWriter?
    private var closed = false
    /// Gives back what kept the file (a lease); runs once, when the sender closes.
    private var release: (() -> Void)?
    let logger: Logger

    /// Sends `size` bytes of the open descriptor `file`, which the sender closes.
    init(loop: EventLoop, file: Int32, size: UInt64, logger: Logger, release: (() -> Void)? = nil) {
        self.loop = loop
        self.file = file
        self.size = size
        self.logger = logger
        self.release = release
    }

    /// Serves `fetch-snapshot`: checks the request, takes a lease, and streams the archive.
    static func serve(_ frame: Frame, _ responder: FrameResponder, loop: EventLoop, store: SnapshotStore, logger: Logger) {
        let request: FetchRequest
        do { request = try JSONDecoder().decode(FetchRequest.self, from: Data(frame.payload)) } catch {
            return responder.fail(.badRequest, "fetch-snapshot wants JSON {\"name\", \"version\", \"digest\"}: \(error)")
        }
        loop.offload({ () -> Result<(SnapshotLease, SnapshotRecord, Int32), PeerFailure> in
            let id: SnapshotID
            do throws(SnapshotError) { id = try SnapshotID(name: request.name, version: request.version) } catch {
                return .failure(PeerFailure(.badRequest, error.message))
            }
            let lease: SnapshotLease, record: SnapshotRecord
            do throws(SnapshotError) { (lease, record) = try store.acquireLease(id) } catch {
                return .failure(PeerFailure(error.code == .notFound ? .notFound : .notReady, error.message))
            }
            if let digest = request.digest, digest != record.digest.description {
                store.releaseLease(lease)
                return .failure(PeerFailure(.notFound, "\(id) here has digest \(record.digest), not \(digest)"))
            }
            let fd = open(record.path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                store.releaseLease(lease)
                return .failure(PeerFailure(.internal, "cannot open \(record.path): \(String(cString: strerror(errno)))"))
            }
            return .success((lease, record, fd))
        }) { result in
            switch result {
            case .failure(let failure):
                responder.fail(failure.code, failure.message)
            case .success(let (lease, record, fd)):
                let sender = ArchiveSender(loop: loop, file: fd, size: record.size, logger: logger) { store.releaseLease(lease) }
                let head = (try? JSONEncoder().encode(FetchHead(size: record.size, digest: record.digest.description))).map(Array.init) ?? []
                guard let writer = responder.respondStream(head) else { return sender.close() }
                sender.start(writer)
            }
        }
    }

    func start(_ writer: FrameStreamWriter) {
        self.writer = writer
        writer.onCancel = { [weak self] error in
            self?.logger.notice("snapshot transfer cancelled", metadata: ["error": "\(error.message)"])
            self?.close()
        }
        readNext()
    }

    private func readNext() {
        guard !closed, let writer else { return }
        if offset >= size {
            writer.finish()
            return close()
        }
        let want = Int(min(UInt64(FrameStreamWriter.maxChunkBytes), size - offset))
        let fd = file, at = offset
        loop.offload({ () -> [UInt8]? in
            var chunk = [UInt8](repeating: 0, count: want)
            let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, want, off_t(at)) }
            guard n == want else { return nil }
            return chunk
        }) { [self] chunk in
            guard !closed else { return }
            guard let chunk else {
                writer.fail(.internal, "reading the archive failed at byte \(at)")
                return close()
            }
            offset += UInt64(chunk.count)
            // The writer keeps this sender until the chunk is sent (or the stream is cancelled,
            // when deinit gives the file and the lease back).
            writer.write(chunk) { self.readNext() }
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(file)
        release?()
        release = nil
    }

    deinit { close() }
}

/// A peer error to send back: its code and message.
struct PeerFailure: Error {
    var code: PeerErrorCode
    var message: String
    init(_ code: PeerErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// Takes a fetched archive's chunks into the store's ingest (the same verifying path as an
/// upload), one at a time on the thread pool. Loop-confined.
final class ArchiveReceiver: FrameStreamReceiver {
    let loop: EventLoop
    var job: IngestJob?
    private var failed: SnapshotError?
    private let done: (Result<IngestResult, SnapshotError>) -> Void
    /// Holds a chunk back (a bandwidth limit) before it is taken; nil takes it at once.
    private let pace: ((Int, @escaping () -> Void) -> Void)?
    private var finished = false

    init(loop: EventLoop, pace: ((Int, @escaping () -> Void) -> Void)? = nil, done: @escaping (Result<IngestResult, SnapshotError>) -> Void) {
        self.loop = loop
        self.pace = pace
        self.done = done
    }

    func receive(_ chunk: [UInt8], consumed: @escaping () -> Void) {
        guard failed == nil, job != nil else { return consumed() } // drained after a failure
        guard let pace else { return take(chunk, consumed: consumed) }
        pace(chunk.count) { [self] in take(chunk, consumed: consumed) }
    }

    private func take(_ chunk: [UInt8], consumed: @escaping () -> Void) {
        guard failed == nil, let job else { return consumed() }
        loop.offload({ () -> SnapshotError? in
            do throws(SnapshotError) { try job.append(chunk); return nil } catch { return error }
        }) { [self] error in
            if let error, failed == nil {
                failed = error
                job.abort()
            }
            consumed()
        }
    }

    func end(_ error: FrameError?) {
        // Before the head arrived there is no transfer yet: the request's own answer says why.
        guard !finished, job != nil || error == nil else { return }
        finished = true
        if let error {
            job?.abort()
            return done(.failure(SnapshotError(.io, "the transfer failed: \(error.message)")))
        }
        if let failed { return done(.failure(failed)) }
        guard let job else { return done(.failure(SnapshotError(.io, "the transfer ended before it began"))) }
        loop.offload({ () -> Result<IngestResult, SnapshotError> in
            do throws(SnapshotError) { return .success(try job.finish()) } catch { return .failure(error) }
        }) { [self] result in done(result) }
    }
}
