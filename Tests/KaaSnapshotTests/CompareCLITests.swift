import Foundation
import KaaTestSupport
import Testing

/// `kaa snapshot compare`, and `kaa snapshot build --holdout --gate`, on the iris sample and
/// a shifted copy of it (``IrisGateFixture``).
@Suite struct CompareCLITests {
    /// Builds iris@`version` in `dir` from the sample model, with the sample's pipeline or the
    /// shifted one, and any `extra` arguments.
    static func build(_ dir: TempDir, version: Int, shifted: Bool, extra: [String] = [],
                      edit: (String) -> String = { $0 }) throws -> KaaProcess.Result {
        let pipeline = try String(contentsOfFile: BatchCLITests.sample("iris-logreg", "pipeline.yaml"), encoding: .utf8)
        let file = try dir.write("pipeline-\(version).yaml", Array(edit(shifted ? IrisGateFixture.shiftedPipeline(pipeline) : pipeline).utf8))
        return try KaaProcess.run([
            "snapshot", "build", "--model", BatchCLITests.sample("iris-logreg", "model.onnx"), "--pipeline", file,
            "--name", "iris", "--version", "\(version)", "--created-at", "2026-01-31T12:00:00Z", "--out", "iris-\(version).kaa",
        ] + extra, in: dir.path)
    }

    static func snapshots() throws -> TempDir {
        let dir = try TempDir()
        try dir.write("rows.jsonl", Array(IrisGateFixture.labelledRows.utf8))
        #expect(try build(dir, version: 1, shifted: false).status == 0)
        #expect(try build(dir, version: 2, shifted: true).status == 0)
        return dir
    }

    @Test func aSnapshotAgainstItselfAgreesEverywhere() throws {
        let dir = try CompareCLITests.snapshots()
        let r = try KaaProcess.run(["snapshot", "compare", "iris-1.kaa", "--against", "iris-1.kaa", "--data", "rows.jsonl", "--label", "species"],
                                   in: dir.path)
        #expect(r.stderr == "")
        #expect(r.status == 0)
        #expect(r.stdout == """
            NEW              iris@1
            OLD              iris@1
            rows             12 (rows.jsonl)
            agreement        1.0000  (top label: `species`)
            max score diff   0.0000  (`probabilities`: 0, 1, 2)
            mean score diff  0.0000
            kendall tau      1.0000  (OLD's top class of each row)
            accuracy         NEW 0.8333, OLD 0.8333, drop 0.0000  (label field `species`)

            """)
    }

    @Test func theShiftedVersionAgainstTheSample() throws {
        let dir = try CompareCLITests.snapshots()
        let r = try KaaProcess.run(["snapshot", "compare", "iris-2.kaa", "--against", "iris-1.kaa", "--data", "rows.jsonl", "--label", "species"],
                                   in: dir.path)
        #expect(r.status == 0, "\(r.stderr)")
        // Agreement 11/12, accuracy 9/12 against 10/12: exact; the score figures are the engine's.
        #expect(r.stdout == """
            NEW              iris@2
            OLD              iris@1
            rows             12 (rows.jsonl)
            agreement        0.9167  (top label: `species`)
            max score diff   0.3478  (`probabilities`: 0, 1, 2)
            mean score diff  0.1062
            kendall tau      0.5758  (OLD's top class of each row)
            accuracy         NEW 0.7500, OLD 0.8333, drop 0.0833  (label field `species`)

            """)

        let json = try KaaProcess.run(["snapshot", "compare", "iris-2.kaa", "--against", "iris-1.kaa", "--data", "rows.jsonl", "--json"],
                                      in: dir.path)
        #expect(json.status == 0)
        let o = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(o["agreement"] as? Double == 11.0 / 12)
        #expect(o["rows"] as? Int == 12)
        #expect(o["new"] as? String == "iris@2" && o["old"] as? String == "iris@1")
        #expect(o["accuracy"] is NSNull && o["accuracy_drop"] is NSNull && o["label_field"] is NSNull)
        #expect(o["classes"] as? [String] == ["0", "1", "2"])
        #expect(o["tau_score"] as? String == "OLD's top class of each row")
        let tau = try #require(o["kendall_tau"] as? Double)
        #expect(tau > 0.5 && tau < 0.6)
    }

    /// A regressor has no label: no agreement; its one score is the one tau ranks.
    @Test func aRegressorAgainstItself() throws {
        let dir = try TempDir()
        let file = try BatchCLITests.build("diabetes-gbr", in: dir)
        let data = BatchCLITests.sample("diabetes-gbr", "example.jsonl")
        let r = try KaaProcess.run(["snapshot", "compare", file, "--against", file, "--data", data], in: dir.path)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == """
            NEW              diabetes-gbr@1
            OLD              diabetes-gbr@1
            rows             2 (\(data))
            agreement        n/a  (no label output)
            max score diff   0.0000  (`progression`: 0)
            mean score diff  0.0000
            kendall tau      1.0000  (the only score)

            """)
    }

    @Test func badInputsAreRefusedWithWhatIsWrong() throws {
        let dir = try CompareCLITests.snapshots()
        try dir.write("bad.jsonl", Array("""
            {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}

            {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}

            """.utf8))
        try dir.write("empty.jsonl", [])
        try dir.write("unlabelled.jsonl", Array("{\"sepal_length\": 5.1, \"sepal_width\": 3.5, \"petal_length\": 1.4, \"petal_width\": 0.2}\n".utf8))
        let wine = try BatchCLITests.build("wine-forest", in: dir)
        // Same output names, but `probabilities` is the top two scores: two classes, not three.
        let narrowed = try CompareCLITests.build(dir, version: 4, shifted: false) {
            $0.replacingOccurrences(of: "from: output_probability", with: "from: top_scores")
        }
        #expect(narrowed.status == 0, "\(narrowed.stderr)")
        func compare(_ args: [String]) throws -> KaaProcess.Result {
            try KaaProcess.run(["snapshot", "compare"] + args, in: dir.path)
        }
        for (args, message) in [
            (["iris-2.kaa", "--against", "iris-1.kaa", "--data", "bad.jsonl"],
             "error: a row does not fit the inputs of NEW (iris@2): line 3: field `petal_width`: is missing and has no default\n"),
            (["iris-2.kaa", "--against", "iris-1.kaa", "--data", "empty.jsonl"],
             "error: there are no rows to compare NEW (iris@2) and OLD (iris@1) on; give a JSONL file with one object per row\n"),
            (["iris-2.kaa", "--against", "iris-1.kaa", "--data", "unlabelled.jsonl", "--label", "species"],
             "error: line 1: field `species` (the label field) is missing; every row needs its true label to measure accuracy\n"),
            (["iris-2.kaa", "--against", wine, "--data", "rows.jsonl"],
             "error: NEW (iris@2) and OLD (wine-forest@1) are not comparable: NEW outputs `species`, `probabilities`, `top_species`, `top_scores`, OLD outputs `cultivar`, `probabilities`; compare versions of one model, whose outputs have the same names\n"),
            (["iris-4.kaa", "--against", "iris-1.kaa", "--data", "rows.jsonl"],
             "error: NEW (iris@4) and OLD (iris@1) are not comparable: their label sets differ: NEW's `probabilities` has classes 0, 1; OLD's has 0, 1, 2\n"),
        ] {
            let r = try compare(args)
            #expect(r.status == 1)
            #expect(r.stdout == "")
            #expect(r.stderr == message)
        }
    }

    @Test func buildCarriesTheGateAndHoldoutAndInspectShowsThem() throws {
        let dir = try CompareCLITests.snapshots()
        let gated = try CompareCLITests.build(dir, version: 3, shifted: true, extra: [
            "--holdout", "rows.jsonl", "--holdout-label", "species", "--gate", "agreement >= 0.99, accuracy_drop<=0.005",
        ])
        #expect(gated.status == 0, "\(gated.stderr)")
        let inspect = try KaaProcess.run(["snapshot", "inspect", "iris-3.kaa"], in: dir.path)
        #expect(inspect.status == 0)
        #expect(inspect.stdout.contains("""
            labels         -
            pipeline       789 bytes
            gate           agreement>=0.99,accuracy_drop<=0.005
            holdout        holdout.jsonl: 12 rows, label field `species`

            """), "\(inspect.stdout)")
        #expect(inspect.stdout.contains("  holdout.jsonl  extra"), "\(inspect.stdout)")
        let json = try KaaProcess.run(["snapshot", "inspect", "iris-3.kaa", "--json"], in: dir.path)
        let manifest = try #require((try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])?["manifest"] as? [String: Any])
        let gate = try #require(manifest["gate"] as? [String: Any])
        #expect(gate["expression"] as? String == "agreement>=0.99,accuracy_drop<=0.005")
        #expect(gate["holdout"] as? String == "holdout.jsonl")
        #expect(gate["holdout_rows"] as? Int == 12)
        #expect(gate["label_field"] as? String == "species")
        // Without a gate the manifest has no `gate` key at all: its bytes are what they were.
        let plain = try KaaProcess.run(["snapshot", "inspect", "iris-1.kaa", "--json"], in: dir.path)
        #expect(!plain.stdout.contains("\"gate\""))
        #expect(!(try KaaProcess.run(["snapshot", "inspect", "iris-1.kaa"], in: dir.path)).stdout.contains("holdout"))
    }

    @Test func badGatesAreRefusedAtBuild() throws {
        let dir = try CompareCLITests.snapshots()
        try dir.write("short.jsonl", Array("{\"sepal_length\": 5.1, \"sepal_width\": 3.5, \"petal_length\": 1.4}\n".utf8))
        for (extra, message) in [
            (["--holdout", "rows.jsonl", "--gate", "agreement=>0.99"],
             "error: gate `agreement=>0.99`: term `agreement=>0.99` has no `>=` or `<=`; a gate is terms like `agreement>=0.99,accuracy_drop<=0.005`: a metric (agreement, accuracy, accuracy_drop, max_score_diff, mean_score_diff, kendall_tau), `>=` or `<=`, and a number, separated by commas\n"),
            (["--holdout", "rows.jsonl", "--gate", "agreement>=0.99,precision>=0.9"],
             "error: gate `agreement>=0.99,precision>=0.9`: term `precision>=0.9`: `precision` is not a metric; a gate is terms like `agreement>=0.99,accuracy_drop<=0.005`: a metric (agreement, accuracy, accuracy_drop, max_score_diff, mean_score_diff, kendall_tau), `>=` or `<=`, and a number, separated by commas\n"),
            (["--holdout", "rows.jsonl", "--gate", "accuracy_drop<=0.01"],
             "error: gate `accuracy_drop<=0.01` bounds accuracy, which needs the true labels: give --holdout-label FIELD, the holdout rows' field that holds them\n"),
            (["--holdout", "short.jsonl", "--gate", "agreement>=0.99"],
             "error: the holdout rows do not fit the snapshot: a row does not fit the inputs of NEW (iris@3): line 1: field `petal_width`: is missing and has no default\n"),
        ] {
            let r = try CompareCLITests.build(dir, version: 3, shifted: false, extra: extra)
            #expect(r.status == 1)
            #expect(r.stderr == message)
            #expect(!FileManager.default.fileExists(atPath: dir.file("iris-3.kaa")), "a refused build leaves no archive")
        }
        let alone = try CompareCLITests.build(dir, version: 3, shifted: false, extra: ["--gate", "agreement>=0.99"])
        #expect(alone.status == 1)
        #expect(alone.stderr == "error: --gate and --holdout go together: the gate runs on the holdout rows\n")
    }
}
