import Foundation
import KaaCluster
import KaaCore
import KaaIO

/// `GET /kaa/v1/members`: this node's view of the cluster.
struct MembersRoute: Sendable {
    /// Set on the loop once gossip runs; read on the loop.
    let gossip: LoopCell<GossipShell>

    func add(to router: inout HTTPRouter) {
        router.add(.get, "/kaa/v1/members") { [gossip] _, responder in
            guard let shell = gossip.value else { return responder.respond(.error(.serviceUnavailable, "gossip is not running yet")) }
            let me = shell.instance.myself.id
            let now = Date().timeIntervalSince1970
            let rows: [[String: Any]] = shell.members.map { m in
                let i = m.info
                return [
                    "id": i.id.rawValue, "name": i.name, "peer_addr": i.peerAddress.description,
                    "http_addr": i.httpAddress.description, "status": "\(m.status)", "incarnation": m.incarnation,
                    "zone": i.zone, "self": i.id == me,
                    "capacity": ["cores": i.capacity.cores, "memory_bytes": i.capacity.memoryBytes,
                                 "gpus": i.capacity.gpuCount, "gpu_memory_bytes": i.capacity.gpuMemoryBytes],
                    "kaa_version": i.kaaVersion, "protocol_version": i.protocolVersion,
                    "started_at_unix_ms": i.startedAtUnixMilliseconds,
                    "age_seconds": max(0, now - Double(i.startedAtUnixMilliseconds) / 1000),
                ]
            }
            let body: [String: Any] = ["self": me.rawValue, "members": rows,
                                       "gossip": ["dropped_packets": shell.droppedPackets, "bytes_sent": shell.bytesSent,
                                                  "bytes_received": shell.bytesReceived]]
            let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
            responder.respond(.json(.ok, Array(data)))
        }
    }
}

/// `GET /kaa/v1/placement[?under_replicated=true]`: the placement table as this node computes
/// it, with each holder's state.
struct PlacementRoute: Sendable {
    /// Set on the loop once replication runs; read on the loop.
    let replicator: LoopCell<Replicator>

    func add(to router: inout HTTPRouter) {
        router.add(.get, "/kaa/v1/placement") { [replicator] request, responder in
            guard let replicator = replicator.value else {
                return responder.respond(.error(.serviceUnavailable, "replication is not running yet"))
            }
            let only = request.query["under_replicated"].map { $0 == "true" || $0 == "1" } ?? false
            let report = replicator.placementReport(underReplicatedOnly: only)
            replicator.loop.offload({ report.json() }) { responder.respond(.json(.ok, $0)) }
        }
    }
}
