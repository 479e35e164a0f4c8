import Foundation
import XCTest
@testable import UVProxy

final class TextDecoderTests: XCTestCase {
    /// Decodes `chunks` one call each, then `finish`; returns the JSON string contents.
    func decode(_ charset: Charset, _ chunks: [[UInt8]], finish: Bool = true) -> [UInt8] {
        var decoder = TextDecoder(charset: charset)
        var out: [UInt8] = []
        for chunk in chunks { chunk.withUnsafeBytes { decoder.decode($0, into: &out) } }
        if finish { decoder.finish(into: &out) }
        return out
    }

    /// What a JSON parser makes of `contents` between quotes (nil if it is not valid JSON).
    func parsed(_ contents: [UInt8]) -> String? {
        let json = Data([0x22] + contents + [0x22])
        return (try? JSONSerialization.jsonObject(with: json, options: .fragmentsAllowed)) as? String
    }

    func text(_ s: String) -> [UInt8] { Array(s.utf8) }

    // MARK: JSON escaping

    func testASCIIIsCopiedAndJSONSpecialsAreEscaped() {
        let input = text("say \"hi\" \\o/\n\r\t\u{8}\u{c}\u{1b}[1;31mred\u{1b}[0m\u{0}\u{1f} ~\u{7f}")
        let out = decode(.utf8, [input])
        XCTAssertEqual(String(decoding: out, as: UTF8.self),
                       #"say \"hi\" \\o/\n\r\t\b\f\u001b[1;31mred\u001b[0m\u0000\u001f ~"# + "\u{7f}")
        XCTAssertEqual(parsed(out), String(decoding: input, as: UTF8.self))
    }

    func testLineSeparatorsAreEscaped() {
        let out = decode(.utf8, [text("a\u{2028}b\u{2029}c\u{2027}")])
        XCTAssertEqual(String(decoding: out, as: UTF8.self), #"a\u2028b\u2029c"# + "\u{2027}")
        XCTAssertEqual(parsed(out), "a\u{2028}b\u{2029}c\u{2027}")
    }

    func testEveryByteBelow128ParsesBack() {
        let all = (0..<128).map { UInt8($0) }
        for charset in [Charset.utf8, .latin1, .cp437] {
            XCTAssertEqual(parsed(decode(charset, [all])), String(decoding: all, as: UTF8.self), "\(charset)")
        }
    }

    // MARK: UTF-8

    func testValidUTF8PassesUnchanged() {
        let s = "naïve café – ✓ 𝄞 日本語 \u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}"
        XCTAssertEqual(decode(.utf8, [text(s)]), text(s))
    }

    func testInvalidUTF8BecomesOneReplacementPerMaximalSubpart() {
        let r = "\u{fffd}"
        let cases: [([UInt8], String)] = [
            ([0x80], r),
            ([0xBF, 0x41], r + "A"),
            ([0xC0, 0x80], r + r),                        // overlong
            ([0xC1, 0xBF], r + r),                        // overlong
            ([0xE0, 0x80, 0x80], r + r + r),              // overlong
            ([0xE0, 0x9F, 0xBF], r + r + r),              // overlong
            ([0xED, 0xA0, 0x80], r + r + r),              // surrogate
            ([0xED, 0xBF, 0xBF], r + r + r),              // surrogate
            ([0xF0, 0x8F, 0xBF, 0xBF], r + r + r + r),    // overlong
            ([0xF4, 0x90, 0x80, 0x80], r + r + r + r),    // above U+10FFFF
            ([0xF5, 0x80], r + r),
            ([0xFF, 0xFE], r + r),
            ([0xE2, 0x82, 0x41], r + "A"),                // truncated: one for the subpart
            ([0xF0, 0x9F, 0x98, 0x78], r + "x"),
            ([0xE2, 0x82, 0xE2, 0x82, 0xAC], r + "€"),
            ([0xC3], r),                                  // cut off at the end: finish
            // Unicode §3.9's example of maximal subparts.
            ([0x61, 0xF1, 0x80, 0x80, 0xE1, 0x80, 0xC2, 0x62, 0x80, 0x63, 0x80, 0xBF, 0x64], "a" + r + r + r + "b" + r + "c" + r + r + "d"),
        ]
        for (input, expected) in cases {
            let out = decode(.utf8, [input])
            XCTAssertEqual(String(decoding: out, as: UTF8.self), expected, "\(input)")
            XCTAssertEqual(parsed(out), expected)
        }
    }

    /// Random bytes, mostly high ones, decoded in random pieces, against Swift's own decoder
    /// (which also replaces maximal subparts).
    func testRandomBytesMatchSwiftsDecoderWhateverTheSplit() {
        var rng = SplitMix64(seed: 8)
        let alphabet: [UInt8] = [0x41, 0x0A, 0x22, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE1,
                                 0xED, 0xEF, 0xF0, 0xF1, 0xF4, 0xF5, 0xFF]
        for round in 0..<2000 {
            let input = (0..<Int(rng.next() % 24)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            var chunks: [[UInt8]] = []
            var i = 0
            while i < input.count {
                let n = Int(rng.next() % 4) + 1
                chunks.append(Array(input[i..<min(i + n, input.count)]))
                i += n
            }
            let out = decode(.utf8, chunks)
            let expected = String(decoding: input, as: UTF8.self)
            XCTAssertEqual(parsed(out), expected, "round \(round): \(input) in \(chunks.map(\.count))")
            if parsed(out) != expected { return }
        }
    }

    func testCharactersSplitAtEveryPosition() {
        let input = text("a€b𝄞\u{2028}\"ï\u{1b}✓") + [0xE2, 0x82]  // ends with a cut-off character
        let whole = decode(.utf8, [input])
        XCTAssertEqual(parsed(whole), "a€b𝄞\u{2028}\"ï\u{1b}✓\u{fffd}")
        for cut in 0...input.count {
            XCTAssertEqual(decode(.utf8, [Array(input[..<cut]), Array(input[cut...])]), whole, "cut at \(cut)")
            for cut2 in cut...input.count {
                let three = [Array(input[..<cut]), Array(input[cut..<cut2]), Array(input[cut2...])]
                XCTAssertEqual(decode(.utf8, three), whole, "cuts at \(cut), \(cut2)")
            }
        }
        XCTAssertEqual(decode(.utf8, input.map { [$0] }), whole, "byte by byte")
    }

    func testPendingByteCountHoldsTheIncompleteCharacter() {
        let clef: [UInt8] = [0xF0, 0x9D, 0x84, 0x9E]  // 𝄞
        for k in 0...4 {
            var decoder = TextDecoder(charset: .utf8)
            var out: [UInt8] = []
            (text("x") + clef[..<k]).withUnsafeBytes { decoder.decode($0, into: &out) }
            XCTAssertEqual(decoder.pendingByteCount, k == 4 ? 0 : k, "after \(k) bytes of 𝄞")
            XCTAssertEqual(out, k == 4 ? text("x𝄞") : text("x"), "nothing of the held character is written")
        }
        var decoder = TextDecoder(charset: .utf8)
        var out: [UInt8] = []
        [UInt8]([0xE2, 0x82]).withUnsafeBytes { decoder.decode($0, into: &out) }
        decoder.reset()
        XCTAssertEqual(decoder.pendingByteCount, 0)
        text("ok").withUnsafeBytes { decoder.decode($0, into: &out) }
        decoder.finish(into: &out)
        XCTAssertEqual(out, text("ok"), "reset drops the held bytes without a replacement")
    }

    func testFinishReplacesAHeldCharacter() {
        var decoder = TextDecoder(charset: .utf8)
        var out: [UInt8] = []
        [UInt8]([0x41, 0xF0, 0x9F]).withUnsafeBytes { decoder.decode($0, into: &out) }
        decoder.finish(into: &out)
        XCTAssertEqual(out, text("A\u{fffd}"))
        XCTAssertEqual(decoder.pendingByteCount, 0)
        decoder.finish(into: &out)
        XCTAssertEqual(out, text("A\u{fffd}"), "nothing more once finished")
    }

    /// The way the SSE writer uses it: decode the ring's slices, count `total - pendingByteCount`
    /// as consumed, reset, and start the next event at the first held byte.
    func testSSEWayOfUseReReadsHeldBytes() {
        let stream = text("Zoë ≠ Zoe; 𝄞 and € at the edges \u{1b}[1m\"bold\"\u{1b}[0m\r\n")
        let expected = decode(.utf8, [stream])
        var rng = SplitMix64(seed: 42)
        for _ in 0..<300 {
            var decoder = TextDecoder(charset: .utf8)
            var events: [UInt8] = []
            var consumed = 0
            var arrived = 0
            while consumed < stream.count {
                arrived = min(stream.count, arrived + Int(rng.next() % 6) + 1)
                // The unread bytes as the ring may hold them: one or two slices.
                let window = Array(stream[consumed..<arrived])
                let wrap = Int(rng.next() % UInt64(window.count + 1))
                var out: [UInt8] = []
                window[..<wrap].withUnsafeBytes { decoder.decode($0, into: &out) }
                window[wrap...].withUnsafeBytes { decoder.decode($0, into: &out) }
                XCTAssertLessThanOrEqual(decoder.pendingByteCount, 3)
                consumed += window.count - decoder.pendingByteCount
                decoder.reset()
                events += out
                XCTAssertNotNil(parsed(out), "every event is a JSON string by itself")
            }
            XCTAssertEqual(events, expected)
            if events != expected { return }
        }
    }

    // MARK: Latin-1 and CP437

    func testLatin1MapsEveryByteToTheSameCodePoint() {
        let all = (0...255).map { UInt8($0) }
        let expected = String(String.UnicodeScalarView(all.map { Unicode.Scalar($0) }))
        XCTAssertEqual(parsed(decode(.latin1, [all])), expected)
        XCTAssertEqual(decode(.latin1, [[0x63, 0x61, 0x66, 0xE9]]), text("café"))
        XCTAssertEqual(decode(.latin1, [[0xC3], [0xA9]]), text("Ã©"), "no UTF-8 in Latin-1")
    }

    func testCP437HighHalf() {
        // glibc's iconv -f CP437 of 0x80…0xFF.
        let iconv = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}"
        let out = decode(.cp437, [(0x80...0xFF).map { UInt8($0) }])
        XCTAssertEqual(String(decoding: out, as: UTF8.self), iconv)
        XCTAssertEqual(parsed(out), iconv)
    }

    func testCP437KeepsControlsSoANSIColoursSurvive() {
        let input: [UInt8] = [0x1B] + text("[1;34m") + [0xC9, 0xCD, 0xBB] + [0x1B] + text("[0m\r\n") + [0x7F]
        let out = decode(.cp437, [input])
        XCTAssertEqual(String(decoding: out, as: UTF8.self), #"\u001b[1;34m╔═╗\u001b[0m\r\n"# + "\u{7f}")
        XCTAssertEqual(parsed(out), "\u{1b}[1;34m╔═╗\u{1b}[0m\r\n\u{7f}")
    }

    func testSingleByteCharsetsHoldNothing() {
        for charset in [Charset.latin1, .cp437] {
            var decoder = TextDecoder(charset: charset)
            var out: [UInt8] = []
            [UInt8]([0xE2, 0x82]).withUnsafeBytes { decoder.decode($0, into: &out) }
            XCTAssertEqual(decoder.pendingByteCount, 0, "\(charset)")
            XCTAssertEqual(out.count, 4, "two 2-byte characters")
        }
    }
}

/// Text from a client (a WebSocket's text frames, UTF-8) into the target's charset: the
/// inverse of `TextDecoder` for every character the charset has, `?` for the others.
final class TextEncoderTests: XCTestCase {
    func testEveryCharsetRoundTripsWhatItCanHold() {
        XCTAssertEqual(TextEncoder.encode(Array("say café ☕".utf8), to: .utf8), Array("say café ☕".utf8))
        XCTAssertEqual(TextEncoder.encode(Array("say café ☕".utf8), to: .latin1), Array("say caf".utf8) + [0xE9, 0x20, 0x3F])
        XCTAssertEqual(TextEncoder.encode(Array("é░π\u{1B}[1m".utf8), to: .cp437), [0x82, 0xB0, 0xE3, 0x1B, 0x5B, 0x31, 0x6D])
        for charset in [Charset.latin1, .cp437] {
            let all = (0...255).map { UInt8($0) }
            var decoder = TextDecoder(charset: charset, escapesJSON: false)
            var text: [UInt8] = []
            all.withUnsafeBytes { decoder.decode($0, into: &text) }
            decoder.finish(into: &text)
            XCTAssertEqual(TextEncoder.encode(text, to: charset), all, "\(charset): every byte back")
        }
    }
}
