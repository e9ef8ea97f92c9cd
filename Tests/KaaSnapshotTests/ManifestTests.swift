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
