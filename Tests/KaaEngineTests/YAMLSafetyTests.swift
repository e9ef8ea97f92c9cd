import Foundation
@testable import KaaEngine
import Testing

/// YAML from outside is refused before it is composed when it could cost unbounded time or
/// memory: anchors and aliases ("billion laughs"), too many bytes, too deep a nesting.
@Suite struct YAMLSafetyTests {
    /// Ten levels of ten aliases each, whose top is used as a mapping key: composing it with
    /// Yams expands and hashes 10^9 nodes (84 s of CPU for this 1.2 KB in the reported case).
    static let billionLaughs: String = {
        var lines = ["version: 1", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        for i in 1...9 {
            let refs = [String](repeating: "*a\(i - 1)", count: 10).joined(separator: ", ")
            lines.append("a\(i): &a\(i) [\(refs)]")
        }
        lines.append("? *a9")
        lines.append(": boom")
        return lines.joined(separator: "\n") + "\n"
    }()

    @Test func billionLaughsIsRefusedBeforeComposing() throws {
        let e = try #require(PipelineTests.error { _ = try Pipeline(yaml: Self.billionLaughs) })
        #expect(e.code == .invalidSpec)
        #expect(e.message == "pipeline specs may not use YAML anchors or aliases (`&name`, `*name`): line 2 has the anchor `&a0`; write the values out", "\(e.message)")
        #expect(throws: YAMLSafety.Refusal.self) { try YAMLSafety.check(Self.billionLaughs) }
    }

    @Test func aliasesAndMergeKeysAreRefusedWithTheirLine() throws {
        // An alias whose anchor is on no node libyaml reports (it only names the alias).
        let alias = try #require(PipelineTests.error { _ = try Pipeline(yaml: "description: x\nfields:\n  - *missing\n") })
        #expect(alias.code == .invalidSpec && alias.message.contains("line 3 has the alias `*missing`"), "\(alias.message)")
        let merge = "base: &b {step: select}\npre:\n  - <<: *b\n    into: x\n"
        do {
            try YAMLSafety.check(merge, what: "node configs")
            Issue.record("a merge key was accepted")
        } catch {
            #expect(error.line == 1 && error.message.hasPrefix("node configs may not use YAML anchors"), "\(error)")
        }
    }

    @Test func sizeAndDepthAreCapped() throws {
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        let d = try #require(PipelineTests.error { _ = try Pipeline(yaml: "description: \(deep)\n") })
        #expect(d.code == .invalidSpec && d.message.contains("at most 64 levels deep"), "\(d.message)")
        try YAMLSafety.check(String(repeating: "[", count: 64) + String(repeating: "]", count: 64))
        let big = "description: \"" + String(repeating: "x", count: YAMLSafety.maxBytes) + "\"\n"
        let b = try #require(PipelineTests.error { _ = try Pipeline(yaml: big) })
        #expect(b.code == .invalidSpec && b.message.hasPrefix("pipeline specs may be at most 1 MiB"), "\(b.message)")
    }

    /// What a spec may hold: `&` and `*` inside values, comments and quotes, and every
    /// sample's spec.
    @Test func ordinarySpecsPass() throws {
        try YAMLSafety.check("labels: {rd: \"R&D\", all: \"*\", amp: a&b}  # &anchor in a comment\nk: '*x'\n")
        for name in ["iris-logreg", "digits-mlp", "wine-forest", "diabetes-gbr", "news-text"] {
            let url = SampleModelTests.root.appendingPathComponent("snapshots/\(name)/pipeline.yaml")
            try YAMLSafety.check(String(contentsOf: url, encoding: .utf8), what: "pipeline specs")
        }
        // A text that does not parse is left to the parser, which says where.
        try YAMLSafety.check("a: [1, 2\n")
        let e = try #require(PipelineTests.error { _ = try Pipeline(yaml: "a: [1, 2\n") })
        #expect(e.code == .invalidSpec && e.message.contains("not valid YAML"), "\(e.message)")
    }
}
