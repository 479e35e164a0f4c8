import FuzzSupport
@testable import UVProxy

// The text decoder (target bytes → JSON string contents for SSE), docs/RELIABILITY.md.
//
// Input: byte 0 picks the charset (its value mod 3) and seeds the cuts; the rest is what a
// target sends. Invariants, for every charset:
// - the output is always valid JSON string contents (checked by hand: UTF-8, escapes, no raw
//   control, quote, U+2028/U+2029), after every call, not only at the end: a stream may stop
//   anywhere;
// - the output does not depend on how the bytes are cut (whole, one byte at a time, random
//   pieces), and `pendingByteCount` stays within 0…3;
// - it means what the input means: unescaped, it is the input decoded by the Swift standard
//   library (UTF-8, U+FFFD per maximal subpart), or byte by byte (Latin-1), or through the
//   CP437 table;
// - `TextEncoder` takes Latin-1's and CP437's text back to the very bytes, and any text to one
//   byte per character.

let charsets: [Charset] = [.utf8, .latin1, .cp437]

func decode(_ charset: Charset, _ bytes: UnsafeRawBufferPointer,
            cut: (UnsafeRawBufferPointer, (UnsafeRawBufferPointer) -> Void) -> Void) -> [UInt8] {
    var decoder = TextDecoder(charset: charset)
    var all: [UInt8] = []
    cut(bytes) { piece in
        var out: [UInt8] = []
        decoder.decode(piece, into: &out)
        fuzzCheck(decoder.pendingByteCount <= 3, "pendingByteCount \(decoder.pendingByteCount)")
        if let problem = JSONString.problem(out) { fuzzCheck(false, "\(charset) piece \(Array(piece)) → \(out): \(problem)") }
        all += out
    }
    var tail: [UInt8] = []
    decoder.finish(into: &tail)
    fuzzCheck(decoder.pendingByteCount == 0, "finish left bytes pending")
    all += tail
    return all
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzText(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    guard input.count >= 1 else { return 0 }
    let charset = charsets[Int(input[0]) % 3]
    let payload = UnsafeRawBufferPointer(rebasing: input[1...])
    let whole = decode(charset, payload) { b, body in body(b) }
    if let problem = JSONString.problem(whole) { fuzzCheck(false, "\(charset) \(Array(payload)) → \(whole): \(problem)") }
    let bytewise = decode(charset, payload) { b, body in
        for i in 0..<b.count { body(UnsafeRawBufferPointer(rebasing: b[i..<(i + 1)])) }
    }
    var splitter = Splitter(seed: input[0], length: payload.count)
    let pieces = decode(charset, payload) { b, body in forEachPiece(b, &splitter, body) }
    fuzzCheck(whole == bytewise && whole == pieces, "\(charset): output depends on the cuts")
    let scalars = JSONString.unescape(whole)
    let expected: [Unicode.Scalar]
    switch charset {
    case .utf8: expected = Array(String(decoding: payload, as: UTF8.self).unicodeScalars)
    case .latin1: expected = payload.map { Unicode.Scalar($0) }
    case .cp437: expected = payload.map { $0 < 0x80 ? Unicode.Scalar($0) : Unicode.Scalar(TextDecoder.cp437High[Int($0) - 0x80])! }
    }
    fuzzCheck(scalars == expected, "\(charset) \(Array(payload)) means \(scalars), expected \(expected)")
    // TextEncoder, the way back: a single-byte charset's text encodes to its bytes exactly; any
    // text (the payload read as UTF-8, as a WebSocket's) encodes to one byte per character there.
    var string = ""
    string.unicodeScalars.append(contentsOf: expected)
    let text = Array(string.utf8)
    if charset != .utf8 {
        fuzzCheck(TextEncoder.encode(text, to: charset) == Array(payload), "\(charset): \(Array(payload)) does not encode back")
        let any = Array(String(decoding: payload, as: UTF8.self).utf8)
        let encoded = TextEncoder.encode(any, to: charset)
        fuzzCheck(encoded.count == String(decoding: any, as: UTF8.self).unicodeScalars.count, "\(charset): one byte per character")
    } else {
        fuzzCheck(TextEncoder.encode(text, to: .utf8) == text, "UTF-8 text is kept as it is")
    }
    return 0
}
