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
        public static let newEnviron: UInt8 = 39     // RFC 1572, environment variables (MNES)
        public static let compress: UInt8 = 85       // MCCP v1
        public static let compress2: UInt8 = 86      // MCCP v2
        public static let gmcp: UInt8 = 201          // GMCP (SPEC §7)
    }

    /// `IS` and `SEND` of the terminal-type subnegotiation (RFC 1091).
    static let ttypeIs: UInt8 = 0
    static let ttypeSend: UInt8 = 1

    /// The most NEW-ENVIRON subnegotiation data kept (a `SEND` is a few short names).
    static let environSendLimit = 512

    /// The NEW-ENVIRON subnegotiation's commands (`IS`, `SEND`, `INFO`) and the bytes that mark
    /// out its lists (RFC 1572): `VAR` starts a well-known variable's name, `USERVAR` a user
    /// variable's, `VALUE` a value; `ESC` makes the next byte a plain part of a name or value.
    enum Environ {
        static let `is`: UInt8 = 0
        static let send: UInt8 = 1
        static let info: UInt8 = 2
        static let `var`: UInt8 = 0
        static let value: UInt8 = 1
        static let esc: UInt8 = 2
        static let uservar: UInt8 = 3
    }
}

/// The telnet side of a target in telnet mode (SPEC §3, §6), as a value with no I/O.
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
/// - us: SGA, TTYPE, NEW-ENVIRON, NAWS (a fixed `width` × `height`, sent once when the option
///   turns on).
/// Everything else is refused (DONT/WONT), MCCP included: the proxy does not decompress.
///
/// **TTYPE follows MTTS** (tintin.mudhalla.net/protocols/mtts). The Nth `SB TTYPE SEND` since
/// the option turned on is answered with the client's name `UVPROXYD`, then the terminal type
/// `XTERM-256COLOR` (the web client renders xterm's 256 colours), then `MTTS 909` for every
/// later one: ANSI (1) + UTF-8 (4) + 256 colours (8) + proxy (128) + truecolour (256) + MNES
/// (512), or `MTTS 905` without the UTF-8 bit when the target's charset is not UTF-8
/// (`utf8: false`). Repeating the last answer tells the server that the list has ended. A
/// server restarts the cycle as MTTS describes, by turning the option off and on again
/// (`DONT TTYPE`, `DO TTYPE`): the count starts again from the name.
///
/// **NEW-ENVIRON follows MNES** (tintin.mudhalla.net/protocols/mnes), whose point for a proxy is
/// `IPADDRESS`: the game learns the address of the player behind the proxy (MTTS bit 128 says
/// there is one). Only the side that said WILL answers, so a `SEND` before `DO NEW-ENVIRON`
/// gets nothing (RFC 1572). `IAC SB NEW-ENVIRON SEND <list> IAC SE` is answered with one
/// `IAC SB NEW-ENVIRON IS <answers> IAC SE`, one answer per entry of the list, in its order:
/// - `VAR IPADDRESS` → `VAR IPADDRESS VALUE <clientAddress>` (`VALUE` with nothing after it
///   when the address is unknown: defined, empty). MNES variables are well-known ones and MNES
///   servers ask for them with `VAR`; a server that asks with `USERVAR IPADDRESS` is answered
///   the same way under the type it asked with (RFC 1572 answers each entry as asked).
/// - Any other name, under either type → that type, the name, and an empty `VALUE` (SPEC §6:
///   "other variables are sent empty"); the proxy has no other variables to tell.
/// - `VAR` without a name (all well-known variables) → `VAR IPADDRESS VALUE <clientAddress>`;
///   `USERVAR` without a name (all user variables) → nothing, there are none.
/// - An empty list (`SEND IAC SE`: everything, which MNES servers use to ask for all its
///   variables) → `VAR IPADDRESS VALUE <clientAddress>`.
/// Names and values are escaped as RFC 1572 says (a `VAR`, `VALUE`, `ESC` or `USERVAR` byte
/// inside one follows an `ESC`) and 255 is doubled. `IS` and `INFO` from the target ask nothing.
///
/// Only NEW-ENVIRON's and GMCP's subnegotiation data is kept while it arrives (`sbBuffer`, at
/// most `Telnet.environSendLimit` and `GMCP.maxSubnegotiation` bytes); every other
/// subnegotiation costs a few counters. A `SEND` longer than that is answered as far as its
/// complete names go: the entries wholly inside the first `environSendLimit` bytes are
/// answered, the one that was cut is not (and a `SEND` with no complete entry gets no answer
/// at all).
///
/// **GMCP** (SPEC §7) only for a filter made with `gmcp: true`; without it the option is
/// refused like any other. With it the target's `WILL GMCP` is answered `DO GMCP` and at once
/// `IAC SB GMCP Core.Hello {"client":"uvproxyd","version":"<gmcpVersion>"} IAC SE`; `WONT GMCP`
/// is acknowledged and turns it off (a later `WILL` gets a new hello). The target's `DO GMCP`
/// is refused (`WONT`): the proxy is the client side, which does not send GMCP unasked. While
/// GMCP is on (`gmcpEnabled`), each `IAC SB GMCP <data> IAC SE` becomes a `GMCPMessage` in
/// `gmcpMessages`, with its place in the output of the `receive` call it ended in, and adds
/// nothing to the data. Its data is kept up to `GMCP.maxSubnegotiation` bytes; at the first
/// byte past that the message is dropped (its buffer freed at once) and the rest of the
/// subnegotiation is skipped as any other is, so the text after its `IAC SE` goes on as
/// always. A message with an empty package (`GMCPMessage`) is dropped too, and so is a GMCP
/// subnegotiation while GMCP is off (a server that sends it anyway, as the Evennia recording in
/// the tests does). None of this costs a session without GMCP anything: `gmcpMessages` stays an
/// empty array, which holds no storage.
public struct TelnetFilter {
    public enum Side { case us, him }

    /// Where the parser is between two bytes.
    public enum Phase: Equatable, Sendable {
        case data
        case iac
        case option       // after IAC WILL/WONT/DO/DONT
        case sbOption     // after IAC SB
        case sbData       // inside a subnegotiation
        case sbIAC        // IAC inside a subnegotiation
    }

    /// Bytes to send to the target; the caller sends them and clears this.
    public var replies: [UInt8] = []
    /// What the filter was made with, shared by its copies (it never changes): one pointer
    /// instead of five fields, which keeps the filter within 40 bytes.
    private let settings: Settings
    /// The data of the current subnegotiation, for the options whose data is read
    /// (`keptLength`), at most one byte over the bound for NEW-ENVIRON (a byte past it marks a
    /// cut), at most the bound for GMCP. Empty, with no storage, outside such a subnegotiation.
    private var sbBuffer: [UInt8] = []
    /// GMCP messages from the target (GMCP on only), in order: the caller handles them after
    /// each `receive` and clears this, as it does `replies`. Each one's `position` is its place
    /// in the output of the call that produced it, so leaving messages here across calls mixes
    /// up whose output they count in.
    public var gmcpMessages: [GMCPMessage] = []
    private var state = Phase.data
    /// WILL, WONT, DO or DONT, waiting for its option.
    private var verb: UInt8 = 0
    private var sbOption: UInt8 = 0
    /// Bytes of subnegotiation data so far (saturating), and the first of them.
    private var sbLength: UInt8 = 0
    private var sbFirst: UInt8 = 0
    /// One bit per accepted option and side that is on (`bit(_:_:)`). Refused options are
    /// always off, so they need no room.
    private var enabled: UInt8 = 0
    /// `SB TTYPE SEND`s answered since TTYPE turned on, up to 2 (the MTTS cycle's place).
    private var ttypeAnswers: UInt8 = 0
    /// `afterCR` and `sbKeep`, one bit each.
    private var flags: UInt8 = 0

    /// The last data byte was CR: a NUL now is padding.
    private var afterCR: Bool {
        get { flags & 1 != 0 }
        set { flags = newValue ? flags | 1 : flags & ~1 }
    }

    /// The current subnegotiation's data goes to `sbBuffer`.
    private var sbKeep: Bool {
        get { flags & 2 != 0 }
        set { flags = newValue ? flags | 2 : flags & ~2 }
    }

    private final class Settings: Sendable {
        let clientAddress: [UInt8]
        let utf8: Bool
        let width: UInt16
        let height: UInt16
        let gmcp: Bool
        let gmcpVersion: String

        init(clientAddress: [UInt8], utf8: Bool, width: UInt16, height: UInt16, gmcp: Bool, gmcpVersion: String) {
            self.clientAddress = clientAddress
            self.utf8 = utf8
            self.width = width
            self.height = height
            self.gmcp = gmcp
            self.gmcpVersion = gmcpVersion
        }
    }

    /// The client's address as MNES's `IPADDRESS` gives it (empty: unknown).
    public var clientAddress: [UInt8] { settings.clientAddress }
    public var width: UInt16 { settings.width }
    public var height: UInt16 { settings.height }
    /// The target's charset is UTF-8: the MTTS answer carries the UTF-8 bit.
    public var utf8: Bool { settings.utf8 }
    /// The filter speaks GMCP when the target offers it (it was made with `gmcp: true`).
    public var gmcp: Bool { settings.gmcp }
    /// The version its `Core.Hello` names.
    public var gmcpVersion: String { settings.gmcpVersion }
    /// GMCP is on: the target said `WILL GMCP` and we said `DO` (never without `gmcp`). Until
    /// then a client's GMCP message cannot be sent (SPEC §7: `409`).
    public var gmcpEnabled: Bool { isEnabled(Telnet.Option.gmcp, .him) }
    /// Bytes of the subnegotiation under way that the filter holds (tests and fuzzing: at
    /// most `GMCP.maxSubnegotiation`).
    var heldSubnegotiationBytes: Int { sbBuffer.count }

    /// `clientAddress`: the player's address for MNES (`""` when unknown); `utf8`: whether the
    /// target's charset is UTF-8 (MTTS bit 4); `width` × `height`: what NAWS reports; `gmcp`:
    /// accept the target's GMCP (SPEC §7) and greet it with a `Core.Hello` naming `gmcpVersion`
    /// (the daemon's version).
    public init(clientAddress: String = "", utf8: Bool = true, width: UInt16 = 80, height: UInt16 = 24,
                gmcp: Bool = false, gmcpVersion: String = "") {
        settings = Settings(clientAddress: Array(clientAddress.utf8), utf8: utf8, width: width, height: height,
                            gmcp: gmcp, gmcpVersion: gmcpVersion)
    }

    /// Whether `option` is on for `side`: `.us` for what we do (we said WILL), `.him` for what
    /// the target does (we said DO).
    public func isEnabled(_ option: UInt8, _ side: Side) -> Bool {
        guard let bit = TelnetFilter.bit(option, side) else { return false }
        return enabled & bit != 0
    }

    /// The state bit of an option; nil for the ones the proxy always refuses. GMCP's is
    /// used only with `gmcp` (`acceptedBit`).
    private static func bit(_ option: UInt8, _ side: Side) -> UInt8? {
        switch (side, option) {
        case (.him, Telnet.Option.echo): return 1 << 0
        case (.him, Telnet.Option.sga): return 1 << 1
        case (.us, Telnet.Option.sga): return 1 << 2
        case (.us, Telnet.Option.ttype): return 1 << 3
        case (.us, Telnet.Option.naws): return 1 << 4
        case (.us, Telnet.Option.newEnviron): return 1 << 5
        case (.him, Telnet.Option.gmcp): return 1 << 6
        default: return nil
        }
    }

    /// The state bit of an option this filter accepts; nil for the ones it refuses.
    private func acceptedBit(_ option: UInt8, _ side: Side) -> UInt8? {
        if option == Telnet.Option.gmcp && !settings.gmcp { return nil }
        return TelnetFilter.bit(option, side)
    }

    /// How many bytes of `option`'s subnegotiation data are kept for reading; 0 for the ones
    /// that are only skipped. NEW-ENVIRON's only while we said WILL (nothing else is answered),
    /// GMCP's only while the target's is on.
    private func keptLength(_ option: UInt8) -> Int {
        switch option {
        case Telnet.Option.newEnviron where isEnabled(option, .us): return Telnet.environSendLimit
        case Telnet.Option.gmcp where isEnabled(option, .him): return GMCP.maxSubnegotiation
        default: return 0
        }
    }

    /// Feeds bytes from the target. `data` gets the runs of plain data in order: slices of
    /// `input`, valid only during the call. Never more data than input. GMCP messages that end
    /// in `input` are appended to `gmcpMessages`, each with the number of data bytes handed to
    /// `data` before it in this call.
    public mutating func receive(_ input: UnsafeRawBufferPointer, data: (UnsafeRawBufferPointer) -> Void) {
        let n = input.count
        var i = 0
        // Where a run began before `i` (the second byte of IAC IAC), or -1.
        var runStart = -1
        // Data bytes handed out so far in this call (a GMCP message's `position`).
        var handedOut = 0
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
                if i > start {
                    data(UnsafeRawBufferPointer(rebasing: input[start..<i]))
                    handedOut += i - start
                }
                guard i < n else { return }
                if input[i] == Telnet.iac { state = .iac } else { afterCR = false }  // the NUL of CR NUL goes
                i += 1
                continue
            }
            if state == .sbData {
                // Subnegotiation data up to the next IAC, at once (a GMCP message can be long).
                let start = i
                while i < n && input[i] != Telnet.iac { i += 1 }
                if i > start { subnegotiationRun(UnsafeRawBufferPointer(rebasing: input[start..<i])) }
                guard i < n else { return }
                state = .sbIAC
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
                sbKeep = keptLength(b) > 0
                state = b == Telnet.iac ? .sbIAC : .sbData
            case .sbData:
                if b == Telnet.iac { state = .sbIAC } else { subnegotiationByte(b) }
            case .sbIAC:
                if b == Telnet.iac {
                    state = .sbData
                    subnegotiationByte(b)
                } else if b == Telnet.se {
                    state = .data
                    subnegotiationEnded(position: handedOut)
                } else {
                    // IAC and a command inside SB: the target forgot SE. Drop the subnegotiation
                    // and take the command, so that the stream does not stay swallowed.
                    dropSubnegotiationData()
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
        withUnsafeBytes(of: b) { subnegotiationRun($0) }
    }

    /// Subnegotiation data (`IAC IAC` already undone), at least one byte.
    private mutating func subnegotiationRun(_ run: UnsafeRawBufferPointer) {
        if sbLength == 0 { sbFirst = run[0] }
        sbLength = UInt8(min(Int(sbLength) + run.count, Int(UInt8.max)))
        guard sbKeep else { return }
        let bound = keptLength(sbOption)
        if sbOption == Telnet.Option.gmcp {
            // Nothing past the bound is held: the message is dropped at its first byte over.
            guard sbBuffer.count + run.count <= bound else { return dropSubnegotiationData() }
            sbBuffer.append(contentsOf: run)
        } else {
            // One byte past the bound is kept, to tell a cut from data that just fits.
            let room = bound + 1 - sbBuffer.count
            if room > 0 { sbBuffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: run.prefix(room))) }
        }
    }

    private mutating func subnegotiationEnded(position: Int) {
        // RFC 1091: answer SEND only once we said WILL TTYPE.
        if sbOption == Telnet.Option.ttype, sbLength >= 1, sbFirst == Telnet.ttypeSend,
           isEnabled(Telnet.Option.ttype, .us) {
            replies += [Telnet.iac, Telnet.sb, Telnet.Option.ttype, Telnet.ttypeIs]
            appendEscaped(nextTerminalType())
            replies += [Telnet.iac, Telnet.se]
        }
        if sbKeep && sbOption == Telnet.Option.newEnviron { answerEnvironment() }
        if sbKeep && sbOption == Telnet.Option.gmcp {
            // The buffer becomes the message's (no copy); the next one starts a new buffer.
            if let message = GMCPMessage(position: position, data: sbBuffer) { gmcpMessages.append(message) }
            sbBuffer = []
        }
        dropSubnegotiationData()
    }

    private mutating func dropSubnegotiationData() {
        sbKeep = false
        if sbBuffer.capacity > 0 { sbBuffer = [] }  // frees it: the next one may be long away
    }

    private static let mttsNames: [[UInt8]] = [Array("UVPROXYD".utf8), Array("XTERM-256COLOR".utf8)]
    private static let mttsUTF8 = Array("MTTS 909".utf8)  // ANSI, UTF-8, 256 colours, proxy, truecolour, MNES
    private static let mttsNoUTF8 = Array("MTTS 905".utf8)  // the same without UTF-8

    /// The MTTS cycle: name, terminal type, then the capability bits for good.
    private mutating func nextTerminalType() -> [UInt8] {
        let n = Int(ttypeAnswers)
        if ttypeAnswers < 2 { ttypeAnswers += 1 }
        if n < TelnetFilter.mttsNames.count { return TelnetFilter.mttsNames[n] }
        return utf8 ? TelnetFilter.mttsUTF8 : TelnetFilter.mttsNoUTF8
    }

    private static let ipAddress = Array("IPADDRESS".utf8)

    /// Answers `SEND` (the whole of `sbBuffer`) as the type's doc comment says.
    private mutating func answerEnvironment() {
        guard sbBuffer.first == Telnet.Environ.send else { return }  // IS, INFO: no question
        // The byte past the bound, if any, ends the entry before it (a type) or belongs to the
        // last one, which was cut.
        let cut = sbBuffer.count > Telnet.environSendLimit
        var answer: [UInt8] = [Telnet.iac, Telnet.sb, Telnet.Option.newEnviron, Telnet.Environ.is]
        var entries = 0
        var type: UInt8?  // of the entry being read; nil before the first
        var name: [UInt8] = []
        var inName = false  // false after a VALUE, which has no place in a SEND: skipped to the next type
        var i = 1
        while i < sbBuffer.count {
            let b = sbBuffer[i]
            i += 1
            switch b {
            case Telnet.Environ.var, Telnet.Environ.uservar:
                if let type {
                    entries += 1
                    appendEnvironAnswer(type: type, name: name, to: &answer)
                }
                type = b
                name.removeAll(keepingCapacity: true)
                inName = true
            case Telnet.Environ.value:
                inName = false
            case Telnet.Environ.esc:
                if i < sbBuffer.count && inName { name.append(sbBuffer[i]) }
                i += 1
            default:
                if inName { name.append(b) }
            }
        }
        if let type, !cut {  // the last entry ends at IAC SE; after a cut it is not whole
            entries += 1
            appendEnvironAnswer(type: type, name: name, to: &answer)
        }
        if entries == 0 {
            guard !cut else { return }  // nothing whole to answer
            appendEnvironAnswer(type: Telnet.Environ.var, name: [], to: &answer)  // an empty list: everything
        }
        replies += answer
        replies += [Telnet.iac, Telnet.se]
    }

    /// One entry's answer: `IPADDRESS` (and a nameless `VAR`: all well-known variables, which
    /// is `IPADDRESS`) with the client's address, any other name with an empty value, a
    /// nameless `USERVAR` with nothing (there are no user variables).
    private func appendEnvironAnswer(type: UInt8, name: [UInt8], to out: inout [UInt8]) {
        if name.isEmpty {
            guard type == Telnet.Environ.var else { return }
            return appendEnvironAnswer(type: type, name: TelnetFilter.ipAddress, to: &out)
        }
        out.append(type)
        TelnetFilter.appendEnvironEscaped(name, to: &out)
        out.append(Telnet.Environ.value)
        if name == TelnetFilter.ipAddress { TelnetFilter.appendEnvironEscaped(clientAddress, to: &out) }
    }

    /// RFC 1572's escaping (`ESC` before `VAR`, `VALUE`, `ESC`, `USERVAR`) and 255 doubled.
    private static func appendEnvironEscaped(_ bytes: [UInt8], to out: inout [UInt8]) {
        for b in bytes {
            if b <= Telnet.Environ.uservar { out.append(Telnet.Environ.esc) }
            out.append(b)
            if b == Telnet.iac { out.append(b) }
        }
    }

    /// RFC 1143 for a side that never asks: agree to a request that turns an accepted option
    /// on, refuse one for any other option, acknowledge a request to turn one off, and say
    /// nothing where the state would not change.
    private mutating func negotiate(_ verb: UInt8, _ option: UInt8) {
        let side: Side = verb == Telnet.will || verb == Telnet.wont ? .him : .us
        let bit = acceptedBit(option, side)
        let on = bit.map { enabled & $0 != 0 } ?? false
        switch verb {
        case Telnet.will, Telnet.do:
            guard let bit else { return reply(verb == Telnet.will ? Telnet.dont : Telnet.wont, option) }
            guard !on else { return }
            enabled |= bit
            if verb == Telnet.do && option == Telnet.Option.ttype { ttypeAnswers = 0 }  // MTTS: from the name again
            reply(verb == Telnet.will ? Telnet.do : Telnet.will, option)
            if verb == Telnet.do && option == Telnet.Option.naws { sendWindowSize() }
            if verb == Telnet.will && option == Telnet.Option.gmcp { sendHello() }
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

    /// `IAC SB GMCP Core.Hello {"client":"uvproxyd","version":"…"} IAC SE` (SPEC §7).
    private mutating func sendHello() {
        replies += [Telnet.iac, Telnet.sb, Telnet.Option.gmcp]
        appendEscaped(GMCP.hello(version: settings.gmcpVersion))
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

// MARK: Hand-over (SPEC §9)

extension TelnetFilter {
    /// Everything a filter holds, as plain values: what an in-place upgrade carries to the new
    /// process (`SessionSnapshot`), so that a filter rebuilt from it answers and filters what
    /// follows exactly as this one would have. Options are listed by code rather than as the
    /// filter's own bits, so that its layout may change without changing the upgrade format.
    public struct State: Equatable, Sendable {
        public var phase: Phase
        /// The last data byte was CR (a NUL now is padding).
        public var afterCR: Bool
        /// WILL, WONT, DO or DONT waiting for its option (meaningful in `.option`).
        public var verb: UInt8
        /// The current subnegotiation's option, its data length so far (saturating at 255),
        /// its first data byte, and whether its data is being kept in `subnegotiationData`.
        public var subnegotiationOption: UInt8
        public var subnegotiationLength: UInt8
        public var subnegotiationFirst: UInt8
        public var keepsSubnegotiation: Bool
        public var subnegotiationData: [UInt8]
        /// The options that are on: ours (we said WILL) and the target's (we said DO), by code,
        /// ascending. On import, an option this filter does not accept is left off.
        public var enabledUs: [UInt8]
        public var enabledHim: [UInt8]
        /// `SB TTYPE SEND`s answered since TTYPE turned on (the MTTS cycle's place, 0…2).
        public var terminalTypeAnswers: UInt8
        /// Replies not yet handed to the target (normally empty between reads).
        public var replies: [UInt8]
        /// What the filter was made with.
        public var clientAddress: [UInt8]
        public var utf8: Bool
        public var width: UInt16
        public var height: UInt16
        /// GMCP: whether the filter accepts it, and the version its `Core.Hello` names. Whether
        /// it is on is `enabledHim` holding 201; a message under way is the subnegotiation's
        /// (`subnegotiationData`, at most `GMCP.maxSubnegotiation` bytes, kept while
        /// `keepsSubnegotiation`).
        public var gmcp: Bool
        public var gmcpVersion: String
        /// Messages not yet taken by the caller (normally none between reads).
        public var gmcpMessages: [GMCPMessage]

        public init(phase: Phase = .data, afterCR: Bool = false, verb: UInt8 = 0, subnegotiationOption: UInt8 = 0,
                    subnegotiationLength: UInt8 = 0, subnegotiationFirst: UInt8 = 0, keepsSubnegotiation: Bool = false,
                    subnegotiationData: [UInt8] = [], enabledUs: [UInt8] = [], enabledHim: [UInt8] = [],
                    terminalTypeAnswers: UInt8 = 0, replies: [UInt8] = [], clientAddress: [UInt8] = [],
                    utf8: Bool = true, width: UInt16 = 80, height: UInt16 = 24, gmcp: Bool = false,
                    gmcpVersion: String = "", gmcpMessages: [GMCPMessage] = []) {
            self.phase = phase
            self.afterCR = afterCR
            self.verb = verb
            self.subnegotiationOption = subnegotiationOption
            self.subnegotiationLength = subnegotiationLength
            self.subnegotiationFirst = subnegotiationFirst
            self.keepsSubnegotiation = keepsSubnegotiation
            self.subnegotiationData = subnegotiationData
            self.enabledUs = enabledUs
            self.enabledHim = enabledHim
            self.terminalTypeAnswers = terminalTypeAnswers
            self.replies = replies
            self.clientAddress = clientAddress
            self.utf8 = utf8
            self.width = width
            self.height = height
            self.gmcp = gmcp
            self.gmcpVersion = gmcpVersion
            self.gmcpMessages = gmcpMessages
        }
    }

    /// Every option code the filter can turn on, per side.
    private static let acceptedOptions: [UInt8] = [
        Telnet.Option.echo, Telnet.Option.sga, Telnet.Option.ttype, Telnet.Option.naws, Telnet.Option.newEnviron,
        Telnet.Option.gmcp,
    ].sorted()

    /// This filter's state as values.
    public func snapshot() -> State {
        State(phase: state, afterCR: afterCR, verb: verb, subnegotiationOption: sbOption,
              subnegotiationLength: sbLength, subnegotiationFirst: sbFirst, keepsSubnegotiation: sbKeep,
              subnegotiationData: sbBuffer,
              enabledUs: TelnetFilter.acceptedOptions.filter { isEnabled($0, .us) },
              enabledHim: TelnetFilter.acceptedOptions.filter { isEnabled($0, .him) },
              terminalTypeAnswers: ttypeAnswers, replies: replies, clientAddress: clientAddress,
              utf8: utf8, width: width, height: height, gmcp: gmcp, gmcpVersion: gmcpVersion,
              gmcpMessages: gmcpMessages)
    }

    /// A filter that goes on where the one `state` was taken from left off. A GMCP message
    /// under way that this filter would not be keeping (GMCP off, or data over the bound) is
    /// dropped, as it would have been.
    public init(restoring state: State) {
        settings = Settings(clientAddress: state.clientAddress, utf8: state.utf8, width: state.width,
                            height: state.height, gmcp: state.gmcp, gmcpVersion: state.gmcpVersion)
        replies = state.replies
        gmcpMessages = state.gmcpMessages
        sbBuffer = state.subnegotiationData
        self.state = state.phase
        afterCR = state.afterCR
        verb = state.verb
        sbOption = state.subnegotiationOption
        sbLength = state.subnegotiationLength
        sbFirst = state.subnegotiationFirst
        sbKeep = state.keepsSubnegotiation
        ttypeAnswers = state.terminalTypeAnswers
        enabled = 0
        for option in state.enabledUs { enabled |= acceptedBit(option, .us) ?? 0 }
        for option in state.enabledHim { enabled |= acceptedBit(option, .him) ?? 0 }
        if sbKeep && sbOption == Telnet.Option.gmcp && sbBuffer.count > keptLength(sbOption) {
            dropSubnegotiationData()
        }
    }
}
