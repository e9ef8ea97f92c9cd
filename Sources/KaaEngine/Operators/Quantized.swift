import Foundation
import CKaaKernels

/// A constant int8 or uint8 matrix B (k×n) packed once at load for `kaa_qgemm_packed`
/// (CKaaKernels), with its column sums and zero points.
///
/// `@unchecked Sendable`: the panels are written only in `init` and only read afterwards.
final class QuantizedMatrix: @unchecked Sendable {
    /// Rows of B: the inner dimension of a product.
    let k: Int
    /// Columns of B.
    let n: Int
    private let panels: UnsafeMutablePointer<Int8>
    private let panelBytes: Int
    /// Per column: the sum over k of B as packed (uint8 B is packed as B − 128).
    let columnSums: [Int32]
    /// B's zero point per column in the packed domain, or `nil` when every one is 0.
    let zeroPoints: [Int32]?

    /// Packs `b` (k×n row-major, or n×k when `transposed`), whose elements are uint8 when
    /// `unsigned`, else int8. `zeroPoints` holds B's zero point (1, or one per column) in B's
    /// own domain.
    init(_ b: UnsafeRawPointer, unsigned: Bool, k: Int, n: Int, transposed: Bool, zeroPoints: [Int32]) {
        precondition(zeroPoints.count == 1 || zeroPoints.count == n, "\(zeroPoints.count) zero points for \(n) columns")
        self.k = k
        self.n = n
        panelBytes = kaa_qgemm_packed_size(k, n)
        let out = UnsafeMutableRawPointer.allocate(byteCount: max(panelBytes, 1), alignment: 64)
            .bindMemory(to: Int8.self, capacity: max(panelBytes, 1))
        panels = out
        var sums = [Int32](repeating: 0, count: n)
        sums.withUnsafeMutableBufferPointer { kaa_qgemm_pack_b(k, n, b, unsigned ? 1 : 0, transposed ? 1 : 0, out, $0.baseAddress) }
        columnSums = sums
        let shift: Int32 = unsigned ? 128 : 0
        let zeros = (0..<n).map { zeroPoints[zeroPoints.count == 1 ? 0 : $0] - shift }
        self.zeroPoints = zeros.allSatisfy { $0 == 0 } ? nil : zeros
    }

    deinit { panels.deallocate() }

    var packed: UnsafePointer<Int8> { UnsafePointer(panels) }

    /// Bytes the panels, sums and zero points take.
    var byteCount: Int { panelBytes + (columnSums.count + (zeroPoints?.count ?? 0)) * 4 }

    /// Whether packing is worth its memory: the panels round `n` up to 16 columns (a matrix
    /// of one column and many rows would grow 16 times).
    static func worthPacking(k: Int, n: Int) -> Bool {
        kaa_qgemm_packed_size(k, n) <= max(4 * k * n, 1 << 16)
    }
}

/// Integer matrix products, shared by MatMulInteger, QLinearMatMul and the fused kernel.
enum QuantizedProduct {
    /// The product of `m` rows of uint8 A (row stride `k`) with a packed B, then the epilogue:
    /// exact int32 results into `ints`, or `scale`d floats (+ bias, Relu) into `floats`.
    /// `aZero` is one zero point for every row, or one per row when `perRowZero` is given.
    static func multiply(_ a: UnsafePointer<UInt8>, rows m: Int, k: Int, aZero: Int32, perRowZero: UnsafePointer<Int32>? = nil,
                         packed: UnsafePointer<Int8>, n: Int, columnSums: UnsafePointer<Int32>, zeroPoints: UnsafePointer<Int32>?,
                         scale: UnsafePointer<Float>? = nil, scalePerColumn: Bool = false, bias: UnsafePointer<Float>? = nil,
                         relu: Bool = false, ints: UnsafeMutablePointer<Int32>? = nil, floats: UnsafeMutablePointer<Float>? = nil,
                         variant: Int32? = nil) {
        var e = kaa_qgemm_epilogue(a_zero: aZero, b_zero: zeroPoints, colsum: columnSums, scale: scale,
                                   scale_per_column: scalePerColumn ? 1 : 0, bias: bias, relu: relu ? 1 : 0)
        func run(_ rows: Int, _ a: UnsafePointer<UInt8>, _ ci: UnsafeMutablePointer<Int32>?, _ cf: UnsafeMutablePointer<Float>?) {
            if let variant {
                let ran = kaa_qgemm_packed_variant(variant, rows, n, k, a, k, packed, &e, ci, cf, n)
                precondition(ran == 0, "this CPU cannot run int8 kernel \(variant)")
            } else {
                kaa_qgemm_packed(rows, n, k, a, k, packed, &e, ci, cf, n)
            }
        }
        guard let perRowZero else { return run(m, a, ints, floats) }
        for i in 0..<m {
            e.a_zero = perRowZero[i]
            run(1, a + i * k, ints.map { $0 + i * n }, floats.map { $0 + i * n })
        }
    }

    /// A's elements as uint8, and what to add to its zero point: int8 A is shifted by 128 into
    /// an array from `ws` (`converted`: hand it back).
    static func unsigned(_ t: Tensor, _ ws: Workspace) throws -> (values: [UInt8], shift: Int32, converted: Bool) {
        switch t.storage {
        case .uint8(let v): return (v, 0, false)
        case .int8(let v):
            return (try ws.array(v.count) { o in v.withUnsafeBufferPointer { p in for i in 0..<p.count { o[i] = UInt8(bitPattern: p[i]) ^ 0x80 } } }, 128, true)
        default: throw EngineError.runtime("expected uint8 or int8, got \(t.dtype)")
        }
    }

    /// The elements of a zero-point tensor of an 8-bit type, widened.
    static func zeroPoints(_ t: Tensor) -> [Int32] {
        switch t.storage {
        case .uint8(let v): v.map { Int32($0) }
        case .int8(let v): v.map { Int32($0) }
        case .int32(let v): v
        default: []
        }
    }

    /// The element at `i` of an 8-bit (or int32) tensor, widened.
    @inline(__always)
    static func element(_ t: Tensor, _ i: Int) -> Int32 {
        switch t.storage {
        case .uint8(let v): Int32(v[i])
        case .int8(let v): Int32(v[i])
        case .int32(let v): v[i]
        default: 0
        }
    }

    /// The integer product of A and B as ONNX's MatMulInteger defines it (batched,
    /// broadcasting, B packed per matrix at run time), into `out` (one int32 or float per
    /// output element; floats are `scale`d per column as ``multiply`` does). Zero points: A's
    /// is one value or one per row of a 2-D A; B's one value or one per column of a 2-D B.
    static func batched(a: Tensor, aZero: Tensor?, b: Tensor, bZero: Tensor?, ws: Workspace,
                        scale: UnsafeBufferPointer<Float>? = nil, ints: UnsafeMutablePointer<Int32>?, floats: UnsafeMutablePointer<Float>?) throws -> [Int] {
        let (m, k, n, batch, outShape) = try MathOps.productShapes(a.shape, b.shape, ws)
        let aZeros = aZero?.count ?? 1, bZeros = bZero?.count ?? 1
        guard aZeros == 1 || (a.rank == 2 && aZeros == m) else {
            throw EngineError.input("a_zero_point has \(aZeros) elements; it must be a scalar, or one per row of a 2-D A (\(m))")
        }
        guard bZeros == 1 || (b.rank == 2 && bZeros == n) else {
            throw EngineError.input("b_zero_point has \(bZeros) elements; it must be a scalar, or one per column of a 2-D B (\(n))")
        }
        let count = outShape.reduce(1, *)
        guard count > 0 else { return outShape }
        let (av, shift, converted) = try unsigned(a, ws)
        defer { if converted { ws.giveBack(av) } }
        let bUnsigned = b.dtype == .uint8
        let nb = batch.reduce(1, *)
        let packedBytes = kaa_qgemm_packed_size(k, n)
        // Written whole by each packing below.
        var panels: [Int8] = try ws.array(max(packedBytes, 1)) { _ in }
        var sums: [Int32] = try ws.array(n) { _ in }
        let bShift: Int32 = bUnsigned ? 128 : 0
        let bz: [Int32] = try ws.array(n) { o in for j in 0..<n { o[j] = (bZero.map { element($0, bZeros == 1 ? 0 : j) } ?? 0) - bShift } }
        let az: [Int32] = try ws.array(aZeros) { o in for i in 0..<aZeros { o[i] = (aZero.map { element($0, i) } ?? 0) + shift } }
        defer { ws.giveBack(panels); ws.giveBack(sums); ws.giveBack(bz); ws.giveBack(az) }
        let aBatch = a.shape.prefix(max(a.rank - 2, 0)), bBatch = b.shape.prefix(max(b.rank - 2, 0))
        try ws.withScratch(2 * nb) { at in
            K.withBroadcastStrides(aBatch, batch) { st in K.walk(batch, strides: st) { i, p in at[2 * i] = p } }
            K.withBroadcastStrides(bBatch, batch) { st in K.walk(batch, strides: st) { i, p in at[2 * i + 1] = p } }
            func raw(_ t: Tensor, _ body: (UnsafeRawPointer) -> Void) {
                switch t.storage {
                case .uint8(let v): v.withUnsafeBytes { body($0.baseAddress!) }
                case .int8(let v): v.withUnsafeBytes { body($0.baseAddress!) }
                default: break
                }
            }
            var packedIndex = -1
            panels.withUnsafeMutableBufferPointer { pp in sums.withUnsafeMutableBufferPointer { ps in
                bz.withUnsafeBufferPointer { pz in az.withUnsafeBufferPointer { pa in av.withUnsafeBufferPointer { pav in
                    let zeros = pz.allSatisfy { $0 == 0 } ? nil : pz.baseAddress
                    for i in 0..<nb {
                        let bi = at[2 * i + 1]
                        if bi != packedIndex {
                            raw(b) { kaa_qgemm_pack_b(k, n, $0 + bi * k * n, bUnsigned ? 1 : 0, 0, pp.baseAddress, ps.baseAddress) }
                            packedIndex = bi
                        }
                        let aRows = pav.baseAddress! + at[2 * i] * m * k
                        let offset = i * m * n
                        scale.map { s in
                            multiply(aRows, rows: m, k: k, aZero: pa[0], perRowZero: aZeros > 1 ? pa.baseAddress : nil,
                                     packed: pp.baseAddress!, n: n, columnSums: ps.baseAddress!, zeroPoints: zeros,
                                     scale: s.baseAddress, scalePerColumn: s.count > 1, floats: floats.map { $0 + offset })
                        } ?? multiply(aRows, rows: m, k: k, aZero: pa[0], perRowZero: aZeros > 1 ? pa.baseAddress : nil,
                                        packed: pp.baseAddress!, n: n, columnSums: ps.baseAddress!, zeroPoints: zeros,
                                        ints: ints.map { $0 + offset })
                    }
                } } }
            } }
        }
        return outShape
    }
}

/// MatMulInteger by a constant 2-D B packed at load; with a following Cast to float, Mul by a
/// scale, Add of a row and Relu fused in (the pattern onnxruntime's `quantize_dynamic` and
/// `kaa snapshot build --quantize int8` write), it writes the dequantized floats directly.
struct QuantizedProductKernel: EpilogueFusable {
    enum Scale {
        case none
        /// A constant that broadcasts along rows (1 or n values).
        case constant([Float])
        /// The step's input at this index, read at run time.
        case input(Int)
    }

    let weights: QuantizedMatrix
    /// Set once a Cast to float32 is fused: the kernel then writes floats.
    var floatOutput = false
    var scale = Scale.none
    var bias: [Float]?
    /// The rank of a fused Add's constant (see ``PackedProductKernel/minRank``).
    var minRank = 0
    var relu = false

    func fusing(_ epilogue: Epilogue) -> (any Kernel)? {
        var k = self
        switch epilogue {
        case .castToFloat:
            guard !floatOutput else { return nil }
            k.floatOutput = true
        case .mul(let t):
            guard floatOutput, case .none = scale, bias == nil, !relu, let row = PackedProductKernel.row(t, n: weights.n) else { return nil }
            k.scale = .constant(row)
            k.minRank = max(minRank, t.rank)
        case .mulInput(let index):
            guard floatOutput, case .none = scale, bias == nil, !relu else { return nil }
            k.scale = .input(index)
        case .add(let t):
            guard floatOutput, !relu, let row = PackedProductKernel.row(t, n: weights.n) else { return nil }
            k.bias = bias.map { b in zip(b, row).map { $0 + $1 } } ?? row
            k.minRank = max(minRank, t.rank)
        case .relu:
            guard floatOutput else { return nil }
            k.relu = true
        }
        return k
    }

    func run(_ inputs: [Tensor?], _ ws: Workspace) throws -> Outputs {
        let x = try K.arg(inputs, 0)
        let k = weights.k, n = weights.n
        guard x.rank >= 1, x.shape[x.rank - 1] == k else {
            throw EngineError.input("shapes \(x.shape) and [\(k), \(n)] do not multiply: the last dimension of A must be \(k)")
        }
        let m = x.shape.dropLast().reduce(1, *)
        let count = try K.product(m, n, "the product of A \(x.shape) and B [\(k), \(n)]")
        var aZero: Int32 = 0
        var perRow: [Int32]?
        if inputs.count > 2, let z = inputs[2] {
            guard z.dtype == x.dtype else { throw EngineError.input("a_zero_point is \(z.dtype), A is \(x.dtype)") }
            if z.count == 1 {
                aZero = QuantizedProduct.element(z, 0)
            } else if x.rank == 2, z.count == m {
                perRow = QuantizedProduct.zeroPoints(z)
            } else {
                throw EngineError.input("a_zero_point has \(z.count) elements; it must be a scalar, or one per row of a 2-D A (\(m))")
            }
        }
        // The scale read at run time: a row (1 or n values in the last dimension) is applied as
        // the product is stored; any other shape broadcasts afterwards.
        var runtimeScale: Tensor?
        var rowScale = true
        if case .input(let i) = scale {
            let s = try K.arg(inputs, i)
            guard s.dtype == .float32 else { throw EngineError.runtime("the scale is \(s.dtype), expected float32") }
            rowScale = s.rank <= max(x.rank, minRank) && (s.count == 1 || (s.count == n && s.shape.last == n))
            runtimeScale = s
        }
        let pad = max(minRank - x.rank, 0)
        let shape = ws.shape(rank: pad + x.rank) { d in
            for i in 0..<pad { d[i] = 1 }
            for i in 0..<x.rank { d[pad + i] = x.shape[i] }
            d[pad + x.rank - 1] = n
        }
        let (a, shift, converted) = try QuantizedProduct.unsigned(x, ws)
        defer { if converted { ws.giveBack(a) } }
        let zeros = weights.zeroPoints
        func product(ints: UnsafeMutablePointer<Int32>?, floats: UnsafeMutablePointer<Float>?,
                     scale: UnsafePointer<Float>?, perColumn: Bool, bias: UnsafePointer<Float>?, relu: Bool) {
            a.withUnsafeBufferPointer { pa in weights.columnSums.withUnsafeBufferPointer { ps in
                func go(_ z: UnsafePointer<Int32>?, _ rowZero: UnsafePointer<Int32>?) {
                    QuantizedProduct.multiply(pa.baseAddress!, rows: m, k: k, aZero: aZero + shift, perRowZero: rowZero,
                                              packed: weights.packed, n: n, columnSums: ps.baseAddress!, zeroPoints: z,
                                              scale: scale, scalePerColumn: perColumn, bias: bias, relu: relu, ints: ints, floats: floats)
                }
                func withRows(_ z: UnsafePointer<Int32>?) {
                    guard let perRow else { return go(z, nil) }
                    let shifted = perRow.map { $0 + shift }
                    shifted.withUnsafeBufferPointer { go(z, $0.baseAddress) }
                }
                if let zeros { zeros.withUnsafeBufferPointer { withRows($0.baseAddress) } } else { withRows(nil) }
            } }
        }
        guard floatOutput else {
            let out: [Int32] = try ws.array(count) { o in
                if count > 0 { product(ints: o.baseAddress, floats: nil, scale: nil, perColumn: false, bias: nil, relu: false) }
            }
            return Outputs(Tensor(shape: shape, int32s: out))
        }
        let one: [Float] = [1]
        guard rowScale else {
            // A scale that is not a row: the product unscaled, then broadcast as Mul does, then
            // the bias and Relu.
            var unscaled: [Float] = try ws.array(count) { o in
                if count > 0 { one.withUnsafeBufferPointer { product(ints: nil, floats: o.baseAddress, scale: $0.baseAddress, perColumn: false, bias: nil, relu: false) } }
            }
            let s = runtimeScale!
            var (outShape, out) = try K.binary(ws, unscaled, shape, s.floats!, s.shape) { $0 * $1 }
            ws.giveBack(unscaled)
            unscaled = []
            if bias != nil || relu {
                let b = bias
                let r = relu
                out.withUnsafeMutableBufferPointer { o in
                    for i in 0..<o.count {
                        var v = o[i]
                        if let b { v += b[i % n] }
                        if r, v < 0 { v = 0 }
                        o[i] = v
                    }
                }
            }
            return Outputs(Tensor(shape: outShape, floats: out))
        }
        var scaleValues: [Float] = one
        if case .constant(let c) = scale { scaleValues = c }
        if let runtimeScale { scaleValues = runtimeScale.floats! }
        let perColumn = scaleValues.count > 1
        let out: [Float] = try ws.array(count) { o in
            guard count > 0 else { return }
            scaleValues.withUnsafeBufferPointer { psc in
                if let bias {
                    bias.withUnsafeBufferPointer { pb in product(ints: nil, floats: o.baseAddress, scale: psc.baseAddress, perColumn: perColumn, bias: pb.baseAddress, relu: relu) }
                } else {
                    product(ints: nil, floats: o.baseAddress, scale: psc.baseAddress, perColumn: perColumn, bias: nil, relu: relu)
                }
            }
        }
        return Outputs(Tensor(shape: shape, floats: out))
    }
}

/// The operators of quantized models: those onnxruntime's dynamic and static quantization
/// write (DynamicQuantizeLinear, MatMulInteger, QuantizeLinear, DequantizeLinear,
/// QLinearMatMul), on uint8 and int8.
enum QuantizedOps {
    static let eightBit: Set<DType> = [.uint8, .int8]

    static let dynamicQuantizeLinear = OperatorSpec(name: "DynamicQuantizeLinear", domain: "ai.onnx", opsets: 11...22) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, [.float32])
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            guard let v = x.floats else { throw EngineError.runtime("x is \(x.dtype), expected float32") }
            var scale: Float = 0
            var zero: UInt8 = 0
            var failed = false
            let y: [UInt8] = try ws.array(v.count) { o in
                v.withUnsafeBufferPointer { p in
                    failed = kaa_quantize_u8(p.baseAddress, p.count, o.baseAddress, &scale, &zero) != 0
                }
            }
            if failed {
                ws.giveBack(y)
                throw EngineError.input("x holds NaN or an infinity, which cannot be quantized to 8 bits; check the inputs")
            }
            let s = scale, z = zero
            let scalar = ws.shape(rank: 0) { _ in }
            return Outputs(Tensor(shape: x.shape, uint8s: y),
                           Tensor(shape: scalar, floats: try ws.array(1) { $0[0] = s }),
                           Tensor(shape: scalar, uint8s: try ws.array(1) { $0[0] = z }))
        }, [.uint8, .float32, .uint8])
    }

    static let matMulInteger = OperatorSpec(name: "MatMulInteger", domain: "ai.onnx", opsets: 10...22) { ctx in
        try ctx.inputs(2, 4)
        let ta = try ctx.input(0, eightBit), tb = try ctx.input(1, eightBit)
        guard try ctx.optionalInput(2) ?? ta == ta else { throw ctx.bad("a_zero_point must have A's type \(ta)") }
        guard try ctx.optionalInput(3) ?? tb == tb else { throw ctx.bad("b_zero_point must have B's type \(tb)") }
        let bZeroKnown = ctx.inputTypes.count < 4 || ctx.inputTypes[3] == nil || ctx.constants[3] != nil
        if let b = ctx.constants[1], b.rank == 2, bZeroKnown, QuantizedMatrix.worthPacking(k: b.shape[0], n: b.shape[1]) {
            let (k, n) = (b.shape[0], b.shape[1])
            let zeros = ctx.constants.count > 3 ? ctx.constants[3].map(QuantizedProduct.zeroPoints) ?? [0] : [0]
            guard zeros.count == 1 || zeros.count == n else {
                throw ctx.bad("b_zero_point has \(zeros.count) elements; it must be a scalar or one per column of B (\(n))")
            }
            let matrix: QuantizedMatrix = switch b.storage {
            case .uint8(let v): v.withUnsafeBytes { QuantizedMatrix($0.baseAddress!, unsigned: true, k: k, n: n, transposed: false, zeroPoints: zeros) }
            case .int8(let v): v.withUnsafeBytes { QuantizedMatrix($0.baseAddress!, unsigned: false, k: k, n: n, transposed: false, zeroPoints: zeros) }
            default: throw ctx.bad("B is \(b.dtype)")
            }
            ctx.absorbed.insert(1)
            if ctx.inputTypes.count > 3, ctx.inputTypes[3] != nil { ctx.absorbed.insert(3) }
            ctx.kernelBytes += matrix.byteCount
            return (QuantizedProductKernel(weights: matrix), [.int32])
        }
        return (ClosureKernel { inputs, ws in
            let a = try K.arg(inputs, 0), b = try K.arg(inputs, 1)
            let aZero = inputs.count > 2 ? inputs[2] : nil, bZero = inputs.count > 3 ? inputs[3] : nil
            let (_, _, _, _, shape) = try MathOps.productShapes(a.shape, b.shape, ws)
            var outShape = shape
            let out: [Int32] = try ws.array(shape.reduce(1, *)) { o in
                outShape = try QuantizedProduct.batched(a: a, aZero: aZero, b: b, bZero: bZero, ws: ws, ints: o.baseAddress, floats: nil)
            }
            return Outputs(Tensor(shape: outShape, int32s: out))
        }, [.int32])
    }

    /// y = saturate(round((A − a_zero)(B − b_zero) · a_scale · b_scale / y_scale) + y_zero).
    static let qLinearMatMul = OperatorSpec(name: "QLinearMatMul", domain: "ai.onnx", opsets: 10...22) { ctx in
        try ctx.inputs(8, 8)
        let ta = try ctx.input(0, eightBit), tb = try ctx.input(3, eightBit), ty = try ctx.input(7, eightBit)
        for i in [1, 4, 6] { _ = try ctx.input(i, [.float32]) }
        guard try ctx.input(2) == ta else { throw ctx.bad("a_zero_point must have A's type \(ta)") }
        guard try ctx.input(5) == tb else { throw ctx.bad("b_zero_point must have B's type \(tb)") }
        return (ClosureKernel { inputs, ws in
            let a = try K.arg(inputs, 0), aScale = try K.arg(inputs, 1), aZero = try K.arg(inputs, 2)
            let b = try K.arg(inputs, 3), bScale = try K.arg(inputs, 4), bZero = try K.arg(inputs, 5)
            let yScale = try K.arg(inputs, 6), yZero = try K.arg(inputs, 7)
            guard aScale.count == 1, yScale.count == 1, yZero.count == 1, aZero.count == 1 else {
                throw EngineError.input("a_scale, a_zero_point, y_scale and y_zero_point must each be one value (per-tensor quantization)")
            }
            let (_, _, n, _, shape) = try MathOps.productShapes(a.shape, b.shape, ws)
            guard bScale.count == 1 || (b.rank == 2 && bScale.count == n) else {
                throw EngineError.input("b_scale has \(bScale.count) elements; it must be one value, or one per column of a 2-D B (\(n))")
            }
            let sa = aScale.floats![0], sy = yScale.floats![0]
            let bs = bScale.floats!
            let multipliers: [Float] = try ws.array(bs.count) { o in for j in 0..<bs.count { o[j] = sa * bs[j] / sy } }
            let count = shape.reduce(1, *)
            var outShape = shape
            let real: [Float] = try ws.array(count) { o in
                outShape = try multipliers.withUnsafeBufferPointer { pm in
                    try QuantizedProduct.batched(a: a, aZero: aZero, b: b, bZero: bZero, ws: ws, scale: pm, ints: nil, floats: o.baseAddress)
                }
            }
            defer { ws.giveBack(real); ws.giveBack(multipliers) }
            let zy = Float(QuantizedProduct.element(yZero, 0))
            let (lo, hi): (Float, Float) = ty == .uint8 ? (0, 255) : (-128, 127)
            // Rounded, shifted and saturated; NaN (from a NaN scale) becomes the zero point.
            func q(_ i: Int) -> Float {
                let v = real[i].rounded(.toNearestOrEven) + zy
                return v.isNaN ? zy : min(max(v, lo), hi)
            }
            let storage: Tensor.Storage = ty == .uint8
                ? .uint8(try ws.array(count) { o in for i in 0..<count { o[i] = UInt8(q(i)) } })
                : .int8(try ws.array(count) { o in for i in 0..<count { o[i] = Int8(q(i)) } })
            return Outputs(Tensor(shape: outShape, storage: storage))
        }, [ty])
    }

    /// Reads the per-axis attributes QuantizeLinear and DequantizeLinear share and returns the
    /// axis (normalized at run time) and whether blocked quantization was asked for.
    static func axisAttributes(_ ctx: inout BuildContext) throws -> Int {
        let axis = try ctx.attributes.int("axis", default: 1)
        if try ctx.attributes.int("block_size", default: 0) != 0 {
            throw EngineError.unsupported("\(ctx.owner): blocked quantization (block_size) is not supported")
        }
        return axis
    }

    /// For element `i` of a value of `shape`, the index into a per-axis parameter of `count`
    /// values (1: per tensor).
    static func parameterIndex(shape: [Int], axis: Int, count: Int) throws -> (inner: Int, dim: Int)? {
        guard count > 1 else { return nil }
        let r = shape.count
        let ax = axis < 0 ? axis + r : axis
        guard ax >= 0, ax < r, shape[ax] == count else {
            throw EngineError.input("a scale of \(count) values does not match axis \(axis) of shape \(shape)")
        }
        return (shape[(ax + 1)...].reduce(1, *), count)
    }

    static let quantizeLinear = OperatorSpec(name: "QuantizeLinear", domain: "ai.onnx", opsets: 10...22) { ctx in
        try ctx.inputs(2, 3)
        _ = try ctx.input(0, [.float32, .int32])
        _ = try ctx.input(1, [.float32])
        let axis = try axisAttributes(&ctx)
        _ = try ctx.attributes.int("saturate", default: 1)
        let declared = try ctx.attributes.int("output_dtype", default: 0)
        var out = DType.uint8
        if let z = try ctx.optionalInput(2) {
            guard eightBit.contains(z) else { throw EngineError.unsupported("\(ctx.owner): y_zero_point is \(z); supported: uint8, int8") }
            out = z
        } else if declared != 0 {
            guard let d = DType(rawValue: declared), eightBit.contains(d) else {
                throw EngineError.unsupported("\(ctx.owner): output_dtype \(DType.onnxName(declared)) is not supported; supported: uint8, int8")
            }
            out = d
        }
        let ty = out
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0), s = try K.arg(inputs, 1)
            let z = inputs.count > 2 ? inputs[2] : nil
            let scales = s.floats!
            guard z == nil || z!.count == s.count else { throw EngineError.input("y_zero_point has \(z!.count) elements, y_scale \(s.count)") }
            let per = try parameterIndex(shape: x.shape, axis: axis, count: s.count)
            let (xv, converted) = try K.floats(x, ws)
            defer { if converted { ws.giveBack(xv) } }
            let n = x.count
            let (lo, hi): (Float, Float) = ty == .uint8 ? (0, 255) : (-128, 127)
            func q(_ i: Int) -> Float {
                let c = per.map { (i / $0.inner) % $0.dim } ?? 0
                let zp = z.map { Float(QuantizedProduct.element($0, c)) } ?? 0
                let v = (xv[i] / scales[c]).rounded(.toNearestOrEven) + zp
                return v.isNaN ? zp : min(max(v, lo), hi)
            }
            let storage: Tensor.Storage = ty == .uint8
                ? .uint8(try ws.array(n) { o in for i in 0..<n { o[i] = UInt8(q(i)) } })
                : .int8(try ws.array(n) { o in for i in 0..<n { o[i] = Int8(q(i)) } })
            return Outputs(Tensor(shape: x.shape, storage: storage))
        }, [ty])
    }

    static let dequantizeLinear = OperatorSpec(name: "DequantizeLinear", domain: "ai.onnx", opsets: 10...22) { ctx in
        try ctx.inputs(2, 3)
        let tx = try ctx.input(0, [.uint8, .int8, .int32])
        _ = try ctx.input(1, [.float32])
        guard try ctx.optionalInput(2) ?? tx == tx else { throw ctx.bad("x_zero_point must have x's type \(tx)") }
        let axis = try axisAttributes(&ctx)
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0), s = try K.arg(inputs, 1)
            let z = inputs.count > 2 ? inputs[2] : nil
            let scales = s.floats!
            guard z == nil || z!.count == s.count else { throw EngineError.input("x_zero_point has \(z!.count) elements, x_scale \(s.count)") }
            let per = try parameterIndex(shape: x.shape, axis: axis, count: s.count)
            let n = x.count
            let out: [Float] = try ws.array(n) { o in
                for i in 0..<n {
                    let c = per.map { (i / $0.inner) % $0.dim } ?? 0
                    let zp = z.map { QuantizedProduct.element($0, c) } ?? 0
                    o[i] = Float(Int64(QuantizedProduct.element(x, i)) - Int64(zp)) * scales[c]
                }
            }
            return Outputs(Tensor(shape: x.shape, floats: out))
        }, [.float32])
    }

    static let specs: [OperatorSpec] = [dynamicQuantizeLinear, matMulInteger, qLinearMatMul, quantizeLinear, dequantizeLinear]
}
