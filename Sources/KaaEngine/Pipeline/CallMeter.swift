/// The memory a pipeline call holds outside the graph's run (blocks its pre steps make, values
/// its post steps write), counted against the call's ``RunLimits``.
///
/// A conservative count: what a step makes is counted for the whole call, even once a later
/// step has replaced it. The graph's run counts its own arrays on top (see
/// ``Model/run(_:into:limits:)``).
struct CallMeter {
    /// ``RunLimits/maxBytes``.
    let limit: Int
    /// Bytes counted so far.
    var held = 0

    init(_ limits: RunLimits) { limit = limits.maxBytes }

    /// Counts `count` values of `dtype` that `step` is about to make (strings: their headers;
    /// text a step makes is counted with ``charge(bytes:step:field:)``). Throws
    /// ``PipelineError/Code/limitExceeded`` when the call would then hold more than its limit.
    mutating func charge(_ count: Int, of dtype: DType, step: PipelineError.Step?, field: String?) throws(PipelineError) {
        try charge(count, dtype.byteWidth, "\(count) \(dtype) values", step: step, field: field)
    }

    /// Counts `bytes` of text that `step` is about to make.
    mutating func charge(bytes: Int, step: PipelineError.Step?, field: String?) throws(PipelineError) {
        try charge(bytes, 1, "text", step: step, field: field)
    }

    private mutating func charge(_ count: Int, _ stride: Int, _ what: String, step: PipelineError.Step?, field: String?) throws(PipelineError) {
        guard count <= Limits.maxElements || stride == 1 else {
            throw PipelineError(.invalidInput, "needs \(count) values; one tensor may hold at most \(Limits.maxElements): send a smaller batch", step: step, field: field)
        }
        let (bytes, o1) = count.multipliedReportingOverflow(by: stride)
        let (total, o2) = held.addingReportingOverflow(bytes)
        guard count >= 0, !o1, !o2, total <= limit else {
            let needed = Int(exactly: Double(held) + Double(count) * Double(stride)).map(EngineError.bytes) ?? "more than \(Int.max) bytes"
            throw PipelineError(.limitExceeded, "the call needs \(needed): \(o1 ? "more than \(Int.max) bytes" : EngineError.bytes(bytes)) for \(what) on top of \(EngineError.bytes(held)) it already holds; the per-call limit is \(EngineError.bytes(limit)). Send a smaller batch, or raise the per-call memory limit", step: step, field: field)
        }
        held = total
    }
}
