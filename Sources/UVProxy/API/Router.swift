/// The API's paths (SPEC §2).
public enum Route: Equatable, Sendable {
    case sessions                       // /sessions
    case session(SessionID?)            // /sessions/{id}
    case input(SessionID?)              // /sessions/{id}/input
    case events(SessionID?)             // /sessions/{id}/events
    case gmcp(SessionID?)               // /sessions/{id}/gmcp (SPEC §7)
    case gmcpState(SessionID?)          // /sessions/{id}/gmcp/state
    case webSocket(SessionID?)          // /sessions/{id}/ws (SPEC §8)
    case webSocketCreate                // /ws: create and attach in one step
    case mud                            // /mud
    case healthz
    case metrics
    case openAPI                        // /openapi.yaml: this API's OpenAPI document
    case webPage                        // /
    case webScript                      // /client.js
    case webStyle                       // /client.css

    /// The methods the path allows, for `405` and its `Allow` header.
    public var allow: StaticString {
        switch self {
        case .sessions: return "POST"
        case .session: return "GET, DELETE"
        case .input: return "POST"
        case .events, .gmcpState, .webSocket, .webSocketCreate: return "GET"
        case .gmcp: return "GET, POST"
        case .mud: return "GET, POST"
        case .healthz, .metrics, .openAPI, .webPage, .webScript, .webStyle: return "GET, HEAD"
        }
    }

    /// The web client's page and files (served with `--web`, without a token).
    public var isWebClient: Bool {
        switch self {
        case .webPage, .webScript, .webStyle: return true
        default: return false
        }
    }

    public func allows(_ method: HTTPMethod) -> Bool {
        switch (self, method) {
        case (.sessions, .post), (.session, .get), (.session, .delete), (.input, .post), (.events, .get),
             (.gmcp, .get), (.gmcp, .post), (.gmcpState, .get), (.webSocket, .get), (.webSocketCreate, .get),
             (.mud, .get), (.mud, .post), (.healthz, .get), (.healthz, .head), (.metrics, .get), (.metrics, .head),
             (.openAPI, .get), (.openAPI, .head),
             (.webPage, .get), (.webPage, .head), (.webScript, .get), (.webScript, .head),
             (.webStyle, .get), (.webStyle, .head):
            return true
        default:
            return false
        }
    }
}

/// Splits a request-target into path and query and finds its route.
public enum Router {
    /// `nil` when no route has that path (404). A syntactically valid id segment that is not
    /// one of ours routes with a nil id, so the API answers "unknown session".
    public static func route(path: ArraySlice<UInt8>) -> Route? {
        route(path, id: { SessionID(text: $0) })
    }

    /// With `--node-id` (SPEC §9): ids are `idPrefix` (`NAME-`) and 22 characters; an id
    /// without it is not one of ours.
    public static func route(path: ArraySlice<UInt8>, idPrefix: [UInt8]) -> Route? {
        route(path, id: { SessionID(text: $0, prefix: idPrefix) })
    }

    @inline(__always)
    private static func route(_ path: ArraySlice<UInt8>, id parse: (ArraySlice<UInt8>) -> SessionID?) -> Route? {
        var p = path
        if p.count > 1, p.last == UInt8(ascii: "/") { p = p.dropLast() }
        if p.equals("/") { return .webPage }
        if p.equals("/client.js") { return .webScript }
        if p.equals("/client.css") { return .webStyle }
        if p.equals("/mud") { return .mud }
        if p.equals("/healthz") { return .healthz }
        if p.equals("/metrics") { return .metrics }
        if p.equals("/ws") { return .webSocketCreate }
        if p.equals("/openapi.yaml") { return .openAPI }
        let prefix: StaticString = "/sessions"
        guard p.hasPrefix(prefix) else { return nil }
        var rest = p.dropFirst(prefix.utf8CodeUnitCount)
        if rest.isEmpty { return .sessions }
        guard rest.first == UInt8(ascii: "/") else { return nil }
        rest = rest.dropFirst()
        let slash = rest.firstIndex(of: UInt8(ascii: "/")) ?? rest.endIndex
        let idText = rest[rest.startIndex..<slash]
        guard isIDSyntax(idText) else { return nil }
        let id = parse(idText)
        let tail = rest[slash...]
        if tail.isEmpty { return .session(id) }
        if tail.equals("/input") { return .input(id) }
        if tail.equals("/events") { return .events(id) }
        if tail.equals("/gmcp") { return .gmcp(id) }
        if tail.equals("/gmcp/state") { return .gmcpState(id) }
        if tail.equals("/ws") { return .webSocket(id) }
        return nil
    }

    /// 1 to 64 characters of `[A-Za-z0-9_-]` (SPEC §1).
    static func isIDSyntax(_ s: ArraySlice<UInt8>) -> Bool {
        guard (1...64).contains(s.count) else { return false }
        return s.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95
        }
    }

    /// Path and query of a request-target (a fragment, if any, is dropped).
    public static func split(_ target: [UInt8]) -> (path: ArraySlice<UInt8>, query: ArraySlice<UInt8>) {
        var all = target[...]
        if let hash = all.firstIndex(of: UInt8(ascii: "#")) { all = all[..<hash] }
        guard let q = all.firstIndex(of: UInt8(ascii: "?")) else { return (all, all[all.endIndex...]) }
        return (all[..<q], all[(q + 1)...])
    }
}

/// The line-ending rule for commands (SPEC §2, Input): `\r\n` stays, a bare final `\n`
/// becomes `\r\n`, anything else gets `\r\n` appended.
public enum LineEnding {
    /// How many bytes of `command` to send, and whether `\r\n` follows them.
    public static func terminate<C: BidirectionalCollection>(_ command: C) -> (keep: Int, appendCRLF: Bool)
        where C.Element == UInt8 {
        let n = command.count
        guard let last = command.last, last == 0x0A else { return (n, true) }
        if n >= 2, command[command.index(command.endIndex, offsetBy: -2)] == 0x0D { return (n, false) }
        return (n - 1, true)
    }
}
