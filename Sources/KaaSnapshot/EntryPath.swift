/// The rules for entry names inside an archive.
///
/// A name is a relative path of 1 to 8 components joined by `/`, each of `[A-Za-z0-9._-]`,
/// neither `.` nor `..`, at most 255 bytes in all. Absolute names, `..`, backslashes, empty
/// components and anything else are refused, so extracting an archive can never write outside
/// its directory.
enum EntryPath {
    static let maxLength = 255
    static let maxDepth = 8

    static func validate(_ path: String) throws(SnapshotError) {
        func bad(_ why: String) -> SnapshotError { SnapshotError(.invalidEntry, "entry name `\(path)` \(why)") }
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty else { throw SnapshotError(.invalidEntry, "an entry has an empty name") }
        guard bytes.count <= maxLength else { throw bad("is longer than \(maxLength) bytes") }
        guard bytes[0] != 0x2F else { throw bad("is absolute; entry names are relative paths") }
        guard !bytes.contains(0x5C) else { throw bad("contains a backslash; use `/` between components") }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= maxDepth else { throw bad("is nested deeper than \(maxDepth) components") }
        for p in parts {
            if p.isEmpty { throw bad("has an empty component (`//` or a trailing `/`)") }
            if p == ".." { throw bad("escapes its directory with `..` (path traversal)") }
            if p == "." { throw bad("has a `.` component") }
            for b in p.utf8 {
                let ok = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
                    || b == 0x2E || b == 0x5F || b == 0x2D
                if !ok { throw bad("contains a character outside [A-Za-z0-9._-]") }
            }
        }
    }
}
