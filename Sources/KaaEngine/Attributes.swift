import Foundation

/// A node's attributes, read by an operator's builder at load time.
///
/// Every read marks the attribute as known; ``checkAllRead()`` then rejects the attributes
/// the operator does not define, so a misspelt or unsupported attribute is a load-time error
/// rather than silently ignored.
struct Attributes {
    private let byName: [String: Onnx_AttributeProto]
    private var read: Set<String> = []
    /// Names the node for messages: "`Gemm` node `gemm_1`".
    let owner: String

    init(_ node: Onnx_NodeProto, owner: String) throws {
        var map: [String: Onnx_AttributeProto] = [:]
        for a in node.attribute {
            guard !a.name.isEmpty else { throw EngineError.invalid("\(owner) has an attribute with no name") }
            guard map.updateValue(a, forKey: a.name) == nil else {
                throw EngineError.invalid("\(owner) sets attribute `\(a.name)` twice")
            }
            if a.hasRefAttrName {
                throw EngineError.unsupported("\(owner): attribute `\(a.name)` refers to a function attribute; functions are not supported")
            }
        }
        byName = map
        self.owner = owner
    }

    /// Whether the node sets `name`.
    mutating func has(_ name: String) -> Bool {
        read.insert(name)
        return byName[name] != nil
    }

    private mutating func get(_ name: String, _ type: Onnx_AttributeProto.AttributeType) throws -> Onnx_AttributeProto? {
        read.insert(name)
        guard let a = byName[name] else { return nil }
        // Old exporters leave `type` unset; accept the attribute when it carries the field.
        if a.hasType, a.type != type {
            throw EngineError.invalid("\(owner): attribute `\(name)` has type \(a.type), expected \(type)")
        }
        return a
    }

    mutating func int(_ name: String) throws -> Int? {
        guard let a = try get(name, .int) else { return nil }
        return Int(a.i)
    }

    mutating func int(_ name: String, default d: Int) throws -> Int { try int(name) ?? d }

    mutating func float(_ name: String) throws -> Float? {
        guard let a = try get(name, .float) else { return nil }
        return a.f
    }

    mutating func float(_ name: String, default d: Float) throws -> Float { try float(name) ?? d }

    mutating func string(_ name: String) throws -> String? {
        guard let a = try get(name, .string) else { return nil }
        return String(decoding: a.s, as: UTF8.self)
    }

    mutating func string(_ name: String, default d: String) throws -> String { try string(name) ?? d }

    mutating func ints(_ name: String) throws -> [Int]? {
        guard let a = try get(name, .ints) else { return nil }
        return a.ints.map { Int($0) }
    }

    mutating func int64s(_ name: String) throws -> [Int64]? {
        guard let a = try get(name, .ints) else { return nil }
        return a.ints
    }

    mutating func floats(_ name: String) throws -> [Float]? {
        guard let a = try get(name, .floats) else { return nil }
        return a.floats
    }

    mutating func strings(_ name: String) throws -> [String]? {
        guard let a = try get(name, .strings) else { return nil }
        return a.strings.map { String(decoding: $0, as: UTF8.self) }
    }

    mutating func tensor(_ name: String) throws -> Tensor? {
        guard let a = try get(name, .tensor) else { return nil }
        return try TensorCoding.decode(a.t, what: "\(owner) attribute `\(name)`")
    }

    /// Throws when the node sets an attribute that the builder never asked for.
    func checkAllRead() throws {
        let unknown = byName.keys.filter { !read.contains($0) }.sorted()
        if !unknown.isEmpty {
            throw EngineError.unsupported(
                "\(owner) has unknown attribute\(unknown.count > 1 ? "s" : "") \(unknown.map { "`\($0)`" }.joined(separator: ", ")); known: \(read.sorted().joined(separator: ", "))")
        }
    }
}
