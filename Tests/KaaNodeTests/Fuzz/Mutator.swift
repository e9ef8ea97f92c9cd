import KaaTestSupport

/// Seeded byte-level mutations of valid inputs, in the manner of a fuzzer's havoc stage: bit
/// flips, boundary bytes, boundary numbers and structural tokens spliced in, ranges deleted,
/// repeated or truncated. The same seed gives the same sequence on every machine.
struct Mutator {
    var rng: SplitMix64

    init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    /// Tokens that sit on the edges of what parsers, shapes and integer arithmetic handle.
    static let tokens: [[UInt8]] = [
        "0", "-1", "-0", "1e308", "-1e999", "1e-400", "2147483647", "2147483648", "4294967296",
        "9223372036854775807", "9223372036854775808", "-9223372036854775808", "18446744073709551615",
        "18446744073709551616", "4611686018427387904", "1073741824", "NaN", "Infinity", "null", "true",
        "\"\"", "[]", "{}", "[[[[[[[[[[[[[[[[", "]]]]", "\"a\":1,\"a\":2", "\\u0000", "\\ud800", "\u{0}",
        "\r\n", "\r\n\r\n", " ", ",", ":", "\"", "\\", "&a", "*a", "!!binary", "- ", "? ", "%YAML 1.1\n",
    ].map { Array($0.utf8) }

    static let bytes: [UInt8] = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x22, 0x2C, 0x3A, 0x5B, 0x5D, 0x7B, 0x7D, 0x5C,
                                 0x30, 0x39, 0x2D, 0x0A, 0x0D, 0x20, 0x26, 0x2A]

    mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &rng) }
    mutating func chance(_ percent: Int) -> Bool { int(1...100) <= percent }
    mutating func pick<T>(_ items: [T]) -> T { items[int(0...(items.count - 1))] }

    /// `input` with one to four mutations; `donors` are other valid inputs to splice from.
    mutating func mutate(_ input: [UInt8], donors: [[UInt8]] = []) -> [UInt8] {
        var out = input
        for _ in 0..<int(1...4) { out = mutateOnce(out, donors: donors) }
        return out
    }

    private mutating func mutateOnce(_ input: [UInt8], donors: [[UInt8]]) -> [UInt8] {
        var b = input
        if b.isEmpty { return pick(Mutator.tokens) }
        let at = int(0...(b.count - 1))
        switch int(0...8) {
        case 0:
            b[at] ^= UInt8(1) << UInt8(int(0...7))
        case 1:
            b[at] = pick(Mutator.bytes)
        case 2:
            b.insert(contentsOf: pick(Mutator.tokens), at: at)
        case 3:
            // A number in the input becomes a boundary number.
            let digits = b.indices.filter { b[$0] >= 0x30 && b[$0] <= 0x39 }
            guard let start = digits.isEmpty ? nil : pick(digits) else { return mutateOnce(b, donors: donors) }
            var end = start
            while end < b.count, b[end] >= 0x30 && b[end] <= 0x39 || b[end] == 0x2E { end += 1 }
            b.replaceSubrange(start..<end, with: pick(Array(Mutator.tokens[0..<17])))
        case 4:
            b.removeSubrange(at..<min(b.count, at + int(1...16)))
        case 5:
            // A range repeated: amplification (nesting, repeated members, long arrays).
            let range = at..<min(b.count, at + int(1...64))
            let piece = Array(b[range])
            let times = chance(20) ? int(100...2000) : int(2...8)
            b.insert(contentsOf: Array(repeating: piece, count: times).joined(), at: range.upperBound)
        case 6:
            b.removeSubrange(at...)
        case 7:
            guard !donors.isEmpty else { return mutateOnce(b, donors: donors) }
            let donor = pick(donors)
            guard !donor.isEmpty else { return b }
            let from = int(0...(donor.count - 1))
            let piece = donor[from..<min(donor.count, from + int(1...128))]
            b.replaceSubrange(at..<min(b.count, at + int(0...32)), with: piece)
        default:
            b.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
        }
        return b
    }
}
