/// GMCP, the Generic MUD Communication Protocol (telnet option 201, SPEC §7), as values: the
/// messages a target sends (`GMCPMessage`, cut out of the stream by `TelnetFilter`), what a
/// client may send (`parseClientMessage`, `isValidPackage`) and how it goes on the wire
/// (`encode`). No I/O here.
///
/// A GMCP message is the data of one subnegotiation, `IAC SB 201 <package>[ <payload>] IAC SE`:
/// a package name such as `Char.Vitals` (`Package.Message`, by convention), then, after one
/// separator, a payload that is JSON by the protocol's convention, but not always in practice.
/// 255 is doubled inside the subnegotiation, as everywhere in telnet.
public enum GMCP {
    /// The telnet option.
    public static let option: UInt8 = 201

    /// The most subnegotiation data (package, separator and payload, with `IAC IAC` counted
    /// once) a message from the target may have (SPEC §7: "A subnegotiation over 64 KiB is
    /// dropped"). The filter holds at most this much of one message while it arrives, and drops
    /// the whole message at the first byte past it.
    public static let maxSubnegotiation = 64 * 1024

    /// The longest package name a client may send (`isValidPackage`). Real ones are a few dozen
    /// bytes (`IRE.Composer.SetBuffer`, `External.Discord.Hello`).
    public static let maxPackageLength = 128

    /// Whether `name` is a package name a client may send (SPEC §7): 1 to `maxPackageLength`
    /// bytes of `[A-Za-z0-9_.-]`.
    public static func isValidPackage(_ name: some Collection<UInt8>) -> Bool {
        guard !name.isEmpty, name.count <= maxPackageLength else { return false }
        return name.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == UInt8(ascii: "_") || c == UInt8(ascii: ".") || c == UInt8(ascii: "-")
        }
    }

    /// The data of the `Core.Hello` the proxy sends once the target's GMCP is on:
    /// `Core.Hello {"client":"uvproxyd","version":"<version>"}` (the version JSON-escaped).
    public static func hello(version: String) -> [UInt8] {
        var out = Array("Core.Hello {\"client\":\"uvproxyd\",\"version\":".utf8)
        JSON.appendString(Array(version.utf8), into: &out)
        out.append(UInt8(ascii: "}"))
        return out
    }

    // MARK: Client → target

    /// Appends `IAC SB 201 <package>[ <payload>] IAC SE` to `out`, with every 255 doubled. It
    /// writes what it is given: check a client's message first (`parseClientMessage`).
    public static func encode(package: some Collection<UInt8>, payload: (some Collection<UInt8>)?,
                              into out: inout [UInt8]) {
        out += [Telnet.iac, Telnet.sb, option]
        appendEscaped(package, to: &out)
        if let payload {
            out.append(UInt8(ascii: " "))
            appendEscaped(payload, to: &out)
        }
        out += [Telnet.iac, Telnet.se]
    }

    /// `encode` for a message without payload.
    public static func encode(package: some Collection<UInt8>, into out: inout [UInt8]) {
        encode(package: package, payload: nil as [UInt8]?, into: &out)
    }

    private static func appendEscaped(_ bytes: some Collection<UInt8>, to out: inout [UInt8]) {
        for b in bytes {
            out.append(b)
            if b == Telnet.iac { out.append(b) }
        }
    }

    /// Why a client's message was refused (SPEC §7: both are `400`).
    public enum ClientMessageError: Error, Equatable, Sendable {
        /// The package name is empty, too long (`maxPackageLength`) or not `[A-Za-z0-9_.-]+`.
        case badPackage
        /// There is a payload and it is not JSON (`JSON.isValid`).
        case badPayload
    }

    /// A client's GMCP message (`POST /sessions/{id}/gmcp`'s body, a WebSocket text frame):
    /// `Package.Message[ <JSON>]`. The package name ends at the first whitespace (space, tab,
    /// CR, LF); the payload is what follows that one byte, without JSON whitespace around it,
    /// and none if nothing else is left. A trailing line end is no payload: `Core.Ping\n` is
    /// `Core.Ping`. What comes back is ready for `encode`.
    public static func parseClientMessage(_ body: some Collection<UInt8>) throws(ClientMessageError)
        -> (package: [UInt8], payload: [UInt8]?) {
        let bytes = Array(body)
        let end = bytes.firstIndex(where: JSON.isWhitespace) ?? bytes.count
        let package = Array(bytes[..<end])
        guard isValidPackage(package) else { throw .badPackage }
        guard end < bytes.count else { return (package, nil) }
        var lo = end + 1, hi = bytes.count
        while lo < hi && JSON.isWhitespace(bytes[lo]) { lo += 1 }
        while hi > lo && JSON.isWhitespace(bytes[hi - 1]) { hi -= 1 }
        guard lo < hi else { return (package, nil) }
        let payload = bytes[lo..<hi]
        guard JSON.isValid(payload) else { throw .badPayload }
        return (package, Array(payload))
    }
}

/// One GMCP message from the target, as `TelnetFilter` hands it out (`gmcpMessages`).
///
/// `data` is the subnegotiation's data as the target sent it (`IAC IAC` undone). The package
/// is `data` up to its first whitespace byte (space, tab, CR, LF), which must not be the first
/// byte (a subnegotiation with an empty package is no message and is dropped); the payload is
/// what follows that byte, or none when nothing, or only whitespace, follows. The package is
/// kept as sent: the filter does not hold the target to `GMCP.isValidPackage` (what matters is
/// that the JSON written for it is escaped, and it is).
public struct GMCPMessage: Equatable, Sendable {
    /// How many data bytes the `receive` call that produced the message handed out before it:
    /// the message's place in that call's output. The session's offset for it is the ring's
    /// end before the call plus `position`.
    public var position: Int
    /// The subnegotiation's data: package, separator, payload.
    public let data: [UInt8]
    /// Where the package ends in `data`.
    public let packageCount: Int

    /// A message from a subnegotiation's data; nil for one with no package.
    public init?(position: Int, data: [UInt8]) {
        let end = data.firstIndex(where: JSON.isWhitespace) ?? data.count
        guard end > 0 else { return nil }
        self.position = position
        self.data = data
        packageCount = end
    }

    /// A message made of its parts (tests, and what the client side would send): `package`
    /// must hold no whitespace and not be empty.
    public init(position: Int = 0, package: some Collection<UInt8>, payload: (some Collection<UInt8>)?) {
        var data = Array(package)
        precondition(!data.isEmpty && !data.contains(where: JSON.isWhitespace), "a package name without whitespace")
        packageCount = data.count
        if let payload {
            data.append(UInt8(ascii: " "))
            data += payload
        }
        self.position = position
        self.data = data
    }

    public init(position: Int = 0, package: String, payload: String? = nil) {
        self.init(position: position, package: Array(package.utf8), payload: payload.map { Array($0.utf8) })
    }

    public var package: ArraySlice<UInt8> { data[..<packageCount] }

    /// What follows the separator; nil when that is nothing or only whitespace.
    public var payload: ArraySlice<UInt8>? {
        guard packageCount + 1 < data.count else { return nil }
        let p = data[(packageCount + 1)...]
        return JSON.isBlank(p) ? nil : p
    }
}
