/// A configured target: where sessions connect. Clients pick targets by name only, so the
/// proxy is never a relay to arbitrary hosts.
public struct Target: Sendable {
    public var name: String
    public var address: SocketAddress
    /// Speak telnet to it (SPEC §3).
    public var telnet: Bool
    /// What its bytes are in where they become text (SSE).
    public var charset: Charset
    public var connectTimeoutMs: UInt64
    /// Send it a PROXY header first, naming the player (SPEC §6).
    public var proxyProtocol: ProxyProtocol.Version?

    public init(name: String, address: SocketAddress, telnet: Bool = false, charset: Charset = .utf8,
                connectTimeoutMs: UInt64 = 10_000, proxyProtocol: ProxyProtocol.Version? = nil) {
        self.proxyProtocol = proxyProtocol
        self.name = name
        self.address = address
        self.telnet = telnet
        self.charset = charset
        self.connectTimeoutMs = connectTimeoutMs
    }
}
