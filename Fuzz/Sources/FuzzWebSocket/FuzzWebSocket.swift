import FuzzSupport
@testable import UVProxy

// WebSocket frames and the handshake (docs/RELIABILITY.md, "Fuzzing").
//
// Input: byte 0 seeds the cuts and the masking keys, and its low three bits pick the parser's
// `maxMessageSize` (0, 1, 16, 125, 126, 300, 4096 or 65536); the rest is what a client sends
// after the handshake.
// Invariants of WebSocketFrameParser:
// - never a trap;
// - the events and the failure do not depend on how the bytes are cut (whole, one byte at a
//   time, random pieces with empty ones);
// - after every feed `bufferedBytes` is within `maxMessageSize + 125` (plus malloc's rounding
//   of its two blocks), 0 after a failure, and within one control frame (125) outside a
//   message; a failure, once answered, is answered again; after a close, nothing more;
// - the events are well formed: text is UTF-8 (the standard library's check), messages within
//   `maxMessageSize`, control payloads within 125, a close only last, with a code allowed on
//   the wire (or none) and a UTF-8 reason;
// - a reference written from RFC 6455 over the whole input (frame by frame; text judged
//   "certainly invalid" when no completion of up to three bytes makes it UTF-8 by the standard
//   library) gives the same events and the same failure;
// - the events, encoded again as client frames (WebSocketFrameEncoder with masks, the data
//   messages cut into fragments, the control frames that came before a message placed between
//   its first two fragments), parse back to the same events with no failure, whole and cut;
// - as server frames, they read back (by a small reader here) as the same opcodes and payloads,
//   each length in its shortest form.
// WebSocketHandshake.evaluate on the input split at LF into the six header values: never a
// trap; an accept carries base64 of 20 bytes, is refused for a version other than 13, and its
// subprotocol is one of ours that the client offered.

typealias Event = WebSocketFrameParser.Event
typealias Failure = WebSocketFrameParser.Failure

struct Outcome: Equatable {
    var events: [Event] = []
    var failure: Failure?
}

let maxima = [0, 1, 16, 125, 126, 300, 4096, 65536]
let mallocSlack = 64

func parse(_ bytes: UnsafeRawBufferPointer, max: Int,
           cut: (UnsafeRawBufferPointer, (UnsafeRawBufferPointer) -> Void) -> Void) -> Outcome {
    var parser = WebSocketFrameParser(maxMessageSize: max)
    var out = Outcome()
    cut(bytes) { piece in
        var closedBefore = parser.closeReceived
        let before = out.events.count
        let f = parser.feed(piece) { event in
            fuzzCheck(!closedBefore, "an event after the close: \(event)")
            if case .close = event { closedBefore = true }
            out.events.append(event)
        }
        if let first = out.failure {
            fuzzCheck(f == first && out.events.count == before, "after failing with \(first): \(String(describing: f))")
        } else if let f {
            out.failure = f
            fuzzCheck(parser.failure == f, "failure property \(String(describing: parser.failure)) for \(f)")
        }
        let held = parser.bufferedBytes
        fuzzCheck(held <= max + WebSocket.maxControlPayload + 2 * mallocSlack, "holds \(held) with maximum \(max)")
        if out.failure != nil || parser.closeReceived { fuzzCheck(held == 0, "holds \(held) after the end") }
        if !parser.isInsideMessage { fuzzCheck(held <= WebSocket.maxControlPayload + mallocSlack, "holds \(held) between messages") }
    }
    return out
}

func whole(_ b: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) { body(b) }
func bytewise(_ b: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
    for i in 0..<b.count { body(UnsafeRawBufferPointer(rebasing: b[i..<(i + 1)])) }
}

func isUTF8(_ b: [UInt8]) -> Bool { String(validating: b, as: UTF8.self) != nil }

/// Whether some completion of at most three bytes makes `b` UTF-8 (so `b` is not yet certainly
/// invalid). The first continuation byte's allowed range depends on the lead (A0… after E0,
/// …9F after ED, 90… after F0, …8F after F4): 80, 90 and A0 cover them all.
func completable(_ b: [UInt8]) -> Bool {
    if isUTF8(b) { return true }
    for x: UInt8 in [0x80, 0x90, 0xA0] {
        for rest in 0...2 where isUTF8(b + [x] + [UInt8](repeating: 0x80, count: rest)) { return true }
    }
    return false
}

// MARK: Reference

/// RFC 6455 §5 over the whole input, as plainly as it can be written.
func reference(_ b: [UInt8], max: Int) -> Outcome {
    var out = Outcome()
    var i = 0
    let n = b.count
    var messageOpcode: UInt8 = 0
    var message: [UInt8] = []
    func failed(_ f: Failure) -> Outcome { out.failure = f; return out }
    while i < n {
        let b0 = b[i]
        let fin = b0 & 0x80 != 0
        let op = b0 & 0x0F
        if b0 & 0x70 != 0 { return failed(.reservedBits) }
        switch op {
        case 0: if messageOpcode == 0 { return failed(.unexpectedContinuation) }
        case 1, 2: if messageOpcode != 0 { return failed(.expectedContinuation) }
        case 8, 9, 10: if !fin { return failed(.fragmentedControl) }
        default: return failed(.reservedOpcode(op))
        }
        let control = op >= 8
        if op == 1 || op == 2 { messageOpcode = op }
        guard i + 1 < n else { return out }
        let b1 = b[i + 1]
        if b1 & 0x80 == 0 { return failed(.unmasked) }
        var length = UInt64(b1 & 0x7F)
        if control && length > 125 { return failed(.controlTooLong) }
        i += 2
        if length == 126 || length == 127 {
            let k = length == 126 ? 2 : 8
            if k == 8 && i < n && b[i] & 0x80 != 0 { return failed(.lengthTopBit) }
            guard i + k <= n else { return out }
            length = b[i..<(i + k)].reduce(0) { $0 << 8 | UInt64($1) }
            i += k
        }
        if !control && length > UInt64(max - message.count) { return failed(.messageTooBig) }
        guard i + 4 <= n else { return out }
        let key = Array(b[i..<(i + 4)])
        i += 4
        let available = Int(min(length, UInt64(n - i)))
        let payload = (0..<available).map { b[i + $0] ^ key[$0 % 4] }
        i += available
        if !control {
            message += payload
            if messageOpcode == 1 && !completable(message) { return failed(.invalidUTF8) }
        }
        guard available == Int(length) else { return out }
        switch op {
        case 9: out.events.append(.ping(payload))
        case 10: out.events.append(.pong(payload))
        case 8:
            if payload.count == 1 { return failed(.closePayloadOneByte) }
            if payload.isEmpty {
                out.events.append(.close(code: nil, reason: []))
            } else {
                let code = UInt16(payload[0]) << 8 | UInt16(payload[1])
                guard (1000...1003).contains(code) || (1007...1011).contains(code) || (3000...4999).contains(code) else {
                    return failed(.invalidCloseCode(code))
                }
                let reason = Array(payload[2...])
                guard isUTF8(reason) else { return failed(.invalidCloseReason) }
                out.events.append(.close(code: code, reason: reason))
            }
            return out   // the rest is ignored
        default:
            if fin {
                if messageOpcode == 1 && !isUTF8(message) { return failed(.invalidUTF8) }
                out.events.append(messageOpcode == 1 ? .text(message) : .binary(message))
                message = []
                messageOpcode = 0
            }
        }
    }
    return out
}

// MARK: Well-formed events

func checkEvents(_ events: [Event], max: Int) {
    for (k, e) in events.enumerated() {
        switch e {
        case .text(let t):
            fuzzCheck(t.count <= max && isUTF8(t), "text \(t) with maximum \(max)")
        case .binary(let b):
            fuzzCheck(b.count <= max, "binary of \(b.count) with maximum \(max)")
        case .ping(let p), .pong(let p):
            fuzzCheck(p.count <= 125, "control payload of \(p.count)")
        case .close(let code, let reason):
            fuzzCheck(k == events.count - 1, "a close that is not last")
            fuzzCheck(reason.count <= 123 && isUTF8(reason), "close reason \(reason)")
            if let code { fuzzCheck(WebSocket.isValidReceivedCloseCode(code), "close code \(code)") } else { fuzzCheck(reason.isEmpty, "reason without a code") }
        }
    }
}

// MARK: Round trips

/// The events as a client would send them: masked frames, each data message cut into fragments
/// by `splitter`, the control frames before it placed after its first fragment.
func clientFrames(_ events: [Event], _ splitter: inout Splitter) -> [UInt8] {
    var out: [UInt8] = []
    var pending: [Event] = []
    func key() -> UInt32 { UInt32(truncatingIfNeeded: splitter.next()) }
    func control(_ e: Event) {
        switch e {
        case .ping(let p): WebSocketFrameEncoder.appendFrame(opcode: .ping, payload: p, mask: key(), to: &out)
        case .pong(let p): WebSocketFrameEncoder.appendFrame(opcode: .pong, payload: p, mask: key(), to: &out)
        case .close(let code, let reason):
            let payload = code.map { [UInt8($0 >> 8), UInt8($0 & 0xFF)] + reason } ?? []
            WebSocketFrameEncoder.appendFrame(opcode: .close, payload: payload, mask: key(), to: &out)
        default: break
        }
    }
    for e in events {
        switch e {
        case .text(let m), .binary(let m):
            var opcode: WebSocket.Opcode
            if case .text = e { opcode = .text } else { opcode = .binary }
            let sizes = splitter.pieces(m.count, maxPiece: 40)
            var parts: [ArraySlice<UInt8>] = []
            var at = 0
            for s in sizes { parts.append(m[at..<(at + s)]); at += s }
            if parts.isEmpty || splitter.next() % 4 == 0 { parts.append(m[m.count...]) }   // an empty last fragment
            // The control frames that came before the message go between its first two
            // fragments (they still end before it does), or before it when it has only one.
            if parts.count == 1 { pending.forEach(control); pending = [] }
            for (k, part) in parts.enumerated() {
                WebSocketFrameEncoder.appendFrame(opcode: opcode, fin: k == parts.count - 1, payload: Array(part), mask: key(), to: &out)
                opcode = .continuation
                if k == 0 { pending.forEach(control); pending = [] }
            }
        default:
            pending.append(e)
        }
    }
    pending.forEach(control)
    return out
}

/// The events as the server's frames, read back: opcode and payload of each, nil if one is
/// malformed (masked, RSV set, not FIN, a length not in its shortest form).
func serverRoundTrip(_ events: [Event]) -> Bool {
    var out: [UInt8] = []
    var expected: [(UInt8, [UInt8])] = []
    for e in events {
        switch e {
        case .text(let t): WebSocketFrameEncoder.appendText(t, to: &out); expected.append((1, t))
        case .binary(let b): WebSocketFrameEncoder.appendBinary(b, to: &out); expected.append((2, b))
        case .ping(let p): WebSocketFrameEncoder.appendPing(p, to: &out); expected.append((9, p))
        case .pong(let p): WebSocketFrameEncoder.appendPong(p, to: &out); expected.append((10, p))
        case .close(let code, let reason):
            WebSocketFrameEncoder.appendClose(code: code, reason: reason, to: &out)
            expected.append((8, code.map { [UInt8($0 >> 8), UInt8($0 & 0xFF)] + reason } ?? []))
        }
    }
    var i = 0
    var k = 0
    while i < out.count {
        guard i + 2 <= out.count, out[i] & 0xF0 == 0x80, out[i + 1] & 0x80 == 0, k < expected.count else { return false }
        let op = out[i] & 0x0F
        var n = Int(out[i + 1])
        i += 2
        if n == 126 {
            n = Int(out[i]) << 8 | Int(out[i + 1])
            guard n > 125 else { return false }
            i += 2
        } else if n == 127 {
            n = out[i..<(i + 8)].reduce(0) { $0 << 8 | Int($1) }
            guard n > 0xFFFF else { return false }
            i += 8
        }
        guard i + n <= out.count, op == expected[k].0, Array(out[i..<(i + n)]) == expected[k].1 else { return false }
        i += n
        k += 1
    }
    return k == expected.count
}

// MARK: Handshake

let ours = ["binary", "gmcp.mudstandards.org", "terminal.mudstandards.org"]

func checkHandshake(_ bytes: [UInt8]) {
    let fields = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).map { Array($0) }
    func field(_ k: Int) -> [UInt8]? { k < fields.count && !(fields[k].first == 0x21) ? fields[k] : nil }   // "!…" stands for absent
    let request = WebSocketHandshake.Request(upgrade: field(0), connection: field(1), version: field(2), key: field(3),
                                             protocols: field(4), extensions: field(5))
    let outcome = WebSocketHandshake.evaluate(request, subprotocols: ours)
    guard case .accept(let accept, let p) = outcome else { return }
    fuzzCheck(accept.count == 28 && accept.last == UInt8(ascii: "="), "accept \(accept)")
    fuzzCheck(WebSocketHandshake.trim(request.version![...]).elementsEqual("13".utf8), "accepted version \(request.version!)")
    fuzzCheck(accept == WebSocketHandshake.acceptValue(key: WebSocketHandshake.trim(request.key![...])), "accept for another key")
    if let p {
        fuzzCheck(ours.contains(p), "subprotocol \(p)")
        let offered = request.protocols.map { WebSocketHandshake.elements($0) } ?? []
        fuzzCheck(offered.contains { $0.elementsEqual(p.utf8) }, "\(p) was not offered")
    }
    let head = WebSocketHandshake.responseHead(accept: accept, subprotocol: p)
    fuzzCheck(head.count > 4 && head.suffix(4).elementsEqual([13, 10, 13, 10]), "head")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWebSocket(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    guard input.count >= 1 else { return 0 }
    let seed = input[0]
    let max = maxima[Int(seed & 7)]
    let payload = UnsafeRawBufferPointer(rebasing: input[1...])
    let bytes = Array(payload)

    let a = parse(payload, max: max, cut: whole)
    let b = parse(payload, max: max, cut: bytewise)
    var splitter = Splitter(seed: seed, length: payload.count)
    let c = parse(payload, max: max) { bytes, body in forEachPiece(bytes, &splitter, body) }
    fuzzCheck(a == b && a == c, "the outcome depends on the cuts: \(a) / \(b) / \(c)")
    checkEvents(a.events, max: max)

    let r = reference(bytes, max: max)
    fuzzCheck(a == r, "reference: \(r), parser: \(a)")

    // Encoded again as a client's frames: the same events, no failure, whole and cut.
    var keys = Splitter(seed: seed &+ 1, length: bytes.count)
    let again = clientFrames(a.events, &keys)
    let expected = Outcome(events: a.events, failure: nil)
    again.withUnsafeBytes { buf in
        let whole2 = parse(buf, max: max, cut: whole)
        fuzzCheck(whole2 == expected, "re-encoded \(again) parses as \(whole2), not \(expected)")
        var cuts = Splitter(seed: seed &+ 2, length: buf.count)
        let cut2 = parse(buf, max: max) { bytes, body in forEachPiece(bytes, &cuts, maxPiece: 7, body) }
        fuzzCheck(cut2 == expected, "re-encoded and cut, \(again) parses as \(cut2)")
    }
    fuzzCheck(serverRoundTrip(a.events), "server frames of \(a.events) do not read back")

    checkHandshake(bytes)
    return 0
}
