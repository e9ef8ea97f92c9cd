import CKaaKernels
import Foundation
@testable import KaaEngine
import Testing

/// The vectorized elementwise kernels (CKaaKernels `elementwise.c`) at the level this process
/// runs (CI runs the engine's tests again at each lower level), against plain Swift.
@Suite struct ElementwiseTests {
    /// The Scaler gives exactly (x − offset) · scale, for every row width around the vector
    /// widths (4, 8, 16) and a single or per-column offset and scale.
    @Test(arguments: [1, 3, 4, 7, 8, 15, 16, 17, 33, 64])
    func scalerIsExact(width: Int) throws {
        var values = GemmTests.Values(state: UInt64(width))
        let rows = 5
        let x = values.array(rows * width), offset = values.array(width), scale = values.array(width)
        var out = [Float](repeating: .nan, count: rows * width)
        kaa_scale_columns(x, rows, width, offset, scale, &out)
        for i in out.indices { #expect(out[i] == (x[i] - offset[i % width]) * scale[i % width], "element \(i)") }
    }

    /// Softmax and log-softmax stay within a few ulp of the expf-based definition, including
    /// arguments far below the row's maximum (whose exponentials vanish).
    @Test(arguments: [1, 2, 3, 10, 16, 17, 100])
    func softmaxIsCloseToItsDefinition(n: Int) throws {
        var values = GemmTests.Values(state: UInt64(n) * 31)
        let rows = 4
        var x = values.array(rows * n).map { $0 * 40 }
        if n > 2 { x[1] = -200 }
        for log in [false, true] {
            var out = [Float](repeating: .nan, count: rows * n)
            #expect(kaa_softmax_rows(x, rows, n, &out, log ? 1 : 0) == 0)
            for r in 0..<rows {
                let row = x[(r * n)..<((r + 1) * n)].map(Double.init)
                let m = row.max()!
                let sum = row.reduce(0) { $0 + Foundation.exp($1 - m) }
                for j in 0..<n {
                    let want = log ? row[j] - m - Foundation.log(sum) : Foundation.exp(row[j] - m) / sum
                    let got = Double(out[r * n + j])
                    // Float rounds x − max (relative error up to 2^-24 · |x − max| in the
                    // exponential) and log-softmax's last subtraction (absolute, of the row's size).
                    let tolerance = log ? 4e-7 * max(1, abs(want)) : (4e-7 + 1.2e-7 * (m - row[j])) * want + 1e-37
                    #expect(abs(got - want) <= tolerance, "row \(r) element \(j): \(got), expected \(want)")
                }
            }
        }
    }

    /// A row with NaN or an infinity is declined, and the Softmax operator then computes the
    /// tensor the way it defines those cases.
    @Test func softmaxDeclinesNonFiniteRows() throws {
        for bad in [Float.nan, .infinity, -.infinity] {
            var out = [Float](repeating: 0, count: 3)
            #expect(kaa_softmax_rows([1, bad, 2], 1, 3, &out, 0) == -1)
        }
        let m = try GemmTests.model([LoaderErrorTests.node("Softmax", ["x"], ["y"])], x: [2, 3], constants: [], asInputs: false)
        let y = try #require(try m.run(["x": Tensor(shape: [2, 3], floats: [1, 2, 3, 0, .infinity, 1])])["y"]?.floats)
        let first = [1, 2, 3].map { Foundation.exp(Double($0) - 3) }
        for j in 0..<3 { #expect(abs(Double(y[j]) - first[j] / first.reduce(0, +)) < 1e-6) }
        #expect(y[3...].contains { $0.isNaN }, "\(y)")
    }
}
