import FuzzSupport
@testable import UVProxy

// The telnet filter in both directions (docs/RELIABILITY.md, "Fuzzing").
//
// Input: byte 0 seeds the cuts and picks the filter's settings (a client address for MNES:
// none, an IPv4 one, or one full of NEW-ENVIRON's special bytes; a UTF-8 target or not, for
// MTTS), the rest is what a target sends (and, for the other direction, what a client sends as
// input).
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
//   (RFC 1091, RFC 1572, RFC 1073).
// Client → target (`escapeInput`): `needsEscaping` is true exactly when there is a 255; the
// escaped bytes, cut anywhere, come out of a fresh filter as the input itself (with a NUL after
// CR dropped, as RFC 854 says a receiver does), with no reply.

struct Run {
    var data: [UInt8] = []
    var replies: [UInt8] = []
}

/// The filter for a seed (the same for every cut of one input).
func makeFilter(_ seed: UInt8) -> TelnetFilter {
    let addresses = ["", "192.0.2.1", "a\u{0}b\u{1}c\u{2}d\u{3}e"]
    return TelnetFilter(clientAddress: addresses[Int(seed % 3)], utf8: seed & 4 == 0)
}

func filter(_ bytes: UnsafeRawBufferPointer, seed: UInt8,
            cut: (UnsafeRawBufferPointer, (UnsafeRawBufferPointer) -> Void) -> Void) -> Run {
    var f = makeFilter(seed)
    var run = Run()
    cut(bytes) { piece in
        var given = 0
        f.receive(piece) { d in
            given += d.count
            run.data.append(contentsOf: d)
        }
        fuzzCheck(given <= piece.count, "filter handed out \(given) data bytes for \(piece.count) input bytes")
        run.replies += f.replies
        f.replies.removeAll()
    }
    return run
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
/// said WILL for its option (and not WONT since) when it was sent.
func subnegotiations(_ r: [UInt8]) -> [(option: UInt8, data: [UInt8], willing: Bool)] {
    var out: [(option: UInt8, data: [UInt8], willing: Bool)] = []
    var will = Set<UInt8>()
    var i = 0
    while i + 2 < r.count {
        switch r[i + 1] {
        case Telnet.will: will.insert(r[i + 2]); i += 3
        case Telnet.wont: will.remove(r[i + 2]); i += 3
        case Telnet.sb:
            let option = r[i + 2]
            var data: [UInt8] = []
            i += 3
            while !(r[i] == Telnet.iac && r[i + 1] == Telnet.se) {
                data.append(r[i])
                i += r[i] == Telnet.iac ? 2 : 1
            }
            i += 2
            out.append((option, data, will.contains(option)))
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
    let payload = UnsafeRawBufferPointer(rebasing: input[1...])

    // Target → client.
    let a = filter(payload, seed: seed, cut: whole)
    let b = filter(payload, seed: seed, cut: bytewise)
    var splitter = Splitter(seed: seed, length: payload.count)
    let c = filter(payload, seed: seed) { bytes, body in forEachPiece(bytes, &splitter, body) }
    fuzzCheck(a.data == b.data && a.data == c.data, "data depends on the cuts: \(a.data) / \(b.data) / \(c.data)")
    fuzzCheck(a.replies == b.replies && a.replies == c.replies,
              "replies depend on the cuts: \(a.replies) / \(b.replies) / \(c.replies)")
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
    fuzzCheck(again.data == a.data && again.replies.isEmpty, "the data holds a telnet command: \(a.data)")
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
    let round = out.withUnsafeBytes { bytes in filter(bytes, seed: seed) { b, body in forEachPiece(b, &splitter2, body) } }
    fuzzCheck(round.data == expected && round.replies.isEmpty,
              "escapeInput does not round-trip: \(Array(payload)) → \(out) → \(round.data)")
    return 0
}
