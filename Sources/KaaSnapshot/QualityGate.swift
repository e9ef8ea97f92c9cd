import Foundation

/// A snapshot's quality gate: the conditions a new version must meet against the version
/// `stable` points at before `stable` may move to it, such as
/// `agreement>=0.99,accuracy_drop<=0.005`.
///
/// The grammar is the manifest's (a gate that does not parse is refused when the manifest is
/// read, so a bad gate never enters a store); the metrics are computed by `KaaQuality`'s
/// comparison, which hands them to ``evaluate(_:)`` by name.
public struct QualityGate: Sendable, Equatable, CustomStringConvertible {
    /// A metric a gate can bound.
    public enum Metric: String, Sendable, CaseIterable {
        /// The share of rows where both versions predict the same top label.
        case agreement
        /// The new version's accuracy on the holdout's labels.
        case accuracy
        /// The old version's accuracy minus the new one's (positive when the new one is worse).
        case accuracyDrop = "accuracy_drop"
        /// The largest absolute difference between the two versions' scores.
        case maxScoreDiff = "max_score_diff"
        /// The mean absolute difference between the two versions' scores.
        case meanScoreDiff = "mean_score_diff"
        /// Kendall's tau-b between the two versions' scores.
        case kendallTau = "kendall_tau"

        /// Whether the metric needs the true labels of the holdout rows.
        public var needsLabels: Bool { self == .accuracy || self == .accuracyDrop }
    }

    /// One condition: a metric, `>=` or `<=`, a bound.
    public struct Term: Sendable, Equatable, CustomStringConvertible {
        public enum Comparison: String, Sendable {
            case atLeast = ">="
            case atMost = "<="
        }
        public var metric: Metric
        public var comparison: Comparison
        public var bound: Double

        public init(_ metric: Metric, _ comparison: Comparison, _ bound: Double) {
            self.metric = metric
            self.comparison = comparison
            self.bound = bound
        }

        /// Whether `value` meets the term; a metric that could not be computed (nil, NaN) never does.
        public func holds(_ value: Double?) -> Bool {
            guard let value, !value.isNaN else { return false }
            return comparison == .atLeast ? value >= bound : value <= bound
        }

        public var description: String { "\(metric.rawValue)\(comparison.rawValue)\(Self.format(bound))" }

        /// A bound as written back: integral values without a fraction, others as Swift prints them.
        static func format(_ d: Double) -> String {
            d.rounded() == d && abs(d) < 1e15 ? String(Int64(d)) : "\(d)"
        }
    }

    public var terms: [Term]

    public init(terms: [Term]) { self.terms = terms }

    /// Parses `metric>=number` or `metric<=number` terms separated by commas; spaces around
    /// the parts are ignored. Throws ``SnapshotError/Code/invalidGate`` naming the term at fault.
    public init(parsing text: String) throws(SnapshotError) {
        let usage = "a gate is terms like `agreement>=0.99,accuracy_drop<=0.005`: a metric (\(Metric.allCases.map(\.rawValue).joined(separator: ", "))), `>=` or `<=`, and a number, separated by commas"
        func bad(_ m: String) -> SnapshotError { SnapshotError(.invalidGate, "gate `\(text.prefix(200))`: \(m); \(usage)") }
        var terms: [Term] = []
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        for (i, raw) in parts.enumerated() {
            let part = raw.trimmingCharacters(in: .whitespaces)
            guard !part.isEmpty else { throw bad(parts.count == 1 ? "it is empty" : "term \(i + 1) is empty") }
            let op: Term.Comparison
            let range: Range<String.Index>
            if let r = part.range(of: ">=") { op = .atLeast; range = r } else if let r = part.range(of: "<=") { op = .atMost; range = r } else {
                throw bad("term `\(part)` has no `>=` or `<=`")
            }
            let name = part[..<range.lowerBound].trimmingCharacters(in: .whitespaces)
            let number = part[range.upperBound...].trimmingCharacters(in: .whitespaces)
            guard let metric = Metric(rawValue: name) else {
                throw bad("term `\(part)`: `\(name)` is not a metric")
            }
            guard let bound = Double(number), bound.isFinite,
                  number.allSatisfy({ $0.isNumber || $0 == "." || $0 == "-" || $0 == "+" || $0 == "e" || $0 == "E" }) else {
                throw bad("term `\(part)`: `\(number)` is not a number")
            }
            guard !terms.contains(where: { $0.metric == metric && $0.comparison == op }) else {
                throw bad("`\(metric.rawValue)\(op.rawValue)` is given twice")
            }
            terms.append(Term(metric, op, bound))
        }
        self.terms = terms
    }

    /// Whether any term needs the holdout's true labels.
    public var needsLabels: Bool { terms.contains { $0.metric.needsLabels } }

    /// The canonical text: the terms as parsed, joined by commas without spaces.
    public var description: String { terms.map(\.description).joined(separator: ",") }

    /// One term's outcome.
    public struct Outcome: Sendable, Equatable {
        public var term: Term
        /// The metric's value; nil when it could not be computed (such a term fails).
        public var value: Double?
        public var passed: Bool
    }

    /// Each term's outcome, given the metrics by name (a missing one fails its terms).
    public func evaluate(_ metrics: [Metric: Double]) -> [Outcome] {
        terms.map { t in
            let v = metrics[t.metric]
            return Outcome(term: t, value: v, passed: t.holds(v))
        }
    }
}
