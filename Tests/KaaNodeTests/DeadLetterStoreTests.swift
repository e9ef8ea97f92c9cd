import Foundation
@testable import KaaNode
import KaaTestSupport
import Testing

/// The dead-letter store by hand, on a real SQLite file: what is written is read back whole,
/// listings filter and page, a replay is claimed once and its result kept, retention by age
/// and by bytes.
@Suite struct DeadLetterStoreTests {
    static func letter(_ id: String, model: String = "iris", reason: DeadLetter.Reason = .deadline, at: Int64 = 1_000, bytes: Int = 3) -> DeadLetter {
        DeadLetter(id: id, requestID: "r-\(id)", model: model, asked: "stable", version: 2, digest: "sha256:00", target: "/v2/models/\(model)/infer",
                   contentType: "application/json", headers: [["Content-Type", "application/json"]], payload: Data(repeating: 7, count: bytes),
                   reason: reason, message: "late", attempts: [.init(node: "n2", start: at, end: at + 5, outcome: "HTTP 504")],
                   acceptedBy: "n1", createdAt: at)
    }

    @Test func writesListsClaimsAndForgets() throws {
        let dir = TemporaryDirectory()
        defer { dir.remove() }
        let store = try DeadLetterStore(path: dir.path + "/deadletters.sqlite")
        let a = Self.letter("01A", at: 1_000), b = Self.letter("01B", model: "rose", reason: .noHolder, at: 2_000), c = Self.letter("01C", at: 3_000)
        for l in [c, a, b, a] { try store.write(l) } // a copy written twice is kept once
        #expect(try store.get("01A") == a)
        #expect(try store.get("nope") == nil)
        #expect(try store.list(.init()).map(\.id) == ["01A", "01B", "01C"])
        #expect(try store.list(.init(model: "iris")).map(\.id) == ["01A", "01C"])
        #expect(try store.list(.init(reason: "no-holder")).map(\.id) == ["01B"])
        #expect(try store.list(.init(since: 2_000)).map(\.id) == ["01B", "01C"])
        #expect(try store.list(.init(after: "01A", limit: 1)).map(\.id) == ["01B"])
        #expect(try store.countsByReason() == ["deadline": 2, "no-holder": 1])

        // A replay is claimed once; a live lease keeps others off; an expired one does not.
        guard case .run(let claimed) = try store.claim("01A", now: 10, leaseUntil: 100) else { Issue.record("not claimed"); return }
        #expect(claimed.state == .replaying)
        #expect(try store.claim("01A", now: 50, leaseUntil: 150) == .busy)
        guard case .run = try store.claim("01A", now: 101, leaseUntil: 200) else { Issue.record("an expired lease was not taken over"); return }
        let kept = DeadLetter.Replay(status: 200, body: "{}", at: 150, by: "n1")
        #expect(try store.finishReplay("01A", kept)?.replay == kept)
        guard case .replayed(let done) = try store.claim("01A", now: 300, leaseUntil: 400) else { Issue.record("replayed twice"); return }
        #expect(done.replay == kept && done.state == .replayed)
        #expect(try store.claim("zzz", now: 0, leaseUntil: 1) == .missing)

        // Reopened, it is all there.
        let again = try DeadLetterStore(path: dir.path + "/deadletters.sqlite")
        #expect(try again.get("01A")?.state == .replayed)
        #expect(try again.delete("01B"))
        #expect(try !again.delete("01B"))
        // Retention: by age, then the oldest while the payloads exceed the bytes kept.
        try again.write(Self.letter("01D", at: 4_000, bytes: 10))
        #expect(try again.applyRetention(olderThan: 1_500, maxBytes: 1_000) == 1)
        #expect(try again.list(.init()).map(\.id) == ["01C", "01D"])
        #expect(try again.applyRetention(olderThan: 0, maxBytes: 10) == 1)
        #expect(try again.list(.init()).map(\.id) == ["01D"])
    }

    @Test func ulidsSortByTimeAndUseCrockfordBase32() {
        var rng = SplitMixForTests(seed: 1)
        let early = ULID.make(milliseconds: 1_700_000_000_000, random: &rng)
        let late = ULID.make(milliseconds: 1_700_000_000_001, random: &rng)
        #expect(early.count == 26 && late.count == 26)
        #expect(early < late)
        #expect(early.allSatisfy { "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains($0) })
        // The time is the first ten characters: 1,700,000,000,000 ms is 01HF7YAT00.
        #expect(early.hasPrefix("01HF7YAT00"), "\(early)")
        #expect(ULID.make(milliseconds: 0, random: &rng).hasPrefix("0000000000"))
    }
}

struct SplitMixForTests: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
