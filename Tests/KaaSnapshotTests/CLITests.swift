import Foundation
import KaaTestSupport
import Testing

@Suite struct CLITests {
    @Test func binaryIsBuilt() {
        #expect(FileManager.default.isExecutableFile(atPath: KaaProcess.binary.path), "build `kaa` first: swift build")
    }

    @Test func buildInspectVerifyWholeOutputs() throws {
        let dir = try TempDir()
        try dir.write("m.onnx", ONNXFixture.small())
        try dir.write("labels.txt", Array("setosa\nversicolor\nvirginica\n".utf8))
        let build = try KaaProcess.run([
            "snapshot", "build", "--model", "m.onnx", "--name", "iris", "--version", "2",
            "--label", "team=search", "--label", "market=fr", "--file", "labels.txt", "--parent", "1",
            "--training-data", "s3://data/iris.csv", "--created-at", "2026-01-31T12:00:00Z", "--out", "iris.kaa",
        ], in: dir.path)
        #expect(build.stderr == "")
        #expect(build.status == 0)
        // The digest covers the canonical manifest, so it is stable; the compressed size depends on
        // liblz4's version and is computed from the file.
        let digest = "sha256:823f1c963339e51ffbeeb1962b10463a3c3cd456cf18680f2e3e69d1bd5f8c72"
        let archiveSize = try dir.read("iris.kaa").count
        let size = String(format: "%.1f KiB", Double(archiveSize) / 1024)
        let ratio = Int((Double(archiveSize) / 263 * 100).rounded())
        #expect(build.stdout == """
            built iris@2 -> iris.kaa
            digest   \(digest)
            archive  \(size) (content 263 B)
            signed   no

            """)
        let inspect = try KaaProcess.run(["snapshot", "inspect", "iris.kaa"], in: dir.path)
        #expect(inspect.status == 0)
        #expect(inspect.stdout == """
            snapshot       iris@2
            digest         \(digest)
            format         1
            created        2026-01-31T12:00:00Z
            archive        \(size) for 263 B of files (\(ratio)%)
            signature      unsigned
            publisher      -
            parent         iris@1
            training data  s3://data/iris.csv
            memory         16.0 MiB
            accelerator    none
            labels         market=fr, team=search
            pipeline       -

            inputs
              NAME         KIND    DTYPE  SHAPE
              float_input  tensor  FP32   [-1, 4]

            outputs
              NAME           KIND    DTYPE  SHAPE
              label          tensor  INT64  [-1]
              probabilities  tensor  FP32   [-1, 3]

            files
              PATH        ROLE   SIZE   SHA-256
              model.onnx  model  235 B  b0652b272e4a0fcb04301f4a13db50c6d43302dff5d33d16728173e42fbb97b9
              labels.txt  extra  28 B   b117329546c307bfa3c18aa7998d75ed198740310f0a24a8abfb07d6c4c79e92

            """)
        let verify = try KaaProcess.run(["snapshot", "verify", "iris.kaa"], in: dir.path)
        #expect(verify.status == 0)
        #expect(verify.stdout == "ok iris@2 \(digest) unsigned\n")

        let json = try KaaProcess.run(["snapshot", "inspect", "--json", "iris.kaa"], in: dir.path)
        #expect(json.status == 0)
        let o = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as! [String: Any]
        #expect(o["digest"] as? String == digest)
        #expect(o["signature"] is NSNull)
        let m = o["manifest"] as! [String: Any]
        #expect(m["version"] as? Int == 2)
        #expect(m["pipeline"] is NSNull) // BatchCLITests build snapshots with pipelines
        #expect((m["labels"] as? [String: String]) == ["team": "search", "market": "fr"])
    }

    @Test func keysAndSignatures() throws {
        let dir = try TempDir()
        try dir.write("m.onnx", ONNXFixture.small())
        let gen = try KaaProcess.run(["keys", "generate", "--out", "alice"], in: dir.path)
        #expect(gen.status == 0)
        let lines = gen.stdout.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.first == "wrote alice.key (private; keep it secret) and alice.pub")
        #expect(lines.last?.hasPrefix("key id ed25519:") == true && lines.last?.count == 31)
        let mode = try FileManager.default.attributesOfItem(atPath: dir.file("alice.key"))[.posixPermissions] as! NSNumber
        #expect(mode.intValue == 0o600)
        let again = try KaaProcess.run(["keys", "generate", "--out", "alice"], in: dir.path)
        #expect(again.status != 0)
        #expect(again.stderr == "error: `alice.key` already exists; choose another --out or pass --force\n")
        _ = try KaaProcess.run(["keys", "generate", "--out", "bob"], in: dir.path)

        let b = try KaaProcess.run(["snapshot", "build", "--model", "m.onnx", "--name", "iris", "--version", "1", "--sign", "alice.key", "--out", "s.kaa"], in: dir.path)
        #expect(b.status == 0)
        let keyID = String(lines.last!.dropFirst("key id ".count))
        let ok = try KaaProcess.run(["snapshot", "verify", "s.kaa", "--trust", "alice.pub"], in: dir.path)
        #expect(ok.status == 0)
        #expect(ok.stdout.hasSuffix(" signed by trusted key \(keyID)\n"))
        let untrusted = try KaaProcess.run(["snapshot", "verify", "s.kaa", "--trust", "bob.pub"], in: dir.path)
        #expect(untrusted.status == 1)
        #expect(untrusted.stderr.hasPrefix("error: snapshot is signed by \(keyID), which is not a trusted publisher key here"))
        #expect(untrusted.stdout == "")

        _ = try KaaProcess.run(["snapshot", "build", "--model", "m.onnx", "--name", "iris", "--version", "1", "--out", "u.kaa"], in: dir.path)
        let unsigned = try KaaProcess.run(["snapshot", "verify", "u.kaa", "--trust", "alice.pub"], in: dir.path)
        #expect(unsigned.status == 1)
        #expect(unsigned.stderr == "error: snapshot iris@1 is not signed, and this node requires a signature by a trusted key; sign it with `kaa snapshot build --sign KEY`\n")

        var bytes = try dir.read("s.kaa")
        bytes[bytes.count / 2] ^= 0x01
        try dir.write("bad.kaa", bytes)
        let bad = try KaaProcess.run(["snapshot", "verify", "bad.kaa"], in: dir.path)
        #expect(bad.status == 1)
        #expect(bad.stderr.hasPrefix("error: archive is not a valid LZ4 frame"))
    }

    @Test func badInputsExitNonZeroWithMessages() throws {
        let dir = try TempDir()
        try dir.write("text.onnx", Array("not a model".utf8))
        let r = try KaaProcess.run(["snapshot", "build", "--model", "text.onnx", "--name", "x", "--out", "x.kaa"], in: dir.path)
        #expect(r.status == 1)
        #expect(r.stderr.hasPrefix("error: `text.onnx` is not a usable ONNX model: malformed protobuf"))
        #expect(!FileManager.default.fileExists(atPath: dir.file("x.kaa")))
        let n = try KaaProcess.run(["snapshot", "build", "--model", "text.onnx", "--name", "Bad Name", "--out", "x.kaa"], in: dir.path)
        #expect(n.status == 1)
        #expect(n.stderr == "error: model name `Bad Name` must start with a lowercase letter or a digit\n")
        let missing = try KaaProcess.run(["snapshot", "inspect", "nope.kaa"], in: dir.path)
        #expect(missing.status == 1)
        #expect(missing.stderr == "error: cannot open `nope.kaa`: No such file or directory\n")
        let v = try KaaProcess.run(["snapshot", "build", "--model", "text.onnx", "--name", "x", "--version", "0", "--out", "x.kaa"], in: dir.path)
        #expect(v.status != 0)
        #expect(v.stderr.contains("--version must be a positive integer"))
    }
}
