/// The request methods the API distinguishes.
public enum HTTPMethod: Sendable {
    case get, head, post, put, delete, options, other

    init(parserMethod: UInt32) {
        switch parserMethod {
        case 0: self = .delete
        case 1: self = .get
        case 2: self = .head
        case 3: self = .post
        case 4: self = .put
        case 6: self = .options
        default: self = .other
        }
    }
}

/// One parsed request. Each connection's parser reuses a single instance (a class, so handing
/// it to the API copies one reference), and its arrays keep their capacity from request to
/// request: a poll allocates nothing here. Valid until the handler has answered.
///
/// Only the headers the proxy acts on are kept; the rest are skipped as they are parsed.
public final class HTTPRequest {
    public var method: HTTPMethod = .get
    public var target: [UInt8] = []          // request-target as sent: path and query
    public var versionMinor: Int = 1
    public var versionMajor: Int = 1
    public var keepAlive = true
    public var body: [UInt8] = []
    public var contentType: [UInt8] = []
    public var authorization: [UInt8] = []
    /// Where an SSE client resumes (EventSource sends it on reconnect).
    public var lastEventID: [UInt8] = []
    /// Logged as the client's address with `--trust-proxy`.
    public var forwardedFor: [UInt8] = []
    /// The `Host` header (empty without one); checked against DNS rebinding.
    public var host: [UInt8] = []
    /// The web client's files answer `304` when it names their ETag (more than one header: joined
    /// with ", ", as one list).
    public var ifNoneMatch: [UInt8] = []
    public var expectContinue = false
    /// The headers of a WebSocket upgrade (SPEC §8), empty when absent; a header sent on
    /// several lines is kept joined with ", ".
    public var upgrade: [UInt8] = []
    public var connection: [UInt8] = []
    public var webSocketVersion: [UInt8] = []
    public var webSocketKey: [UInt8] = []
    public var webSocketProtocol: [UInt8] = []
    public var webSocketExtensions: [UInt8] = []
    /// The page a browser's request comes from (`Origin`), checked on a WebSocket upgrade.
    public var origin: [UInt8] = []
    var transferEncodingCount = 0
    /// What its `Transfer-Encoding` says besides `chunked` (RFC 9112 §6).
    enum TransferCoding: UInt8 { case chunkedOrNone, otherCoding, chunkedNotLast }
    var transferCoding = TransferCoding.chunkedOrNone
    var contentLengthCount = 0
    var hostCount = 0

    public init() {}

    func reset() {
        method = .get
        target.clear()
        body.clear()
        contentType.clear()
        authorization.clear()
        lastEventID.clear()
        forwardedFor.clear()
        host.clear()
        ifNoneMatch.clear()
        expectContinue = false
        upgrade.clear()
        connection.clear()
        webSocketVersion.clear()
        webSocketKey.clear()
        webSocketProtocol.clear()
        webSocketExtensions.clear()
        origin.clear()
        transferEncodingCount = 0
        transferCoding = .chunkedOrNone
        contentLengthCount = 0
        hostCount = 0
        keepAlive = true
    }

    /// Frees what the head held, once the connection parses no more requests (an SSE stream or
    /// a WebSocket: held for hours, by the thousand). The target and `X-Forwarded-For` stay: the
    /// access-log line is written when the stream ends.
    func releaseStorage() {
        body = []
        contentType = []
        authorization = []
        lastEventID = []
        host = []
        ifNoneMatch = []
        upgrade = []
        connection = []
        webSocketVersion = []
        origin = []
        webSocketKey = []
        webSocketProtocol = []
        webSocketExtensions = []
    }

    /// An absolute-form target (`http://host:port/path?query`, RFC 9112 §3.2.2, which a server
    /// must accept) becomes its origin form (`/path?query`, `/` when it has no path), and its
    /// authority the request's `Host` (the header's value is ignored then, as the RFC says; the
    /// header must still be there in HTTP/1.1).
    /// Any other target (`*`, an authority alone) is left as it is: no route has it. False for
    /// an authority with userinfo (`http://user@host/`), an error (RFC 9110 §4.2.4).
    func takeAbsoluteForm() -> Bool {
        let scheme: Int
        if target.count >= 7, target[0..<7].equalsIgnoringCase("http://") {
            scheme = 7
        } else if target.count >= 8, target[0..<8].equalsIgnoringCase("https://") {
            scheme = 8
        } else {
            return true
        }
        let rest = target[scheme...]
        let end = rest.firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") } ?? rest.endIndex
        let authority = Array(rest[..<end])
        guard !authority.contains(UInt8(ascii: "@")) else { return false }
        guard !authority.isEmpty else { return true }
        var origin = Array(rest[end...])
        if origin.first != UInt8(ascii: "/") { origin.insert(UInt8(ascii: "/"), at: 0) }
        target = origin
        if hostCount == 1 { host = authority }  // HTTP/1.1 without Host is still 400 (framingProblem)
        return true
    }

    /// Why the headers make the message's framing or target ambiguous (RFC 9112 §6.1, §6.3,
    /// §3.2), or nil.
    var framingProblem: String? {
        if transferEncodingCount > 1 { return "more than one Transfer-Encoding header" }
        if contentLengthCount > 1 { return "more than one Content-Length header" }
        if transferEncodingCount > 0 && contentLengthCount > 0 { return "Content-Length with Transfer-Encoding" }
        if hostCount > 1 { return "more than one Host header" }
        // RFC 9112 §3.2: an HTTP/1.1 request names its host, in a valid `uri-host [":" port]`.
        if hostCount == 0 && versionMajor == 1 && versionMinor == 1 { return "an HTTP/1.1 request without Host" }
        if hostCount == 1 && !HostCheck.isValidHostValue(host) { return "an invalid Host value" }
        return nil
    }

    public var isHTTP10: Bool { versionMajor == 1 && versionMinor == 0 }

    /// Whether the body is a form (`application/x-www-form-urlencoded`, parameters allowed).
    public var hasFormBody: Bool {
        var type = contentType[...]
        if let semicolon = type.firstIndex(of: UInt8(ascii: ";")) { type = type[..<semicolon] }
        while type.last == UInt8(ascii: " ") { type = type.dropLast() }
        return type.equalsIgnoringCase("application/x-www-form-urlencoded")
    }
}

@inline(__always) func asciiLower(_ c: UInt8) -> UInt8 {
    (c >= 65 && c <= 90) ? c | 0x20 : c
}

extension Array where Element == UInt8 {
    /// Empties the array, keeping its storage; free when it is already empty (most headers are
    /// absent from most requests).
    @inline(__always) mutating func clear() {
        if !isEmpty { removeAll(keepingCapacity: true) }
    }

    /// Becomes a copy of `other` in its own storage (assigning would share `other`'s buffer, and
    /// the parser's next `clear()` of it would then allocate a new one: a malloc per request).
    @inline(__always) mutating func keep(_ other: [UInt8]) {
        clear()
        append(contentsOf: other)
    }
}
