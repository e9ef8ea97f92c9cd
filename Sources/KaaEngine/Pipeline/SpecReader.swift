import Foundation
import Yams

/// Reads one YAML mapping of a pipeline spec (the whole document, a field, a step, an output)
/// into typed values, with errors that name the step, the key and the YAML line.
///
/// Every key read is remembered; ``finish()`` refuses the keys nobody read, so a misspelt key
/// (`meen:`) is an error rather than silently ignored.
struct SpecReader {
    let what: String
    let step: PipelineError.Step?
    let line: Int?
    private(set) var pairs: [(key: String, value: Node)] = []
    private var used: Set<String> = []

    /// `node` MUST be a mapping with scalar keys; `what` names it in errors (`the spec`,
    /// `fields[2]`).
    init(_ node: Node, what: String, step: PipelineError.Step? = nil) throws(PipelineError) {
        self.what = what
        self.step = step
        self.line = node.mark?.line
        guard let mapping = node.mapping else {
            throw PipelineError(.invalidSpec, "\(what) must be a mapping of keys to values, got \(Self.describe(node))\(Self.at(node))", step: step)
        }
        for (k, v) in mapping {
            guard let key = k.scalar?.string else {
                throw PipelineError(.invalidSpec, "\(what) has a key that is not a plain string\(Self.at(k))", step: step)
            }
            pairs.append((key, v))
        }
    }

    static func at(_ node: Node) -> String { node.mark.map { " (line \($0.line))" } ?? "" }

    static func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let s): s.string.isEmpty ? "nothing" : "`\(s.string.prefix(60))`"
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }

    func error(_ key: String, _ message: String, _ node: Node? = nil) -> PipelineError {
        PipelineError(.invalidSpec, message + (node.map(Self.at) ?? line.map { " (line \($0))" } ?? ""), step: step, field: key)
    }

    var keys: [String] { pairs.map(\.key) }

    /// The value of `key`, or nil when absent (an explicit YAML `null` counts as absent).
    mutating func node(_ key: String) -> Node? {
        used.insert(key)
        guard let v = pairs.first(where: { $0.key == key })?.value else { return nil }
        if case .scalar(let s) = v, s.style == .plain, v.null != nil { return nil }
        return v
    }

    mutating func required(_ key: String) throws(PipelineError) -> Node {
        guard let v = node(key) else { throw error(key, "\(what) needs `\(key)`") }
        return v
    }

    mutating func string(_ key: String) throws(PipelineError) -> String? {
        guard let v = node(key) else { return nil }
        guard let s = v.scalar?.string else { throw error(key, "expected a string, got \(Self.describe(v))", v) }
        return s
    }

    mutating func requiredString(_ key: String) throws(PipelineError) -> String {
        guard let s = try string(key) else { throw error(key, "\(what) needs `\(key)`") }
        guard !s.isEmpty else { throw error(key, "must not be empty") }
        return s
    }

    mutating func int(_ key: String) throws(PipelineError) -> Int? {
        guard let v = node(key) else { return nil }
        guard v.scalar?.style == .plain, let i = v.int else { throw error(key, "expected an integer, got \(Self.describe(v))", v) }
        return i
    }

    mutating func double(_ key: String) throws(PipelineError) -> Double? {
        guard let v = node(key) else { return nil }
        return try Self.number(v, key: key, reader: self)
    }

    mutating func bool(_ key: String) throws(PipelineError) -> Bool? {
        guard let v = node(key) else { return nil }
        guard let b = v.bool else { throw error(key, "expected true or false, got \(Self.describe(v))", v) }
        return b
    }

    /// A list of strings; a single string counts as a list of one when `single` is set.
    mutating func strings(_ key: String, single: Bool = false) throws(PipelineError) -> [String]? {
        guard let v = node(key) else { return nil }
        if single, let s = v.scalar?.string { return [s] }
        guard let seq = v.sequence else { throw error(key, "expected a list of strings, got \(Self.describe(v))", v) }
        var out: [String] = []
        for (i, e) in seq.enumerated() {
            guard let s = e.scalar?.string else { throw error(key, "item \(i + 1) must be a string, got \(Self.describe(e))", e) }
            out.append(s)
        }
        return out
    }

    /// A list of numbers; a single number counts as a list of one.
    mutating func doubles(_ key: String) throws(PipelineError) -> [Double]? {
        guard let v = node(key) else { return nil }
        if v.scalar != nil { return [try Self.number(v, key: key, reader: self)] }
        guard let seq = v.sequence else { throw error(key, "expected a list of numbers, got \(Self.describe(v))", v) }
        var out: [Double] = []
        for (i, e) in seq.enumerated() {
            guard e.scalar?.style == .plain, let d = e.float else {
                throw error(key, "item \(i + 1) must be a number, got \(Self.describe(e))", e)
            }
            out.append(d)
        }
        return out
    }

    static func number(_ v: Node, key: String, reader: SpecReader) throws(PipelineError) -> Double {
        guard v.scalar?.style == .plain, let d = v.float else { throw reader.error(key, "expected a number, got \(describe(v))", v) }
        return d
    }

    /// Refuses keys that were never read.
    func finish() throws(PipelineError) {
        let known = used.sorted().map { "`\($0)`" }.joined(separator: ", ")
        for (k, v) in pairs where !used.contains(k) {
            throw PipelineError(.invalidSpec, "unknown key `\(k)` in \(what)\(Self.at(v)); known keys: \(known)", step: step, field: k)
        }
    }
}
