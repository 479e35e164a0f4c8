import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Per request: the latency histogram and the access line; the client's address (SPEC §5).
extension ProxyDaemon {
    // MARK: Requests: latency histogram, access log

    public func requestFinished(_ connection: HTTPConnection, status: HTTPStatus, nanoseconds: UInt64, streamed: Bool) {
        #if !UVPROXYD_NO_REQUEST_METRICS  // scripts/bench-metrics builds without it, to measure its cost
        // A stream's duration is how long a player stayed, not how fast we answered.
        if !streamed { metrics.requestDuration.record(nanoseconds: nanoseconds) }
        #endif
        guard logsRequests else { return }  // nothing is formatted unless it is logged
        let request = connection.request
        logger.debug("request", metadata: [
            "client": "\(clientAddress(connection))",
            "method": "\(String(describing: request.method).uppercased())",
            "path": "\(ProxyDaemon.loggablePath(request.target))",
            "status": "\(status.rawValue)",
            "duration_us": "\(nanoseconds / 1000)",
            "stream": "\(streamed)",
        ])
    }

    /// The client's address for logs (SPEC §5): the TCP peer with its port, or with
    /// `--trust-proxy` the last `X-Forwarded-For` entry (the one the reverse proxy in front of
    /// us appended; earlier ones are whatever the client wrote).
    func clientAddress(_ connection: HTTPConnection) -> String {
        forwardedClient(connection) ?? connection.peerAddress?.description ?? "-"
    }

    /// The same without the peer's port: what `max-sessions-per-client` counts by.
    func clientHost(_ connection: HTTPConnection) -> String {
        forwardedClient(connection) ?? connection.peerAddress?.host ?? "-"
    }

    /// The same as an address, for the PROXY header a target gets (SPEC §6). A forwarded client
    /// has no port we know (0); one that is not an IP address is unknown (nil).
    func clientOrigin(_ connection: HTTPConnection) -> SocketAddress? {
        guard let forwarded = forwardedClient(connection) else { return connection.peerAddress }
        return SocketAddress(literal: forwarded, port: 0)
    }

    func forwardedClient(_ connection: HTTPConnection) -> String? {
        let forwarded = connection.request.forwardedFor
        guard config.trustProxy, !forwarded.isEmpty else { return nil }
        return ProxyDaemon.lastForwardedAddress(forwarded)
    }

    /// The last non-empty entry of an `X-Forwarded-For` value, without a port where one was
    /// added (`1.2.3.4:5555`, `[2001:db8::1]:443`, as some balancers write them) and without
    /// IPv6 brackets; a bare IPv6 address is kept whole. Not judged further: a name stays a
    /// name (the callers take it as an unknown address).
    static func lastForwardedAddress(_ value: [UInt8]) -> String? {
        let entries = value.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        guard let entry = entries.reversed().map({ String(decoding: $0, as: UTF8.self).trimmingSpaces })
            .first(where: { !$0.isEmpty }) else { return nil }
        if entry.hasPrefix("["), let close = entry.firstIndex(of: "]") {
            return String(entry[entry.index(after: entry.startIndex)..<close])
        }
        if let colon = entry.firstIndex(of: ":"), case let port = entry[entry.index(after: colon)...],
           !port.isEmpty, port.allSatisfy({ $0.isASCII && $0.isNumber }) {
            return String(entry[..<colon])  // exactly one colon, then digits: an IPv4 address or name with a port
        }
        return entry
    }

    /// Logs carry the first 8 characters of a session id: enough to follow a session through
    /// the log, not enough to take it over (the id is the player's only secret).
    static func shortID(_ id: SessionID) -> String { String("\(id)".prefix(8)) }

    /// The path without its query (which may hold commands, passwords included) and with
    /// session ids shortened.
    static func loggablePath(_ target: [UInt8]) -> String {
        var path = String(decoding: target.prefix { $0 != UInt8(ascii: "?") }, as: UTF8.self)
        if path.hasPrefix("/sessions/") {
            let rest = path.dropFirst(10)
            let id = rest.prefix { $0 != "/" }
            path = "/sessions/" + id.prefix(8) + (id.count > 8 ? "…" : "") + rest.dropFirst(id.count)
        }
        return path
    }
}
