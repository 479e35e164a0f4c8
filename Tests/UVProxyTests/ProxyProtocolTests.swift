import XCTest
@testable import UVProxy
#if canImport(Glibc)
import Glibc
#endif

private typealias Endpoint = ProxyProtocol.Endpoint
private typealias Outcome = ProxyHeaderParser.Outcome

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
private let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

/// A v2 header: signature, version/command byte, family byte, the length of `body`, `body`.
private func v2(_ verCmd: UInt8, _ family: UInt8, _ body: [UInt8], length: Int? = nil) -> [UInt8] {
    let n = length ?? body.count
    return signature + [verCmd, family, UInt8(n >> 8), UInt8(n & 0xFF)] + body
}

private func ep(_ text: String, _ port: UInt16) -> Endpoint { Endpoint(text, port: port)! }


/// The PROXY protocol (HAProxy's proxy-protocol.txt): the parser fed every way a read can cut
/// a header, every malformed case the spec names, and the encoder; address text against glibc.
final class ProxyProtocolTests: XCTestCase {
    /// Feeds `chunks` in order until an answer other than `.needMore`; returns it with the
    /// header's length counted from the start of the stream (the bytes of earlier chunks plus
    /// `consumed`), and how many chunks were fed.
    private func feed(_ chunks: [[UInt8]], maxLength: Int = 1024) -> (Outcome, headerLength: Int?, fed: Int) {
        var parser = ProxyHeaderParser(maxLength: maxLength)
        var before = 0
        var fed = 0
        for chunk in chunks {
            fed += 1
            let outcome = chunk.withUnsafeBytes { parser.feed($0) }
            switch outcome {
            case .needMore:
                before += chunk.count
            case .done(let h, let consumed):
                XCTAssertLessThanOrEqual(consumed, chunk.count)
                XCTAssertGreaterThanOrEqual(consumed, 0)
                return (.done(h, consumed: consumed), before + consumed, fed)
            case .invalid:
                return (outcome, nil, fed)
            }
        }
        return (.needMore, nil, fed)
    }

    /// What `input` gives whole, and the same in two pieces cut at every index and one byte at
    /// a time: the same header or reason, the header ending at the same place.
    @discardableResult
    private func assertEveryCut(_ input: [UInt8], maxLength: Int = 1024,
                                file: StaticString = #filePath, line: UInt = #line) -> (Outcome, Int?) {
        let (whole, length, _) = feed([input], maxLength: maxLength)
        func same(_ o: Outcome, _ l: Int?, _ how: String) {
            switch (whole, o) {
            case (.done(let a, _), .done(let b, _)):
                XCTAssertEqual(a, b, how, file: file, line: line)
                XCTAssertEqual(l, length, "header length, \(how)", file: file, line: line)
            default:
                XCTAssertEqual(o, whole, how, file: file, line: line)
            }
        }
        for cut in 0...input.count {
            let (o, l, _) = feed([Array(input[..<cut]), Array(input[cut...])], maxLength: maxLength)
            same(o, l, "cut at \(cut)")
        }
        let (o, l, _) = feed(input.map { [$0] }, maxLength: maxLength)
        same(o, l, "byte at a time")
        // With empty reads in between too.
        let (o2, l2, _) = feed(input.flatMap { b -> [[UInt8]] in [[], [b]] } + [[]], maxLength: maxLength)
        same(o2, l2, "byte at a time with empty reads")
        return (whole, length)
    }

    private func assertHeader(_ input: [UInt8], _ expected: ProxyProtocol.Header, maxLength: Int = 1024,
                              file: StaticString = #filePath, line: UInt = #line) {
        let (outcome, length) = assertEveryCut(input, maxLength: maxLength, file: file, line: line)
        XCTAssertEqual(outcome, .done(expected, consumed: input.count), file: file, line: line)
        XCTAssertEqual(length, input.count, file: file, line: line)
        // Every shorter prefix asks for more, and so does an empty read after it.
        for n in 0..<input.count {
            var parser = ProxyHeaderParser(maxLength: maxLength)
            XCTAssertEqual(Array(input[..<n]).withUnsafeBytes { parser.feed($0) }, .needMore, "prefix \(n)", file: file, line: line)
            XCTAssertEqual([UInt8]().withUnsafeBytes { parser.feed($0) }, .needMore, "prefix \(n), then nothing", file: file, line: line)
        }
    }

    /// `input` is refused, the same way at every cut, with a reason containing `reason`.
    private func assertInvalid(_ input: [UInt8], _ reason: String, maxLength: Int = 1024,
                               file: StaticString = #filePath, line: UInt = #line) {
        let (outcome, _) = assertEveryCut(input, maxLength: maxLength, file: file, line: line)
        guard case .invalid(let why) = outcome else {
            return XCTFail("\(String(decoding: input, as: UTF8.self).debugDescription): \(outcome), expected invalid", file: file, line: line)
        }
        XCTAssertTrue(why.contains(reason), "\(String(decoding: input, as: UTF8.self).debugDescription): '\(why)' lacks '\(reason)'", file: file, line: line)
    }

    private func assertInvalid(_ text: String, _ reason: String, file: StaticString = #filePath, line: UInt = #line) {
        assertInvalid(bytes(text), reason, file: file, line: line)
    }

    // MARK: v1, valid

    func testV1TCP4() {
        assertHeader(bytes("PROXY TCP4 192.0.2.1 198.51.100.2 5000 9000\r\n"),
                     .proxied(source: Endpoint(address: [192, 0, 2, 1], port: 5000),
                              destination: Endpoint(address: [198, 51, 100, 2], port: 9000)))
        assertHeader(bytes("PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n"),
                     .proxied(source: Endpoint(address: [255, 255, 255, 255], port: 65535),
                              destination: Endpoint(address: [0, 0, 0, 0], port: 0)))
    }

    func testV1TCP6() {
        let db8 = Endpoint(address: [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1], port: 5000)
        assertHeader(bytes("PROXY TCP6 2001:db8::1 2001:db8::1 5000 5000\r\n"), .proxied(source: db8, destination: db8))
        assertHeader(bytes("PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 ::1 5000 80\r\n"),
                     .proxied(source: db8, destination: Endpoint(address: [UInt8](repeating: 0, count: 15) + [1], port: 80)))
        // A dotted tail (an IPv4-mapped client, as HAProxy writes it), and "::".
        assertHeader(bytes("PROXY TCP6 ::ffff:192.0.2.1 :: 1 2\r\n"),
                     .proxied(source: Endpoint(address: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 192, 0, 2, 1], port: 1),
                              destination: Endpoint(address: [UInt8](repeating: 0, count: 16), port: 2)))
        // The longest TCP6 line the spec names: 104 bytes.
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        let line = bytes("PROXY TCP6 \(full) \(full) 65535 65535\r\n")
        XCTAssertEqual(line.count, 104)
        let ones = Endpoint(address: [UInt8](repeating: 0xFF, count: 16), port: 65535)
        assertHeader(line, .proxied(source: ones, destination: ones))
    }

    func testV1Unknown() {
        assertHeader(bytes("PROXY UNKNOWN\r\n"), .local)
        assertHeader(bytes("PROXY UNKNOWN 192.0.2.1 198.51.100.2 5000 9000\r\n"), .local)
        assertHeader(bytes("PROXY UNKNOWN anything, even \u{1}\0 and  double  spaces\r\n"), .local)
        // The spec's worst case is exactly 107 bytes.
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        let worst = bytes("PROXY UNKNOWN \(full) \(full) 65535 65535\r\n")
        XCTAssertEqual(worst.count, 107)
        assertHeader(worst, .local)
    }

    // MARK: v2, valid

    private let tcp4Body: [UInt8] = [192, 0, 2, 1, 198, 51, 100, 2, 0x13, 0x88, 0x23, 0x28]  // ports 5000, 9000
    private var tcp4: ProxyProtocol.Header {
        .proxied(source: Endpoint(address: [192, 0, 2, 1], port: 5000), destination: Endpoint(address: [198, 51, 100, 2], port: 9000))
    }

    func testV2TCP4() {
        assertHeader(v2(0x21, 0x11, tcp4Body), tcp4)
    }

    func testV2TCP6() {
        let src: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1]
        let dst: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [2]
        assertHeader(v2(0x21, 0x21, src + dst + [0xFF, 0xFF, 0, 80]),
                     .proxied(source: Endpoint(address: src, port: 65535), destination: Endpoint(address: dst, port: 80)))
    }

    func testV2LocalIgnoresFamilyAndAddresses() {
        assertHeader(v2(0x20, 0x00, []), .local)
        assertHeader(v2(0x20, 0x11, tcp4Body), .local)
        assertHeader(v2(0x20, 0xFF, [1, 2, 3]), .local)     // LOCAL: the family is not even looked at
        assertHeader(v2(0x20, 0x21, []), .local)            // nor is the length held to it
    }

    func testV2UnspecUDPAndUnixAreLocal() {
        assertHeader(v2(0x21, 0x00, []), .local)
        assertHeader(v2(0x21, 0x00, [9, 9, 9, 9]), .local)
        assertHeader(v2(0x21, 0x12, tcp4Body), .local)
        assertHeader(v2(0x21, 0x22, [UInt8](repeating: 7, count: 36)), .local)
        assertHeader(v2(0x21, 0x31, [UInt8](repeating: 0x2F, count: 216)), .local)
        assertHeader(v2(0x21, 0x32, [UInt8](repeating: 0x2F, count: 216)), .local)
    }

    func testV2TLVsAreSkipped() {
        // ALPN "h2", AUTHORITY "example.com", NOOP with 5 bytes, a 300-byte custom TLV.
        let tlvs: [UInt8] = [0x01, 0, 2] + bytes("h2") + [0x02, 0, 11] + bytes("example.com") + [0x04, 0, 5, 0, 0, 0, 0, 0]
            + [0xE0, 0x01, 0x2C] + [UInt8](repeating: 0xAB, count: 300)
        assertHeader(v2(0x21, 0x11, tcp4Body + tlvs), tcp4)
        // TLV bytes are skipped, not parsed: a truncated TLV inside the length is fine too.
        assertHeader(v2(0x21, 0x11, tcp4Body + [0x01, 0xFF]), tcp4)
        let (src, dst) = ([UInt8](repeating: 1, count: 16), [UInt8](repeating: 2, count: 16))
        assertHeader(v2(0x21, 0x21, src + dst + [0, 1, 0, 2] + tlvs),
                     .proxied(source: Endpoint(address: src, port: 1), destination: Endpoint(address: dst, port: 2)))
    }

    // MARK: Followed by the client's bytes

    func testConsumedIsExactWhenTheClientsBytesFollow() {
        let http = bytes("GET /mud HTTP/1.1\r\nHost: x\r\n\r\n")
        let cases: [([UInt8], ProxyProtocol.Header)] = [
            (bytes("PROXY TCP4 192.0.2.1 198.51.100.2 5000 9000\r\n"), tcp4),
            (bytes("PROXY UNKNOWN\r\n"), .local),
            (v2(0x21, 0x11, tcp4Body), tcp4),
            (v2(0x21, 0x11, tcp4Body + [0x04, 0, 1, 0]), tcp4),
            (v2(0x20, 0x00, []), .local),
        ]
        for (header, expected) in cases {
            let input = header + http
            let (outcome, length) = assertEveryCut(input)
            XCTAssertEqual(outcome, .done(expected, consumed: header.count))
            XCTAssertEqual(length, header.count)
            // The caller passes the rest on; the bytes after `consumed` are exactly the request.
            input.withUnsafeBytes { buf in
                var parser = ProxyHeaderParser()
                guard case .done(_, let consumed) = parser.feed(buf) else { return XCTFail("not done") }
                XCTAssertEqual(Array(buf[consumed...]), http)
            }
            // Every cut: the header's bytes of each piece add up, the rest is the request.
            for cut in 0...input.count {
                var parser = ProxyHeaderParser()
                var rest: [UInt8] = []
                var done = false
                for piece in [Array(input[..<cut]), Array(input[cut...])] {
                    piece.withUnsafeBytes { buf in
                        let outcome = parser.feed(buf)
                        if done {
                            XCTAssertEqual(outcome, .done(expected, consumed: 0), "after done, nothing more is header")
                            rest += buf
                        } else if case .done(let h, let consumed) = outcome {
                            XCTAssertEqual(h, expected)
                            rest += buf[consumed...]
                            done = true
                        } else {
                            XCTAssertEqual(outcome, .needMore)
                        }
                    }
                }
                XCTAssertEqual(rest, http, "cut at \(cut)")
            }
        }
    }

    func testAfterTheEndFeedsAnswerTheSame() {
        var parser = ProxyHeaderParser()
        XCTAssertEqual(bytes("PROXY UNKNOWN\r\nGET").withUnsafeBytes { parser.feed($0) }, .done(.local, consumed: 15))
        XCTAssertTrue(parser.isFinished)
        XCTAssertEqual(bytes(" / HTTP/1.1").withUnsafeBytes { parser.feed($0) }, .done(.local, consumed: 0))
        XCTAssertEqual([UInt8]().withUnsafeBytes { parser.feed($0) }, .done(.local, consumed: 0))

        var bad = ProxyHeaderParser()
        let refused = bytes("GET / HTTP/1.1\r\n").withUnsafeBytes { bad.feed($0) }
        guard case .invalid = refused else { return XCTFail("\(refused)") }
        XCTAssertEqual(bytes("PROXY UNKNOWN\r\n").withUnsafeBytes { bad.feed($0) }, refused)
        XCTAssertEqual([UInt8]().withUnsafeBytes { bad.feed($0) }, refused)
    }

    // MARK: Truncated, too long

    func testTruncatedAsksForMore() {
        // Each valid header cut short (assertHeader checks every prefix); spot checks here.
        XCTAssertEqual(feed([bytes("PROXY TCP4 192.0.2.1 198.51.100.2 5000 9000\r")]).0, .needMore)
        XCTAssertEqual(feed([bytes("P"), [], bytes("ROXY")]).0, .needMore)
        XCTAssertEqual(feed([signature]).0, .needMore)
        XCTAssertEqual(feed([Array(v2(0x21, 0x11, tcp4Body).dropLast())]).0, .needMore)
        XCTAssertEqual(feed([v2(0x21, 0x11, tcp4Body + [0x04, 0, 200], length: 12 + 3 + 200)]).0, .needMore)  // in the TLVs
        XCTAssertEqual(feed([]).0, .needMore)
    }

    func testV1WithoutCRLFIn107BytesIsTooLong() {
        let long = bytes("PROXY UNKNOWN ") + [UInt8](repeating: UInt8(ascii: "a"), count: 93)
        XCTAssertEqual(long.count, 107)
        XCTAssertEqual(feed([Array(long.dropLast())]).0, .needMore)
        assertInvalid(long, "too long")
        // Refused at the 107th byte, whatever follows.
        let (outcome, _, fed) = feed(long.map { [$0] } + [[0x0D], [0x0A]])
        XCTAssertEqual(fed, 107)
        guard case .invalid = outcome else { return XCTFail("\(outcome)") }
        // A CR as the 107th byte: the CRLF would end at 108.
        assertInvalid(Array(long.dropLast()) + [0x0D, 0x0A], "too long")
        // A TCP6 line made long by a doubled field.
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        assertInvalid("PROXY TCP6 \(full) \(full) \(full) 1 2\r\n", "too long")
    }

    func testV2LongerThanMaxLengthIsTooLong() {
        // Refused as soon as the length is known: 16 bytes, no body needed.
        let over = v2(0x21, 0x11, [], length: 1024 - 16 + 1)
        assertInvalid(over, "too long")
        XCTAssertEqual(feed([over]).0, feed([over + [UInt8](repeating: 0, count: 2000)]).0)
        assertHeader(v2(0x21, 0x11, tcp4Body + [0xE0, 0x03, 0xE1] + [UInt8](repeating: 0, count: 1008 - 15)), tcp4)
        assertInvalid(v2(0x21, 0x11, tcp4Body), "too long", maxLength: 27)
        assertHeader(v2(0x21, 0x11, tcp4Body), tcp4, maxLength: 28)
        assertInvalid(v2(0x20, 0x00, [], length: 0xFFFF), "too long")  // LOCAL too
        assertInvalid(v2(0x21, 0x31, [UInt8](repeating: 0, count: 216)), "too long", maxLength: 231)
    }

    // MARK: Signature, version, command, family, length

    func testNotAHeaderIsRefusedAtTheFirstWrongByte() {
        for (input, at) in [(bytes("GET / HTTP/1.1\r\n\r\n"), 1), (bytes("proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n"), 1),
                            (bytes("PROXYTCP4"), 6), (bytes("PROXY\r\n"), 6), (bytes("PRoXY "), 3),
                            ([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x58, 0x0A], 11),  // QUIX
                            ([0x0D, 0x0A, 0x0D, 0x0A, 0x01], 5), (bytes("\r\nGET"), 3), ([0x16, 0x03, 0x01], 1)] {
            assertInvalid(input, "not a PROXY protocol header")
            // Decided without waiting: the bytes up to the wrong one are enough.
            let (outcome, _, fed) = feed(input.map { [$0] })
            XCTAssertEqual(fed, at, "\(input)")
            guard case .invalid = outcome else { return XCTFail("\(outcome)") }
        }
    }

    func testV2BadVersionCommandFamilyAndLength() {
        assertInvalid(v2(0x11, 0x11, tcp4Body), "version 1")
        assertInvalid(v2(0x31, 0x11, tcp4Body), "version 3")
        assertInvalid(v2(0x01, 0x11, tcp4Body), "version 0")
        assertInvalid(v2(0x22, 0x11, tcp4Body), "unknown command 2")
        assertInvalid(v2(0x2F, 0x11, tcp4Body), "unknown command 15")
        for family: UInt8 in [0x01, 0x02, 0x10, 0x13, 0x20, 0x23, 0x30, 0x33, 0x41, 0xFF] {
            assertInvalid(v2(0x21, family, tcp4Body), "unknown address family")
        }
        assertInvalid(v2(0x21, 0x11, Array(tcp4Body.dropLast())), "shorter")
        assertInvalid(v2(0x21, 0x11, []), "shorter")
        assertInvalid(v2(0x21, 0x21, [UInt8](repeating: 0, count: 35)), "shorter")
        assertInvalid(v2(0x21, 0x21, tcp4Body), "shorter")
        assertInvalid(v2(0x21, 0x22, tcp4Body), "shorter")
        assertInvalid(v2(0x21, 0x31, [UInt8](repeating: 0, count: 215)), "shorter")
        // Judged at the byte that decides: version and command at 13, family at 14, length at 16.
        XCTAssertEqual(feed(v2(0x31, 0x11, tcp4Body).map { [$0] }).fed, 13)
        XCTAssertEqual(feed(v2(0x21, 0x13, tcp4Body).map { [$0] }).fed, 14)
        XCTAssertEqual(feed(v2(0x21, 0x21, tcp4Body).map { [$0] }).fed, 16)
    }

    // MARK: v1, malformed

    func testV1BadProtocol() {
        assertInvalid("PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "protocol")
        assertInvalid("PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", "protocol")
        assertInvalid("PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", "protocol")
        assertInvalid("PROXY UNKNOWNX\r\n", "protocol")
        assertInvalid("PROXY UNKNOW\r\n", "protocol")
        assertInvalid("PROXY TCP4\r\n", "protocol")
        assertInvalid("PROXY TCP41.2.3.4 1.2.3.4 1 2\r\n", "protocol")
        // Refused at the wrong byte, before any CRLF.
        XCTAssertEqual(feed(bytes("PROXY TCP5 1.2.3.4").map { [$0] }).fed, 10)
        XCTAssertEqual(feed(bytes("PROXY TCP4 1.2.3.4 x").map { [$0] }).fed, 20)
    }

    func testV1BadLineEnds() {
        assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 5000 9000\n", "LF without CR")
        assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 5000 9000\rX", "CR not followed by LF")
        assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 5000 9000\r\r\n", "CR not followed by LF")
        assertInvalid("PROXY UNKNOWN\n", "LF without CR")
        assertInvalid("PROXY UNKNOWN a\rb\r\n", "CR not followed by LF")
        assertInvalid("PROXY UNKNOWN a\nb\r\n", "LF without CR")
        assertInvalid("PROXY TCP4 192.0.2.1\r\n198.51.100.2 5000 9000\r\n", "fewer than four fields")
    }

    func testV1Spaces() {
        assertInvalid("PROXY  TCP4 192.0.2.1 198.51.100.2 5000 9000\r\n", "protocol")
        assertInvalid("PROXY TCP4  192.0.2.1 198.51.100.2 5000 9000\r\n", "empty field")
        assertInvalid("PROXY TCP4 192.0.2.1  198.51.100.2 5000 9000\r\n", "empty field")
        assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2  5000 9000\r\n", "empty field")
        assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 5000  9000\r\n", "empty field")
        assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 5000 9000 \r\n", "empty field")
        assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 5000 9000 1\r\n", "more than four fields")
        assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 5000\r\n", "fewer than four fields")
        assertInvalid("PROXY TCP4 \r\n", "empty field")
        assertInvalid("PROXY TCP4 192.0.2.1\t198.51.100.2 5000 9000\r\n", "byte 9")
    }

    func testV1BadAddresses() {
        func line(_ src: String, _ dst: String, v6: Bool = false) -> String {
            "PROXY TCP\(v6 ? 6 : 4) \(src) \(dst) 5000 9000\r\n"
        }
        for bad in ["256.1.1.1", "1.2.3.256", "01.2.3.4", "1.2.3.00", "1.2.3", "1.2.3.4.5", "1..2.3", ".1.2.3",
                    "1.2.3.", "1234.1.1.1", "::1", "2001:db8::1", "a.b.c.d"] {
            assertInvalid(line(bad, "198.51.100.2"), "source is not an IPv4 address")
            assertInvalid(line("198.51.100.2", bad), "destination is not an IPv4 address")
        }
        for bad in ["1::2::3", "::1::", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:8::", "1:2:3:4:5:6:7", "12345::1",
                    ":1::2", "1::2:", ":::", ":", "1:2:3:4:5:6:7:8:", "::ffff:01.2.3.4", "::ffff:256.2.3.4",
                    "::ffff:1.2.3", "1:2:3:4:5:6:7:1.2.3.4", "1.2.3.4::", "::1.2.3.4:1", "192.0.2.1", "g::1"] {
            if bad.contains("g") {
                assertInvalid(line(bad, "::1", v6: true), "byte")
                continue
            }
            assertInvalid(line(bad, "::1", v6: true), "source is not an IPv6 address")
            assertInvalid(line("::1", bad, v6: true), "destination is not an IPv6 address")
        }
    }

    func testV1BadPorts() {
        for bad in ["65536", "99999", "100000", "05000", "00", "0x50", "1e3", "-1", "+80"] {
            let chars = bad.contains("x") || bad.contains("-") || bad.contains("+")
            assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 \(bad) 9000\r\n", chars ? "byte" : "bad source port")
            assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 5000 \(bad)\r\n", chars ? "byte" : "bad destination port")
        }
        assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 5000 \r\n", "empty field")
        assertInvalid("PROXY TCP4 192.0.2.1 198.51.100.2 a 9000\r\n", "bad source port")
    }

    // MARK: Encoder

    func testEncodeV1() {
        XCTAssertEqual(ProxyProtocol.header(.v1, source: ep("192.0.2.1", 5000), destination: ep("198.51.100.2", 9000)),
                       bytes("PROXY TCP4 192.0.2.1 198.51.100.2 5000 9000\r\n"))
        XCTAssertEqual(ProxyProtocol.header(.v1, source: ep("2001:DB8:0:0:0:0:0:1", 0), destination: ep("::", 65535)),
                       bytes("PROXY TCP6 2001:db8::1 :: 0 65535\r\n"))
        // Mixed families: TCP6, the IPv4 endpoint as IPv4-mapped.
        XCTAssertEqual(ProxyProtocol.header(.v1, source: ep("192.0.2.1", 5000), destination: ep("2001:db8::2", 4000)),
                       bytes("PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 5000 4000\r\n"))
        XCTAssertEqual(ProxyProtocol.header(.v1, source: ep("2001:db8::1", 5000), destination: ep("10.0.0.1", 4000)),
                       bytes("PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 5000 4000\r\n"))
    }

    func testEncodeV2() {
        XCTAssertEqual(ProxyProtocol.header(.v2, source: ep("192.0.2.1", 5000), destination: ep("198.51.100.2", 9000)),
                       signature + [0x21, 0x11, 0, 12] + tcp4Body)
        let src: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1]
        XCTAssertEqual(ProxyProtocol.header(.v2, source: ep("2001:db8::1", 443), destination: ep("::1", 4000)),
                       signature + [0x21, 0x21, 0, 36] + src + [UInt8](repeating: 0, count: 15) + [1] + [0x01, 0xBB, 0x0F, 0xA0])
        let mapped: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 192, 0, 2, 1]
        XCTAssertEqual(ProxyProtocol.header(.v2, source: ep("192.0.2.1", 5000), destination: ep("2001:db8::1", 443)),
                       signature + [0x21, 0x21, 0, 36] + mapped + src + [0x13, 0x88, 0x01, 0xBB])
    }

    func testEncodeThenParseRoundTripsRandomEndpoints() {
        var rng = SplitMix64(seed: 1)
        func random(_ v4: Bool) -> Endpoint {
            var a = (0..<(v4 ? 4 : 16)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if !v4 {  // runs of zeros, so "::" is exercised
                let start = Int.random(in: 0..<16, using: &rng), n = Int.random(in: 0...16, using: &rng)
                for k in start..<min(16, start + n) { a[k] = 0 }
                if Int.random(in: 0..<8, using: &rng) == 0 { a = [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF] + a[12...] }
            }
            return Endpoint(address: a, port: UInt16.random(in: 0...65535, using: &rng))
        }
        for round in 0..<2000 {
            let (v4s, v4d) = (round % 4 < 2, round % 2 == 0)
            let (s, d) = (random(v4s), random(v4d))
            for version in [ProxyProtocol.Version.v1, .v2] {
                let header = ProxyProtocol.header(version, source: s, destination: d)
                let (outcome, length, _) = feed([header + bytes("GET")])
                XCTAssertEqual(length, header.count)
                guard case .done(.proxied(let ps, let pd), _) = outcome else {
                    return XCTFail("\(s) \(d) \(version): \(outcome) for \(String(decoding: header, as: UTF8.self).debugDescription)")
                }
                if v4s == v4d {
                    XCTAssertEqual(ps, s)
                    XCTAssertEqual(pd, d)
                } else {  // both as IPv6; the v4 one mapped
                    XCTAssertEqual(ps.address, s.ipv6Bytes)
                    XCTAssertEqual(pd.address, d.ipv6Bytes)
                    XCTAssertEqual(ps.unmapped.address, s.isIPv4 ? s.address : s.unmapped.address)
                    XCTAssertEqual(pd.unmapped.address, d.isIPv4 ? d.address : d.unmapped.address)
                    XCTAssertEqual(ps.port, s.port)
                    XCTAssertEqual(pd.port, d.port)
                }
                if version == .v1 { XCTAssertLessThanOrEqual(header.count, 104) }
            }
        }
    }

    // MARK: Endpoint text

    func testEndpointText() {
        XCTAssertEqual(ep("192.0.2.1", 80).description, "192.0.2.1:80")
        XCTAssertEqual(ep("2001:db8::1", 80).description, "[2001:db8::1]:80")
        XCTAssertEqual(ep("2001:db8::1", 80).addressText, "2001:db8::1")
        XCTAssertEqual(ep("0.0.0.0", 0).addressText, "0.0.0.0")
        XCTAssertTrue(ep("0.0.0.0", 0).isIPv4)
        XCTAssertFalse(ep("::", 0).isIPv4)
        // RFC 5952's rules: lower case, no leading zeros, the longest run (the first of equal
        // ones) of two or more zero groups compressed, a single zero group not.
        for (text, expected) in [("::", "::"), ("::1", "::1"), ("1::", "1::"), ("2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
                                 ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"), ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
                                 ("2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:db8::ff00:42:8329"),
                                 ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"), ("0:0:1:0:0:0:0:0", "0:0:1::"),
                                 ("::ffff:c000:0201", "::ffff:192.0.2.1"), ("::ffff:0:0", "::ffff:0.0.0.0"),
                                 ("::1.2.3.4", "::102:304"), ("64:ff9b::192.0.2.1", "64:ff9b::c000:201")] {
            XCTAssertEqual(ep(text, 1).addressText, expected, text)
        }
        XCTAssertEqual(ep("::ffff:192.0.2.1", 80).unmapped, ep("192.0.2.1", 80))
        XCTAssertTrue(ep("::ffff:192.0.2.1", 80).isIPv4Mapped)
        XCTAssertFalse(ep("::fffe:192.0.2.1", 80).isIPv4Mapped)
        XCTAssertEqual(ep("::1", 80).unmapped, ep("::1", 80))
        XCTAssertNil(Endpoint("example.com", port: 1))
        XCTAssertNil(Endpoint("[::1]", port: 1))
        XCTAssertNil(Endpoint("", port: 1))
    }

    // MARK: Against glibc

    private func ptonV6(_ s: [UInt8]) -> [UInt8]? {
        var a = in6_addr()
        let ok = (s + [0]).withUnsafeBufferPointer { p in
            p.withMemoryRebound(to: CChar.self) { inet_pton(AF_INET6, $0.baseAddress, &a) }
        }
        return ok == 1 ? withUnsafeBytes(of: &a) { Array($0) } : nil
    }

    private func ptonV4(_ s: [UInt8]) -> [UInt8]? {
        var a = in_addr()
        let ok = (s + [0]).withUnsafeBufferPointer { p in
            p.withMemoryRebound(to: CChar.self) { inet_pton(AF_INET, $0.baseAddress, &a) }
        }
        return ok == 1 ? withUnsafeBytes(of: &a) { Array($0) } : nil
    }

    private func ntopV6(_ a: [UInt8]) -> String {
        var buf = [CChar](repeating: 0, count: 64)
        _ = a.withUnsafeBytes { inet_ntop(AF_INET6, $0.baseAddress, &buf, 64) }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func testIPv6TextAgainstInetNtopAndInetPton() {
        var rng = SplitMix64(seed: 2)
        var compared = 0
        for _ in 0..<20000 {
            var a = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
            // Zero groups and runs of them, a lone zero byte, mapped and compatible addresses.
            for _ in 0..<Int.random(in: 0...3, using: &rng) {
                let start = Int.random(in: 0..<8, using: &rng) * 2, n = Int.random(in: 1...8, using: &rng) * 2
                for k in start..<min(16, start + n) { a[k] = 0 }
            }
            if Int.random(in: 0..<4, using: &rng) == 0 { a[Int.random(in: 0..<16, using: &rng)] = 0 }
            switch Int.random(in: 0..<10, using: &rng) {
            case 0: a = [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF] + a[12...]
            case 1: a = [UInt8](repeating: 0, count: 12) + a[12...]
            default: break
            }
            let ours = Endpoint(address: a, port: 0).addressText
            let glibc = ntopV6(a)
            // glibc writes IPv4-compatible addresses (::/96, deprecated) dotted; RFC 5952 and we do not.
            let compatible = a[0..<12].allSatisfy { $0 == 0 } && (a[12] != 0 || a[13] != 0)
            if compatible {
                XCTAssertTrue(glibc.contains("."), glibc)
            } else {
                XCTAssertEqual(ours, glibc, "\(a)")
                compared += 1
            }
            // Each reads the other's text back to the same bytes.
            XCTAssertEqual(ptonV6(bytes(ours)), a, ours)
            XCTAssertEqual(ProxyProtocol.parseIPv6(bytes(glibc)[...]), a, glibc)
            XCTAssertEqual(ProxyProtocol.parseIPv6(bytes(ours.uppercased())[...]), a, ours)
        }
        XCTAssertGreaterThan(compared, 15000)
    }

    func testAddressParsingAgreesWithInetPton() {
        var rng = SplitMix64(seed: 3)
        let v6Alphabet = bytes("0123456789abcdefABCDEF:.")
        let v4Alphabet = bytes("0123456789.")
        let seeds = ["::", "::1", "1::", "2001:db8::1", "::ffff:192.0.2.1", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:1.2.3.4",
                     "fe80::1:2", "0:0:0:0:0:0:0:0", "::255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
        var accepted = 0
        for round in 0..<60000 {
            let v6 = round % 3 != 0
            var s: [UInt8]
            if round % 2 == 0 {  // a valid address, mutated
                s = v6 ? bytes(seeds[Int.random(in: 0..<seeds.count, using: &rng)])
                       : bytes((0..<4).map { _ in String(Int.random(in: 0...255, using: &rng)) }.joined(separator: "."))
                for _ in 0..<Int.random(in: 0...2, using: &rng) {
                    let alphabet = v6 ? v6Alphabet : v4Alphabet
                    let at = Int.random(in: 0...s.count, using: &rng)
                    switch Int.random(in: 0..<3, using: &rng) {
                    case 0: s.insert(alphabet.randomElement(using: &rng)!, at: at)
                    case 1: if at < s.count { s.remove(at: at) }
                    default: if at < s.count { s[at] = alphabet.randomElement(using: &rng)! }
                    }
                }
            } else {
                let alphabet = v6 ? v6Alphabet : v4Alphabet
                s = (0..<Int.random(in: 0...(v6 ? 20 : 16), using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
            }
            if v6 {
                let expected = ptonV6(s)
                XCTAssertEqual(ProxyProtocol.parseIPv6(s[...]), expected, String(decoding: s, as: UTF8.self))
                if expected != nil { accepted += 1 }
            } else {
                let expected = ptonV4(s)
                XCTAssertEqual(ProxyProtocol.parseIPv4(s[...]), expected, String(decoding: s, as: UTF8.self))
                if expected != nil { accepted += 1 }
            }
        }
        XCTAssertGreaterThan(accepted, 5000)
    }

    func testTheLocalHeaderNamesNoClientAndParsesAsLocal() {
        XCTAssertEqual(ProxyProtocol.localHeader(.v1), Array("PROXY UNKNOWN\r\n".utf8))
        for version in [ProxyProtocol.Version.v1, .v2] {
            let header = ProxyProtocol.localHeader(version)
            var parser = ProxyHeaderParser()
            XCTAssertEqual(header.withUnsafeBytes { parser.feed($0) }, .done(.local, consumed: header.count), "\(version)")
        }
    }

    func testEveryOctetIsWrittenAsInetNtopWritesIt() {
        for v in 0...255 {
            let e = ProxyProtocol.Endpoint(address: [UInt8(v), 0, UInt8(255 - v), UInt8(v)], port: UInt16(v * 257))
            XCTAssertEqual(e.description, "\(v).0.\(255 - v).\(v):\(v * 257)")
            let header = ProxyProtocol.header(.v1, source: e, destination: e)
            XCTAssertEqual(String(decoding: header, as: UTF8.self),
                           "PROXY TCP4 \(v).0.\(255 - v).\(v) \(v).0.\(255 - v).\(v) \(v * 257) \(v * 257)\r\n")
        }
    }

    func testDecimalText() {
        for v in [0, 1, 9, 10, 99, 100, 255, 1000, 9999, 10000, 65535, 99999, 100000, 1234567] {
            XCTAssertEqual(ProxyProtocol.text(capacity: 8) { ProxyProtocol.appendDecimal(v, to: &$0) }, "\(v)")
        }
    }
}
