/// Updates waiting to be piggybacked, each sent a bounded number of times (SWIM's infection
/// style dissemination; memberlist `TransmitLimitedQueue`).
///
/// Only the newest update about a member is kept. Packing takes the least-transmitted updates
/// first and, among equals, the newest first, until the byte budget is spent.
public struct BroadcastQueue: Sendable {
    /// A reference to entry `index` as it was at `sequence` (stale once the entry changes).
    struct Slot: Sendable {
        var index: Int32
        var sequence: UInt64
    }

    // Entries live in parallel arrays indexed by a small integer, so the packing loop touches
    // only plain integers (fast even in debug builds, where it runs for 1,000-node
    // simulations). A sequence of 0 marks a free index.
    private var updates: [Update] = []
    private var subjects: [NodeID] = []
    private var sizes: [Int] = []
    private var transmitCounts: [Int] = []
    private var sequences: [UInt64] = []
    private var free: [Int] = []
    private var indexBySubject: [NodeID: Int] = [:]
    /// `buckets[t]`: slots of entries sent `t` times, oldest first; stale slots are skipped.
    private var buckets: [[Slot]] = []
    private var nextSequence: UInt64 = 0

    public init() {}

    /// Updates waiting to be sent at least once more.
    public var count: Int { indexBySubject.count }

    /// Queues `update`, replacing any older update about the same member.
    public mutating func enqueue(_ update: Update, size: Int) {
        nextSequence += 1
        let subject = update.subject
        let index: Int
        if let existing = indexBySubject[subject] {
            index = existing
            updates[index] = update
        } else if let reused = free.popLast() {
            index = reused
            updates[index] = update
            subjects[index] = subject
            indexBySubject[subject] = index
        } else {
            index = updates.count
            updates.append(update)
            subjects.append(subject)
            sizes.append(0)
            transmitCounts.append(0)
            sequences.append(0)
            indexBySubject[subject] = index
        }
        sizes[index] = size
        transmitCounts[index] = 0
        sequences[index] = nextSequence
        if buckets.isEmpty { buckets.append([]) }
        buckets[0].append(Slot(index: Int32(index), sequence: nextSequence))
    }

    /// Times the queued update about `subject` has been sent, if one is queued.
    public func transmits(of subject: NodeID) -> Int? {
        indexBySubject[subject].map { transmitCounts[$0] }
    }

    /// Takes updates that fit in `budget` bytes, counting one transmission for each; an update
    /// is dropped once sent `limit` times. `skip` excludes one member's update (already added).
    public mutating func take(budget: Int, limit: Int, skip: NodeID? = nil) -> [Update] {
        dropBeyond(limit)
        let skipIndex = skip.flatMap { indexBySubject[$0] } ?? -1
        var remaining = budget
        var out: [Update] = []
        var t = 0
        var justPromoted = 0  // slots appended to bucket t by this call: not taken twice
        while t < buckets.count && remaining >= 8 {
            var promoted: [Slot] = []
            var i = buckets[t].count - 1 - justPromoted
            var scannedMisses = 0
            while i >= 0 && remaining >= 8 && scannedMisses < 32 {
                let slot = buckets[t][i]
                let index = Int(slot.index)
                guard sequences[index] == slot.sequence, transmitCounts[index] == t else {
                    buckets[t].remove(at: i)
                    i -= 1
                    continue
                }
                if sizes[index] <= remaining && index != skipIndex {
                    remaining -= sizes[index]
                    out.append(updates[index])
                    buckets[t].remove(at: i)
                    transmitCounts[index] += 1
                    if transmitCounts[index] >= limit {
                        release(index)
                    } else {
                        promoted.append(slot)
                    }
                } else {
                    scannedMisses += 1
                }
                i -= 1
            }
            if !promoted.isEmpty {
                if t + 1 == buckets.count { buckets.append([]) }
                buckets[t + 1].append(contentsOf: promoted.reversed())
            }
            justPromoted = promoted.count
            t += 1
        }
        while let last = buckets.last, last.isEmpty, buckets.count > 1 { buckets.removeLast() }
        return out
    }

    private mutating func release(_ index: Int) {
        indexBySubject[subjects[index]] = nil
        sequences[index] = 0
        free.append(index)
    }

    /// Forgets updates already sent `limit` times or more (the limit shrinks with the cluster).
    private mutating func dropBeyond(_ limit: Int) {
        guard buckets.count > limit, limit >= 0 else { return }
        for t in limit..<buckets.count {
            for slot in buckets[t] where sequences[Int(slot.index)] == slot.sequence {
                release(Int(slot.index))
            }
        }
        buckets.removeSubrange(limit...)
    }
}
