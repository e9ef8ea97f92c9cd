public import Foundation
import SwiftProtobuf

/// A loaded ONNX model, checked and planned, ready to run.
///
/// Loading checks the whole graph (see ``init(onnx:)``); a `Model` that exists can run. It is
/// immutable and `Sendable`: any number of threads may call ``run(_:limits:)`` at once, each call
/// working in its own workspace.
public final class Model: Sendable {
    /// The inputs a call must supply, in the model's order (initializers excluded).
    public let inputs: [TensorSignature]
    /// The outputs a call returns, in the model's order.
    public let outputs: [TensorSignature]
    /// The opset version the model imports for each domain (`ai.onnx` for the default one).
    public let opsetImports: [String: Int]
    /// The producer the file names (e.g. `skl2onnx 1.20.0`).
    public let producer: String
    /// An estimate of the heap this model keeps: its weights exactly, the tables kernels build
    /// at load (by their arrays where the kernel counts them, else by the size of the attributes
    /// they come from), its plan and bookkeeping by a per-step and per-model figure.
    /// `MemoryAccountingTests` holds it near the heap a load really keeps.
    public let memoryBytes: Int
    /// The operators the graph uses, as `domain:name`, sorted.
    public let operatorsUsed: [String]

    let plan: Plan

    /// Loads a model from the bytes of an ONNX file.
    ///
    /// Throws an ``EngineError`` that names what is wrong when the bytes are not an ONNX
    /// model, when the graph is invalid (dangling, duplicate or cyclic names, initializers of
    /// the wrong size, absurd dimensions, wrong dtypes, unknown attributes), or when it uses
    /// an operator, opset or dtype the engine lacks (`kaa ops` lists what it has).
    public convenience init(onnx bytes: Data) throws {
        let proto: Onnx_ModelProto
        do {
            var options = BinaryDecodingOptions()
            options.messageDepthLimit = 64
            proto = try Onnx_ModelProto(serializedBytes: bytes, options: options)
        } catch {
            throw EngineError.malformed("not an ONNX model (\(bytes.count) bytes): the protobuf does not decode (\(error)); is the file truncated or not an .onnx file?")
        }
        try self.init(proto: proto)
    }

    init(proto: Onnx_ModelProto) throws {
        guard proto.hasGraph else { throw EngineError.invalid("the model has no graph") }
        var opsets: [String: Int] = [:]
        for imp in proto.opsetImport {
            let domain = Registry.normalize(imp.domain)
            guard imp.version > 0, imp.version < 1000 else {
                throw EngineError.invalid("the model imports domain `\(domain)` at opset \(imp.version)")
            }
            if let prior = opsets[domain], prior != Int(imp.version) {
                throw EngineError.invalid("the model imports domain `\(domain)` twice, at opsets \(prior) and \(imp.version)")
            }
            opsets[domain] = Int(imp.version)
        }
        if proto.opsetImport.isEmpty { opsets["ai.onnx"] = 1 }
        let built = try Planner(graph: proto.graph, opsets: opsets).build()
        plan = built.plan
        inputs = built.inputs
        outputs = built.outputs
        opsetImports = opsets
        producer = [proto.producerName, proto.producerVersion].filter { !$0.isEmpty }.joined(separator: " ")
        operatorsUsed = built.operators
        memoryBytes = built.constantBytes + built.plan.steps.count * Self.bytesPerStep + Self.bytesPerModel
    }

    /// What a model's plan and bookkeeping hold beyond its weights, per step and per model: the
    /// step objects, their slot lists and kernels, the slot template, signatures and names. Set
    /// from `kaa-bench --memory` (resident growth of 2,000 loaded copies) on the iris logistic
    /// regression (3 steps, 3,559 bytes with 884 of weights) and the digits MLP (10 steps,
    /// 37,126 bytes with 29,832 of weights and packed weights).
    static let bytesPerStep = 900
    static let bytesPerModel = 700

    /// Runs the model on one batch.
    ///
    /// `inputs` MUST name every input in ``inputs``, with its dtype and rank, and its fixed
    /// dimensions; symbolic dimensions (the batch) may take any size. Returns every output
    /// in ``outputs`` by name.
    ///
    /// Throws ``EngineError``, never traps, whatever the inputs: code
    /// ``EngineError/Code/invalidInput`` for inputs that do not match the signature and for
    /// values a kernel cannot compute with (an index or axis out of range, shapes that do not
    /// broadcast or reshape, a negative or overflowing dimension, a result of more than 2^31
    /// elements), with a message naming the step and the values;
    /// ``EngineError/Code/limitExceeded`` when the call would hold more memory than `limits`
    /// allow (see ``RunLimits/maxBytes``); ``EngineError/Code/runtime`` only for what can be
    /// an engine or model bug. Without `limits`, a call may hold ``RunLimits/default`` (1 GiB).
    public func run(_ inputs: [String: Tensor], limits: RunLimits = .default) throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        try plan.run(inputs, into: &out, limits: limits)
        return out
    }

    /// Runs the model on one batch, as ``run(_:limits:)``, writing the outputs into `outputs`.
    ///
    /// Whatever `outputs` holds when called is handed back to the model: a caller that keeps
    /// no other copy of the previous call's outputs lets their memory serve this call. Called
    /// that way with inputs of a batch size the model has seen, a run of a numeric model
    /// allocates nothing: every intermediate and output reuses memory from earlier runs.
    /// Memory reused that way counts against `limits` as new memory does.
    public func run(_ inputs: [String: Tensor], into outputs: inout [String: Tensor], limits: RunLimits = .default) throws {
        try plan.run(inputs, into: &outputs, limits: limits)
    }

    /// Runs as ``run(_:into:limits:)`` for a caller that already holds `held` bytes of this
    /// call (a pipeline's pre steps); returns the bytes the call holds when the run ends.
    @discardableResult
    func run(_ inputs: [String: Tensor], into outputs: inout [String: Tensor], limits: RunLimits, held: Int) throws -> Int {
        try plan.run(inputs, into: &outputs, limits: limits, held: held)
    }

    /// Bytes the model keeps between calls for reuse (intermediate values of the last batch
    /// sizes it ran), on top of ``memoryBytes``.
    public var workspaceBytes: Int { plan.pool.keptBytes }
}

/// The plan: value slots and the steps that fill them, in topological order.
struct Plan: Sendable {
    /// A class, so that walking the steps retains one reference per step rather than copying
    /// the kernel, three arrays and a string.
    final class Step: Sendable {
        let kernel: any Kernel
        /// Slot of each input, -1 for an omitted optional one.
        let inputs: [Int]
        /// Slot of each output, -1 for an output the graph does not use.
        let outputs: [Int]
        /// Slots whose last reader is this step: released after it, so their memory is reused.
        let release: [Int]
        let owner: String
        /// Per input: the position of an earlier input that reads the same slot, or -1. A run
        /// moves each slot's tensor into the argument list and back, rather than copying it
        /// (which costs a reference count per array), and copies only for the repeats.
        let earlier: [Int]

        init(kernel: any Kernel, inputs: [Int], outputs: [Int], release: [Int], owner: String) {
            self.kernel = kernel
            self.inputs = inputs
            self.outputs = outputs
            self.release = release
            self.owner = owner
            earlier = inputs.indices.map { j in
                inputs[j] < 0 ? -1 : (inputs[..<j].firstIndex(of: inputs[j]) ?? -1)
            }
        }
    }

    /// Slots with initializers filled in; a run starts from it.
    let template: [Tensor?]
    let inputSlots: [(signature: TensorSignature, slot: Int)]
    let outputSlots: [(name: String, slot: Int)]
    let steps: [Step]
    /// The slots that hold an initializer.
    let constantSlots: [Int]
    /// The slots read or written by a kernel whose output may share an input's elements, so
    /// that another live slot may hold the same array.
    let shareSlots: [Int]
    /// Per slot: its index in ``shareSlots``, or -1.
    let shareIndex: [Int]
    let pool: WorkspacePool

    init(template: [Tensor?], inputSlots: [(signature: TensorSignature, slot: Int)], outputSlots: [(name: String, slot: Int)], steps: [Step]) {
        self.template = template
        self.inputSlots = inputSlots
        self.outputSlots = outputSlots
        self.steps = steps
        constantSlots = template.indices.filter { template[$0] != nil }
        var index = [Int](repeating: -1, count: template.count)
        var share: [Int] = []
        for step in steps where step.kernel.aliasesInputs {
            for s in step.inputs + step.outputs where s >= 0 && index[s] < 0 {
                index[s] = share.count
                share.append(s)
            }
        }
        shareSlots = share
        shareIndex = index
        pool = WorkspacePool(limit: 2)
    }

    /// Runs the plan; `held` bytes of the call's limit are already taken (by a pipeline's pre
    /// steps). Returns the bytes the call holds at the end: `held` and the outputs.
    @discardableResult
    func run(_ given: [String: Tensor], into out: inout [String: Tensor], limits: RunLimits, held: Int = 0) throws -> Int {
        let ws = pool.take()
        let m = ws.m
        defer {
            for i in m.pointee.slots.indices { m.pointee.slots[i] = nil }
            for i in m.pointee.shared.indices { m.pointee.shared[i] = nil }
            m.pointee.args.removeAll(keepingCapacity: true)
            pool.give(ws)
        }
        if m.pointee.slots.count != template.count {
            m.pointee.slots = [Tensor?](repeating: nil, count: template.count)
            m.pointee.shared = [UnsafeRawPointer?](repeating: nil, count: shareSlots.count)
            m.pointee.foreign.removeAll()
            for s in constantSlots { if let a = template[s]!.storage.address { m.pointee.foreign.append(a) } }
            m.pointee.constantCount = m.pointee.foreign.count
        }
        m.pointee.foreign.removeSubrange(m.pointee.constantCount...)
        for s in constantSlots { m.pointee.slots[s] = template[s] }
        var used = 0
        for (sig, slot) in inputSlots {
            guard let t = given[sig.name] else {
                throw EngineError.input("missing input `\(sig.name)`; the model takes \(inputSlots.map { "`\($0.signature.name)`" }.joined(separator: ", "))")
            }
            try Self.check(t, against: sig)
            if let a = t.storage.address { m.pointee.foreign.append(a) }
            m.pointee.slots[slot] = consume t
            used += 1
        }
        if used != given.count {
            let known = Set(inputSlots.map(\.signature.name))
            let extra = given.keys.filter { !known.contains($0) }.sorted()
            throw EngineError.input("unknown input\(extra.count > 1 ? "s" : "") \(extra.map { "`\($0)`" }.joined(separator: ", ")); the model takes \(inputSlots.map { "`\($0.signature.name)`" }.joined(separator: ", "))")
        }
        // The caller hands back the previous call's outputs: their arrays serve this call.
        for (_, t) in out { ws.keep(t) }
        out.removeAll(keepingCapacity: true)
        // From here on, every array a step takes counts against the limit, reused or not.
        m.pointee.held = held
        m.pointee.limit = limits.maxBytes
        // Slots that may share elements hold their address in `shared`, so that a sharing slot
        // that is still live is found without copying tensors out of the slots.
        for (k, s) in shareSlots.enumerated() { m.pointee.shared[k] = m.pointee.slots[s]?.storage.address }

        for step in steps {
            // `args` is empty here: it is emptied after each step and when a run ends.
            for (j, s) in step.inputs.enumerated() {
                let e = step.earlier[j]
                m.pointee.args.append(s < 0 ? nil : e >= 0 ? m.pointee.args[e] : m.pointee.slots[s].take())
            }
            var results: Outputs
            do { results = try step.kernel.run(m.pointee.args, ws) } catch let e as EngineError {
                throw EngineError(e.code, "\(step.owner): \(e.message)")
            }
            // Back into their slots, last first, which also empties `args`.
            var j = step.inputs.count
            while j > 0 {
                j -= 1
                let t = m.pointee.args.removeLast()
                if step.earlier[j] < 0, case let s = step.inputs[j], s >= 0 { m.pointee.slots[s] = t }
            }
            guard results.count >= step.outputs.count else {
                throw EngineError.runtime("\(step.owner) produced \(results.count) outputs, expected \(step.outputs.count)")
            }
            for (i, s) in step.outputs.enumerated() where s >= 0 {
                let t = results.take(i)
                // Every value in a slot has a checked shape (``K/count(_:_:)``): kernels
                // compute their outputs' shapes with checks, and this holds them to it. (A
                // non-empty value's dimensions multiply to its element count, which its array
                // holds: only empty ones can hide large dimensions.)
                if let t, t.count == 0 || t.rank > Limits.maxRank {
                    do { _ = try K.count(t.shape, "output #\(i + 1)") } catch let e as EngineError {
                        throw EngineError(e.code, "\(step.owner): \(e.message)")
                    }
                }
                let k = shareIndex[s]
                if k >= 0 { m.pointee.shared[k] = t?.storage.address }
                m.pointee.slots[s] = t
            }
            for s in step.release {
                guard let t = m.pointee.slots[s].take() else { continue }
                let k = shareIndex[s]
                if k >= 0 {
                    let a = m.pointee.shared[k]
                    m.pointee.shared[k] = nil
                    if a != nil && m.pointee.shared.contains(a) { continue }
                }
                ws.release(t)
            }
        }
        for (name, slot) in outputSlots {
            guard let t = m.pointee.slots[slot] else { throw EngineError.runtime("output `\(name)` was not computed") }
            out[name] = t
        }
        return m.pointee.held
    }

    static func check(_ t: Tensor, against sig: TensorSignature) throws {
        if let d = sig.dtype, d != t.dtype {
            throw EngineError.input("input `\(sig.name)` is \(t.dtype); the model expects \(d)")
        }
        _ = try K.count(t.shape, "input `\(sig.name)`")
        guard let dims = sig.shape else { return }
        guard dims.count == t.rank else {
            throw EngineError.input("input `\(sig.name)` has shape \(t.shape) (rank \(t.rank)); the model expects rank \(dims.count): [\(dims.map(\.description).joined(separator: ", "))]")
        }
        for (i, d) in dims.enumerated() {
            if case .fixed(let n) = d, n != t.shape[i] {
                throw EngineError.input("input `\(sig.name)` has shape \(t.shape); the model expects dimension \(i) to be \(n): [\(dims.map(\.description).joined(separator: ", "))]")
            }
        }
    }
}

/// Turns a graph into a ``Plan``, checking it as it goes.
struct Planner {
    let graph: Onnx_GraphProto
    let opsets: [String: Int]

    struct Result {
        var plan: Plan
        var inputs: [TensorSignature]
        var outputs: [TensorSignature]
        var operators: [String]
        var constantBytes: Int
    }

    static func signature(_ v: Onnx_ValueInfoProto, what: String) throws -> TensorSignature {
        guard v.hasType else { return TensorSignature(name: v.name, dtype: nil, shape: nil) }
        switch v.type.value {
        case .tensorType(let t):
            guard let dtype = DType(rawValue: Int(t.elemType)) else {
                throw EngineError.unsupported("\(what) `\(v.name)` has element type \(DType.onnxName(Int(t.elemType))); supported: \(DType.allCases.map(\.description).joined(separator: ", "))")
            }
            var shape: [Dimension]?
            if t.hasShape {
                guard t.shape.dim.count <= Limits.maxRank else {
                    throw EngineError.invalid("\(what) `\(v.name)` has \(t.shape.dim.count) dimensions")
                }
                shape = try t.shape.dim.map { d in
                    switch d.value {
                    case .dimValue(let n):
                        guard n >= 0, n <= Limits.maxElements else {
                            throw EngineError.invalid("\(what) `\(v.name)` has dimension \(n)")
                        }
                        return .fixed(Int(n))
                    case .dimParam(let s): return .symbolic(s)
                    case nil: return .unknown
                    }
                }
            }
            return TensorSignature(name: v.name, dtype: dtype, shape: shape)
        case .sequenceType(let s):
            if case .mapType(let m) = s.elemType.value {
                let vt = m.valueType.tensorType.elemType
                return TensorSignature(name: v.name, dtype: DType(rawValue: Int(vt)), shape: nil, isSequenceOfMaps: true)
            }
            throw EngineError.unsupported("\(what) `\(v.name)` is a sequence of non-maps; only tensors and sequences of maps are supported")
        case nil:
            return TensorSignature(name: v.name, dtype: nil, shape: nil)
        default:
            throw EngineError.unsupported("\(what) `\(v.name)` is not a tensor (\(v.type.value.map { "\($0)" } ?? "?")); only tensors are supported")
        }
    }

    /// Finds the spec of a node's operator at the model's opset, or throws naming op,
    /// domain and opset.
    func spec(_ node: Onnx_NodeProto, _ n: Int) throws -> (OperatorSpec, String, Int) {
        let domain = Registry.normalize(node.domain)
        guard let opset = opsets[domain] else {
            throw EngineError.invalid("\(Self.describe(node, n)) is in domain `\(domain)`, which the model does not import (opset_import)")
        }
        guard let spec = Registry.byKey[Registry.key(domain, node.opType)] else {
            throw EngineError(.unsupportedOperator, "operator `\(node.opType)` of domain `\(domain)` (opset \(opset)) is not supported (node `\(node.name)`); `kaa ops` lists the supported operators")
        }
        guard spec.opsets.contains(opset) else {
            throw EngineError(.unsupportedOperator, "operator `\(node.opType)` of domain `\(domain)` is supported at opsets \(spec.opsets.lowerBound)...\(spec.opsets.upperBound), the model imports opset \(opset) (node `\(node.name)`)")
        }
        return (spec, domain, opset)
    }

    func build() throws -> Result {
        // Operators first: an unsupported operator is the most useful error to report.
        for (n, node) in graph.node.enumerated() { _ = try spec(node, n) }
        if !graph.sparseInitializer.isEmpty {
            throw EngineError.unsupported("the graph has sparse initializers; they are not supported")
        }
        var slotOf: [String: Int] = [:]
        var template: [Tensor?] = []
        var types: [DType] = []
        var constantBytes = 0
        func newSlot(_ name: String, _ type: DType, what: String) throws -> Int {
            guard !name.isEmpty else { throw EngineError.invalid("\(what) has an empty name") }
            guard slotOf[name] == nil else {
                throw EngineError.invalid("the name `\(name)` is defined twice (second time as \(what)); every value in a graph needs a unique name")
            }
            slotOf[name] = template.count
            template.append(nil)
            types.append(type)
            return template.count - 1
        }
        for i in graph.initializer {
            let t = try TensorCoding.decode(i, what: "initializer `\(i.name)`")
            let s = try newSlot(i.name, t.dtype, what: "an initializer")
            template[s] = t
            constantBytes += t.byteCount
        }
        var inputs: [(TensorSignature, Int)] = []
        for v in graph.input where slotOf[v.name] == nil || template[slotOf[v.name]!] == nil {
            let sig = try Self.signature(v, what: "graph input")
            guard let dtype = sig.dtype, !sig.isSequenceOfMaps else {
                throw EngineError.unsupported("graph input `\(v.name)` declares no tensor element type")
            }
            inputs.append((sig, try newSlot(v.name, dtype, what: "a graph input")))
        }

        // Topological order (Kahn): a node is ready once all its inputs have slots.
        let nodes = graph.node
        var producerOf: [String: Int] = [:]
        for (n, node) in nodes.enumerated() {
            for o in node.output where !o.isEmpty {
                if producerOf.updateValue(n, forKey: o) != nil || slotOf[o] != nil {
                    throw EngineError.invalid("the name `\(o)` is defined twice (output of \(Self.describe(node, n))); every value in a graph needs a unique name")
                }
            }
        }
        var waiting = [Int](repeating: 0, count: nodes.count)
        var readers: [String: [Int]] = [:]
        for (n, node) in nodes.enumerated() {
            for name in Set(node.input) where !name.isEmpty && slotOf[name] == nil {
                guard producerOf[name] != nil else {
                    throw EngineError.invalid("\(Self.describe(node, n)) reads `\(name)`, which no node, input or initializer defines")
                }
                waiting[n] += 1
                readers[name, default: []].append(n)
            }
        }
        var ready = (0..<nodes.count).filter { waiting[$0] == 0 }
        var order: [Int] = []
        order.reserveCapacity(nodes.count)
        while let n = ready.popLast() {
            order.append(n)
            for o in nodes[n].output where !o.isEmpty {
                for r in readers[o] ?? [] {
                    waiting[r] -= 1
                    if waiting[r] == 0 { ready.append(r) }
                }
            }
        }
        if order.count < nodes.count {
            let stuck = (0..<nodes.count).filter { waiting[$0] > 0 }.prefix(5).map { Self.describe(nodes[$0], $0) }
            throw EngineError.invalid("the graph has a cycle through \(stuck.joined(separator: ", ")); an ONNX graph must be acyclic")
        }
        // Keep the file's order among ready nodes: stable order makes errors and plans
        // predictable.
        order = Self.stableTopological(nodes: nodes, producerOf: producerOf)

        var steps: [(Plan.Step, [Int])] = []
        var stepOps: [String] = []
        var ops = Set<String>()
        for n in order {
            let node = nodes[n]
            let (spec, domain, opset) = try spec(node, n)
            let owner = "`\(node.opType)` node `\(node.name.isEmpty ? "#\(n)" : node.name)` (\(domain) opset \(opset))"
            let inSlots = node.input.map { $0.isEmpty ? -1 : slotOf[$0]! }
            var ctx = BuildContext(
                owner: owner, opset: opset,
                attributes: try Attributes(node, owner: owner),
                inputTypes: inSlots.map { $0 < 0 ? nil : types[$0] },
                constants: inSlots.map { $0 < 0 ? nil : template[$0] },
                outputCount: node.output.count)
            let (kernel, outTypes) = try spec.build(&ctx)
            constantBytes += ctx.kernelBytes
            let runSlots = inSlots.enumerated().map { ctx.absorbed.contains($0.offset) ? -1 : $0.element }
            // Kernels keep their attributes' values (weights, trees) in their own arrays: counted
            // by the attributes' size unless the kernel counted what it built.
            if !ctx.countedTables {
                constantBytes += node.attribute.reduce(0) { sum, a in
                    sum + a.floats.count * 4 + a.ints.count * 8 + a.strings.reduce(0) { $0 + $1.count + 16 }
                        + (a.hasT ? a.t.rawData.count + a.t.floatData.count * 4 + a.t.doubleData.count * 8 + a.t.int64Data.count * 8 : 0)
                }
            }
            try ctx.attributes.checkAllRead()
            guard node.output.count <= outTypes.count else {
                throw EngineError.invalid("\(owner) names \(node.output.count) outputs; the operator has \(outTypes.count)")
            }
            var outSlots: [Int] = []
            for (i, o) in node.output.enumerated() {
                outSlots.append(o.isEmpty ? -1 : try newSlot(o, outTypes[i], what: "an output of \(owner)"))
            }
            ops.insert("\(domain):\(node.opType)")
            steps.append((Plan.Step(kernel: kernel, inputs: runSlots, outputs: outSlots, release: [], owner: owner), runSlots))
            stepOps.append("\(domain):\(node.opType)")
        }

        var outputs: [TensorSignature] = []
        var outputSlots: [(String, Int)] = []
        for v in graph.output {
            guard let s = slotOf[v.name] else {
                throw EngineError.invalid("graph output `\(v.name)` is not computed by any node")
            }
            var sig = try Self.signature(v, what: "graph output")
            if sig.dtype == nil { sig.dtype = types[s] }
            if let d = sig.dtype, d != types[s], !sig.isSequenceOfMaps {
                throw EngineError.invalid("graph output `\(v.name)` is declared \(d) but computed as \(types[s])")
            }
            outputs.append(sig)
            outputSlots.append((v.name, s))
        }
        if outputs.isEmpty { throw EngineError.invalid("the graph has no outputs") }

        let direct = Self.elideIdentities(zip(steps.map(\.0), stepOps).map { ($0, $1) }, outputSlots: &outputSlots)
        let keep = Set(outputSlots.map(\.1))
        steps = Self.fuseEpilogues(direct, template: template, types: types, keep: keep).map { ($0, $0.inputs) }
        // Initializers that kernels have taken in, and no step reads, are not kept twice.
        let read = Set(steps.flatMap(\.1))
        for s in template.indices where template[s] != nil && !read.contains(s) && !keep.contains(s) {
            constantBytes -= template[s]!.byteCount
            template[s] = nil
        }

        // Release each intermediate after its last reader.
        var lastUse: [Int: Int] = [:]
        for (i, (_, ins)) in steps.enumerated() { for s in ins where s >= 0 { lastUse[s] = i } }
        var finalSteps: [Plan.Step] = []
        for (i, (step, _)) in steps.enumerated() {
            let release = Set(step.inputs.filter { $0 >= 0 && lastUse[$0] == i && !keep.contains($0) && template[$0] == nil })
            finalSteps.append(Plan.Step(kernel: step.kernel, inputs: step.inputs, outputs: step.outputs, release: release.sorted(), owner: step.owner))
        }
        return Result(
            plan: Plan(template: template, inputSlots: inputs.map { ($0.0, $0.1) }, outputSlots: outputSlots, steps: finalSteps),
            inputs: inputs.map(\.0), outputs: outputs, operators: ops.sorted(), constantBytes: constantBytes)
    }

    /// Drops the steps that return their input unchanged (``IdentityKernel``): each later
    /// reader of such a step's output, and a graph output it computes, reads the step's input
    /// slot instead. skl2onnx writes such Casts into most classifiers.
    static func elideIdentities(_ steps: [(step: Plan.Step, op: String)],
                                outputSlots: inout [(String, Int)]) -> [(step: Plan.Step, op: String)] {
        var source: [Int: Int] = [:]
        func resolve(_ s: Int) -> Int { s >= 0 ? source[s] ?? s : s }
        var kept: [(step: Plan.Step, op: String)] = []
        for (step, op) in steps {
            let inputs = step.inputs.map(resolve)
            if step.kernel is IdentityKernel, inputs.count == 1, inputs[0] >= 0, step.outputs.count == 1, step.outputs[0] >= 0 {
                source[step.outputs[0]] = inputs[0]
                continue
            }
            kept.append((inputs == step.inputs ? step
                         : Plan.Step(kernel: step.kernel, inputs: inputs, outputs: step.outputs, release: step.release, owner: step.owner), op))
        }
        outputSlots = outputSlots.map { ($0.0, resolve($0.1)) }
        return kept
    }

    /// A topological order that keeps the file's order among nodes whose inputs are ready:
    /// repeatedly takes the first node in file order whose inputs are all available.
    static func stableTopological(nodes: [Onnx_NodeProto], producerOf: [String: Int]) -> [Int] {
        var order: [Int] = []
        order.reserveCapacity(nodes.count)
        let deps: [[Int]] = nodes.map { node in node.input.compactMap { producerOf[$0] } }
        var dependents = [[Int]](repeating: [], count: nodes.count)
        var pending = [Int](repeating: 0, count: nodes.count)
        for (n, ds) in deps.enumerated() {
            for d in Set(ds) { dependents[d].append(n); pending[n] += 1 }
        }
        // A min-heap by file index would be O(n log n); a sorted ready list is enough here.
        var ready = (0..<nodes.count).filter { pending[$0] == 0 }.reversed() as [Int]
        while let n = ready.popLast() {
            order.append(n)
            var added = false
            for r in dependents[n] {
                pending[r] -= 1
                if pending[r] == 0 { ready.append(r); added = true }
            }
            if added { ready.sort(by: >) }
        }
        return order
    }

    static func describe(_ node: Onnx_NodeProto, _ n: Int) -> String {
        "`\(node.opType)` node `\(node.name.isEmpty ? "#\(n)" : node.name)`"
    }
}
