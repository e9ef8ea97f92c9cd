import KaaCluster
import KaaIO

/// One peer's answer to a frame sent to several at once, or why there is none.
typealias PeerAnswer = (peer: Member, result: Result<Frame, FrameError>)

extension FrameClient {
    /// Sends `payload` as a frame of `type` to every one of `peers` at once; `done` gets every
    /// answer or failure, on the loop, once all are in (at once when `peers` is empty).
    func askEach(_ peers: [Member], type: UInt16, payload: [UInt8], deadline: Duration, done: @escaping ([PeerAnswer]) -> Void) {
        guard !peers.isEmpty else { return done([]) }
        let answers = LoopBound(Answers(expected: peers.count), loop: loop), finish = LoopBound(done, loop: loop)
        for peer in peers {
            request(to: peer.info.peerAddress, type: type, payload: payload, deadline: deadline) { result in
                let a = answers.value
                a.items.append((peer, result))
                if a.items.count == a.expected { finish.value(a.items) }
            }
        }
    }
}

enum PeerAnswers {
    /// The peers that did not answer, by name, sorted.
    static func unreachable(_ answers: [PeerAnswer]) -> [String] {
        answers.compactMap { if case .failure = $0.result { $0.peer.info.name } else { nil } }.sorted()
    }
}

/// The answers being gathered. Loop-confined.
private final class Answers {
    let expected: Int
    var items: [PeerAnswer] = []
    init(expected: Int) { self.expected = expected }
}
