import FuzzSupport
@testable import UVProxy

// The telnet filter in both directions (docs/RELIABILITY.md, "Fuzzing").
//
// Input: byte 0 seeds the cuts and picks the filter's settings (a client address for MNES:
// none, an IPv4 one, or one full of NEW-ENVIRON's special bytes; a UTF-8 target or not, for
// MTTS; GMCP accepted or not, bit 3; with bits 3, 4 and 5, each of the first five 0xF5 bytes
// is followed by 16 KiB of `a`, so that inputs of a few KiB reach GMCP's 64 KiB bound), the rest is
// what a target sends (and, for the other direction, what a client sends as input). Inputs that
// grow past 8 KiB that way are cut into pieces of up to 4 KiB instead of single bytes (and up to
// 1 KiB instead of 16 bytes), or a run would take seconds.
// Invariants, target → client (`receive`):
// - the data and the replies do not depend on how the bytes are cut (whole, one byte at a
//   time, random pieces);
// - no call hands out more data than it was given;
// - the data holds no telnet command: encoded again (255 doubled, CR NUL as CR NUL NUL) and fed
//   to a fresh filter it comes back unchanged, with no reply;
// - the replies are only commands: fed to a fresh filter they give no data, and they are
//   well formed (IAC verb option, or IAC SB … IAC SE with 255 doubled inside);
// - the subnegotiations among them are answers we may give: TTYPE IS with a name of the MTTS
//   cycle, NEW-ENVIRON IS, NAWS with four bytes, each only while we have said WILL for it
//   (RFC 1091, RFC 1572, RFC 1073), and GMCP's Core.Hello only while we have said DO GMCP,
//   which only a filter with GMCP says;
// GMCP (SPEC §7):
// - the messages, at their offsets in the data, do not depend on the cuts; without GMCP there
//   are none; they are the ones a plain reading of the stream finds (`referenceMessages`, 64 KiB
//   bound included);
// - each is well formed: a package of at least one byte and no whitespace, no payload or one
//   that is not blank, at most 64 KiB of data, a position within its call's output and never
//   before the previous message's;
// - the data and the messages' data together are never more than the input so far, and the
//   filter never holds more than 64 KiB of a message under way;
// - data and messages written again as a target would (each message as IAC SB GMCP … IAC SE
//   at its offset, after IAC WILL GMCP) come back the same from a fresh filter;
// - a payload the JSON validator accepts, minified, is still accepted and minifies to itself;
//   every message written as the API's JSON (`GMCPLog.Message.appendJSON`) is accepted, and its
//   package and raw text are valid JSON string contents (FuzzSupport's own check); the log and
//   state stay within their bounds; the input itself goes through the validator (no trap,
//   however deep).
// Client → target (`escapeInput`): `needsEscaping` is true exactly when there is a 255; the
// escaped bytes, cut anywhere, come out of a fresh filter as the input itself (with a NUL after
// CR dropped, as RFC 854 says a receiver does), with no reply.

struct Message: Equatable, CustomStringConvertible {
    var offset: Int
    var data: [UInt8]
    var description: String { "@\(offset) \(short(data))" }
}

/// Bytes for a failure message: a long message (or its data) would fill the log.
func short(_ b: [UInt8]) -> String { b.count <= 48 ? "\(b)" : "\(b.count) bytes \(Array(b.prefix(48)))…" }
func short(_ m: [Message]) -> String { m.count <= 8 ? "\(m)" : "\(m.count) messages \(Array(m.prefix(8)))…" }

struct Run {
    var data: [UInt8] = []
    var replies: [UInt8] = []
    var messages: [Message] = []
}

let gmcpVersion = "fz\"1\u{1}"

/// The filter for a seed (the same for every cut of one input).
func makeFilter(_ seed: UInt8) -> TelnetFilter {
    let addresses = ["", "192.0.2.1", "a\u{0}b\u{1}c\u{2}d\u{3}e"]
    return TelnetFilter(clientAddress: addresses[Int(seed % 3)], utf8: seed & 4 == 0, gmcp: seed & 8 != 0,
                        gmcpVersion: gmcpVersion)
}

func filter(_ bytes: UnsafeRawBufferPointer, seed: UInt8,
            cut: (UnsafeRawBufferPointer, (UnsafeRawBufferPointer) -> Void) -> Void) -> Run {
    var f = makeFilter(seed)
    var run = Run()
    var input = 0
    var messageBytes = 0
    cut(bytes) { piece in
        var given = 0
        f.receive(piece) { d in
            given += d.count
            run.data.append(contentsOf: d)
        }
        input += piece.count
        fuzzCheck(given <= piece.count, "filter handed out \(given) data bytes for \(piece.count) input bytes")
        var last = 0
        for m in f.gmcpMessages {
            fuzzCheck(seed & 8 != 0, "a GMCP message from a filter without GMCP")
            fuzzCheck(m.position >= last && m.position <= given, "position \(m.position) after \(last), output \(given)")
            last = m.position
            fuzzCheck(m.packageCount > 0 && !m.package.contains(where: JSON.isWhitespace), "a bad package: \(short(m.data))")
            fuzzCheck(m.payload.map { !JSON.isBlank($0) } ?? true, "a blank payload")
            fuzzCheck(m.data.count <= GMCP.maxSubnegotiation, "a message of \(m.data.count) bytes")
            messageBytes += m.data.count
            run.messages.append(Message(offset: run.data.count - given + m.position, data: m.data))
        }
        f.gmcpMessages.removeAll()
        fuzzCheck(run.data.count + messageBytes <= input, "more out (\(run.data.count) + \(messageBytes)) than in (\(input))")
        fuzzCheck(f.heldSubnegotiationBytes <= max(GMCP.maxSubnegotiation, Telnet.environSendLimit + 1),
                  "holds \(f.heldSubnegotiationBytes) bytes of a subnegotiation")
        run.replies += f.replies
        f.replies.removeAll()
    }
    return run
}

/// `data` and `messages` as a target sends them: 255 doubled, CR NUL as CR NUL NUL (the
/// padding NUL after a message that follows the CR), each message as IAC SB GMCP … IAC SE
/// before the data byte at its offset; GMCP offered first.
func encodeTarget(_ data: [UInt8], _ messages: [Message]) -> [UInt8] {
    var out: [UInt8] = [Telnet.iac, Telnet.will, GMCP.option]
    var m = 0
    for i in 0...data.count {
        while m < messages.count && messages[m].offset == i {
            out += [Telnet.iac, Telnet.sb, GMCP.option]
            messages[m].data.withUnsafeBytes { TelnetFilter.escapeInput($0, into: &out) }
            out += [Telnet.iac, Telnet.se]
            m += 1
        }
        guard i < data.count else { break }
        if data[i] == 0 && i > 0 && data[i - 1] == 13 { out.append(0) }
        out.append(data[i])
        if data[i] == Telnet.iac { out.append(data[i]) }
    }
    return out
}

/// The GMCP messages in `input` as a plain reading of the telnet stream finds them, a reference
/// for the filter's: GMCP on from `WILL GMCP` to `WONT GMCP` (with `gmcp` only), a
/// subnegotiation for it that starts while it is on and ends with `IAC SE` is a message if its
/// data (255 doubled undone) is at most 64 KiB and starts with a package; `IAC` and another
/// command inside it ends it without a message and is taken as that command.
func referenceMessages(_ input: UnsafeRawBufferPointer, gmcp: Bool) -> [[UInt8]] {
    var messages: [[UInt8]] = []
    var on = false
    var state = 0  // 0 data, 1 after IAC, 2 after WILL/WONT/DO/DONT, 3 after SB, 4 in SB, 5 IAC in SB
    var verb: UInt8 = 0
    var keep = false
    var data: [UInt8] = []
    func command(_ b: UInt8) {
        switch b {
        case Telnet.will, Telnet.wont, Telnet.do, Telnet.dont: verb = b; state = 2
        case Telnet.sb: state = 3
        default: state = 0
        }
    }
    for b in input {
        switch state {
        case 0: if b == Telnet.iac { state = 1 }
        case 1: if b == Telnet.iac { state = 0 } else { command(b) }
        case 2:
            state = 0
            if gmcp && b == GMCP.option && verb == Telnet.will { on = true }
            if b == GMCP.option && verb == Telnet.wont { on = false }
        case 3:
            keep = on && b == GMCP.option
            data = []
            state = b == Telnet.iac ? 5 : 4
        case 4:
            if b == Telnet.iac { state = 5 } else { data.append(b) }
        default:
            if b == Telnet.iac {
                state = 4
                data.append(b)
            } else if b == Telnet.se {
                state = 0
                if keep && data.count <= 65536, let first = data.first, !JSON.isWhitespace(first) { messages.append(data) }
            } else {
                command(b)
            }
        }
    }
    return messages
}

/// The JSON the messages make, checked; and the log's bounds.
func checkJSON(_ messages: [Message]) {
    var log = GMCPLog(limits: GMCPLog.Limits(messages: 4, messageBytes: 200, packages: 3, stateBytes: 300))
    for (i, m) in messages.enumerated() {
        guard let message = GMCPMessage(position: 0, data: m.data) else {
            fuzzCheck(false, "a message that is none: \(short(m.data))")
            return
        }
        if let payload = message.payload, JSON.isValid(payload) {
            var once: [UInt8] = []
            JSON.appendMinified(payload, into: &once)
            var twice: [UInt8] = []
            JSON.appendMinified(once, into: &twice)
            fuzzCheck(JSON.isValid(once) && once == twice, "minified JSON: \(short(Array(payload))) → \(short(once)) → \(short(twice))")
        }
        log.append(message, offset: UInt64(m.offset))
        fuzzCheck(log.count <= 4 && (log.messageBytes <= 200 || log.count == 1), "log bounds: \(log.count), \(log.messageBytes)")
        fuzzCheck(log.stateBytes <= 300 && log.packageCount <= 3, "state bounds: \(log.stateBytes), \(log.packageCount)")
        fuzzCheck(log.next == UInt64(i + 1), "seq")
        var json: [UInt8] = []
        log.message(UInt64(i))!.appendJSON(into: &json)
        fuzzCheck(JSON.isValid(json), "the API's JSON for \(short(m.data)): \(short(json))")
        var name: [UInt8] = []
        JSON.appendString(message.package, into: &name)
        fuzzCheck(JSONString.problem(Array(name.dropFirst().dropLast())) == nil, "package string: \(short(name))")
    }
    var state: [UInt8] = []
    log.appendStateJSON(into: &state)
    fuzzCheck(JSON.isValid(state), "the state's JSON: \(short(state))")
}

func whole(_ b: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) { body(b) }
func bytewise(_ b: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
    for i in 0..<b.count { body(UnsafeRawBufferPointer(rebasing: b[i..<(i + 1)])) }
}

/// Whether `r` is a sequence of well-formed telnet commands.
func wellFormedReplies(_ r: [UInt8]) -> Bool {
    var i = 0
    while i < r.count {
        guard r[i] == Telnet.iac, i + 1 < r.count else { return false }
        switch r[i + 1] {
        case Telnet.will, Telnet.wont, Telnet.do, Telnet.dont:
            guard i + 2 < r.count else { return false }
            i += 3
        case Telnet.sb:
            i += 2
            guard i < r.count, r[i] != Telnet.iac else { return false }  // the option
            i += 1
            while true {
                guard i + 1 < r.count else { return false }
                if r[i] == Telnet.iac {
                    if r[i + 1] == Telnet.se { i += 2; break }
                    guard r[i + 1] == Telnet.iac else { return false }
                    i += 2
                } else {
                    i += 1
                }
            }
        default:
            return false
        }
    }
    return true
}

/// The subnegotiations in well-formed replies, with IAC IAC undone, each with whether we had
/// said WILL for its option (and not WONT since) when it was sent, or for GMCP, where we are
/// the side that says DO, DO (and not DONT since).
func subnegotiations(_ r: [UInt8]) -> [(option: UInt8, data: [UInt8], willing: Bool)] {
    var out: [(option: UInt8, data: [UInt8], willing: Bool)] = []
    var will = Set<UInt8>()
    var did = Set<UInt8>()
    var i = 0
    while i + 2 < r.count {
        switch r[i + 1] {
        case Telnet.will: will.insert(r[i + 2]); i += 3
        case Telnet.wont: will.remove(r[i + 2]); i += 3
        case Telnet.do: did.insert(r[i + 2]); i += 3
        case Telnet.dont: did.remove(r[i + 2]); i += 3
        case Telnet.sb:
            let option = r[i + 2]
            var data: [UInt8] = []
            i += 3
            while !(r[i] == Telnet.iac && r[i + 1] == Telnet.se) {
                data.append(r[i])
                i += r[i] == Telnet.iac ? 2 : 1
            }
            i += 2
            out.append((option, data, option == GMCP.option ? did.contains(option) : will.contains(option)))
        default: i += 3
        }
    }
    return out
}

let mttsNames: Set<[UInt8]> = Set(["UVPROXYD", "XTERM-256COLOR", "MTTS 909", "MTTS 905"].map { Array($0.utf8) })

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTelnet(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    guard input.count >= 1 else { return 0 }
    let seed = input[0]
    var expanded: [UInt8] = []
    if seed & 0x38 == 0x38 {
        var markers = 0
        for b in input[1...] {
            expanded.append(b)
            if b == 0xF5 && markers < 5 {
                markers += 1
                expanded += repeatElement(0x61, count: 16 * 1024)
            }
        }
    }
    return expanded.isEmpty ? check(seed, UnsafeRawBufferPointer(rebasing: input[1...]))
                            : expanded.withUnsafeBytes { check(seed, $0) }
}

func check(_ seed: UInt8, _ payload: UnsafeRawBufferPointer) -> CInt {
    // Target → client.
    let big = payload.count > 8192
    let a = filter(payload, seed: seed, cut: whole)
    var coarse = Splitter(seed: seed &+ 2, length: payload.count)
    let b = big ? filter(payload, seed: seed) { bytes, body in forEachPiece(bytes, &coarse, maxPiece: 4096, body) }
                : filter(payload, seed: seed, cut: bytewise)
    var splitter = Splitter(seed: seed, length: payload.count)
    let c = filter(payload, seed: seed) { bytes, body in forEachPiece(bytes, &splitter, maxPiece: big ? 1024 : 16, body) }
    fuzzCheck(a.data == b.data && a.data == c.data, "data depends on the cuts: \(short(a.data)) / \(short(b.data)) / \(short(c.data))")
    fuzzCheck(a.replies == b.replies && a.replies == c.replies,
              "replies depend on the cuts: \(a.replies) / \(b.replies) / \(c.replies)")
    fuzzCheck(a.messages == b.messages && a.messages == c.messages,
              "messages depend on the cuts: \(short(a.messages)) / \(short(b.messages)) / \(short(c.messages))")
    let reference = referenceMessages(payload, gmcp: seed & 8 != 0)
    fuzzCheck(a.messages.map(\.data) == reference,
              "messages \(short(a.messages)) where a plain reading finds \(reference.map(short))")
    if seed & 8 != 0 {
        let again = encodeTarget(a.data, a.messages).withUnsafeBytes { filter($0, seed: seed, cut: whole) }
        fuzzCheck(again.data == a.data && again.messages == a.messages,
                  "data and messages written again: \(short(a.data)) \(short(a.messages)) → \(short(again.data)) \(short(again.messages))")
        checkJSON(a.messages)
    }
    var deep: [UInt8] = []
    if JSON.isValid(payload) {
        JSON.appendMinified(payload, into: &deep)
        fuzzCheck(JSON.isValid(deep), "minified input is not JSON: \(short(deep))")
    }
    // Encoded again as a telnet sender must (255 doubled; a CR followed by a NUL data byte sent
    // as CR NUL NUL, RFC 854), the data comes back unchanged from a fresh filter, with no reply.
    var encoded: [UInt8] = []
    a.data.withUnsafeBytes { TelnetFilter.escapeInput($0, into: &encoded) }
    var i = 0
    while i + 1 < encoded.count {
        if encoded[i] == 13 && encoded[i + 1] == 0 { encoded.insert(0, at: i + 1); i += 1 }
        i += 1
    }
    let again = encoded.withUnsafeBytes { filter($0, seed: seed, cut: whole) }
    fuzzCheck(again.data == a.data && again.replies.isEmpty, "the data holds a telnet command: \(short(a.data))")
    fuzzCheck(wellFormedReplies(a.replies), "malformed replies: \(a.replies)")
    for sb in subnegotiations(a.replies) {
        fuzzCheck(sb.willing, "a subnegotiation for option \(sb.option) we did not say WILL to: \(a.replies)")
        switch sb.option {
        case Telnet.Option.ttype:
            fuzzCheck(sb.data.first == 0 && mttsNames.contains(Array(sb.data.dropFirst())), "a TTYPE answer off the MTTS cycle: \(sb.data)")
        case Telnet.Option.newEnviron:
            fuzzCheck(sb.data.first == 0, "a NEW-ENVIRON reply that is not IS: \(sb.data)")
        case Telnet.Option.naws:
            fuzzCheck(sb.data.count == 4, "a NAWS reply of \(sb.data.count) bytes")
        case GMCP.option:
            fuzzCheck(sb.data == GMCP.hello(version: gmcpVersion), "a GMCP reply that is not the hello: \(sb.data)")
        default:
            fuzzCheck(false, "a subnegotiation for option \(sb.option): \(a.replies)")
        }
    }
    let fromReplies = a.replies.withUnsafeBytes { filter($0, seed: seed, cut: whole) }
    fuzzCheck(fromReplies.data.isEmpty, "replies carry data: \(a.replies)")

    // Client → target.
    fuzzCheck(TelnetFilter.needsEscaping(payload) == payload.contains(Telnet.iac), "needsEscaping is wrong")
    var out: [UInt8] = []
    TelnetFilter.escapeInput(payload, into: &out)
    var expected: [UInt8] = []
    var afterCR = false
    for byte in payload {
        if byte == 0 && afterCR { afterCR = false; continue }
        expected.append(byte)
        afterCR = byte == 13
    }
    var splitter2 = Splitter(seed: seed &+ 1, length: out.count)
    let round = out.withUnsafeBytes { bytes in
        filter(bytes, seed: seed) { b, body in forEachPiece(b, &splitter2, maxPiece: big ? 1024 : 16, body) }
    }
    fuzzCheck(round.data == expected && round.replies.isEmpty,
              "escapeInput does not round-trip: \(short(Array(payload))) → \(short(out)) → \(short(round.data))")
    return 0
}
