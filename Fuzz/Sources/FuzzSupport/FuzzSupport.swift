#if canImport(Glibc)
import Glibc
#endif

/// What every fuzz target shares: an invariant check that libFuzzer reports as a crash, a
/// deterministic way to cut an input into pieces, and a JSON string validator.
///
/// A new parser (PROXY header, WebSocket frames, GMCP…) gets its own target the same way:
/// `Fuzz/Sources/Fuzz<Name>/Fuzz<Name>.swift` with one `@_cdecl("LLVMFuzzerTestOneInput")` function,
/// the name added to the list at the end of Package.swift and to `TARGETS` in scripts/fuzz, and
/// seeds under `Fuzz/corpus/<name>/` (see docs/RELIABILITY.md, "Adding a target").

/// Fails the run when `condition` is false: prints what broke and aborts, which libFuzzer
/// reports as a crash and saves the input for.
@inline(__always)
public func fuzzCheck(_ condition: Bool, _ message: @autoclosure () -> String,
                      file: StaticString = #fileID, line: UInt = #line) {
    if !condition {
        let text = Array("INVARIANT BROKEN at \(file):\(line): \(message())\n".utf8)
        _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        abort()
    }
}

/// Cuts a buffer into pieces at points derived from `seed`: the same seed always gives the same
/// cuts, so a crash reproduces from its input alone. Pieces are 0…`maxPiece` bytes (empty
/// pieces are kept on purpose: a zero-length read or write must change nothing).
public struct Splitter {
    private var state: UInt64

    public init(seed: UInt8, length: Int) {
        state = 0x9E37_79B9_7F4A_7C15 ^ (UInt64(seed) << 32) ^ UInt64(length)
        if state == 0 { state = 1 }
    }

    public mutating func next() -> UInt64 {
        // xorshift64*
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }

    /// The piece lengths covering `count` bytes.
    public mutating func pieces(_ count: Int, maxPiece: Int = 16) -> [Int] {
        var out: [Int] = []
        var left = count
        while left > 0 {
            let n = min(left, Int(next() % UInt64(maxPiece + 1)))
            out.append(n)
            left -= n
        }
        return out
    }
}

/// Calls `body` with consecutive slices of `bytes` cut by `splitter`.
public func forEachPiece(_ bytes: UnsafeRawBufferPointer, _ splitter: inout Splitter, maxPiece: Int = 16,
                         _ body: (UnsafeRawBufferPointer) -> Void) {
    var offset = 0
    for n in splitter.pieces(bytes.count, maxPiece: maxPiece) {
        body(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)]))
        offset += n
    }
}

/// The fuzzer's input as a buffer (libFuzzer may pass a null pointer with size 0).
public func fuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> UnsafeRawBufferPointer {
    guard let data, size > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
    return UnsafeRawBufferPointer(start: data, count: size)
}

/// JSON (RFC 8259) string contents, checked by hand (no Foundation in the hot loop).
public enum JSONString {
    /// Why `bytes` could not sit between two `"` in a JSON text, or nil if they can: valid
    /// UTF-8 (no surrogates, no overlongs), no control below 0x20, no bare `"`, and only the
    /// escapes `\" \\ \/ \b \f \n \r \t \uXXXX`. With `rejectLineSeparators`, also no raw
    /// U+2028/U+2029 (JavaScript parsers older than ES2019 take them as line ends).
    public static func problem(_ bytes: [UInt8], rejectLineSeparators: Bool = true) -> String? {
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            if b < 0x20 { return "raw control byte \(b) at \(i)" }
            if b == 0x22 { return "unescaped quote at \(i)" }
            if b == 0x5C {
                guard i + 1 < n else { return "backslash at the end" }
                switch bytes[i + 1] {
                case 0x22, 0x5C, 0x2F, 0x62, 0x66, 0x6E, 0x72, 0x74: i += 2
                case 0x75:
                    guard i + 6 <= n, bytes[(i + 2)..<(i + 6)].allSatisfy(isHex) else { return "bad \\u escape at \(i)" }
                    i += 6
                default: return "bad escape \\\(bytes[i + 1]) at \(i)"
                }
                continue
            }
            if b < 0x80 { i += 1; continue }
            // UTF-8, Unicode Table 3-7 (well-formed byte sequences).
            let need: Int
            var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
            switch b {
            case 0xC2...0xDF: need = 1
            case 0xE0: need = 2; lo = 0xA0
            case 0xE1...0xEC, 0xEE, 0xEF: need = 2
            case 0xED: need = 2; hi = 0x9F
            case 0xF0: need = 3; lo = 0x90
            case 0xF1...0xF3: need = 3
            case 0xF4: need = 3; hi = 0x8F
            default: return "invalid UTF-8 lead byte \(b) at \(i)"
            }
            guard i + need < n else { return "truncated UTF-8 at \(i)" }
            for k in 1...need {
                let c = bytes[i + k]
                let (l, h) = k == 1 ? (lo, hi) : (UInt8(0x80), UInt8(0xBF))
                guard c >= l && c <= h else { return "invalid UTF-8 continuation at \(i + k)" }
            }
            if rejectLineSeparators, b == 0xE2, bytes[i + 1] == 0x80, bytes[i + 2] == 0xA8 || bytes[i + 2] == 0xA9 {
                return "raw U+2028/U+2029 at \(i)"
            }
            i += need + 1
        }
        return nil
    }

    static func isHex(_ c: UInt8) -> Bool {
        (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102)
    }

    /// The Unicode scalars `bytes` (valid contents, see `problem`) stand for.
    public static func unescape(_ bytes: [UInt8]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        var i = 0
        var pendingHigh: UInt32?
        func hexValue(_ c: UInt8) -> UInt32 {
            c <= 57 ? UInt32(c - 48) : c <= 70 ? UInt32(c - 55) : UInt32(c - 87)
        }
        while i < bytes.count {
            if bytes[i] == 0x5C {
                let e = bytes[i + 1]
                if e == 0x75 {
                    var v: UInt32 = 0
                    for k in 2..<6 { v = v << 4 | hexValue(bytes[i + k]) }
                    i += 6
                    if (0xD800...0xDBFF).contains(v) { pendingHigh = v; continue }
                    if (0xDC00...0xDFFF).contains(v), let h = pendingHigh {
                        out.append(Unicode.Scalar(0x10000 + ((h - 0xD800) << 10) + (v - 0xDC00))!)
                        pendingHigh = nil
                        continue
                    }
                    out.append(Unicode.Scalar(v) ?? "\u{FFFD}")
                    continue
                }
                let map: [UInt8: Unicode.Scalar] = [0x22: "\"", 0x5C: "\\", 0x2F: "/", 0x62: "\u{08}", 0x66: "\u{0C}",
                                                    0x6E: "\n", 0x72: "\r", 0x74: "\t"]
                out.append(map[e]!)
                i += 2
                continue
            }
            // Valid UTF-8 (checked): decode one scalar.
            var it = bytes[i...].makeIterator()
            var decoder = UTF8()
            guard case .scalarValue(let s) = decoder.decode(&it) else { return out }
            out.append(s)
            i += String(s).utf8.count
        }
        return out
    }
}

