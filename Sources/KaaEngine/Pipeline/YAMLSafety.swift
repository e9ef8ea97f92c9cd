import CYaml

/// Checks YAML text that came from outside (an uploaded pipeline spec, a node's config) before
/// a YAML library composes it, so that a small text cannot cost unbounded time or memory.
///
/// ```swift
/// try YAMLSafety.check(text, what: "node configs")   // then Yams.compose(yaml: text)
/// ```
public enum YAMLSafety {
    /// The most bytes a checked text may have by default: 1 MiB.
    public static let maxBytes = 1 << 20
    /// The most levels of mappings and lists nested in one another by default: 64.
    public static let maxDepth = 64

    /// A text ``check(_:what:maxBytes:maxDepth:)`` refuses: what was wrong, and what to do.
    public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        /// What was refused and what to do, for a person; names the line when there is one.
        public var message: String
        /// The line at fault, from 1, when there is one.
        public var line: Int?

        public var description: String { message }
    }

    /// Refuses, before any YAML library composes `text`:
    /// - anchors and aliases (`&name`, `*name`, `<<: *name`): Yams resolves each alias into a
    ///   shared node, and its duplicate-key check hashes a key node in full, so a "billion
    ///   laughs" text of 1.2 KB whose top anchor is used as a mapping key costs minutes of CPU.
    ///   No Kaa YAML needs them: write the values out.
    /// - more than `maxBytes` bytes of UTF-8;
    /// - mappings and lists nested deeper than `maxDepth` (a composer recurses once per level).
    ///
    /// Reads the text with libyaml's event parser (the one Yams parses with), which neither
    /// resolves aliases nor builds nodes: the check takes time linear in the text. A text that
    /// does not parse is not refused here: the caller's parser reports the syntax error, at
    /// the same place, having met nothing this check refuses before it.
    ///
    /// `what` names the kind of text in messages, in the plural (`pipeline specs`,
    /// `node configs`).
    public static func check(_ text: String, what: String = "YAML documents", maxBytes: Int = maxBytes,
                             maxDepth: Int = maxDepth) throws(Refusal) {
        let size = text.utf8.count
        guard size <= maxBytes else {
            throw Refusal(message: "\(what) may be at most \(EngineError.bytes(maxBytes)); this one is \(EngineError.bytes(size))")
        }
        // libyaml keeps a pointer to its parser (its read handler's data) and to the input:
        // both live at fixed addresses until the parser is deleted, below.
        let parser = UnsafeMutablePointer<yaml_parser_t>.allocate(capacity: 1)
        let event = UnsafeMutablePointer<yaml_event_t>.allocate(capacity: 1)
        defer {
            event.deallocate()
            parser.deallocate()
        }
        guard yaml_parser_initialize(parser) == 1 else {
            throw Refusal(message: "the YAML parser could not start (out of memory)")
        }
        defer { yaml_parser_delete(parser) }
        var utf8 = text
        let refusal: Refusal? = utf8.withUTF8 { input in
            yaml_parser_set_input_string(parser, input.baseAddress, input.count)
            var depth = 0
            while true {
                // A syntax error: left to the caller's parser.
                guard yaml_parser_parse(parser, event) == 1 else { return nil }
                defer { yaml_event_delete(event) }
                let e = event.pointee
                let line = Int(e.start_mark.line) + 1
                func anchored(_ anchor: UnsafeMutablePointer<yaml_char_t>?) -> Refusal? {
                    anchor.map { Self.anchorRefusal("the anchor `&\(Self.name($0))`", line: line, what: what) }
                }
                switch e.type {
                case YAML_STREAM_END_EVENT:
                    return nil
                case YAML_ALIAS_EVENT:
                    return Self.anchorRefusal("the alias `*\(e.data.alias.anchor.map(Self.name) ?? "")`", line: line, what: what)
                case YAML_SCALAR_EVENT:
                    if let r = anchored(e.data.scalar.anchor) { return r }
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    let anchor = e.type == YAML_SEQUENCE_START_EVENT ? e.data.sequence_start.anchor : e.data.mapping_start.anchor
                    if let r = anchored(anchor) { return r }
                    depth += 1
                    guard depth <= maxDepth else {
                        return Refusal(message: "\(what) may nest mappings and lists at most \(maxDepth) levels deep; line \(line) opens level \(depth)", line: line)
                    }
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    depth -= 1
                default:
                    break
                }
            }
        }
        if let refusal { throw refusal }
    }

    static func anchorRefusal(_ found: String, line: Int, what: String) -> Refusal {
        Refusal(message: "\(what) may not use YAML anchors or aliases (`&name`, `*name`): line \(line) has \(found); write the values out", line: line)
    }

    /// An anchor's name for a message, cut to 40 characters.
    static func name(_ anchor: UnsafeMutablePointer<yaml_char_t>) -> String {
        let s = String(cString: anchor)
        return s.count > 40 ? s.prefix(40) + "..." : s
    }
}
