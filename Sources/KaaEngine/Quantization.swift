public import Foundation

/// What ``Quantization/int8(onnx:)`` did to a model.
public struct QuantizationReport: Sendable, Equatable {
    /// A matrix product that now runs on int8 weights, or one left in float32 and why.
    public struct Product: Sendable, Equatable {
        /// The node's name (or `#index` when it has none) and operator.
        public var node: String
        /// Rows (k) and columns (n) of its weight matrix.
        public var k: Int, n: Int
        /// Why it stays float32, or `nil` when it was quantized.
        public var keptFloat: String?
    }

    public var products: [Product] = []
    /// Bytes of the float32 weights the quantized products had, and of what replaces them
    /// (int8 weights, a float32 scale and an int8 zero point per column).
    public var floatWeightBytes = 0
    public var int8WeightBytes = 0

    /// How many products were quantized.
    public var quantized: Int { products.filter { $0.keptFloat == nil }.count }
}

/// Post-training int8 quantization of an ONNX model's matrix products: what
/// `kaa snapshot build --quantize int8` runs.
///
/// Each Gemm and MatMul whose weight matrix B is a float32 initializer becomes the pattern
/// onnxruntime's `quantize_dynamic` writes, in standard ONNX operators, so any runtime that
/// implements them runs the result:
///
///     DynamicQuantizeLinear(A) -> A_q (uint8), A_scale, A_zero_point     (once per A)
///     Mul(A_scale, W_scale) -> S
///     MatMulInteger(A_q, W_q, A_zero_point, W_zero_point) -> int32
///     Cast(to float) -> Mul(·, S) [-> Add(·, bias)]
///
/// The weights are quantized per output column, symmetrically: W_scale[j] = max|W[·, j]| /
/// 127, W_q = round(W / W_scale[j]) in [-127, 127], zero point 0. The activations are
/// quantized per call (per tensor, asymmetric, uint8). Kaa's engine runs the pattern as one
/// fused int8 product (VNNI where the CPU has it).
public enum Quantization {
    /// Products with fewer weights than this stay float32: an int8 product of a few columns
    /// gains nothing over the float one and loses precision where it matters most (the last
    /// layer of a classifier).
    public static let minimumWeights = 1024

    /// The model with its large constant matrix products quantized to int8, and what changed.
    /// Throws ``EngineError`` when the bytes are not a model the engine loads, or the model's
    /// opset predates DynamicQuantizeLinear (11).
    public static func int8(onnx bytes: Data) throws -> (model: Data, report: QuantizationReport) {
        // The model must load as it is: quantizing a model the engine cannot run helps nobody.
        _ = try Model(onnx: bytes)
        var model = try Onnx_ModelProto(serializedBytes: bytes)
        let opset = model.opsetImport.first { Registry.normalize($0.domain) == "ai.onnx" }.map { Int($0.version) } ?? 0
        guard opset >= 11 else {
            throw EngineError.unsupported("the model imports ai.onnx opset \(opset); int8 quantization writes DynamicQuantizeLinear, which needs opset 11 or later (re-export the model at a later opset)")
        }
        var graph = model.graph
        var report = QuantizationReport()
        var initializers: [String: Int] = [:]
        for (i, t) in graph.initializer.enumerated() { initializers[t.name] = i }
        var uses: [String: Int] = [:]
        for node in graph.node { for i in node.input where !i.isEmpty { uses[i, default: 0] += 1 } }
        for o in graph.output { uses[o.name, default: 0] += 1 }
        var names = Set(graph.initializer.map(\.name) + graph.input.map(\.name) + graph.node.flatMap(\.output))
        func fresh(_ base: String) -> String {
            var name = base, i = 1
            while names.contains(name) { name = "\(base)_\(i)"; i += 1 }
            names.insert(name)
            return name
        }
        func constant(_ name: String) throws -> Tensor? {
            guard let i = initializers[name] else { return nil }
            return try TensorCoding.decode(graph.initializer[i], what: "initializer `\(name)`")
        }
        var newInitializers: [Onnx_TensorProto] = []
        var dropped = Set<String>()
        /// DynamicQuantizeLinear's outputs per quantized input, shared by its products.
        var quantizedInputs: [String: (q: String, scale: String, zero: String)] = [:]
        var nodes: [Onnx_NodeProto] = []

        for (index, node) in graph.node.enumerated() {
            let label = "\(node.opType) `\(node.name.isEmpty ? "#\(index)" : node.name)`"
            guard Registry.normalize(node.domain) == "ai.onnx", node.opType == "Gemm" || node.opType == "MatMul",
                  node.input.count >= 2, node.output.count == 1,
                  let b = try constant(node.input[1]), b.rank == 2, let bv = b.floats else {
                nodes.append(node)
                continue
            }
            var attributes = try Attributes(node, owner: label)
            let gemm = node.opType == "Gemm"
            let alpha = gemm ? try attributes.float("alpha", default: 1) : 1
            let beta = gemm ? try attributes.float("beta", default: 1) : 1
            let transA = gemm ? try attributes.int("transA", default: 0) != 0 : false
            let transB = gemm ? try attributes.int("transB", default: 0) != 0 : false
            let (k, n) = transB ? (b.shape[1], b.shape[0]) : (b.shape[0], b.shape[1])
            func keep(_ why: String) {
                report.products.append(.init(node: label, k: k, n: n, keptFloat: why))
                nodes.append(node)
            }
            if transA { keep("its A is transposed (transA=1)"); continue }
            var bias: [Float]?
            if gemm, node.input.count > 2, !node.input[2].isEmpty {
                guard let c = try constant(node.input[2]), c.rank <= 2, let row = PackedProductKernel.row(c, n: n, scale: beta) else {
                    keep("its C is not a constant row")
                    continue
                }
                bias = row
            }
            if k * n < minimumWeights { keep("\(k * n) weights: too few to gain from int8"); continue }

            // Per column j: the scale and the int8 weights.
            var scales = [Float](repeating: 0, count: n)
            var q = [Int8](repeating: 0, count: k * n)
            func w(_ p: Int, _ j: Int) -> Float { alpha * (transB ? bv[j * k + p] : bv[p * n + j]) }
            for j in 0..<n {
                var largest: Float = 0
                for p in 0..<k { largest = max(largest, abs(w(p, j))) }
                guard largest.isFinite else {
                    throw EngineError.invalid("\(label): its weights hold NaN or an infinity; they cannot be quantized")
                }
                // All-zero columns (and ones so small that the scale underflows) get scale 1.
                let s = largest / 127 > 0 ? largest / 127 : 1
                scales[j] = s
                for p in 0..<k { q[p * n + j] = Int8(max(-127, min(127, (w(p, j) / s).rounded(.toNearestOrEven)))) }
            }
            let base = node.name.isEmpty ? "kaa_q\(index)" : node.name
            let input = node.input[0]
            let a: (q: String, scale: String, zero: String)
            if let known = quantizedInputs[input] {
                a = known
            } else {
                a = (fresh("\(input)_quantized"), fresh("\(input)_scale"), fresh("\(input)_zero_point"))
                quantizedInputs[input] = a
                var dql = Onnx_NodeProto()
                dql.opType = "DynamicQuantizeLinear"
                dql.name = fresh("\(input)_DynamicQuantizeLinear")
                dql.input = [input]
                dql.output = [a.q, a.scale, a.zero]
                nodes.append(dql)
            }
            let wq = fresh("\(base)_W_quantized"), wz = fresh("\(base)_W_zero_point"), ws = fresh("\(base)_W_scale")
            newInitializers.append(TensorCoding.encode(Tensor(shape: [k, n], int8s: q), name: wq))
            newInitializers.append(TensorCoding.encode(Tensor(shape: [n], int8s: [Int8](repeating: 0, count: n)), name: wz))
            newInitializers.append(TensorCoding.encode(Tensor(shape: [n], floats: scales), name: ws))
            func make(_ op: String, _ inputs: [String], _ outputs: [String], to: Int? = nil) {
                var m = Onnx_NodeProto()
                m.opType = op
                m.name = fresh("\(base)_\(op)")
                m.input = inputs
                m.output = outputs
                if let to {
                    var attribute = Onnx_AttributeProto()
                    attribute.name = "to"
                    attribute.type = .int
                    attribute.i = Int64(to)
                    m.attribute = [attribute]
                }
                nodes.append(m)
            }
            let scale = fresh("\(base)_scale"), integer = fresh("\(base)_MatMulInteger"), real = fresh("\(base)_cast")
            make("Mul", [a.scale, ws], [scale])
            make("MatMulInteger", [a.q, wq, a.zero, wz], [integer])
            make("Cast", [integer], [real], to: DType.float32.rawValue)
            if let bias {
                let bn = fresh("\(base)_bias"), scaled = fresh("\(base)_scaled")
                newInitializers.append(TensorCoding.encode(Tensor(shape: [n], floats: bias), name: bn))
                make("Mul", [real, scale], [scaled])
                make("Add", [scaled, bn], [node.output[0]])
            } else {
                make("Mul", [real, scale], [node.output[0]])
            }
            for used in node.input.dropFirst() where !used.isEmpty {
                uses[used, default: 0] -= 1
                if uses[used] == 0, initializers[used] != nil { dropped.insert(used) }
            }
            report.products.append(.init(node: label, k: k, n: n, keptFloat: nil))
            report.floatWeightBytes += k * n * 4 + (bias?.count ?? 0) * 4
            report.int8WeightBytes += k * n + n * 5 + (bias?.count ?? 0) * 4
        }
        guard report.quantized > 0 else {
            throw EngineError.unsupported("the model has no matrix product to quantize: int8 quantization takes Gemm and MatMul nodes whose weights are a float32 initializer of at least \(minimumWeights) values\(report.products.isEmpty ? "" : " (" + report.products.map { "\($0.node): \($0.keptFloat ?? "")" }.joined(separator: "; ") + ")")")
        }
        graph.node = nodes
        graph.initializer = graph.initializer.filter { !dropped.contains($0.name) } + newInitializers
        // A float weight that is also declared as a graph input (older exporters) goes too.
        graph.input = graph.input.filter { !dropped.contains($0.name) }
        model.graph = graph
        let data = try model.serializedData()
        // The result must load: the same check the node runs.
        _ = try Model(onnx: data)
        return (data, report)
    }
}
