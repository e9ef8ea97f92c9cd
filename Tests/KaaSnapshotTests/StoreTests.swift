import Foundation
import GRDB
@testable import KaaSnapshot
import Logging
import KaaTestSupport
import Testing

/// A store in a temporary directory, and what the directory held, to prove "left exactly as it was".
struct StoreFixture {
    let dir: TempDir
    let data: String
    var store: SnapshotStore

    init(trustedKeys: Set<PublisherPublicKey> = [], retain: Int = 5, configure: (inout SnapshotStore.Configuration) -> Void = { _ in }) throws {
        dir = try TempDir()
        data = dir.file("node")
        var configuration = SnapshotStore.Configuration(directory: data, trustedKeys: trustedKeys, retainVersions: retain)
        configure(&configuration)
        store = try SnapshotStore(configuration: configuration, logger: Logger(label: "test"))
    }

    /// The names in the store's `.tmp` directory (uploads in progress, their model spools).
    func tempFiles() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: data + "/snapshots/.tmp").sorted()
    }

    func reopen(trustedKeys: Set<PublisherPublicKey> = [], verifyAll: Bool = false) throws -> SnapshotStore {
        try SnapshotStore(configuration: .init(directory: data, trustedKeys: trustedKeys, verifyAllOnStart: verifyAll),
                          logger: Logger(label: "test"))
    }

    /// Every file under the data directory except SQLite's own, with its bytes' hash, plus the
    /// catalog's rows: equal before and after a refused upload.
    func state() throws -> [String] {
        var out: [String] = []
        let e = FileManager.default.enumerator(atPath: data)!
        while let f = e.nextObject() as? String {
            if f.hasPrefix("catalog.sqlite") { continue }
            var isDir: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: data + "/" + f, isDirectory: &isDir)
            out.append(isDir.boolValue ? f + "/" : "\(f) \(try Data(contentsOf: URL(fileURLWithPath: data + "/" + f)).hashValue)")
        }
        let rows = try store.catalog.pool.read { db in
            try Row.fetchAll(db, sql: "SELECT name, version, digest, state FROM snapshot ORDER BY name, version").map { "\($0)" }
                + Row.fetchAll(db, sql: "SELECT name, alias, version FROM alias ORDER BY name, alias").map { "\($0)" }
        }
        return out.sorted() + rows
    }
}

@Suite struct StoreTests {
    @Test func ingestListResolveAndReopen() throws {
        let f = try StoreFixture()
        let (p1, b1) = try buildSample(in: f.dir, version: 1, out: "1.kaa")
        let (p2, b2) = try buildSample(in: f.dir, version: 2, out: "2.kaa", seed: 2)
        let r1 = try f.store.ingest(file: p1)
        #expect(r1.outcome == .stored && r1.record.digest == b1.digest)
        _ = try f.store.ingest(file: p2)
        #expect(try f.store.list().map(\.id.description) == ["iris@1", "iris@2"])
        #expect(try f.store.resolve(.init(parsing: "iris")).id.version == 2)
        #expect(try f.store.resolve(.init(parsing: "iris@1")).digest == b1.digest)
        #expect(try f.store.manifest(SnapshotID(parsing: "iris@2")) == b2.manifest)
        #expect(FileManager.default.fileExists(atPath: f.data + "/snapshots/iris/2.kaa"))
        let e = #expect(throws: SnapshotError.self) { try f.store.resolve(.init(parsing: "iris@9")) }
        #expect(e?.code == .notFound)
        #expect(e?.message == "model `iris` has no version 9; versions: 1, 2")
        let e2 = #expect(throws: SnapshotError.self) { try f.store.resolve(.init(parsing: "rose")) }
        #expect(e2?.message == "model `rose` is not stored on this node")
        // Stored archives verify on their own, and survive a restart untouched.
        _ = try SnapshotArchive.verify(path: r1.record.path, policy: .init(expectedDigest: b1.digest))
        let again = try f.reopen()
        #expect(again.startupRepairs.isClean)
        #expect(try again.list().count == 2)
    }

    @Test func sameBytesAgainIsIdempotentAndDifferentBytesConflict() throws {
        let f = try StoreFixture()
        let (p, _) = try buildSample(in: f.dir, version: 3, out: "a.kaa")
        #expect(try f.store.ingest(file: p).outcome == .stored)
        #expect(try f.store.ingest(file: p).outcome == .alreadyPresent)
        let before = try f.state()
        let (other, _) = try buildSample(in: f.dir, version: 3, out: "b.kaa", seed: 9)
        let e = #expect(throws: SnapshotError.self) { try f.store.ingest(file: other) }
        #expect(e?.code == .conflict)
        #expect(e?.message.hasPrefix("iris@3 is already stored with digest sha256:") == true)
        #expect(try f.state() == before)
    }

    @Test func draftsGetTheNextFreeVersion() throws {
        let f = try StoreFixture()
        let (draft, built) = try buildSample(in: f.dir, version: 0, out: "d.kaa")
        #expect(built.manifest.isDraft)
        let r1 = try f.store.ingest(file: draft)
        #expect(r1.record.id.version == 1 && r1.assignedVersion)
        #expect(r1.record.digest != built.digest)
        let m = try f.store.manifest(r1.record.id)
        #expect(m.version == 1)
        var expected = built.manifest
        expected.version = 1
        #expect(m == expected)
        #expect(try f.store.ingest(file: draft).record.id.version == 2)
        #expect(try f.store.nextVersion(name: "iris") == 3)
        // Addressed to a version: that version is assigned.
        #expect(try f.store.ingest(file: draft, .init(expectedVersion: 7)).record.id.version == 7)
        // Signed drafts cannot be given a version.
        let (signedDraft, _) = try buildSample(in: f.dir, version: 0, out: "sd.kaa", key: PublisherPrivateKey())
        let before = try f.state()
        let e = #expect(throws: SnapshotError.self) { try f.store.ingest(file: signedDraft) }
        #expect(e?.message.contains("is a signed draft") == true)
        #expect(try f.state() == before)
    }

    @Test func signedStoreRefusesUnsignedAndUntrusted() throws {
        let key = PublisherPrivateKey()
        let f = try StoreFixture(trustedKeys: [key.publicKey])
        let (unsigned, _) = try buildSample(in: f.dir, out: "u.kaa")
        let (wrong, _) = try buildSample(in: f.dir, out: "w.kaa", key: PublisherPrivateKey())
        let (good, _) = try buildSample(in: f.dir, out: "g.kaa", key: key)
        let (draft, _) = try buildSample(in: f.dir, version: 0, out: "d.kaa")
        let before = try f.state()
        #expect((#expect(throws: SnapshotError.self) { try f.store.ingest(file: unsigned) })?.code == .signatureMissing)
        #expect((#expect(throws: SnapshotError.self) { try f.store.ingest(file: wrong) })?.code == .signatureInvalid)
        #expect((#expect(throws: SnapshotError.self) { try f.store.ingest(file: draft) })?.code == .signatureMissing)
        #expect(try f.state() == before)
        let r = try f.store.ingest(file: good)
        #expect(r.record.signerKeyID == key.publicKey.keyID)
    }

    /// Every bad upload is refused with its message and leaves the store exactly as it was.
    @Test func badUploadsLeaveTheStoreUntouched() throws {
        let f = try StoreFixture()
        let (okPath, okBuilt) = try buildSample(in: f.dir, version: 1, out: "ok.kaa")
        _ = try f.store.ingest(file: okPath)
        _ = try f.store.setAlias(name: "iris", alias: "stable", version: 1)
        let before = try f.state()
        let good = try f.dir.read("ok.kaa")
        let (p2, _) = try buildSample(in: f.dir, version: 2, out: "v2.kaa", seed: 5)
        let v2 = try f.dir.read("v2.kaa")
        _ = p2

        func refuse(_ bytes: [UInt8], _ expect: String, _ request: IngestRequest = .init(), chunk: Int = 7) throws {
            let s = try f.store.beginIngest(request)
            var failure: SnapshotError?
            var i = 0
            while i < bytes.count && failure == nil {
                do { try s.append(Array(bytes[i..<min(bytes.count, i + chunk)])) } catch let e { failure = e }
                i += chunk
            }
            if failure == nil { do { _ = try s.finish() } catch let e { failure = e } }
            let error = failure
            #expect(error != nil, "accepted: \(expect)")
            #expect(error?.message.contains(expect) == true, "expected `\(expect)`, got: \(String(describing: error))")
            #expect(try f.state() == before)
        }

        try refuse(Array(v2[0..<(v2.count / 2)]), "archive is truncated")
        var flipped = v2
        flipped[v2.count / 2] ^= 0x10
        try refuse(flipped, "ERROR_blockChecksum_invalid")
        try refuse(v2, "not the expected", .init(expectedDigest: okBuilt.digest))
        try refuse(v2, "upload addressed to model `rose` holds a snapshot of `iris`", .init(expectedName: "rose"))
        try refuse(v2, "upload addressed to iris@3 holds iris@2", .init(expectedVersion: 3))
        try refuse(v2, "upload was cut off after \(v2.count) of its declared \(v2.count + 100) bytes", .init(declaredLength: UInt64(v2.count + 100)))
        try refuse(v2, "upload is longer than its declared 10 bytes", .init(declaredLength: 10))
        try refuse([], "archive is empty (0 bytes)")
        try refuse(good + [1, 2, 3], "after the end of its LZ4 frame")

        let model = ONNXFixture.small()
        func crafted(_ items: [CraftedArchive.Item]) throws -> [UInt8] {
            try CraftedArchive.write(items, to: f.dir.file("c.kaa"))
            return try f.dir.read("c.kaa")
        }
        let m2 = try CraftedArchive.manifest(version: 2, files: [("model.onnx", model)])
        try refuse(try crafted([.manifest(m2), .file("../../etc/cron.d/x", model), .end]), "path traversal")
        try refuse(try crafted([.manifest(m2), .file("/abs/model.onnx", model), .end]), "is absolute")
        try refuse(try crafted([.manifest(m2), .file("model.onnx", model), .file("model.onnx", model), .end]), "duplicate entry `model.onnx`")
        try refuse(try crafted([.manifest(m2), .file("model.onnx", [], declaredSize: 0), .end]), "0-byte file")
        let huge = try CraftedArchive.manifest(version: 2, files: [("model.onnx", model)]) { $0.files[0].size = 40 << 30 }
        try refuse(try crafted([.manifest(huge), .file("model.onnx", model, declaredSize: 40 << 30)]),
                   "declares model file `model.onnx` of 42949672960 bytes (40.0 GiB); the limit here is 1073741824 bytes (1.0 GiB) (a node's `max_model_bytes` setting")
        var noName = try JSONSerialization.jsonObject(with: Data(m2)) as! [String: Any]
        noName.removeValue(forKey: "name")
        try refuse(try crafted([.manifest(Array(try JSONSerialization.data(withJSONObject: noName))), .file("model.onnx", model), .end]), "manifest is missing field `name`")
        let wrongType = Array(String(decoding: m2, as: UTF8.self).replacingOccurrences(of: "\"version\" : 2", with: "\"version\" : \"2\"").utf8)
        try refuse(try crafted([.manifest(wrongType), .file("model.onnx", model), .end]), "manifest field `version` has the wrong type")
        // A conflicting upload is refused as soon as its manifest arrives.
        let (conflict, _) = try buildSample(in: f.dir, version: 1, out: "c1.kaa", seed: 3)
        try refuse(try f.dir.read("c1.kaa"), "iris@1 is already stored", chunk: 1 << 20)
        _ = conflict
    }

    @Test func abortedUploadLeavesNothing() throws {
        let f = try StoreFixture()
        let (p, _) = try buildSample(in: f.dir)
        let bytes = try f.dir.read("iris.kaa")
        _ = p
        let before = try f.state()
        let s = try f.store.beginIngest(.init(declaredLength: UInt64(bytes.count)))
        try s.append(Array(bytes[0..<(bytes.count / 2)]))
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.data + "/snapshots/.tmp").count == 1)
        s.abort()
        #expect(try f.state() == before)
        #expect(throws: SnapshotError.self) { try s.finish() }
        // Dropping a session without finishing cleans up as well.
        do {
            let s2 = try f.store.beginIngest()
            try s2.append(Array(bytes[0..<10]))
        }
        #expect(try f.state() == before)
    }

    /// A node that passes an upload on verifies it without storing it: the archive waits in its
    /// temporary file, which goes with an abort and becomes the stored copy with a finish.
    @Test func anUploadVerifiedButNotStoredLeavesNothingOrCommitsLater() throws {
        let f = try StoreFixture()
        _ = try buildSample(in: f.dir)
        let bytes = try f.dir.read("iris.kaa")
        let before = try f.state()
        let passed = try f.store.beginIngest(.init(expectedName: "iris", declaredLength: UInt64(bytes.count)))
        try passed.append(bytes)
        let verified = try passed.verify()
        #expect(verified.manifest.name == "iris" && verified.archiveBytes == UInt64(bytes.count))
        let path = try #require(passed.verifiedPath)
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: path))) == bytes)
        #expect(try passed.verify().digest == verified.digest)
        // Nothing is stored: only the temporary file is new.
        #expect(try f.store.list().isEmpty)
        let during = try f.state()
        #expect(during.filter { !$0.hasPrefix("snapshots/.tmp/") || $0 == "snapshots/.tmp/" } == before, "\(during) against \(before)")
        passed.abort()
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(try f.state() == before)
        #expect(f.store.shared.reservationCount == 0 && f.store.uploadsInProgress == 0)

        let kept = try f.store.beginIngest(.init(expectedName: "iris", declaredLength: UInt64(bytes.count)))
        try kept.append(bytes)
        _ = try kept.verify()
        let stored = try kept.finish()
        #expect(stored.outcome == .stored && stored.record.id.description == "iris@1")
        #expect(kept.verifiedPath == nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.data + "/snapshots/.tmp").isEmpty)
    }

    @Test func asyncChunkedIngest() async throws {
        let f = try StoreFixture()
        _ = try buildSample(in: f.dir)
        let bytes = try f.dir.read("iris.kaa")
        let chunks = AsyncStream<[UInt8]> { c in
            var i = 0
            while i < bytes.count {
                c.yield(Array(bytes[i..<min(bytes.count, i + 100)]))
                i += 100
            }
            c.finish()
        }
        let r = try await f.store.ingest(chunks: chunks, .init(expectedName: "iris", expectedVersion: 1, declaredLength: UInt64(bytes.count)))
        #expect(r.record.id.description == "iris@1")
    }

    @Test func concurrentUploadsGetDistinctVersionsAndOneWinnerPerVersion() async throws {
        let f = try StoreFixture()
        let (draft, _) = try buildSample(in: f.dir, version: 0, out: "d.kaa")
        let store = f.store
        let versions = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<8 {
                group.addTask { try store.ingest(file: draft).record.id.version }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(versions.sorted() == Array(1...8))
        // Different content racing for the same name@version: exactly one is stored.
        var paths: [String] = []
        for seed in 1...6 { paths.append(try buildSample(in: f.dir, version: 20, out: "r\(seed).kaa", seed: UInt8(seed)).path) }
        let outcomes = await withTaskGroup(of: SnapshotError.Code?.self) { group in
            for p in paths {
                group.addTask {
                    do throws(SnapshotError) { _ = try store.ingest(file: p); return nil } catch { return error.code }
                }
            }
            return await group.reduce(into: [SnapshotError.Code?]()) { $0.append($1) }
        }
        #expect(outcomes.filter { $0 == nil }.count == 1)
        #expect(outcomes.filter { $0 == SnapshotError.Code.conflict }.count == 5)
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.data + "/snapshots/.tmp").isEmpty)
        let stored = try store.record(SnapshotID(parsing: "iris@20"))!
        _ = try SnapshotArchive.verify(path: stored.path, policy: .init(expectedDigest: stored.digest))
    }

    @Test func aliases() throws {
        let f = try StoreFixture()
        for v in 1...3 { _ = try f.store.ingest(file: try buildSample(in: f.dir, version: v, out: "\(v).kaa", seed: UInt8(v)).path) }
        try f.store.setAlias(name: "iris", alias: "stable", version: 2)
        try f.store.setAlias(name: "iris", alias: "canary", version: 3)
        #expect(try f.store.aliases(name: "iris") == ["stable": 2, "canary": 3])
        #expect(try f.store.resolve(.init(parsing: "iris@stable")).id.version == 2)
        try f.store.setAlias(name: "iris", alias: "stable", version: 3)
        #expect(try f.store.resolve(.init(parsing: "iris@stable")).id.version == 3)
        #expect(try f.store.resolve(.init(parsing: "iris@latest")).id.version == 3)
        let e = #expect(throws: SnapshotError.self) { try f.store.setAlias(name: "iris", alias: "stable", version: 9) }
        #expect(e?.message == "model `iris` has no version 9; versions: 1, 2, 3")
        #expect(throws: SnapshotError.self) { try f.store.setAlias(name: "iris", alias: "latest", version: 1) }
        #expect(throws: SnapshotError.self) { try f.store.setAlias(name: "iris", alias: "Bad_Alias", version: 1) }
        let e2 = #expect(throws: SnapshotError.self) { try f.store.resolve(.init(parsing: "iris@prod")) }
        #expect(e2?.message == "model `iris` has no alias `prod`; aliases: latest, canary, stable")
        try f.store.removeAlias(name: "iris", alias: "canary")
        #expect(try f.store.aliases(name: "iris") == ["stable": 3])
        let e3 = #expect(throws: SnapshotError.self) { try f.store.remove(SnapshotID(parsing: "iris@3")) }
        #expect(e3?.code == .inUse)
        try f.store.remove(SnapshotID(parsing: "iris@1"))
        #expect(try f.store.list().map(\.id.version) == [2, 3])
        #expect(!FileManager.default.fileExists(atPath: f.data + "/snapshots/iris/1.kaa"))
    }

    /// The alias register: a write always supersedes what it replaced, whatever the clock; a
    /// record from another node is taken only when it wins by (stamp, author); a removal is
    /// kept so it wins too; the version need not be stored here; a restart keeps it all.
    @Test func theAliasRegisterTakesTheLastWriterEverywhere() throws {
        let f = try StoreFixture()
        _ = try f.store.ingest(file: try buildSample(in: f.dir, version: 1, out: "1.kaa").path)
        let first = try f.store.writeAlias(name: "iris", alias: "stable", version: 1, author: "node-a")
        // A record stamped far in the future (a peer's clock ahead): the next local write still wins.
        let ahead = AliasRecord(name: "iris", alias: "stable", version: 7, stamp: first.stamp + 3_600_000, author: "node-b")
        #expect(try f.store.applyAliases([ahead]) == [ahead])
        #expect(try f.store.aliases(name: "iris") == ["stable": 7], "a version held elsewhere")
        let next = try f.store.writeAlias(name: "iris", alias: "stable", version: 1, author: "node-a")
        #expect(next.stamp == ahead.stamp + 1)
        // Older records, and equal stamps from a smaller author, lose; a greater author wins a tie.
        #expect(try f.store.applyAliases([ahead, AliasRecord(name: "iris", alias: "stable", version: 3, stamp: next.stamp, author: "node-0")]).isEmpty)
        let tie = AliasRecord(name: "iris", alias: "stable", version: 3, stamp: next.stamp, author: "node-z")
        #expect(try f.store.applyAliases([tie]) == [tie])
        // Removal is a record too, and an old set does not bring the alias back.
        let removed = try f.store.writeAlias(name: "iris", alias: "stable", version: nil, author: "node-a")
        #expect(removed.version == nil && removed.stamp == tie.stamp + 1)
        #expect(try f.store.aliases(name: "iris").isEmpty)
        #expect(try f.store.applyAliases([tie]).isEmpty)
        #expect(throws: SnapshotError.self) { try f.store.removeAlias(name: "iris", alias: "stable") }
        // Bad records from a peer are skipped, never stored.
        #expect(try f.store.applyAliases([AliasRecord(name: "Bad Name", alias: "x", version: 1, stamp: 1, author: "p"),
                                          AliasRecord(name: "iris", alias: "latest", version: 1, stamp: .max, author: "p"),
                                          AliasRecord(name: "iris", alias: "canary", version: 0, stamp: 1, author: "p")]).isEmpty)
        let canary = AliasRecord(name: "rose", alias: "canary", version: 2, stamp: 5, author: "p")
        #expect(try f.store.applyAliases([canary]) == [canary])
        let reopened = try f.reopen()
        #expect(try reopened.aliasRecords() == [AliasRecord(name: "iris", alias: "stable", version: nil, stamp: removed.stamp, author: "node-a"), canary])
        #expect(try reopened.allAliases() == ["rose": ["canary": 2]])
    }

    /// A store made before aliases were a register keeps its aliases.
    @Test func aliasesOfAnOlderCatalogCarryOver() throws {
        let f = try StoreFixture()
        _ = try f.store.ingest(file: try buildSample(in: f.dir, version: 1, out: "1.kaa").path)
        try f.store.catalog.pool.write { db in
            try db.execute(sql: """
                DROP TABLE alias;
                CREATE TABLE alias (name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated_at DOUBLE NOT NULL,
                    PRIMARY KEY (name, alias), FOREIGN KEY (name, version) REFERENCES snapshot (name, version) ON DELETE RESTRICT);
                INSERT INTO alias VALUES ('iris', 'stable', 1, 1790000000.5);
                DELETE FROM grdb_migrations WHERE identifier = 'v3-alias-register';
                """)
        }
        let reopened = try f.reopen()
        #expect(try reopened.aliasRecords() == [AliasRecord(name: "iris", alias: "stable", version: 1, stamp: 1_790_000_000_500, author: "")])
        #expect(try reopened.resolve(.init(parsing: "iris@stable")).id.version == 1)
    }

    /// The manifest's accelerator requirement is in every record the store gives.
    @Test func recordsCarryTheAcceleratorTheManifestAsks() throws {
        let f = try StoreFixture()
        for (name, accelerator) in [("plain", SnapshotManifest.Requirements.Accelerator.none), ("needs", .gpu), ("likes", .gpuPreferred)] {
            let model = try f.dir.write("model.onnx", ONNXFixture.small(seed: 1))
            let built = try SnapshotBuilder.build(SnapshotBuildRequest(modelPath: model, name: name, version: 1, accelerator: accelerator),
                                                  to: f.dir.file("\(name).kaa"))
            #expect(try f.store.ingest(file: f.dir.file("\(name).kaa")).record.accelerator == accelerator)
            #expect(built.manifest.requirements.accelerator == accelerator)
        }
        #expect(try f.reopen().list().map { "\($0.id.name):\($0.accelerator.rawValue)" } == ["likes:gpu-preferred", "needs:gpu", "plain:none"])
    }

    @Test func retentionKeepsNewestAliasedAndLeased() throws {
        let f = try StoreFixture(retain: 2)
        for v in 1...6 { _ = try f.store.ingest(file: try buildSample(in: f.dir, version: v, out: "\(v).kaa", seed: UInt8(v)).path) }
        try f.store.setAlias(name: "iris", alias: "stable", version: 1)
        let lease = try f.store.acquireLease(SnapshotID(parsing: "iris@3")).lease
        #expect(f.store.leaseCount(lease.id) == 1)
        let report = try f.store.applyRetention()
        #expect(report.deleted.map(\.version).sorted() == [2, 4])
        #expect(report.deferred.map(\.version) == [3])
        #expect(try f.store.list().map(\.id.version) == [1, 3, 5, 6])
        #expect(try f.store.record(SnapshotID(parsing: "iris@3"))?.state == .retiring)
        let e = #expect(throws: SnapshotError.self) { try f.store.remove(SnapshotID(parsing: "iris@3")) }
        #expect(e?.code == .inUse)
        f.store.releaseLease(lease)
        #expect(try f.store.applyRetention().deleted.map(\.version) == [3])
        #expect(try f.store.list().map(\.id.version) == [1, 5, 6])
        let files = try FileManager.default.contentsOfDirectory(atPath: f.data + "/snapshots/iris").sorted()
        #expect(files == ["1.kaa", "5.kaa", "6.kaa"])
    }

    @Test func retentionForOneModelLeavesOthersButFinishesRetiringVersions() throws {
        let f = try StoreFixture(retain: 1)
        for v in 1...3 {
            _ = try f.store.ingest(file: try buildSample(in: f.dir, version: v, out: "iris-\(v).kaa", seed: UInt8(v)).path)
            _ = try f.store.ingest(file: try buildSample(in: f.dir, name: "wine", version: v, out: "wine-\(v).kaa", seed: UInt8(v)).path)
        }
        let lease = try f.store.acquireLease(SnapshotID(parsing: "iris@1")).lease
        let first = try f.store.applyRetention(name: "iris")
        #expect(first.deleted.map(\.description) == ["iris@2"])
        #expect(first.deferred.map(\.description) == ["iris@1"])
        #expect(try f.store.list(name: "wine").map(\.id.version) == [1, 2, 3]) // not this pass's model
        f.store.releaseLease(lease)
        // A pass for another model still deletes the released retiring version.
        let second = try f.store.applyRetention(name: "wine")
        #expect(second.deleted.map(\.description).sorted() == ["iris@1", "wine@1", "wine@2"])
        #expect(try f.store.list().map(\.id.description) == ["iris@3", "wine@3"])
    }

    @Test func crashBeforeRenameLeavesATempFileThatIsRemoved() throws {
        let f = try StoreFixture()
        _ = try f.store.ingest(file: try buildSample(in: f.dir).path)
        // Simulate a crash mid-upload: a session's temp file is left behind.
        try Data(repeating: 1, count: 1000).write(to: URL(fileURLWithPath: f.data + "/snapshots/.tmp/abc.kaa.tmp"))
        let s = try f.reopen()
        #expect(s.startupRepairs.removedTempFiles == ["snapshots/.tmp/abc.kaa.tmp"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.data + "/snapshots/.tmp").isEmpty)
        #expect(try s.list().count == 1)
    }

    @Test func crashAfterRenameBeforeRowIsRepaired() throws {
        let f = try StoreFixture()
        let (p, built) = try buildSample(in: f.dir, version: 4)
        // Simulate a crash between rename and the catalog row: the file is in place, no row.
        try FileManager.default.createDirectory(atPath: f.data + "/snapshots/iris", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: p, toPath: f.data + "/snapshots/iris/4.kaa")
        #expect(try f.store.list().isEmpty)
        let s = try f.reopen()
        #expect(s.startupRepairs.readded.map(\.description) == ["iris@4"])
        #expect(try s.resolve(.init(parsing: "iris")).digest == built.digest)
        // Reopening again finds nothing to do.
        #expect(try f.reopen().startupRepairs.isClean)
    }

    @Test func reconciliationDropsRowsAndQuarantinesBadFiles() throws {
        let f = try StoreFixture()
        for v in 1...2 { _ = try f.store.ingest(file: try buildSample(in: f.dir, version: v, out: "\(v).kaa", seed: UInt8(v)).path) }
        try f.store.setAlias(name: "iris", alias: "stable", version: 1)
        // Row without file (e.g. a crash while deleting, or a lost disk file).
        try FileManager.default.removeItem(atPath: f.data + "/snapshots/iris/1.kaa")
        // A file without row that does not verify.
        var bad = try f.dir.read("2.kaa")
        bad[bad.count / 2] ^= 1
        try FileManager.default.createDirectory(atPath: f.data + "/snapshots/rose", withIntermediateDirectories: true)
        try Data(bad).write(to: URL(fileURLWithPath: f.data + "/snapshots/rose/2.kaa"))
        // A file that holds another snapshot than its name says.
        try FileManager.default.copyItem(atPath: f.dir.file("2.kaa"), toPath: f.data + "/snapshots/iris/9.kaa")
        // A stray file.
        try Data([1]).write(to: URL(fileURLWithPath: f.data + "/snapshots/iris/notes.txt"))
        let s = try f.reopen()
        let r = s.startupRepairs
        #expect(r.droppedRows.map(\.description) == ["iris@1"])
        #expect(r.readded.isEmpty)
        #expect(r.quarantined.map(\.path) == ["snapshots/iris/9.kaa", "snapshots/iris/notes.txt", "snapshots/rose/2.kaa"])
        #expect(r.quarantined[0].reason.contains("it holds iris@2, not iris@9"))
        #expect(try s.list().map(\.id.description) == ["iris@2"])
        #expect(try s.aliases(name: "iris").isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.data + "/snapshots/.quarantine").count == 3)
        #expect(try f.reopen().startupRepairs.isClean)
    }

    @Test func damagedCatalogedArchiveIsFoundByFullVerification() throws {
        let f = try StoreFixture()
        let r = try f.store.ingest(file: try buildSample(in: f.dir).path)
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: r.record.path)))
        bytes[bytes.count - 3] ^= 0x40
        try Data(bytes).write(to: URL(fileURLWithPath: r.record.path))
        let s = try f.reopen(verifyAll: true)
        #expect(s.startupRepairs.droppedRows.map(\.description) == ["iris@1"])
        #expect(s.startupRepairs.quarantined.count == 1)
        #expect(try s.list().isEmpty)
    }

    @Test func largeModelStreamsThroughBuildVerifyAndIngest() throws {
        let f = try StoreFixture()
        let model = f.dir.file("big.onnx")
        let size = 120 << 20
        try ONNXFixture.writeLarge(to: model, weightBytes: size)
        let built = try SnapshotBuilder.build(.init(modelPath: model, name: "big", version: 1), to: f.dir.file("big.kaa"))
        #expect(built.manifest.modelFile!.size > UInt64(size))
        #expect(built.manifest.signature.inputs.map(\.name) == ["float_input"])
        let v = try SnapshotArchive.verify(path: f.dir.file("big.kaa"))
        #expect(v.digest == built.digest)
        let r = try f.store.ingest(file: f.dir.file("big.kaa"))
        #expect(r.record.size == v.archiveBytes)
        _ = try SnapshotArchive.extract(path: r.record.path, to: f.dir.file("x"))
        let extracted = try FileManager.default.attributesOfItem(atPath: f.dir.file("x/model.onnx"))[.size] as! NSNumber
        #expect(extracted.uint64Value == built.manifest.modelFile!.size)
    }
}

extension StoreTests {
    /// Retention runs after every stored snapshot and asks which models have retiring versions:
    /// an index answers that, not a scan of every row and its manifest.
    @Test func theRetiringVersionsAreFoundThroughAnIndex() throws {
        let f = try StoreFixture()
        let plan = try f.store.catalog.pool.read { db in
            try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + SnapshotStore.retiringNamesQuery, arguments: ["retiring"]).map { $0["detail"] as String }
        }
        #expect(plan.contains { $0.contains("USING COVERING INDEX snapshot_by_state") }, "\(plan)")
        // A search by state, not a scan of the table in the primary key's order.
        #expect(!plan.contains { $0.hasPrefix("SCAN") }, "\(plan)")
    }
}
