/// Updates waiting to be piggybacked, each sent a bounded number of times (SWIM's infection
/// style dissemination; memberlist `TransmitLimitedQueue`).
///
/// Only the newest update about a member is kept. Packing takes the least-transmitted updates
/// first and, among equals, the newest first, until the byte budget is spent.
public struct BroadcastQueue: Sendable {
    struct Entry: Sendable {
        var update: Update
        var size: Int
        var transmits: Int
        var sequence: UInt64
    }

    struct Slot: Sendable {
        var sequence: UInt64
        var subject: NodeID
    }

    private var entries: [NodeID: Entry] = [:]
    /// `buckets[t]`: slots of entries sent `t` times, oldest first; stale slots are skipped.
    private var buckets: [[Slot]] = []
    private var nextSequence: UInt64 = 0

    public init() {}

    /// Updates waiting to be sent at least once more.
    public var count: Int { entries.count }

    /// Queues `update`, replacing any older update about the same member.
    public mutating func enqueue(_ update: Update, size: Int) {
        nextSequence += 1
        entries[update.subject] = Entry(update: update, size: size, transmits: 0, sequence: nextSequence)
        if buckets.isEmpty { buckets.append([]) }
        buckets[0].append(Slot(sequence: nextSequence, subject: update.subject))
    }

    /// Times the queued update about `subject` has been sent, if one is queued.
    public func transmits(of subject: NodeID) -> Int? { entries[subject]?.transmits }

    /// Takes updates that fit in `budget` bytes, counting one transmission for each; an update
    /// is dropped once sent `limit` times. `skip` excludes one member's update (already added).
    public mutating func take(budget: Int, limit: Int, skip: NodeID? = nil) -> [Update] {
        dropBeyond(limit)
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
                guard var e = entries[slot.subject], e.sequence == slot.sequence, e.transmits == t else {
                    buckets[t].remove(at: i)
                    i -= 1
                    continue
                }
                if e.size <= remaining && slot.subject != skip {
                    remaining -= e.size
                    out.append(e.update)
                    buckets[t].remove(at: i)
                    e.transmits += 1
                    if e.transmits >= limit {
                        entries[slot.subject] = nil
                    } else {
                        entries[slot.subject] = e
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

    /// Forgets updates already sent `limit` times or more (the limit shrinks with the cluster).
    private mutating func dropBeyond(_ limit: Int) {
        guard buckets.count > limit, limit >= 0 else { return }
        for t in limit..<buckets.count {
            for slot in buckets[t] where entries[slot.subject]?.sequence == slot.sequence {
                entries[slot.subject] = nil
            }
        }
        buckets.removeSubrange(limit...)
    }
}
