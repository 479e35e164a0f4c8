/// The WebSocket protocol (RFC 6455, version 13) as values with no I/O (SPEC §8):
///
/// - `WebSocketHandshake`: an upgrade request's header values → accept (with the chosen
///   subprotocol and the `101` head) or the HTTP error to answer.
/// - `WebSocketFrameParser`: a client's bytes, split anywhere → whole messages and control
///   frames, or the close code the connection fails with.
/// - `WebSocketFrameEncoder`: the server's frames, appended into the caller's buffer.
///
/// Nothing here reads or writes a socket or calls libuv; the attachment that moves the bytes
/// (and owns the timers, the ping every 30 s and the close handshake's timing) is elsewhere.
/// The one C library used is OpenSSL's libcrypto, for the handshake's SHA-1 and base64.
public enum WebSocket {
    /// Frame opcodes (RFC 6455 §5.2). 3–7 and 11–15 are reserved: a frame with one fails the
    /// connection (1002).
    public enum Opcode: UInt8, Sendable {
        case continuation = 0x0
        case text = 0x1
        case binary = 0x2
        case close = 0x8
        case ping = 0x9
        case pong = 0xA

        /// Close, ping and pong (the opcode's top bit): at most 125 bytes of payload, never fragmented.
        public var isControl: Bool { rawValue & 0x8 != 0 }
    }

    /// Close status codes (RFC 6455 §7.4.1) the proxy sends or reads.
    public enum CloseCode {
        public static let normal: UInt16 = 1000
        public static let goingAway: UInt16 = 1001
        public static let protocolError: UInt16 = 1002
        public static let unsupportedData: UInt16 = 1003
        /// "No status code was present": reported to an application, never sent (§7.4.1).
        public static let noStatus: UInt16 = 1005
        /// "Closed without a close frame": reported to an application, never sent.
        public static let abnormal: UInt16 = 1006
        public static let invalidPayload: UInt16 = 1007
        public static let policyViolation: UInt16 = 1008
        public static let messageTooBig: UInt16 = 1009
        public static let mandatoryExtension: UInt16 = 1010
        public static let internalError: UInt16 = 1011
        /// "Try again later" (IANA's registry, after RFC 6455): sent when a client's input is
        /// over what the session may hold for its target.
        public static let tryAgainLater: UInt16 = 1013
        /// uvproxyd's own (4000–4999 are for private use, §7.4.2): a newer reader of the session
        /// took over (another tab). The session goes on: a client that gets it should not take
        /// the session back at once, or two pages would take it from each other for ever.
        public static let replaced: UInt16 = 4000
    }

    /// The most payload a control frame (close, ping, pong) may carry (RFC 6455 §5.5).
    public static let maxControlPayload = 125

    /// The most bytes of reason a close frame can carry after its 2-byte code.
    public static let maxCloseReason = maxControlPayload - 2

    /// Whether a close frame received may carry `code` (RFC 6455 §7.4): the codes RFC 6455
    /// defines for the wire (1000–1003, 1007–1011) and those for libraries and applications
    /// (3000–4999). Everything else is a protocol error (1002): 0–999, the reserved 1004, the
    /// 1005/1006/1015 that must never be sent, 1016–2999, and 5000 and above. IANA has since
    /// registered 1012–1014 (service restart, try again later, bad gateway), which servers send;
    /// a client sending them is refused here as the proxy's contract says.
    @inlinable public static func isValidReceivedCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1011, 3000...4999: return true
        default: return false
        }
    }
}

/// UTF-8 checked as it arrives, split anywhere (Unicode's Table 3-7, "well-formed UTF-8 byte
/// sequences": no overlong forms, no surrogates, nothing above U+10FFFF).
///
/// `validate` answers false at the first byte that no well-formed text can have after what
/// came before, which is the earliest point at which the text is certainly invalid: `C0`, `F5`
/// and a stray continuation at once; `E0 80`, `ED A0`, `F4 90` at their second byte. A
/// sequence cut at the end of a piece is not an error: `isComplete` is false until it ends.
/// ASCII runs are checked eight bytes at a time.
struct UTF8Validator: Equatable, Sendable {
    /// Continuation bytes still owed by the current sequence (0–3).
    private(set) var need: UInt8 = 0
    /// The range the next continuation byte must fall in (only the first one's is narrower
    /// than `80…BF`).
    private var lo: UInt8 = 0x80
    private var hi: UInt8 = 0xBF

    init() {}

    /// Whether the text so far ends between two characters.
    var isComplete: Bool { need == 0 }

    /// Checks the next bytes; false when they make the text invalid (the state is then
    /// meaningless: start again with a new validator).
    mutating func validate(_ p: UnsafeRawBufferPointer) -> Bool {
        let n = p.count
        var i = 0
        var need = self.need, lo = self.lo, hi = self.hi
        defer { self.need = need; self.lo = lo; self.hi = hi }
        while i < n {
            if need == 0 {
                while i &+ 8 <= n {
                    let v = p.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                    if v & 0x8080_8080_8080_8080 != 0 { break }
                    i &+= 8
                }
                guard i < n else { break }
                let b = p[i]
                i &+= 1
                if b < 0x80 { continue }
                switch b {
                case 0xC2...0xDF: need = 1; lo = 0x80; hi = 0xBF
                case 0xE0: need = 2; lo = 0xA0; hi = 0xBF
                case 0xE1...0xEC, 0xEE, 0xEF: need = 2; lo = 0x80; hi = 0xBF
                case 0xED: need = 2; lo = 0x80; hi = 0x9F
                case 0xF0: need = 3; lo = 0x90; hi = 0xBF
                case 0xF1...0xF3: need = 3; lo = 0x80; hi = 0xBF
                case 0xF4: need = 3; lo = 0x80; hi = 0x8F
                default: return false   // 80…C1 (continuation, overlong lead), F5…FF
                }
            } else {
                let b = p[i]
                i &+= 1
                guard b >= lo && b <= hi else { return false }
                need &-= 1
                lo = 0x80
                hi = 0xBF
            }
        }
        return true
    }

    /// Whether `bytes` are, as a whole, well-formed UTF-8.
    static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var v = UTF8Validator()
        return v.validate(bytes) && v.isComplete
    }

    static func isValid(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { isValid($0) }
    }
}

/// XORs `bytes` in place with the masking key (RFC 6455 §5.3): byte `j` of the frame's payload
/// with key byte `j mod 4`, `phase` being the payload offset of `bytes`' first byte (mod 4).
/// Eight bytes at a time, with the key repeated twice in one word; the loads and stores are
/// unaligned and in the machine's order on both sides, so the XOR is byte for byte whatever
/// the endianness. Applying it twice gives the bytes back (masking and unmasking are one).
///
/// `key` is the masking key as a number whose most significant byte came first on the wire.
@inline(__always)
func webSocketMask(_ bytes: UnsafeMutableRawBufferPointer, key: UInt32, phase: Int) {
    let n = bytes.count
    guard n > 0, let base = bytes.baseAddress else { return }
    var pattern: UInt64 = 0
    withUnsafeBytes(of: key.bigEndian) { k in
        withUnsafeMutableBytes(of: &pattern) { p in
            for j in 0..<8 { p[j] = k[(phase &+ j) & 3] }
        }
    }
    var i = 0
    while i &+ 8 <= n {
        let v = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
        base.storeBytes(of: v ^ pattern, toByteOffset: i, as: UInt64.self)
        i &+= 8
    }
    // The tail: the pattern's first bytes line up with the next payload byte, since 8 is a
    // multiple of 4.
    withUnsafeBytes(of: pattern) { p in
        var j = 0
        while i < n {
            base.storeBytes(of: base.load(fromByteOffset: i, as: UInt8.self) ^ p[j], toByteOffset: i, as: UInt8.self)
            i &+= 1
            j &+= 1
        }
    }
}
