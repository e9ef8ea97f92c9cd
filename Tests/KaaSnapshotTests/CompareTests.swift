import Foundation
import KaaQuality
import KaaSnapshot
import Testing

/// The comparison's metrics and the gate's grammar, on hand-made inputs with known answers.
@Suite struct CompareTests {
    @Test func agreementAndAccuracy() {
        #expect(ComparisonMetrics.agreement(["a", "b", "c", "a"], ["a", "b", "a", "a"]) == 0.75)
        #expect(ComparisonMetrics.agreement(["x"], ["x"]) == 1)
        #expect(ComparisonMetrics.agreement([], []) == nil)
        #expect(ComparisonMetrics.accuracy(["1", "2", "2", "0", "1"], truth: ["1", "2", "1", "0", "0"]) == 0.6)
    }

    @Test func scoreDifferences() throws {
        let d = try #require(ComparisonMetrics.scoreDifferences([0.1, 0.5, 0.9, 0.0], [0.2, 0.5, 0.6, 0.0]))
        #expect(abs(d.max - 0.3) < 1e-12)
        #expect(abs(d.mean - 0.1) < 1e-12) // (0.1 + 0 + 0.3 + 0) / 4
        #expect(ComparisonMetrics.scoreDifferences([], []) == nil)
        // NaN against a number is as different as can be; NaN against NaN is the same answer.
        let n = try #require(ComparisonMetrics.scoreDifferences([.nan, .nan], [1, .nan]))
        #expect(n.max == .infinity)
    }

    @Test func kendallTauB() throws {
        func tau(_ x: [Double], _ y: [Double]) -> Double? { ComparisonMetrics.kendallTauB(x, y) }
        #expect(tau([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == 1)
        #expect(tau([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == -1)
        // One discordant pair of 6: (5 - 1) / 6.
        #expect(abs(try #require(tau([1, 2, 3, 4], [1, 3, 2, 4])) - 4.0 / 6) < 1e-12)
        // Ties in x: 5 concordant, 0 discordant, 1 pair tied in x: 5 / sqrt(5 * 6) (scipy: 0.9128709).
        #expect(abs(try #require(tau([1, 2, 2, 3], [1, 3, 2, 4])) - 5 / (30.0).squareRoot()) < 1e-12)
        // Ties on both sides: 1 concordant, 1 discordant: 0.
        #expect(tau([1, 1, 2, 2], [1, 2, 1, 2]) == 0)
        // Ties in x and y at once: x=[1,1,2,3], y=[1,1,2,2]: n0=6, n1=1, n2=2 (one pair tied in
        // both); concordant 4, discordant 0: 4 / sqrt(5 * 4).
        #expect(abs(try #require(tau([1, 1, 2, 3], [1, 1, 2, 2])) - 4 / (20.0).squareRoot()) < 1e-12)
        // Undefined: all tied on one side, or fewer than two pairs; NaN pairs are left out.
        #expect(tau([1, 1, 1], [1, 2, 3]) == nil)
        #expect(tau([1], [1]) == nil)
        #expect(tau([1, .nan, 2, 3], [1, 5, 2, 3]) == 1)
    }

    /// The O(n log n) count agrees with counting every pair, on a seeded random input with many ties.
    @Test func kendallTauBMatchesThePairwiseDefinition() throws {
        var state: UInt64 = 42
        func next() -> Double {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Double((state >> 33) % 7)
        }
        let x = (0..<300).map { _ in next() }, y = (0..<300).map { _ in next() }
        var c = 0, d = 0, tx = 0, ty = 0
        for i in 0..<300 {
            for j in (i + 1)..<300 {
                let s = (x[i] - x[j]) * (y[i] - y[j])
                if s > 0 { c += 1 } else if s < 0 { d += 1 }
                if x[i] == x[j] { tx += 1 }
                if y[i] == y[j] { ty += 1 }
            }
        }
        let n0 = 300 * 299 / 2
        let expected = Double(c - d) / (Double(n0 - tx) * Double(n0 - ty)).squareRoot()
        #expect(abs(try #require(ComparisonMetrics.kendallTauB(x, y)) - expected) < 1e-12)
    }

    @Test func gateGrammar() throws {
        let gate = try QualityGate(parsing: " agreement >= 0.99, accuracy_drop<=0.005 ,kendall_tau>=0.9")
        #expect(gate.description == "agreement>=0.99,accuracy_drop<=0.005,kendall_tau>=0.9")
        #expect(gate.needsLabels)
        let outcomes = gate.evaluate([.agreement: 0.995, .accuracyDrop: 0.01])
        #expect(outcomes.map(\.passed) == [true, false, false]) // kendall_tau not computed: fails
        #expect(try QualityGate(parsing: "max_score_diff<=1,mean_score_diff<=0.1,accuracy>=0.9").terms.count == 3)
        #expect(!(try QualityGate(parsing: "agreement>=1")).needsLabels)

        for (text, says) in [
            ("", "it is empty"),
            ("agreement>0.99", "has no `>=` or `<=`"),
            ("agreemnt>=0.99", "`agreemnt` is not a metric"),
            ("agreement>=high", "`high` is not a number"),
            ("agreement>=0.9,,accuracy>=0.9", "term 2 is empty"),
            ("agreement>=0.9,agreement>=0.95", "`agreement>=` is given twice"),
            ("agreement>=nan", "`nan` is not a number"),
        ] {
            #expect(throws: SnapshotError.self) { try QualityGate(parsing: text) }
            do { _ = try QualityGate(parsing: text) } catch {
                #expect(error.code == .invalidGate)
                #expect(error.message.contains(says), "\(text): \(error.message)")
            }
        }
    }

    @Test func holdoutRowsAreCutWithTheirLines() {
        let text = Array("{\"a\":1}\n\n  \n{\"a\":2}\n{\"a\":3}".utf8)
        let chunks = RecordChunk.jsonl(text, max: 2)
        #expect(chunks.map(\.count) == [2, 1])
        #expect(chunks.flatMap(\.lines) == [1, 4, 5])
        #expect(RecordChunk.jsonl([], max: 10).isEmpty)
    }
}
