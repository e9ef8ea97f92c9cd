/// Small trees evaluated whole over eight rows at once, for ensembles whose leaves each hold
/// one weight (a gradient-boosted regressor's) or one vector of weights (a random forest
/// classifier's, see ``TreeEnsemble/leafVectors``).
///
/// Every branch of a tree compares the eight rows' values of its feature (one vector) with its
/// threshold and selects between its children's values, children before parents; the root's
/// value is the eight rows' leaf weights. Nothing branches and no row walks, but every branch
/// is evaluated, not just the depth's worth on a row's path: worth it for shallow trees only
/// (see ``init(walk:roots:depths:)``).
struct TreeProgram: Sendable {
    /// One branch: slots are the tree's leaves first, then its branches' results in order.
    struct Op: Sendable {
        var feature: Int32
        var threshold: Float
        var ifTrue: Int32
        var ifFalse: Int32
    }

    struct Tree: Sendable {
        var ops: Range<Int>
        var leaves: Range<Int>
        /// The slot holding the tree's value once its ops have run.
        var result: Int
    }

    var ops: [Op] = []
    var leafValues: [Float] = []
    var trees: [Tree] = []
    /// The most slots one tree uses.
    var slots = 0

    /// The bytes of its tables, with each array's header.
    var heldBytes: Int { K.arrayBytes(ops) + K.arrayBytes(leafValues) + K.arrayBytes(trees) }

    /// Rows evaluated together: one 8-float vector.
    static let rows = 8

    /// The program for trees of ``TreeEnsemble/WalkNode``s whose leaves hold their weight or
    /// their weight vector's index in the threshold, or
    /// `nil` when the trees have so many branches per level of depth that walking is cheaper:
    /// a walk costs each row about a dozen instructions per level, the program about two per
    /// branch (baseline SSE; fewer with wider vectors).
    init?(walk: [TreeEnsemble.WalkNode], roots: [Int], depths: [Int]) {
        var branches = 0
        for root in roots {
            var leafSlot: [Int32: Int] = [:]
            var opSlot: [Int32: Int] = [:]
            var leaves: [Float] = []
            var order: [Int32] = []
            // Post-order: a branch after both its children.
            var stack: [(Int32, Bool)] = [(Int32(root), false)]
            while let (i, expanded) = stack.popLast() {
                let node = walk[Int(i)]
                if node.trueChild == i {
                    if leafSlot[i] == nil { leafSlot[i] = leaves.count; leaves.append(node.threshold) }
                } else if expanded {
                    if opSlot[i] == nil { opSlot[i] = order.count; order.append(i) }
                } else if opSlot[i] == nil {
                    stack.append((i, true))
                    stack.append((node.falseChild, false))
                    stack.append((node.trueChild, false))
                }
            }
            branches += order.count
            guard branches <= 4 * depths.reduce(0, +) + 64 else { return nil }
            func slot(_ i: Int32) -> Int32 { Int32(leafSlot[i] ?? leaves.count + opSlot[i]!) }
            let opStart = ops.count, leafStart = leafValues.count
            for i in order {
                let node = walk[Int(i)]
                ops.append(Op(feature: node.feature, threshold: node.threshold, ifTrue: slot(node.trueChild), ifFalse: slot(node.falseChild)))
            }
            leafValues += leaves
            trees.append(Tree(ops: opStart..<ops.count, leaves: leafStart..<leafValues.count, result: Int(slot(Int32(root)))))
            slots = max(slots, leaves.count + order.count)
        }
    }

    /// What the trees' leaf values are.
    enum Leaves {
        /// Weights for this one target.
        case weights(target: Int)
        /// Indices into these vectors of weights, one lane per target (at most 8 targets).
        case vectors(UnsafeBufferPointer<SIMD8<Float>>)
    }

    /// Adds each tree's leaf weights, in tree order, to the `k` scores of each of the `n`
    /// rows of `x` (`c` features each) in `out`.
    func run<C: BranchComparison>(_: C.Type, _ x: UnsafePointer<Float>, rows n: Int, cols c: Int,
                                  into out: UnsafeMutableBufferPointer<Float>, k: Int, leaves: Leaves) {
        typealias V = SIMD8<Float>
        ops.withUnsafeBufferPointer { ops in leafValues.withUnsafeBufferPointer { leafValues in
        withUnsafeTemporaryAllocation(of: V.self, capacity: max(c, 1)) { columns in
        withUnsafeTemporaryAllocation(of: V.self, capacity: max(slots, 1)) { slot in
        withUnsafeTemporaryAllocation(of: V.self, capacity: Self.rows) { rowScores in
            var r0 = 0
            while r0 < n {
                let rows = min(Self.rows, n - r0)
                // The block's features as columns of eight rows; rows past n read 0.
                for f in 0..<c {
                    var v = V(repeating: 0)
                    for r in 0..<rows { v[r] = x[(r0 + r) * c + f] }
                    columns[f] = v
                }
                // Scores so far: one lane per row for one target, or one vector per row.
                var acc = V(repeating: 0)
                switch leaves {
                case .weights(let target):
                    for r in 0..<rows { acc[r] = out[(r0 + r) * k + target] }
                case .vectors:
                    for r in 0..<rows {
                        var v = V(repeating: 0)
                        for j in 0..<k { v[j] = out[(r0 + r) * k + j] }
                        rowScores[r] = v
                    }
                }
                for tree in trees {
                    var s = 0
                    for l in tree.leaves { slot[s] = V(repeating: leafValues[l]); s += 1 }
                    for i in tree.ops {
                        let op = ops[i]
                        let go = C.goesTrue(columns[Int(op.feature)], V(repeating: op.threshold))
                        slot[s] = slot[Int(op.ifFalse)].replacing(with: slot[Int(op.ifTrue)], where: go)
                        s += 1
                    }
                    switch leaves {
                    case .weights: acc += slot[tree.result]
                    case .vectors(let table):
                        let leaf = slot[tree.result]
                        for r in 0..<rows { rowScores[r] += table[Int(leaf[r])] }
                    }
                }
                switch leaves {
                case .weights(let target):
                    for r in 0..<rows { out[(r0 + r) * k + target] = acc[r] }
                case .vectors:
                    for r in 0..<rows {
                        for j in 0..<k { out[(r0 + r) * k + j] = rowScores[r][j] }
                    }
                }
                r0 += rows
            }
        } } } } }
    }
}
