/// What one call of ``Model/run(_:into:limits:)`` or ``Scorer/run(_:into:limits:)`` may make
/// the engine spend.
///
/// A server passes one on every call, from its configuration, so that no request (and no
/// uploaded model) can make a call grow the process without bound: a call that would cross
/// the limit is refused with ``EngineError/Code/limitExceeded`` (``PipelineError/Code/limitExceeded``
/// through a ``Scorer``) before the array that would cross it is allocated.
public struct RunLimits: Sendable, Equatable {
    /// The most bytes of tensor elements one call may hold at once.
    ///
    /// Counted: every array a step takes for its outputs or scratch, whether reused from an
    /// earlier call or new, from when the step asks for it until the run releases it after its
    /// last reader (the outputs a call returns count until it ends); a pipeline's pre and post
    /// steps count what they make for the whole call. A string counts
    /// `MemoryLayout<String>.stride`, plus an estimate of the text that the text operators,
    /// string casts and pipeline steps make. Not counted: the caller's inputs and the model's
    /// weights, which exist before the call, and a few shapes and small bookkeeping.
    public var maxBytes: Int

    /// A limit of `maxBytes` bytes per call.
    public init(maxBytes: Int) { self.maxBytes = maxBytes }

    /// No memory limit per call. Shapes are still checked, and no tensor may have more than
    /// 2^31 elements; a model and request crafted to expand can then still make one call take
    /// many gigabytes, so a server SHOULD NOT use it.
    public static let unlimited = RunLimits(maxBytes: .max)

    /// The limit of the calls that name none: 1 GiB.
    ///
    /// Not unlimited, so that every caller is safe by default: a request or model crafted to
    /// expand (a broadcast or a product of large dimensions) is refused, not allowed to take the
    /// process's memory. High enough that no ordinary call meets it: at batch 4096 the sample
    /// models hold at most 6.4 MiB (the news text classifier; the digits MLP 2 MiB), under 1%
    /// of it (RunLimitsTests). A server SHOULD pass its own configured limit.
    public static let `default` = RunLimits(maxBytes: 1 << 30)
}
