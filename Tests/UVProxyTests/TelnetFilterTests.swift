import XCTest
@testable import UVProxy

private let IAC = Telnet.iac, WILL = Telnet.will, WONT = Telnet.wont, DO = Telnet.do, DONT = Telnet.dont
private let SB = Telnet.sb, SE = Telnet.se, GA = Telnet.ga, NOP = Telnet.nop
private let ECHO = Telnet.Option.echo, SGA = Telnet.Option.sga, TTYPE = Telnet.Option.ttype
private let NAWS = Telnet.Option.naws, EOR = Telnet.Option.eor
private let COMPRESS = Telnet.Option.compress, COMPRESS2 = Telnet.Option.compress2
private let NEWENV: UInt8 = 39, CHARSET: UInt8 = 42, MSDP: UInt8 = 69, MSSP: UInt8 = 70, MXP: UInt8 = 91
private let GMCP: UInt8 = 201

/// `IAC SB TTYPE IS XTERM-256COLOR IAC SE`: the answer to `SB TTYPE SEND`.
private let ttypeIs: [UInt8] = [IAC, SB, TTYPE, 0] + Array("XTERM-256COLOR".utf8) + [IAC, SE]
/// `IAC SB NAWS 0 80 0 24 IAC SE`.
private let naws80x24: [UInt8] = [IAC, SB, NAWS, 0, 80, 0, 24, IAC, SE]

final class TelnetFilterTests: XCTestCase {
    /// Feeds `chunks` one `receive` each, as the upstream does; returns the data and the replies
    /// (collected and cleared after every chunk).
    func run(_ filter: inout TelnetFilter, _ chunks: [[UInt8]]) -> (data: [UInt8], replies: [UInt8]) {
        var data: [UInt8] = []
        var replies: [UInt8] = []
        for chunk in chunks {
            chunk.withUnsafeBytes { input in
                filter.receive(input) { run in
                    XCTAssertGreaterThan(run.count, 0, "no empty runs")
                    data += run
                }
            }
            replies += filter.replies
            filter.replies.removeAll()
        }
        return (data, replies)
    }

    func run(_ chunks: [UInt8]...) -> (data: [UInt8], replies: [UInt8]) {
        var filter = TelnetFilter()
        return run(&filter, chunks)
    }

    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    // MARK: Data

    func testPlainDataPassesAsSlicesOfTheInput() {
        var filter = TelnetFilter()
        let input = bytes("Hello, \u{1b}[1mworld\u{1b}[0m\r\n") + [IAC, GA] + bytes("> ")
        var runs: [[UInt8]] = []
        input.withUnsafeBytes { buf in
            filter.receive(buf) { run in
                let start = buf.baseAddress!, end = buf.baseAddress! + buf.count
                XCTAssertTrue(run.baseAddress! >= start && run.baseAddress! + run.count <= end, "zero-copy: a slice of the input")
                runs.append(Array(run))
            }
        }
        XCTAssertEqual(runs, [bytes("Hello, \u{1b}[1mworld\u{1b}[0m\r\n"), bytes("> ")])
        XCTAssertEqual(filter.replies, [])
    }

    func testIACIACIsOne255ByteBothWithinAndAcrossReads() {
        XCTAssertEqual(run(bytes("a") + [IAC, IAC] + bytes("b")).data, bytes("a") + [255] + bytes("b"))
        XCTAssertEqual(run(bytes("a") + [IAC], [IAC] + bytes("b")).data, bytes("a") + [255] + bytes("b"))
        XCTAssertEqual(run([IAC, IAC, IAC, IAC]).data, [255, 255])
        XCTAssertEqual(run([IAC], [IAC], [IAC], [IAC, IAC, IAC]).data, [255, 255, 255])
        // A 255 run continues straight into the text after it: one run, not two.
        var filter = TelnetFilter()
        var runs = 0
        ([IAC, IAC] + bytes("xyz")).withUnsafeBytes { filter.receive($0) { _ in runs += 1 } }
        XCTAssertEqual(runs, 1)
    }

    func testEveryCommandIsRemovedWithoutAnswer() {
        let commands: [UInt8] = [GA, Telnet.nop, Telnet.eor, 242, 243, 244, 245, 246, 247, 248, SE, 0x10]
        var input: [UInt8] = []
        for (i, c) in commands.enumerated() { input += bytes("\(i)") + [IAC, c] }
        let (data, replies) = run(input + bytes("."))
        XCTAssertEqual(data, bytes("01234567891011."))
        XCTAssertEqual(replies, [], "GA, NOP, EOR, DM, BRK, IP, AO, AYT, EC, EL, a stray SE or an unknown byte need no answer")
    }

    func testSubnegotiationsAreRemovedWhateverTheyHold() {
        // GMCP with JSON, an escaped 255 inside, and bytes that look like commands.
        let gmcp: [UInt8] = [IAC, SB, GMCP] + bytes("Char.Vitals {\"hp\": 10}") + [IAC, IAC, WILL, SGA, IAC, SE]
        let (data, replies) = run(bytes("before ") + gmcp + bytes("after"))
        XCTAssertEqual(data, bytes("before after"))
        XCTAssertEqual(replies, [], "IAC IAC WILL SGA inside SB is data of the subnegotiation, not a request")
        // Split anywhere, the same.
        let input = bytes("before ") + gmcp + bytes("after")
        for cut in 0...input.count {
            XCTAssertEqual(run(Array(input[..<cut]), Array(input[cut...])).data, bytes("before after"), "cut at \(cut)")
        }
    }

    func testUnterminatedSubnegotiationSwallowsUntilItEnds() {
        var filter = TelnetFilter()
        var out = run(&filter, [bytes("a") + [IAC, SB, MSDP] + bytes("text that is not for clients")])
        XCTAssertEqual(out.data, bytes("a"))
        out = run(&filter, [bytes("still inside"), [IAC, IAC], bytes("more")])
        XCTAssertEqual(out.data, [])
        out = run(&filter, [[IAC, SE] + bytes("b")])
        XCTAssertEqual(out.data, bytes("b"))
    }

    func testSubnegotiationWithoutSEEndsAtTheNextCommand() {
        // A server that forgets SE: IAC WILL inside the SB ends it and is taken as a command.
        let (data, replies) = run(bytes("a") + [IAC, SB, MSSP] + bytes("junk") + [IAC, WILL, SGA] + bytes("b"))
        XCTAssertEqual(data, bytes("ab"))
        XCTAssertEqual(replies, [IAC, DO, SGA])
    }

    func testCRNULBecomesCR() {
        XCTAssertEqual(run(bytes("a\r\0b")).data, bytes("a\rb"))
        XCTAssertEqual(run(bytes("a\r"), [0] + bytes("b")).data, bytes("a\rb"), "split between CR and NUL")
        XCTAssertEqual(run(bytes("a\r\n\r\0\r\0\0")).data, bytes("a\r\n\r\r\0"), "only the NUL right after CR")
        XCTAssertEqual(run(bytes("a\0b")).data, bytes("a\0b"), "a NUL elsewhere stays")
        XCTAssertEqual(run(bytes("a\r") + [IAC, GA, 0] + bytes("b")).data, bytes("a\rb"), "commands between are not data")
        XCTAssertEqual(run(bytes("a\r") + [IAC, IAC, 0]).data, bytes("a\r") + [255, 0], "255 after CR is data")
    }

    // MARK: Accepted options

    func testAcceptsEchoAndSGAFromTheTarget() {
        var filter = TelnetFilter()
        let out = run(&filter, [[IAC, WILL, SGA, IAC, WILL, ECHO]])
        XCTAssertEqual(out.replies, [IAC, DO, SGA, IAC, DO, ECHO])
        XCTAssertTrue(filter.isEnabled(SGA, .him))
        XCTAssertTrue(filter.isEnabled(ECHO, .him))
        XCTAssertFalse(filter.isEnabled(SGA, .us), "the two sides are separate")
        // Password done: the server stops echoing; we acknowledge once.
        XCTAssertEqual(run(&filter, [[IAC, WONT, ECHO]]).replies, [IAC, DONT, ECHO])
        XCTAssertFalse(filter.isEnabled(ECHO, .him))
        XCTAssertEqual(run(&filter, [[IAC, WILL, ECHO]]).replies, [IAC, DO, ECHO], "and can turn it on again")
    }

    func testAcceptsSGAForUs() {
        var filter = TelnetFilter()
        XCTAssertEqual(run(&filter, [[IAC, DO, SGA]]).replies, [IAC, WILL, SGA])
        XCTAssertTrue(filter.isEnabled(SGA, .us))
        XCTAssertEqual(run(&filter, [[IAC, DONT, SGA]]).replies, [IAC, WONT, SGA])
        XCTAssertFalse(filter.isEnabled(SGA, .us))
    }

    func testTerminalType() {
        var filter = TelnetFilter()
        // SEND before we agreed to TTYPE is not answered (RFC 1091).
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 1, IAC, SE]]).replies, [])
        XCTAssertEqual(run(&filter, [[IAC, DO, TTYPE]]).replies, [IAC, WILL, TTYPE])
        XCTAssertTrue(filter.isEnabled(TTYPE, .us))
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 1, IAC, SE]]).replies, ttypeIs)
        // Asked again (MTTS servers cycle): the same name, which ends the list.
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 1], [IAC], [SE]]).replies, ttypeIs)
        // An IS from the server, or another subnegotiation, is no question.
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 0] + bytes("X") + [IAC, SE, IAC, SB, NAWS, 1, IAC, SE]]).replies, [])

        var named = TelnetFilter(terminalType: "ANSI")
        _ = run(&named, [[IAC, DO, TTYPE]])
        XCTAssertEqual(run(&named, [[IAC, SB, TTYPE, 1, IAC, SE]]).replies, [IAC, SB, TTYPE, 0] + bytes("ANSI") + [IAC, SE])
    }

    func testWindowSize() {
        var filter = TelnetFilter()
        XCTAssertEqual(run(&filter, [[IAC, DO, NAWS]]).replies, [IAC, WILL, NAWS] + naws80x24)
        XCTAssertTrue(filter.isEnabled(NAWS, .us))
        XCTAssertEqual(run(&filter, [[IAC, DO, NAWS]]).replies, [], "already on: no answer, no second size")

        // 255 inside the size is doubled.
        var wide = TelnetFilter(width: 255, height: 0x1FF)
        XCTAssertEqual(run(&wide, [[IAC, DO, NAWS]]).replies,
                       [IAC, WILL, NAWS, IAC, SB, NAWS, 0, 255, 255, 1, 255, 255, IAC, SE])
    }

    // MARK: Refused options

    func testRefusesEverythingElse() {
        var filter = TelnetFilter()
        let offers: [UInt8] = [IAC, WILL, COMPRESS2, IAC, WILL, COMPRESS, IAC, WILL, EOR, IAC, WILL, GMCP,
                               IAC, WILL, MSDP, IAC, WILL, MXP, IAC, WILL, CHARSET, IAC, WILL, TTYPE, IAC, WILL, NAWS]
        XCTAssertEqual(run(&filter, [offers]).replies,
                       [IAC, DONT, COMPRESS2, IAC, DONT, COMPRESS, IAC, DONT, EOR, IAC, DONT, GMCP,
                        IAC, DONT, MSDP, IAC, DONT, MXP, IAC, DONT, CHARSET, IAC, DONT, TTYPE, IAC, DONT, NAWS])
        let requests: [UInt8] = [IAC, DO, ECHO, IAC, DO, NEWENV, IAC, DO, CHARSET, IAC, DO, EOR, IAC, DO, 34, IAC, DO, 255]
        XCTAssertEqual(run(&filter, [requests]).replies,
                       [IAC, WONT, ECHO, IAC, WONT, NEWENV, IAC, WONT, CHARSET, IAC, WONT, EOR, IAC, WONT, 34, IAC, WONT, 255],
                       "we do not echo locally, send environment, change charsets, linemode…")
        for option in [COMPRESS2, COMPRESS, EOR, GMCP, CHARSET, TTYPE, NAWS] { XCTAssertFalse(filter.isEnabled(option, .him)) }
        for option in [ECHO, NEWENV, CHARSET, EOR] { XCTAssertFalse(filter.isEnabled(option, .us)) }
    }

    // MARK: No loops

    func testNoAnswerWhereNothingChanges() {
        var filter = TelnetFilter()
        XCTAssertEqual(run(&filter, [[IAC, WILL, SGA]]).replies, [IAC, DO, SGA])
        XCTAssertEqual(run(&filter, [[IAC, WILL, SGA, IAC, WILL, SGA]]).replies, [], "repeated WILL: already on")
        XCTAssertEqual(run(&filter, [[IAC, DO, TTYPE]]).replies, [IAC, WILL, TTYPE])
        XCTAssertEqual(run(&filter, [[IAC, DO, TTYPE]]).replies, [], "repeated DO: already on")
        // Options that are off: WONT/DONT need no acknowledgement (the classic loop).
        XCTAssertEqual(run(&filter, [[IAC, WONT, ECHO, IAC, DONT, NAWS, IAC, WONT, COMPRESS2, IAC, DONT, NEWENV]]).replies, [])
        // A peer that acknowledges our refusal gets nothing back.
        XCTAssertEqual(run(&filter, [[IAC, WILL, COMPRESS2]]).replies, [IAC, DONT, COMPRESS2])
        XCTAssertEqual(run(&filter, [[IAC, WONT, COMPRESS2]]).replies, [])
        XCTAssertEqual(run(&filter, [[IAC, DO, NEWENV]]).replies, [IAC, WONT, NEWENV])
        XCTAssertEqual(run(&filter, [[IAC, DONT, NEWENV]]).replies, [])
        // Turning off is acknowledged once.
        XCTAssertEqual(run(&filter, [[IAC, WONT, SGA, IAC, WONT, SGA]]).replies, [IAC, DONT, SGA])
        XCTAssertEqual(run(&filter, [[IAC, DONT, TTYPE, IAC, DONT, TTYPE]]).replies, [IAC, WONT, TTYPE])
    }

    /// Two filters wired to each other (each one's replies are the other's input) settle: the
    /// proxy never opens a negotiation, so replies are answers only, and answers to answers stop.
    func testTwoFiltersTalkingToEachOtherSettle() {
        var a = TelnetFilter(), b = TelnetFilter()
        // A server's opening, as if `a` had sent it.
        var toB: [UInt8] = [IAC, WILL, SGA, IAC, DO, SGA, IAC, DO, NAWS, IAC, WILL, COMPRESS2, IAC, DO, TTYPE,
                            IAC, SB, TTYPE, 1, IAC, SE, IAC, WILL, ECHO]
        var rounds = 0
        while !toB.isEmpty {
            rounds += 1
            guard rounds < 10 else { return XCTFail("negotiation loops") }
            let toA = run(&b, [toB]).replies
            toB = run(&a, [toA]).replies
        }
        XCTAssertLessThanOrEqual(rounds, 2)
        XCTAssertTrue(a.isEnabled(SGA, .us) && a.isEnabled(SGA, .him) && b.isEnabled(SGA, .us) && b.isEnabled(SGA, .him))
        // `a` refused what `b` agreed to do (NAWS, TTYPE) and would not echo, so both ends agree those are off.
        XCTAssertFalse(b.isEnabled(NAWS, .us) || b.isEnabled(TTYPE, .us) || b.isEnabled(ECHO, .him))
        XCTAssertFalse(a.isEnabled(NAWS, .him) || a.isEnabled(TTYPE, .him) || a.isEnabled(ECHO, .us))
    }

    func testStateIsAFewDozenBytes() {
        XCTAssertLessThanOrEqual(MemoryLayout<TelnetFilter>.size, 32, "kept per telnet session")
    }

    // MARK: Client input

    func testEscapeInputDoubles255() {
        func escaped(_ input: [UInt8]) -> [UInt8] {
            var out: [UInt8] = []
            input.withUnsafeBytes { TelnetFilter.escapeInput($0, into: &out) }
            return out
        }
        XCTAssertEqual(escaped(bytes("say hi\r\n")), bytes("say hi\r\n"))
        XCTAssertEqual(escaped([255]), [255, 255])
        XCTAssertEqual(escaped(bytes("a") + [255, 255] + bytes("b") + [255]), bytes("a") + [255, 255, 255, 255] + bytes("b") + [255, 255])
        XCTAssertEqual(escaped([]), [])
        XCTAssertFalse(bytes("look\r\n").withUnsafeBytes { TelnetFilter.needsEscaping($0) })
        XCTAssertTrue((bytes("x") + [255]).withUnsafeBytes { TelnetFilter.needsEscaping($0) })
        XCTAssertFalse([UInt8]().withUnsafeBytes { TelnetFilter.needsEscaping($0) })
    }

    // MARK: Splits

    /// Recorded and modelled server greetings: negotiations mixed with text.
    static let recordings: [(name: String, bytes: [UInt8], data: [UInt8], replies: [UInt8])] = {
        func b(_ s: String) -> [UInt8] { Array(s.utf8) }
        // TinyMUX 2.12 (Debian's), recorded: its greeting, then SB TTYPE SEND once we said WILL TTYPE,
        // then the echo of a `say` of latin-1 text and a prompt-less line.
        let tinyText = b("Welcome to TinyMUX\r\n") + b(String(repeating: "-", count: 78) + "\r\n")
            + b("  \"connect <name> <password>\" connects you to an existing character.\r\n")
        let tinyMUX: [UInt8] = [IAC, WILL, EOR, IAC, DO, EOR, IAC, DO, SGA, IAC, DO, TTYPE, IAC, DO, NAWS,
                                IAC, DO, NEWENV, IAC, WILL, CHARSET, IAC, DO, CHARSET] + tinyText
            + [IAC, SB, TTYPE, 1, IAC, SE] + b("You say, \"caf") + [0xE9] + b("\"\r\n")
        let tinyReplies: [UInt8] = [IAC, DONT, EOR, IAC, WONT, EOR, IAC, WILL, SGA, IAC, WILL, TTYPE,
                                    IAC, WILL, NAWS] + naws80x24 + [IAC, WONT, NEWENV, IAC, DONT, CHARSET, IAC, WONT, CHARSET]
            + ttypeIs

        // A ROM 2.4 derivative with MCCP and MSSP: offers, a login that hides the password with
        // WILL ECHO, LF CR line ends, prompts that end with GA.
        let rom: [UInt8] = [IAC, WILL, COMPRESS2, IAC, WILL, COMPRESS, IAC, WILL, MSSP]
            + b("\n\rTHIS IS A MUD BASED ON.....\n\r\n\r     ROM Version 2.4 beta\n\rBy what name do you wish to be known? ")
            + [IAC, GA, IAC, DO, COMPRESS2]  // servers that send DO for their own option get WONT
            + b("Password: ") + [IAC, WILL, ECHO, IAC, GA]
            + [IAC, SB, MSSP, 1] + b("NAME") + [2] + b("Rom") + [IAC, SE]
            + [IAC, WONT, ECHO] + b("\n\r\u{1b}[1;32m<20hp 100m 100mv>\u{1b}[0m ") + [IAC, GA]
        let romData = b("\n\rTHIS IS A MUD BASED ON.....\n\r\n\r     ROM Version 2.4 beta\n\rBy what name do you wish to be known? ")
            + b("Password: ") + b("\n\r\u{1b}[1;32m<20hp 100m 100mv>\u{1b}[0m ")
        let romReplies: [UInt8] = [IAC, DONT, COMPRESS2, IAC, DONT, COMPRESS, IAC, DONT, MSSP, IAC, WONT, COMPRESS2,
                                   IAC, DO, ECHO, IAC, DONT, ECHO]

        // Modelled on Evennia: MUD-protocol offers, TTYPE asked three times (MTTS), NAWS, UTF-8 text,
        // GMCP after the client refused it (a server bug: still stripped), and 255 as data.
        let evennia: [UInt8] = [IAC, DO, TTYPE, IAC, DO, NAWS, IAC, WILL, MSDP, IAC, WILL, GMCP, IAC, WILL, MSSP,
                                IAC, WILL, MXP, IAC, WILL, COMPRESS2, IAC, WILL, SGA, IAC, WILL, ECHO, IAC, WONT, ECHO]
            + [IAC, SB, TTYPE, 1, IAC, SE, IAC, SB, TTYPE, 1, IAC, SE]
            + b("Welcome to \u{1b}[1mEvennia\u{1b}[0m – naïve café ✓\r\n")
            + [IAC, SB, TTYPE, 1, IAC, SE]
            + [IAC, SB, GMCP] + b("Core.Hello {}") + [IAC, SE]
            + b("stats: ") + [IAC, IAC, IAC, IAC] + b("\r\0\r\n")
        let evenniaData = b("Welcome to \u{1b}[1mEvennia\u{1b}[0m – naïve café ✓\r\n") + b("stats: ") + [255, 255] + b("\r\r\n")
        let evenniaReplies: [UInt8] = [IAC, WILL, TTYPE, IAC, WILL, NAWS] + naws80x24
            + [IAC, DONT, MSDP, IAC, DONT, GMCP, IAC, DONT, MSSP, IAC, DONT, MXP, IAC, DONT, COMPRESS2,
               IAC, DO, SGA, IAC, DO, ECHO, IAC, DONT, ECHO] + ttypeIs + ttypeIs + ttypeIs

        // Everything awkward at once: unterminated SB ended by a command, IAC IAC inside SB,
        // CR NUL around commands, back-to-back commands, a trailing lone IAC left pending.
        let awkward: [UInt8] = b("x\r") + [IAC, NOP, 0] + [IAC, SB, 200, IAC, IAC, 1, IAC, WILL, SGA]
            + [IAC, IAC, IAC, GA, IAC, IAC] + b("\r") + [0, 0, IAC, SB, IAC, SE] + b("end") + [IAC]
        let awkwardData = b("x\r") + [255, 255] + b("\r") + [0] + b("end")
        let awkwardReplies: [UInt8] = [IAC, DO, SGA]

        return [("TinyMUX", tinyMUX, tinyText + b("You say, \"caf") + [0xE9] + b("\"\r\n"), tinyReplies),
                ("ROM", rom, romData, romReplies),
                ("Evennia", evennia, evenniaData, evenniaReplies),
                ("awkward", awkward, awkwardData, awkwardReplies)]
    }()

    func testRecordingsUnsplit() {
        for r in Self.recordings {
            let out = run(r.bytes)
            XCTAssertEqual(out.data, r.data, "\(r.name) data: \(String(decoding: out.data, as: UTF8.self))")
            XCTAssertEqual(out.replies, r.replies, "\(r.name) replies")
        }
    }

    func testEverySingleCutGivesTheSameResult() {
        for r in Self.recordings {
            for cut in 0...r.bytes.count {
                let out = run(Array(r.bytes[..<cut]), Array(r.bytes[cut...]))
                XCTAssertEqual(out.data, r.data, "\(r.name) cut at \(cut)")
                XCTAssertEqual(out.replies, r.replies, "\(r.name) cut at \(cut)")
            }
        }
    }

    /// Fuzz-style: hundreds of random splits of each recording (seeded, so failures repeat),
    /// from byte-by-byte to a few large pieces; output and replies must not depend on the split.
    func testRandomSplitsGiveTheSameResult() {
        var rng = SplitMix64(seed: 0x7E1_4E7)
        for r in Self.recordings {
            let whole = run(r.bytes)
            for round in 0..<400 {
                let maxPiece = [1, 2, 3, 5, 8, 16, 64][round % 7]
                var chunks: [[UInt8]] = []
                var i = 0
                while i < r.bytes.count {
                    let n = Int(rng.next() % UInt64(maxPiece)) + 1
                    chunks.append(Array(r.bytes[i..<min(i + n, r.bytes.count)]))
                    i += n
                }
                if round % 5 == 0 { chunks.insert([], at: Int(rng.next() % UInt64(chunks.count + 1))) }
                var filter = TelnetFilter()
                let out = run(&filter, chunks)
                XCTAssertEqual(out.data, whole.data, "\(r.name) round \(round): \(chunks.map(\.count))")
                XCTAssertEqual(out.replies, whole.replies, "\(r.name) round \(round): \(chunks.map(\.count))")
                if out.data != whole.data || out.replies != whole.replies { return }
            }
        }
    }
}

/// A small seeded generator, so that a failing split can be reproduced.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
