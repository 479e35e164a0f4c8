import XCTest
@testable import UVProxy

private typealias Event = WebSocketFrameParser.Event
private typealias Failure = WebSocketFrameParser.Failure
private typealias Handshake = WebSocketHandshake

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// RFC 6455 §5.7's masking key.
private let rfcKey: UInt32 = 0x37FA_213D

/// How a test frame writes its payload length.
private enum LengthForm { case shortest, short7, medium16, long64 }

/// A client frame written by hand, not by the encoder under test: FIN, RSV bits (`rsv`, 0–7 for
/// RSV1–3), opcode, MASK, the length in `form`, the key, the payload masked byte by byte.
private func frame(_ opcode: UInt8, _ payload: [UInt8] = [], fin: Bool = true, rsv: UInt8 = 0,
                   masked: Bool = true, key: UInt32 = rfcKey, form: LengthForm = .shortest) -> [UInt8] {
    var out: [UInt8] = [(fin ? 0x80 : 0) | (rsv << 4) | opcode]
    let n = payload.count
    let m: UInt8 = masked ? 0x80 : 0
    var f = form
    if f == .shortest { f = n <= 125 ? .short7 : n <= 0xFFFF ? .medium16 : .long64 }
    switch f {
    case .short7: out.append(m | UInt8(n))
    case .medium16: out += [m | 126, UInt8(n >> 8), UInt8(n & 0xFF)]
    case .long64: out += [m | 127] + (0..<8).map { UInt8(truncatingIfNeeded: UInt64(n) >> (56 - 8 * UInt64($0))) }
    case .shortest: break
    }
    let k: [UInt8] = [UInt8(key >> 24), UInt8((key >> 16) & 0xFF), UInt8((key >> 8) & 0xFF), UInt8(key & 0xFF)]
    if masked { out += k }
    for (j, b) in payload.enumerated() { out.append(masked ? b ^ k[j % 4] : b) }
    return out
}

private func text(_ s: String, fin: Bool = true, key: UInt32 = rfcKey) -> [UInt8] { frame(1, bytes(s), fin: fin, key: key) }
private func binary(_ b: [UInt8], fin: Bool = true) -> [UInt8] { frame(2, b, fin: fin) }
private func cont(_ b: [UInt8], fin: Bool = true) -> [UInt8] { frame(0, b, fin: fin) }
private func ping(_ b: [UInt8] = []) -> [UInt8] { frame(9, b) }
private func pong(_ b: [UInt8] = []) -> [UInt8] { frame(10, b) }
private func close(_ code: UInt16? = nil, _ reason: [UInt8] = []) -> [UInt8] {
    frame(8, code.map { [UInt8($0 >> 8), UInt8($0 & 0xFF)] + reason } ?? reason)
}

/// What a parse gave: the events in order and the failure that ended it, if any.
private struct Outcome: Equatable, CustomStringConvertible {
    var events: [Event] = []
    var failure: Failure?
    /// The index of the chunk whose feed answered the failure first.
    var failedAt: Int?
    var description: String { "events \(events), failure \(failure.map { "\($0)" } ?? "none")" }
}

/// Slack for malloc's rounding of the parser's two blocks (16-byte granules below the mmap
/// threshold; the tests keep their maxima far below it).
private let mallocSlack = 64

/// Feeds `chunks` one feed each; checks after every feed that the parser holds no more than
/// its bound, and that a failure, once answered, is answered again.
private func parse(_ chunks: [[UInt8]], max: Int = 1 << 16, file: StaticString = #filePath, line: UInt = #line) -> Outcome {
    var parser = WebSocketFrameParser(maxMessageSize: max)
    var out = Outcome()
    for (k, chunk) in chunks.enumerated() {
        let f = chunk.withUnsafeBytes { parser.feed($0) { out.events.append($0) } }
        if let first = out.failure {
            XCTAssertEqual(f, first, "a failure is answered again", file: file, line: line)
        } else if let f {
            out.failure = f
            out.failedAt = k
            XCTAssertEqual(parser.failure, f, file: file, line: line)
            XCTAssertEqual(parser.bufferedBytes, 0, "a failed parser holds nothing", file: file, line: line)
        }
        XCTAssertLessThanOrEqual(parser.bufferedBytes, max > Int.max / 2 ? Int.max : max + WebSocket.maxControlPayload + mallocSlack,
                                 "the bound", file: file, line: line)
    }
    return out
}

private func parse(_ stream: [UInt8], max: Int = 1 << 16, file: StaticString = #filePath, line: UInt = #line) -> Outcome {
    parse([stream], max: max, file: file, line: line)
}

/// A server frame read back by hand: FIN, opcode, payload; nil when malformed or masked.
private func readServerFrames(_ b: [UInt8]) -> [(fin: Bool, opcode: UInt8, payload: [UInt8])]? {
    var out: [(fin: Bool, opcode: UInt8, payload: [UInt8])] = []
    var i = 0
    while i < b.count {
        guard i + 2 <= b.count, b[i] & 0x70 == 0, b[i + 1] & 0x80 == 0 else { return nil }
        let fin = b[i] & 0x80 != 0, op = b[i] & 0x0F
        var n = Int(b[i + 1] & 0x7F)
        i += 2
        if n == 126 {
            guard i + 2 <= b.count else { return nil }
            n = Int(b[i]) << 8 | Int(b[i + 1])
            guard n > 125 else { return nil }   // shortest form
            i += 2
        } else if n == 127 {
            guard i + 8 <= b.count else { return nil }
            n = b[i..<(i + 8)].reduce(0) { $0 << 8 | Int($1) }
            guard n > 0xFFFF else { return nil }
            i += 8
        }
        guard i + n <= b.count else { return nil }
        out.append((fin, op, Array(b[i..<(i + n)])))
        i += n
    }
    return out
}

/// RFC 6455, section by section: the handshake (§4.2), framing (§5.2), masking (§5.3),
/// fragmentation (§5.4), control frames (§5.5), data frames and UTF-8 (§5.6), close codes
/// (§7.4) and limits (§10.4); streams cut at every byte and at random; the encoder.
final class WebSocketTests: XCTestCase {
    // MARK: - §4.2 Opening handshake

    let ours = ["binary", "gmcp.mudstandards.org", "terminal.mudstandards.org"]

    /// A browser's request (Firefox's header values), changed by `change`.
    private func request(_ change: (inout Handshake.Request) -> Void = { _ in }) -> Handshake.Request {
        var r = Handshake.Request(upgrade: bytes("websocket"), connection: bytes("keep-alive, Upgrade"),
                                  version: bytes("13"), key: bytes("dGhlIHNhbXBsZSBub25jZQ=="),
                                  protocols: nil, extensions: bytes("permessage-deflate"))
        change(&r)
        return r
    }

    private func evaluate(_ change: (inout Handshake.Request) -> Void = { _ in }) -> Handshake.Outcome {
        Handshake.evaluate(request(change), subprotocols: ours)
    }

    func testAcceptValueIsRFC6455sExample() {
        // §1.3 and §4.2.2: the key "dGhlIHNhbXBsZSBub25jZQ==" gives "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".
        XCTAssertEqual(Handshake.acceptValue(key: bytes("dGhlIHNhbXBsZSBub25jZQ==")), bytes("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
        XCTAssertEqual(evaluate(), .accept(accept: bytes("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), subprotocol: nil))
        // Other keys (values from other implementations' tests): always 28 bytes.
        XCTAssertEqual(Handshake.acceptValue(key: bytes("x3JJHMbDL1EzLkh9GBhXDw==")), bytes("HSmrc0sMlYUkAGmm5OPpG2HaGWk="))
        XCTAssertEqual(Handshake.acceptValue(key: bytes("AAAAAAAAAAAAAAAAAAAAAA==")).count, 28)
    }

    func testTheResponseHead() {
        let head = Handshake.responseHead(accept: bytes("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), subprotocol: nil)
        XCTAssertEqual(String(decoding: head, as: UTF8.self),
                       "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
        var out = bytes("before")
        Handshake.appendResponseHead(accept: bytes("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), subprotocol: "binary",
                                     extraHeaders: [("X-Session-Id", "abc"), ("Cache-Control", "no-store")], to: &out)
        XCTAssertEqual(String(decoding: out, as: UTF8.self),
                       "beforeHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: binary\r\n"
                       + "X-Session-Id: abc\r\nCache-Control: no-store\r\n\r\n")
    }

    func testUpgradeAndConnectionAreListsIgnoringCase() {
        for upgrade in ["websocket", "WebSocket", "WEBSOCKET", " websocket ", "h2c, websocket", "websocket,"] {
            XCTAssertEqual(evaluate { $0.upgrade = bytes(upgrade) }.status, 101, upgrade)
        }
        for connection in ["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade, keep-alive", "\tkeep-alive ,UPGRADE\t"] {
            XCTAssertEqual(evaluate { $0.connection = bytes(connection) }.status, 101, connection)
        }
        XCTAssertEqual(evaluate { $0.upgrade = nil }, .badRequest("no Upgrade: websocket"))
        for upgrade in ["", "h2c", "websockets", "web socket", "websocket/13"] {
            XCTAssertEqual(evaluate { $0.upgrade = bytes(upgrade) }, .badRequest("no Upgrade: websocket"), upgrade)
        }
        XCTAssertEqual(evaluate { $0.connection = nil }, .badRequest("no Connection: Upgrade"))
        for connection in ["", "keep-alive", "close", "upgraded", "Upgrade-Insecure"] {
            XCTAssertEqual(evaluate { $0.connection = bytes(connection) }, .badRequest("no Connection: Upgrade"), connection)
        }
    }

    func testVersionOtherThan13IsUpgradeRequired() {
        XCTAssertEqual(evaluate { $0.version = bytes(" 13 ") }.status, 101)
        for version in ["8", "7", "12", "14", "013", "13, 8", "8, 13", "13,13", "thirteen"] {
            let outcome = evaluate { $0.version = bytes(version) }
            XCTAssertEqual(outcome, .upgradeRequired, version)
            XCTAssertEqual(outcome.status, 426)
        }
        XCTAssertEqual(Handshake.versionHeader.name, "Sec-WebSocket-Version")
        XCTAssertEqual(Handshake.versionHeader.value, "13")
        // Missing (or empty) is not another version: it is not a WebSocket request at all.
        XCTAssertEqual(evaluate { $0.version = nil }, .badRequest("no Sec-WebSocket-Version"))
        XCTAssertEqual(evaluate { $0.version = bytes("  ") }, .badRequest("no Sec-WebSocket-Version"))
        // A version of another kind is told first, whatever else is wrong after it.
        XCTAssertEqual(evaluate { $0.version = bytes("8"); $0.key = nil }, .upgradeRequired)
    }

    func testTheKeyMustBeBase64Of16Bytes() {
        for key in ["dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA==", "+/+/+/+/+/+/+/+/+/+/+/==",
                    " dGhlIHNhbXBsZSBub25jZQ==\t", "dGhlIHNhbXBsZSBub25jZR=="] {   // unused bits not checked
            XCTAssertEqual(evaluate { $0.key = bytes(key) }.status, 101, key)
        }
        // The accept value hashes the key as sent, without the spaces around it.
        XCTAssertEqual(evaluate { $0.key = bytes("  dGhlIHNhbXBsZSBub25jZQ==") },
                       .accept(accept: bytes("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), subprotocol: nil))
        XCTAssertEqual(evaluate { $0.key = nil }, .badRequest("no Sec-WebSocket-Key"))
        for key in ["", "dGhlIHNhbXBsZSBub25jZQ=", "dGhlIHNhbXBsZSBub25jZQ===", "dGhlIHNhbXBsZSBub25jZQ",
                    "dGhlIHNhbXBsZSBub25jZQ..", "dGhlIHNhbXBsZSBub25jZ===", "dGhlIHNhbXBsZSBub25jZ-==",
                    "dGhlIHNhbXBsZSBub25jZ_==", "dGhlIHNhbXBs ZSBub25jZQ=", "dGhlIHNhbXBsZSBub25jZSBv",
                    "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ==\0"] {
            XCTAssertEqual(evaluate { $0.key = bytes(key) }, .badRequest("bad Sec-WebSocket-Key"), key)
        }
    }

    func testSubprotocolIsOurFirstChoiceAmongThoseOffered() {
        func chosen(_ offered: String?) -> String?? {
            guard case .accept(_, let p) = evaluate({ $0.protocols = offered.map(bytes) }) else { return .none }
            return .some(p)
        }
        XCTAssertEqual(chosen(nil), .some(nil), "none offered: none")
        XCTAssertEqual(chosen(""), .some(nil), "an empty list: none")
        XCTAssertEqual(chosen("binary"), "binary")
        XCTAssertEqual(chosen("terminal.mudstandards.org"), "terminal.mudstandards.org")
        XCTAssertEqual(chosen("gmcp.mudstandards.org"), "gmcp.mudstandards.org")
        // Our order, not the client's.
        XCTAssertEqual(chosen("terminal.mudstandards.org, gmcp.mudstandards.org, binary"), "binary")
        XCTAssertEqual(chosen("terminal.mudstandards.org,gmcp.mudstandards.org"), "gmcp.mudstandards.org")
        XCTAssertEqual(chosen("chat, , terminal.mudstandards.org,"), "terminal.mudstandards.org")
        // Offered, but none that we speak: none, and nothing echoed.
        XCTAssertEqual(chosen("chat"), .some(nil))
        XCTAssertEqual(chosen("chat, superchat"), .some(nil))
        // Byte for byte: names are compared as sent.
        XCTAssertEqual(chosen("Binary, BINARY, binary2, binar"), .some(nil))
        // The caller's order decides.
        guard case .accept(_, let p) = Handshake.evaluate(request { $0.protocols = bytes("binary, gmcp.mudstandards.org") },
                                                          subprotocols: ["gmcp.mudstandards.org", "binary"]) else {
            return XCTFail("refused")
        }
        XCTAssertEqual(p, "gmcp.mudstandards.org")
        XCTAssertEqual(Handshake.evaluate(request { $0.protocols = bytes("binary") }, subprotocols: []),
                       .accept(accept: bytes("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), subprotocol: nil))
        // A list with an element that is not a token is refused, not guessed at.
        for offered in ["binary chat", "\"binary\"", "binary;q=1", "bin/ary", "binary, (x)"] {
            XCTAssertEqual(evaluate { $0.protocols = bytes(offered) }, .badRequest("bad Sec-WebSocket-Protocol"), offered)
        }
    }

    func testExtensionsAreNeverAccepted() {
        for offered in ["permessage-deflate; client_max_window_bits", "permessage-deflate", "x-webkit-deflate-frame", "", "garbage;;;"] {
            let outcome = evaluate { $0.extensions = bytes(offered); $0.protocols = bytes("binary") }
            XCTAssertEqual(outcome, .accept(accept: bytes("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), subprotocol: "binary"), offered)
            guard case .accept(let accept, let p) = outcome else { continue }
            let head = String(decoding: Handshake.responseHead(accept: accept, subprotocol: p), as: UTF8.self)
            XCTAssertFalse(head.lowercased().contains("extensions"), "declined by not answering: \(head)")
        }
    }

    func testChecksComeInOrder() {
        XCTAssertEqual(evaluate { $0.upgrade = nil; $0.connection = nil; $0.key = nil }, .badRequest("no Upgrade: websocket"))
        XCTAssertEqual(evaluate { $0.connection = nil; $0.key = nil }, .badRequest("no Connection: Upgrade"))
        XCTAssertEqual(evaluate { $0.key = bytes("x"); $0.protocols = bytes("a b") }, .badRequest("bad Sec-WebSocket-Key"))
        XCTAssertEqual(Handshake.Outcome.badRequest("x").status, 400)
    }

    // MARK: - §5.2 Base framing

    func testRFCExamplesParse() {
        // §5.7: a single-frame masked text message.
        let hello: [UInt8] = [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
        XCTAssertEqual(hello, text("Hello"))
        XCTAssertEqual(parse(hello).events, [.text(bytes("Hello"))])
        // §5.7: a masked pong carrying "Hello".
        XCTAssertEqual(parse([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]).events, [.pong(bytes("Hello"))])
    }

    func testEveryLengthFormParses() {
        for n in [0, 1, 7, 8, 9, 125, 126, 127, 200, 65535, 65536, 70000] {
            let payload = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            XCTAssertEqual(parse(binary(payload), max: 1 << 17), Outcome(events: [.binary(payload)]), "length \(n)")
        }
        // Longer forms than needed are read (§5.2 asks senders for the shortest; reading is unambiguous).
        for form in [LengthForm.medium16, .long64] {
            XCTAssertEqual(parse(frame(1, bytes("hi"), form: form)).events, [.text(bytes("hi"))], "\(form)")
        }
    }

    func testReservedBitsFail1002() {
        for rsv: UInt8 in 1...7 {
            for op: UInt8 in [0, 1, 2, 8, 9, 10] {
                let stream = op == 0 ? text("a", fin: false) + frame(op, [], rsv: rsv) : frame(op, [], rsv: rsv)
                let out = parse(stream)
                XCTAssertEqual(out.failure, .reservedBits, "rsv \(rsv) opcode \(op)")
                XCTAssertEqual(out.failure?.code, 1002)
            }
        }
        // Judged at the first byte: nothing after it is needed.
        XCTAssertEqual(parse([[0xC1]]).failure, .reservedBits)
    }

    func testReservedOpcodesFail1002() {
        for op: UInt8 in [3, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
            XCTAssertEqual(parse([[0x80 | op]]).failure, .reservedOpcode(op), "opcode \(op), at its first byte")
            XCTAssertEqual(parse(frame(op, bytes("x"))).failure?.code, 1002)
            // Inside a fragmented message too.
            XCTAssertEqual(parse(text("a", fin: false) + frame(op, [], fin: false)).failure, .reservedOpcode(op))
        }
    }

    func testA64BitLengthWithItsTopBitSetFails1002() {
        let header: [UInt8] = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1]
        let out = parse([Array(header[..<3]), Array(header[3...])], max: Int.max)
        XCTAssertEqual(out.failure, .lengthTopBit)
        XCTAssertEqual(out.failedAt, 0, "at its first length byte")
        XCTAssertEqual(parse([0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], max: Int.max).failure, .lengthTopBit)
        // 2^63 - 1 is a valid length (and far too big).
        XCTAssertEqual(parse([0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], max: 1 << 40).failure, .messageTooBig)
    }

    func testAFailureIsStickyAndDeliversWhatCameBefore() {
        let out = parse([text("one") + text("two") + frame(1, bytes("x"), masked: false) + text("three"), text("four")])
        XCTAssertEqual(out.events, [.text(bytes("one")), .text(bytes("two"))])
        XCTAssertEqual(out.failure, .unmasked)
        var parser = WebSocketFrameParser(maxMessageSize: 100)
        var events: [Event] = []
        XCTAssertEqual(([0x81, 0x05] as [UInt8]).withUnsafeBytes { parser.feed($0) { events.append($0) } }, .unmasked)
        XCTAssertEqual(text("x").withUnsafeBytes { parser.feed($0) { events.append($0) } }, .unmasked)
        XCTAssertEqual([UInt8]().withUnsafeBytes { parser.feed($0) { events.append($0) } }, .unmasked, "an empty feed too")
        XCTAssertEqual(events, [])
        XCTAssertEqual(parser.failure, .unmasked)
    }

    func testEmptyFeedsChangeNothing() {
        XCTAssertEqual(parse([[], text("ab"), [], [], ping(), []]).events, [.text(bytes("ab")), .ping([])])
        XCTAssertEqual(parse([[UInt8]]()).failure, nil)
    }

    // MARK: - §5.3 Client-to-server masking

    func testAnUnmaskedClientFrameFails1002() {
        for op: UInt8 in [1, 2, 8, 9, 10] {
            let out = parse([[0x80 | op, 0x00]])
            XCTAssertEqual(out.failure, .unmasked, "opcode \(op), at its second byte")
            XCTAssertEqual(out.failure?.code, 1002)
        }
        XCTAssertEqual(parse(text("a", fin: false) + frame(0, bytes("b"), masked: false)).failure, .unmasked)
        // §5.7's unmasked examples are server frames: a server refuses them from a client.
        XCTAssertEqual(parse([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F]).failure, .unmasked)
    }

    func testUnmaskingAgreesWithTheRFCsFormulaForEveryLengthKeyAndCut() {
        var rng = SplitMix64(seed: 0x5E_C53)
        for n in 0...41 {
            let payload = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            for key in [0, rfcKey, 0xFFFF_FFFF, UInt32.random(in: 0...UInt32.max, using: &rng)] {
                let f = frame(2, payload, key: key)
                XCTAssertEqual(parse(f).events, [.binary(payload)], "length \(n) key \(key)")
                // Cut inside the payload at every point: the key's phase carries over.
                for cut in 0...f.count {
                    XCTAssertEqual(parse([Array(f[..<cut]), Array(f[cut...])]).events, [.binary(payload)], "length \(n) key \(key) cut \(cut)")
                }
            }
        }
    }

    func testTheMaskFunctionAtEveryPhase() {
        var rng = SplitMix64(seed: 0x3A5C)
        for n in 0...33 {
            for phase in 0..<4 {
                let key = UInt32.random(in: 0...UInt32.max, using: &rng)
                let original = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
                let k: [UInt8] = [UInt8(key >> 24), UInt8((key >> 16) & 0xFF), UInt8((key >> 8) & 0xFF), UInt8(key & 0xFF)]
                var b = original
                b.withUnsafeMutableBytes { webSocketMask($0, key: key, phase: phase) }
                XCTAssertEqual(b, original.enumerated().map { $0.element ^ k[($0.offset + phase) % 4] }, "n \(n) phase \(phase)")
                b.withUnsafeMutableBytes { webSocketMask($0, key: key, phase: phase) }
                XCTAssertEqual(b, original, "masking twice gives the bytes back")
            }
        }
    }

    // MARK: - §5.4 Fragmentation

    func testFragmentedMessagesAreDeliveredWhole() {
        // §5.7's fragmented text message, masked.
        XCTAssertEqual(parse(text("Hel", fin: false) + cont(bytes("lo"))).events, [.text(bytes("Hello"))])
        XCTAssertEqual(parse(binary([1, 2], fin: false) + cont([3], fin: false) + cont([]) + binary([4])).events,
                       [.binary([1, 2, 3]), .binary([4])])
        // Empty fragments, an empty message.
        XCTAssertEqual(parse(frame(1, [], fin: false) + cont([], fin: false) + cont([])).events, [.text([])])
        XCTAssertEqual(parse(binary([])).events, [.binary([])])
        // Many fragments.
        let many = (0..<50).map { cont([UInt8($0)], fin: false) }.reduce(binary([], fin: false), +) + cont([])
        XCTAssertEqual(parse(many).events, [.binary((0..<50).map(UInt8.init))])
    }

    func testControlFramesMayComeBetweenFragments() {
        let stream = text("a", fin: false) + ping(bytes("p")) + cont(bytes("b"), fin: false) + pong() + ping() + cont(bytes("c"))
        XCTAssertEqual(parse(stream).events, [.ping(bytes("p")), .pong([]), .ping([]), .text(bytes("abc"))])
        let closing = binary([1], fin: false) + close(1000) + cont([2])
        let out = parse(closing)
        XCTAssertEqual(out.events, [.close(code: 1000, reason: [])], "the message cut short by a close is dropped")
        XCTAssertNil(out.failure)
    }

    func testContinuationOutsideAMessageFails1002() {
        XCTAssertEqual(parse(cont(bytes("x"))).failure, .unexpectedContinuation)
        XCTAssertEqual(parse(text("whole") + cont(bytes("x"))).failure, .unexpectedContinuation)
        XCTAssertEqual(parse(text("a", fin: false) + cont(bytes("b")) + cont(bytes("c"), fin: false)).failure, .unexpectedContinuation)
        XCTAssertEqual(parse([[0x00]]).failure?.code, 1002, "at its first byte")
    }

    func testANewMessageInsideAFragmentedOneFails1002() {
        XCTAssertEqual(parse(text("a", fin: false) + text("b")).failure, .expectedContinuation)
        XCTAssertEqual(parse(text("a", fin: false) + binary([1], fin: false)).failure, .expectedContinuation)
        XCTAssertEqual(parse(binary([1], fin: false) + ping() + [0x82]).failure, .expectedContinuation)
        XCTAssertEqual(parse(text("a", fin: false) + ping() + text("b")).events, [.ping([])])
    }

    // MARK: - §5.5 Control frames

    func testPingPongAndTheirPayloads() {
        let p125 = (0..<125).map { UInt8($0) }
        XCTAssertEqual(parse(ping(p125) + pong(p125) + ping() + pong(bytes("x"))).events,
                       [.ping(p125), .pong(p125), .ping([]), .pong(bytes("x"))])
    }

    func testAControlFrameOver125BytesFails1002() {
        for op: UInt8 in [8, 9, 10] {
            for n in [126, 127, 200, 65536] {
                XCTAssertEqual(parse(frame(op, [UInt8](repeating: 0x41, count: n))).failure, .controlTooLong, "opcode \(op) length \(n)")
            }
            // At the length byte, before any extended length or payload.
            XCTAssertEqual(parse([[0x80 | op, 0x80 | 126]]).failure, .controlTooLong)
            XCTAssertEqual(parse([[0x80 | op, 0x80 | 127]]).failure, .controlTooLong)
            // A longer length form for a short payload is the same length.
            XCTAssertEqual(parse(frame(op, [], form: .medium16)).failure, .controlTooLong)
        }
    }

    func testAFragmentedControlFrameFails1002() {
        for op: UInt8 in [8, 9, 10] {
            XCTAssertEqual(parse(frame(op, bytes("x"), fin: false)).failure, .fragmentedControl, "opcode \(op)")
            XCTAssertEqual(parse([[op]]).failure?.code, 1002, "at its first byte")
        }
    }

    func testCloseFrames() {
        XCTAssertEqual(parse(close()).events, [.close(code: nil, reason: [])])
        XCTAssertEqual(parse(close(1000)).events, [.close(code: 1000, reason: [])])
        XCTAssertEqual(parse(close(1001, bytes("going ✓"))).events, [.close(code: 1001, reason: bytes("going ✓"))])
        let longest = [UInt8](repeating: 0x61, count: 123)
        XCTAssertEqual(parse(close(4999, longest)).events, [.close(code: 4999, reason: longest)])
        XCTAssertEqual(parse(frame(8, [0x03])).failure, .closePayloadOneByte)
        XCTAssertEqual(parse(frame(8, [0x03])).failure?.code, 1002)
    }

    func testNothingIsReadAfterAClose() {
        var parser = WebSocketFrameParser(maxMessageSize: 100)
        var events: [Event] = []
        let stream = text("a") + close(1000) + text("after") + [0xFF, 0xFF, 0x00]
        XCTAssertNil(stream.withUnsafeBytes { parser.feed($0) { events.append($0) } })
        XCTAssertEqual(events, [.text(bytes("a")), .close(code: 1000, reason: [])])
        XCTAssertTrue(parser.closeReceived)
        XCTAssertNil(binary([1]).withUnsafeBytes { parser.feed($0) { events.append($0) } })
        XCTAssertEqual(events.count, 2)
        XCTAssertEqual(parser.bufferedBytes, 0)
        XCTAssertNil(parser.failure)
    }

    // MARK: - §5.6 Data frames: text is UTF-8

    func testTextMustBeUTF8() {
        XCTAssertEqual(parse(text("naïve café ✓ 😀 €")).events, [.text(bytes("naïve café ✓ 😀 €"))])
        let invalid: [[UInt8]] = [
            [0x80], [0xBF], [0xC0, 0x80], [0xC1, 0xBF], [0xF5, 0x80, 0x80, 0x80], [0xFF], [0xFE],
            [0xE0, 0x9F, 0xBF], [0xED, 0xA0, 0x80], [0xED, 0xBF, 0xBF], [0xF0, 0x8F, 0xBF, 0xBF], [0xF4, 0x90, 0x80, 0x80],
            [0xC2, 0x41], [0xE2, 0x82, 0x41], [0xF0, 0x9F, 0x98, 0x41], [0x61, 0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80, 0x65, 0x64, 0x69, 0x74, 0x65, 0x64],
            [0xC2], [0xE2, 0x82], [0xF0, 0x9F, 0x98],   // cut at the message's end
        ]
        for b in invalid {
            let out = parse(frame(1, b))
            XCTAssertEqual(out.failure, .invalidUTF8, "\(b)")
            XCTAssertEqual(out.failure?.code, 1007)
            XCTAssertEqual(out.events, [])
        }
        // Binary messages are not text: any bytes.
        XCTAssertEqual(parse(binary([0xC0, 0x80, 0xFF])).events, [.binary([0xC0, 0x80, 0xFF])])
        // Edges of the valid ranges.
        for b: [UInt8] in [[0x7F], [0xC2, 0x80], [0xDF, 0xBF], [0xE0, 0xA0, 0x80], [0xED, 0x9F, 0xBF], [0xEE, 0x80, 0x80],
                           [0xEF, 0xBF, 0xBF], [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF], [0x00]] {
            XCTAssertEqual(parse(frame(1, b)).events, [.text(b)], "\(b)")
        }
    }

    func testACharacterMayBeCutAtAFragmentBoundary() {
        let emoji: [UInt8] = [0xF0, 0x9F, 0x98, 0x80]
        for cut in 0...4 {
            let stream = frame(1, Array(emoji[..<cut]), fin: false) + ping() + cont(Array(emoji[cut...]))
            XCTAssertEqual(parse(stream).events, [.ping([]), .text(emoji)], "cut \(cut)")
            // Cut, and the message ends there: invalid.
            XCTAssertEqual(parse(frame(1, Array(emoji[..<cut]), fin: false) + cont([])).failure, cut == 0 || cut == 4 ? nil : .invalidUTF8, "cut \(cut), then the end")
        }
        // One byte per fragment.
        let s = bytes("ä€😀")
        let oneByEach = s.enumerated().map { frame($0.offset == 0 ? 1 : 0, [$0.element], fin: $0.offset == s.count - 1) }.reduce([], +)
        XCTAssertEqual(parse(oneByEach).events, [.text(s)])
    }

    func testInvalidTextFailsAtTheFirstByteThatMakesItCertain() {
        // A frame announcing 1,000 bytes: the failure comes with the bad byte, not at the frame's end.
        let header: [UInt8] = [0x81, 0x80 | 126, 0x03, 0xE8, 0, 0, 0, 0]   // key 0: the payload as it is
        for (good, bad) in [(bytes("hello "), [UInt8(0xC0)]), (bytes("x"), [0xED, 0xA0]), ([0xF4], [0x90]), (bytes("abcdefghij"), [0xFF])] {
            let out = parse([header + good, bad, [UInt8](repeating: 0x61, count: 100)])
            XCTAssertEqual(out.failure, .invalidUTF8, "\(good) \(bad)")
            XCTAssertEqual(out.failedAt, 1, "\(good) \(bad)")
        }
        // Across fragments: the first fragment ends mid-character; the next byte decides.
        let out = parse([frame(1, [0xE2, 0x82], fin: false), [0x80, 0x80 | 10, 0, 0, 0, 0, 0x41]])
        XCTAssertEqual(out.failure, .invalidUTF8)
        XCTAssertEqual(out.failedAt, 1)
    }

    func testTheValidatorAgreesWithTheStandardLibrary() {
        var rng = SplitMix64(seed: 0x07F8)
        let pieces: [[UInt8]] = [[0x41], [0x7F], [0xC3, 0xA9], [0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98, 0x80], [0x80], [0xC0],
                                 [0xED, 0xA0], [0xF4, 0x90], [0xE0, 0x80], [0xFF], [0xC3], [0xE2, 0x82], [0xF0, 0x9F]]
        for round in 0..<3000 {
            let n = Int(rng.next() % 12)
            let b = (0..<n).flatMap { _ in round % 3 == 0 ? [UInt8.random(in: 0...255, using: &rng)] : pieces[Int(rng.next() % UInt64(pieces.count))] }
            let expected = String(validating: b, as: UTF8.self) != nil
            XCTAssertEqual(UTF8Validator.isValid(b), expected, "\(b)")
            // Piece by piece: a `false` only once the text is certainly invalid.
            var v = UTF8Validator()
            var ok = true
            for k in 0..<b.count where ok {
                ok = [b[k]].withUnsafeBytes { v.validate($0) }
                if !ok {
                    // No continuation of the prefix is valid.
                    XCTAssertNil(String(validating: Array(b[...k]) + [0x80, 0x80, 0x80], as: UTF8.self), "\(b) at \(k)")
                    XCTAssertNil(String(validating: Array(b[...k]), as: UTF8.self), "\(b) at \(k)")
                }
            }
            XCTAssertEqual(ok && v.isComplete, expected, "\(b) byte by byte")
        }
    }

    func testAsciiFastPathAtEveryAlignment() {
        for offset in 0..<9 {
            for bad in 0..<20 {
                var b = [UInt8](repeating: 0x61, count: offset + 20)
                XCTAssertTrue(UTF8Validator.isValid(b))
                b[offset + bad] = 0x80
                XCTAssertFalse(UTF8Validator.isValid(Array(b)), "offset \(offset) bad \(bad)")
                let slice = Array(b[offset...])
                XCTAssertFalse(UTF8Validator.isValid(slice))
            }
        }
    }

    // MARK: - §7.4 Status codes

    func testCloseCodesAllowedOnTheWire() {
        for code: UInt16 in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
            XCTAssertEqual(parse(close(code, bytes("r"))).events, [.close(code: code, reason: bytes("r"))], "\(code)")
            XCTAssertTrue(WebSocket.isValidReceivedCloseCode(code))
        }
        for code: UInt16 in [0, 1, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            let out = parse(close(code))
            XCTAssertEqual(out.failure, .invalidCloseCode(code), "\(code)")
            XCTAssertEqual(out.failure?.code, 1002)
            XCTAssertEqual(out.events, [])
        }
    }

    func testACloseReasonMustBeUTF8() {
        for reason: [UInt8] in [[0xFF], [0xC0, 0x80], [0xE2, 0x82], [0x61, 0xED, 0xA0, 0x80]] {
            let out = parse(close(1000, reason))
            XCTAssertEqual(out.failure, .invalidCloseReason, "\(reason)")
            XCTAssertEqual(out.failure?.code, 1007)
        }
    }

    func testFailureCodesAndReasons() {
        let all: [Failure] = [.unmasked, .reservedBits, .reservedOpcode(3), .fragmentedControl, .controlTooLong,
                              .unexpectedContinuation, .expectedContinuation, .lengthTopBit, .messageTooBig,
                              .invalidUTF8, .closePayloadOneByte, .invalidCloseCode(5000), .invalidCloseReason]
        XCTAssertEqual(all.map(\.code), [1002, 1002, 1002, 1002, 1002, 1002, 1002, 1002, 1009, 1007, 1002, 1002, 1007])
        for f in all {
            let reason = f.description.utf8
            XCTAssertTrue(reason.count > 0 && reason.count <= WebSocket.maxCloseReason && reason.allSatisfy { $0 < 0x80 }, "\(f)")
        }
    }

    // MARK: - §10.4 Limits

    func testAMessageOverTheMaximumFails1009AtItsLength() {
        XCTAssertEqual(parse(binary([UInt8](repeating: 1, count: 100)), max: 100).events, [.binary([UInt8](repeating: 1, count: 100))])
        XCTAssertEqual(parse(text(String(repeating: "a", count: 101)), max: 100).failure, .messageTooBig)
        XCTAssertEqual(parse(text(String(repeating: "a", count: 101)), max: 100).failure?.code, 1009)
        // At the length field: the header alone, without a byte of payload.
        for header: [UInt8] in [[0x82, 0x80 | 101], [0x82, 0x80 | 126, 0x01, 0x00], [0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0x01, 0x00],
                                [0x82, 0x80 | 127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]] {
            let out = parse([header, [0, 0]], max: 100)
            XCTAssertEqual(out.failure, .messageTooBig, "\(header)")
            XCTAssertEqual(out.failedAt, 0, "before the key and the payload: \(header)")
        }
        // All fragments together: the fragment that would take it over fails at its length.
        let fragments = binary([UInt8](repeating: 1, count: 60), fin: false) + ping() + [0x80, 0x80 | 41]
        let out = parse(fragments, max: 100)
        XCTAssertEqual(out.events, [.ping([])])
        XCTAssertEqual(out.failure, .messageTooBig)
        XCTAssertEqual(parse(binary([UInt8](repeating: 1, count: 60), fin: false) + cont([UInt8](repeating: 2, count: 40)), max: 100).events,
                       [.binary([UInt8](repeating: 1, count: 60) + [UInt8](repeating: 2, count: 40))])
        // Control frames do not count against it; the maximum 0 allows empty messages only.
        XCTAssertEqual(parse(text("", fin: false) + ping(bytes("ping")) + cont([]) + close(1000, bytes("bye")), max: 0).events,
                       [.ping(bytes("ping")), .text([]), .close(code: 1000, reason: bytes("bye"))])
        XCTAssertEqual(parse(text("a"), max: 0).failure, .messageTooBig)
    }

    func testStorageFollowsTheBytesReceivedNotTheLengthAnnounced() {
        let max = 1 << 20
        var parser = WebSocketFrameParser(maxMessageSize: max)
        var events: [Event] = []
        // A 1 MiB frame announced, 10 bytes sent.
        let header: [UInt8] = [0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4]
        XCTAssertNil((header + [UInt8](repeating: 7, count: 10)).withUnsafeBytes { parser.feed($0) { events.append($0) } })
        XCTAssertLessThanOrEqual(parser.bufferedBytes, 10 + mallocSlack)
        XCTAssertTrue(parser.isInsideMessage)
        // Byte by byte, the storage stays within twice what came (doubling) and within the maximum.
        var received = 10
        for _ in 0..<5000 {
            XCTAssertNil(([0x55] as [UInt8]).withUnsafeBytes { parser.feed($0) { events.append($0) } })
            received += 1
            XCTAssertLessThanOrEqual(parser.bufferedBytes, 2 * received + mallocSlack)
        }
        XCTAssertEqual(events, [])
    }

    /// A connection keeps its parser only while something is under way (`isBetweenMessages`
    /// false) and starts a new one otherwise: at every cut, that reads the same events as one
    /// parser kept throughout.
    func testANewParserBetweenMessagesReadsOnAsTheOldOne() {
        let stream = text("hello", fin: false) + ping(bytes("p")) + cont(bytes(" world")) + binary([1, 2, 3])
            + text("é") + ping([]) + text("x", fin: false) + cont([], fin: false) + cont(bytes("y")) + close(1000, bytes("bye"))
        var whole = WebSocketFrameParser(maxMessageSize: 1000)
        var expected: [Event] = []
        XCTAssertNil(stream.withUnsafeBytes { whole.feed($0) { expected.append($0) } })
        XCTAssertEqual(expected.count, 7)
        for cut in 0...stream.count {
            for second in cut...stream.count where second == cut || second == stream.count || (second - cut) % 3 == 0 {
                var kept: WebSocketFrameParser?
                var events: [Event] = []
                for piece in [stream[..<cut], stream[cut..<second], stream[second...]] {
                    var parser = kept ?? WebSocketFrameParser(maxMessageSize: 1000)
                    XCTAssertNil(Array(piece).withUnsafeBytes { parser.feed($0) { events.append($0) } }, "cut \(cut)/\(second)")
                    kept = parser.isBetweenMessages ? nil : parser
                }
                XCTAssertEqual(events, expected, "cut \(cut)/\(second)")
            }
        }
        var parser = WebSocketFrameParser(maxMessageSize: 1000)
        XCTAssertTrue(parser.isBetweenMessages)
        let frame = text("abc")
        XCTAssertNil(Array(frame.prefix(1)).withUnsafeBytes { parser.feed($0) { _ in } })
        XCTAssertFalse(parser.isBetweenMessages, "inside a frame's header")
        XCTAssertNil(Array(frame.dropFirst().prefix(frame.count - 2)).withUnsafeBytes { parser.feed($0) { _ in } })
        XCTAssertFalse(parser.isBetweenMessages, "inside its payload")
        XCTAssertNil(Array(frame.suffix(1)).withUnsafeBytes { parser.feed($0) { _ in } })
        XCTAssertTrue(parser.isBetweenMessages)
        XCTAssertNil(text("a", fin: false).withUnsafeBytes { parser.feed($0) { _ in } })
        XCTAssertFalse(parser.isBetweenMessages, "inside a fragmented message")
    }

    func testNothingIsHeldBetweenMessages() {
        var parser = WebSocketFrameParser(maxMessageSize: 1000)
        var events: [Event] = []
        XCTAssertEqual(parser.bufferedBytes, 0)
        let stream = text("hello", fin: false) + ping(bytes("p"))
        XCTAssertNil(stream.withUnsafeBytes { parser.feed($0) { events.append($0) } })
        XCTAssertGreaterThan(parser.bufferedBytes, 0)
        XCTAssertTrue(parser.isInsideMessage)
        XCTAssertNil(cont(bytes(" world")).withUnsafeBytes { parser.feed($0) { events.append($0) } })
        XCTAssertEqual(parser.bufferedBytes, 0)
        XCTAssertFalse(parser.isInsideMessage)
        XCTAssertEqual(events, [.ping(bytes("p")), .text(bytes("hello world"))])
        // Part of a header is held inline, not on the heap.
        XCTAssertNil(([0x82, 0x80 | 127, 0, 0] as [UInt8]).withUnsafeBytes { parser.feed($0) { events.append($0) } })
        XCTAssertEqual(parser.bufferedBytes, 0)
    }

    func testTheBoundHoldsWhileAControlFrameInterruptsALargeMessage() {
        let max = 4000
        let big = [UInt8](repeating: 0x62, count: max)
        let stream = binary(Array(big[..<3999]), fin: false) + ping([UInt8](repeating: 1, count: 125)) + cont([0x62])
        var rng = SplitMix64(seed: 10_4)
        for _ in 0..<20 {
            var chunks: [[UInt8]] = []
            var i = 0
            while i < stream.count {
                let n = Int(rng.next() % 300) + 1
                chunks.append(Array(stream[i..<min(i + n, stream.count)]))
                i += n
            }
            XCTAssertEqual(parse(chunks, max: max).events, [.ping([UInt8](repeating: 1, count: 125)), .binary(big)])
        }
    }

    // MARK: - Every cut

    /// Streams that cover every kind of frame, each length form, fragments with control frames
    /// between them, UTF-8 cut across fragments, a close; and streams that fail part-way.
    static let streams: [(name: String, bytes: [UInt8], max: Int)] = {
        let k2: UInt32 = 0xA1B2_C3D4
        let medium = (0..<300).map { UInt8(truncatingIfNeeded: $0) }
        let mixed = text("Hel", fin: false) + ping(bytes("are you there?")) + cont(bytes("lo"))
            + binary(medium) + frame(1, bytes("naïve café "), fin: false, key: k2) + pong()
            + frame(0, [0xE2, 0x9C], fin: false, key: k2) + frame(0, [0x93, 0x20, 0xF0, 0x9F], fin: false, key: 0)
            + frame(0, [0x98, 0x80], key: 0xFFFF_FFFF) + frame(2, [], form: .long64) + frame(1, bytes("x"), form: .medium16)
            + close(1000, bytes("bye ✓")) + text("ignored")
        return [
            ("mixed", mixed, 1000),
            ("RFC hello", text("Hello"), 100),
            ("long64", frame(2, [UInt8](repeating: 0xAB, count: 70_000)) + text("after"), 1 << 17),
            ("invalid UTF-8 mid-frame", text("ok") + frame(1, bytes("good ") + [0xF4, 0x90] + bytes(" rest")), 100),
            ("too big in a fragment", text("ok") + text("0123456789", fin: false) + ping() + cont(bytes("abcdef")), 15),
            ("unmasked after a ping", ping(bytes("x")) + frame(2, [1, 2], masked: false), 100),
            ("bad close code", text("é", fin: false) + frame(8, [0x03, 0xEC]), 100),
            ("cut character at the end", frame(1, [0xC3], fin: false) + cont([0xA9, 0xC3])  + text("x"), 100),
        ]
    }()

    func testStreamsWhole() {
        let expected: [String: Outcome] = [
            "mixed": Outcome(events: [.ping(bytes("are you there?")), .text(bytes("Hello")), .binary((0..<300).map { UInt8(truncatingIfNeeded: $0) }),
                                      .pong([]), .text(bytes("naïve café ✓ 😀")), .binary([]), .text(bytes("x")),
                                      .close(code: 1000, reason: bytes("bye ✓"))]),
            "RFC hello": Outcome(events: [.text(bytes("Hello"))]),
            "long64": Outcome(events: [.binary([UInt8](repeating: 0xAB, count: 70_000)), .text(bytes("after"))]),
            "invalid UTF-8 mid-frame": Outcome(events: [.text(bytes("ok"))], failure: .invalidUTF8),
            "too big in a fragment": Outcome(events: [.text(bytes("ok")), .ping([])], failure: .messageTooBig),
            "unmasked after a ping": Outcome(events: [.ping(bytes("x"))], failure: .unmasked),
            "bad close code": Outcome(events: [], failure: .invalidCloseCode(1004)),
            "cut character at the end": Outcome(events: [], failure: .invalidUTF8),
        ]
        for s in Self.streams {
            var out = parse(s.bytes, max: s.max)
            out.failedAt = nil
            XCTAssertEqual(out, expected[s.name], s.name)
        }
    }

    func testEverySingleCutGivesTheSameResult() {
        for s in Self.streams {
            var whole = parse(s.bytes, max: s.max)
            whole.failedAt = nil
            let step = s.bytes.count > 5000 ? 97 : 1   // the 70 KB stream: every 97th cut, and every cut of its header and tail
            for cut in 0...s.bytes.count where cut % step == 0 || cut < 20 || cut > s.bytes.count - 20 {
                var out = parse([Array(s.bytes[..<cut]), Array(s.bytes[cut...])], max: s.max)
                out.failedAt = nil
                XCTAssertEqual(out, whole, "\(s.name) cut at \(cut)")
                if out != whole { break }
            }
        }
    }

    func testByteByByteAndRandomCutsGiveTheSameResult() {
        var rng = SplitMix64(seed: 0x6455)
        for s in Self.streams {
            var whole = parse(s.bytes, max: s.max)
            whole.failedAt = nil
            if s.bytes.count < 5000 {
                var out = parse(s.bytes.map { [$0] }, max: s.max)
                out.failedAt = nil
                XCTAssertEqual(out, whole, "\(s.name) byte by byte")
            }
            for round in 0..<(s.bytes.count > 5000 ? 10 : 200) {
                let maxPiece = [1, 2, 3, 5, 8, 13, 64, 1000][round % 8]
                var chunks: [[UInt8]] = []
                var i = 0
                while i < s.bytes.count {
                    let n = Int(rng.next() % UInt64(maxPiece + 1))   // empty pieces too
                    chunks.append(Array(s.bytes[i..<min(i + n, s.bytes.count)]))
                    i += n
                }
                var out = parse(chunks, max: s.max)
                out.failedAt = nil
                XCTAssertEqual(out, whole, "\(s.name) round \(round): \(chunks.map(\.count))")
                if out != whole { return }
            }
        }
    }

    // MARK: - The encoder (server frames)

    func testServerFramesAreRFC6455sExamples() {
        var out: [UInt8] = []
        WebSocketFrameEncoder.appendText(bytes("Hello"), to: &out)
        XCTAssertEqual(out, [0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
        out = []
        WebSocketFrameEncoder.appendFrame(opcode: .text, fin: false, payload: bytes("Hel"), to: &out)
        WebSocketFrameEncoder.appendFrame(opcode: .continuation, payload: bytes("lo"), to: &out)
        XCTAssertEqual(out, [0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F])
        out = []
        WebSocketFrameEncoder.appendPing(bytes("Hello"), to: &out)
        XCTAssertEqual(out, [0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
        // 256 bytes: 16-bit length; 64 KiB: 64-bit length.
        out = []
        WebSocketFrameEncoder.appendBinary([UInt8](repeating: 0, count: 256), to: &out)
        XCTAssertEqual(Array(out[..<4]), [0x82, 0x7E, 0x01, 0x00])
        XCTAssertEqual(out.count, 4 + 256)
        out = []
        WebSocketFrameEncoder.appendBinary([UInt8](repeating: 0, count: 65536), to: &out)
        XCTAssertEqual(Array(out[..<10]), [0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00])
        XCTAssertEqual(out.count, 10 + 65536)
        // The RFC's masked example, from the encoder with the key given.
        out = []
        WebSocketFrameEncoder.appendFrame(opcode: .text, payload: bytes("Hello"), mask: rfcKey, to: &out)
        XCTAssertEqual(out, [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    }

    func testLengthFormsAtTheirEdges() {
        for (n, header) in [(0, [0x82, 0]), (125, [0x82, 125]), (126, [0x82, 126, 0, 126]), (65535, [0x82, 126, 0xFF, 0xFF]),
                            (65536, [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0])] as [(Int, [UInt8])] {
            var out: [UInt8] = [0xEE]   // appends after what is there
            WebSocketFrameEncoder.appendBinary([UInt8](repeating: 9, count: n), to: &out)
            XCTAssertEqual(Array(out[1..<(1 + header.count)]), header, "\(n)")
            XCTAssertEqual(out.count, 1 + header.count + n)
            XCTAssertEqual(WebSocketFrameEncoder.headerLength(payloadLength: n), header.count)
            XCTAssertEqual(WebSocketFrameEncoder.headerLength(payloadLength: n, masked: true), header.count + 4)
        }
    }

    func testCloseFramesFromTheEncoder() {
        var out: [UInt8] = []
        WebSocketFrameEncoder.appendClose(code: nil, to: &out)
        XCTAssertEqual(out, [0x88, 0x00])
        out = []
        WebSocketFrameEncoder.appendClose(code: nil, reason: bytes("ignored without a code"), to: &out)
        XCTAssertEqual(out, [0x88, 0x00])
        out = []
        WebSocketFrameEncoder.appendClose(code: 1000, reason: bytes("target closed"), to: &out)
        XCTAssertEqual(out, [0x88, 15, 0x03, 0xE8] + bytes("target closed"))
        // A reason too long is cut to 123 bytes, never inside a character.
        for prefix in 0..<4 {
            let reason = [UInt8](repeating: 0x61, count: 120 + prefix) + bytes("😀😀")
            out = []
            WebSocketFrameEncoder.appendClose(code: 1001, reason: reason, to: &out)
            guard let frames = readServerFrames(out), frames.count == 1 else { return XCTFail("malformed") }
            let payload = frames[0].payload
            XCTAssertLessThanOrEqual(payload.count, 125)
            XCTAssertTrue(UTF8Validator.isValid(Array(payload[2...])), "prefix \(prefix)")
            XCTAssertEqual(Array(payload[2...]), Array(reason[..<(payload.count - 2)]))
            XCTAssertEqual(payload.count - 2, prefix == 3 ? 123 : 120 + prefix, "prefix \(prefix)")
        }
        out = []
        let exact = [UInt8](repeating: 0x62, count: 123)
        WebSocketFrameEncoder.appendClose(code: 4000, reason: exact, to: &out)
        XCTAssertEqual(readServerFrames(out)?.first?.payload, [0x0F, 0xA0] + exact)
    }

    func testServerFramesReadBackAndClientFramesRoundTrip() {
        var rng = SplitMix64(seed: 0xE7C0DE)
        for round in 0..<300 {
            let n = [0, 1, 5, 125, 126, 127, 1000, 65535, 65536][round % 9]
            let payload = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let small = Array(payload.prefix(125))
            var out: [UInt8] = []
            WebSocketFrameEncoder.appendBinary(payload, to: &out)
            WebSocketFrameEncoder.appendPong(small, to: &out)
            WebSocketFrameEncoder.appendText(bytes("✓"), to: &out)
            let frames = readServerFrames(out)
            XCTAssertEqual(frames?.map { $0.opcode }, [2, 10, 1])
            XCTAssertEqual(frames?.map { $0.payload }, [payload, small, bytes("✓")])
            XCTAssertEqual(frames?.allSatisfy { $0.fin }, true)
            // The same as a client's (masked) frames: the parser reads them back.
            let key = UInt32.random(in: 0...UInt32.max, using: &rng)
            var client: [UInt8] = []
            WebSocketFrameEncoder.appendFrame(opcode: .binary, fin: false, payload: payload, mask: key, to: &client)
            WebSocketFrameEncoder.appendFrame(opcode: .ping, payload: small, mask: key &+ 1, to: &client)
            WebSocketFrameEncoder.appendFrame(opcode: .continuation, payload: small, mask: key &+ 2, to: &client)
            WebSocketFrameEncoder.appendFrame(opcode: .close, payload: [0x03, 0xE8] + bytes("ok"), mask: key, to: &client)
            XCTAssertEqual(client, frame(2, payload, fin: false, key: key) + frame(9, small, key: key &+ 1)
                           + frame(0, small, key: key &+ 2) + frame(8, [0x03, 0xE8] + bytes("ok"), key: key))
            XCTAssertEqual(parse(client, max: 1 << 17).events, [.ping(small), .binary(payload + small), .close(code: 1000, reason: bytes("ok"))])
        }
    }
}
