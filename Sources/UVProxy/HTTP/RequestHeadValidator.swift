/// The RFC 9112 checks of a request head that http_parser, as Debian builds it
/// (`HTTP_PARSER_STRICT=0`), does not make: it takes `Name : value` (space before the colon)
/// as `Name`, a space inside a name, folded lines, and a bare CR as a line end. Another
/// server in front of us may read such a head differently (request smuggling), so it is
/// refused (SPEC §2, "Strict framing").
///
/// A pure byte-at-a-time state machine over the raw bytes, from the first byte of a request up
/// to the empty line that ends its head; it runs ahead of http_parser on the same bytes, so a
/// head split anywhere across reads is judged the same. A few bytes of state, no allocation.
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

    /// Ready for the next request's first byte.
    mutating func reset() { state = .start }

    /// Scans `bytes` (the next bytes of the connection); stops at the end of the head. Returns
    /// the first problem found, or nil.
    mutating func scan(_ bytes: UnsafeRawBufferPointer) -> Problem? {
        var s = state
        defer { state = s }
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return nil }
        let n = bytes.count
        var i = 0
        while i < n {
            // Fast paths: most bytes of a head are in a request line, a name or a value, where
            // only a few byte values change anything (a poll's head is ~100 bytes, every request).
            switch s {
            case .requestLine:
                while i < n, base[i] > 13 { i += 1 }  // nothing above CR matters here
            case .name:
                while i < n, RequestHeadValidator.isTokenByte(base[i]) { i += 1 }
            case .value:
                while i < n, base[i] >= 32, base[i] != 127 { i += 1 }
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
                if c == 13 { s = .startCR } else if c == 10 { break } else if c == 0 { return .nul } else { s = .requestLine }
            case .startCR:
                guard c == 10 else { return .bareCR }
                s = .start
            case .requestLine:
                if c == 13 { s = .requestLineCR } else if c == 10 { s = .lineStart } else if c == 0 { return .nul }
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

    /// tchar (RFC 9110 §5.6.2): `!#$%&'*+-.^_`|~`, digits and letters.
    @inline(__always) static func isTokenByte(_ c: UInt8) -> Bool {
        // Bit n of low/high: byte n (0...63) / n + 64 (64...127) is a tchar.
        let low: UInt64 = 0x03FF_6CFA_0000_0000   // ! # $ % & ' * + - . 0-9
        let high: UInt64 = 0x57FF_FFFF_C7FF_FFFE  // A-Z ^ _ ` a-z | ~
        return c < 64 ? (low >> UInt64(c)) & 1 != 0 : c < 128 && (high >> UInt64(c - 64)) & 1 != 0
    }
}
