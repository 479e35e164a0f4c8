/// A configured target: where sessions connect. Clients pick targets by name only, so the
/// proxy is never a relay to arbitrary hosts.
public struct Target: Sendable {
    public var name: String
    public var address: SocketAddress
    public var telnet: Bool
    public var connectTimeoutMs: UInt64

    public init(name: String, address: SocketAddress, telnet: Bool = false, connectTimeoutMs: UInt64 = 10_000) {
        self.name = name
        self.address = address
        self.telnet = telnet
        self.connectTimeoutMs = connectTimeoutMs
    }
}
