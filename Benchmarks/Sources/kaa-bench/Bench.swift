// kaa-bench MODEL.onnx INPUT.bin... : times Model.run at batch 1, 64 and 256.
//
// Each input file is raw little-endian float32 rows of one input, named NAME=PATH:COLS (at
// least 256 rows). Prints one line per batch size: `batch=B median_ns=N calls=C`, after a line
// `level=L` naming the kernels' instruction-set level (KAA_ENGINE_LEVEL chooses a lower one).
// With KAA_BENCH_PROFILE set, it runs batch 1 only, 200,000 calls: long enough to profile
// (`perf record -g`) the per-call cost of a small model.
//
// kaa-bench --memory MODEL.onnx [COPIES] : what a loaded model really holds against what it
// counts. Loads the model COPIES times (default 2,000), keeping every copy, and prints the
// process's resident-set growth per copy next to `Model.memoryBytes`, the figure the node's
// memory budget counts. Run one model per process: memory freed by an earlier model would be
// reused and hide growth.
//
// kaa-bench --quantize-int8 IN.onnx OUT.onnx : writes the int8 model `kaa snapshot build
// --quantize int8` would build from IN (Quantization.int8), for the int8 rows of
// tools/bench-engine.sh, and prints which products it quantized.
import Foundation
import KaaEngine

@main
struct Bench {
    static func main() throws {
        let args = CommandLine.arguments
        if args.count >= 3, args[1] == "--memory" {
            return try memory(path: args[2], copies: args.count > 3 ? Int(args[3]) ?? 2_000 : 2_000)
        }
        if args.count == 4, args[1] == "--quantize-int8" {
            let (bytes, report) = try Quantization.int8(onnx: Data(contentsOf: URL(fileURLWithPath: args[2])))
            try bytes.write(to: URL(fileURLWithPath: args[3]))
            for p in report.products { print("\(p.node) \(p.k)x\(p.n): \(p.keptFloat.map { "float32 (\($0))" } ?? "int8")") }
            return
        }
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
        print("level=\(EngineLevel.current)")
        for (batch, calls) in (ProcessInfo.processInfo.environment["KAA_BENCH_PROFILE"] != nil
            ? [(1, 200_000)] : [(1, 20_000), (64, 2_000), (256, 1_000)]) {
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

    static func memory(path: String, copies: Int) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        _ = try Model(onnx: data) // first-use costs (metadata, caches) outside the count
        let before = residentBytes()
        var kept: [Model] = []
        kept.reserveCapacity(copies)
        for _ in 0..<copies { kept.append(try Model(onnx: data)) }
        let grown = residentBytes() - before
        print("model=\(path) file_bytes=\(data.count) copies=\(copies) resident_bytes_per_copy=\(grown / copies) counted_bytes=\(kept[0].memoryBytes)")
    }

    static func residentBytes() -> Int {
        let statm = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? "0 0"
        return (Int(statm.split(separator: " ")[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
