/// The RFC 9112 checks of a request head that http_parser, as Debian builds it
/// (`HTTP_PARSER_STRICT=0`), does not make: it takes `Name : value` (space before the colon)
/// as `Name`, a space inside a name, folded lines, and a bare CR as a line end. Another
/// server in front of us may read such a head differently (request smuggling), so it is
/// refused (SPEC §2, "Strict framing").
///
/// A pure byte-at-a-time state machine over the raw bytes, from the first byte of a request up
/// to the empty line that ends its head; it runs ahead of http_parser on the same bytes, so a
/// head split anywhere across reads is judged the same. A few bytes of state, no allocation.
/// It runs on every request, so the common bytes (the request line, names, values, whole plain
/// header lines) are skipped eight at a time; those paths stop wherever the machine must look,
/// and the tests hold them to the machine fed one byte at a time.
/// The body is never scanned: the owner `reset()`s it when a request is complete.
///
/// What it leaves to http_parser: the request line's syntax (method, target, version), and
/// header values' meaning. Bare LF line ends stay accepted (RFC 9112 §2.2 allows it), as do
/// empty lines before the request line (§2.2 again).
struct RequestHeadValidator {
    enum Problem: Equatable {
        case notAToken      // a header name with a byte outside tchar, or empty
        case folded         // a line starting with SP or HTAB (obs-fold)
        case nul            // NUL anywhere in the head
        case bareCR         // CR not followed by LF
        case controlByte    // another control byte in a header value

        var reason: String {
            switch self {
            case .notAToken: "header name is not a token"
            case .folded: "folded header line (obs-fold)"
            case .nul: "NUL in request head"
            case .bareCR: "bare CR in request head"
            case .controlByte: "control character in header value"
            }
        }
    }

    private enum State: UInt8 {
        case start, startCR           // before the request line (empty lines skipped)
        case requestLine, requestLineCR
        case lineStart                // first byte of a header line, or the empty line
        case name, value, valueCR
        case endCR                    // the CR of the empty line
        case done                     // the head ended; the body is not ours
    }

    private var state = State.start

    /// Whether the head has ended (and the rest of the request is body).
    var isDone: Bool { state == .done }

    /// Bytes of the request line so far, its line end not counted (leading empty lines are
    /// not part of it): the parser compares it with method, target and version to find runs
    /// of spaces, which http_parser, built lenient, takes (RFC 9112 §3 wants one SP each).
    private(set) var requestLineLength = 0

    /// Ready for the next request's first byte.
    mutating func reset() {
        state = .start
        requestLineLength = 0
    }

    /// Scans `bytes` (the next bytes of the connection); stops at the end of the head. Returns
    /// the first problem found, or nil.
    mutating func scan(_ bytes: UnsafeRawBufferPointer) -> Problem? {
        var s = state
        defer { state = s }
        guard let raw = bytes.baseAddress else { return nil }
        let base = raw.assumingMemoryBound(to: UInt8.self)
        let n = bytes.count
        var i = 0
        while i < n {
            // Fast paths: most bytes of a head are in a request line and in ordinary header
            // lines, where only a few byte values change anything (a poll's head is ~100 bytes,
            // every request). They skip what they accept and stop where the byte-at-a-time
            // machine below must look, leaving it the state it would have reached itself.
            switch s {
            case .requestLine:
                let from = i
                i = Self.skipRequestLineBytes(raw, i, n)
                requestLineLength &+= i &- from
                if i &+ 1 < n, base[i] == 13, base[i &+ 1] == 10 { i &+= 2; s = .lineStart; continue }
            case .lineStart:
                i = Self.skipPlainLines(raw, i, n)
            case .name:
                i = Self.skipNameBytes(raw, i, n)
            case .value:
                i = Self.skipValueBytes(raw, i, n)
            default:
                break
            }
            guard i < n else { return nil }
            let c = base[i]
            i += 1
            switch s {
            case .done:
                return nil
            case .start:
                if c == 13 { s = .startCR } else if c == 10 { break } else if c == 0 { return .nul } else {
                    s = .requestLine
                    requestLineLength = 1
                }
            case .startCR:
                guard c == 10 else { return .bareCR }
                s = .start
            case .requestLine:
                if c == 13 { s = .requestLineCR } else if c == 10 { s = .lineStart } else if c == 0 { return .nul } else {
                    requestLineLength &+= 1
                }
            case .requestLineCR:
                guard c == 10 else { return .bareCR }
                s = .lineStart
            case .lineStart:
                if RequestHeadValidator.isTokenByte(c) {
                    s = .name
                } else if c == 13 {
                    s = .endCR
                } else if c == 10 {
                    s = .done
                } else if c == 32 || c == 9 {
                    return .folded
                } else {
                    return c == 0 ? .nul : .notAToken  // ':' (an empty name) included
                }
            case .name:
                if c == 58 {
                    s = .value
                } else if !RequestHeadValidator.isTokenByte(c) {
                    return c == 0 ? .nul : .notAToken
                }
            case .value:
                if c >= 32 && c != 127 || c == 9 { break }
                if c == 13 { s = .valueCR } else if c == 10 { s = .lineStart } else { return c == 0 ? .nul : .controlByte }
            case .valueCR:
                guard c == 10 else { return .bareCR }
                s = .lineStart
            case .endCR:
                guard c == 10 else { return .bareCR }
                s = .done
            }
        }
        return nil
    }

    /// Whole header lines from `start` (a line start) of the plain form `token ":" value CRLF`
    /// (or LF), values of visible bytes, spaces and tabs: returns the start of the first line
    /// that is not such a line or not complete in the buffer.
    @inline(__always) private static func skipPlainLines(_ raw: UnsafeRawPointer, _ start: Int, _ n: Int) -> Int {
        let base = raw.assumingMemoryBound(to: UInt8.self)
        var line = start
        while true {
            var i = skipNameBytes(raw, line, n)
            guard i > line, i < n, base[i] == 58 else { return line }  // ':'
            i = skipValueBytes(raw, i &+ 1, n)
            while i < n, base[i] == 9 { i = skipValueBytes(raw, i &+ 1, n) }  // tabs are fine
            guard i < n else { return line }
            if base[i] == 10 {
                line = i &+ 1
            } else if base[i] == 13, i &+ 1 < n, base[i &+ 1] == 10 {
                line = i &+ 2
            } else {
                return line
            }
        }
    }

    /// The index of the first byte from `i` on that is not a tchar (or `n`). Eight bytes at a
    /// time for the bytes names are made of (letters, digits, `-`); the bytewise test decides
    /// the rest. Every lane's test is exact (no carry crosses a byte: the top bits are masked
    /// off first), so the first flagged byte is the first that is not one of those.
    @inline(__always) private static func skipNameBytes(_ raw: UnsafeRawPointer, _ from: Int, _ n: Int) -> Int {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high: UInt64 = 0x8080_8080_8080_8080
        var i = from
        while i &+ 8 <= n {
            let x = word(raw, i)
            let low7 = x & ~high
            // A lane's high bit after adding 0x80 - k to its low seven bits: that byte is >= k.
            @inline(__always) func atLeast(_ v: UInt64, _ k: UInt64) -> UInt64 { (v &+ (0x80 &- k) &* ones) & high }
            let folded = low7 | 0x20 &* ones  // letters to lower case
            let letter = atLeast(folded, 0x61) & ~atLeast(folded, 0x7B)
            let digit = atLeast(low7, 0x30) & ~atLeast(low7, 0x3A)
            let dash = ~((low7 ^ 0x2D &* ones) &+ 0x7F &* ones) & high
            let other = ~(letter | digit | dash) & high | x & high
            if other != 0 { i &+= other.trailingZeroBitCount >> 3; break }
            i &+= 8
        }
        let base = raw.assumingMemoryBound(to: UInt8.self)
        while i < n, isTokenByte(base[i]) { i &+= 1 }
        return i
    }

    /// The index of the first byte from `i` on that is below SP or DEL (or `n`): the bytes a
    /// request line's end or a header value's end or fault can start with. Eight bytes at a
    /// time (SWAR), the lowest flagged byte of a word being exactly the first that matters.
    @inline(__always) private static func skipValueBytes(_ raw: UnsafeRawPointer, _ from: Int, _ n: Int) -> Int {
        var i = from
        while i &+ 8 <= n {
            let x = word(raw, i)
            let hit = below(32, x) | below(1, x ^ 0x7F7F_7F7F_7F7F_7F7F)
            if hit != 0 { return i &+ hit.trailingZeroBitCount >> 3 }
            i &+= 8
        }
        let base = raw.assumingMemoryBound(to: UInt8.self)
        while i < n, base[i] >= 32, base[i] != 127 { i &+= 1 }
        return i
    }

    /// The index of the first byte from `i` on that is CR or below (or `n`): nothing else
    /// matters to a request line here (http_parser judges its syntax).
    @inline(__always) private static func skipRequestLineBytes(_ raw: UnsafeRawPointer, _ from: Int, _ n: Int) -> Int {
        var i = from
        while i &+ 8 <= n {
            let hit = below(14, word(raw, i))
            if hit != 0 { return i &+ hit.trailingZeroBitCount >> 3 }
            i &+= 8
        }
        let base = raw.assumingMemoryBound(to: UInt8.self)
        while i < n, base[i] > 13 { i &+= 1 }
        return i
    }

    /// Eight bytes of the head from `offset`, the first in the lowest bits.
    @inline(__always) private static func word(_ raw: UnsafeRawPointer, _ offset: Int) -> UInt64 {
        UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// The high bit of every byte of `x` below `limit` (1...128), exact up to and including the
    /// lowest such byte (a borrow can only flag bytes above a real one).
    @inline(__always) private static func below(_ limit: UInt64, _ x: UInt64) -> UInt64 {
        (x &- limit &* 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080
    }

    /// tchar (RFC 9110 §5.6.2): `!#$%&'*+-.^_`|~`, digits and letters.
    @inline(__always) static func isTokenByte(_ c: UInt8) -> Bool {
        if (c | 0x20) &- 97 < 26 { return true }  // a letter: most bytes of a name
        // Bit n of low/high: byte n (0...63) / n + 64 (64...127) is a tchar.
        let low: UInt64 = 0x03FF_6CFA_0000_0000   // ! # $ % & ' * + - . 0-9
        let high: UInt64 = 0x57FF_FFFF_C7FF_FFFE  // A-Z ^ _ ` a-z | ~
        return c < 64 ? (low >> UInt64(c)) & 1 != 0 : c < 128 && (high >> UInt64(c - 64)) & 1 != 0
    }
}
