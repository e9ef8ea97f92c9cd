import Foundation
@testable import KaaEngine
import Testing

/// The fast tree walks (row blocks, tree groups, whole-tree programs) against the row-by-row
/// walk that the onnxruntime fixtures check (``TreeEnsembleTests``), on seeded random trees
/// of one branch mode each, with NaNs and values equal to thresholds. The fast walks add
/// each row's weights in the same order, so results must be identical, not just close.
@Suite struct TreeWalkTests {
    struct Random {
        var state: UInt64
        mutating func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(n))
        }
    }

    /// Values that land on thresholds, between them, and NaN.
    static let values: [Float] = [-1, -0.5, 0, 0.5, 1, 0.25, -0.75, .nan]

    struct Forest {
        var nodes: [(tree: Int, id: Int, feature: Int, mode: String, value: Float, t: Int, f: Int, missing: Int)] = []
        var weights: [(tree: Int, node: Int, target: Int, weight: Float)] = []
    }

    /// `trees` random trees up to `depth` deep over `features` features; leaves carry one
    /// weight for a random target below `targets`, or (with `everyTarget`) one for each.
    static func forest(_ random: inout Random, trees: Int, depth: Int, features: Int, mode: String, missing: Int,
                       targets: Int, everyTarget: Bool) -> Forest {
        var forest = Forest()
        for tree in 0..<trees {
            var next = 0
            func grow(_ level: Int) -> Int {
                let id = next
                next += 1
                let index = forest.nodes.count
                if level == depth || (level > 0 && random.next(4) == 0) {
                    forest.nodes.append((tree, id, 0, "LEAF", 0, 0, 0, 0))
                    for target in everyTarget ? Array(0..<targets) : [random.next(targets)] {
                        forest.weights.append((tree, id, target, Float(random.next(2001) - 1000) / 256))
                    }
                    return id
                }
                forest.nodes.append((tree, id, random.next(features), mode, values[random.next(5)], 0, 0, missing))
                let t = grow(level + 1), f = grow(level + 1)
                forest.nodes[index].t = t
                forest.nodes[index].f = f
                return id
            }
            _ = grow(0)
        }
        return forest
    }

    static func ensemble(_ forest: Forest, targets: Int) throws -> TreeEnsemble {
        var node = Onnx_NodeProto()
        node.opType = "TreeEnsembleRegressor"
        func ints(_ name: String, _ v: [Int]) -> Onnx_AttributeProto {
            var a = Onnx_AttributeProto(); a.name = name; a.type = .ints; a.ints = v.map(Int64.init); return a
        }
        func floats(_ name: String, _ v: [Float]) -> Onnx_AttributeProto {
            var a = Onnx_AttributeProto(); a.name = name; a.type = .floats; a.floats = v; return a
        }
        var modes = Onnx_AttributeProto()
        modes.name = "nodes_modes"
        modes.type = .strings
        modes.strings = forest.nodes.map { Data($0.mode.utf8) }
        node.attribute = [
            ints("nodes_treeids", forest.nodes.map(\.tree)), ints("nodes_nodeids", forest.nodes.map(\.id)),
            ints("nodes_featureids", forest.nodes.map(\.feature)), modes, floats("nodes_values", forest.nodes.map(\.value)),
            ints("nodes_truenodeids", forest.nodes.map(\.t)), ints("nodes_falsenodeids", forest.nodes.map(\.f)),
            ints("nodes_missing_value_tracks_true", forest.nodes.map(\.missing)),
            ints("target_treeids", forest.weights.map(\.tree)), ints("target_nodeids", forest.weights.map(\.node)),
            ints("target_ids", forest.weights.map(\.target)), floats("target_weights", forest.weights.map(\.weight)),
        ]
        var attributes = try Attributes(node, owner: "test")
        let ctx = BuildContext(owner: "test", opset: 3, attributes: attributes, inputTypes: [.float32], constants: [nil], outputCount: 1)
        return try TreeEnsemble(&attributes, ctx, prefix: "target", outputs: targets)
    }

    /// What the row-by-row walk gives.
    static func reference(_ e: TreeEnsemble, _ x: [Float], rows n: Int, cols c: Int, k: Int, _ aggregate: TreeEnsemble.Aggregate) -> [Float] {
        var out = [Float](repeating: 0, count: n * k)
        var has = [Bool](repeating: false, count: n * k)
        x.withUnsafeBufferPointer { px in out.withUnsafeMutableBufferPointer { po in has.withUnsafeMutableBufferPointer { ph in
            e.walkModes(px, n, c, TreeEnsemble.Sink(out: po, has: ph, k: k, aggregate: aggregate))
        } } }
        if aggregate == .average { for i in out.indices { out[i] /= Float(e.roots.count) } }
        return out
    }

    @Test(arguments: ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT"])
    func fastWalksMatchTheRowByRowWalk(mode: String) throws {
        for missing in [0, 1] {
            // Shallow trees (whole-tree programs from 8 rows) with one target, with two targets
            // and every leaf weighing both, with three and one weight per leaf; deep trees (walks
            // only). MIN and MAX take the walk's general sink.
            for (depth, targets, everyTarget) in [(3, 1, false), (4, 2, true), (4, 3, false), (12, 1, false)] {
                var random = Random(state: UInt64(mode.count * 100 + missing * 10 + depth))
                let forest = Self.forest(&random, trees: 37, depth: depth, features: 5, mode: mode, missing: missing,
                                         targets: targets, everyTarget: everyTarget)
                let e = try Self.ensemble(forest, targets: targets)
                #expect(e.comparison != nil)
                #expect((e.singleTarget != nil) == (targets == 1) && (e.leafVectors != nil) == (targets > 1))
                #expect((e.program != nil) == (depth < 12))
                for n in [1, 3, 5, 8, 13, 64, 200] {
                    let x = (0..<n * 5).map { _ in Self.values[random.next(Self.values.count)] }
                    for aggregate in [TreeEnsemble.Aggregate.sum, .average, .min, .max] {
                        let got = try e.scores(x, rows: n, cols: 5, outputs: targets, aggregate: aggregate, base: [], Workspace())
                        let want = Self.reference(e, x, rows: n, cols: 5, k: targets, aggregate)
                        #expect(got == want, "\(mode) missing=\(missing) depth=\(depth) targets=\(targets) rows=\(n) \(aggregate)")
                    }
                }
            }
        }
    }
}
