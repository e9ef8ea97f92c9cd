import Crypto
import Foundation
@testable import KaaSnapshot
import KaaTestSupport
import Testing

/// Writes a hand-made container (valid LZ4 frame) for bad-input tests.
struct CraftedArchive {
    enum Item {
        case manifest([UInt8])
        case file(String, [UInt8], declaredSize: UInt64? = nil)
        case raw([UInt8])
        case signature([UInt8])
        case end
    }

    static func write(_ items: [Item], to path: String, header: [UInt8] = ContainerFormat.header()) throws {
        var out = [UInt8]()
        let enc = try LZ4FrameEncoder { (b) throws(SnapshotError) in out += b }
        try enc.write(header)
        for item in items {
            switch item {
            case .manifest(let m):
                try enc.write(ContainerFormat.entryHeader(kind: .manifest, name: "manifest.json", size: UInt64(m.count)))
                try enc.write(m)
            case .file(let name, let data, let declared):
                try enc.write(ContainerFormat.entryHeader(kind: .file, name: name, size: declared ?? UInt64(data.count)))
                try enc.write(data)
            case .raw(let b): try enc.write(b)
            case .signature(let s):
                try enc.write(ContainerFormat.entryHeader(kind: .signature, name: ContainerFormat.signatureEntryName, size: UInt64(s.count)))
                try enc.write(s)
            case .end: try enc.write(ContainerFormat.entryHeader(kind: .end, name: "", size: 0))
            }
        }
        try enc.finish()
        try Data(out).write(to: URL(fileURLWithPath: path))
    }

    /// A manifest for `files` (path, bytes) with the model first, declaring the model's own
    /// signature when it is an ONNX model (an invented one otherwise).
    static func manifest(name: String = "iris", version: Int = 1, files: [(String, [UInt8])], edit: (inout SnapshotManifest) -> Void = { _ in }) throws -> [UInt8] {
        let invented = SnapshotManifest.ModelSignature(inputs: [], outputs: [.init(name: "y", kind: .tensor, dtype: "FP32", shape: [-1])])
        let signature = (try? files[0].1.withUnsafeBytes { try ONNXSignatureReader.read(bytes: $0) }) ?? invented
        var m = SnapshotManifest(
            name: name, version: version, createdAt: Date(timeIntervalSince1970: 1_790_000_000), model: files[0].0,
            files: files.enumerated().map { i, f in
                .init(path: f.0, role: i == 0 ? .model : .extra, size: UInt64(f.1.count), sha256: Hex.encode(SHA256.hash(data: f.1)))
            },
            pipeline: nil,
            signature: signature,
            requirements: .init(memoryBytes: 1 << 20, accelerator: .none), labels: [:], lineage: .init())
        edit(&m)
        return try m.canonicalBytes()
    }
}

@Suite struct ArchiveTests {
    @Test func buildThenVerifyRoundTrips() throws {
        let dir = try TempDir()
        let key = PublisherPrivateKey()
        let (path, built) = try buildSample(in: dir, key: key, extras: [("labels.txt", Array("setosa\nversicolor\nvirginica\n".utf8))])
        let v = try SnapshotArchive.verify(path: path, policy: .init(trustedKeys: [key.publicKey]))
        #expect(v.digest == built.digest)
        #expect(v.manifest == built.manifest)
        #expect(v.manifest.name == "iris" && v.manifest.version == 1)
        #expect(v.manifest.files.map(\.path) == ["model.onnx", "labels.txt"])
        #expect(v.manifest.lineage.publisher == key.publicKey.keyID)
        #expect(v.signature?.publicKey == key.publicKey)
        #expect(v.manifest.pipeline == "steps: []\n")
        // The signature reader skipped the initializer `W` listed among the inputs.
        #expect(v.manifest.signature.inputs == [.init(name: "float_input", kind: .tensor, dtype: "FP32", shape: [-1, 4])])
        #expect(v.manifest.signature.outputs == [
            .init(name: "label", kind: .tensor, dtype: "INT64", shape: [-1]),
            .init(name: "probabilities", kind: .tensor, dtype: "FP32", shape: [-1, 3]),
        ])
        #expect(v.archiveBytes == UInt64(try dir.read("iris.kaa").count))
    }

    @Test func digestIsTheManifestHashAndSurvivesRecompression() throws {
        let dir = try TempDir()
        let (path, built) = try buildSample(in: dir)
        // Decompress with the stock tool, recompress with other settings: same identity.
        #expect(try lz4Decompress(path, to: dir.file("container")) == 0)
        let container = try dir.read("container")
        #expect(Array(container[0..<8]) == Array("KAASNAP\n".utf8))
        #expect(SnapshotDigest(bytes: Array(SHA256.hash(data: built.manifestBytes))) == built.digest)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/lz4")
        p.arguments = ["-9", "-B4", "--content-size", "-f", "-q", dir.file("container"), dir.file("re.kaa")]
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let v = try SnapshotArchive.verify(path: dir.file("re.kaa"))
        #expect(v.digest == built.digest)
    }

    @Test func extractWritesTheFiles() throws {
        let dir = try TempDir()
        let labels = Array("a\nb\n".utf8)
        let (path, _) = try buildSample(in: dir, extras: [("vocab/labels.txt", labels)])
        _ = try SnapshotArchive.extract(path: path, to: dir.file("out"))
        #expect(try dir.read("out/vocab/labels.txt") == labels)
        #expect(try dir.read("out/model.onnx") == ONNXFixture.small())
    }

    @Test func loadFilesReturnsVerifiedBytes() throws {
        let dir = try TempDir()
        let labels = Array("a\nb\n".utf8)
        let (path, built) = try buildSample(in: dir, extras: [("labels.txt", labels)])
        let (archive, files) = try SnapshotArchive.loadFiles(path: path)
        #expect(archive.digest == built.digest)
        #expect(files == ["model.onnx": ONNXFixture.small(), "labels.txt": labels])
        var bytes = try dir.read("iris.kaa")
        bytes[bytes.count - 2] ^= 1
        let bad = try dir.write("bad.kaa", bytes)
        #expect(throws: SnapshotError.self) { try SnapshotArchive.loadFiles(path: bad) }
    }

    /// A manifest and entry agreeing on a 1 TiB model in a 1 KB archive: loading it must fail
    /// as truncated, not reserve a terabyte first (a trap in `kaa batch`, or in a node loading).
    @Test func loadFilesDoesNotTrustADeclaredSizeForMemory() throws {
        let dir = try TempDir()
        let model = ONNXFixture.small()
        let manifest = try CraftedArchive.manifest(files: [("model.onnx", model)]) { m in m.files[0].size = 1 << 40 }
        try CraftedArchive.write([.manifest(manifest), .file("model.onnx", model, declaredSize: 1 << 40)], to: dir.file("tb.kaa"))
        let e = #expect(throws: SnapshotError.self) {
            try SnapshotArchive.loadFiles(path: dir.file("tb.kaa"), policy: .init(maxContentBytes: 2 << 40))
        }
        #expect(e?.code == .truncated)
    }

    @Test func everyFlippedByteIsRefused() throws {
        let dir = try TempDir()
        let (path, _) = try buildSample(in: dir, key: PublisherPrivateKey())
        let original = try dir.read("iris.kaa")
        _ = path
        for i in 0..<original.count {
            var bad = original
            bad[i] ^= 0x01
            let p = try dir.write("flip.kaa", bad)
            #expect(throws: SnapshotError.self, "flipped byte \(i) of \(original.count) passed") {
                try SnapshotArchive.verify(path: p)
            }
        }
    }

    @Test func truncationAnywhereIsRefused() throws {
        let dir = try TempDir()
        _ = try buildSample(in: dir)
        let original = try dir.read("iris.kaa")
        for cut in [0, 1, 4, 7, 20, original.count / 2, original.count - 5, original.count - 1] {
            let p = try dir.write("cut.kaa", Array(original[0..<cut]))
            let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: p) }
            #expect(e?.code == .truncated || e?.code == .malformedArchive, "cut at \(cut): \(String(describing: e))")
        }
        let p = try dir.write("cut.kaa", Array(original[0..<(original.count / 2)]))
        let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: p) }
        #expect(e?.code == .truncated)
    }

    @Test func trailingBytesAreRefused() throws {
        let dir = try TempDir()
        _ = try buildSample(in: dir)
        let p = try dir.write("t.kaa", try dir.read("iris.kaa") + [0])
        let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: p) }
        #expect(e?.message.contains("after the end of its LZ4 frame") == true)
    }

    @Test func signaturePolicy() throws {
        let dir = try TempDir()
        let good = PublisherPrivateKey()
        let other = PublisherPrivateKey()
        let (unsigned, _) = try buildSample(in: dir, out: "u.kaa")
        let (signed, _) = try buildSample(in: dir, out: "s.kaa", key: good)
        let missing = #expect(throws: SnapshotError.self) {
            try SnapshotArchive.verify(path: unsigned, policy: .init(trustedKeys: [good.publicKey]))
        }
        #expect(missing?.code == .signatureMissing)
        let untrusted = #expect(throws: SnapshotError.self) {
            try SnapshotArchive.verify(path: signed, policy: .init(trustedKeys: [other.publicKey]))
        }
        #expect(untrusted?.code == .signatureInvalid)
        #expect(untrusted?.message.contains("not a trusted publisher key") == true)
        _ = try SnapshotArchive.verify(path: signed, policy: .init(trustedKeys: [good.publicKey, other.publicKey]))
    }

    @Test func forgedSignatureIsRefused() throws {
        let dir = try TempDir()
        let key = PublisherPrivateKey()
        let model = ONNXFixture.small()
        let manifest = try CraftedArchive.manifest(files: [("model.onnx", model)])
        let otherDigest = SnapshotDigest(bytes: Array(SHA256.hash(data: Array("something else".utf8))))
        let sig = key.publicKey.rawBytes + (try key.sign(otherDigest))
        try CraftedArchive.write([.manifest(manifest), .file("model.onnx", model), .signature(sig), .end], to: dir.file("f.kaa"))
        let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("f.kaa")) }
        #expect(e?.code == .signatureInvalid)
        #expect(e?.message.contains("does not match") == true)
    }

    @Test func expectedDigestMismatchIsRefused() throws {
        let dir = try TempDir()
        let (path, _) = try buildSample(in: dir)
        let wrong = SnapshotDigest(bytes: [UInt8](repeating: 7, count: 32))
        let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: path, policy: .init(expectedDigest: wrong)) }
        #expect(e?.code == .digestMismatch)
        #expect(e?.message.contains("not the expected sha256:0707") == true)
    }

    @Test func fileContentNotMatchingManifestIsRefused() throws {
        let dir = try TempDir()
        let model = ONNXFixture.small()
        let manifest = try CraftedArchive.manifest(files: [("model.onnx", model)])
        var tampered = model
        tampered[tampered.count - 1] ^= 0xFF
        try CraftedArchive.write([.manifest(manifest), .file("model.onnx", tampered), .end], to: dir.file("x.kaa"))
        let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("x.kaa")) }
        #expect(e?.code == .digestMismatch)
        #expect(e?.message.contains("file `model.onnx` has SHA-256") == true)
    }

    @Test(arguments: [
        ("../evil.onnx", "path traversal"),
        ("/etc/passwd", "is absolute"),
        ("a/../../b", "path traversal"),
        ("a\\b", "backslash"),
        ("a//b", "empty component"),
    ])
    func badEntryNamesAreRefused(name: String, why: String) throws {
        let dir = try TempDir()
        let model = ONNXFixture.small()
        let manifest = try CraftedArchive.manifest(files: [("model.onnx", model)])
        try CraftedArchive.write([.manifest(manifest), .file(name, model), .end], to: dir.file("x.kaa"))
        let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("x.kaa")) }
        #expect(e?.code == .invalidEntry)
        #expect(e?.message.contains(why) == true, "\(String(describing: e))")
        // The manifest refuses the same names.
        let bad = try? CraftedArchive.manifest(files: [(name, model)])
        if let bad {
            #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(bad) }
        }
    }

    @Test func duplicateEntriesAreRefused() throws {
        let dir = try TempDir()
        let model = ONNXFixture.small()
        let manifest = try CraftedArchive.manifest(files: [("model.onnx", model)])
        try CraftedArchive.write([.manifest(manifest), .file("model.onnx", model), .file("model.onnx", model), .end], to: dir.file("d.kaa"))
        let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("d.kaa")) }
        #expect(e?.message == "duplicate entry `model.onnx`")
        try CraftedArchive.write([.manifest(manifest), .manifest(manifest), .file("model.onnx", model), .end], to: dir.file("d2.kaa"))
        let e2 = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("d2.kaa")) }
        #expect(e2?.message.contains("duplicate manifest") == true)
        // A manifest listing one file twice.
        var m = try SnapshotManifest.decode(manifest)
        m.files.append(m.files[0])
        let e3 = #expect(throws: SnapshotError.self) { try m.validate() }
        #expect(e3?.message.contains("listed twice") == true)
    }

    @Test func zeroByteFilesAreRefused() throws {
        let dir = try TempDir()
        let model = ONNXFixture.small()
        let manifest = try CraftedArchive.manifest(files: [("model.onnx", model), ("empty.txt", [])])
        _ = manifest
        let e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(manifest) }
        #expect(e?.message.contains("file `empty.txt` has size 0") == true)
        // The entry itself declaring 0 bytes while the manifest says otherwise.
        let m1 = try CraftedArchive.manifest(files: [("model.onnx", model)])
        try CraftedArchive.write([.manifest(m1), .file("model.onnx", [], declaredSize: 0), .end], to: dir.file("z.kaa"))
        let e2 = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("z.kaa")) }
        #expect(e2?.message.contains("0-byte file") == true)
        // The builder refuses an empty extra file, and an empty archive is refused.
        #expect(throws: SnapshotError.self) { try buildSample(in: dir, extras: [("empty.txt", [])]) }
        let empty = try dir.write("empty.kaa", [])
        let e3 = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: empty) }
        #expect(e3?.message == "archive is empty (0 bytes)")
    }

    @Test func declaredSizeBeyondTheRealOneIsRefused() throws {
        let dir = try TempDir()
        let model = ONNXFixture.small()
        // Manifest and entry agree on a size far beyond the bytes that follow.
        let manifest = try CraftedArchive.manifest(files: [("model.onnx", model)]) { m in m.files[0].size = 50 << 30 }
        try CraftedArchive.write([.manifest(manifest), .file("model.onnx", model, declaredSize: 50 << 30)], to: dir.file("big.kaa"))
        let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("big.kaa")) }
        #expect(e?.code == .truncated)
        #expect(e?.message.contains("ends inside file `model.onnx` after \(model.count) of its 53687091200 declared bytes") == true)
        // The entry header alone lying about its size.
        let honest = try CraftedArchive.manifest(files: [("model.onnx", model)])
        try CraftedArchive.write([.manifest(honest), .file("model.onnx", model, declaredSize: 1 << 40), .end], to: dir.file("big2.kaa"))
        let e2 = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("big2.kaa")) }
        #expect(e2?.message.contains("declares 1099511627776 bytes but the manifest says") == true)
        // Beyond the configured limit: refused as soon as the manifest is read.
        let e3 = #expect(throws: SnapshotError.self) {
            try SnapshotArchive.verify(path: dir.file("big.kaa"), policy: .init(maxContentBytes: 1 << 30))
        }
        #expect(e3?.code == .tooLarge)
    }

    @Test func missingAndExtraEntriesAreRefused() throws {
        let dir = try TempDir()
        let model = ONNXFixture.small()
        let labels = Array("x\n".utf8)
        let manifest = try CraftedArchive.manifest(files: [("model.onnx", model), ("labels.txt", labels)])
        try CraftedArchive.write([.manifest(manifest), .file("model.onnx", model), .end], to: dir.file("m.kaa"))
        let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("m.kaa")) }
        #expect(e?.message == "manifest lists file(s) missing from the archive: labels.txt")
        try CraftedArchive.write([.manifest(manifest), .file("model.onnx", model), .file("labels.txt", labels), .file("x.bin", labels), .end], to: dir.file("e.kaa"))
        let e2 = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("e.kaa")) }
        #expect(e2?.message == "entry `x.bin` is not listed in the manifest")
        try CraftedArchive.write([.file("model.onnx", model), .end], to: dir.file("nm.kaa"))
        let e3 = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("nm.kaa")) }
        #expect(e3?.message.contains("comes before the manifest") == true)
        try CraftedArchive.write([], to: dir.file("bad-magic.kaa"), header: Array("NOTKAA\n\n".utf8) + [1, 0, 0, 0, 0, 0, 0, 0])
        let e4 = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("bad-magic.kaa")) }
        #expect(e4?.message.contains("not a Kaa snapshot") == true)
        let notLZ4 = try dir.write("plain.kaa", Array("hello, this is not lz4".utf8))
        let e5 = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: notLZ4) }
        #expect(e5?.code == .malformedArchive)
    }

    @Test func newerFormatVersionIsRefusedClearly() throws {
        let dir = try TempDir()
        try CraftedArchive.write([.end], to: dir.file("v9.kaa"), header: Array("KAASNAP\n".utf8) + [9, 0, 0, 0, 0, 0, 0, 0])
        let e = #expect(throws: SnapshotError.self) { try SnapshotArchive.verify(path: dir.file("v9.kaa")) }
        #expect(e?.message == "archive has container format version 9; this Kaa reads 1...1 (upgrade the node)")
    }
}
