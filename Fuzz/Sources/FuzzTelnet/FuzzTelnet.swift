import FuzzSupport
@testable import UVProxy

// The telnet filter in both directions (docs/RELIABILITY.md, "Fuzzing").
//
// Input: byte 0 seeds the cuts, the rest is what a target sends (and, for the other
// direction, what a client sends as input).
// Invariants, target → client (`receive`):
// - the data and the replies do not depend on how the bytes are cut (whole, one byte at a
//   time, random pieces);
// - no call hands out more data than it was given;
// - the data holds no telnet command: encoded again (255 doubled, CR NUL as CR NUL NUL) and fed
//   to a fresh filter it comes back unchanged, with no reply;
// - the replies are only commands: fed to a fresh filter they give no data, and they are
//   well formed (IAC verb option, or IAC SB … IAC SE with 255 doubled inside).
// Client → target (`escapeInput`): `needsEscaping` is true exactly when there is a 255; the
// escaped bytes, cut anywhere, come out of a fresh filter as the input itself (with a NUL after
// CR dropped, as RFC 854 says a receiver does), with no reply.

struct Run {
    var data: [UInt8] = []
    var replies: [UInt8] = []
}

func filter(_ bytes: UnsafeRawBufferPointer, cut: (UnsafeRawBufferPointer, (UnsafeRawBufferPointer) -> Void) -> Void) -> Run {
    var f = TelnetFilter()
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

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTelnet(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    guard input.count >= 1 else { return 0 }
    let seed = input[0]
    let payload = UnsafeRawBufferPointer(rebasing: input[1...])

    // Target → client.
    let a = filter(payload, cut: whole)
    let b = filter(payload, cut: bytewise)
    var splitter = Splitter(seed: seed, length: payload.count)
    let c = filter(payload) { bytes, body in forEachPiece(bytes, &splitter, body) }
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
    let again = encoded.withUnsafeBytes { filter($0, cut: whole) }
    fuzzCheck(again.data == a.data && again.replies.isEmpty, "the data holds a telnet command: \(a.data)")
    fuzzCheck(wellFormedReplies(a.replies), "malformed replies: \(a.replies)")
    let fromReplies = a.replies.withUnsafeBytes { filter($0, cut: whole) }
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
    let round = out.withUnsafeBytes { bytes in filter(bytes) { b, body in forEachPiece(b, &splitter2, body) } }
    fuzzCheck(round.data == expected && round.replies.isEmpty,
              "escapeInput does not round-trip: \(Array(payload)) → \(out) → \(round.data)")
    return 0
}
