// kaa-bench MODEL.onnx INPUT.bin... : times Model.run at batch 1 and batch 64.
//
// Each input file is raw little-endian float32 rows of one input, named NAME=PATH:COLS.
// Prints one line per batch size: `batch=B median_ns=N calls=C`.
// With KAA_BENCH_PROFILE set, it runs batch 1 only, 200,000 calls: long enough to profile
// (`perf record -g`) the per-call cost of a small model.
import Foundation
import KaaEngine

@main
struct Bench {
    static func main() throws {
        let args = CommandLine.arguments
        guard args.count >= 3 else {
            FileHandle.standardError.write(Data("usage: kaa-bench MODEL.onnx NAME=PATH:COLS [...]\n".utf8))
            exit(2)
        }
        let model = try Model(onnx: Data(contentsOf: URL(fileURLWithPath: args[1])))
        var columns: [(String, [Float], Int)] = []
        for spec in args[2...] {
            let (name, rest) = (String(spec.split(separator: "=")[0]), spec.split(separator: "=")[1])
            let parts = rest.split(separator: ":")
            let data = try Data(contentsOf: URL(fileURLWithPath: String(parts[0])))
            let floats = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            columns.append((name, floats, Int(parts[1])!))
        }
        for (batch, calls) in (ProcessInfo.processInfo.environment["KAA_BENCH_PROFILE"] != nil ? [(1, 200_000)] : [(1, 20_000), (64, 2_000)]) {
            var inputs: [String: Tensor] = [:]
            for (name, values, cols) in columns {
                inputs[name] = Tensor(shape: [batch, cols], floats: Array(values.prefix(batch * cols)))
            }
            // Outputs handed back each call, as a serving loop does: a warm run allocates nothing.
            var out: [String: Tensor] = [:]
            for _ in 0..<500 { try model.run(inputs, into: &out) }
            var times: [UInt64] = []
            times.reserveCapacity(calls)
            for _ in 0..<calls {
                let t0 = DispatchTime.now().uptimeNanoseconds
                try model.run(inputs, into: &out)
                times.append(DispatchTime.now().uptimeNanoseconds - t0)
            }
            times.sort()
            print("batch=\(batch) median_ns=\(times[calls / 2]) calls=\(calls)")
        }
    }
}
