import CUV
#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address and port, resolved once (at start-up or reload), never per request.
public struct SocketAddress: Sendable, CustomStringConvertible {
    var storage = sockaddr_storage()
    public let host: String
    public let port: Int

    /// Resolves `host` (a literal address or a name) for TCP.
    public init(host: String, port: Int) throws {
        self.host = host
        self.port = port
        guard (0...65535).contains(port) else { throw AddressError("port \(port) is out of range") }
        let unbracketed = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        var rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { uv_ip4_addr(unbracketed, Int32(port), $0) }
        }
        if rc == 0 { return }
        rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { uv_ip6_addr(unbracketed, Int32(port), $0) }
        }
        if rc == 0 { return }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let gai = getaddrinfo(unbracketed, String(port), &hints, &result)
        guard gai == 0, let first = result, let addr = first.pointee.ai_addr else {
            throw AddressError("cannot resolve host '\(host)'")
        }
        defer { freeaddrinfo(result) }
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: addr, count: Int(first.pointee.ai_addrlen)))
        }
    }

    /// Parses `HOST:PORT` (`[v6]:PORT` for IPv6).
    public init(parsing text: String) throws {
        guard let colon = text.lastIndex(of: ":"), colon != text.startIndex else {
            throw AddressError("'\(text)' is not HOST:PORT")
        }
        let host = String(text[..<colon])
        guard let port = Int(text[text.index(after: colon)...]) else {
            throw AddressError("'\(text)' has no valid port")
        }
        try self.init(host: host, port: port)
    }

    /// Reads the address a socket is bound to.
    init(_ raw: sockaddr_storage) {
        storage = raw
        var buf = [CChar](repeating: 0, count: 64)
        var port = 0
        var copy = raw
        withUnsafePointer(to: &copy) { ptr in
            if raw.ss_family == sa_family_t(AF_INET6) {
                ptr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                    _ = uv_ip6_name(a, &buf, buf.count)
                    port = Int(UInt16(bigEndian: a.pointee.sin6_port))
                }
            } else {
                ptr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a in
                    _ = uv_ip4_name(a, &buf, buf.count)
                    port = Int(UInt16(bigEndian: a.pointee.sin_port))
                }
            }
        }
        let name = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        host = raw.ss_family == sa_family_t(AF_INET6) ? "[\(name)]" : name
        self.port = port
    }

    public var description: String { "\(host):\(port)" }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>) -> R) -> R {
        withUnsafePointer(to: storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
    }
}

public struct AddressError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}
