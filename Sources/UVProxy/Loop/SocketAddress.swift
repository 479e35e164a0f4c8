import CUV
#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address and port, resolved once (at start-up or reload), never per request.
public struct SocketAddress: Sendable, CustomStringConvertible {
    var storage = sockaddr_storage()
    public let host: String
    public let port: Int

    /// Resolves `host` (a literal address or a name) for TCP. A name blocks on the resolver:
    /// start-up only (`AddressResolver` looks names up without blocking the loop).
    public init(host: String, port: Int) throws {
        guard (0...65535).contains(port) else { throw AddressError("port \(port) is out of range") }
        if let literal = SocketAddress(literal: host, port: port) {
            self = literal
            return
        }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let gai = getaddrinfo(SocketAddress.unbracketed(host), String(port), &hints, &result)
        guard gai == 0, let first = result, let addr = first.pointee.ai_addr else {
            throw AddressError("cannot resolve host '\(host)'")
        }
        defer { freeaddrinfo(result) }
        self.init(host: host, port: port, raw: addr, length: Int(first.pointee.ai_addrlen))
    }

    /// A literal IPv4 or IPv6 address (`[v6]` too); nil for a name or a bad port.
    init?(literal host: String, port: Int) {
        guard (0...65535).contains(port) else { return nil }
        self.host = host
        self.port = port
        let bare = SocketAddress.unbracketed(host)
        var rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { uv_ip4_addr(bare, Int32(port), $0) }
        }
        if rc == 0 { return }
        rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { uv_ip6_addr(bare, Int32(port), $0) }
        }
        if rc != 0 { return nil }
    }

    /// A resolver's answer for `host`.
    init(host: String, port: Int, raw: UnsafePointer<sockaddr>, length: Int) {
        self.host = host
        self.port = port
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: raw, count: min(length, dst.count)))
        }
    }

    private static func unbracketed(_ host: String) -> String {
        host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    }

    /// `HOST:PORT` (`[v6]:PORT` for IPv6) as its parts; nil if it is not that shape.
    static func split(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), colon != text.startIndex,
              let port = Int(text[text.index(after: colon)...]) else { return nil }
        return (String(text[..<colon]), port)
    }

    /// Parses `HOST:PORT` (`[v6]:PORT` for IPv6).
    public init(parsing text: String) throws {
        guard let (host, port) = SocketAddress.split(text) else {
            let hasHost = text.lastIndex(of: ":").map { $0 != text.startIndex } ?? false
            throw AddressError(hasHost ? "'\(text)' has no valid port" : "'\(text)' is not HOST:PORT")
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

    /// `::1` in any of its spellings (`0:0:0:0:0:0:0:1`, `0::1`, `::01`…), parsed by
    /// `inet_pton`; a zone or anything else is not.
    static func isIPv6Loopback(_ text: ArraySlice<UInt8>) -> Bool {
        guard text.count <= 45 else { return false }  // INET6_ADDRSTRLEN - 1
        var address = in6_addr()
        let parsed = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 46) { cString in  // no heap
            for (i, c) in text.enumerated() { cString[i] = CChar(bitPattern: c) }
            cString[text.count] = 0
            return inet_pton(AF_INET6, cString.baseAddress, &address) == 1
        }
        guard parsed else { return false }
        return withUnsafeBytes(of: &address) { $0.prefix(15).allSatisfy { $0 == 0 } && $0[15] == 1 }
    }

    /// 127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104.
    public var isLoopback: Bool {
        withUnsafePointer(to: storage) { ptr in
            if storage.ss_family == sa_family_t(AF_INET) {
                return ptr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                    UInt32(bigEndian: $0.pointee.sin_addr.s_addr) >> 24 == 127
                }
            }
            guard storage.ss_family == sa_family_t(AF_INET6) else { return false }
            return ptr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                withUnsafeBytes(of: a.pointee.sin6_addr) { b in
                    b.prefix(15).allSatisfy { $0 == 0 } && b[15] == 1
                        || b.prefix(10).allSatisfy { $0 == 0 } && b[10] == 0xff && b[11] == 0xff && b[12] == 127
                }
            }
        }
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>) -> R) -> R {
        withUnsafePointer(to: storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
    }
}

public struct AddressError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

// MARK: PROXY protocol endpoints (SPEC §6)

extension SocketAddress {
    /// The address a PROXY header carries.
    init(_ endpoint: ProxyProtocol.Endpoint) {
        var storage = sockaddr_storage()
        withUnsafeMutablePointer(to: &storage) { ptr in
            if endpoint.isIPv4 {
                ptr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a in
                    a.pointee.sin_family = sa_family_t(AF_INET)
                    a.pointee.sin_port = endpoint.port.bigEndian
                    withUnsafeMutableBytes(of: &a.pointee.sin_addr) { $0.copyBytes(from: endpoint.address) }
                }
            } else {
                ptr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                    a.pointee.sin6_family = sa_family_t(AF_INET6)
                    a.pointee.sin6_port = endpoint.port.bigEndian
                    withUnsafeMutableBytes(of: &a.pointee.sin6_addr) { $0.copyBytes(from: endpoint.address) }
                }
            }
        }
        self.storage = storage
        host = endpoint.isIPv4 ? endpoint.addressText : "[\(endpoint.addressText)]"
        port = Int(endpoint.port)
    }

    /// This address as a PROXY header carries it (nil for a family other than IPv4 and IPv6).
    var endpoint: ProxyProtocol.Endpoint? {
        withUnsafePointer(to: storage) { ptr in
            switch Int32(storage.ss_family) {
            case AF_INET:
                return ptr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a in
                    ProxyProtocol.Endpoint(address: withUnsafeBytes(of: a.pointee.sin_addr) { Array($0) },
                                           port: UInt16(bigEndian: a.pointee.sin_port))
                }
            case AF_INET6:
                return ptr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                    ProxyProtocol.Endpoint(address: withUnsafeBytes(of: a.pointee.sin6_addr) { Array($0) },
                                           port: UInt16(bigEndian: a.pointee.sin6_port))
                }
            default:
                return nil
            }
        }
    }
}
