/// TreeEnsembleClassifier and TreeEnsembleRegressor (ai.onnx.ml), flattened at load into
/// arrays of nodes.
///
/// Rows are scored tree by tree over blocks of rows: one tree's nodes stay in cache while the
/// block's walks, independent of each other, overlap in the CPU. When every branch compares the
/// same way (after swapping children, see ``Comparison``), the walk is branch-free over
/// ``walk``; otherwise each node's mode is read as it is reached.
struct TreeEnsemble: Sendable {
    enum Mode: String, Sendable { case leq = "BRANCH_LEQ", lt = "BRANCH_LT", gte = "BRANCH_GTE", gt = "BRANCH_GT", eq = "BRANCH_EQ", neq = "BRANCH_NEQ", leaf = "LEAF" }
    enum Aggregate: String, Sendable { case sum = "SUM", average = "AVERAGE", min = "MIN", max = "MAX" }

    var feature: [Int] = []
    var threshold: [Float] = []
    var mode: [Mode] = []
    var trueChild: [Int] = []
    var falseChild: [Int] = []
    var missingTrue: [Bool] = []
    /// For each node, its leaf weights as (target, weight) pairs.
    var leafWeights: [[(Int, Float)]] = []
    var roots: [Int] = []
    var featureCount = 0
    /// The nodes packed for the walk: one struct per node, leaves' weights in flat arrays.
    struct Node: Sendable {
        var feature: Int32
        var mode: Mode
        var missingTrue: Bool
        var threshold: Float
        var trueChild: Int32
        var falseChild: Int32
        var weightStart: Int32
        var weightEnd: Int32
    }
    var packed: [Node] = []
    var weightTarget: [Int] = []
    var weightValue: [Float] = []

    /// How every branch of the ensemble compares, once GTE and GT nodes have their children
    /// swapped: `v <= t`, `v < t`, or their negations `!(v > t)`, `!(v >= t)`, which send NaN
    /// to the true child.
    enum Comparison: Sendable { case leq, lt, notGT, notGE }
    /// A node for the branch-free walk: 16 bytes. A leaf reads feature 0 and has itself as
    /// both children, so a walk may run past it for the rest of its tree's depth; its threshold
    /// is free for its weight (see ``singleTarget``).
    struct WalkNode: Sendable {
        var feature: Int32
        var threshold: Float
        var trueChild: Int32
        var falseChild: Int32
    }
    /// Set when every branch compares the same way; `nil` sends walks through ``leaf``.
    var comparison: Comparison?
    var walk: [WalkNode] = []
    /// Longest root-to-leaf path of each tree, in edges.
    var depths: [Int] = []
    /// Set when every weight is for this one target and no leaf has two: then a leaf's
    /// ``WalkNode/threshold`` holds its weight (0 for none).
    var singleTarget: Int?
    /// The bytes of every table the ensemble keeps (the node arrays in each form, the leaf
    /// weights, the program), with each array's header.
    var heldBytes: Int {
        K.arrayBytes(feature) + K.arrayBytes(threshold) + K.arrayBytes(mode) + K.arrayBytes(trueChild)
            + K.arrayBytes(falseChild) + K.arrayBytes(missingTrue) + K.arrayBytes(roots) + K.arrayBytes(packed)
            + K.arrayBytes(weightTarget) + K.arrayBytes(weightValue) + K.arrayBytes(walk) + K.arrayBytes(depths)
            + K.arrayBytes(leafWeights) + leafWeights.reduce(0) { $0 + K.arrayBytes($1) }
            + K.arrayBytes(leafVectors ?? []) + (program?.heldBytes ?? 0)
    }

    /// The trees as a ``TreeProgram``, when there is a ``singleTarget`` or ``leafVectors``
    /// and they are shallow enough for it.
    var program: TreeProgram?
    /// Each leaf's weights as one vector, when there are at most 8 targets, no
    /// ``singleTarget`` and no leaf has two weights for one target: then a leaf's
    /// ``WalkNode/threshold`` holds its vector's index.
    var leafVectors: [SIMD8<Float>]?

    /// Reads the node arrays common to both operators; `prefix` is `class` or `target`.
    init(_ a: inout Attributes, _ ctx: BuildContext, prefix: String, outputs: Int) throws {
        let treeIds = try a.int64s("nodes_treeids") ?? []
        let nodeIds = try a.int64s("nodes_nodeids") ?? []
        let features = try a.int64s("nodes_featureids") ?? []
        let modes = try a.strings("nodes_modes") ?? []
        var values = try a.floats("nodes_values") ?? []
        if let t = try a.tensor("nodes_values_as_tensor") { values = try K.floats(t) }
        let trues = try a.int64s("nodes_truenodeids") ?? []
        let falses = try a.int64s("nodes_falsenodeids") ?? []
        let missing = try a.int64s("nodes_missing_value_tracks_true") ?? []
        _ = try a.floats("nodes_hitrates")
        _ = try a.tensor("nodes_hitrates_as_tensor")
        let n = treeIds.count
        guard n > 0 else { throw ctx.bad("has no nodes") }
        for (name, count) in [("nodes_nodeids", nodeIds.count), ("nodes_featureids", features.count), ("nodes_modes", modes.count),
                              ("nodes_values", values.count), ("nodes_truenodeids", trues.count), ("nodes_falsenodeids", falses.count)] where count != n {
            throw ctx.bad("\(name) has \(count) entries, nodes_treeids has \(n)")
        }
        guard missing.isEmpty || missing.count == n else { throw ctx.bad("nodes_missing_value_tracks_true has \(missing.count) entries for \(n) nodes") }
        var index: [Pair: Int] = [:]
        for i in 0..<n {
            guard index.updateValue(i, forKey: Pair(treeIds[i], nodeIds[i])) == nil else {
                throw ctx.bad("node \(nodeIds[i]) of tree \(treeIds[i]) is defined twice")
            }
        }
        var isChild = Set<Int>()
        for i in 0..<n {
            guard let m = Mode(rawValue: modes[i]) else { throw ctx.bad("node mode `\(modes[i])` is unknown") }
            mode.append(m)
            feature.append(Int(features[i]))
            threshold.append(values[i])
            missingTrue.append(missing.isEmpty ? false : missing[i] != 0)
            if m == .leaf {
                trueChild.append(-1); falseChild.append(-1)
            } else {
                guard features[i] >= 0, features[i] < 1 << 24 else { throw ctx.bad("node \(nodeIds[i]) of tree \(treeIds[i]) reads feature \(features[i])") }
                guard let t = index[Pair(treeIds[i], trues[i])], let f = index[Pair(treeIds[i], falses[i])] else {
                    throw ctx.bad("node \(nodeIds[i]) of tree \(treeIds[i]) points to a child that does not exist")
                }
                trueChild.append(t); falseChild.append(f)
                isChild.insert(t); isChild.insert(f)
                featureCount = max(featureCount, Int(features[i]) + 1)
            }
        }
        var seenTree = Set<Int64>()
        for i in 0..<n where !isChild.contains(i) {
            guard seenTree.insert(treeIds[i]).inserted else { throw ctx.bad("tree \(treeIds[i]) has more than one root") }
            roots.append(i)
        }
        // A walk must end: reject cycles, and trees deeper than a walk may go.
        guard !roots.isEmpty else { throw ctx.bad("has no roots") }
        depths = try Self.depths(roots, trueChild, falseChild, ctx)

        let wTrees = try a.int64s("\(prefix)_treeids") ?? []
        let wNodes = try a.int64s("\(prefix)_nodeids") ?? []
        let wIds = try a.int64s("\(prefix)_ids") ?? []
        var weights = try a.floats("\(prefix)_weights") ?? []
        if let t = try a.tensor("\(prefix)_weights_as_tensor") { weights = try K.floats(t) }
        guard wNodes.count == wTrees.count, wIds.count == wTrees.count, weights.count == wTrees.count else {
            throw ctx.bad("\(prefix)_treeids, _nodeids, _ids and _weights have different lengths")
        }
        leafWeights = [[(Int, Float)]](repeating: [], count: n)
        for i in wTrees.indices {
            guard let node = index[Pair(wTrees[i], wNodes[i])] else { throw ctx.bad("\(prefix) weight \(i) names a node that does not exist") }
            guard wIds[i] >= 0, wIds[i] < outputs else { throw ctx.bad("\(prefix)_ids has \(wIds[i]); there are \(outputs) outputs") }
            leafWeights[node].append((Int(wIds[i]), weights[i]))
        }
        guard n < Int(Int32.max) / 2, wTrees.count < Int(Int32.max) / 2 else { throw ctx.bad("has too many nodes") }
        for i in 0..<n {
            let start = Int32(weightTarget.count)
            for (t, w) in leafWeights[i] { weightTarget.append(t); weightValue.append(w) }
            packed.append(Node(feature: Int32(feature[i]), mode: mode[i], missingTrue: missingTrue[i], threshold: threshold[i],
                               trueChild: Int32(trueChild[i]), falseChild: Int32(falseChild[i]),
                               weightStart: start, weightEnd: Int32(weightTarget.count)))
        }
        (comparison, walk) = Self.walkNodes(packed)
        // One target for every weight, at most one weight per leaf (a regressor's, a binary
        // classifier's): leaves carry their weight in the walk node's unused threshold.
        let targets = Set(weightTarget)
        if comparison != nil, targets.count == 1, packed.allSatisfy({ $0.mode != .leaf || $0.weightEnd - $0.weightStart <= 1 }) {
            singleTarget = targets.first
            for i in 0..<n where packed[i].mode == .leaf {
                walk[i].threshold = packed[i].weightEnd > packed[i].weightStart ? weightValue[Int(packed[i].weightStart)] : 0
            }
            program = TreeProgram(walk: walk, roots: roots, depths: depths)
        } else if comparison != nil, outputs <= 8, packed.allSatisfy({ node in
            node.mode != .leaf || Set(weightTarget[Int(node.weightStart)..<Int(node.weightEnd)]).count == Int(node.weightEnd - node.weightStart)
        }) {
            // At most one weight per target on each leaf (a random forest classifier's): the
            // leaf's weights as one vector, numbered in the walk node's threshold.
            var vectors: [SIMD8<Float>] = []
            for i in 0..<n where packed[i].mode == .leaf {
                var v = SIMD8<Float>(repeating: 0)
                for e in Int(packed[i].weightStart)..<Int(packed[i].weightEnd) { v[weightTarget[e]] = weightValue[e] }
                walk[i].threshold = Float(vectors.count)
                vectors.append(v)
            }
            leafVectors = vectors
            program = TreeProgram(walk: walk, roots: roots, depths: depths)
        }
    }

    struct Pair: Hashable { let t: Int64, n: Int64; init(_ t: Int64, _ n: Int64) { self.t = t; self.n = n } }

    /// The most levels a tree may have: a walk takes at most this many steps.
    static let maxDepth = 10_000

    /// The longest root-to-leaf path of each tree at `roots`, in edges. Throws when a path is
    /// cyclic or longer than ``maxDepth``.
    ///
    /// Each node is visited once (a depth-first search that remembers each node's depth), so
    /// the cost is linear in the nodes even when children are shared: following every path
    /// instead would take 2^depth steps for a chain of nodes whose two children are the same.
    static func depths(_ roots: [Int], _ t: [Int], _ f: [Int], _ ctx: BuildContext) throws -> [Int] {
        // Per node: -2 not visited, -1 on the current path, else its height (edges to its deepest leaf).
        var height = [Int](repeating: -2, count: t.count)
        var stack: [Int] = []
        for root in roots where height[root] == -2 {
            stack.append(root)
            while let node = stack.last {
                if height[node] == -2 {
                    // First visit: descend into the children not yet known.
                    height[node] = -1
                    guard t[node] >= 0 else { height[node] = 0; stack.removeLast(); continue }
                    for child in [t[node], f[node]] {
                        switch height[child] {
                        case -1: throw ctx.bad("a tree is cyclic: node \(child) is its own descendant")
                        case -2: stack.append(child)
                        default: break
                        }
                    }
                } else {
                    // Both children are known now.
                    stack.removeLast()
                    if height[node] == -1 { height[node] = 1 + max(height[t[node]], height[f[node]]) }
                }
                if height[node] >= 0, height[node] > maxDepth { throw ctx.bad("a tree is deeper than \(maxDepth) levels") }
            }
        }
        return roots.map { height[$0] }
    }

    /// The leaf a row reaches in the tree at `root`.
    @inline(__always)
    static func leaf(_ root: Int, _ nodes: UnsafeBufferPointer<Node>, _ x: UnsafePointer<Float>) -> Int {
        var i = root
        while true {
            let node = nodes[i]
            let m = node.mode
            if m == .leaf { return i }
            let v = x[Int(node.feature)], th = node.threshold
            let go: Bool
            if v.isNaN {
                go = node.missingTrue || m == .neq
            } else {
                switch m {
                case .leq: go = v <= th
                case .lt: go = v < th
                case .gte: go = v >= th
                case .gt: go = v > th
                case .eq: go = v == th
                case .neq: go = v != th
                case .leaf: go = false
                }
            }
            i = Int(go ? node.trueChild : node.falseChild)
        }
    }

    /// The nodes for the branch-free walk, and the one comparison all branches make; `nil`
    /// (and no nodes) when branches compare in different ways or by (in)equality.
    static func walkNodes(_ nodes: [Node]) -> (Comparison?, [WalkNode]) {
        var common: Comparison?
        var walk: [WalkNode] = []
        walk.reserveCapacity(nodes.count)
        for (i, node) in nodes.enumerated() {
            let c: Comparison
            var swap = false
            switch (node.mode, node.missingTrue) {
            case (.leaf, _):
                walk.append(WalkNode(feature: 0, threshold: 0, trueChild: Int32(i), falseChild: Int32(i)))
                continue
            case (.leq, false): c = .leq
            case (.leq, true): c = .notGT
            case (.lt, false): c = .lt
            case (.lt, true): c = .notGE
            // v >= t is !(v < t) but for NaN; NaN then goes to the swapped-in child it should.
            case (.gte, false): c = .notGE; swap = true
            case (.gte, true): c = .lt; swap = true
            case (.gt, false): c = .notGT; swap = true
            case (.gt, true): c = .leq; swap = true
            case (.eq, _), (.neq, _): return (nil, [])
            }
            if let common, common != c { return (nil, []) }
            common = c
            walk.append(WalkNode(feature: node.feature, threshold: node.threshold,
                                 trueChild: swap ? node.falseChild : node.trueChild,
                                 falseChild: swap ? node.trueChild : node.falseChild))
        }
        return (common, walk)
    }

    /// Walks in flight at once: (row, tree) pairs whose chains of dependent loads overlap.
    static let lanes = 16

    /// Scores of every row: aggregate of the reached leaves' weights, plus base values.
    func scores(_ x: [Float], rows n: Int, cols c: Int, outputs k: Int, aggregate: Aggregate, base: [Float], _ ws: Workspace) throws -> [Float] {
        guard c >= featureCount else { throw EngineError.input("input has \(c) features; the trees read feature \(featureCount - 1)") }
        guard x.count >= n * c else { throw EngineError.runtime("input has \(x.count) values for \(n) rows of \(c)") }
        let count = try K.product(n, k, "scoring \(n) rows of \(k) outputs")
        var out = try ws.array(count, repeating: Float(0))
        var has = aggregate == .min || aggregate == .max ? try ws.array(count, repeating: false) : []
        defer { ws.giveBack(has) }
        x.withUnsafeBufferPointer { px in out.withUnsafeMutableBufferPointer { po in has.withUnsafeMutableBufferPointer { ph in
            let sink = Sink(out: po, has: ph, k: k, aggregate: aggregate)
            if let program, n >= TreeProgram.rows, aggregate == .sum || aggregate == .average {
                let x = px.baseAddress!
                (leafVectors ?? []).withUnsafeBufferPointer { vectors in
                    let leaves: TreeProgram.Leaves = singleTarget.map { .weights(target: $0) } ?? .vectors(vectors)
                    switch comparison {
                    case .leq: program.run(Leq.self, x, rows: n, cols: c, into: po, k: k, leaves: leaves)
                    case .lt: program.run(Lt.self, x, rows: n, cols: c, into: po, k: k, leaves: leaves)
                    case .notGT: program.run(NotGT.self, x, rows: n, cols: c, into: po, k: k, leaves: leaves)
                    case .notGE: program.run(NotGE.self, x, rows: n, cols: c, into: po, k: k, leaves: leaves)
                    case nil: break
                    }
                }
                return
            }
            switch comparison {
            case .leq: walkBlocks(Leq.self, px, n, c, sink)
            case .lt: walkBlocks(Lt.self, px, n, c, sink)
            case .notGT: walkBlocks(NotGT.self, px, n, c, sink)
            case .notGE: walkBlocks(NotGE.self, px, n, c, sink)
            case nil: walkModes(px, n, c, sink)
            }
        } } }
        if aggregate == .average {
            let treeCount = Float(roots.count)
            for i in out.indices { out[i] /= treeCount }
        }
        if !base.isEmpty {
            for r in 0..<n { for j in 0..<k { out[r * k + j] += base[j] } }
        }
        return out
    }

    /// Where reached leaves' weights go: the scores and, for MIN and MAX, which are set yet.
    struct Sink {
        let out: UnsafeMutableBufferPointer<Float>
        let has: UnsafeMutableBufferPointer<Bool>
        let k: Int
        let aggregate: Aggregate

        /// Adds (or takes the min or max of) the weights of leaf `node` to row `row`'s scores.
        @inline(__always)
        func add(_ node: Node, row: Int, _ targets: UnsafeBufferPointer<Int>, _ values: UnsafeBufferPointer<Float>) {
            let o = row * k
            for e in Int(node.weightStart)..<Int(node.weightEnd) {
                let t = o + targets[e], w = values[e]
                switch aggregate {
                case .sum, .average: out[t] += w
                case .min: out[t] = has[t] ? min(out[t], w) : w; has[t] = true
                case .max: out[t] = has[t] ? max(out[t], w) : w; has[t] = true
                }
            }
        }
    }

    /// The branch-free walk. Sixteen walks go at once, a block of rows by a group of trees (16
    /// rows by one tree for large batches, one row by 16 trees for a single row), each level
    /// advancing them all, to the group's depth or until none moves; then the leaves' weights
    /// are added, each row's in tree order.
    func walkBlocks<C: BranchComparison>(_: C.Type, _ x: UnsafeBufferPointer<Float>, _ n: Int, _ c: Int, _ sink: Sink) {
        let x = x.baseAddress!
        let treeCount = roots.count
        let treesPerBlock = max(1, Self.lanes / max(1, min(n, Self.lanes)))
        let rowsPerBlock = Self.lanes / treesPerBlock
        let leafVectors = self.leafVectors ?? []
        walk.withUnsafeBufferPointer { nodes in packed.withUnsafeBufferPointer { packed in
        weightTarget.withUnsafeBufferPointer { wt in weightValue.withUnsafeBufferPointer { wv in
        leafVectors.withUnsafeBufferPointer { vectors in
        let vectors: UnsafeBufferPointer<SIMD8<Float>>? = self.leafVectors == nil ? nil : vectors
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: Self.lanes) { at in
        withUnsafeTemporaryAllocation(of: Int.self, capacity: Self.lanes) { offset in
            var r0 = 0
            while r0 < n {
                let rows = min(rowsPerBlock, n - r0)
                var t0 = 0
                while t0 < treeCount {
                    let trees = min(treesPerBlock, treeCount - t0)
                    var depth = 0
                    for t in 0..<trees { depth = max(depth, depths[t0 + t]) }
                    for r in 0..<rows {
                        for t in 0..<trees {
                            at[r * trees + t] = Int32(roots[t0 + t])
                            offset[r * trees + t] = (r0 + r) * c
                        }
                    }
                    let lanes = rows * trees
                    for _ in 0..<depth {
                        var moved: Int32 = 0
                        for l in 0..<lanes {
                            let i = at[l]
                            let node = nodes[Int(i)]
                            let go = C.goesTrue(x[offset[l] &+ Int(node.feature)], node.threshold)
                            // A select by mask, not `go ? t : f`, which compiles to a branch
                            // that mispredicts on half the rows.
                            let mask = 0 &- Int32(unsafeBitCast(go, to: UInt8.self))
                            let next = node.falseChild ^ ((node.trueChild ^ node.falseChild) & mask)
                            moved |= next ^ i
                            at[l] = next
                        }
                        if moved == 0 { break }
                    }
                    if let target = singleTarget, sink.aggregate == .sum || sink.aggregate == .average {
                        for r in 0..<rows {
                            var score = sink.out[(r0 + r) * sink.k + target]
                            for t in 0..<trees { score += nodes[Int(at[r * trees + t])].threshold }
                            sink.out[(r0 + r) * sink.k + target] = score
                        }
                    } else if let leafVectors = vectors, sink.aggregate == .sum || sink.aggregate == .average {
                        let k = sink.k
                        for r in 0..<rows {
                            let o = (r0 + r) * k
                            var score = SIMD8<Float>(repeating: 0)
                            for j in 0..<k { score[j] = sink.out[o + j] }
                            for t in 0..<trees { score += leafVectors[Int(nodes[Int(at[r * trees + t])].threshold)] }
                            for j in 0..<k { sink.out[o + j] = score[j] }
                        }
                    } else {
                        for r in 0..<rows {
                            for t in 0..<trees { sink.add(packed[Int(at[r * trees + t])], row: r0 + r, wt, wv) }
                        }
                    }
                    t0 += trees
                }
                r0 += rows
            }
        } } } } } } }
    }

    /// The walk for ensembles whose branches compare in different ways: row by row, reading
    /// each node's mode.
    func walkModes(_ x: UnsafeBufferPointer<Float>, _ n: Int, _ c: Int, _ sink: Sink) {
        packed.withUnsafeBufferPointer { nodes in
        weightTarget.withUnsafeBufferPointer { wt in weightValue.withUnsafeBufferPointer { wv in
            for r in 0..<n {
                let row = x.baseAddress! + r * c
                for root in roots { sink.add(nodes[TreeEnsemble.leaf(root, nodes, row)], row: r, wt, wv) }
            }
        } } }
    }

    static let regressor = OperatorSpec(name: "TreeEnsembleRegressor", domain: "ai.onnx.ml", opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        let k = try ctx.attributes.int("n_targets", default: 1)
        guard k > 0, k < 1 << 20 else { throw ctx.bad("n_targets is \(k)") }
        let aggName = try ctx.attributes.string("aggregate_function", default: "SUM")
        guard let agg = Aggregate(rawValue: aggName) else { throw ctx.bad("aggregate_function `\(aggName)` is not SUM, AVERAGE, MIN or MAX") }
        var base = try ctx.attributes.floats("base_values") ?? []
        if let t = try ctx.attributes.tensor("base_values_as_tensor") { base = try K.floats(t) }
        guard base.isEmpty || base.count == k else { throw ctx.bad("\(base.count) base_values for \(k) targets") }
        let post = try PostTransform.read(&ctx.attributes, ctx)
        let trees = try TreeEnsemble(&ctx.attributes, ctx, prefix: "target", outputs: k)
        ctx.kernelBytes += trees.heldBytes
        ctx.countedTables = true
        let baseValues = base
        return (ClosureKernel { inputs, ws in
            let x = try K.arg(inputs, 0)
            let (n, c) = try MLOps.rows(x)
            let (v, converted) = try K.floats(x, ws)
            var s = try trees.scores(v, rows: n, cols: c, outputs: k, aggregate: agg, base: baseValues, ws)
            if converted { ws.giveBack(v) }
            post.apply(&s, rowLength: k)
            return Outputs(Tensor(shape: ws.shape(n, k), floats: s))
        }, [.float32])
    }

    static let classifier = OperatorSpec(name: "TreeEnsembleClassifier", domain: "ai.onnx.ml", opsets: 1...5) { ctx in
        try ctx.inputs(1, 1)
        _ = try ctx.input(0, .numeric)
        guard let labels = try MLOps.labels(&ctx.attributes, ctx) else { throw ctx.bad("needs classlabels_int64s or classlabels_strings") }
        var base = try ctx.attributes.floats("base_values") ?? []
        if let t = try ctx.attributes.tensor("base_values_as_tensor") { base = try K.floats(t) }
        let post = try PostTransform.read(&ctx.attributes, ctx)
        let k = labels.count
        guard k > 0 else { throw ctx.bad("has no class labels") }
        let trees = try TreeEnsemble(&ctx.attributes, ctx, prefix: "class", outputs: k)
        ctx.kernelBytes += trees.heldBytes + K.labelBytes(labels)
        ctx.countedTables = true
        let ids = Set(trees.leafWeights.flatMap { $0.map(\.0) })
        let binary = k == 2 && ids.count == 1
        let allPositive = trees.leafWeights.allSatisfy { $0.allSatisfy { $0.1 >= 0 } }
        guard base.isEmpty || base.count == k || (binary && base.count == 1) else { throw ctx.bad("\(base.count) base_values for \(k) classes") }
        let labelType: DType = if case .string = labels { .string } else { .int64 }
        let baseValues = base
        return (ClosureKernel { inputs, ws in
            let base = baseValues
            let x = try K.arg(inputs, 0)
            let (n, c) = try MLOps.rows(x)
            let (v, converted) = try K.floats(x, ws)
            var s = try trees.scores(v, rows: n, cols: c, outputs: k, aggregate: .sum, base: base.count == k ? base : [], ws)
            if converted { ws.giveBack(v) }
            return try ws.withScratch(n) { best in
            if binary {
                // Two labels, weights for one class only: the label is that class's score
                // against 0.5 (weights all positive) or 0. As onnxruntime does, a score in
                // column 0 becomes [1 - s, s] (or [-s, s]); a score in column 1 stays as is.
                let col = ids.first!
                for r in 0..<n {
                    let v = s[r * 2 + col] + (base.count == 1 ? base[0] : 0)
                    best[r] = v > (allPositive ? 0.5 : 0) ? 1 : 0
                    if col == 0 {
                        s[r * 2 + 1] = v
                        s[r * 2] = allPositive ? 1 - v : -v
                    }
                }
                if col == 0, post == .logistic {
                    for r in 0..<n { let p = PostTransform.logistic(s[r * 2 + 1]); s[r * 2 + 1] = p; s[r * 2] = 1 - p }
                } else { post.apply(&s, rowLength: 2) }
            } else {
                for r in 0..<n {
                    var b = 0
                    for j in 1..<k where s[r * k + j] > s[r * k + b] { b = j }
                    best[r] = b
                }
                post.apply(&s, rowLength: k)
            }
            return Outputs(try MLOps.labelTensor(labels, best, ws), Tensor(shape: ws.shape(n, k), floats: s))
            }
        }, [labelType, .float32])
    }
}

/// One way a branch compares a feature with its threshold (``TreeEnsemble/Comparison``),
/// as a type so the walk is specialized for it.
protocol BranchComparison {
    static func goesTrue(_ v: Float, _ threshold: Float) -> Bool
    /// The same comparison lane by lane.
    static func goesTrue(_ v: SIMD8<Float>, _ threshold: SIMD8<Float>) -> SIMDMask<SIMD8<Int32>>
}

enum Leq: BranchComparison {
    @inline(__always) static func goesTrue(_ v: Float, _ t: Float) -> Bool { v <= t }
    @inline(__always) static func goesTrue(_ v: SIMD8<Float>, _ t: SIMD8<Float>) -> SIMDMask<SIMD8<Int32>> { v .<= t }
}

enum Lt: BranchComparison {
    @inline(__always) static func goesTrue(_ v: Float, _ t: Float) -> Bool { v < t }
    @inline(__always) static func goesTrue(_ v: SIMD8<Float>, _ t: SIMD8<Float>) -> SIMDMask<SIMD8<Int32>> { v .< t }
}

enum NotGT: BranchComparison {
    @inline(__always) static func goesTrue(_ v: Float, _ t: Float) -> Bool { !(v > t) }
    @inline(__always) static func goesTrue(_ v: SIMD8<Float>, _ t: SIMD8<Float>) -> SIMDMask<SIMD8<Int32>> { .!(v .> t) }
}

enum NotGE: BranchComparison {
    @inline(__always) static func goesTrue(_ v: Float, _ t: Float) -> Bool { !(v >= t) }
    @inline(__always) static func goesTrue(_ v: SIMD8<Float>, _ t: SIMD8<Float>) -> SIMDMask<SIMD8<Int32>> { .!(v .>= t) }
}
