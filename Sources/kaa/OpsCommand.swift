import ArgumentParser
import Foundation
import KaaEngine

extension Kaa {
    /// `kaa ops`: the operators the engine runs, by domain, with their opset ranges.
    struct Ops: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ops",
            abstract: "List the ONNX operators the engine supports, with their opset ranges, and the kernels' instruction-set level.",
            discussion: "The kernels run at the highest level the CPU has (avx512, avx2, baseline); the environment variable KAA_ENGINE_LEVEL names a lower one.")

        @Flag(help: "Print JSON for scripts instead of a table.")
        var json = false

        func run() throws {
            let ops = SupportedOperator.all
            if json {
                let rows = ops.map { ["domain": $0.domain, "name": $0.name, "min_opset": $0.minOpset, "max_opset": $0.maxOpset] as [String: Any] }
                let data = try JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            let width = max(ops.map(\.name.count).max() ?? 0, 8)
            print("DOMAIN         " + "OPERATOR".padding(toLength: width + 2, withPad: " ", startingAt: 0) + "OPSETS")
            for op in ops {
                print(op.domain.padding(toLength: 15, withPad: " ", startingAt: 0)
                    + op.name.padding(toLength: width + 2, withPad: " ", startingAt: 0)
                    + "\(op.minOpset)-\(op.maxOpset)")
            }
            print("\(ops.count) operators")
            print(EngineLevel.summary)
        }
    }
}
