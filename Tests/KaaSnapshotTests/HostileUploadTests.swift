import Crypto
import Foundation
import GRDB
@testable import KaaSnapshot
import KaaTestSupport
import Logging
import Synchronization
import Testing

/// Descriptors of this process open on files under `path` (other tests running at the same
/// time open their own, elsewhere).
func descriptors(under path: String) -> Int {
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return fds.filter { fd in
        ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + fd)) ?? "").hasPrefix(path)
    }.count
}

/// Uploads from a client who means harm, or is just wrong (issue 15): none of them may crash the
/// node, stall it, make it spend without bound, or change what it stores.
@Suite struct HostileUploadTests {
    /// Feeds `bytes` to a new session in `chunk`-byte pieces and finishes it.
    static func upload(_ store: SnapshotStore, _ bytes: [UInt8], _ request: IngestRequest = .init(), chunk: Int = 4096) throws(SnapshotError) -> IngestResult {
        let s = try store.beginIngest(request)
        var i = 0
        while i < bytes.count {
            try s.append(Array(bytes[i..<min(bytes.count, i + chunk)]))
            i += chunk
        }
        return try s.finish()
    }

    // MARK: 1. Versions

    @Test func versionsOutOfRangeAreRefusedFromUploads() throws {
        let f = try StoreFixture()
        let e = #expect(throws: SnapshotError.self) { try f.store.beginIngest(.init(expectedName: "iris", expectedVersion: Int.max)) }
        #expect(e?.message == "version 9223372036854775807 of `iris` is out of range; versions are integers from 1 to 9007199254740991")
        let model = ONNXFixture.small()
        try CraftedArchive.write([.manifest(try CraftedArchive.manifest(version: 1, files: [("model.onnx", model)]) { $0.version = Int.max }),
                                  .file("model.onnx", model), .end], to: f.dir.file("max.kaa"))
        let before = try f.state()
        let m = #expect(throws: SnapshotError.self) { try f.store.ingest(file: f.dir.file("max.kaa")) }
        #expect(m?.message == "manifest: version 9223372036854775807 is out of range; versions are integers from 1 to 9007199254740991, or 0 for a draft")
        #expect(try f.state() == before)
        #expect(try f.tempFiles().isEmpty)
    }

    /// A name whose highest version is the maximum: a draft gets a clear error, not an overflow.
    @Test func aDraftAfterTheHighestVersionIsRefusedClearly() throws {
        let f = try StoreFixture()
        _ = try f.store.ingest(file: try buildSample(in: f.dir, version: SnapshotNaming.maxVersion, out: "max.kaa").path)
        let (draft, _) = try buildSample(in: f.dir, version: 0, out: "d.kaa", seed: 2)
        let before = try f.state()
        let e = #expect(throws: SnapshotError.self) { try f.store.ingest(file: draft) }
        #expect(e?.code == .conflict)
        #expect(e?.message == "model `iris` has reached the highest version, 9007199254740991, so a draft cannot be given the next one; upload it with an unused version of your choice, or under a new name")
        #expect((#expect(throws: SnapshotError.self) { try f.store.nextVersion(name: "iris") })?.code == .conflict)
        #expect(try f.state() == before)
        #expect(f.store.shared.reservationCount == 0)
        // A lower unused version is still free to take.
        #expect(try f.store.ingest(file: draft, .init(expectedVersion: 5)).record.id.version == 5)
    }

    /// An older build stored `iris@9223372036854775807` (and an alias to it). The store must
    /// start, keep serving the rest, give drafts the next version after the valid ones, and set
    /// the out-of-range archive aside for a person, not delete it.
    @Test func aStoreHoldingAnOutOfRangeVersionStartsAndQuarantinesIt() throws {
        let f = try StoreFixture()
        let (v1, _) = try buildSample(in: f.dir, version: 1, out: "1.kaa")
        _ = try f.store.ingest(file: v1)
        let huge = "9223372036854775807"
        try FileManager.default.copyItem(atPath: v1, toPath: f.data + "/snapshots/iris/\(huge).kaa")
        let archiveBytes = try Data(contentsOf: URL(fileURLWithPath: v1))
        try f.store.catalog.pool.write { db in
            try db.execute(sql: """
                INSERT INTO snapshot (name, version, digest, size, state, received_at, signer, manifest)
                SELECT name, 9223372036854775807, digest, size, state, received_at, signer, manifest FROM snapshot WHERE version = 1
                """)
            try db.execute(sql: "INSERT INTO alias (name, alias, version, stamp) VALUES ('iris', 'stable', 9223372036854775807, 0)")
        }
        // The running store neither lists nor resolves it, and a draft is not pushed past it.
        #expect(try f.store.list().map(\.id.description) == ["iris@1"])
        let (draft, _) = try buildSample(in: f.dir, version: 0, out: "d.kaa", seed: 2)
        #expect(try f.store.ingest(file: draft).record.id.version == 2)

        let reopened = try f.reopen()
        let repairs = reopened.startupRepairs
        #expect(repairs.droppedRows.map(\.description) == ["iris@\(huge)"])
        #expect(repairs.quarantined.map(\.path) == ["snapshots/iris/\(huge).kaa"])
        #expect(repairs.quarantined.first?.reason.contains("a version from 1 to 9007199254740991") == true)
        #expect(try reopened.list().map(\.id.description) == ["iris@1", "iris@2"])
        #expect(try reopened.aliases(name: "iris").isEmpty)
        #expect(try reopened.ingest(file: draft).record.id.version == 3)
        let quarantined = try FileManager.default.contentsOfDirectory(atPath: f.data + "/snapshots/.quarantine")
        #expect(quarantined.count == 1)
        #expect(try Data(contentsOf: URL(fileURLWithPath: f.data + "/snapshots/.quarantine/" + quarantined[0])) == archiveBytes)
        #expect(try f.reopen().startupRepairs.isClean)
    }

    // MARK: 3. Sizes

    @Test func theLimitsHaveDefaultsAnOperatorExpects() {
        let c = SnapshotStore.Configuration(directory: "/x")
        #expect(c.maxModelBytes == 1 << 30)
        #expect(c.maxContentBytes == 4 << 30)
        #expect(c.retainDrafts == 5)
        #expect(c.maxConcurrentIngests == 16)
        // The container's overhead and LZ4's worst case for incompressible bytes, no more.
        #expect(c.maxArchiveBytes > c.maxContentBytes + c.maxContentBytes / 255)
        #expect(c.maxArchiveBytes < c.maxContentBytes + c.maxContentBytes / 255 + (24 << 20))
        var unlimited = c
        unlimited.maxContentBytes = .max
        #expect(unlimited.maxArchiveBytes == .max)
    }

    /// A 16 MiB model of zeros compresses to ~64 KiB. With a 1 MiB limit it is refused from the
    /// manifest's declared size, before one byte of the model is decompressed.
    @Test func aDecompressionBombIsRefusedBeforeItIsDecompressed() throws {
        let f = try StoreFixture { $0.maxModelBytes = 1 << 20; $0.maxContentBytes = 2 << 20 }
        let zeros = [UInt8](repeating: 0, count: 16 << 20)
        let manifest = try CraftedArchive.manifest(files: [("model.onnx", zeros)])
        try CraftedArchive.write([.manifest(manifest), .file("model.onnx", zeros), .end], to: f.dir.file("bomb.kaa"))
        let bomb = try f.dir.read("bomb.kaa")
        #expect(bomb.count < 1 << 20)

        let reader = try ArchiveReader(policy: f.store.policy)
        let e = #expect(throws: SnapshotError.self) {
            try withRawBytes(bomb) { (b) throws(SnapshotError) in try reader.feed(b) }
        }
        #expect(e?.code == .tooLarge)
        #expect(e?.message == "snapshot iris@1 declares model file `model.onnx` of 16777216 bytes (16.0 MiB); the limit here is 1048576 bytes (1.0 MiB) (a node's `max_model_bytes` setting; raise it to accept larger models)")
        // Only the header and the manifest entry were decompressed.
        #expect(reader.uncompressedBytes <= UInt64(16 + 16 + 13 + manifest.count))

        let before = try f.state()
        let s = #expect(throws: SnapshotError.self) { try HostileUploadTests.upload(f.store, bomb) }
        #expect(s?.code == .tooLarge)
        #expect(try f.state() == before)
        #expect(try f.tempFiles().isEmpty)

        // The sum of all files has its own limit.
        let model = ONNXFixture.small()
        let extra = [UInt8](repeating: 7, count: (2 << 20) + 1)
        let m2 = try CraftedArchive.manifest(files: [("model.onnx", model), ("vocab.bin", extra)])
        try CraftedArchive.write([.manifest(m2), .file("model.onnx", model), .file("vocab.bin", extra), .end], to: f.dir.file("wide.kaa"))
        let w = #expect(throws: SnapshotError.self) { try f.store.ingest(file: f.dir.file("wide.kaa")) }
        #expect(w?.message == "snapshot iris@1 declares \(model.count + extra.count) bytes (2.0 MiB) of files; the limit here is 2097152 bytes (2.0 MiB) (a node's `max_content_bytes` setting; raise it to accept larger snapshots)")
        // An upload announcing more than any archive within the limits can be.
        let limit = f.store.configuration.maxArchiveBytes
        let l = #expect(throws: SnapshotError.self) { try f.store.beginIngest(.init(declaredLength: limit + 1)) }
        #expect(l?.code == .tooLarge)
        #expect(l?.message.contains("the largest archive this node accepts is \(limit) bytes") == true)
        #expect(try f.state() == before)
        #expect(f.store.uploadsInProgress == 0)
    }

    // MARK: 5. The model

    /// Non-ONNX bytes as `model.onnx`, and a manifest whose signature is not the model's, were
    /// stored (then every call failed after a reload).
    @Test func theModelMustDecodeAsONNXAndMatchTheManifest() throws {
        let f = try StoreFixture()
        let before = try f.state()
        let text = Array("this is not an ONNX model".utf8)
        try CraftedArchive.write([.manifest(try CraftedArchive.manifest(files: [("model.onnx", text)])), .file("model.onnx", text), .end],
                                 to: f.dir.file("text.kaa"))
        let e = #expect(throws: SnapshotError.self) { try f.store.ingest(file: f.dir.file("text.kaa")) }
        #expect(e?.code == .invalidModel)
        #expect(e?.message.hasPrefix("snapshot iris@1: model file `model.onnx` is not a usable ONNX model: malformed protobuf") == true, "\(String(describing: e))")
        // The same as a draft.
        try CraftedArchive.write([.manifest(try CraftedArchive.manifest(version: 0, files: [("model.onnx", text)])), .file("model.onnx", text), .end],
                                 to: f.dir.file("text-draft.kaa"))
        let d = #expect(throws: SnapshotError.self) { try f.store.ingest(file: f.dir.file("text-draft.kaa")) }
        #expect(d?.message.hasPrefix("snapshot iris (draft): model file `model.onnx` is not a usable ONNX model") == true)

        let model = ONNXFixture.small()
        let wrong = try CraftedArchive.manifest(files: [("model.onnx", model)]) { $0.signature.inputs[0].shape = [-1, 5] }
        try CraftedArchive.write([.manifest(wrong), .file("model.onnx", model), .end], to: f.dir.file("wrong.kaa"))
        let w = #expect(throws: SnapshotError.self) { try f.store.ingest(file: f.dir.file("wrong.kaa")) }
        #expect(w?.code == .invalidManifest)
        #expect(w?.message == "snapshot iris@1: the manifest's signature does not match model `model.onnx`: input `float_input` has shape [-1, 4] in the model but [-1, 5] in the manifest; rebuild the snapshot with `kaa snapshot build`, which reads the signature from the model")
        #expect(try f.state() == before)
        #expect(try f.tempFiles().isEmpty)

        // With a pipeline the signature is what the pipeline serves, which only the node's
        // engine knows: the request's model check judges it, on the model's exact bytes.
        let piped = try CraftedArchive.manifest(files: [("model.onnx", model)]) {
            $0.pipeline = "outputs: [label]\n"
            $0.signature.outputs.removeLast()
        }
        try CraftedArchive.write([.manifest(piped), .file("model.onnx", model), .end], to: f.dir.file("piped.kaa"))
        let seen = Mutex<[UInt8]>([])
        let refusing = IngestRequest(modelCheck: { (m, bytes) throws(SnapshotError) in
            seen.withLock { $0 = Array(bytes) }
            throw SnapshotError(.invalidPipeline, "refused by the node's check of \(m.name)")
        })
        let r = #expect(throws: SnapshotError.self) { try f.store.ingest(file: f.dir.file("piped.kaa"), refusing) }
        #expect(r?.message == "refused by the node's check of iris")
        #expect(seen.withLock { $0 } == model)
        #expect(try f.state() == before)
        #expect(try f.tempFiles().isEmpty)
        let accepting = IngestRequest(modelCheck: { (_, bytes) throws(SnapshotError) in
            if bytes.count != model.count { throw SnapshotError(.invalidModel, "got \(bytes.count) bytes") }
        })
        #expect(try f.store.ingest(file: f.dir.file("piped.kaa"), accepting).outcome == .stored)
    }

    // MARK: 6. Retention

    /// Five anonymous drafts removed `iris-logreg@1`. Drafts are now retained apart: they never
    /// take a published version's place.
    @Test func draftsNeverPushPublishedVersionsOut() throws {
        let f = try StoreFixture(retain: 2) { $0.retainDrafts = 2 }
        for v in 1...2 { _ = try f.store.ingest(file: try buildSample(in: f.dir, version: v, out: "\(v).kaa", seed: UInt8(v)).path) }
        let (draft, _) = try buildSample(in: f.dir, version: 0, out: "d.kaa", seed: 9)
        var deleted: [String] = []
        for _ in 0..<5 {
            let r = try f.store.ingest(file: draft)
            #expect(r.record.isDraft)
            deleted += try f.store.applyRetention(name: "iris").deleted.map(\.description)
        }
        #expect(deleted == ["iris@3", "iris@4", "iris@5"])
        #expect(try f.store.list().map(\.id.version) == [1, 2, 6, 7])
        #expect(try f.store.list().map(\.isDraft) == [false, false, true, true])
        // An aliased draft is kept past the drafts' limit; a published version pushes out only
        // a published one.
        try f.store.setAlias(name: "iris", alias: "canary", version: 6)
        _ = try f.store.ingest(file: draft)
        _ = try f.store.ingest(file: try buildSample(in: f.dir, version: 9, out: "9.kaa", seed: 3).path)
        #expect(try f.store.applyRetention(name: "iris").deleted.map(\.description) == ["iris@1"])
        #expect(try f.store.list().map(\.id.version) == [2, 6, 7, 8, 9])
        // What was a draft is remembered across a restart.
        #expect(try f.reopen().list().map(\.isDraft) == [false, true, true, true, false])
    }

    /// A catalog written before drafts were recorded: its rows count as published, so no
    /// number of drafts afterwards removes them.
    @Test func rowsFromBeforeDraftsWereRecordedCountAsPublished() throws {
        let dir = try TempDir()
        let data = dir.file("node")
        let (v1, built) = try buildSample(in: dir, version: 1, out: "1.kaa")
        try FileManager.default.createDirectory(atPath: data + "/snapshots/iris", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: v1, toPath: data + "/snapshots/iris/1.kaa")
        do {
            let old = try DatabaseQueue(path: data + "/catalog.sqlite")
            try old.write { db in
                try db.execute(sql: """
                    CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY);
                    INSERT INTO grdb_migrations VALUES ('v1');
                    CREATE TABLE snapshot (name TEXT NOT NULL, version INTEGER NOT NULL CHECK (version > 0), digest TEXT NOT NULL,
                        size INTEGER NOT NULL, state TEXT NOT NULL, received_at DOUBLE NOT NULL, signer TEXT, manifest BLOB NOT NULL,
                        PRIMARY KEY (name, version));
                    CREATE TABLE alias (name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated_at DOUBLE NOT NULL,
                        PRIMARY KEY (name, alias), FOREIGN KEY (name, version) REFERENCES snapshot (name, version) ON DELETE RESTRICT);
                    """)
                try db.execute(sql: "INSERT INTO snapshot VALUES ('iris', 1, ?, ?, 'ready', 0, NULL, ?)",
                               arguments: [built.digest.description, Int64(built.archiveBytes), Data(built.manifestBytes)])
            }
        }
        let store = try SnapshotStore(configuration: .init(directory: data, retainVersions: 1, retainDrafts: 1), logger: Logger(label: "test"))
        #expect(store.startupRepairs.isClean)
        #expect(try store.list().map(\.isDraft) == [false])
        let (draft, _) = try buildSample(in: dir, version: 0, out: "d.kaa", seed: 2)
        for _ in 0..<3 {
            _ = try store.ingest(file: draft)
            _ = try store.applyRetention(name: "iris")
        }
        #expect(try store.list().map(\.id.version) == [1, 4])
    }

    // MARK: 7. Drafts racing explicit versions

    /// A draft arriving while `iris@2` is being uploaded got 2 too, and one of them a 409.
    @Test func aDraftRacingAnExplicitUploadGetsTheNextFreeVersion() async throws {
        let f = try StoreFixture()
        _ = try f.store.ingest(file: try buildSample(in: f.dir, version: 1, out: "1.kaa").path)
        let (draft, _) = try buildSample(in: f.dir, version: 0, out: "d.kaa", seed: 9)
        // The explicit upload has sent all its bytes but not finished when the draft completes.
        _ = try buildSample(in: f.dir, version: 2, out: "2.kaa", seed: 2)
        let explicit = try f.store.beginIngest()
        try explicit.append(try f.dir.read("2.kaa"))
        #expect(try f.store.nextVersion(name: "iris") == 3)
        let d = try f.store.ingest(file: draft)
        #expect(d.record.id.version == 3)
        #expect(try explicit.finish().outcome == .stored)
        // The same, with threads: each round an explicit upload of the next version and a
        // draft race; both must be stored.
        let store = f.store
        for round in 0..<12 {
            let next = try store.nextVersion(name: "iris")
            let path = try buildSample(in: f.dir, version: next, out: "r\(round).kaa", seed: UInt8(10 + round)).path
            let outcomes = await withTaskGroup(of: String.self) { group in
                group.addTask {
                    do throws(SnapshotError) { return "explicit \(try store.ingest(file: path).record.id.version)" } catch { return "explicit \(error.message)" }
                }
                group.addTask {
                    do throws(SnapshotError) { return "draft \(try store.ingest(file: draft).record.id.version > next)" } catch { return "draft \(error.message)" }
                }
                return await group.reduce(into: [String]()) { $0.append($1) }.sorted()
            }
            #expect(outcomes == ["draft true", "explicit \(next)"], "round \(round)")
        }
        #expect(store.shared.reservationCount == 0)
    }

    // MARK: Resources

    /// Uploads at once are capped, and every way an upload ends (refused, cut off, dropped,
    /// failed at the end, stored) gives back its slot, its reservation, its temporary files
    /// and its descriptors.
    @Test func everyUploadGivesBackWhatItHeld() throws {
        let f = try StoreFixture { $0.maxConcurrentIngests = 2 }
        let (good, _) = try buildSample(in: f.dir, version: 1, out: "1.kaa")
        let bytes = try f.dir.read("1.kaa")
        let model = ONNXFixture.small()
        let wrong = try CraftedArchive.manifest(version: 2, files: [("model.onnx", model)]) { $0.signature.outputs.removeLast() }
        try CraftedArchive.write([.manifest(wrong), .file("model.onnx", model), .end], to: f.dir.file("wrong.kaa"))
        let wrongBytes = try f.dir.read("wrong.kaa")
        _ = good

        let a = try f.store.beginIngest()
        let b = try f.store.beginIngest()
        try a.append(Array(bytes[0..<(bytes.count / 2)]))
        try b.append(wrongBytes)
        #expect(f.store.uploadsInProgress == 2)
        #expect(f.store.shared.reservationCount == 1) // b holds iris@2
        #expect(descriptors(under: f.data + "/snapshots") == 2) // their archives; b's model spool closed after its model
        let busy = #expect(throws: SnapshotError.self) { try f.store.beginIngest() }
        #expect(busy?.code == .busy)
        #expect(busy?.message == "this node is receiving 2 uploads already, its limit (the node's `max_concurrent_uploads` setting); retry when one has finished")
        a.abort()
        let failed = #expect(throws: SnapshotError.self) { try b.finish() }
        #expect(failed?.code == .invalidManifest)
        #expect(f.store.uploadsInProgress == 0)
        #expect(f.store.shared.reservationCount == 0)
        do {
            let dropped = try f.store.beginIngest()
            try dropped.append(Array(bytes[0..<100]))
            #expect(f.store.uploadsInProgress == 1)
        }
        var flipped = bytes
        flipped[bytes.count / 2] ^= 0x10
        #expect(throws: SnapshotError.self) { try HostileUploadTests.upload(f.store, flipped) }
        #expect(try HostileUploadTests.upload(f.store, bytes).outcome == .stored)
        #expect(f.store.uploadsInProgress == 0)
        #expect(f.store.shared.reservationCount == 0)
        #expect(descriptors(under: f.data + "/snapshots") == 0)
        #expect(try f.tempFiles().isEmpty)
    }
}
