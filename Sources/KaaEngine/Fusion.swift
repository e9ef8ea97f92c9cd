extension Planner {
    /// Lets a kernel take over the elementwise node that is the only reader of its output
    /// (Gemm or MatMul then Add of a constant row, then Relu; MatMulInteger then Cast to
    /// float, Mul by a scale, Add and Relu; see ``EpilogueFusable``), so the intermediate is
    /// never stored. `steps` pairs each step with its operator as `domain:name`; `types` gives
    /// each slot's element type; `keep` holds the graph outputs' slots, which are never fused
    /// away.
    ///
    /// The fused step takes the place of the node it absorbs, not of the producer: a scale
    /// that the Mul reads at run time may be computed by a step between the two.
    static func fuseEpilogues(_ steps: [(step: Plan.Step, op: String)], template: [Tensor?], types: [DType], keep: Set<Int>) -> [Plan.Step] {
        var steps = steps
        var i = 0
        while i < steps.count {
            let producer = steps[i].step
            guard let fusable = producer.kernel as? any EpilogueFusable, producer.outputs.count == 1,
                  let o = producer.outputs.first, o >= 0, !keep.contains(o) else { i += 1; continue }
            let readers = steps.indices.filter { steps[$0].step.inputs.contains(o) }
            guard readers.count == 1, let j = readers.first, j > i else { i += 1; continue }
            let next = steps[j].step
            let epilogue: Epilogue
            var inputs = producer.inputs
            switch steps[j].op {
            case "ai.onnx:Relu" where next.inputs == [o]:
                epilogue = .relu
            case "ai.onnx:Cast" where next.inputs == [o] && next.outputs.count == 1 && next.outputs[0] >= 0 && types[next.outputs[0]] == .float32:
                epilogue = .castToFloat
            case "ai.onnx:Add" where next.inputs.count == 2 && next.inputs.filter({ $0 == o }).count == 1:
                let other = next.inputs[0] == o ? next.inputs[1] : next.inputs[0]
                guard other >= 0, let constant = template[other] else { i += 1; continue }
                epilogue = .add(constant)
            case "ai.onnx:Mul" where next.inputs.count == 2 && next.inputs.filter({ $0 == o }).count == 1:
                let other = next.inputs[0] == o ? next.inputs[1] : next.inputs[0]
                guard other >= 0 else { i += 1; continue }
                if let constant = template[other] {
                    epilogue = .mul(constant)
                } else {
                    epilogue = .mulInput(inputs.count)
                    inputs.append(other)
                }
            default:
                i += 1
                continue
            }
            guard let fused = fusable.fusing(epilogue) else { i += 1; continue }
            steps[j].step = Plan.Step(kernel: fused, inputs: inputs, outputs: next.outputs, release: [],
                                      owner: "\(producer.owner) with \(next.owner)")
            steps.remove(at: i)
            // Stay on the fused step: it may take the next node too (MatMul, Add, Relu).
            i = j - 1
        }
        return steps.map(\.step)
    }
}
