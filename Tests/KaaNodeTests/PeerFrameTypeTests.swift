import Foundation
import KaaNode
import Testing

/// The peer plane's frame types are declared once (`Node.PeerFrameType.all`); the document that
/// describes them must list the same types, numbers and names.
@Suite struct PeerFrameTypeTests {
    @Test func theDocumentListsExactlyTheRegisteredTypes() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/peer-frames.md").standardized.path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let section = try #require(text.components(separatedBy: "## Types").dropFirst().first?.components(separatedBy: "\n## ").first)
        var documented: [(UInt16, String)] = []
        for line in section.split(separator: "\n") where line.hasPrefix("| ") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            if let type = UInt16(cells[0]) { documented.append((type, cells[1])) }
        }
        #expect(documented.map(\.0) == Node.PeerFrameType.all.map(\.type))
        #expect(documented.map(\.1) == Node.PeerFrameType.all.map(\.name))
        #expect(Set(Node.PeerFrameType.all.map(\.type)).count == Node.PeerFrameType.all.count, "a type number used twice")
    }
}
