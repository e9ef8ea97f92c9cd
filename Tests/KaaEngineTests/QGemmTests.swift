import CKaaKernels
import Testing

/// The int8 products of CKaaKernels (`kaa_qgemm_…`, uint8 A times a packed int8 B, with zero
/// points and a float epilogue) and its DynamicQuantizeLinear (`kaa_quantize_u8`), against
/// naive references, for every variant this CPU runs.
@Suite struct QGemmTests {
    /// A seeded generator of bytes, so failures reproduce.
    struct Bytes {
        var state: UInt64
        mutating func next() -> UInt8 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
        mutating func array(_ n: Int) -> [UInt8] { (0..<n).map { _ in next() } }
    }

    static let allVariants = [KAA_QGEMM_BASELINE, KAA_QGEMM_AVX2, KAA_QGEMM_AVXVNNI, KAA_QGEMM_AVX512VNNI].map { Int32($0) }

    /// The variants this CPU runs (for the others kaa_qgemm_packed_variant computes nothing and
    /// returns -1).
    static var runnable: [Int32] {
        allVariants.filter { kaa_qgemm_packed_variant($0, 0, 0, 0, nil, 0, nil, nil, nil, nil, 0) == 0 }
    }

    /// What one product applies around the integer sums.
    struct Config: CustomStringConvertible {
        var bUnsigned = false, transposed = false
        var aZero: Int32 = 0
        var bZero = false
        /// nil: int32 results; 1: one scale; n: a scale per column.
        var scales: Int? = nil
        var bias = false, relu = false
        /// Row strides past k and n.
        var aPad = 0, cPad = 0

        var description: String {
            "bUnsigned=\(bUnsigned) transposed=\(transposed) aZero=\(aZero) bZero=\(bZero) scales=\(scales.map { "\($0)" } ?? "int") bias=\(bias) relu=\(relu) aPad=\(aPad) cPad=\(cPad)"
        }
    }

    static let configs = [
        Config(),
        Config(bUnsigned: true, transposed: true, aZero: 131, bZero: true, aPad: 3, cPad: 2),
        Config(aZero: 7, scales: 1, bias: true, relu: true),
        Config(transposed: true, bZero: true, scales: -1, cPad: 5),
        Config(bUnsigned: true, aZero: 255, bZero: true, scales: -1, bias: true, relu: true, aPad: 1, cPad: 1),
    ]

    /// Results past column n of a row (the row stride's padding) keep these.
    static let intSentinel: Int32 = 0x5A5A_5A5A
    static let floatSentinel: Float = -12345

    /// One product by `variant` (nil: kaa_qgemm_packed): whether it ran, then C as int32 and as
    /// float (the one the epilogue does not write keeps its sentinels).
    static func product(_ variant: Int32?, m: Int, k: Int, n: Int, a: [UInt8], lda: Int, packed: [Int8], colsum: [Int32],
                        aZero: Int32, bZero: [Int32]?, scale: [Float]?, bias: [Float]?, relu: Bool, ldc: Int)
        -> (ran: Bool, ints: [Int32], floats: [Float])
    {
        let count = m == 0 ? 0 : (m - 1) * ldc + n
        var ints = [Int32](repeating: intSentinel, count: max(count, 1))
        var floats = [Float](repeating: floatSentinel, count: max(count, 1))
        let zeros = bZero ?? [0], scales = scale ?? [0], biases = bias ?? [0]
        var ran = true
        colsum.withUnsafeBufferPointer { pc in
            zeros.withUnsafeBufferPointer { pz in
                scales.withUnsafeBufferPointer { ps in
                    biases.withUnsafeBufferPointer { pb in
                        var e = kaa_qgemm_epilogue(
                            a_zero: aZero, b_zero: bZero == nil ? nil : pz.baseAddress, colsum: pc.baseAddress,
                            scale: scale == nil ? nil : ps.baseAddress, scale_per_column: (scale?.count ?? 0) > 1 ? 1 : 0,
                            bias: bias == nil ? nil : pb.baseAddress, relu: relu ? 1 : 0)
                        if let variant {
                            ran = kaa_qgemm_packed_variant(variant, m, n, k, a, lda, packed, &e, &ints, &floats, ldc) == 0
                        } else {
                            kaa_qgemm_packed(m, n, k, a, lda, packed, &e, &ints, &floats, ldc)
                        }
                    }
                }
            }
        }
        return (ran, Array(ints.prefix(count)), Array(floats.prefix(count)))
    }

    /// Every edge of the tilings (rows past tiles of 1-2, 4, 6 and 12 rows and blocks of 64 and
    /// 96, columns past 16-column panels and 2-panel tiles, k not a multiple of 4, k = 0), every
    /// variant this CPU runs and the dispatched one: exact int32 sums, float results within
    /// float rounding of a Double reference and bit-equal across variants.
    @Test(arguments: [(1, 1, 1), (1, 784, 256), (2, 3, 5), (3, 4, 16), (5, 7, 17), (7, 300, 33), (12, 9, 33), (13, 5, 31),
                      (24, 31, 32), (25, 1, 48), (64, 128, 10), (3, 0, 4), (97, 17, 65), (100, 64, 47), (6, 2, 15), (1, 1000, 3)])
    func productsMatchTheReference(shape: (Int, Int, Int)) throws {
        let (m, k, n) = shape
        var bytes = Bytes(state: UInt64(m * 1_000_000 + k * 1000 + n))
        let variants = Self.runnable
        #expect(variants.contains(Int32(KAA_QGEMM_BASELINE)))
        #expect(variants.contains(kaa_qgemm_variant()))
        for config in Self.configs {
            let lda = k + config.aPad, ldc = n + config.cPad
            let a = m == 0 ? [UInt8]() : bytes.array((m - 1) * lda + k)
            // B as the kernel is handed it: k×n, or n×k when transposed; as signed values.
            let raw = bytes.array(k * n)
            func b(_ kk: Int, _ j: Int) -> Int {
                let v = raw[config.transposed ? j * k + kk : kk * n + j]
                return config.bUnsigned ? Int(v) - 128 : Int(Int8(bitPattern: v))
            }
            var packed = [Int8](repeating: 0x55, count: max(kaa_qgemm_packed_size(k, n), 1))
            var colsum = [Int32](repeating: 0, count: max(n, 1))
            kaa_qgemm_pack_b(k, n, raw, config.bUnsigned ? 1 : 0, config.transposed ? 1 : 0, &packed, &colsum)
            // Zero points in the packed domain, scales of both signs, biases.
            let bZero = config.bZero ? (0..<n).map { _ in Int32(bytes.next()) - 128 } : nil
            let scale: [Float]? = config.scales.map { count in
                (0..<(count < 0 ? n : count)).map { _ in Float(Int(bytes.next()) - 128) * 1.7e-5 }
            }
            let bias = config.bias ? (0..<n).map { _ in Float(Int(bytes.next()) - 128) / 64 } : nil

            var want = [Int64](repeating: 0, count: m * n)
            for i in 0..<m {
                for j in 0..<n {
                    let zb = Int64(bZero?[j] ?? 0)
                    var s: Int64 = 0
                    for kk in 0..<k { s += (Int64(a[i * lda + kk]) - Int64(config.aZero)) * (Int64(b(kk, j)) - zb) }
                    want[i * n + j] = s
                }
            }

            var firstFloats: [Float]? = nil
            let choices: [Int32?] = [nil] + variants.map { $0 }
            for variant in choices {
                let name = variant.map { String(cString: kaa_qgemm_variant_name($0)) } ?? "dispatched"
                let got = Self.product(variant, m: m, k: k, n: n, a: a, lda: lda, packed: packed, colsum: colsum,
                                       aZero: config.aZero, bZero: bZero, scale: scale, bias: bias, relu: config.relu, ldc: ldc)
                #expect(got.ran, "\(name)")
                var problem: String? = nil
                for i in 0..<m where problem == nil {
                    for j in 0..<ldc where i * ldc + j < got.ints.count && problem == nil {
                        let at = i * ldc + j
                        if j >= n {
                            if got.ints[at] != Self.intSentinel || got.floats[at] != Self.floatSentinel { problem = "wrote past column n at [\(i)][\(j)]" }
                            continue
                        }
                        let r = want[i * n + j]
                        if scale == nil {
                            if Int64(got.ints[at]) != r { problem = "[\(i)][\(j)] = \(got.ints[at]), expected \(r)" }
                            if got.floats[at] != Self.floatSentinel { problem = "wrote the float output" }
                        } else {
                            let s = Double(scale![scale!.count > 1 ? j : 0]), bj = Double(bias?[j] ?? 0)
                            var f = Double(r) * s + bj
                            if config.relu { f = max(f, 0) }
                            let g = Double(got.floats[at])
                            if !(abs(g - f) <= 4e-7 * (abs(Double(r) * s) + abs(bj)) + 1e-30) {
                                problem = "[\(i)][\(j)] = \(g), expected \(f) (sum \(r))"
                            }
                            if got.ints[at] != Self.intSentinel { problem = "wrote the int output" }
                        }
                    }
                }
                #expect(problem == nil, "\(m)×\(k)×\(n) \(name) \(config): \(problem ?? "")")
                if scale != nil {
                    if let firstFloats {
                        let same = zip(firstFloats, got.floats).allSatisfy { $0.bitPattern == $1.bitPattern }
                        #expect(same, "\(m)×\(k)×\(n) \(name) \(config): float results differ from the dispatched kernel's")
                    } else {
                        firstFloats = got.floats
                    }
                }
            }
        }
    }

    /// The packed layout: out[p][k/4][j][k%4], zero past n and k, B − 128 for uint8 B, and the
    /// column sums of the packed values.
    @Test func packingLayout() {
        let k = 5, n = 17
        let b = (0..<(k * n)).map { UInt8(truncatingIfNeeded: $0 * 37 + 11) }
        for bUnsigned in [false, true] {
            var packed = [Int8](repeating: 0x55, count: kaa_qgemm_packed_size(k, n))
            var colsum = [Int32](repeating: 0, count: n)
            #expect(packed.count == 2 * 16 * 8)
            kaa_qgemm_pack_b(k, n, b, bUnsigned ? 1 : 0, 0, &packed, &colsum)
            for p in 0..<2 {
                for g in 0..<2 {
                    for j in 0..<16 {
                        for t in 0..<4 {
                            let col = p * 16 + j, kk = g * 4 + t
                            var want = 0
                            if col < n && kk < k { want = bUnsigned ? Int(b[kk * n + col]) - 128 : Int(Int8(bitPattern: b[kk * n + col])) }
                            #expect(Int(packed[((p * 2 + g) * 16 + j) * 4 + t]) == want, "p \(p) group \(g) column \(j) k \(kk)")
                        }
                    }
                }
            }
            for j in 0..<n {
                let sum = (0..<k).reduce(0) { $0 + (bUnsigned ? Int(b[$1 * n + j]) - 128 : Int(Int8(bitPattern: b[$1 * n + j]))) }
                #expect(Int(colsum[j]) == sum, "column \(j)")
            }
        }
    }

    @Test func variantNames() {
        #expect(String(cString: kaa_qgemm_variant_name(Int32(KAA_QGEMM_BASELINE))) == "baseline")
        #expect(String(cString: kaa_qgemm_variant_name(Int32(KAA_QGEMM_AVX2))) == "avx2")
        #expect(String(cString: kaa_qgemm_variant_name(Int32(KAA_QGEMM_AVXVNNI))) == "avx-vnni")
        #expect(String(cString: kaa_qgemm_variant_name(Int32(KAA_QGEMM_AVX512VNNI))) == "avx512-vnni")
        // The dispatched variant needs the engine's level: avx512-vnni at avx512, the others at avx2.
        let variant = kaa_qgemm_variant(), level = kaa_kernel_level()
        if variant == Int32(KAA_QGEMM_AVX512VNNI) { #expect(level >= Int32(KAA_LEVEL_AVX512)) }
        if variant != Int32(KAA_QGEMM_BASELINE) { #expect(level >= Int32(KAA_LEVEL_AVX2)) }
    }

    // MARK: DynamicQuantizeLinear

    /// kaa_quantize_u8 on `x`: its status, bytes, scale and zero point.
    static func quantize(_ x: [Float]) -> (status: Int32, y: [UInt8], scale: Float, zero: UInt8) {
        var y = [UInt8](repeating: 0xEE, count: max(x.count, 1))
        var scale: Float = -1
        var zero: UInt8 = 7
        let status = kaa_quantize_u8(x, x.count, &y, &scale, &zero)
        return (status, Array(y.prefix(x.count)), scale, zero)
    }

    /// ONNX's formula, in Float as ONNX computes it (scale 0 for an all-zero input, as kaa_kernels.h says).
    static func reference(_ x: [Float]) -> (y: [UInt8], scale: Float, zero: UInt8) {
        let lo = min(x.min() ?? 0, 0), hi = max(x.max() ?? 0, 0)
        let s = (hi - lo) / 255
        guard s > 0 else { return ([UInt8](repeating: 0, count: x.count), 0, 0) }
        let z = min(max((0 - lo / s).rounded(.toNearestOrEven), 0), 255)
        let y = x.map { UInt8(min(max(($0 / s).rounded(.toNearestOrEven) + z, 0), 255)) }
        return (y, s, UInt8(z))
    }

    struct Example: Sendable, CustomStringConvertible {
        var x: [Float]
        var scale: Float
        var zero: UInt8
        var y: [UInt8]
        var description: String { "\(x)" }
    }

    /// The examples of ONNX's operator tests (onnxruntime's expected bytes: 0.5 / scale rounds
    /// to exactly 25.5 in float, then to 26), ties at a scale of exactly 1 (half to even), and
    /// the all-zero, empty and all-negative inputs.
    static let examples: [Example] = [
        Example(x: [0, 2, -3, -2.5, 1.34, 0.5], scale: 0.0196078438, zero: 153, y: [153, 255, 0, 26, 221, 179]),
        Example(x: [-1.0, -2.1, -1.3, -2.5, -3.34, -4.0], scale: 0.0156862754, zero: 255, y: [191, 121, 172, 96, 42, 0]),
        Example(x: [1, 2.1, 1.3, 2.5, 3.34, 4.0, 1.5, 2.6, 3.9, 4.0, 3.0, 2.345], scale: 0.0156862754, zero: 0,
                y: [64, 134, 83, 159, 213, 255, 96, 166, 249, 255, 191, 149]),
        Example(x: [0, 255, 0.5, 1.5, 2.5, 3.5, 254.5, 253.5, 100.5], scale: 1, zero: 0, y: [0, 255, 0, 2, 2, 4, 254, 254, 100]),
        Example(x: [-127.5, 127.5, -0.5, -1.5, 0.5, 1.5, -2.5, 2.5] + [Float](repeating: 0, count: 10) + [0.5], scale: 1, zero: 128,
                y: [0, 255, 128, 126, 128, 130, 126, 130] + [UInt8](repeating: 128, count: 11)),
        Example(x: [Float](repeating: 0, count: 40), scale: 0, zero: 0, y: [UInt8](repeating: 0, count: 40)),
        Example(x: [], scale: 0, zero: 0, y: []),
        Example(x: [-1, -1, -1], scale: Float(1) / 255, zero: 255, y: [0, 0, 0]),
    ]

    @Test(arguments: examples)
    func quantizeExamples(example: Example) {
        let got = Self.quantize(example.x)
        #expect(got.status == 0)
        #expect(abs(got.scale - example.scale) <= 1e-9 * abs(example.scale), "scale \(got.scale), expected \(example.scale)")
        #expect(got.zero == example.zero)
        #expect(got.y == example.y)
    }

    /// Random inputs of every length around the vector widths, and a long one, against the
    /// reference byte for byte.
    @Test func quantizeMatchesTheReference() {
        var bytes = Bytes(state: 99)
        func value() -> Float { Float(Int(bytes.next()) << 8 | Int(bytes.next())) / 65536 * 20 - 7 }
        for n in Array(0...70) + [1000, 4099] {
            let x = (0..<n).map { _ in value() }
            let got = Self.quantize(x), want = Self.reference(x)
            #expect(got.status == 0)
            #expect(got.scale.bitPattern == want.scale.bitPattern && got.zero == want.zero, "n \(n): \(got.scale) \(got.zero)")
            #expect(got.y == want.y, "n \(n)")
        }
    }

    /// A NaN or an infinity anywhere: -1, and nothing written.
    @Test func quantizeRejectsNaNAndInfinity() {
        for n in [1, 7, 8, 9, 16, 17, 64, 65, 200] {
            for at in Set([0, n / 2, n - 1]) {
                for bad in [Float.nan, .infinity, -.infinity] {
                    var x = (0..<n).map { Float($0) - 3 }
                    x[at] = bad
                    let got = Self.quantize(x)
                    #expect(got.status == -1, "n \(n) at \(at): \(bad)")
                    #expect(got.y.allSatisfy { $0 == 0xEE } && got.scale == -1 && got.zero == 7, "n \(n) at \(at): wrote")
                }
            }
        }
    }
}
