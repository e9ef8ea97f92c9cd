import Foundation
import KaaCore
import KaaIO
import KaaSnapshot

extension SnapshotAPI {
    /// Fetches `id` from the peer at `peer` over the peer plane into this node's store: the
    /// archive streams straight into the store's ingest, which verifies it as it does an
    /// upload. `done` runs on the loop with the outcome (`stored`, `already-present`).
    func fetch(_ id: SnapshotID, digest: SnapshotDigest?, from peer: HostPort, frames: FrameClient,
               deadline: Duration = .seconds(30), pace: ((Int, @escaping () -> Void) -> Void)? = nil,
               done: @escaping (Result<(String, SnapshotRecord), SnapshotError>) -> Void) {
        let api = self
        let receiver = archiveReceiver(pace: pace, done: done)
        let request = FetchRequest(name: id.name, version: id.version, digest: digest?.description)
        let payload = (try? JSONEncoder().encode(request)).map(Array.init) ?? []
        frames.requestStream(to: peer, type: Node.PeerFrameType.fetchSnapshot, payload: payload, deadline: deadline,
                             receiver: receiver) { head in
            switch head {
            case .failure(let error):
                done(.failure(SnapshotError(error.remote == .notFound ? .notFound : .io, "fetching \(id) from \(peer): \(error.message)")))
            case .success(let frame):
                guard let head = try? JSONDecoder().decode(FetchHead.self, from: Data(frame.payload)),
                      let announced = try? SnapshotDigest(parsing: head.digest) else {
                    return done(.failure(SnapshotError(.io, "fetching \(id) from \(peer): the peer's answer has no size and digest")))
                }
                if let digest, digest != announced {
                    return done(.failure(SnapshotError(.conflict, "\(peer) holds \(id) with digest \(announced), not \(digest)")))
                }
                // The archive must be what the peer announced, and only that.
                receiver.job = IngestJob(store: api.store, request: IngestRequest(
                    expectedName: id.name, expectedVersion: id.version, expectedDigest: announced, declaredLength: head.size))
            }
        }
    }

    /// Takes into the store an archive the node that received its upload streams on here
    /// (`push-snapshot`), through the same verifying ingest as an upload, held to the name,
    /// version, digest and size the request names. `done` runs on the loop with the outcome
    /// (`stored`, `already-present`); the caller answers the request.
    func receivePush(_ request: PushRequest, _ responder: FrameResponder,
                     done: @escaping (Result<(String, SnapshotRecord), SnapshotError>) -> Void) {
        let digest: SnapshotDigest
        do throws(SnapshotError) {
            _ = try SnapshotID(name: request.name, version: request.version)
            digest = try SnapshotDigest(parsing: request.digest)
        } catch {
            return done(.failure(error))
        }
        let receiver = archiveReceiver(pace: nil, done: done)
        receiver.job = IngestJob(store: store, request: IngestRequest(
            expectedName: request.name, expectedVersion: request.version, expectedDigest: digest, declaredLength: request.size))
        responder.attachBody(receiver)
    }

    /// Streams the archive in `file` (an open descriptor of `request.size` bytes, which this
    /// closes) to the node at `peer` with a `push-snapshot` request; `done` runs on the loop
    /// with its answer once that node has stored it. On the loop.
    func push(_ request: PushRequest, file: Int32, to peer: HostPort, frames: FrameClient, deadline: Duration,
              done: @escaping (Result<PushAnswer, FrameError>) -> Void) {
        let sender = ArchiveSender(loop: loop, file: file, size: request.size, logger: logger)
        let payload = (try? JSONEncoder().encode(request)).map(Array.init) ?? []
        frames.requestStream(to: peer, type: Node.PeerFrameType.pushSnapshot, payload: payload, deadline: deadline,
                             receiver: nil, body: { writer in sender.start(writer) }) { result in
            sender.close()
            done(result.flatMap { frame in
                guard let answer = try? JSONDecoder().decode(PushAnswer.self, from: Data(frame.payload)) else {
                    return .failure(FrameError(.protocolViolation, "\(peer) answered a push-snapshot without an outcome and digest"))
                }
                return .success(answer)
            })
        }
    }

    /// A receiver that feeds an archive's chunks into the store's ingest and, once it is
    /// committed, applies retention and tells the serving side (``ingested(_:)``).
    private func archiveReceiver(pace: ((Int, @escaping () -> Void) -> Void)?,
                                 done: @escaping (Result<(String, SnapshotRecord), SnapshotError>) -> Void) -> ArchiveReceiver {
        let api = self
        return ArchiveReceiver(loop: loop, pace: pace) { result in
            switch result {
            case .failure(let error): done(.failure(error))
            case .success(let ingest):
                api.loop.offload({ api.ingested(ingest) }) { outcome in done(.success((outcome, ingest.record))) }
            }
        }
    }

    /// `POST /kaa/v1/snapshots/{name}/{version}/fetch` with `{"from": "HOST:PORT"}` (a peer
    /// address) and optionally `"digest"`: copies the snapshot from that node. For operators
    /// repairing a node by hand; the cluster's own replication uses the same transfer.
    func addFetchRoute(to router: inout HTTPRouter, frames: FrameClient) {
        let api = self
        router.add(.post, "/kaa/v1/snapshots/{name}/{version}/fetch") { request, responder in
            struct Body: Decodable { var from: String; var digest: String? }
            let name = request.pathParameters["name"]!, version = request.pathParameters["version"]!
            let id: SnapshotID, peer: HostPort, digest: SnapshotDigest?
            do {
                guard let v = SnapshotNaming.parseVersion(version) else {
                    throw SnapshotError(.invalidName, SnapshotNaming.describeBadVersion(version))
                }
                id = try SnapshotID(name: name, version: v)
                guard let body = try? JSONDecoder().decode(Body.self, from: Data(request.body)) else {
                    throw SnapshotError(.invalidName, "the body must be JSON {\"from\": \"HOST:PORT\"}, the peer address of a node that holds \(id)")
                }
                do throws(AddressError) { peer = try HostPort(parsing: body.from) } catch {
                    throw SnapshotError(.invalidName, "from: \(error.description)")
                }
                digest = try body.digest.map { d throws(SnapshotError) in try SnapshotDigest(parsing: d) }
            } catch let error as SnapshotError {
                return responder.respond(SnapshotAPI.response(for: error))
            } catch {
                return responder.respond(.error(.badRequest, "\(error)"))
            }
            api.fetch(id, digest: digest, from: peer, frames: frames) { result in
                switch result {
                case .failure(let error):
                    responder.respond(error.code == .io ? .error(HTTPStatus(502, "Bad Gateway"), error.message) : SnapshotAPI.response(for: error))
                case .success(let (outcome, record)):
                    let body = (try? SnapshotAPI.encode(["outcome": outcome, "digest": record.digest.description])) ?? []
                    responder.respond(.json(outcome == "stored" ? .created : .ok, body))
                }
            }
        }
    }
}
