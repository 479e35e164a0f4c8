/// DNS rebinding protection (SPEC §5). A daemon on a loopback address without a token trusts
/// whoever can reach it, and a web page the user opens can reach it: it rebinds its own name
/// to 127.0.0.1, and the browser then sends the page's requests to us as same-origin. The
/// browser still sends the page's name in `Host`; only names that cannot be an attacker's are
/// served: `localhost`, loopback addresses, and the names the operator allows.
///
/// A pure value: no allocation per request (the `Host` value is compared in place).
public struct HostCheck: Sendable, Equatable {
    /// `--allowed-host` names, lower case.
    private let allowed: [[UInt8]]

    public init(allowedHosts: [String]) {
        allowed = allowedHosts.map { Array($0.lowercased().utf8) }
    }

    /// Whether a request whose `Host` header is `value` (empty: none, as HTTP/1.0 allows) may
    /// be served. `value` is `host` or `host:port`, names in any case, one trailing dot allowed.
    public func allows(_ value: [UInt8]) -> Bool {
        var host = value[...]
        while let last = host.last, last == 32 || last == 9 { host = host.dropLast() }
        if host.isEmpty { return true }
        // Split off the port: after `]` for an IPv6 literal, else after the first `:`.
        var name = host
        if host.first == UInt8(ascii: "[") {
            guard let close = host.firstIndex(of: UInt8(ascii: "]")) else { return false }
            name = host[...close]
        } else if let colon = host.firstIndex(of: UInt8(ascii: ":")) {
            name = host[..<colon]
        }
        let port = host[name.endIndex...]
        if let colon = port.first {
            guard colon == UInt8(ascii: ":"), port.count <= 6,
                  port.dropFirst().allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return false }
        }
        if name.last == UInt8(ascii: "."), name.first != UInt8(ascii: "[") { name = name.dropLast() }
        if name.isEmpty { return false }
        if name.equalsIgnoringCase("localhost") || name.equals("[::1]") || HostCheck.isLoopbackIPv4(name)
            || name.first == UInt8(ascii: "[") && SocketAddress.isIPv6Loopback(name.dropFirst().dropLast()) {
            return true
        }
        return allowed.contains { HostCheck.equalsIgnoringCase(name, $0) }
    }

    /// Whether a `Host` value is `uri-host [":" port]` (RFC 9112 §3.2, RFC 3986 §3.2.2): a
    /// bracketed IP literal or a reg-name (unreserved, sub-delims, `%`), then digits after a
    /// colon. Empty is valid (a URI without authority). Not a check that the name exists.
    public static func isValidHostValue(_ value: [UInt8]) -> Bool {
        value.withUnsafeBufferPointer { v in
            var end = v.count
            while end > 0, v[end - 1] == 32 || v[end - 1] == 9 { end -= 1 }
            var i = 0
            if end > 0, v[0] == UInt8(ascii: "[") {
                i = 1
                while i < end, v[i] != UInt8(ascii: "]") {
                    guard v[i] == UInt8(ascii: ":") || isRegNameByte(v[i]) else { return false }
                    i += 1
                }
                guard i < end, i > 1 else { return false }
                i += 1
            } else {
                while i < end, v[i] != UInt8(ascii: ":") {
                    guard isRegNameByte(v[i]) else { return false }
                    i += 1
                }
            }
            guard i < end else { return true }
            guard v[i] == UInt8(ascii: ":") else { return false }
            i += 1
            while i < end {
                guard v[i] >= 48 && v[i] <= 57 else { return false }
                i += 1
            }
            return true
        }
    }

    /// RFC 3986 reg-name: unreserved, sub-delims and `%` of pct-encoded, as a bit set over
    /// 0…127 (bit c of the first word for c < 64, of the second for c - 64): this runs for every
    /// request, over every byte of its Host.
    @inline(__always) private static func isRegNameByte(_ c: UInt8) -> Bool {
        // Made from "a…zA…Z0…9-._~%!$&'()*+,;=".
        let low: UInt64 = 0x2BFF_7FF2_0000_0000, high: UInt64 = 0x47FF_FFFE_87FF_FFFE
        return c < 64 ? (low &>> UInt64(c)) & 1 != 0 : c < 128 && (high &>> UInt64(c &- 64)) & 1 != 0
    }

    /// `127.a.b.c`, four decimal parts of at most 255.
    static func isLoopbackIPv4(_ name: ArraySlice<UInt8>) -> Bool {
        var parts = 0, digits = 0, value = 0, first = -1
        for c in name {
            if c == UInt8(ascii: ".") {
                guard digits > 0, parts < 3 else { return false }
                if parts == 0 { first = value }
                parts += 1; digits = 0; value = 0
            } else if c >= 48 && c <= 57 {
                digits += 1
                value = value * 10 + Int(c - 48)
                guard digits <= 3, value <= 255 else { return false }
            } else {
                return false
            }
        }
        return parts == 3 && digits > 0 && first == 127
    }

    private static func equalsIgnoringCase(_ a: ArraySlice<UInt8>, _ lower: [UInt8]) -> Bool {
        guard a.count == lower.count else { return false }
        return zip(a, lower).allSatisfy { asciiLower($0) == $1 }
    }

    /// What `--allowed-host` takes: a name (letters, digits, `-`, `.`, `_`) or a bracketed IPv6
    /// address; no port (any port is accepted with it).
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= 253 else { return false }
        if bytes.first == UInt8(ascii: "["), bytes.last == UInt8(ascii: "]"), bytes.count > 2 {
            return bytes.dropFirst().dropLast().allSatisfy { c in
                c == UInt8(ascii: ":") || c == UInt8(ascii: ".") || (c >= 48 && c <= 57) || (asciiLower(c) >= 97 && asciiLower(c) <= 102)
            }
        }
        return bytes.allSatisfy { c in
            let l = asciiLower(c)
            return (l >= 97 && l <= 122) || (c >= 48 && c <= 57) || c == 45 || c == 46 || c == 95
        }
    }
}
