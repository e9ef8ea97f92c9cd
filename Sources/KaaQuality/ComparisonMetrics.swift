import Foundation

/// The metrics a comparison reports, as pure functions of the two versions' predictions.
/// Each returns nil where the metric is not defined (no rows, every value tied).
public enum ComparisonMetrics {
    /// The share of positions where `a` and `b` hold the same label; nil for no rows.
    public static func agreement(_ a: [String], _ b: [String]) -> Double? {
        precondition(a.count == b.count, "agreement of \(a.count) against \(b.count) labels")
        guard !a.isEmpty else { return nil }
        return Double(zip(a, b).reduce(0) { $0 + ($1.0 == $1.1 ? 1 : 0) }) / Double(a.count)
    }

    /// The share of predictions equal to the truth; nil for no rows.
    public static func accuracy(_ predicted: [String], truth: [String]) -> Double? {
        agreement(predicted, truth)
    }

    /// The largest and the mean absolute difference of paired scores; nil for no scores.
    /// A pair where either score is NaN counts as an infinite difference: a version that
    /// answers NaN where the other answers a number differs from it as much as can be.
    public static func scoreDifferences(_ a: [Double], _ b: [Double]) -> (max: Double, mean: Double)? {
        precondition(a.count == b.count, "differences of \(a.count) against \(b.count) scores")
        guard !a.isEmpty else { return nil }
        var largest = 0.0, sum = 0.0
        for (x, y) in zip(a, b) {
            let d = x.isNaN && y.isNaN ? 0 : x.isNaN || y.isNaN ? Double.infinity : abs(x - y)
            largest = max(largest, d)
            sum += d
        }
        return (largest, sum / Double(a.count))
    }

    /// Kendall's tau-b of paired values: (concordant − discordant) / sqrt((n0 − n1)(n0 − n2)),
    /// where n0 is the number of pairs and n1, n2 the pairs tied in `x`, in `y`. 1 when both
    /// rank the rows alike, −1 when in reverse; nil with fewer than two pairs or when either
    /// side is all ties. Pairs with a NaN are left out. Knight's algorithm: O(n log n).
    public static func kendallTauB(_ x: [Double], _ y: [Double]) -> Double? {
        precondition(x.count == y.count, "tau of \(x.count) against \(y.count) values")
        let kept = x.indices.filter { !x[$0].isNaN && !y[$0].isNaN }
        let n = kept.count
        guard n >= 2 else { return nil }
        func pairs(_ t: Int) -> Int { t * (t - 1) / 2 }
        let order = kept.sorted { x[$0] != x[$1] ? x[$0] < x[$1] : y[$0] < y[$1] }
        let xs = order.map { x[$0] }
        var ys = order.map { y[$0] }
        // Pairs tied in x (n1), and tied in both (n3): runs of equal x, and within them of equal y.
        var n1 = 0, n3 = 0
        var i = 0
        while i < n {
            var j = i + 1
            while j < n && xs[j] == xs[i] { j += 1 }
            n1 += pairs(j - i)
            var k = i
            while k < j {
                var l = k + 1
                while l < j && ys[l] == ys[k] { l += 1 }
                n3 += pairs(l - k)
                k = l
            }
            i = j
        }
        // Discordant pairs: in x order (ties in x already ascending in y), the strict inversions of y.
        let discordant = inversions(&ys)
        var n2 = 0
        i = 0
        while i < n {
            var j = i + 1
            while j < n && ys[j] == ys[i] { j += 1 }
            n2 += pairs(j - i)
            i = j
        }
        let n0 = pairs(n)
        let denominator = (Double(n0 - n1) * Double(n0 - n2)).squareRoot()
        guard denominator > 0 else { return nil }
        return Double(n0 - n1 - n2 + n3 - 2 * discordant) / denominator
    }

    /// Sorts `v` ascending (merge sort) and returns how many pairs i < j had v[i] > v[j].
    static func inversions(_ v: inout [Double]) -> Int {
        var buffer = v
        var count = 0
        var width = 1
        let n = v.count
        while width < n {
            var start = 0
            while start < n {
                let mid = min(start + width, n), end = min(start + 2 * width, n)
                var i = start, j = mid, k = start
                while i < mid && j < end {
                    if v[i] <= v[j] {
                        buffer[k] = v[i]; i += 1
                    } else {
                        buffer[k] = v[j]; j += 1
                        count += mid - i
                    }
                    k += 1
                }
                while i < mid { buffer[k] = v[i]; i += 1; k += 1 }
                while j < end { buffer[k] = v[j]; j += 1; k += 1 }
                start = end
            }
            swap(&v, &buffer)
            width *= 2
        }
        return count
    }
}
