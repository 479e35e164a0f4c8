/// A configured target: where sessions connect. Clients pick targets by name only, so the
/// proxy is never a relay to arbitrary hosts.
public struct Target: Sendable {
    public var name: String
    public var address: SocketAddress { didSet { endpoint = address.endpoint } }
    /// `address` as a PROXY header names it (kept: a create with a header reads it).
    public private(set) var endpoint: ProxyProtocol.Endpoint?
    /// Speak telnet to it (SPEC §3).
    public var telnet: Bool
    /// What its bytes are in where they become text (SSE).
    public var charset: Charset
    public var connectTimeoutMs: UInt64
    /// Send it a PROXY header first, naming the player (SPEC §6).
    public var proxyProtocol: ProxyProtocol.Version?
    /// Speak GMCP with it (SPEC §7; implies telnet).
    public var gmcp: Bool

    public init(name: String, address: SocketAddress, telnet: Bool = false, charset: Charset = .utf8,
                connectTimeoutMs: UInt64 = 10_000, proxyProtocol: ProxyProtocol.Version? = nil, gmcp: Bool = false) {
        self.proxyProtocol = proxyProtocol
        self.gmcp = gmcp
        self.name = name
        self.address = address
        self.endpoint = address.endpoint
        self.telnet = telnet || gmcp
        self.charset = charset
        self.connectTimeoutMs = connectTimeoutMs
    }
}
