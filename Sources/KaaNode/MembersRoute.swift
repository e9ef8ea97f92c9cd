import Foundation
import KaaCluster
import KaaCore
import KaaIO

/// `GET /kaa/v1/members`: this node's view of the cluster.
final class MembersRoute: @unchecked Sendable {
    // SAFETY: `gossip` is set once during start, before the HTTP server serves this route's
    // first request from a client that could know the node is up; read on the loop only.
    private var gossip: LoopBound<GossipShell>?

    func set(_ gossip: LoopBound<GossipShell>) { self.gossip = gossip }

    func add(to router: inout HTTPRouter) {
        router.add(.get, "/kaa/v1/members") { [self] _, responder in
            guard let gossip else { return responder.respond(.error(.serviceUnavailable, "gossip is not running yet")) }
            let shell = gossip.value
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
