/// A node's computation, built once at load with its attributes already read and checked.
///
/// Kernels are immutable and `Sendable`: concurrent runs share them.
protocol Kernel: Sendable {
    /// Computes the node's outputs from its inputs (`nil` for an omitted optional input),
    /// taking the memory for them from `ws` (see ``Workspace``). Returns at least as many
    /// tensors as the node names outputs.
    func run(_ inputs: [Tensor?], _ ws: Workspace) throws -> Outputs
    /// Whether an output may share its elements with an input (Reshape, Identity): the plan
    /// then checks, before reusing a released array, that no live value still holds it.
    var aliasesInputs: Bool { get }
}

extension Kernel {
    var aliasesInputs: Bool { false }
}

/// A kernel that returns its one input unchanged: Identity, or a Cast to the type the value
/// already has. The planner drops its steps (``Planner/elideIdentities(_:outputSlots:)``).
struct IdentityKernel: Kernel {
    var aliasesInputs: Bool { true }
    func run(_ inputs: [Tensor?], _ ws: Workspace) throws -> Outputs { Outputs(try K.arg(inputs, 0)) }
}

/// A kernel made from a closure, for the operators whose computation is one function.
struct ClosureKernel: Kernel {
    var aliasesInputs = false
    let body: @Sendable ([Tensor?], Workspace) throws -> Outputs
    func run(_ inputs: [Tensor?], _ ws: Workspace) throws -> Outputs { try body(inputs, ws) }
}

/// What an operator's builder sees of a node at load time.
struct BuildContext {
    /// "`Gemm` node `gemm_1` (ai.onnx opset 13)", for messages.
    let owner: String
    /// The opset of the node's domain that the model imports.
    let opset: Int
    /// The node's attributes; builders read every attribute they accept.
    var attributes: Attributes
    /// The element types of the node's inputs; `nil` for an omitted optional input.
    let inputTypes: [DType?]
    /// The values of inputs that are initializers (known at load), else `nil`.
    let constants: [Tensor?]
    /// How many outputs the node names.
    let outputCount: Int
    /// Inputs whose constant value the kernel has taken in (packed weights, a folded bias) and
    /// will not read at run time: the planner passes `nil` for them, and drops an initializer
    /// no step reads any more.
    var absorbed: Set<Int> = []
    /// Bytes the kernel holds beyond the node's attributes (packed weights), or in all when
    /// ``countedTables`` is set.
    var kernelBytes = 0
    /// Set by a kernel whose ``kernelBytes`` count the tables it built from its attributes
    /// (tree ensembles, TF-IDF pools): the attributes' own size is then not counted as well.
    var countedTables = false

    /// The type of required input `i`, which MUST be one of `allowed`.
    func input(_ i: Int, _ allowed: Set<DType>? = nil) throws -> DType {
        guard i < inputTypes.count, let t = inputTypes[i] else {
            throw EngineError.invalid("\(owner) lacks its required input #\(i + 1)")
        }
        if let allowed, !allowed.contains(t) {
            throw EngineError.unsupported("\(owner): input #\(i + 1) is \(t); supported: \(allowed.map(\.description).sorted().joined(separator: ", "))")
        }
        return t
    }

    /// The type of optional input `i`, or `nil` when the node omits it.
    func optionalInput(_ i: Int, _ allowed: Set<DType>? = nil) throws -> DType? {
        guard i < inputTypes.count, inputTypes[i] != nil else { return nil }
        return try input(i, allowed)
    }

    /// Throws unless the node has between `min` and `max` inputs.
    func inputs(_ min: Int, _ max: Int) throws {
        guard inputTypes.count >= min, inputTypes.count <= max else {
            throw EngineError.invalid("\(owner) has \(inputTypes.count) inputs; the operator takes \(min == max ? "\(min)" : "\(min) to \(max)")")
        }
    }

    /// Throws when an attribute value is outside what the operator accepts.
    func bad(_ message: String) -> EngineError { EngineError.invalid("\(owner): \(message)") }
}

/// One operator the engine runs: its name, domain, the opsets it supports and its builder.
struct OperatorSpec: Sendable {
    let name: String
    let domain: String
    /// The opset versions of `domain` under which the engine runs this operator.
    let opsets: ClosedRange<Int>
    /// Reads the node's attributes, checks its input types, and returns the kernel and the
    /// element types of the outputs it produces.
    let build: @Sendable (inout BuildContext) throws -> (kernel: any Kernel, outputs: [DType])
}

/// Sets of types used by builders.
extension Set where Element == DType {
    static let floats: Set<DType> = [.float32, .float64]
    static let numeric: Set<DType> = [.float32, .float64, .int32, .int64]
    static let all: Set<DType> = Set(DType.allCases)
}
