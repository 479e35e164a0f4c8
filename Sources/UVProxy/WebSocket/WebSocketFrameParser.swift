/// Reads a client's WebSocket frames (RFC 6455 §5), as a value with no I/O.
///
/// `feed` takes the bytes of each read, split anywhere (a header cut between any two of its
/// bytes, a payload across any number of reads), and hands whole messages and control frames
/// to its closure, in order: `.text` and `.binary` once the message's last fragment has come,
/// `.ping`, `.pong` and `.close` as each frame ends (between two fragments of a message too).
/// The outcome does not depend on how the bytes are cut: the tests cut streams at every byte,
/// the fuzzer at random.
///
/// A violation ends the parse with a `Failure`, whose `code` is the close code to send before
/// closing (§7.1.7): every later feed answers the same failure and reads nothing. Each is
/// reported at the byte that makes it certain, so nothing is buffered for a frame that is
/// already wrong:
/// - 1002 (`protocolError`): a frame without the mask bit (§5.1: every client frame is masked);
///   RSV1–3 set (§5.2: no extension is ever negotiated); a reserved opcode; a control frame
///   without FIN or with more than 125 bytes (§5.5); a continuation outside a fragmented
///   message, or a text/binary frame inside one (§5.4); a 64-bit length with its top bit set
///   (§5.2); a close payload of one byte, or a close code not allowed on the wire (§7.4, see
///   `WebSocket.isValidReceivedCloseCode`).
/// - 1009 (`messageTooBig`): a data frame whose length would take its message past
///   `maxMessageSize`, as soon as its length field is read (before any of it is buffered).
/// - 1007 (`invalidPayload`): a text message that is not UTF-8, at the first byte that makes it
///   invalid (checked as each piece arrives, across fragments; a character cut at a fragment's
///   end is fine until the message ends), and a close reason that is not UTF-8.
///
/// Lengths need not take their shortest form (§5.2 asks senders for it; reading a longer form
/// is unambiguous and costs nothing, so it is accepted). Zero-length frames of every kind are
/// fine, a zero-length text or binary message included.
///
/// After a close frame the client may send nothing more (§5.5.1): later bytes are ignored, not
/// buffered, and `closeReceived` is true. Answering it (the echo of the code, §5.5.1) and
/// closing the TCP connection are the caller's.
///
/// **Memory.** The header is read into fixed fields of the value (at most 14 bytes:
/// opcode, length, key); the heap holds only the current data message, unmasked, and the
/// current control frame's payload. `bufferedBytes` is their storage, and stays within
/// `maxMessageSize + 125` plus malloc's rounding of two blocks: the message's storage grows with
/// the bytes that have come (doubling, capped at `maxMessageSize`), never with a length that a
/// header merely announces, so a client that announces a large frame and sends it slowly
/// makes the proxy hold what it sent, not what it announced. A message handed to the closure
/// leaves the parser with its storage (the event's array is the buffer, not a copy): between
/// messages the parser holds no heap memory at all.
///
/// Unmasking is done in place on the copy, eight bytes at a time; UTF-8 is checked on the
/// unmasked bytes, ASCII eight bytes at a time.
public struct WebSocketFrameParser {
    /// What a client sent.
    public enum Event: Equatable, Sendable {
        /// A whole text message (valid UTF-8).
        case text([UInt8])
        /// A whole binary message.
        case binary([UInt8])
        /// Answer with a pong carrying the same payload (§5.5.2).
        case ping([UInt8])
        /// Unsolicited or an answer to ours; either way nothing to do but note the client is there.
        case pong([UInt8])
        /// The client's close frame: its code (nil when the payload was empty: 1005 to an
        /// application, §7.1.5) and reason (UTF-8; empty without one).
        case close(code: UInt16?, reason: [UInt8])
    }

    /// Why the client's frames were refused; `code` is the close code to send.
    public enum Failure: Error, Equatable, Sendable, CustomStringConvertible {
        case unmasked
        case reservedBits
        case reservedOpcode(UInt8)
        case fragmentedControl
        case controlTooLong
        case unexpectedContinuation
        case expectedContinuation
        case lengthTopBit
        case messageTooBig
        case invalidUTF8
        case closePayloadOneByte
        case invalidCloseCode(UInt16)
        case invalidCloseReason

        /// The close code to send (§7.4.1).
        public var code: UInt16 {
            switch self {
            case .messageTooBig: return WebSocket.CloseCode.messageTooBig
            case .invalidUTF8, .invalidCloseReason: return WebSocket.CloseCode.invalidPayload
            default: return WebSocket.CloseCode.protocolError
            }
        }

        /// A short reason for the log and for the close frame (ASCII, under 123 bytes).
        public var description: String {
            switch self {
            case .unmasked: return "unmasked client frame"
            case .reservedBits: return "reserved bits set"
            case .reservedOpcode(let op): return "reserved opcode \(op)"
            case .fragmentedControl: return "fragmented control frame"
            case .controlTooLong: return "control frame over 125 bytes"
            case .unexpectedContinuation: return "continuation outside a fragmented message"
            case .expectedContinuation: return "new message inside a fragmented one"
            case .lengthTopBit: return "64-bit length with its top bit set"
            case .messageTooBig: return "message too big"
            case .invalidUTF8: return "text is not UTF-8"
            case .closePayloadOneByte: return "close frame of one byte"
            case .invalidCloseCode(let code): return "close code \(code) not allowed"
            case .invalidCloseReason: return "close reason is not UTF-8"
            }
        }
    }

    /// Where the parser is between two bytes.
    private enum Phase: UInt8 {
        case first      // the FIN/RSV/opcode byte
        case second     // the MASK/length byte
        case length     // `lengthLeft` bytes of extended length to come
        case key        // `keyLeft` bytes of masking key to come
        case payload    // `remaining` bytes of payload to come
        case closed     // a close frame was read: the rest is ignored
        case failed     // `failure` says why
    }

    /// The most a message (the payload of all its fragments) may hold; above it, 1009.
    public let maxMessageSize: Int
    // The stored properties are ordered widest first (Swift lays a struct out in declaration
    // order): one parser per WebSocket, held for hours by the thousand, so padding counts.
    /// The frame's payload length, while its header is read; then the payload bytes still to
    /// come.
    private var remaining: UInt64 = 0
    /// The message under way's payload so far, unmasked. No storage between messages.
    private var message: [UInt8] = []
    /// The control frame under way's payload, unmasked (at most 125 bytes).
    private var control: [UInt8] = []
    /// The masking key, its first byte on the wire the most significant.
    private var key: UInt32 = 0
    public private(set) var failure: Failure?
    private var phase = Phase.first
    /// The frame being read: its FIN bit and opcode.
    private var fin = false
    private var opcode: UInt8 = 0
    private var lengthLeft: UInt8 = 0
    private var keyLeft: UInt8 = 0
    /// Payload bytes of the frame read so far, mod 4: the key's phase.
    private var maskPhase: UInt8 = 0
    /// The message under way: 0 none, 1 text, 2 binary (the opcode of its first frame).
    private var messageOpcode: UInt8 = 0
    private var utf8 = UTF8Validator()

    /// `maxMessageSize`: the most payload a text or binary message may have, all its fragments
    /// together (SPEC §8: `max-body`); 0 allows only empty ones.
    public init(maxMessageSize: Int) {
        precondition(maxMessageSize >= 0, "a negative maximum")
        self.maxMessageSize = maxMessageSize
    }

    /// Bytes of heap storage the parser holds: the message under way and the control frame
    /// under way. At most `maxMessageSize + 125`, plus malloc's rounding of the two blocks.
    public var bufferedBytes: Int { message.capacity + control.capacity }

    /// Whether the client's close frame has been read (later bytes are ignored).
    public var closeReceived: Bool { phase == .closed }

    /// Whether the parser is between two messages, with nothing under way: a new parser would
    /// read on exactly as this one (a connection need not keep it while idle).
    public var isBetweenMessages: Bool { phase == .first && messageOpcode == 0 }

    /// Whether a data message has begun and not ended (a fragmented one, or one whose only frame
    /// is still arriving).
    public var isInsideMessage: Bool { messageOpcode != 0 }

    /// Reads `input`, handing each complete message or control frame to `event` in order, and
    /// answers nil, or the failure that ended the parse (events before it were delivered).
    /// `event` must not touch this parser (it is being mutated).
    public mutating func feed(_ input: UnsafeRawBufferPointer, _ event: (Event) -> Void) -> Failure? {
        let n = input.count
        var i = 0
        while i < n {
            switch phase {
            case .first:
                let b = input[i]
                i &+= 1
                if let f = readFirst(b) { return fail(f) }
            case .second:
                let b = input[i]
                i &+= 1
                if b & 0x80 == 0 { return fail(.unmasked) }
                let l = b & 0x7F
                if opcode & 0x8 != 0 && l > 125 { return fail(.controlTooLong) }
                switch l {
                case 126: lengthLeft = 2; remaining = 0; phase = .length
                case 127: lengthLeft = 8; remaining = 0; phase = .length
                default:
                    remaining = UInt64(l)
                    if let f = lengthRead() { return fail(f) }
                }
            case .length:
                let b = input[i]
                i &+= 1
                if lengthLeft == 8 && b & 0x80 != 0 { return fail(.lengthTopBit) }
                remaining = remaining << 8 | UInt64(b)
                lengthLeft &-= 1
                if lengthLeft == 0, let f = lengthRead() { return fail(f) }
            case .key:
                let b = input[i]
                i &+= 1
                key = key << 8 | UInt32(b)
                keyLeft &-= 1
                if keyLeft == 0 {
                    maskPhase = 0
                    if remaining == 0 {
                        if let f = frameEnded(event) { return fail(f) }
                    } else {
                        phase = .payload
                        if opcode & 0x8 != 0 { control.reserveCapacity(Int(remaining)) }
                    }
                }
            case .payload:
                let take = Int(Swift.min(remaining, UInt64(n &- i)))
                let piece = UnsafeRawBufferPointer(rebasing: input[i..<(i &+ take)])
                i &+= take
                if opcode & 0x8 != 0 {
                    Self.appendUnmasked(piece, key: key, phase: Int(maskPhase), to: &control)
                } else {
                    grow(by: take)
                    let start = message.count
                    Self.appendUnmasked(piece, key: key, phase: Int(maskPhase), to: &message)
                    if messageOpcode == WebSocket.Opcode.text.rawValue {
                        let valid = message.withUnsafeBytes { utf8.validate(UnsafeRawBufferPointer(rebasing: $0[start...])) }
                        if !valid { return fail(.invalidUTF8) }
                    }
                }
                remaining &-= UInt64(take)
                maskPhase = UInt8(truncatingIfNeeded: Int(maskPhase) &+ take) & 3
                if remaining == 0, let f = frameEnded(event) { return fail(f) }
            case .closed:
                return nil
            case .failed:
                return failure
            }
        }
        return phase == .failed ? failure : nil
    }

    /// The first header byte: FIN, RSV1–3, the opcode, judged against the message under way.
    private mutating func readFirst(_ b: UInt8) -> Failure? {
        if b & 0x70 != 0 { return .reservedBits }
        fin = b & 0x80 != 0
        opcode = b & 0x0F
        switch opcode {
        case WebSocket.Opcode.continuation.rawValue:
            if messageOpcode == 0 { return .unexpectedContinuation }
        case WebSocket.Opcode.text.rawValue, WebSocket.Opcode.binary.rawValue:
            if messageOpcode != 0 { return .expectedContinuation }
            messageOpcode = opcode
            utf8 = UTF8Validator()
        case WebSocket.Opcode.close.rawValue, WebSocket.Opcode.ping.rawValue, WebSocket.Opcode.pong.rawValue:
            if !fin { return .fragmentedControl }
        default:
            return .reservedOpcode(opcode)
        }
        phase = .second
        return nil
    }

    /// The payload length is known: a data frame must keep its message within the maximum.
    private mutating func lengthRead() -> Failure? {
        if opcode & 0x8 == 0 && remaining > UInt64(maxMessageSize &- message.count) { return .messageTooBig }
        key = 0
        keyLeft = 4
        phase = .key
        return nil
    }

    /// Makes room for `n` more message bytes: doubling, but never past the maximum (which the
    /// frame's length has been checked against), so the storage follows the bytes received.
    @inline(__always) private mutating func grow(by n: Int) {
        let needed = message.count &+ n
        guard needed > message.capacity else { return }
        message.reserveCapacity(Swift.min(Swift.max(needed, message.capacity &* 2), maxMessageSize))
    }

    /// Appends `piece` to `buffer` and unmasks it there. Static, so that nothing but the buffer
    /// (one of the parser's properties, passed inout) is accessed during the call.
    @inline(__always) private static func appendUnmasked(_ piece: UnsafeRawBufferPointer, key: UInt32, phase: Int,
                                                         to buffer: inout [UInt8]) {
        guard piece.count > 0 else { return }
        let start = buffer.count
        buffer.append(contentsOf: UnsafeBufferPointer(start: piece.baseAddress!.assumingMemoryBound(to: UInt8.self), count: piece.count))
        buffer.withUnsafeMutableBytes { webSocketMask(UnsafeMutableRawBufferPointer(rebasing: $0[start...]), key: key, phase: phase) }
    }

    /// A frame's last payload byte has been read.
    private mutating func frameEnded(_ event: (Event) -> Void) -> Failure? {
        phase = .first
        switch opcode {
        case WebSocket.Opcode.ping.rawValue:
            event(.ping(takeControl()))
        case WebSocket.Opcode.pong.rawValue:
            event(.pong(takeControl()))
        case WebSocket.Opcode.close.rawValue:
            let payload = takeControl()
            var code: UInt16?
            var reason: [UInt8] = []
            if payload.count == 1 { return .closePayloadOneByte }
            if payload.count >= 2 {
                let c = UInt16(payload[0]) << 8 | UInt16(payload[1])
                guard WebSocket.isValidReceivedCloseCode(c) else { return .invalidCloseCode(c) }
                code = c
                reason = Array(payload[2...])
                guard UTF8Validator.isValid(reason) else { return .invalidCloseReason }
            }
            phase = .closed
            // A message cut short by the close is dropped, with its storage.
            message = []
            messageOpcode = 0
            event(.close(code: code, reason: reason))
        default:
            guard fin else { return nil }
            let text = messageOpcode == WebSocket.Opcode.text.rawValue
            if text && !utf8.isComplete { return .invalidUTF8 }
            let payload = message
            message = []
            messageOpcode = 0
            event(text ? .text(payload) : .binary(payload))
        }
        return nil
    }

    private mutating func takeControl() -> [UInt8] {
        let payload = control
        control = []
        return payload
    }

    private mutating func fail(_ f: Failure) -> Failure {
        failure = f
        phase = .failed
        message = []
        control = []
        return f
    }
}
