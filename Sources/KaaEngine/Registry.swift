/// The operators the engine runs, by domain and name.
enum Registry {
    /// Every supported operator.
    static let all: [OperatorSpec] = MathOps.specs + ShapeOps.specs + MLOps.specs + TextOps.specs + QuantizedOps.specs

    static let byKey: [String: OperatorSpec] = Dictionary(all.map { (key($0.domain, $0.name), $0) }, uniquingKeysWith: { a, _ in a })

    static func key(_ domain: String, _ name: String) -> String { "\(domain)::\(name)" }

    /// ONNX writes the default domain as "" or "ai.onnx"; the engine always says "ai.onnx".
    static func normalize(_ domain: String) -> String { domain.isEmpty ? "ai.onnx" : domain }
}

/// One entry of the list of supported operators (what `kaa ops` prints).
public struct SupportedOperator: Sendable, Equatable {
    /// The operator's domain: `ai.onnx`, `ai.onnx.ml` or `com.microsoft`.
    public let domain: String
    /// The operator's name, e.g. `Gemm`.
    public let name: String
    /// The lowest opset version of the domain under which it runs.
    public let minOpset: Int
    /// The highest opset version of the domain under which it runs.
    public let maxOpset: Int

    /// Every operator the engine supports, sorted by domain and name.
    public static var all: [SupportedOperator] {
        Registry.all.map { SupportedOperator(domain: $0.domain, name: $0.name, minOpset: $0.opsets.lowerBound, maxOpset: $0.opsets.upperBound) }
            .sorted { ($0.domain, $0.name) < ($1.domain, $1.name) }
    }
}
