#if canImport(Glibc)
import Glibc
#endif

/// Telnet's command bytes (RFC 854) and the options the proxy knows by name.
public enum Telnet {
    public static let iac: UInt8 = 255
    public static let dont: UInt8 = 254
    public static let `do`: UInt8 = 253
    public static let wont: UInt8 = 252
    public static let will: UInt8 = 251
    public static let sb: UInt8 = 250
    public static let ga: UInt8 = 249
    public static let nop: UInt8 = 241
    public static let se: UInt8 = 240
    public static let eor: UInt8 = 239

    public enum Option {
        public static let echo: UInt8 = 1            // RFC 857
        public static let sga: UInt8 = 3             // RFC 858, suppress go-ahead
        public static let ttype: UInt8 = 24          // RFC 1091, terminal type
        public static let eor: UInt8 = 25            // RFC 885
        public static let naws: UInt8 = 31           // RFC 1073, window size
        public static let compress: UInt8 = 85       // MCCP v1
        public static let compress2: UInt8 = 86      // MCCP v2
    }

    /// `IS` and `SEND` of the terminal-type subnegotiation (RFC 1091).
    static let ttypeIs: UInt8 = 0
    static let ttypeSend: UInt8 = 1
}

/// The telnet side of a target in telnet mode (SPEC §3), as a value with no I/O.
///
/// `receive` takes the bytes the target sent, split anywhere, and hands back the plain data in
/// between the telnet commands, as slices of its input; what the filter must answer goes to
/// `replies`. Every command is removed from the data: IAC sequences, subnegotiations (until
/// their `IAC SE`, however long), GA, EOR, NOP. `IAC IAC` is one 255 data byte. `CR NUL`
/// becomes `CR` (RFC 854: NUL after a bare CR is padding); every other byte passes as it is.
///
/// Options follow RFC 1143 without the parts that only the side that asks needs: the proxy
/// never asks for an option itself, so it is never waiting for an answer, and each option of
/// each side is simply on or off. A request that would change nothing (WILL for an option
/// already on, WONT for one off, an answer to our own reply) gets no reply, so two correct
/// ends cannot loop. Accepted (what MUD clients accept):
/// - him: ECHO (the server echoes; it hides passwords with it) and SGA.
/// - us: SGA, TTYPE (answered with `terminalType`), NAWS (a fixed `width` × `height`, sent
///   once when the option turns on).
/// Everything else is refused (DONT/WONT), MCCP included: the proxy does not decompress.
public struct TelnetFilter {
    public enum Side { case us, him }

    private enum State: UInt8 {
        case data
        case iac
        case option       // after IAC WILL/WONT/DO/DONT
        case sbOption     // after IAC SB
        case sbData       // inside a subnegotiation
        case sbIAC        // IAC inside a subnegotiation
    }

    private var state = State.data
    /// The last data byte was CR: a NUL now is padding.
    private var afterCR = false
    /// WILL, WONT, DO or DONT, waiting for its option.
    private var verb: UInt8 = 0
    private var sbOption: UInt8 = 0
    /// Bytes of subnegotiation data so far (saturating), and the first of them.
    private var sbLength: UInt8 = 0
    private var sbFirst: UInt8 = 0
    /// One bit per accepted option and side that is on (`bit(_:_:)`). Refused options are
    /// always off, so they need no room.
    private var enabled: UInt8 = 0
    /// Bytes to send to the target; the caller sends them and clears this.
    public var replies: [UInt8] = []
    public let terminalType: [UInt8]
    public let width: UInt16
    public let height: UInt16

    public init(terminalType: String = "XTERM-256COLOR", width: UInt16 = 80, height: UInt16 = 24) {
        self.terminalType = Array(terminalType.utf8)
        self.width = width
        self.height = height
    }

    /// Whether `option` is on for `side`: `.us` for what we do (we said WILL), `.him` for what
    /// the target does (we said DO).
    public func isEnabled(_ option: UInt8, _ side: Side) -> Bool {
        guard let bit = TelnetFilter.bit(option, side) else { return false }
        return enabled & bit != 0
    }

    /// The state bit of an option the proxy accepts; nil for the ones it refuses.
    private static func bit(_ option: UInt8, _ side: Side) -> UInt8? {
        switch (side, option) {
        case (.him, Telnet.Option.echo): return 1 << 0
        case (.him, Telnet.Option.sga): return 1 << 1
        case (.us, Telnet.Option.sga): return 1 << 2
        case (.us, Telnet.Option.ttype): return 1 << 3
        case (.us, Telnet.Option.naws): return 1 << 4
        default: return nil
        }
    }

    /// Feeds bytes from the target. `data` gets the runs of plain data in order: slices of
    /// `input`, valid only during the call. Never more data than input.
    public mutating func receive(_ input: UnsafeRawBufferPointer, data: (UnsafeRawBufferPointer) -> Void) {
        let n = input.count
        var i = 0
        // Where a run began before `i` (the second byte of IAC IAC), or -1.
        var runStart = -1
        while i < n {
            if state == .data {
                let start = runStart >= 0 ? runStart : i
                runStart = -1
                var cr = afterCR
                while i < n {
                    let c = input[i]
                    if c == Telnet.iac || (c == 0 && cr) { break }
                    cr = c == 13
                    i += 1
                }
                afterCR = cr
                if i > start { data(UnsafeRawBufferPointer(rebasing: input[start..<i])) }
                guard i < n else { return }
                if input[i] == Telnet.iac { state = .iac } else { afterCR = false }  // the NUL of CR NUL goes
                i += 1
                continue
            }
            let b = input[i]
            i += 1
            switch state {
            case .data:
                break  // handled above
            case .iac:
                if b == Telnet.iac {
                    state = .data
                    afterCR = false
                    runStart = i - 1  // this 255 is data, the start of the next run
                } else {
                    command(b)
                }
            case .option:
                state = .data
                negotiate(verb, b)
            case .sbOption:
                sbOption = b
                sbLength = 0
                state = b == Telnet.iac ? .sbIAC : .sbData
            case .sbData:
                if b == Telnet.iac { state = .sbIAC } else { subnegotiationByte(b) }
            case .sbIAC:
                if b == Telnet.iac {
                    state = .sbData
                    subnegotiationByte(b)
                } else if b == Telnet.se {
                    state = .data
                    subnegotiationEnded()
                } else {
                    // IAC and a command inside SB: the target forgot SE. Drop the subnegotiation
                    // and take the command, so that the stream does not stay swallowed.
                    command(b)
                }
            }
        }
        if runStart >= 0 { data(UnsafeRawBufferPointer(rebasing: input[runStart..<n])) }  // input ended in IAC IAC
    }

    /// The byte after IAC (not IAC itself).
    private mutating func command(_ b: UInt8) {
        switch b {
        case Telnet.will, Telnet.wont, Telnet.do, Telnet.dont:
            verb = b
            state = .option
        case Telnet.sb: state = .sbOption
        default: state = .data  // GA, EOR, NOP, DM, AYT, a stray SE…: no data, no answer
        }
    }

    private mutating func subnegotiationByte(_ b: UInt8) {
        if sbLength == 0 { sbFirst = b }
        if sbLength < .max { sbLength += 1 }
    }

    private mutating func subnegotiationEnded() {
        // RFC 1091: answer SEND only once we said WILL TTYPE; the same name every time, which
        // tells a server that cycles through names that the list has ended.
        if sbOption == Telnet.Option.ttype, sbLength >= 1, sbFirst == Telnet.ttypeSend,
           isEnabled(Telnet.Option.ttype, .us) {
            replies += [Telnet.iac, Telnet.sb, Telnet.Option.ttype, Telnet.ttypeIs]
            appendEscaped(terminalType)
            replies += [Telnet.iac, Telnet.se]
        }
    }

    /// RFC 1143 for a side that never asks: agree to a request that turns an accepted option
    /// on, refuse one for any other option, acknowledge a request to turn one off, and say
    /// nothing where the state would not change.
    private mutating func negotiate(_ verb: UInt8, _ option: UInt8) {
        let side: Side = verb == Telnet.will || verb == Telnet.wont ? .him : .us
        let bit = TelnetFilter.bit(option, side)
        let on = bit.map { enabled & $0 != 0 } ?? false
        switch verb {
        case Telnet.will, Telnet.do:
            guard let bit else { return reply(verb == Telnet.will ? Telnet.dont : Telnet.wont, option) }
            guard !on else { return }
            enabled |= bit
            reply(verb == Telnet.will ? Telnet.do : Telnet.will, option)
            if verb == Telnet.do && option == Telnet.Option.naws { sendWindowSize() }
        default:  // WONT, DONT
            guard let bit, on else { return }
            enabled &= ~bit
            reply(verb == Telnet.wont ? Telnet.dont : Telnet.wont, option)
        }
    }

    private mutating func reply(_ verb: UInt8, _ option: UInt8) {
        replies += [Telnet.iac, verb, option]
    }

    /// `IAC SB NAWS <width> <height> IAC SE`, 16 bits each, big-endian (RFC 1073).
    private mutating func sendWindowSize() {
        replies += [Telnet.iac, Telnet.sb, Telnet.Option.naws]
        appendEscaped([UInt8(width >> 8), UInt8(width & 0xFF), UInt8(height >> 8), UInt8(height & 0xFF)])
        replies += [Telnet.iac, Telnet.se]
    }

    /// Subnegotiation data doubles 255 like the data stream does.
    private mutating func appendEscaped(_ bytes: [UInt8]) {
        for b in bytes {
            replies.append(b)
            if b == Telnet.iac { replies.append(b) }
        }
    }

    // MARK: Client → target

    /// Whether `input` holds a 255 byte, which must be sent as `IAC IAC`.
    public static func needsEscaping(_ input: UnsafeRawBufferPointer) -> Bool {
        guard let base = input.baseAddress, input.count > 0 else { return false }
        return memchr(base, Int32(Telnet.iac), input.count) != nil
    }

    /// Appends `input` to `out` with every 255 doubled. Callers check `needsEscaping` first and
    /// send input without 255 as it is.
    public static func escapeInput(_ input: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        var start = 0
        for i in 0..<input.count where input[i] == Telnet.iac {
            out.append(contentsOf: input[start...i])
            out.append(Telnet.iac)
            start = i + 1
        }
        out.append(contentsOf: input[start...])
    }
}
