/// Strict JSON (RFC 8259) over bytes, with no Foundation: what GMCP needs to tell a payload
/// that is JSON (`data`) from one that is not (`raw`, SPEC §7), to check what clients post, and
/// to write JSON of its own.
///
/// `isValid` accepts exactly RFC 8259's grammar for a JSON text, in UTF-8:
/// - any value at the top (objects, arrays, strings, numbers, `true`, `false`, `null`), with
///   whitespace (space, tab, LF, CR only) around and between tokens, and nothing after it: no
///   trailing garbage, no second value, no byte order mark;
/// - numbers `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` (no leading zeros, no `+`, no
///   bare `.`, no `NaN` or `Infinity`); their size is not limited;
/// - strings: well-formed UTF-8 (Unicode Table 3-7: no overlongs, no encoded surrogates, nothing
///   above U+10FFFF), no raw control character below 0x20, and only the escapes
///   `\" \\ \/ \b \f \n \r \t \uXXXX`. A `\u` escape of a surrogate must be a high one
///   followed at once by an escaped low one: an unpaired surrogate is refused (RFC 8259 §8.2
///   leaves it to the parser; I-JSON, RFC 7493, forbids it), so that whatever passes here is
///   read alike by every parser the API's clients use;
/// - objects and arrays nested at most `maxDepth` deep (the default `JSON.maxDepth`): the
///   validator recurses once per level, so the bound is also its stack's. Duplicate names in
///   an object are not checked (RFC 8259 only says they SHOULD be unique).
public enum JSON {
    /// The deepest nesting of objects and arrays accepted by default. GMCP payloads are a few
    /// levels deep; this leaves room and bounds the recursion.
    public static let maxDepth = 64

    /// Whether `bytes` are one JSON text (see the type's comment).
    public static func isValid(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = JSON.maxDepth) -> Bool {
        var v = Validator(b: bytes, maxDepth: maxDepth)
        guard v.value(depth: 0) else { return false }
        v.skipWhitespace()
        return v.i == bytes.count
    }

    public static func isValid(_ bytes: some Collection<UInt8>, maxDepth: Int = JSON.maxDepth) -> Bool {
        if let r = bytes.withContiguousStorageIfAvailable({ isValid(UnsafeRawBufferPointer($0), maxDepth: maxDepth) }) {
            return r
        }
        return Array(bytes).withUnsafeBytes { isValid($0, maxDepth: maxDepth) }
    }

    static func isWhitespace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 }

    /// Whether `bytes` hold only JSON whitespace (or nothing).
    static func isBlank(_ bytes: some Collection<UInt8>) -> Bool { bytes.allSatisfy(isWhitespace) }

    private struct Validator {
        let b: UnsafeRawBufferPointer
        let maxDepth: Int
        var i = 0

        init(b: UnsafeRawBufferPointer, maxDepth: Int) {
            self.b = b
            self.maxDepth = maxDepth
        }

        mutating func skipWhitespace() {
            while i < b.count && JSON.isWhitespace(b[i]) { i += 1 }
        }

        /// One value, with the whitespace before it; `depth` containers are open around it.
        mutating func value(depth: Int) -> Bool {
            skipWhitespace()
            guard i < b.count else { return false }
            switch b[i] {
            case UInt8(ascii: "{"):
                guard depth < maxDepth else { return false }
                i += 1
                skipWhitespace()
                if i < b.count && b[i] == UInt8(ascii: "}") { i += 1; return true }
                while true {
                    skipWhitespace()
                    guard i < b.count, b[i] == UInt8(ascii: "\""), string() else { return false }
                    skipWhitespace()
                    guard i < b.count, b[i] == UInt8(ascii: ":") else { return false }
                    i += 1
                    guard value(depth: depth + 1) else { return false }
                    skipWhitespace()
                    guard i < b.count else { return false }
                    if b[i] == UInt8(ascii: ",") { i += 1; continue }
                    guard b[i] == UInt8(ascii: "}") else { return false }
                    i += 1
                    return true
                }
            case UInt8(ascii: "["):
                guard depth < maxDepth else { return false }
                i += 1
                skipWhitespace()
                if i < b.count && b[i] == UInt8(ascii: "]") { i += 1; return true }
                while true {
                    guard value(depth: depth + 1) else { return false }
                    skipWhitespace()
                    guard i < b.count else { return false }
                    if b[i] == UInt8(ascii: ",") { i += 1; continue }
                    guard b[i] == UInt8(ascii: "]") else { return false }
                    i += 1
                    return true
                }
            case UInt8(ascii: "\""): return string()
            case UInt8(ascii: "t"): return literal("true")
            case UInt8(ascii: "f"): return literal("false")
            case UInt8(ascii: "n"): return literal("null")
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return number()
            default: return false
            }
        }

        mutating func literal(_ word: StaticString) -> Bool {
            let n = word.utf8CodeUnitCount
            guard b.count - i >= n else { return false }
            for k in 0..<n where b[i + k] != word.utf8Start[k] { return false }
            i += n
            return true
        }

        static func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

        /// Skips one or more digits; false if there is none.
        mutating func digits() -> Bool {
            let start = i
            while i < b.count && Validator.isDigit(b[i]) { i += 1 }
            return i > start
        }

        mutating func number() -> Bool {
            if b[i] == UInt8(ascii: "-") { i += 1 }
            guard i < b.count else { return false }
            if b[i] == UInt8(ascii: "0") {
                i += 1  // a leading zero stands alone: "01" ends the number after the 0 (and fails after it)
            } else {
                guard digits() else { return false }
            }
            if i < b.count && b[i] == UInt8(ascii: ".") {
                i += 1
                guard digits() else { return false }
            }
            if i < b.count && (b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E")) {
                i += 1
                if i < b.count && (b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-")) { i += 1 }
                guard digits() else { return false }
            }
            return true
        }

        /// Four hex digits after `\u`, as a code unit; nil if they are not.
        mutating func hex4() -> UInt32? {
            guard b.count - i >= 4 else { return nil }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = b[i]
                let d: UInt32
                switch c {
                case 0x30...0x39: d = UInt32(c - 0x30)
                case 0x41...0x46: d = UInt32(c - 0x41 + 10)
                case 0x61...0x66: d = UInt32(c - 0x61 + 10)
                default: return nil
                }
                v = v << 4 | d
                i += 1
            }
            return v
        }

        /// A string, from its opening quote.
        mutating func string() -> Bool {
            i += 1
            while i < b.count {
                let c = b[i]
                if c == UInt8(ascii: "\"") { i += 1; return true }
                if c < 0x20 { return false }
                if c == UInt8(ascii: "\\") {
                    i += 1
                    guard i < b.count else { return false }
                    let e = b[i]
                    i += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                         UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        continue
                    case UInt8(ascii: "u"):
                        guard let u = hex4() else { return false }
                        if u >= 0xDC00 && u <= 0xDFFF { return false }  // a low surrogate alone
                        if u >= 0xD800 && u <= 0xDBFF {  // a high one: an escaped low one must follow
                            guard b.count - i >= 2, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else {
                                return false
                            }
                            i += 2
                            guard let low = hex4(), low >= 0xDC00 && low <= 0xDFFF else { return false }
                        }
                        continue
                    default:
                        return false
                    }
                }
                if c < 0x80 { i += 1; continue }
                guard utf8Character() else { return false }
            }
            return false  // no closing quote
        }

        /// One well-formed multi-byte UTF-8 character at `i` (Unicode Table 3-7).
        mutating func utf8Character() -> Bool {
            let c = b[i]
            let need: Int
            var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
            switch c {
            case 0xC2...0xDF: need = 1
            case 0xE0: need = 2; lo = 0xA0
            case 0xE1...0xEC, 0xEE, 0xEF: need = 2
            case 0xED: need = 2; hi = 0x9F
            case 0xF0: need = 3; lo = 0x90
            case 0xF1...0xF3: need = 3
            case 0xF4: need = 3; hi = 0x8F
            default: return false
            }
            guard b.count - i > need else { return false }
            for k in 1...need {
                let d = b[i + k]
                guard k == 1 ? (d >= lo && d <= hi) : (d >= 0x80 && d <= 0xBF) else { return false }
            }
            i += need + 1
            return true
        }
    }

    // MARK: Writing

    /// Appends a JSON text that `isValid` accepted, without its insignificant whitespace: one
    /// line, so that it fits an SSE `data:` line or a log line as it is. Strings are copied as
    /// they are, except raw U+2028 and U+2029, which become `\u2028` and `\u2029` (JavaScript
    /// parsers before ES2019 take them as line ends), as everywhere else in the API. Input that
    /// is not valid JSON gives unspecified output, never more than twice as long as the input.
    public static func appendMinified(_ bytes: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        var i = 0
        let n = bytes.count
        var inString = false
        var start = 0  // the run to copy
        while i < n {
            let c = bytes[i]
            if inString {
                if c == UInt8(ascii: "\\") {
                    i += 2  // the escaped byte is never a quote that ends the string
                    continue
                }
                if c == UInt8(ascii: "\"") {
                    inString = false
                } else if c == 0xE2, i + 2 < n, bytes[i + 1] == 0x80, bytes[i + 2] == 0xA8 || bytes[i + 2] == 0xA9 {
                    out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<i]))
                    out.append(contentsOf: bytes[i + 2] == 0xA8 ? Array("\\u2028".utf8) : Array("\\u2029".utf8))
                    i += 3
                    start = i
                    continue
                }
                i += 1
                continue
            }
            if isWhitespace(c) {
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<i]))
                i += 1
                start = i
                continue
            }
            if c == UInt8(ascii: "\"") { inString = true }
            i += 1
        }
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<min(i, n)]))
    }

    public static func appendMinified(_ bytes: some Collection<UInt8>, into out: inout [UInt8]) {
        if bytes.withContiguousStorageIfAvailable({ appendMinified(UnsafeRawBufferPointer($0), into: &out) }) == nil {
            Array(bytes).withUnsafeBytes { appendMinified($0, into: &out) }
        }
    }

    /// Appends `text` as a JSON string, quotes included: its bytes read as UTF-8 (or as
    /// `charset`), each invalid sequence as U+FFFD (one per maximal subpart), with `"`, `\`,
    /// the controls below 0x20 and U+2028/U+2029 escaped (`TextDecoder`'s rules).
    public static func appendString(_ text: UnsafeRawBufferPointer, charset: Charset = .utf8, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var decoder = TextDecoder(charset: charset)
        decoder.decode(text, into: &out)
        decoder.finish(into: &out)
        out.append(UInt8(ascii: "\""))
    }

    public static func appendString(_ text: some Collection<UInt8>, charset: Charset = .utf8, into out: inout [UInt8]) {
        if text.withContiguousStorageIfAvailable({ appendString(UnsafeRawBufferPointer($0), charset: charset, into: &out) }) == nil {
            Array(text).withUnsafeBytes { appendString($0, charset: charset, into: &out) }
        }
    }

    /// Appends `v` in decimal.
    public static func appendDecimal(_ v: UInt64, into out: inout [UInt8]) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = 0
        var x = v
        withUnsafeMutableBytes(of: &digits) { d in
            repeat {
                d[19 - n] = UInt8(truncatingIfNeeded: x % 10) + 0x30
                x /= 10
                n += 1
            } while x > 0
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: d[(20 - n)...]))
        }
    }
}
