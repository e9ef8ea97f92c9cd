import Foundation
import KaaCore
import KaaIO
import KaaQuality
import KaaSnapshot
import Logging

/// One request to point an alias at a version, as the gate sees it.
struct AliasMove: Sendable {
    var name: String
    var alias: String
    var version: Int
    /// `force=true`: move `stable` even when the gate fails (logged at notice).
    var force: Bool
    /// Who asked, for the log: the token's name under access control (`forced.by.token`), else
    /// the remote address (`forced.by.address`).
    var caller: (key: String, value: String)
    /// Whether the version carries a gate, as the cluster's holdings say (nil: not known), for a
    /// node that holds no copy of it.
    var gatedElsewhere: Bool? = nil
}

/// The quality gate on `stable` moves (docs/quality-gate.md).
///
/// Moving `stable` from version S to version V runs V's gate against S on V's holdout rows,
/// on the thread pool, when V carries a gate. The node needs both archives on its disk and
/// fetches neither: a node without them refuses with 409, naming the nodes that hold them, so
/// the caller sends the move there (or forces it). No gate on V, no `stable` yet, or `stable`
/// already at V: the move goes ahead as it would without gates.
extension SnapshotAPI {
    /// What the thread pool decided.
    enum GateDecision: Sendable {
        case proceed
        case passed(current: Int, GateReport)
        case failed(current: Int, GateReport)
        /// The gate could not be run (the comparison failed): refused like a failing gate.
        case broken(current: Int, String)
        case forced(current: Int, gate: String?)
        /// This node lacks a copy the gate needs: these versions.
        case notHere(current: Int, missing: [Int])
        case error(SnapshotError)
    }

    /// Reads `force` from the query: absent, `false` or `0` is off; `true`, `1` or bare `force` is on.
    static func force(_ request: HTTPRequest) throws(SnapshotError) -> Bool {
        switch request.query["force"] {
        case nil, "false", "0": return false
        case "", "true", "1": return true
        case let other?: throw SnapshotError(.invalidName, "query `force=\(other.prefix(20))` is not true or false")
        }
    }

    /// Who sent `request`, for the log.
    func caller(_ request: HTTPRequest) -> (key: String, value: String) {
        if let name = access?.tokenName(request) { return ("forced.by.token", name) }
        return ("forced.by.address", request.remoteAddress?.description ?? "unknown")
    }

    /// Runs `then` on the loop once `move` may go ahead; answers the refusal itself otherwise.
    /// `holders` names the nodes with a ready copy of a version (on the loop).
    func checkGate(_ move: AliasMove, holders: @escaping (Int) -> [String], _ responder: HTTPResponder,
                   then: @escaping () -> Void) {
        guard move.alias == "stable" else { return then() }
        let api = self
        loop.offload({ api.decideGate(move) }) { decision in
            let id = "\(move.name)@\(move.version)"
            switch decision {
            case .proceed:
                then()
            case .passed(let current, let report):
                api.logger.info("quality gate passed", metadata: [
                    "model.name": "\(move.name)", "alias.from": "\(current)", "alias.to": "\(move.version)", "gate": "\(report.gate)",
                ])
                then()
            case .forced(let current, let gate):
                api.logger.notice("alias stable forced past its quality gate", metadata: [
                    "model.name": "\(move.name)", "alias.from": "\(current)", "alias.to": "\(move.version)",
                    "gate": "\(gate ?? "not known here: this node holds no copy of \(id)")", move.caller.key: "\(move.caller.value)",
                ])
                then()
            case .failed(let current, let report):
                let message = "alias `stable` stays at \(current): \(id) fails its quality gate against \(move.name)@\(current) on its \(report.comparison.rows) holdout rows: \(report.failures); move it anyway with force=true (`kaa alias set --force`)"
                responder.respond(SnapshotAPI.gateRefusal(message, report))
            case .broken(let current, let why):
                responder.respond(.error(.conflict, "alias `stable` stays at \(current): \(id)'s quality gate cannot run against \(move.name)@\(current): \(why); move it anyway with force=true (`kaa alias set --force`)"))
            case .notHere(let current, let missing):
                let versions = Array(Set([move.version, current])).sorted()
                let where_ = versions.map { v -> String in
                    let names = holders(v)
                    return "\(move.name)@\(v) on \(names.isEmpty ? "no live node" : names.joined(separator: ", "))"
                }.joined(separator: "; ")
                let lacking = missing.map { v -> String in "\(move.name)@\(v)" }.joined(separator: " and ")
                responder.respond(.error(.conflict, "alias `stable` stays at \(current): this node cannot run \(id)'s quality gate here, as it holds no copy of \(lacking) (it fetches none for a gate); send the move to a node that holds both: \(where_); or move it anyway with force=true"))
            case .error(let error):
                responder.respond(SnapshotAPI.response(for: error))
            }
        }
    }

    /// Decides a `stable` move; blocks on the store and runs the comparison. On the thread pool.
    func decideGate(_ move: AliasMove) -> GateDecision {
        do throws(SnapshotError) {
            guard let current = try store.aliases(name: move.name)["stable"], current != move.version else { return .proceed }
            let newID = try SnapshotID(name: move.name, version: move.version)
            let oldID = try SnapshotID(name: move.name, version: current)
            guard try store.record(newID) != nil else {
                // Its holders say it has no gate: the move goes ahead as it would without gates.
                if move.gatedElsewhere == false { return .proceed }
                return move.force ? .forced(current: current, gate: nil) : .notHere(current: current, missing: [move.version])
            }
            guard let gate = try store.manifest(newID).gate else { return .proceed }
            if move.force { return .forced(current: current, gate: gate.expression) }
            guard try store.record(oldID) != nil else { return .notHere(current: current, missing: [current]) }
            // Leases keep both archives on disk while they are read.
            let (newLease, newRecord) = try store.acquireLease(newID)
            defer { store.releaseLease(newLease) }
            let (oldLease, oldRecord) = try store.acquireLease(oldID)
            defer { store.releaseLease(oldLease) }
            let keys = store.configuration.trustedKeys
            do {
                let new = try ComparedSnapshot.open(path: newRecord.path, policy: VerificationPolicy(trustedKeys: keys, expectedDigest: newRecord.digest))
                let old = try ComparedSnapshot.open(path: oldRecord.path, policy: VerificationPolicy(trustedKeys: keys, expectedDigest: oldRecord.digest))
                guard let report = try SnapshotComparison.gate(new: new, old: old) else { return .proceed }
                return report.passed ? .passed(current: current, report) : .failed(current: current, report)
            } catch {
                return .broken(current: current, error.message)
            }
        } catch {
            return .error(error)
        }
    }

    /// 409 with the message and the gate's report: `{"error": ..., "gate": {...}}`.
    static func gateRefusal(_ message: String, _ report: GateReport) -> HTTPResponse {
        struct Body: Encodable {
            var error: String
            var gate: GateReport
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        guard let bytes = try? encoder.encode(Body(error: message, gate: report)) else { return .error(.conflict, message) }
        return .json(.conflict, Array(bytes))
    }
}
