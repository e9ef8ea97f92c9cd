/// The `text_hash` pre step: lowercase, tokenize, form word n-grams and hash them into a
/// fixed-width count vector — the same computation as scikit-learn's `HashingVectorizer`
/// (analyzer `word`, token pattern `(?u)\b\w\w+\b`, MurmurHash3 x86 32-bit with seed 0), so a
/// model trained on its features can be served on raw text.
struct TextHasher: Sendable, Equatable {
    enum Norm: String, Sendable { case l2, l1, none }

    var width: Int
    var lowercase = true
    var minN = 1
    var maxN = 1
    /// Tokens shorter than this are dropped (2 is scikit-learn's `\w\w+`).
    var minTokenLength = 2
    var alternateSign = true
    var norm: Norm = .l2
    var binary = false

    /// Adds the hashed features of `text` into `row` (width ``width``).
    func hash(_ text: String, into row: UnsafeMutableBufferPointer<Float>) {
        let tokens = Self.tokens(lowercase ? text.lowercased() : text, minLength: minTokenLength)
        // Sparse: a row has a few features, the width may be 2^20.
        var acc: [Int: Double] = [:]
        func add(_ feature: String) {
            var f = feature
            let h = f.withUTF8 { Self.murmur3(UnsafeRawBufferPointer($0)) }
            let index: Int
            if h == Int32.min {
                index = (Int(Int32.max) - (width - 1)) % width
            } else {
                index = Int(h.magnitude) % width
            }
            acc[index, default: 0] += alternateSign && h < 0 ? -1 : 1
        }
        if !tokens.isEmpty {
            for n in minN...maxN where n <= tokens.count {
                if n == 1 {
                    for t in tokens { add(t) }
                } else {
                    for i in 0...(tokens.count - n) { add(tokens[i..<(i + n)].joined(separator: " ")) }
                }
            }
        }
        // As scikit-learn: every feature seen counts 1, whatever the sum of its signs.
        if binary { for i in acc.keys { acc[i] = 1 } }
        var total = 0.0
        switch norm {
        case .l2: for v in acc.values { total += v * v }; total = total.squareRoot()
        case .l1: for v in acc.values { total += abs(v) }
        case .none: total = 1
        }
        if total == 0 { total = 1 }
        for (i, v) in acc { row[i] = Float(v / total) }
    }

    /// Runs of word characters (letters, digits, `_`) of at least `minLength` characters.
    static func tokens(_ text: String, minLength: Int) -> [String] {
        var out: [String] = []
        var current = String.UnicodeScalarView()
        var length = 0
        func flush() {
            if length >= minLength { out.append(String(current)) }
            current.removeAll(keepingCapacity: true)
            length = 0
        }
        for s in text.unicodeScalars {
            if isWord(s) {
                current.append(s)
                length += 1
            } else if length > 0 {
                flush()
            }
        }
        if length > 0 { flush() }
        return out
    }

    /// Python's `\w` under `re.UNICODE`: letters, numbers and the underscore.
    static func isWord(_ s: Unicode.Scalar) -> Bool {
        if s.isASCII {
            let v = s.value
            return (v >= 0x30 && v <= 0x39) || (v >= 0x41 && v <= 0x5A) || (v >= 0x61 && v <= 0x7A) || v == 0x5F
        }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter,
             .decimalNumber, .letterNumber, .otherNumber:
            return true
        default:
            return false
        }
    }

    /// MurmurHash3 x86 32-bit with seed 0, as a signed value (scikit-learn's `murmurhash3_32`).
    static func murmur3(_ data: UnsafeRawBufferPointer, seed: UInt32 = 0) -> Int32 {
        let c1: UInt32 = 0xcc9e_2d51, c2: UInt32 = 0x1b87_3593
        var h = seed
        let blocks = data.count / 4
        for i in 0..<blocks {
            var k = data.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self).littleEndian
            k &*= c1
            k = (k << 15) | (k >> 17)
            k &*= c2
            h ^= k
            h = (h << 13) | (h >> 19)
            h = h &* 5 &+ 0xe654_6b64
        }
        var k: UInt32 = 0
        let tail = blocks * 4
        switch data.count & 3 {
        case 3:
            k ^= UInt32(data[tail + 2]) << 16
            fallthrough
        case 2:
            k ^= UInt32(data[tail + 1]) << 8
            fallthrough
        case 1:
            k ^= UInt32(data[tail])
            k &*= c1
            k = (k << 15) | (k >> 17)
            k &*= c2
            h ^= k
        default: break
        }
        h ^= UInt32(truncatingIfNeeded: data.count)
        h ^= h >> 16
        h &*= 0x85eb_ca6b
        h ^= h >> 13
        h &*= 0xc2b2_ae35
        h ^= h >> 16
        return Int32(bitPattern: h)
    }
}
