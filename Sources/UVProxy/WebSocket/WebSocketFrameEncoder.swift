/// Writes WebSocket frames (RFC 6455 §5.2) into the caller's buffer.
///
/// Server frames are unmasked (§5.1: a server must not mask). Every function appends to `out`
/// (one capacity check, then the header bytes and one copy of the payload), so a caller that
/// keeps one output buffer per connection writes many frames without an allocation. The
/// payload length takes the shortest form, as §5.2 requires: 0–125 in the second byte, up to
/// 65,535 as 126 and 16 bits, above that 127 and 64 bits (network order).
///
/// `mask` (a client's frame: tests and the fuzzer) is the masking key as a number whose most
/// significant byte goes first on the wire; nil, the default, for the server's frames.
public enum WebSocketFrameEncoder {
    /// The bytes a frame's header takes for a payload of `payloadLength` bytes: 2, 4 or 10,
    /// plus 4 for a mask.
    @inlinable public static func headerLength(payloadLength: Int, masked: Bool = false) -> Int {
        (payloadLength <= 125 ? 2 : payloadLength <= 0xFFFF ? 4 : 10) + (masked ? 4 : 0)
    }

    /// Appends a frame header: FIN (unless `fin` is false: a fragment with more to come), the
    /// opcode, the payload length in its shortest form, and the mask key when there is one.
    /// The caller appends `payloadLength` bytes of payload after it (masked, if masked).
    public static func appendHeader(opcode: WebSocket.Opcode, fin: Bool = true, payloadLength: Int,
                                    mask: UInt32? = nil, to out: inout [UInt8]) {
        precondition(payloadLength >= 0, "a negative payload length")
        precondition(!opcode.isControl || (fin && payloadLength <= WebSocket.maxControlPayload),
                     "a control frame is not fragmented and carries at most 125 bytes")
        let maskBit: UInt8 = mask == nil ? 0 : 0x80
        out.append((fin ? 0x80 : 0) | opcode.rawValue)
        if payloadLength <= 125 {
            out.append(maskBit | UInt8(payloadLength))
        } else if payloadLength <= 0xFFFF {
            out.append(maskBit | 126)
            out.append(UInt8(truncatingIfNeeded: payloadLength >> 8))
            out.append(UInt8(truncatingIfNeeded: payloadLength))
        } else {
            out.append(maskBit | 127)
            let length = UInt64(payloadLength)
            for shift in stride(from: 56, through: 0, by: -8) {
                out.append(UInt8(truncatingIfNeeded: length >> UInt64(shift)))
            }
        }
        if let mask {
            out.append(UInt8(truncatingIfNeeded: mask >> 24))
            out.append(UInt8(truncatingIfNeeded: mask >> 16))
            out.append(UInt8(truncatingIfNeeded: mask >> 8))
            out.append(UInt8(truncatingIfNeeded: mask))
        }
    }

    /// Appends one whole frame: its header and `payload` (masked with `mask` when given).
    public static func appendFrame(opcode: WebSocket.Opcode, fin: Bool = true, payload: UnsafeRawBufferPointer,
                                   mask: UInt32? = nil, to out: inout [UInt8]) {
        let n = payload.count
        out.reserveCapacity(out.count + headerLength(payloadLength: n, masked: mask != nil) + n)
        appendHeader(opcode: opcode, fin: fin, payloadLength: n, mask: mask, to: &out)
        guard n > 0 else { return }
        let start = out.count
        out.append(contentsOf: UnsafeBufferPointer(start: payload.baseAddress!.assumingMemoryBound(to: UInt8.self), count: n))
        if let mask {
            out.withUnsafeMutableBytes { webSocketMask(UnsafeMutableRawBufferPointer(rebasing: $0[start...]), key: mask, phase: 0) }
        }
    }

    public static func appendFrame(opcode: WebSocket.Opcode, fin: Bool = true, payload: [UInt8],
                                   mask: UInt32? = nil, to out: inout [UInt8]) {
        payload.withUnsafeBytes { appendFrame(opcode: opcode, fin: fin, payload: $0, mask: mask, to: &out) }
    }

    /// A text message in one frame. `payload` must be UTF-8: it is not checked here.
    public static func appendText(_ payload: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        appendFrame(opcode: .text, payload: payload, to: &out)
    }

    public static func appendText(_ payload: [UInt8], to out: inout [UInt8]) {
        appendFrame(opcode: .text, payload: payload, to: &out)
    }

    /// A binary message in one frame.
    public static func appendBinary(_ payload: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        appendFrame(opcode: .binary, payload: payload, to: &out)
    }

    public static func appendBinary(_ payload: [UInt8], to out: inout [UInt8]) {
        appendFrame(opcode: .binary, payload: payload, to: &out)
    }

    /// A ping; `payload` at most 125 bytes (a longer one is a programmer's error and traps).
    public static func appendPing(_ payload: [UInt8] = [], to out: inout [UInt8]) {
        appendFrame(opcode: .ping, payload: payload, to: &out)
    }

    /// A pong; `payload` at most 125 bytes. The answer to a ping carries the ping's payload
    /// (§5.5.3), which the parser never lets exceed 125 bytes.
    public static func appendPong(_ payload: [UInt8] = [], to out: inout [UInt8]) {
        appendFrame(opcode: .pong, payload: payload, to: &out)
    }

    /// A close frame (§5.5.1): with `code`, the code in network order and `reason` (UTF-8)
    /// after it; without one, an empty payload (and no reason: §5.5.1 allows a reason only
    /// after a code). A reason over 123 bytes is cut to fit, at a character boundary when it
    /// is valid UTF-8, so the frame stays a valid one. The code is sent as given: 1005, 1006
    /// and 1015 must never be sent (§7.4.1); the proxy sends 1000, 1001, 1002, 1007, 1009, 1011.
    public static func appendClose(code: UInt16?, reason: [UInt8] = [], to out: inout [UInt8]) {
        guard let code else {
            appendHeader(opcode: .close, payloadLength: 0, to: &out)
            return
        }
        let cut = closeReasonLength(reason)
        appendHeader(opcode: .close, payloadLength: 2 + cut, to: &out)
        out.append(UInt8(truncatingIfNeeded: code >> 8))
        out.append(UInt8(truncatingIfNeeded: code))
        out.append(contentsOf: reason[..<cut])
    }

    /// How much of `reason` a close frame takes: all of it up to 123 bytes; else 123 bytes,
    /// backed up to the start of the character that the cut would split (a UTF-8 continuation
    /// byte, `10xxxxxx`, never starts one).
    static func closeReasonLength(_ reason: [UInt8]) -> Int {
        var n = reason.count
        guard n > WebSocket.maxCloseReason else { return n }
        n = WebSocket.maxCloseReason
        var k = n
        while k > 0 && k > n - 4 && reason[k] & 0xC0 == 0x80 { k -= 1 }
        return reason[k] & 0xC0 == 0x80 ? n : k
    }
}
