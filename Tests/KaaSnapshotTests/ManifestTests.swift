import Foundation
@testable import KaaSnapshot
import KaaTestSupport
import Testing

@Suite struct ManifestTests {
    func sampleJSON() throws -> [String: Any] {
        let bytes = try CraftedArchive.manifest(files: [("model.onnx", ONNXFixture.small())])
        return try JSONSerialization.jsonObject(with: Data(bytes)) as! [String: Any]
    }

    func encode(_ o: [String: Any]) throws -> [UInt8] {
        Array(try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]))
    }

    @Test func canonicalBytesRoundTrip() throws {
        let bytes = try CraftedArchive.manifest(files: [("model.onnx", ONNXFixture.small())])
        let m = try SnapshotManifest.decode(bytes)
        #expect(try m.canonicalBytes() == bytes)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("\"created_at\" : \"2026-09-21T"))
        #expect(text.contains("\"parent_version\" : null"))
    }

    /// `created_at` as the manifest reads it: RFC 3339 with `Z` or an offset, whole seconds.
    @Test func manifestDates() throws {
        let noon = Date(timeIntervalSince1970: 1_769_860_800) // 2026-01-31T12:00:00Z
        #expect(ManifestDate.parse("2026-01-31T12:00:00Z") == noon)
        #expect(ManifestDate.parse("2026-01-31T14:00:00+02:00") == noon)
        #expect(ManifestDate.parse(ManifestDate.format(noon)) == noon)
        #expect(ManifestDate.format(noon) == "2026-01-31T12:00:00Z")
        for text in ["2026-01-31T12:00:00.5Z", "2026-01-31 12:00:00Z", "2026-01-31T12:00:00", "2026-01-31T12:00Z",
                     "2026-01-31t12:00:00z", "yesterday", ""] {
            #expect(ManifestDate.parse(text) == nil, "\(text)")
        }
        var o = try sampleJSON()
        o["created_at"] = "2026-01-31T12:00:00.250Z"
        let e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(e?.message.contains("`created_at` is invalid") == true)
    }

    @Test(arguments: ["name", "version", "files", "created_at", "model", "signature", "requirements", "lineage", "labels", "format_version"])
    func missingFieldIsNamed(_ field: String) throws {
        var o = try sampleJSON()
        o.removeValue(forKey: field)
        let e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(e?.code == .invalidManifest)
        #expect(e?.message == "manifest is missing field `\(field)`")
    }

    @Test func wrongFieldsAreNamed() throws {
        var o = try sampleJSON()
        o["version"] = "three"
        var e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(e?.message.contains("manifest field `version` has the wrong type") == true)

        o = try sampleJSON()
        o["name"] = "Iris!"
        e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(e?.message == "manifest: model name `Iris!` must start with a lowercase letter or a digit")

        o = try sampleJSON()
        o["colour"] = "blue"
        e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(e?.message.hasPrefix("manifest has unknown field `colour`") == true)

        o = try sampleJSON()
        var files = o["files"] as! [[String: Any]]
        files[0]["sha256"] = "xyz"
        o["files"] = files
        e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(e?.message == "manifest: file `model.onnx` has sha256 `xyz`, not 64 lowercase hex digits")

        o = try sampleJSON()
        files = o["files"] as! [[String: Any]]
        files[0].removeValue(forKey: "size")
        o["files"] = files
        e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(e?.message == "manifest is missing field `files[0].size`")

        o = try sampleJSON()
        o["model"] = "other.onnx"
        e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(e?.message.contains("`model` is `other.onnx`") == true)

        o = try sampleJSON()
        o["created_at"] = "yesterday"
        e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(e?.message.contains("`created_at` is invalid") == true)

        o = try sampleJSON()
        var req = o["requirements"] as! [String: Any]
        req["accelerator"] = "tpu"
        o["requirements"] = req
        e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(e?.message.contains("requirements.accelerator") == true)

        e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(Array("{not json".utf8)) }
        #expect(e?.message.hasPrefix("manifest is not valid JSON") == true)
    }

    @Test func namesAndReferences() throws {
        #expect(throws: Never.self) { try SnapshotNaming.validateModelName("iris-v2.en_us") }
        for bad in ["", "Iris", "-x", ".x", "a/b", String(repeating: "a", count: 129)] {
            #expect(throws: SnapshotError.self) { try SnapshotNaming.validateModelName(bad) }
        }
        #expect(try SnapshotReference(parsing: "iris") == .init(name: "iris", selector: .latest))
        #expect(try SnapshotReference(parsing: "iris@7") == .init(name: "iris", selector: .version(7)))
        #expect(try SnapshotReference(parsing: "iris@stable") == .init(name: "iris", selector: .alias("stable")))
        #expect(try SnapshotReference(parsing: "iris@latest") == .init(name: "iris", selector: .latest))
        for bad in ["iris@0", "iris@-1", "iris@Stable", "iris@", "@3"] {
            #expect(throws: SnapshotError.self) { try SnapshotReference(parsing: bad) }
        }
        #expect(throws: SnapshotError.self) { try SnapshotNaming.validateAlias("latest") }
        #expect(try SnapshotID(parsing: "iris@3").description == "iris@3")
    }

    /// Issue 15: a version of `Int.max` was stored and every later draft overflowed. Versions
    /// are 1 ... 2^53 - 1 wherever one is read.
    @Test func versionsAreBoundedWhereverTheyAreRead() throws {
        let max = SnapshotNaming.maxVersion
        #expect(max == 9_007_199_254_740_991)
        #expect(SnapshotNaming.parseVersion("1") == 1)
        #expect(SnapshotNaming.parseVersion("9007199254740991") == max)
        for bad in ["0", "-1", "+1", "007", "1.0", "1e3", " 1", "", "9007199254740992", "9223372036854775807", "99999999999999999999"] {
            #expect(SnapshotNaming.parseVersion(bad) == nil, "\(bad)")
        }
        let e = #expect(throws: SnapshotError.self) { try SnapshotID(name: "iris", version: Int.max) }
        #expect(e?.message == "version 9223372036854775807 of `iris` is out of range; versions are integers from 1 to 9007199254740991")
        #expect(throws: SnapshotError.self) { try SnapshotID(parsing: "iris@9223372036854775807") }
        #expect(throws: SnapshotError.self) { try SnapshotReference(parsing: "iris@9007199254740992") }
        #expect(try SnapshotReference(parsing: "iris@9007199254740991") == .init(name: "iris", selector: .version(max)))
        #expect(throws: SnapshotError.self) { try SnapshotReference(parsing: "iris@07") }

        var o = try sampleJSON()
        o["version"] = Int.max
        let m = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(m?.message == "manifest: version 9223372036854775807 is out of range; versions are integers from 1 to 9007199254740991, or 0 for a draft")
        o["version"] = max
        #expect(try SnapshotManifest.decode(try encode(o)).version == max)
        o["version"] = 3
        o["lineage"] = ["parent_version": max + 1, "training_data": NSNull(), "publisher": NSNull()]
        let p = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(try encode(o)) }
        #expect(p?.message.contains("lineage.parent_version 9007199254740992 is out of range") == true)
    }

    /// Issue 15: 40,000 files cost ~53 s of CPU in a pairwise directory check. The check now
    /// sorts (n log n), and a manifest lists at most 10,000 files.
    @Test func manyFilesAreCheckedBySortingAndCapped() throws {
        let model = ONNXFixture.small()
        func manifest(_ paths: [String]) throws -> SnapshotManifest {
            var m = try SnapshotManifest.decode(try CraftedArchive.manifest(files: [("model.onnx", model)]))
            m.files += paths.map { .init(path: $0, role: .extra, size: 1, sha256: String(repeating: "0", count: 64)) }
            return m
        }
        // The most files a manifest may list: accepted.
        try manifest((1..<SnapshotManifest.maxFiles).map { "d\($0 % 97)/f\($0)" }).validate()
        let e = #expect(throws: SnapshotError.self) { try manifest((0..<SnapshotManifest.maxFiles).map { "f\($0)" }).validate() }
        #expect(e?.message == "manifest: `files` lists 10001 files; a snapshot holds at most 10000 (pack small files into one)")
        // A file that is also a directory, with names between the two in plain byte order
        // (`-` and `.` sort before `/`).
        for paths in [["a", "a-x", "a.y", "a/b"], ["a/b/c", "a.z", "a/b", "b"], ["x", "a/b", "a"]] {
            let d = #expect(throws: SnapshotError.self, "\(paths)") { try manifest(paths).validate() }
            #expect(d?.message.contains("is also a directory of") == true, "\(paths): \(String(describing: d))")
        }
        try manifest(["a", "a-x", "a.y", "ab/c", "b/a"]).validate()
        // Sizes that overflow when added are refused, not wrapped below the limit.
        var big = try manifest(["x"])
        big.files[0].size = UInt64.max
        big.files[1].size = 2
        let o = #expect(throws: SnapshotError.self) { try big.validate() }
        #expect(o?.message == "manifest: the files' sizes add up to more than 2^64 bytes")
        #expect(big.totalFileBytes == UInt64.max)
    }

    /// Issue 15: `"name":"a",…,"name":"b"` was stored, and readers disagree on which counts.
    @Test func repeatedKeysAndNonIntegerNumbersAreRefusedAtAnyDepth() throws {
        let text = String(decoding: try CraftedArchive.manifest(files: [("model.onnx", ONNXFixture.small())]), as: UTF8.self)
        #expect(try SnapshotManifest.decode(Array(text.utf8)).name == "iris")
        func refused(_ edited: String) -> String? {
            let e = #expect(throws: SnapshotError.self) { try SnapshotManifest.decode(Array(edited.utf8)) }
            #expect(e?.code == .invalidManifest)
            return e?.message
        }
        func replacing(_ a: String, _ b: String) -> String {
            #expect(text.contains(a), "fixture lacks \(a)")
            return text.replacingOccurrences(of: a, with: b)
        }
        let top = refused(replacing(#""name" : "iris","#, #""name" : "iris", "name" : "evil","#))
        #expect(top?.hasPrefix("manifest repeats the key `name` in the top-level object; JSON readers disagree") == true, "\(String(describing: top))")
        // The same key spelled with an escape is the same key.
        let escaped = refused(replacing(#""name" : "iris","#, #""name" : "iris", "n\u0061me" : "evil","#))
        #expect(escaped?.hasPrefix("manifest repeats the key `name` in the top-level object") == true)
        let file = refused(replacing(#""role" : "model","#, #""role" : "model", "role" : "extra","#))
        #expect(file?.hasPrefix("manifest repeats the key `role` in `files[0]`") == true, "\(String(describing: file))")
        let label = refused(replacing(#""labels" : {"#, #""labels" : {"team" : "a", "team" : "b""#))
        #expect(label?.contains("repeats the key `team` in `labels`") == true, "\(String(describing: label))")
        let lineage = refused(replacing(#""publisher" : null"#, #""publisher" : null, "publisher" : "someone""#))
        #expect(lineage?.contains("repeats the key `publisher` in `lineage`") == true)
        // Numbers are integer literals: `1.0`, `1e0` and 2^64 mean different things to different readers.
        let fraction = refused(replacing("\"version\" : 1\n", "\"version\" : 1.0\n"))
        #expect(fraction == "manifest field `version` is the number 1.0, not an integer literal; every number in a manifest is an integer written without fraction or exponent, within 64 bits")
        #expect(refused(replacing("\"version\" : 1\n", "\"version\" : 1e0\n"))?.contains("field `version` is the number") == true)
        #expect(refused(replacing(#""format_version" : 1,"#, #""format_version" : 18446744073709551616,"#))?.contains("field `format_version`") == true)
    }

    @Test func signatureDifferencesAreNamed() throws {
        let model = ONNXFixture.small()
        let graph = try model.withUnsafeBytes { try ONNXSignatureReader.read(bytes: $0) }
        #expect(graph.firstDifference(from: graph) == nil)
        var declared = graph
        declared.inputs[0].shape = [-1, 5]
        #expect(declared.firstDifference(from: graph) == "input `float_input` has shape [-1, 4] in the model but [-1, 5] in the manifest")
        declared = graph
        declared.outputs[1].dtype = "FP64"
        #expect(declared.firstDifference(from: graph) == "output `probabilities` has dtype FP32 in the model but FP64 in the manifest")
        declared = graph
        declared.outputs.removeLast()
        #expect(declared.firstDifference(from: graph, describing: "the pipeline") == "the manifest declares outputs `label` but the pipeline has `label`, `probabilities`")
        declared = graph
        declared.inputs[0].kind = .sequence
        #expect(declared.firstDifference(from: graph) == "input `float_input` is a tensor in the model but a sequence in the manifest")
    }

    @Test func keyFilesRoundTrip() throws {
        let k = PublisherPrivateKey()
        let k2 = try PublisherPrivateKey(fileText: k.fileText)
        #expect(k2.publicKey == k.publicKey)
        let pub = try PublisherPublicKey(fileText: k.publicKey.fileText(comment: "ci"))
        #expect(pub == k.publicKey)
        #expect(pub.keyID.hasPrefix("ed25519:") && pub.keyID.count == 24)
        let e = #expect(throws: SnapshotError.self) { try PublisherPrivateKey(fileText: k.publicKey.fileText()) }
        #expect(e?.message.contains("this is a public key") == true)
        #expect(throws: SnapshotError.self) { try PublisherPublicKey(fileText: "kaa-ed25519-public AAAA") }
    }
}

@Suite struct ONNXSignatureReaderTests {
    @Test func readsInputsOutputsAndSkipsInitializers() throws {
        let bytes = ONNXFixture.small()
        let sig = try bytes.withUnsafeBytes { try ONNXSignatureReader.read(bytes: $0) }
        #expect(sig.inputs.map(\.name) == ["float_input"])
        #expect(sig.outputs.map(\.dtype) == ["INT64", "FP32"])
    }

    @Test func readsNonTensorOutputs() throws {
        var g = ProtoWriter()
        ONNXFixture.valueInfo(&g, field: 11, name: "x", elem: 1, dims: nil)
        g.message(12) { v in
            v.string(1, "output_probability")
            v.message(2) { t in
                t.message(4) { s in
                    s.message(1) { e in
                        e.message(5) { m in
                            m.int(1, 7)
                            m.message(2) { vt in vt.message(1) { tt in tt.int(1, 1) } }
                        }
                    }
                }
            }
        }
        var m = ProtoWriter()
        m.int(1, 8)
        m.data(7, g.bytes)
        let sig = try m.bytes.withUnsafeBytes { try ONNXSignatureReader.read(bytes: $0) }
        #expect(sig.inputs == [.init(name: "x", kind: .tensor, dtype: "FP32", shape: nil)])
        #expect(sig.outputs == [.init(name: "output_probability", kind: .sequence, dtype: "seq(map(INT64,FP32))", shape: nil)])
    }

    /// A type nested a million deep costs a few megabytes and would recurse past a thread's
    /// stack; the store reads every uploaded model's signature, so it must refuse it instead.
    @Test func deeplyNestedTypesAreRefused() throws {
        func nested(_ levels: Int) -> [UInt8] {
            // TypeProto { sequence_type (4) { elem_type (1) { ... tensor_type (1) { FP32 } } } }
            var inner = ProtoWriter()
            inner.message(1) { t in t.int(1, 1) }
            for _ in 0..<levels {
                var seq = ProtoWriter()
                seq.data(1, inner.bytes)
                var type = ProtoWriter()
                type.data(4, seq.bytes)
                inner = type
            }
            var g = ProtoWriter()
            ONNXFixture.valueInfo(&g, field: 11, name: "x", elem: 1, dims: nil)
            g.message(12) { v in
                v.string(1, "y")
                v.data(2, inner.bytes)
            }
            var m = ProtoWriter()
            m.int(1, 8)
            m.data(7, g.bytes)
            return m.bytes
        }
        let ok = try nested(3).withUnsafeBytes { try ONNXSignatureReader.read(bytes: $0) }
        #expect(ok.outputs[0].dtype == "seq(seq(seq(FP32)))")
        for levels in [ONNXSignatureReader.maxTypeDepth, 5_000] {
            let e = #expect(throws: SnapshotError.self) { try nested(levels).withUnsafeBytes { try ONNXSignatureReader.read(bytes: $0) } }
            #expect(e?.message == "a value's type nests deeper than 16 levels", "\(levels)")
        }
    }

    @Test func malformedModelsAreRefusedClearly() throws {
        let good = ONNXFixture.small()
        let cases: [([UInt8], String)] = [
            ([], "the file is empty"),
            (Array(good[0..<(good.count - 10)]), "claims"),
            ([0x08, 0xFF], "varint runs past the end"),
            ([0x08, 0x08], "the model has no graph"),
            ([0x10, 0x08], "no ONNX ModelProto graph found"),
            ([0x0F, 0x00], "wire type 7"),
            ([0x17, 0x00], "wire type 7 is not valid"),
            (Array("this is a text file, not a model".utf8), "malformed protobuf"),
            ([0x3A, 0x00], "the graph declares no outputs"),
        ]
        for (bytes, expected) in cases {
            let e = #expect(throws: SnapshotError.self) { try bytes.withUnsafeBytes { try ONNXSignatureReader.read(bytes: $0) } }
            #expect(e?.code == .invalidModel)
            #expect(e?.message.contains(expected) == true, "\(expected): got \(String(describing: e))")
        }
        let dir = try TempDir()
        let p = try dir.write("bad.onnx", Array("garbage!".utf8))
        let e = #expect(throws: SnapshotError.self) { try SnapshotBuilder.build(.init(modelPath: p, name: "x", version: 1), to: dir.file("x.kaa")) }
        #expect(e?.message.hasPrefix("`\(p)` is not a usable ONNX model") == true)
        #expect(!FileManager.default.fileExists(atPath: dir.file("x.kaa")))
    }
}
