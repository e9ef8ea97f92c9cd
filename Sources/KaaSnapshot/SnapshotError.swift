/// Why a snapshot, an archive, a key or a store operation was refused.
///
/// The ``code`` says which kind of failure it is (the HTTP layer maps it to a status: ``Code/conflict``
/// is 409, ``Code/notFound`` is 404, ``Code/io`` is 500, the rest are the client's fault); the
/// ``message`` says what was wrong and what to do, for a person.
public struct SnapshotError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The kind of failure. New codes may be added; switch with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: String
        public var description: String { raw }

        /// The archive bytes are not a well-formed `.kaa` (LZ4 frame or container layout).
        public static let malformedArchive = Code(raw: "malformed-archive")
        /// The archive ended before it was complete (truncated file, upload cut off).
        public static let truncated = Code(raw: "truncated")
        /// A computed digest differs from the recorded or expected one.
        public static let digestMismatch = Code(raw: "digest-mismatch")
        /// The archive is unsigned but the node requires a trusted signature.
        public static let signatureMissing = Code(raw: "signature-missing")
        /// The signature does not verify, or its key is not trusted.
        public static let signatureInvalid = Code(raw: "signature-invalid")
        /// The manifest is missing a field, has a wrong one, or contradicts the archive.
        public static let invalidManifest = Code(raw: "invalid-manifest")
        /// The pipeline spec does not parse, or does not fit the model.
        public static let invalidPipeline = Code(raw: "invalid-pipeline")
        /// An entry name is absolute, escapes with `..`, repeats, or is otherwise unusable.
        public static let invalidEntry = Code(raw: "invalid-entry")
        /// A model name, version, alias or reference is not well-formed.
        public static let invalidName = Code(raw: "invalid-name")
        /// A quality gate expression does not parse, or its holdout does not fit it.
        public static let invalidGate = Code(raw: "invalid-gate")
        /// The ONNX model file could not be read.
        public static let invalidModel = Code(raw: "invalid-model")
        /// A key file could not be read.
        public static let invalidKey = Code(raw: "invalid-key")
        /// The same `name@version` is already stored with different content (HTTP 409).
        public static let conflict = Code(raw: "conflict")
        /// No such model, version or alias.
        public static let notFound = Code(raw: "not-found")
        /// The version is in use (leased by the serving layer) or aliased and cannot be removed.
        public static let inUse = Code(raw: "in-use")
        /// The archive or an entry exceeds a configured limit.
        public static let tooLarge = Code(raw: "too-large")
        /// A file-system or database operation failed.
        public static let io = Code(raw: "io")
        /// The store is at a configured limit of work in progress (uploads received at once);
        /// nothing is wrong with the request: retry shortly (HTTP 503).
        public static let busy = Code(raw: "busy")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// Byte counts in messages: the exact number, then a rounded binary unit for a person.
enum ByteSize {
    static func text(_ n: UInt64) -> String {
        let units: [(UInt64, String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        for (size, unit) in units where n >= size {
            let value = Double(n) / Double(size)
            let rounded = (value * 10).rounded() / 10
            return "\(n) bytes (\(rounded) \(unit))"
        }
        return "\(n) bytes"
    }
}
