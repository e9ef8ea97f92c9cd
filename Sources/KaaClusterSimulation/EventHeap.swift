/// A min-heap of timed items; ties break by insertion order, so runs are repeatable.
struct EventHeap<Item> {
    private struct Entry {
        var time: UInt64
        var sequence: UInt64
        var item: Item
    }

    private var entries: [Entry] = []
    private var nextSequence: UInt64 = 0

    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }
    var nextTime: UInt64? { entries.first?.time }

    private static func before(_ a: Entry, _ b: Entry) -> Bool {
        a.time != b.time ? a.time < b.time : a.sequence < b.sequence
    }

    mutating func push(_ item: Item, at time: UInt64) {
        nextSequence += 1
        entries.append(Entry(time: time, sequence: nextSequence, item: item))
        var i = entries.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard Self.before(entries[i], entries[parent]) else { break }
            entries.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> (time: UInt64, item: Item)? {
        guard !entries.isEmpty else { return nil }
        entries.swapAt(0, entries.count - 1)
        let top = entries.removeLast()
        var i = 0
        let n = entries.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < n && Self.before(entries[l], entries[m]) { m = l }
            if r < n && Self.before(entries[r], entries[m]) { m = r }
            if m == i { break }
            entries.swapAt(i, m)
            i = m
        }
        return (top.time, top.item)
    }
}
