/// Turns a target's bytes, in its charset, into the contents of a JSON string (UTF-8, without
/// the quotes) for SSE `data:` lines. Streaming: a UTF-8 character cut at the end of one call
/// is completed by the next.
///
/// Escaped: `"`, `\`, every control below 0x20 (`\n` `\r` `\t` `\b` `\f`, the others as
/// `\u00XX`, so ESC of ANSI colours becomes `\u001b`), and U+2028/U+2029, which some
/// JavaScript parsers take as line ends. Invalid UTF-8 becomes U+FFFD, one per maximal subpart
/// (Unicode §3.9, as WHATWG's decoder does): overlongs, surrogates and code points above
/// U+10FFFF are invalid.
public struct TextDecoder {
    public let charset: Charset
    /// JSON string contents (SSE, the default), or plain UTF-8 text (WebSocket text frames:
    /// nothing escaped; invalid bytes still become U+FFFD).
    public let escapesJSON: Bool
    /// The code point so far of an incomplete UTF-8 character, and how many continuation
    /// bytes it still needs and has.
    private var codePoint: UInt32 = 0
    private var needed: UInt8 = 0
    private var seen: UInt8 = 0
    /// Where the next continuation byte must lie (narrower after E0, ED, F0, F4).
    private var lower: UInt8 = 0x80
    private var upper: UInt8 = 0xBF

    public init(charset: Charset, escapesJSON: Bool = true) {
        self.charset = charset
        self.escapesJSON = escapesJSON
    }

    /// Bytes of an incomplete UTF-8 character held from the end of the input so far (0…3).
    public var pendingByteCount: Int { needed == 0 ? 0 : Int(seen) + 1 }

    /// Drops a held incomplete character (its bytes will be fed again).
    public mutating func reset() {
        needed = 0
        seen = 0
        codePoint = 0
        lower = 0x80
        upper = 0xBF
    }

    /// The end of the text: a held incomplete character becomes U+FFFD.
    public mutating func finish(into out: inout [UInt8]) {
        if needed != 0 { TextDecoder.appendReplacement(&out) }
        reset()
    }

    public mutating func decode(_ bytes: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        let n = bytes.count
        var i = 0
        while i < n {
            if needed == 0 {
                // The common case: a run of ASCII that JSON takes as it is, appended at once.
                let start = i
                if escapesJSON {
                    while i < n {
                        let b = bytes[i]
                        if b < 0x20 || b >= 0x80 || b == 0x22 || b == 0x5C { break }
                        i += 1
                    }
                } else {
                    while i < n, bytes[i] < 0x80 { i += 1 }
                }
                if i > start { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<i])) }
                guard i < n else { return }
                let b = bytes[i]
                i += 1
                if b < 0x80 {
                    TextDecoder.appendEscaped(b, &out)
                    continue
                }
                switch charset {
                case .latin1: TextDecoder.appendScalar(UInt32(b), &out, escapesJSON)
                case .cp437: TextDecoder.appendScalar(UInt32(TextDecoder.cp437High[Int(b) - 0x80]), &out, escapesJSON)
                case .utf8: lead(b, &out)
                }
            } else {
                let b = bytes[i]
                guard b >= lower && b <= upper else {
                    // The held bytes are a maximal subpart: one U+FFFD, and `b` starts afresh.
                    reset()
                    TextDecoder.appendReplacement(&out)
                    continue
                }
                i += 1
                lower = 0x80
                upper = 0xBF
                codePoint = codePoint << 6 | UInt32(b & 0x3F)
                seen += 1
                if seen == needed {
                    let scalar = codePoint
                    reset()
                    TextDecoder.appendScalar(scalar, &out, escapesJSON)
                }
            }
        }
    }

    /// A UTF-8 byte at or above 0x80 where a character starts.
    private mutating func lead(_ b: UInt8, _ out: inout [UInt8]) {
        switch b {
        case 0xC2...0xDF:
            needed = 1
            codePoint = UInt32(b & 0x1F)
        case 0xE0...0xEF:
            needed = 2
            codePoint = UInt32(b & 0x0F)
            if b == 0xE0 { lower = 0xA0 }  // overlong below
            if b == 0xED { upper = 0x9F }  // surrogates above
        case 0xF0...0xF4:
            needed = 3
            codePoint = UInt32(b & 0x07)
            if b == 0xF0 { lower = 0x90 }  // overlong below
            if b == 0xF4 { upper = 0x8F }  // beyond U+10FFFF above
        default:  // continuation bytes, C0, C1, F5…FF
            TextDecoder.appendReplacement(&out)
        }
    }

    @inline(__always)
    private static func appendReplacement(_ out: inout [UInt8]) {
        out.append(0xEF); out.append(0xBF); out.append(0xBD)
    }

    /// A scalar at or above 0x80, as UTF-8 (U+2028 and U+2029 escaped for JSON).
    private static func appendScalar(_ c: UInt32, _ out: inout [UInt8], _ escapesJSON: Bool) {
        if c < 0x800 {
            out.append(UInt8(0xC0 | c >> 6))
            out.append(UInt8(0x80 | c & 0x3F))
        } else if c < 0x10000 {
            if escapesJSON, c == 0x2028 || c == 0x2029 {
                appendUnicodeEscape(UInt16(c), &out)
                return
            }
            out.append(UInt8(0xE0 | c >> 12))
            out.append(UInt8(0x80 | c >> 6 & 0x3F))
            out.append(UInt8(0x80 | c & 0x3F))
        } else {
            out.append(UInt8(0xF0 | c >> 18))
            out.append(UInt8(0x80 | c >> 12 & 0x3F))
            out.append(UInt8(0x80 | c >> 6 & 0x3F))
            out.append(UInt8(0x80 | c & 0x3F))
        }
    }

    /// An ASCII byte that JSON needs escaped: `"`, `\`, or a control.
    private static func appendEscaped(_ b: UInt8, _ out: inout [UInt8]) {
        let backslash: UInt8 = 0x5C
        switch b {
        case 0x22, 0x5C: out.append(backslash); out.append(b)
        case 0x08: out.append(backslash); out.append(UInt8(ascii: "b"))
        case 0x09: out.append(backslash); out.append(UInt8(ascii: "t"))
        case 0x0A: out.append(backslash); out.append(UInt8(ascii: "n"))
        case 0x0C: out.append(backslash); out.append(UInt8(ascii: "f"))
        case 0x0D: out.append(backslash); out.append(UInt8(ascii: "r"))
        case 0..<0x20: appendUnicodeEscape(UInt16(b), &out)
        default: out.append(b)
        }
    }

    /// `\uXXXX`, lower-case hex.
    private static func appendUnicodeEscape(_ c: UInt16, _ out: inout [UInt8]) {
        let hex: StaticString = "0123456789abcdef"
        out.append(0x5C)
        out.append(UInt8(ascii: "u"))
        for shift in stride(from: 12, through: 0, by: -4) {
            out.append(hex.utf8Start[Int(c >> UInt16(shift) & 0xF)])
        }
    }

    /// Code page 437's bytes 0x80…0xFF (Unicode's CP437.TXT mapping). Bytes below 0x80 are
    /// ASCII here, controls included, so that ANSI escapes survive.
    static let cp437High: [UInt16] = [
        0x00C7, 0x00FC, 0x00E9, 0x00E2, 0x00E4, 0x00E0, 0x00E5, 0x00E7,
        0x00EA, 0x00EB, 0x00E8, 0x00EF, 0x00EE, 0x00EC, 0x00C4, 0x00C5,
        0x00C9, 0x00E6, 0x00C6, 0x00F4, 0x00F6, 0x00F2, 0x00FB, 0x00F9,
        0x00FF, 0x00D6, 0x00DC, 0x00A2, 0x00A3, 0x00A5, 0x20A7, 0x0192,
        0x00E1, 0x00ED, 0x00F3, 0x00FA, 0x00F1, 0x00D1, 0x00AA, 0x00BA,
        0x00BF, 0x2310, 0x00AC, 0x00BD, 0x00BC, 0x00A1, 0x00AB, 0x00BB,
        0x2591, 0x2592, 0x2593, 0x2502, 0x2524, 0x2561, 0x2562, 0x2556,
        0x2555, 0x2563, 0x2551, 0x2557, 0x255D, 0x255C, 0x255B, 0x2510,
        0x2514, 0x2534, 0x252C, 0x251C, 0x2500, 0x253C, 0x255E, 0x255F,
        0x255A, 0x2554, 0x2569, 0x2566, 0x2560, 0x2550, 0x256C, 0x2567,
        0x2568, 0x2564, 0x2565, 0x2559, 0x2558, 0x2552, 0x2553, 0x256B,
        0x256A, 0x2518, 0x250C, 0x2588, 0x2584, 0x258C, 0x2590, 0x2580,
        0x03B1, 0x00DF, 0x0393, 0x03C0, 0x03A3, 0x03C3, 0x00B5, 0x03C4,
        0x03A6, 0x0398, 0x03A9, 0x03B4, 0x221E, 0x03C6, 0x03B5, 0x2229,
        0x2261, 0x00B1, 0x2265, 0x2264, 0x2320, 0x2321, 0x00F7, 0x2248,
        0x00B0, 0x2219, 0x00B7, 0x221A, 0x207F, 0x00B2, 0x25A0, 0x00A0,
    ]
}
