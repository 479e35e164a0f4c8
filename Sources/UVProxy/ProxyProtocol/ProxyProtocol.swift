/// The PROXY protocol (HAProxy's `doc/proxy-protocol.txt`, versions 1 and 2): the header a proxy
/// in front of us sends first on a client connection, carrying the client's real address, and
/// the one we send first on a connection to a game, carrying the player's.
///
/// Pure values, no I/O and no libuv (the loop's calls stay in Loop/): the reading side is
/// `ProxyHeaderParser`, fed whatever the reads bring; the writing side is `header(_:source:destination:)`.
/// Addresses are parsed and printed here rather than with inet_pton/inet_ntop, so that the
/// whole of it runs under the fuzzer and no C string is built from a client's bytes; the tests
/// hold both to glibc's.
public enum ProxyProtocol {
    public enum Version: String, Sendable { case v1, v2 }

    /// An IP endpoint as a PROXY header carries it: 4 address bytes (IPv4) or 16 (IPv6), network order.
    ///
    /// An address of any other length is a programmer's error: `init` traps on it; where one is
    /// met anyway (the property was set afterwards), it is taken as IPv6, cut or padded with
    /// zeros to 16 bytes, so that nothing downstream traps on a log line.
    public struct Endpoint: Equatable, Sendable, CustomStringConvertible {
        public var address: [UInt8]   // count 4 or 16
        public var port: UInt16

        public init(address: [UInt8], port: UInt16) {
            precondition(address.count == 4 || address.count == 16, "an IP address is 4 or 16 bytes")
            self.address = address
            self.port = port
        }

        /// A literal address: dotted quad (IPv4) or IPv6 text (with `::` and a dotted tail), by
        /// the same strict rules as a v1 header; nil for anything else (names, brackets, ports).
        public init?(_ text: some StringProtocol, port: UInt16) {
            let bytes = Array(text.utf8)
            let parsed = bytes.contains(UInt8(ascii: ":"))
                ? ProxyProtocol.parseIPv6(bytes[...]) : ProxyProtocol.parseIPv4(bytes[...])
            guard let parsed else { return nil }
            self.init(address: parsed, port: port)
        }

        public var isIPv4: Bool { address.count == 4 }

        /// Whether this is an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), the form a v4 client
        /// takes in a TCP6 header (ours, when the families differ, and HAProxy's).
        public var isIPv4Mapped: Bool {
            address.count == 16 && address[0..<10].allSatisfy { $0 == 0 } && address[10] == 0xFF && address[11] == 0xFF
        }

        /// The IPv4 endpoint an IPv4-mapped one stands for; any other endpoint as it is. The
        /// parser hands out addresses as the header carried them; this is for the caller who
        /// would rather log and match `1.2.3.4` than `::ffff:1.2.3.4`.
        public var unmapped: Endpoint {
            isIPv4Mapped ? Endpoint(address: Array(address[12..<16]), port: port) : self
        }

        /// "1.2.3.4:80" or "[2001:db8::1]:80" (RFC 5952 compressed IPv6 text, lower case)
        public var description: String {
            ProxyProtocol.text(capacity: 56) { out in
                if isIPv4 {
                    ProxyProtocol.appendIPv4(address, to: &out)
                } else {
                    out.append(UInt8(ascii: "["))
                    ProxyProtocol.appendIPv6(ipv6Bytes, to: &out)
                    out.append(UInt8(ascii: "]"))
                }
                out.append(UInt8(ascii: ":"))
                ProxyProtocol.appendDecimal(Int(port), to: &out)
            }
        }

        /// The address as text without port and without brackets ("1.2.3.4", "2001:db8::1")
        public var addressText: String {
            ProxyProtocol.text(capacity: 48) { ProxyProtocol.appendAddress(self, to: &$0) }
        }

        /// The address as 16 bytes: IPv4 as IPv4-mapped IPv6 (RFC 4291 §2.5.5.2).
        var ipv6Bytes: [UInt8] {
            switch address.count {
            case 16: return address
            case 4: return [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] + address
            default: return Array((address + [UInt8](repeating: 0, count: 16)).prefix(16))
            }
        }
    }

    /// What a received header says.
    public enum Header: Equatable, Sendable {
        /// v2 LOCAL, v1 UNKNOWN, v2 PROXY with family UNSPEC or UNIX (or UDP): use the TCP peer.
        case local
        case proxied(source: Endpoint, destination: Endpoint)
    }

    /// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`. Chosen by the spec to be refused early by
    /// most other protocols' parsers; its first byte (CR) also tells it from v1's `P`.
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    /// The longest v1 line the spec allows, CRLF included ("PROXY UNKNOWN" with two full IPv6
    /// addresses and ports); no CRLF by then and the line is refused.
    public static let v1MaxLength = 107

    /// The header to send first on a connection to a game: `source` is the player, `destination` the game.
    ///
    /// Same family: TCP4 / TCP6. Mixed families (a v4 player reaching a game over IPv6, or the
    /// reverse): the IPv4 endpoint is written as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// and the header is TCP6 (v1) / AF_INET6 (v2), as HAProxy does. The other choice, v1
    /// UNKNOWN or v2 UNSPEC, would lose the player's address, which is the one thing the game
    /// wants from the header; a game that cannot use a mapped address can still log it.
    /// In v1 text the mapped address is written in its RFC 5952 mixed form, `::ffff:192.0.2.1`
    /// (what inet_ntop and HAProxy write; every inet_pton reads it).
    ///
    /// v2 is written without TLVs, with command PROXY and protocol STREAM.
    public static func header(_ version: Version, source: Endpoint, destination: Endpoint) -> [UInt8] {
        Array(unsafeUninitializedCapacity: maxHeaderLength) { buffer, count in
            count = writeHeader(version, source: source, destination: destination, into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// The most bytes `writeHeader` writes (a v1 TCP6 line; v2 without TLVs is at most 52).
    public static let maxHeaderLength = v1MaxLength

    /// `header` written into `out` (at least `maxHeaderLength` bytes): its length. No
    /// allocation: a session create writes it on the stack.
    public static func writeHeader(_ version: Version, source: Endpoint, destination: Endpoint,
                                   into out: UnsafeMutableRawBufferPointer) -> Int {
        precondition(out.count >= maxHeaderLength)
        let v4 = source.isIPv4 && destination.isIPv4
        var w = ByteWriter(out.bindMemory(to: UInt8.self))
        switch version {
        case .v1:
            w.append(v4 ? "PROXY TCP4 " : "PROXY TCP6 ")
            if v4 {
                appendIPv4(source.address, to: &w)
                w.append(0x20)
                appendIPv4(destination.address, to: &w)
            } else {
                appendIPv6(source.ipv6Bytes, to: &w)
                w.append(0x20)
                appendIPv6(destination.ipv6Bytes, to: &w)
            }
            w.append(0x20)
            appendDecimal(Int(source.port), to: &w)
            w.append(0x20)
            appendDecimal(Int(destination.port), to: &w)
            w.append("\r\n")
        case .v2:
            let length = v4 ? 12 : 36
            w.append(v2Signature)
            w.append(0x21)              // version 2, command PROXY
            w.append(v4 ? 0x11 : 0x21)  // TCP over AF_INET / AF_INET6
            w.append(UInt8(length >> 8)); w.append(UInt8(length & 0xFF))
            w.append(v4 ? source.address : source.ipv6Bytes)
            w.append(v4 ? destination.address : destination.ipv6Bytes)
            w.append(UInt8(source.port >> 8)); w.append(UInt8(source.port & 0xFF))
            w.append(UInt8(destination.port >> 8)); w.append(UInt8(destination.port & 0xFF))
        }
        return w.count
    }

    /// The header that names no client: v1 `PROXY UNKNOWN`, v2 `LOCAL` (a receiver then takes
    /// the connection's own peer, us). For a session whose client's address is not known.
    public static func localHeader(_ version: Version) -> [UInt8] {
        switch version {
        case .v1: v1Local
        case .v2: v2Local
        }
    }
    private static let v1Local = Array("PROXY UNKNOWN\r\n".utf8)
    private static let v2Local = v2Signature + [0x20, 0x00, 0x00, 0x00]  // version 2, command LOCAL, UNSPEC, no addresses

    // MARK: Address text

    /// A dotted quad as the spec (and inet_pton) wants it: exactly four decimal numbers 0…255,
    /// no leading zero ("010" could be read as octal elsewhere), no sign, nothing else.
    static func parseIPv4(_ s: ArraySlice<UInt8>) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: 4)
        guard parseIPv4(s, into: &out, at: 0) else { return nil }
        return out
    }

    /// `parseIPv4` writing its four bytes at `out[at...]`.
    private static func parseIPv4(_ s: ArraySlice<UInt8>, into out: inout [UInt8], at: Int) -> Bool {
        var octets = 0
        var value = 0
        var digits = 0
        for c in s {
            if c >= 0x30 && c <= 0x39 {
                if digits > 0 && value == 0 { return false }  // leading zero
                value = value * 10 + Int(c - 0x30)
                digits += 1
                if value > 255 { return false }
            } else if c == UInt8(ascii: ".") && digits > 0 && octets < 3 {
                out[at + octets] = UInt8(value)
                octets += 1
                value = 0
                digits = 0
            } else {
                return false
            }
        }
        guard octets == 3 && digits > 0 else { return false }
        out[at + 3] = UInt8(value)
        return true
    }

    /// IPv6 text (RFC 4291 §2.2) as inet_pton reads it: up to eight groups of one to four hex
    /// digits (either case), at most one `::` standing for one or more zero groups, and
    /// optionally a dotted quad as the last 32 bits (`::ffff:192.0.2.1`). A lone leading or
    /// trailing `:`, `:::`, a fifth digit, or a total other than 128 bits is refused.
    static func parseIPv6(_ s: ArraySlice<UInt8>) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: 16)
        var i = s.startIndex
        let end = s.endIndex
        guard i < end else { return nil }
        if s[i] == UInt8(ascii: ":") {
            // A leading colon only as half of "::"; the loop sees the second one.
            guard i + 1 < end, s[i + 1] == UInt8(ascii: ":") else { return nil }
            i += 1
        }
        var tp = 0              // bytes written
        var gap = -1            // where "::" stands, in bytes written
        var token = i           // start of the current group (a dotted tail starts here)
        var value = 0
        var digits = 0
        while i < end {
            let c = s[i]
            i += 1
            if let h = hexValue(c) {
                guard digits < 4 else { return nil }
                value = value << 4 | h
                digits += 1
                continue
            }
            if c == UInt8(ascii: ":") {
                token = i
                if digits == 0 {
                    guard gap < 0 else { return nil }  // a second "::", or ":::"
                    gap = tp
                    continue
                }
                guard i < end, tp + 2 <= 16 else { return nil }  // trailing single colon; too many groups
                out[tp] = UInt8(value >> 8)
                out[tp + 1] = UInt8(value & 0xFF)
                tp += 2
                value = 0
                digits = 0
                continue
            }
            if c == UInt8(ascii: "."), tp + 4 <= 16, parseIPv4(s[token..<end], into: &out, at: tp) {
                tp += 4
                digits = 0
                break
            }
            return nil
        }
        if digits > 0 {
            guard tp + 2 <= 16 else { return nil }
            out[tp] = UInt8(value >> 8)
            out[tp + 1] = UInt8(value & 0xFF)
            tp += 2
        }
        if gap >= 0 {
            guard tp < 16 else { return nil }  // "::" must stand for at least one group
            let n = tp - gap
            for k in stride(from: n - 1, through: 0, by: -1) {
                out[16 - n + k] = out[gap + k]
            }
            for k in gap..<(16 - n) { out[k] = 0 }
            tp = 16
        }
        return tp == 16 ? out : nil
    }

    @inline(__always) static func hexValue(_ c: UInt8) -> Int? {
        switch c {
        case 0x30...0x39: return Int(c - 0x30)
        case 0x41...0x46: return Int(c - 0x37)
        case 0x61...0x66: return Int(c - 0x57)
        default: return nil
        }
    }

    /// Writes bytes into memory sized beforehand: the callers know the most they write (a v1
    /// line, an address's text), so there is no capacity check or growth per byte.
    struct ByteWriter {
        let base: UnsafeMutablePointer<UInt8>
        /// The memory's size: a write past it traps rather than overrun what follows.
        let capacity: Int
        private(set) var count = 0
        init(_ buffer: UnsafeMutableBufferPointer<UInt8>) {
            base = buffer.baseAddress!
            capacity = buffer.count
        }
        @inline(__always) mutating func append(_ byte: UInt8) {
            precondition(count < capacity, "ByteWriter: past its capacity")
            base[count] = byte
            count &+= 1
        }
        mutating func append(_ bytes: [UInt8]) { for b in bytes { append(b) } }
        /// Lets `body` write the next `n` bytes.
        @inline(__always) mutating func fill(_ n: Int, _ body: (UnsafeMutablePointer<UInt8>) -> Void) {
            precondition(n <= capacity &- count, "ByteWriter: past its capacity")
            body(base + count)
            count &+= n
        }
        mutating func append(_ text: StaticString) {
            text.withUTF8Buffer { for b in $0 { append(b) } }
        }
    }

    /// A string of at most `capacity` bytes of ASCII written by `body`.
    static func text(capacity: Int, _ body: (inout ByteWriter) -> Void) -> String {
        String(unsafeUninitializedCapacity: capacity) { buffer in
            var w = ByteWriter(buffer)
            body(&w)
            return w.count
        }
    }

    static func appendAddress(_ e: Endpoint, to out: inout ByteWriter) {
        if e.isIPv4 { appendIPv4(e.address, to: &out) } else { appendIPv6(e.ipv6Bytes, to: &out) }
    }

    /// The dotted quad of the four bytes of `a` from `start`.
    @inline(__always)
    static func appendIPv4(_ a: [UInt8], from start: Int = 0, to out: inout ByteWriter) {
        for k in 0..<4 {
            if k > 0 { out.append(UInt8(ascii: ".")) }
            let text = octetText[Int(a[start + k])]
            let count = Int(text >> 24)
            out.fill(count) { p in
                p[0] = UInt8(truncatingIfNeeded: text)
                if count > 1 { p[1] = UInt8(truncatingIfNeeded: text >> 8) }
                if count > 2 { p[2] = UInt8(truncatingIfNeeded: text >> 16) }
            }
        }
    }

    /// The decimal text of every byte value: its digits in the low three bytes, first digit
    /// lowest, and their count in the top byte (a create writes eight of them).
    static let octetText: [UInt32] = (0...255).map { v in
        let digits = Array(String(v).utf8)
        var packed = UInt32(digits.count) << 24
        for (i, d) in digits.enumerated() { packed |= UInt32(d) << (8 * i) }
        return packed
    }

    /// RFC 5952: lower-case hex without leading zeros, the longest run of two or more zero
    /// groups (the first of equal runs) as `::`, and an IPv4-mapped address in mixed notation
    /// (`::ffff:192.0.2.1`). This is inet_ntop's text too, except for the deprecated
    /// IPv4-compatible addresses (`::/96`), which glibc also writes dotted and this writes in hex
    /// (`::102:304`), as RFC 5952 §5 no longer asks for them.
    static func appendIPv6(_ a: [UInt8], to out: inout ByteWriter) {
        precondition(a.count == 16)
        if a[0..<10].allSatisfy({ $0 == 0 }) && a[10] == 0xFF && a[11] == 0xFF {
            out.append("::ffff:")
            appendIPv4(a, from: 12, to: &out)
            return
        }
        @inline(__always) func word(_ k: Int) -> Int { Int(a[2 * k]) << 8 | Int(a[2 * k + 1]) }
        var best = -1, bestLength = 0, run = -1, runLength = 0
        for k in 0..<8 {
            if word(k) == 0 {
                if run < 0 { run = k; runLength = 0 }
                runLength += 1
                if runLength > bestLength { best = run; bestLength = runLength }
            } else {
                run = -1
            }
        }
        if bestLength < 2 { best = -1 }
        for k in 0..<8 {
            if best >= 0 && k >= best && k < best + bestLength {
                if k == best { out.append(UInt8(ascii: ":")) }
                continue
            }
            if k > 0 { out.append(UInt8(ascii: ":")) }
            let w = word(k)
            var started = false
            for shift in stride(from: 12, through: 0, by: -4) {
                let d = (w >> shift) & 0xF
                if d == 0 && !started && shift > 0 { continue }
                started = true
                out.append(d < 10 ? UInt8(0x30 + d) : UInt8(0x57 + d))
            }
        }
        if best >= 0 && best + bestLength == 8 { out.append(UInt8(ascii: ":")) }
    }

    /// `v` (≥ 0) in decimal, written from its last digit (divisions by the constant 10, which
    /// the compiler turns into multiplications; a create writes twelve of these).
    @inline(__always)
    static func appendDecimal(_ v: Int, to out: inout ByteWriter) {
        var digits = v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : v < 10000 ? 4 : 5
        var n = v / 100_000
        while n > 0 { n /= 10; digits += 1 }
        out.fill(digits) { p in
            var rest = v
            for i in stride(from: digits - 1, through: 0, by: -1) {
                p[i] = UInt8(truncatingIfNeeded: 0x30 + rest % 10)
                rest /= 10
            }
        }
    }
}

/// Reads the PROXY header at the start of a client connection, split across reads anywhere.
///
/// The spec's receiver rules, which are what keep the header from being spoofed: the
/// listener is configured for the protocol and never guesses whether a header is there, so
/// the very first bytes must be a prefix of `PROXY ` (v1) or of the v2 signature, and the first
/// byte that agrees with neither refuses the connection at once (the spec asks to abort as soon
/// as possible, so a misconfigured sender notices). Anything that does not match the format
/// exactly is refused; nothing is repaired.
///
/// The bytes are judged one at a time as they come, so the outcome, the reason, and where
/// the header ends do not depend on how the reads cut them (the tests cut every header at
/// every index, the fuzzer at random). State is the line so far for v1 (at most 107 bytes, the
/// spec's limit) or the 16 fixed bytes and the address block for v2 (at most 52); v2's TLVs
/// are counted past, not kept, so `maxLength` bounds the bytes read, not the memory held.
///
/// v1: `PROXY SP (TCP4|TCP6) SP src SP dst SP sport SP dport CRLF` with single spaces, addresses
/// of the family named (strict dotted quads; IPv6 text as inet_pton reads it, a dotted tail
/// included), ports 0…65535 without a leading zero or a sign; or `PROXY UNKNOWN` then a space
/// and anything, or CRLF at once (`.local`; `PROXY UNKNOWNX` is not UNKNOWN). The keyword and
/// the characters an address or port can have are checked as they arrive; the fields are read
/// when the CRLF is there, as the spec says. A bare CR or LF, or no CRLF in 107 bytes, is refused.
///
/// v2: version 2 only; command LOCAL (`.local`, the family and addresses ignored, as the
/// spec says) or PROXY. With PROXY, the family/protocol byte is TCP over IPv4 (0x11) or IPv6
/// (0x21), read as `.proxied`; UNSPEC (0x00), UDP (0x12, 0x22) and UNIX (0x31, 0x32) are
/// `.local` (not a TCP client address: the connection's own peer is used); any other value is
/// refused. The length must hold the family's address block (12, 36, or 216 for UNIX) and
/// `16 + length` must not exceed `maxLength`, both judged as soon as the length is read; the
/// bytes after the addresses (TLVs) are skipped unread. (`maxLength` is v2's alone: a v1 line
/// is held to the spec's 107 bytes whatever it says.)
///
/// After `.done`, a feed returns `.done` with the same header and `consumed: 0` (none of those
/// bytes is header: all of them are the client's); after `.invalid`, the same `.invalid`.
public struct ProxyHeaderParser {
    public enum Outcome: Equatable {
        case needMore                         // every byte given was taken; feed the next read
        case done(ProxyProtocol.Header, consumed: Int)   // `consumed` bytes of THIS call's input were header; the rest is the client's data
        case invalid(String)                  // close the connection; the reason is for the log
    }

    private enum Phase: UInt8 {
        case start      // nothing read yet
        case v1         // reading a v1 line into `buffer`
        case v2Fixed    // reading v2's first 16 bytes into `buffer`
        case v2Body     // reading (address block) or skipping (TLVs) v2's `remaining` bytes
        case finished   // `finished` holds the answer
    }

    private var phase = Phase.start
    private var buffer: [UInt8] = []
    /// v1: the last byte was a CR.
    private var afterCR = false
    /// v2: the command (0 LOCAL, 1 PROXY), the family byte, the body bytes still to come, and
    /// how many of the body's first bytes are the address block to keep (0 when unused).
    private var command: UInt8 = 0
    private var family: UInt8 = 0
    private var remaining = 0
    private var keep = 0
    private var finished = Outcome.needMore
    public let maxLength: Int

    public init(maxLength: Int = 4096) {       // v2 headers longer than this (16 + length) are invalid ("too long"); nginx takes as much
        self.maxLength = maxLength
    }

    /// Whether the header has been read (or refused): a feed now answers as it did then.
    public var isFinished: Bool { phase == .finished }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        let n = bytes.count
        var i = 0
        while i < n {
            switch phase {
            case .finished:
                return finished
            case .start:
                let c = bytes[i]
                if c == UInt8(ascii: "P") {
                    phase = .v1
                    buffer.reserveCapacity(ProxyProtocol.v1MaxLength)
                } else if c == ProxyProtocol.v2Signature[0] {
                    phase = .v2Fixed
                    buffer.reserveCapacity(16 + 36)
                } else {
                    return fail("not a PROXY protocol header")
                }
            case .v1:
                let c = bytes[i]
                i += 1
                if let outcome = v1Byte(c, consumed: i) { return outcome }
            case .v2Fixed:
                let c = bytes[i]
                i += 1
                if let outcome = v2FixedByte(c, consumed: i) { return outcome }
            case .v2Body:
                let take = min(remaining, n - i)
                let kept = min(take, keep - (buffer.count - 16))
                if kept > 0 { buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<(i + kept)])) }
                i += take
                remaining -= take
                if remaining == 0 { return done(v2Header(), consumed: i) }
            }
        }
        return phase == .finished ? finished : .needMore
    }

    // MARK: v1

    private static let tcp = Array("TCP4 ".utf8)
    private static let unknown = Array("UNKNOWN".utf8)
    private static let proxy = Array("PROXY ".utf8)

    /// Takes one byte of a v1 line (the `p`th, counting from 0); an outcome when the line ends
    /// or is refused.
    private mutating func v1Byte(_ c: UInt8, consumed: Int) -> Outcome? {
        let p = buffer.count
        buffer.append(c)
        if afterCR {
            guard c == 0x0A else { return fail("PROXY v1: CR not followed by LF") }
            return v1Line(consumed: consumed)
        }
        if c == 0x0A { return fail("PROXY v1: LF without CR") }
        if p < 6 {
            guard c == Self.proxy[p] else { return fail("not a PROXY protocol header") }
        } else if buffer[6] == UInt8(ascii: "U") && p <= 13 {
            // "UNKNOWN", then a space and anything, or the CRLF.
            let ok = p < 13 ? c == Self.unknown[p - 6] : c == 0x20 || c == 0x0D
            guard ok else { return fail("PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN") }
        } else if p < 11 {
            let q = p - 6
            let ok = q == 3 ? c == UInt8(ascii: "4") || c == UInt8(ascii: "6") : c == Self.tcp[q]
            guard ok else { return fail("PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN") }
        } else if buffer[6] == UInt8(ascii: "T") {
            // Addresses and ports: nothing else can appear before the CR.
            guard c == 0x20 || c == 0x0D || c == UInt8(ascii: ":") || c == UInt8(ascii: ".")
                || ProxyProtocol.hexValue(c) != nil else {
                return fail("PROXY v1: byte \(c) in an address or port")
            }
        }
        afterCR = c == 0x0D
        if buffer.count >= ProxyProtocol.v1MaxLength {
            return fail("PROXY v1: too long (no CRLF in \(ProxyProtocol.v1MaxLength) bytes)")
        }
        return nil
    }

    /// The whole line is in `buffer`, CRLF included: reads its fields.
    private mutating func v1Line(consumed: Int) -> Outcome {
        if buffer[6] == UInt8(ascii: "U") { return done(.local, consumed: consumed) }
        let v6 = buffer[9] == UInt8(ascii: "6")
        let end = buffer.count - 2
        // Four fields separated by single spaces; an empty field is a doubled (or a leading or
        // trailing) space.
        var fields: [Range<Int>] = []
        fields.reserveCapacity(4)
        var start = 11
        for k in 11...end where k == end || buffer[k] == 0x20 {
            guard k > start else { return fail("PROXY v1: empty field (a doubled, leading or trailing space)") }
            guard fields.count < 4 else { return fail("PROXY v1: more than four fields after TCP\(v6 ? 6 : 4)") }
            fields.append(start..<k)
            start = k + 1
        }
        guard fields.count == 4 else { return fail("PROXY v1: fewer than four fields after TCP\(v6 ? 6 : 4)") }
        func parse(_ s: ArraySlice<UInt8>) -> [UInt8]? { v6 ? ProxyProtocol.parseIPv6(s) : ProxyProtocol.parseIPv4(s) }
        let family = v6 ? "IPv6" : "IPv4"
        guard let source = parse(buffer[fields[0]]) else { return fail("PROXY v1: source is not an \(family) address") }
        guard let destination = parse(buffer[fields[1]]) else { return fail("PROXY v1: destination is not an \(family) address") }
        guard let sourcePort = Self.port(buffer[fields[2]]) else { return fail("PROXY v1: bad source port") }
        guard let destinationPort = Self.port(buffer[fields[3]]) else { return fail("PROXY v1: bad destination port") }
        return done(.proxied(source: ProxyProtocol.Endpoint(address: source, port: sourcePort),
                             destination: ProxyProtocol.Endpoint(address: destination, port: destinationPort)),
                    consumed: consumed)
    }

    /// A decimal port, 0…65535, no leading zero, no sign.
    private static func port(_ s: ArraySlice<UInt8>) -> UInt16? {
        guard !s.isEmpty, s.count <= 5, s.count == 1 || s.first != UInt8(ascii: "0") else { return nil }
        var v = 0
        for c in s {
            guard c >= 0x30 && c <= 0x39 else { return nil }
            v = v * 10 + Int(c - 0x30)
        }
        return v <= 65535 ? UInt16(v) : nil
    }

    // MARK: v2

    /// The address block's length for a v2 family/protocol byte; nil for a value the spec
    /// does not define.
    private static func addressBlock(_ family: UInt8) -> Int? {
        switch family {
        case 0x00: return 0
        case 0x11, 0x12: return 12
        case 0x21, 0x22: return 36
        case 0x31, 0x32: return 216
        default: return nil
        }
    }

    /// Takes one of v2's first 16 bytes.
    private mutating func v2FixedByte(_ c: UInt8, consumed: Int) -> Outcome? {
        let p = buffer.count
        buffer.append(c)
        switch p {
        case 0..<12:
            guard c == ProxyProtocol.v2Signature[p] else { return fail("not a PROXY protocol header") }
        case 12:
            guard c >> 4 == 2 else { return fail("PROXY v2: version \(c >> 4) (only 2 is defined)") }
            command = c & 0x0F
            guard command <= 1 else { return fail("PROXY v2: unknown command \(command)") }
        case 13:
            family = c
            // LOCAL: "the receiver must ... discard the protocol block including the family".
            if command == 1 && Self.addressBlock(c) == nil {
                return fail("PROXY v2: unknown address family and protocol 0x\(String(c, radix: 16))")
            }
        case 14:
            break
        default:
            let length = Int(buffer[14]) << 8 | Int(c)
            guard 16 + length <= maxLength else {
                return fail("PROXY v2: too long (16 + \(length) bytes, more than \(maxLength))")
            }
            if command == 1 {
                let block = Self.addressBlock(family) ?? 0
                guard length >= block else {
                    return fail("PROXY v2: length \(length) is shorter than the family's \(block) address bytes")
                }
                keep = family == 0x11 || family == 0x21 ? block : 0
            }
            remaining = length
            if remaining == 0 { return done(v2Header(), consumed: consumed) }
            phase = .v2Body
        }
        return nil
    }

    /// The header in `buffer` (16 fixed bytes, then `keep` address bytes).
    private func v2Header() -> ProxyProtocol.Header {
        guard command == 1 && (family == 0x11 || family == 0x21) else { return .local }
        let size = family == 0x11 ? 4 : 16
        let a = 16, b = 16 + size, ports = 16 + 2 * size
        func port(_ at: Int) -> UInt16 { UInt16(buffer[at]) << 8 | UInt16(buffer[at + 1]) }
        return .proxied(source: ProxyProtocol.Endpoint(address: Array(buffer[a..<b]), port: port(ports)),
                        destination: ProxyProtocol.Endpoint(address: Array(buffer[b..<(b + size)]), port: port(ports + 2)))
    }

    // MARK: Ends

    private mutating func done(_ header: ProxyProtocol.Header, consumed: Int) -> Outcome {
        finish(.done(header, consumed: 0))
        return .done(header, consumed: consumed)
    }

    private mutating func fail(_ reason: String) -> Outcome {
        finish(.invalid(reason))
        return finished
    }

    private mutating func finish(_ outcome: Outcome) {
        finished = outcome
        phase = .finished
        buffer = []  // a parser may live as long as its connection; the line is not needed now
    }
}
