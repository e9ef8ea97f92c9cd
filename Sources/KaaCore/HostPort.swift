/// A `HOST:PORT` address as operators write it in flags and configs (`127.0.0.1:7070`,
/// `[::1]:7070`, `node-3.lan:7946`).
public struct HostPort: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`; IPv6 hosts are bracketed. Throws a message that says what was wrong.
    public init(parsing text: String) throws(AddressError) {
        var host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                throw AddressError("address `\(text)` opens `[` but never closes it; write IPv6 as [::1]:7070")
            }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else {
                throw AddressError("address `\(text)` has no port; write it as HOST:PORT, e.g. [::1]:7070")
            }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw AddressError("address `\(text)` has no port; write it as HOST:PORT, e.g. 127.0.0.1:7070")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") {
                throw AddressError("address `\(text)` looks like IPv6 without brackets; write it as [::1]:7070")
            }
        }
        if host.isEmpty { host = "0.0.0.0" }
        guard let port = UInt16(portText) else {
            throw AddressError("address `\(text)`: port `\(portText)` is not a number from 0 to 65535")
        }
        self.host = String(host)
        self.port = port
    }

    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// A `HOST:PORT` that could not be parsed or resolved.
public struct AddressError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
