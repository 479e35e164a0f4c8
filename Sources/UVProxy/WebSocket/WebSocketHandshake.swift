import CUV

/// The server's side of the opening handshake (RFC 6455 §4.2), as a value with no I/O.
///
/// The route gives the request's header values (`Request`); `evaluate` answers accept, with
/// the subprotocol chosen and the `Sec-WebSocket-Accept` value, or the HTTP error to answer;
/// `responseHead` writes the `101 Switching Protocols` head. What stays with the caller: the
/// method must be `GET` and the version HTTP/1.1 (§4.2.1 items 1 and 2: a `405`/`400` of the
/// router's own), `Host`, `Origin` (browsers send it; the proxy's token, not the origin, is
/// what guards its sessions), and the path and query (SPEC §8).
///
/// Checks, in order, each refusing with `400 Bad Request` (`.badRequest`):
/// 1. `Upgrade` holds `websocket` (a comma-separated list, compared ignoring ASCII case).
/// 2. `Connection` holds `Upgrade` (a list: browsers send `keep-alive, Upgrade`).
/// 3. `Sec-WebSocket-Version` is present; if it is anything but `13` the answer is instead
///    `426 Upgrade Required` with `Sec-WebSocket-Version: 13` (`.upgradeRequired`, §4.4),
///    which tells the client the version the server speaks.
/// 4. `Sec-WebSocket-Key` is base64 of 16 bytes: 22 characters of the base64 alphabet and
///    `==`. The last character's four unused bits are not checked (base64 decoders ignore them,
///    as Python's and Go's do; the value is only hashed, never decoded).
/// 5. `Sec-WebSocket-Protocol`, when sent, is a list of tokens (RFC 9110 §5.6.2; empty
///    elements are skipped, as a list allows). A malformed one is refused rather than guessed.
///
/// Header values are taken with surrounding spaces and tabs trimmed. A header sent on more
/// than one line is given as its lines joined with `, ` (RFC 9110 §5.3), which keeps the lists
/// right and makes a repeated `Sec-WebSocket-Key` or `Sec-WebSocket-Version` malformed, as it
/// should be.
///
/// **Subprotocol**: the first of the caller's names, in the caller's order of preference
/// (SPEC §8: `binary`, `gmcp.mudstandards.org`, `terminal.mudstandards.org`), that the client
/// offered, compared byte for byte (§4.2.2 has the server choose, and the client checks the
/// answer is one it offered). None offered, or none of ours offered: no subprotocol and no
/// `Sec-WebSocket-Protocol` in the answer (§4.2.2: echoing one the client did not offer, or
/// one we do not speak, would be wrong); SPEC §8 reads that as text frames.
///
/// **Extensions are never accepted.** `Sec-WebSocket-Extensions` is read by no one and never
/// answered, which is how §9.1 declines every offer. In particular permessage-deflate
/// (RFC 7692), which browsers always offer: its zlib state costs about 256 KB per connection
/// (a deflate stream takes `(1 << (windowBits + 2)) + (1 << (memLevel + 9))` bytes, 256 KiB
/// at the defaults, and the inflate stream another 32 KiB window), more than everything else
/// a session holds, for text that a MUD sends in small pieces.
/// Without an extension RSV1–3 must be 0, and the frame parser fails a frame that sets one.
public enum WebSocketHandshake {
    /// The header values of an upgrade request; nil for a header that was not sent.
    public struct Request: Sendable {
        public var upgrade: [UInt8]?
        public var connection: [UInt8]?
        public var version: [UInt8]?
        public var key: [UInt8]?
        public var protocols: [UInt8]?
        public var extensions: [UInt8]?

        public init(upgrade: [UInt8]? = nil, connection: [UInt8]? = nil, version: [UInt8]? = nil,
                    key: [UInt8]? = nil, protocols: [UInt8]? = nil, extensions: [UInt8]? = nil) {
            self.upgrade = upgrade
            self.connection = connection
            self.version = version
            self.key = key
            self.protocols = protocols
            self.extensions = extensions
        }
    }

    /// What to answer.
    public enum Outcome: Equatable, Sendable {
        /// Switch protocols: write `responseHead(accept:subprotocol:)` and speak frames.
        case accept(accept: [UInt8], subprotocol: String?)
        /// `400 Bad Request`; the reason is for the log and the body.
        case badRequest(String)
        /// `426 Upgrade Required` with `versionHeader` (the client asked for another version).
        case upgradeRequired

        /// The HTTP status: 101, 400 or 426.
        public var status: Int {
            switch self {
            case .accept: return 101
            case .badRequest: return 400
            case .upgradeRequired: return 426
            }
        }
    }

    /// The one version the server speaks, and the header a `426` carries (§4.4).
    public static let version = "13"
    public static let versionHeader = (name: "Sec-WebSocket-Version", value: version)

    /// The GUID that §1.3 appends to the key before hashing.
    static let acceptGUID = Array("258EAFA5-E914-47DA-95CA-C5AB0DC85B11".utf8)

    /// Decides the handshake (see the type's checks); `subprotocols` are the names the caller
    /// speaks, most preferred first.
    public static func evaluate(_ request: Request, subprotocols: [String]) -> Outcome {
        guard let upgrade = request.upgrade, listContains(upgrade, "websocket") else {
            return .badRequest("no Upgrade: websocket")
        }
        guard let connection = request.connection, listContains(connection, "upgrade") else {
            return .badRequest("no Connection: Upgrade")
        }
        guard let versionValue = request.version, !trim(versionValue[...]).isEmpty else {
            return .badRequest("no Sec-WebSocket-Version")
        }
        guard trim(versionValue[...]).elementsEqual(version.utf8) else { return .upgradeRequired }
        guard let keyValue = request.key else { return .badRequest("no Sec-WebSocket-Key") }
        let key = trim(keyValue[...])
        guard isKey(key) else { return .badRequest("bad Sec-WebSocket-Key") }
        var chosen: String?
        if let offered = request.protocols {
            guard let tokens = tokenList(offered) else { return .badRequest("bad Sec-WebSocket-Protocol") }
            chosen = subprotocols.first { ours in tokens.contains { $0.elementsEqual(ours.utf8) } }
        }
        return .accept(accept: acceptValue(key: key), subprotocol: chosen)
    }

    /// SHA-1, looked up once: OpenSSL 3's one-call `SHA1()` fetches the algorithm from its
    /// provider on every call (a name lookup under a lock, most of a handshake's CPU).
    /// (A fetched EVP_MD is immutable: OpenSSL allows its use from any thread.)
    nonisolated(unsafe) private static let sha1 = EVP_MD_fetch(nil, "SHA1", nil)

    /// `Sec-WebSocket-Accept` for a key (§4.2.2 item 5.4): base64 of the SHA-1 of the key, as
    /// sent, followed by the GUID. 28 bytes. SHA-1 and base64 are libcrypto's (OpenSSL).
    public static func acceptValue(key: some Collection<UInt8>) -> [UInt8] {
        var input = Array(key)
        input += acceptGUID
        var digest = [UInt8](repeating: 0, count: Int(SHA_DIGEST_LENGTH))
        input.withUnsafeBufferPointer { i in
            digest.withUnsafeMutableBufferPointer { d in
                var length: UInt32 = 0
                _ = EVP_Digest(i.baseAddress, i.count, d.baseAddress, &length, sha1, nil)
            }
        }
        // EVP_EncodeBlock writes 4 characters per 3 bytes (28 for 20) and a NUL after them.
        var out = [UInt8](repeating: 0, count: 29)
        let n = digest.withUnsafeBufferPointer { d in
            out.withUnsafeMutableBufferPointer { o in EVP_EncodeBlock(o.baseAddress, d.baseAddress, Int32(d.count)) }
        }
        out.removeLast(out.count - Int(n))
        return out
    }

    /// The `101 Switching Protocols` head, ending with its empty line: `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Accept`, the subprotocol when one was chosen, then `extraHeaders` (such
    /// as `X-Session-Id`, SPEC §8) in order. The extra names and values are the caller's own;
    /// a CR, LF or NUL in one would split the head and traps.
    public static func responseHead(accept: [UInt8], subprotocol: String?,
                                    extraHeaders: [(name: String, value: String)] = []) -> [UInt8] {
        var out: [UInt8] = []
        appendResponseHead(accept: accept, subprotocol: subprotocol, extraHeaders: extraHeaders, to: &out)
        return out
    }

    public static func appendResponseHead(accept: [UInt8], subprotocol: String?,
                                          extraHeaders: [(name: String, value: String)] = [],
                                          to out: inout [UInt8]) {
        out.reserveCapacity(out.count + 160)
        out += "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ".utf8
        out += accept
        out += "\r\n".utf8
        if let subprotocol {
            appendHeader("Sec-WebSocket-Protocol", subprotocol, to: &out)
        }
        for (name, value) in extraHeaders {
            appendHeader(name, value, to: &out)
        }
        out += "\r\n".utf8
    }

    private static func appendHeader(_ name: String, _ value: String, to out: inout [UInt8]) {
        precondition(!name.utf8.contains { $0 == 13 || $0 == 10 || $0 == 0 || $0 == UInt8(ascii: ":") } && !name.isEmpty,
                     "a header name the caller made is malformed")
        precondition(!value.utf8.contains { $0 == 13 || $0 == 10 || $0 == 0 }, "a header value the caller made holds CR, LF or NUL")
        out += name.utf8
        out += ": ".utf8
        out += value.utf8
        out += "\r\n".utf8
    }

    // MARK: Header values

    @inline(__always) static func isOWS(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 }

    static func trim(_ s: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var s = s
        while let f = s.first, isOWS(f) { s = s.dropFirst() }
        while let l = s.last, isOWS(l) { s = s.dropLast() }
        return s
    }

    /// The non-empty elements of a comma-separated list, trimmed.
    static func elements(_ value: [UInt8]) -> [ArraySlice<UInt8>] {
        value[...].split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
            .map { trim($0) }
            .filter { !$0.isEmpty }
    }

    /// Whether the list holds `lowercase`, ignoring ASCII case.
    static func listContains(_ value: [UInt8], _ lowercase: StaticString) -> Bool {
        elements(value).contains { $0.equalsIgnoringCase(lowercase) }
    }

    /// A list of tokens, or nil if an element is not a token.
    static func tokenList(_ value: [UInt8]) -> [ArraySlice<UInt8>]? {
        let list = elements(value)
        return list.allSatisfy { $0.allSatisfy(isTokenChar) } ? list : nil
    }

    /// tchar (RFC 9110 §5.6.2).
    static func isTokenChar(_ c: UInt8) -> Bool {
        switch c {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default: return false
        }
    }

    /// base64 of 16 bytes: 22 characters of the alphabet, then `==`.
    static func isKey(_ key: ArraySlice<UInt8>) -> Bool {
        guard key.count == 24 else { return false }
        let start = key.startIndex
        guard key[start + 22] == UInt8(ascii: "="), key[start + 23] == UInt8(ascii: "=") else { return false }
        return key[start..<(start + 22)].allSatisfy { c in
            switch c {
            case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, UInt8(ascii: "+"), UInt8(ascii: "/"): return true
            default: return false
            }
        }
    }
}
