import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import UVProxy
import CUV

private let IAC = Telnet.iac, WILL = Telnet.will, WONT = Telnet.wont, DO = Telnet.do, DONT = Telnet.dont
private let SB = Telnet.sb, SE = Telnet.se, GA = Telnet.ga
private let ECHO = Telnet.Option.echo, SGA = Telnet.Option.sga, TTYPE = Telnet.Option.ttype
private let NAWS = Telnet.Option.naws, NEWENV = Telnet.Option.newEnviron, MSSP: UInt8 = 70


/// A link that hands over what a real `Upstream` holds: a telnet filter and unwritten bytes.
final class HandOverLink: UpstreamLink {
    var filter: TelnetFilter?
    var unwritten: [UInt8] = []
    var sent: [UInt8] = []
    var queuedBytes = 0
    var reading: Bool?
    var closed = false

    func connect(to address: SocketAddress) {}
    func finish() {}
    func send(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) { sent += Array(a) + Array(b) }
    func pauseReading() { reading = false }
    func resumeReading() { reading = true }
    func close() { closed = true }
    func abort() { closed = true }
    func handOverState() -> UpstreamHandOver {
        UpstreamHandOver(telnet: filter?.snapshot(), unwrittenOutput: unwritten)
    }
}

final class SessionSnapshotTests: XCTestCase {
    var createdSessions: [Session] = []
    var createdLinks: [HandOverLink] = []
    let target = Target(name: "game", address: try! SocketAddress(host: "127.0.0.1", port: 9), telnet: true,
                        connectTimeoutMs: 500)

    // MARK: Helpers

    func encode(_ s: SessionSnapshot) -> [UInt8] {
        var out: [UInt8] = []
        s.encode(into: &out)
        return out
    }

    func decodeError(_ bytes: [UInt8]) -> SnapshotError? {
        do {
            _ = try SessionSnapshot.decode(bytes)
            return nil
        } catch {
            return error
        }
    }

    /// `record` with `extra` appended to its fields and the header's length fixed.
    func appending(_ extra: [UInt8], to record: [UInt8]) -> [UInt8] {
        var out = record + extra
        let length = UInt32(out.count - SnapshotReader.headerSize)
        for i in 0..<4 { out[6 + i] = UInt8(truncatingIfNeeded: length >> (8 * UInt32(i))) }
        return out
    }

    func field(_ tag: UInt16, _ value: [UInt8]) -> [UInt8] {
        var w = SnapshotWriter()
        w.bytes(tag, value)
        return w.out
    }

    func randomBytes(_ count: Int, _ rng: inout SplitMix64) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    func randomTelnet(_ rng: inout SplitMix64) -> TelnetFilter.State {
        let phases: [TelnetFilter.Phase] = [.data, .iac, .option, .sbOption, .sbData, .sbIAC]
        return TelnetFilter.State(
            phase: phases.randomElement(using: &rng)!, afterCR: .random(using: &rng),
            verb: .random(in: 0...255, using: &rng), subnegotiationOption: .random(in: 0...255, using: &rng),
            subnegotiationLength: .random(in: 0...255, using: &rng), subnegotiationFirst: .random(in: 0...255, using: &rng),
            keepsSubnegotiation: .random(using: &rng), subnegotiationData: randomBytes(Int.random(in: 0...513, using: &rng), &rng),
            enabledUs: [SGA, TTYPE, NAWS, NEWENV].filter { _ in .random(using: &rng) },
            enabledHim: [ECHO, SGA].filter { _ in .random(using: &rng) },
            terminalTypeAnswers: .random(in: 0...2, using: &rng), replies: randomBytes(Int.random(in: 0...40, using: &rng), &rng),
            clientAddress: Array("2001:db8::\(Int.random(in: 0...0xffff, using: &rng))".utf8), utf8: .random(using: &rng),
            width: .random(in: 0...UInt16.max, using: &rng), height: .random(in: 0...UInt16.max, using: &rng))
    }

    func randomSnapshot(_ rng: inout SplitMix64) -> SessionSnapshot {
        let reasons: [CloseReason] = [.eof, .reset, .error("ECONNREFUSED"), .error("EÜ✓"), .error(""), .idleTimeout,
                                      .deleted, .shutdown]
        let limit = Int.random(in: 1...5000, using: &rng)
        let count = Int.random(in: 0...limit, using: &rng)
        // Offsets near the top of UInt64 as well: end must still fit.
        let base = Bool.random(using: &rng) ? UInt64.random(in: 0...1 << 40, using: &rng)
                                            : UInt64.max - UInt64(count) - UInt64.random(in: 0...10, using: &rng)
        let ring = ByteRing.State(base: base, acked: base + UInt64.random(in: 0...UInt64(count), using: &rng),
                                  limit: limit, bytes: randomBytes(count, &rng))
        let status: SessionSnapshot.Status = Bool.random(using: &rng)
            ? .open : .closed(reasons.randomElement(using: &rng)!, agoMs: .random(in: 0...UInt64.max, using: &rng))
        let origin: ProxyProtocol.Endpoint? = switch Int.random(in: 0...2, using: &rng) {
        case 0: nil
        case 1: ProxyProtocol.Endpoint(address: randomBytes(4, &rng), port: .random(in: 0...UInt16.max, using: &rng))
        default: ProxyProtocol.Endpoint(address: randomBytes(16, &rng), port: .random(in: 0...UInt16.max, using: &rng))
        }
        return SessionSnapshot(
            id: SessionID(hi: rng.next(), lo: rng.next()), targetName: ["game", "", "zweite-Welt ☕"].randomElement(using: &rng)!,
            status: status, ring: ring, delivered: UInt64.random(in: 0...ring.end, using: &rng), lastSeq: rng.next(),
            lastTouchedAgoMs: rng.next(), openedAgoMs: rng.next(),
            deadlineInMs: Bool.random(using: &rng) ? rng.next() : nil, sentBytes: rng.next(),
            readingPaused: .random(using: &rng), origin: origin,
            client: Bool.random(using: &rng) ? "198.51.100.\(Int.random(in: 0...255, using: &rng))" : nil,
            telnet: Bool.random(using: &rng) ? randomTelnet(&rng) : nil,
            unwrittenOutput: randomBytes(Int.random(in: 0...300, using: &rng), &rng),
            target: Bool.random(using: &rng) ? SessionSnapshot.TargetSettings(
                address: ProxyProtocol.Endpoint(address: randomBytes(Bool.random(using: &rng) ? 4 : 16, &rng),
                                                port: .random(in: 0...UInt16.max, using: &rng)),
                telnet: .random(using: &rng), gmcp: .random(using: &rng),
                charset: [Charset.utf8, .latin1, .cp437].randomElement(using: &rng)!) : nil)
    }

    // MARK: The format

    func testEveryFieldRoundTrips() throws {
        var rng = SplitMix64(seed: 11)
        for _ in 0..<300 {
            let snapshot = randomSnapshot(&rng)
            let bytes = encode(snapshot)
            let decoded = try SessionSnapshot.decode(bytes)
            XCTAssertEqual(decoded, snapshot)
            XCTAssertEqual(encode(decoded), bytes, "one encoding per snapshot")
            // Any collection of bytes, not only arrays.
            XCTAssertEqual(try SessionSnapshot.decode(bytes[...]), snapshot)
        }
    }

    func testDaemonHeaderRoundTrips() throws {
        let header = DaemonSnapshot(nodeID: "eu1", sessionCount: 15_000, loopTimeMs: 123_456_789, writerVersion: "1.4.0")
        var bytes: [UInt8] = []
        header.encode(into: &bytes)
        XCTAssertEqual(try DaemonSnapshot.decode(bytes), header)
        XCTAssertThrowsError(try SessionSnapshot.decode(bytes), "a header is no session") {
            XCTAssertEqual($0 as? SnapshotError, .badMagic)
        }
        var session: [UInt8] = []
        var rng = SplitMix64(seed: 1)
        randomSnapshot(&rng).encode(into: &session)
        XCTAssertThrowsError(try DaemonSnapshot.decode(session)) { XCTAssertEqual($0 as? SnapshotError, .badMagic) }
    }

    /// The new process's replies (`ready`, `taken`): the same record shape, "UVPR", golden
    /// bytes, every cut refused, and an unknown kind refused rather than guessed.
    func testHandOverRepliesRoundTripAndTheGoldenOneDecodes() throws {
        let taken = HandOverReply(kind: .taken, nodeID: "eu1", sessionCount: 15_000, version: "v")
        var bytes: [UInt8] = []
        taken.encode(into: &bytes)
        XCTAssertEqual(try HandOverReply.decode(bytes), taken)
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try HandOverReply.decode(bytes.prefix(n)), "cut at \(n)")
        }
        let golden: [UInt8] = [
            0x55, 0x56, 0x50, 0x52, 0x01, 0x00, 0x21, 0x00, 0x00, 0x00,  // "UVPR", version 1, 33 bytes
            0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01,                    // 1 kind: ready
            0x02, 0x00, 0x00, 0x00, 0x00, 0x00,                          // 2 node id: none
            0x03, 0x00, 0x08, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,  // 3 sessions: 0
            0x04, 0x00, 0x00, 0x00, 0x00, 0x00,                          // 4 version: ""
        ]
        XCTAssertEqual(try HandOverReply.decode(golden), HandOverReply(kind: .ready, nodeID: "", version: ""))
        var unknownKind = golden
        unknownKind[16] = 9
        XCTAssertThrowsError(try HandOverReply.decode(unknownKind)) { XCTAssertEqual($0 as? SnapshotError, .malformed(1)) }
        var reader = SnapshotStreamReader(maxRecordBytes: 1024)
        golden.withUnsafeBytes { reader.append($0) }
        XCTAssertEqual(try reader.next(), golden, "the stream reader takes replies too")
    }

    /// `UVPROXYD_TAKE_OVER`: two descriptors past stdio, not the same.
    func testTheTakeOverVariableNamesTwoDescriptors() {
        XCTAssertEqual(ProxyDaemon.TakeOver(parsing: "3,4")?.channel, 3)
        XCTAssertEqual(ProxyDaemon.TakeOver(parsing: "3,4")?.listener, 4)
        for bad in ["", "3", "3,3", "2,4", "3,4,5", "a,4", "3,-1"] {
            XCTAssertNil(ProxyDaemon.TakeOver(parsing: bad), bad)
        }
    }

    /// Every cut of a record throws, and says so; nothing traps.
    func testEveryTruncationThrows() {
        var rng = SplitMix64(seed: 2)
        for _ in 0..<8 {
            var snapshot = randomSnapshot(&rng)
            snapshot.telnet = randomTelnet(&rng)
            snapshot.ring.bytes = Array(snapshot.ring.bytes.prefix(64))
            snapshot.ring.acked = snapshot.ring.base
            snapshot.delivered = snapshot.ring.base
            let bytes = encode(snapshot)
            for n in 0..<bytes.count {
                XCTAssertEqual(decodeError(Array(bytes.prefix(n))), .truncated, "cut at \(n) of \(bytes.count)")
            }
        }
        var header: [UInt8] = []
        DaemonSnapshot(nodeID: "a", sessionCount: 1, loopTimeMs: 2, writerVersion: "v").encode(into: &header)
        for n in 0..<header.count {
            XCTAssertThrowsError(try DaemonSnapshot.decode(header.prefix(n)), "cut at \(n)")
        }
    }

    /// Random damage either throws or decodes to some snapshot: never a trap, never a ring that
    /// could not exist.
    func testDamagedRecordsNeverTrap() {
        var rng = SplitMix64(seed: 3)
        var accepted = 0
        for _ in 0..<3000 {
            var bytes = encode(randomSnapshot(&rng))
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                bytes[i] = UInt8.random(in: 0...255, using: &rng)
            }
            if let s = try? SessionSnapshot.decode(bytes) {
                accepted += 1
                XCTAssertTrue(s.ring.isConsistent)
                XCTAssertLessThanOrEqual(s.delivered, s.ring.end)
                _ = ByteRing(restoring: s.ring)
            }
        }
        XCTAssertGreaterThan(accepted, 0, "damage to values (not to sizes) still decodes")
        for length in 0..<64 {  // garbage of every short length
            XCTAssertNotNil(decodeError(randomBytes(length, &rng)))
        }
    }

    /// A newer writer's fields are skipped, in the record and in the telnet group; one marked
    /// must-understand is refused.
    func testUnknownFieldsAreSkipped() throws {
        var rng = SplitMix64(seed: 4)
        var snapshot = randomSnapshot(&rng)
        snapshot.telnet = randomTelnet(&rng)
        let bytes = encode(snapshot)
        // At the end, at the start, repeated, empty, large.
        var extended = appending(field(21, [1, 2, 3]) + field(0x7FFF, []) + field(21, randomBytes(70_000, &rng)), to: bytes)
        XCTAssertEqual(try SessionSnapshot.decode(extended), snapshot)
        extended = Array(bytes.prefix(SnapshotReader.headerSize)) + field(300, [9]) + bytes.dropFirst(SnapshotReader.headerSize)
        extended = appending([], to: extended)
        XCTAssertEqual(try SessionSnapshot.decode(extended), snapshot)

        // Inside the telnet group: the group as the encoder writes it, plus a field of its own.
        let fields = try SnapshotReader.fields(bytes, SnapshotReader.headerSize..<bytes.count,
                                               known: SessionSnapshot.Tag.known)
        let group = Array(bytes[try XCTUnwrap(fields.found[SessionSnapshot.Tag.telnet])]) + field(99, [7, 7])
        var withoutTelnet = snapshot
        withoutTelnet.telnet = nil
        let record = appending(field(SessionSnapshot.Tag.telnet, group), to: encode(withoutTelnet))
        XCTAssertEqual(try SessionSnapshot.decode(record), snapshot)

        // Must-understand: refused when unknown.
        let critical = appending(field(SnapshotTag.mustUnderstand | 21, [1]), to: bytes)
        XCTAssertEqual(decodeError(critical), .unknownRequiredField(0x8015))
    }

    func testMalformedRecordsAreRefused() {
        var rng = SplitMix64(seed: 5)
        var snapshot = randomSnapshot(&rng)
        snapshot.status = .open
        let bytes = encode(snapshot)
        // A newer format version, an unknown one, version 0.
        for version: UInt16 in [2, 0xFFFF, 0] {
            var v = bytes
            v[4] = UInt8(version & 0xFF)
            v[5] = UInt8(version >> 8)
            XCTAssertEqual(decodeError(v), .unsupportedVersion(version))
        }
        XCTAssertEqual(decodeError(bytes + [0]), .trailingBytes)
        XCTAssertEqual(decodeError(Array("UVPX".utf8) + bytes.dropFirst(4)), .badMagic)
        // A known field twice.
        XCTAssertEqual(decodeError(appending(field(SessionSnapshot.Tag.target, Array("x".utf8)), to: bytes)),
                       .malformed(SessionSnapshot.Tag.target))
        // Wrong sizes and values.
        XCTAssertEqual(decodeError(appending(field(SessionSnapshot.Tag.closedAgo, [1, 2, 3, 4, 5, 6, 7, 8]), to: bytes)),
                       .inconsistent("an open session with a close reason"))
        var cases: [(SessionSnapshot, SnapshotError)] = []
        var s = snapshot
        s.ring = ByteRing.State(base: 10, acked: 14, limit: 10, bytes: [1, 2, 3])
        cases.append((s, .inconsistent("ring offsets")))  // acked beyond end
        s.ring = ByteRing.State(base: 10, acked: 9, limit: 10, bytes: [1, 2, 3])
        cases.append((s, .inconsistent("ring offsets")))  // acked below base
        s.ring = ByteRing.State(base: 10, acked: 10, limit: 2, bytes: [1, 2, 3])
        cases.append((s, .inconsistent("ring offsets")))  // more than buffer-size
        s.ring = ByteRing.State(base: .max - 1, acked: .max - 1, limit: 10, bytes: [1, 2])
        s.delivered = 0
        cases.append((s, .inconsistent("ring offsets")))  // end past UInt64
        s = snapshot
        s.delivered = s.ring.end + 1
        cases.append((s, .inconsistent("delivered beyond end")))
        for (s, error) in cases { XCTAssertEqual(decodeError(encode(s)), error) }
        // A missing required field: drop the target.
        let fields = try! SnapshotReader.fields(bytes, SnapshotReader.headerSize..<bytes.count, known: SessionSnapshot.Tag.known)
        let targetRange = fields.found[SessionSnapshot.Tag.target]!
        let withoutTarget = Array(bytes[SnapshotReader.headerSize..<(targetRange.lowerBound - 6)]) + bytes[targetRange.upperBound...]
        XCTAssertEqual(decodeError(appending(withoutTarget, to: Array(bytes.prefix(SnapshotReader.headerSize)))),
                       .missingField(SessionSnapshot.Tag.target))
        // A flag that is neither 0 nor 1, text that is not UTF-8, a status out of range.
        func replacing(_ tag: UInt16, with value: [UInt8]) -> [UInt8] {
            let r = fields.found[tag]!
            let body = Array(bytes[SnapshotReader.headerSize..<(r.lowerBound - 6)]) + field(tag, value) + bytes[r.upperBound...]
            return appending(body, to: Array(bytes.prefix(SnapshotReader.headerSize)))
        }
        XCTAssertEqual(decodeError(replacing(SessionSnapshot.Tag.readingPaused, with: [2])), .malformed(16))
        XCTAssertEqual(decodeError(replacing(SessionSnapshot.Tag.target, with: [0xC3])), .malformed(2))
        XCTAssertEqual(decodeError(replacing(SessionSnapshot.Tag.status, with: [3])), .malformed(3))
        XCTAssertEqual(decodeError(replacing(SessionSnapshot.Tag.status, with: [2])), .missingField(4), "closed needs a reason")
        XCTAssertEqual(decodeError(replacing(SessionSnapshot.Tag.id, with: [1, 2, 3])), .malformed(1))
        XCTAssertEqual(decodeError(replacing(SessionSnapshot.Tag.bufferSize, with: [0, 0, 0, 0, 0, 0, 0, 0])), .malformed(6))
    }

    // MARK: The golden vector

    /// A version-1 record (`goldenSnapshot`), field by field. Whatever the format becomes, these
    /// bytes must still decode to the same snapshot: they stand for what an older binary hands
    /// the next one. Never edit them; a new format version gets a golden record of its own.
    static let goldenVersion1: [UInt8] = [
        0x55, 0x56, 0x50, 0x53, 0x01, 0x00, 0x85, 0x01, 0x00, 0x00,  // magic "UVPS", version 1, 389 bytes of fields
        0x01, 0x00, 0x10, 0x00, 0x00, 0x00,  // 1 id
            0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01, 0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE,
        0x02, 0x00, 0x04, 0x00, 0x00, 0x00,  // 2 target
            0x67, 0x61, 0x6D, 0x65,
        0x03, 0x00, 0x01, 0x00, 0x00, 0x00,  // 3 status
            0x02,
        0x04, 0x00, 0x0B, 0x00, 0x00, 0x00,  // 4 close reason
            0x03, 0x45, 0x43, 0x4F, 0x4E, 0x4E, 0x52, 0x45, 0x53, 0x45, 0x54,
        0x05, 0x00, 0x08, 0x00, 0x00, 0x00,  // 5 closed ago
            0xDC, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x06, 0x00, 0x08, 0x00, 0x00, 0x00,  // 6 buffer size
            0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x07, 0x00, 0x08, 0x00, 0x00, 0x00,  // 7 base
            0xE8, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x08, 0x00, 0x08, 0x00, 0x00, 0x00,  // 8 acked
            0xEC, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x09, 0x00, 0x07, 0x00, 0x00, 0x00,  // 9 bytes
            0x68, 0x65, 0x6C, 0x6C, 0x6F, 0x0D, 0x0A,
        0x0A, 0x00, 0x08, 0x00, 0x00, 0x00,  // 10 delivered
            0xEF, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x0B, 0x00, 0x08, 0x00, 0x00, 0x00,  // 11 last seq
            0x2A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x0C, 0x00, 0x08, 0x00, 0x00, 0x00,  // 12 last touched ago
            0xFA, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x0D, 0x00, 0x08, 0x00, 0x00, 0x00,  // 13 opened ago
            0x90, 0x5F, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x0E, 0x00, 0x08, 0x00, 0x00, 0x00,  // 14 deadline in
            0x84, 0xE4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x0F, 0x00, 0x08, 0x00, 0x00, 0x00,  // 15 sent bytes
            0xD2, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x10, 0x00, 0x01, 0x00, 0x00, 0x00,  // 16 reading paused
            0x00,
        0x11, 0x00, 0x06, 0x00, 0x00, 0x00,  // 17 origin
            0x50, 0xC3, 0xCB, 0x00, 0x71, 0x07,
        0x12, 0x00, 0x0B, 0x00, 0x00, 0x00,  // 18 client
            0x32, 0x30, 0x33, 0x2E, 0x30, 0x2E, 0x31, 0x31, 0x33, 0x2E, 0x37,
        0x13, 0x00, 0x7E, 0x00, 0x00, 0x00,  // 19 telnet: group of 126 bytes
            0x01, 0x00, 0x01, 0x00, 0x00, 0x00,  // 1 phase
                0x04,
            0x02, 0x00, 0x01, 0x00, 0x00, 0x00,  // 2 after CR
                0x00,
            0x03, 0x00, 0x01, 0x00, 0x00, 0x00,  // 3 verb
                0xFB,
            0x04, 0x00, 0x01, 0x00, 0x00, 0x00,  // 4 SB option
                0x27,
            0x05, 0x00, 0x01, 0x00, 0x00, 0x00,  // 5 SB length
                0x03,
            0x06, 0x00, 0x01, 0x00, 0x00, 0x00,  // 6 SB first
                0x01,
            0x07, 0x00, 0x01, 0x00, 0x00, 0x00,  // 7 SB keep
                0x01,
            0x08, 0x00, 0x03, 0x00, 0x00, 0x00,  // 8 SB data
                0x01, 0x00, 0x49,
            0x09, 0x00, 0x02, 0x00, 0x00, 0x00,  // 9 enabled us
                0x18, 0x27,
            0x0A, 0x00, 0x01, 0x00, 0x00, 0x00,  // 10 enabled him
                0x01,
            0x0B, 0x00, 0x01, 0x00, 0x00, 0x00,  // 11 TTYPE answers
                0x01,
            0x0C, 0x00, 0x00, 0x00, 0x00, 0x00,  // 12 replies
            0x0D, 0x00, 0x0B, 0x00, 0x00, 0x00,  // 13 client address
                0x32, 0x30, 0x33, 0x2E, 0x30, 0x2E, 0x31, 0x31, 0x33, 0x2E, 0x37,
            0x0E, 0x00, 0x01, 0x00, 0x00, 0x00,  // 14 UTF-8
                0x01,
            0x0F, 0x00, 0x02, 0x00, 0x00, 0x00,  // 15 width
                0x50, 0x00,
            0x10, 0x00, 0x02, 0x00, 0x00, 0x00,  // 16 height
                0x18, 0x00,
        0x14, 0x00, 0x06, 0x00, 0x00, 0x00,  // 20 unwritten output
            0x6C, 0x6F, 0x6F, 0x6B, 0x0D, 0x0A,
    ]

    static let goldenSnapshot = SessionSnapshot(
        id: SessionID(hi: 0x0123_4567_89AB_CDEF, lo: 0xFEDC_BA98_7654_3210), targetName: "game",
        status: .closed(.error("ECONNRESET"), agoMs: 1500),
        ring: ByteRing.State(base: 1000, acked: 1004, limit: 4096, bytes: Array("hello\r\n".utf8)),
        delivered: 1007, lastSeq: 42, lastTouchedAgoMs: 250, openedAgoMs: 90_000, deadlineInMs: 58_500,
        sentBytes: 1234, readingPaused: false,
        origin: ProxyProtocol.Endpoint(address: [203, 0, 113, 7], port: 50_000), client: "203.0.113.7",
        telnet: TelnetFilter.State(phase: .sbData, afterCR: false, verb: WILL, subnegotiationOption: NEWENV,
                                   subnegotiationLength: 3, subnegotiationFirst: 1, keepsSubnegotiation: true,
                                   subnegotiationData: [1, 0, 73], enabledUs: [TTYPE, NEWENV], enabledHim: [ECHO],
                                   terminalTypeAnswers: 1, replies: [], clientAddress: Array("203.0.113.7".utf8),
                                   utf8: true, width: 80, height: 24),
        unwrittenOutput: Array("look\r\n".utf8))

    func testTheGoldenVersion1RecordStillDecodes() throws {
        XCTAssertEqual(try SessionSnapshot.decode(SessionSnapshotTests.goldenVersion1), SessionSnapshotTests.goldenSnapshot)
    }

    /// The writer too is unchanged. A new field makes this one fail (its bytes join the record):
    /// then update this expectation, never `goldenVersion1`.
    func testTheWriterStillWritesVersion1() {
        XCTAssertEqual(encode(SessionSnapshotTests.goldenSnapshot), SessionSnapshotTests.goldenVersion1)
    }

    static let goldenDaemonVersion1: [UInt8] = [
        0x55, 0x56, 0x50, 0x44, 0x01, 0x00, 0x30, 0x00, 0x00, 0x00,  // magic "UVPD", version 1, 48 bytes of fields
        0x01, 0x00, 0x03, 0x00, 0x00, 0x00,  // 1 node id
            0x65, 0x75, 0x31,
        0x02, 0x00, 0x08, 0x00, 0x00, 0x00,  // 2 session count
            0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x03, 0x00, 0x08, 0x00, 0x00, 0x00,  // 3 loop time
            0x00, 0x5C, 0x26, 0x05, 0x00, 0x00, 0x00, 0x00,
        0x04, 0x00, 0x05, 0x00, 0x00, 0x00,  // 4 writer version
            0x31, 0x2E, 0x30, 0x2E, 0x30,
    ]

    func testTheGoldenDaemonHeaderStillDecodes() throws {
        XCTAssertEqual(try DaemonSnapshot.decode(SessionSnapshotTests.goldenDaemonVersion1),
                       DaemonSnapshot(nodeID: "eu1", sessionCount: 2, loopTimeMs: 86_400_000, writerVersion: "1.0.0"))
    }

    // MARK: Records on a stream

    func testTheStreamReaderCutsRecordsHoweverTheReadsAreSplit() throws {
        var rng = SplitMix64(seed: 6)
        var stream: [UInt8] = []
        let header = DaemonSnapshot(nodeID: "", sessionCount: 3, loopTimeMs: 7, writerVersion: "x")
        header.encode(into: &stream)
        let sessions = (0..<3).map { _ in randomSnapshot(&rng) }
        for s in sessions { s.encode(into: &stream) }
        for split in [1, 2, 3, 7, 10, 64, 1000, stream.count] {
            var reader = SnapshotStreamReader(maxRecordBytes: 1 << 20)
            var records: [[UInt8]] = []
            var i = 0
            while i < stream.count {
                let piece = Array(stream[i..<min(i + split, stream.count)])
                piece.withUnsafeBytes { reader.append($0) }
                while let r = try reader.next() { records.append(r) }
                i += split
            }
            XCTAssertEqual(reader.pendingCount, 0)
            XCTAssertEqual(records.count, 4, "split \(split)")
            XCTAssertEqual(try DaemonSnapshot.decode(records[0]), header)
            XCTAssertEqual(try records.dropFirst().map { try SessionSnapshot.decode($0) }, sessions)
        }
        var small = SnapshotStreamReader(maxRecordBytes: 64)
        stream.withUnsafeBytes { small.append($0) }
        XCTAssertThrowsError(try { while try small.next() != nil {} }()) {
            guard case .tooLong = $0 as? SnapshotError else { return XCTFail("\($0)") }
        }
        var garbage = SnapshotStreamReader(maxRecordBytes: 1 << 20)
        Array("GET / HTTP/1.1\r\n".utf8).withUnsafeBytes { garbage.append($0) }
        XCTAssertThrowsError(try garbage.next()) { XCTAssertEqual($0 as? SnapshotError, .badMagic) }
    }
}

// MARK: The ring and the telnet filter

extension SessionSnapshotTests {
    func testAWrappedRingRestoresItsBytesAndOffsets() {
        var ring = ByteRing(limit: 300)
        var all: [UInt8] = []
        var rng = SplitMix64(seed: 7)
        for round in 0..<40 {  // past the 512-byte circle several times, evicting history
            let chunk = randomBytes(Int.random(in: 1...ring.room, using: &rng), &rng)
            chunk.withUnsafeBytes { ring.append($0) }
            all += chunk
            ring.acknowledge(upTo: ring.end - UInt64(Int.random(in: 0...ring.unacknowledged, using: &rng)))
            let state = ring.snapshot()
            XCTAssertEqual(state.bytes, Array(all[Int(ring.base)...]), "round \(round)")
            var restored = ByteRing(restoring: state)
            XCTAssertEqual(restored.snapshot(), state)
            XCTAssertEqual(restored.room, ring.room)
            XCTAssertEqual(restored.bytes(from: ring.acked), ring.bytes(from: ring.acked))
            // Both go on the same way.
            let more = randomBytes(ring.room, &rng)
            var original = ring
            more.withUnsafeBytes { original.append($0); restored.append($0) }
            XCTAssertEqual(restored.snapshot(), original.snapshot())
        }
        XCTAssertGreaterThan(ring.end, 2000)
        XCTAssertEqual(ByteRing(restoring: ByteRing(limit: 10).snapshot()).capacity, 0, "an empty ring holds no buffer")
    }

    /// What a MUD sends while it negotiates: everything the filter keeps state for, with the
    /// TTYPE cycle restarted and NEW-ENVIRON asked twice.
    static let telnetStream: [UInt8] = {
        var s: [UInt8] = Array("Welcome\r\n".utf8)
        s += [IAC, WILL, ECHO, IAC, WILL, SGA, IAC, DO, TTYPE, IAC, DO, NAWS, IAC, DO, NEWENV, IAC, WILL, 86]
        s += [IAC, SB, TTYPE, 1, IAC, SE] + Array("a\r\0b".utf8)
        s += [IAC, SB, TTYPE, 1, IAC, SE, IAC, GA]
        s += [IAC, SB, NEWENV, 1, 0] + Array("IPADDRESS".utf8) + [3] + Array("CLIENT".utf8) + [IAC, SE]
        s += [IAC, SB, MSSP, 1] + Array("NAME".utf8) + [IAC, IAC, 2] + Array("Game".utf8) + [IAC, SE]
        s += Array("Name: ".utf8) + [IAC, IAC, 0xE9, 13, 0, 10]
        s += [IAC, SB, TTYPE, 1, IAC, SE, IAC, SB, TTYPE, 1, IAC, SE]
        s += [IAC, DONT, TTYPE, IAC, DO, TTYPE, IAC, SB, TTYPE, 1, IAC, SE]
        s += [IAC, SB, NEWENV, 1, IAC, SE, IAC, WONT, ECHO]
        s += [IAC, SB, 24, 1, IAC, WILL, ECHO] + Array("lost SE\r\n".utf8)
        s += [IAC, SB, NEWENV, 1, 0, 2, 1, 0x49, IAC, SE] + Array("> ".utf8) + [IAC, 239]
        return s
    }()

    private func feed(_ filter: inout TelnetFilter, _ bytes: ArraySlice<UInt8>) -> [UInt8] {
        var data: [UInt8] = []
        Array(bytes).withUnsafeBytes { filter.receive($0) { data += $0 } }
        return data
    }

    /// The filter restored from a snapshot taken at any byte of the stream filters the rest and
    /// answers exactly as the original does.
    func testARestoredFilterGoesOnExactlyAsTheOriginal() throws {
        let stream = SessionSnapshotTests.telnetStream
        var whole = TelnetFilter(clientAddress: "192.0.2.1")
        let wholeData = feed(&whole, stream[...])
        let mtts = Array("MTTS 909".utf8)
        XCTAssertTrue(whole.replies.indices.contains { whole.replies[$0...].starts(with: mtts) }, "the cycle's end is reached")
        var sawMidSubnegotiation = false, sawMidCycle = false, sawPendingReplies = false
        for cut in 0...stream.count {
            var original = TelnetFilter(clientAddress: "192.0.2.1")
            let before = feed(&original, stream[..<cut])
            let state = original.snapshot()
            if state.phase == .sbData && state.keepsSubnegotiation && !state.subnegotiationData.isEmpty { sawMidSubnegotiation = true }
            if state.terminalTypeAnswers == 1 && state.phase != .data { sawMidCycle = true }
            if !state.replies.isEmpty { sawPendingReplies = true }
            var snapshot = SessionSnapshotTests.goldenSnapshot
            snapshot.telnet = state
            var restored = TelnetFilter(restoring: try XCTUnwrap(SessionSnapshot.decode(encode(snapshot)).telnet))
            XCTAssertEqual(restored.snapshot(), state, "cut \(cut)")
            let after = feed(&original, stream[cut...])
            XCTAssertEqual(feed(&restored, stream[cut...]), after, "data after cut \(cut)")
            XCTAssertEqual(restored.replies, original.replies, "replies after cut \(cut)")
            XCTAssertEqual(restored.snapshot(), original.snapshot(), "state after cut \(cut)")
            XCTAssertEqual(before + after, wholeData, "cut \(cut)")
            XCTAssertEqual(restored.replies, whole.replies, "cut \(cut)")
        }
        XCTAssertTrue(sawMidSubnegotiation && sawMidCycle && sawPendingReplies)
    }

    func testTheFilterStateNamesOptionsNotBits() {
        var filter = TelnetFilter(clientAddress: "x", utf8: false, width: 132, height: 50)
        _ = feed(&filter, [IAC, WILL, ECHO, IAC, DO, NAWS, IAC, DO, 200, IAC, WILL, 201][...])
        let state = filter.snapshot()
        XCTAssertEqual(state.enabledUs, [NAWS])
        XCTAssertEqual(state.enabledHim, [ECHO])
        XCTAssertEqual(state.width, 132)
        XCTAssertEqual(state.height, 50)
        XCTAssertFalse(state.utf8)
        var foreign = state
        foreign.enabledHim += [201]  // an option a newer binary might accept: left off here
        XCTAssertEqual(TelnetFilter(restoring: foreign).snapshot(), state)
    }
}

// MARK: Sessions through the table

extension SessionSnapshotTests {
    func makeTable(now: @escaping () -> UInt64, deadlines: DeadlineQueue, perClient: Int = 0,
                   links: @escaping (Session) -> UpstreamLink = { _ in HandOverLink() }) -> SessionTable {
        var settings = SessionSettings()
        settings.bufferSize = 100
        settings.idleTimeoutMs = 10_000
        settings.lingerMs = 5_000
        settings.maxSessionsPerClient = perClient
        return SessionTable(settings: settings, deadlines: deadlines, clock: now, makeLink: links)
    }

    func open(_ table: SessionTable, origin: SocketAddress? = nil, client: String? = nil) throws -> (Session, HandOverLink) {
        var result: Result<Session, CreateError>?
        table.create(target: target, client: client, origin: origin) { result = $0 }
        let session = try XCTUnwrap(createdSessions.last)
        table.upstreamConnected(session, status: 0)
        return (try XCTUnwrap(result?.get()), createdLinks.last!)
    }

    /// A link factory that keeps what it made (a table hands out a session once it is open).
    var recordLinks: (Session) -> UpstreamLink {
        { [unowned self] session in
            self.createdSessions.append(session)
            let link = HandOverLink()
            self.createdLinks.append(link)
            return link
        }
    }

    func testASessionGoesOnInAnotherTableAsItWas() throws {
        var oldNow: UInt64 = 1_000_000
        let oldDeadlines = DeadlineQueue.manual()
        let old = makeTable(now: { oldNow }, deadlines: oldDeadlines, perClient: 3, links: recordLinks)
        let origin = SocketAddress(literal: "2001:db8::9", port: 4242)
        let (session, link) = try open(old, origin: origin, client: "2001:db8::9")
        link.filter = TelnetFilter(clientAddress: session.clientAddress)
        // Wrap the ring: 100-byte buffer, 256-byte circle, 700 bytes through it.
        var sent: [UInt8] = []
        for i in 0..<14 {
            let chunk = (0..<50).map { UInt8(truncatingIfNeeded: i * 50 + $0) }
            sent += chunk
            chunk.withUnsafeBytes { session.receive($0) }
            session.acknowledge(upTo: session.ring.end - 10)
        }
        session.delivered = session.ring.end - 10
        XCTAssertEqual(Array("say hi\r\n".utf8).withUnsafeBytes { session.sendInput($0, .init(start: nil, count: 0), seq: 7) }, .queued)
        oldNow += 3_000
        session.lastTouched = oldNow - 1_000
        _ = feed(&link.filter!, [IAC, DO, TTYPE, IAC, SB, TTYPE, 1, IAC, SE, IAC, SB, NEWENV][...])
        link.unwritten = Array("say hi\r\n".utf8)

        let snapshot = try XCTUnwrap(session.snapshot(now: oldNow))
        XCTAssertEqual(snapshot.ring.bytes, Array(sent.suffix(100)))
        XCTAssertEqual(snapshot.ring.base, 600)
        XCTAssertEqual(snapshot.lastTouchedAgoMs, 1_000)
        XCTAssertEqual(snapshot.openedAgoMs, 3_000)
        XCTAssertEqual(snapshot.deadlineInMs, 7_000, "the idle check due 10 s after the open")
        XCTAssertEqual(snapshot.origin, origin?.endpoint)
        XCTAssertEqual(snapshot.client, "2001:db8::9")
        XCTAssertEqual(snapshot.telnet?.terminalTypeAnswers, 1)
        XCTAssertEqual(snapshot.unwrittenOutput, Array("say hi\r\n".utf8))
        let bytes = encode(snapshot)

        // The new process: another clock, another table.
        var newNow: UInt64 = 5_000
        let newDeadlines = DeadlineQueue.manual()
        let new = makeTable(now: { newNow }, deadlines: newDeadlines, perClient: 3)
        let decoded = try SessionSnapshot.decode(bytes)
        let newLink = HandOverLink()
        newLink.filter = TelnetFilter(restoring: try XCTUnwrap(decoded.telnet))
        let adopted = try new.adopt(decoded, target: target, link: newLink)
        XCTAssertTrue(new.session(session.id) === adopted)
        XCTAssertEqual(newLink.reading, true, "reading resumes: the buffer has room")
        XCTAssertEqual([new.openCount, new.closedCount, new.bufferedBytes], [1, 0, 100])
        XCTAssertEqual(adopted.ring.snapshot(), session.ring.snapshot())
        XCTAssertEqual(adopted.delivered, session.delivered)
        XCTAssertEqual(adopted.lastSeq, 7)
        XCTAssertEqual(adopted.sentBytes, 8)
        XCTAssertEqual(adopted.lastTouched, 4_000)
        XCTAssertEqual(adopted.openedAt, 2_000)
        XCTAssertEqual(adopted.clientAddress, "2001:db8::9")
        XCTAssertEqual(adopted.deadline, 12_000)
        // Taken again now, it is the same snapshot (the unwritten bytes are the new link's to
        // write, and this fake has written them).
        var again = snapshot
        again.unwrittenOutput = []
        XCTAssertEqual(adopted.snapshot(now: newNow), again)

        // It behaves as the old one: duplicate seq refused, acknowledging, the per-client count.
        XCTAssertEqual(Array("x".utf8).withUnsafeBytes { adopted.sendInput($0, .init(start: nil, count: 0), seq: 7) }, .duplicate)
        XCTAssertEqual(Array("x".utf8).withUnsafeBytes { adopted.sendInput($0, .init(start: nil, count: 0), seq: 8) }, .queued)
        XCTAssertEqual(newLink.sent, Array("x".utf8))
        for _ in 0..<2 { new.create(target: target, client: "2001:db8::9") { _ in } }
        var third: Result<Session, CreateError>?
        new.create(target: target, client: "2001:db8::9") { third = $0 }
        guard case .failure(let error)? = third else { return XCTFail("\(String(describing: third))") }
        XCTAssertEqual(error, .clientFull, "the adopted session counts against its client")
        // The idle timeout runs on from where it was.
        newNow = 11_000 + 1
        newDeadlines.fire(now: newNow)
        XCTAssertTrue(adopted.isOpen, "touched 1 s before the snapshot: 10 s idle at 13 000")
        newNow = 14_000
        newDeadlines.fire(now: newNow)
        XCTAssertEqual(adopted.closeReason, .idleTimeout)
    }

    func testAClosedLingeringSessionKeepsItsLinger() throws {
        var now: UInt64 = 50_000
        let deadlines = DeadlineQueue.manual()
        let old = makeTable(now: { now }, deadlines: deadlines, links: recordLinks)
        let (session, _) = try open(old)
        Array("bye\n".utf8).withUnsafeBytes { session.receive($0) }
        old.upstreamEnded(session, error: UVError.connectionReset)
        now += 2_000
        let snapshot = try XCTUnwrap(session.snapshot(now: now))
        XCTAssertEqual(snapshot.status, .closed(.reset, agoMs: 2_000))
        XCTAssertEqual(snapshot.deadlineInMs, 3_000)

        var newNow: UInt64 = 10_000
        let newDeadlines = DeadlineQueue.manual()
        let new = makeTable(now: { newNow }, deadlines: newDeadlines)
        XCTAssertThrowsError(try new.adopt(snapshot, target: target, link: HandOverLink())) {
            XCTAssertEqual($0 as? SessionTable.AdoptError, .linkMismatch)
        }
        let adopted = try new.adopt(try SessionSnapshot.decode(encode(snapshot)), target: target, link: nil)
        XCTAssertEqual([new.openCount, new.closedCount], [0, 1])
        XCTAssertEqual(adopted.closeReason, .reset)
        XCTAssertEqual(adopted.ring.bytes(from: 0), Array("bye\n".utf8))
        XCTAssertEqual(Array("x".utf8).withUnsafeBytes { adopted.sendInput($0, .init(start: nil, count: 0), seq: nil) }, .closed)
        XCTAssertThrowsError(try new.adopt(snapshot, target: target, link: nil)) {
            XCTAssertEqual($0 as? SessionTable.AdoptError, .duplicateID)
        }
        XCTAssertEqual(adopted.closedAt, 8_000)
        newNow = 12_999
        newDeadlines.fire(now: newNow)
        XCTAssertTrue(new.session(snapshot.id) != nil, "lingers 3 s more")
        newNow = 13_000
        newDeadlines.fire(now: newNow)
        XCTAssertNil(new.session(snapshot.id), "linger over")
    }

    func testAPausedSessionStaysPausedUntilAcknowledged() throws {
        let now: UInt64 = 1
        let old = makeTable(now: { now }, deadlines: DeadlineQueue.manual(), links: recordLinks)
        let (session, _) = try open(old)
        [UInt8](repeating: 65, count: 100).withUnsafeBytes { session.receive($0) }
        let snapshot = try XCTUnwrap(session.snapshot(now: now))
        XCTAssertTrue(snapshot.readingPaused)
        let new = makeTable(now: { now }, deadlines: DeadlineQueue.manual())
        let link = HandOverLink()
        let adopted = try new.adopt(snapshot, target: target, link: link)
        XCTAssertEqual(link.reading, false)
        adopted.acknowledge(upTo: 50)
        XCTAssertEqual(link.reading, true)
    }

    func testAConnectingSessionHasNoSnapshot() {
        let table = makeTable(now: { 0 }, deadlines: DeadlineQueue.manual(), links: recordLinks)
        table.create(target: target) { _ in }
        XCTAssertNil(createdSessions.last?.snapshot(now: 0))
    }
}

// MARK: The send queue's unwritten bytes

private final class StreamWatcher: TCPStreamDelegate {
    var connected: Int32?
    func stream(_ stream: TCPStream, didRead bytes: UnsafeRawBufferPointer) {}
    func stream(_ stream: TCPStream, didEnd error: Int32) {}
    func stream(_ stream: TCPStream, didConnect status: Int32) { connected = status }
}

extension SessionSnapshotTests {
    /// What the kernel took plus `unwrittenBytes()` is everything written, once: the peer
    /// reads the first part from the old socket, the new process writes the second.
    func testUnwrittenBytesAreExactlyWhatTheKernelHasNotTaken() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        // A listener with a small receive buffer, so that the sender's queue fills.
        let (listener, port) = try boundLoopbackSocket(listen: 1, receiveBuffer: 16 * 1024)
        defer { Glibc.close(listener) }

        let stream = try TCPStream(loop: loop)
        let watcher = StreamWatcher()
        stream.delegate = watcher
        stream.connect(to: try XCTUnwrap(SocketAddress(literal: "127.0.0.1", port: port)))
        while watcher.connected == nil { uv_run(loop.uvLoop, UV_RUN_ONCE) }
        XCTAssertEqual(watcher.connected, 0)
        let peer = accept(listener, nil, nil)
        XCTAssertGreaterThanOrEqual(peer, 0)
        defer { Glibc.close(peer) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        // Two writes: the first goes partly to the kernel and the rest becomes the write in
        // flight, the second waits behind it.
        // (16 MiB: more than Linux's largest send buffer by default, 4 MiB.)
        func pattern(_ count: Int, _ seed: UInt64) -> [UInt8] {
            var rng = SplitMix64(seed: seed)
            return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
                var i = 0
                while i < count {
                    var word = rng.next()
                    for _ in 0..<min(8, count - i) { buffer[i] = UInt8(truncatingIfNeeded: word); word >>= 8; i += 1 }
                }
                initialized = count
            }
        }
        let first = pattern(16 << 20, 1), second = pattern(256 << 10, 2)
        first.withUnsafeBytes { _ = stream.write($0) }
        second.withUnsafeBytes { _ = stream.write($0) }
        XCTAssertGreaterThan(stream.queuedWriteBytes, second.count, "the kernel did not take it all")

        // The peer reads a little; libuv writes part of the write in flight.
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var partial = false
        for _ in 0..<200 where !partial {
            let n = buffer.withUnsafeMutableBytes { recv(peer, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 { received += buffer[0..<n] }
            uv_run(loop.uvLoop, UV_RUN_NOWAIT)
            partial = stream.unwrittenBytes().count < stream.queuedWriteBytes
        }
        XCTAssertTrue(partial, "part of the write in flight reached the kernel")
        let unwritten = stream.unwrittenBytes()
        XCTAssertGreaterThan(unwritten.count, second.count)
        stream.close()  // in the same turn: libuv writes nothing more

        while true {
            let n = buffer.withUnsafeMutableBytes { recv(peer, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            received += buffer[0..<n]
        }
        let all = first + second
        XCTAssertEqual(received.count + unwritten.count, all.count)
        // (memcmp: element-wise comparison of 16 MiB is slow in a debug build.)
        all.withUnsafeBytes { all in
            XCTAssertEqual(received.withUnsafeBytes { memcmp($0.baseAddress!, all.baseAddress!, $0.count) }, 0,
                           "the peer got a prefix")
            XCTAssertEqual(unwritten.withUnsafeBytes { memcmp($0.baseAddress!, all.baseAddress! + received.count, $0.count) }, 0,
                           "the unwritten bytes are the rest")
        }
    }
}

// MARK: GMCP (SPEC §7)

private let GMCPOPT = Telnet.Option.gmcp

extension SessionSnapshotTests {
    func randomGMCPMessage(_ rng: inout SplitMix64) -> GMCPMessage {
        let package = Array("P\(Int.random(in: 0...30, using: &rng)).M".utf8)
        let payload: [UInt8]? = Bool.random(using: &rng) ? randomBytes(Int.random(in: 0...40, using: &rng), &rng) : nil
        return GMCPMessage(position: .random(in: 0...100_000, using: &rng), package: package, payload: payload)
    }

    /// A telnet state with GMCP on (or asked for), maybe mid-message.
    func randomGMCPTelnet(_ rng: inout SplitMix64) -> TelnetFilter.State {
        var t = randomTelnet(&rng)
        t.gmcp = Int.random(in: 0...3, using: &rng) > 0
        t.gmcpVersion = ["", "1.0.0", "v2 ☕"].randomElement(using: &rng)!
        if Bool.random(using: &rng) { t.enabledHim = (t.enabledHim + [GMCPOPT]).sorted() }
        if Bool.random(using: &rng) {
            t.phase = .sbData
            t.subnegotiationOption = GMCPOPT
            t.keepsSubnegotiation = true
            t.subnegotiationData = randomBytes(Bool.random(using: &rng) ? 65536 : Int.random(in: 0...100, using: &rng), &rng)
        }
        t.gmcpMessages = (0..<Int.random(in: 0...4, using: &rng)).map { _ in randomGMCPMessage(&rng) }
        return t
    }

    func randomGMCPLog(_ rng: inout SplitMix64, end: UInt64) -> GMCPLog.State {
        var log = GMCPLog(limits: GMCPLog.Limits(messages: Int.random(in: 1...20, using: &rng), packages: 6))
        var offset = UInt64.random(in: 0...min(end, 1 << 20), using: &rng)
        for _ in 0..<Int.random(in: 0...40, using: &rng) {
            let m = randomGMCPMessage(&rng)
            log.append(offset: offset, package: m.package, payload: Bool.random(using: &rng) ? m.payload : Array("{\"a\":[1]}".utf8)[...])
            offset += UInt64.random(in: 0...min(end - offset, 3), using: &rng)
        }
        log.delivered = UInt64.random(in: 0...log.next, using: &rng)
        return log.snapshot()
    }

    func testGMCPFieldsRoundTrip() throws {
        var rng = SplitMix64(seed: 201)
        for _ in 0..<200 {
            var snapshot = randomSnapshot(&rng)
            snapshot.telnet = randomGMCPTelnet(&rng)
            snapshot.gmcp = randomGMCPLog(&rng, end: snapshot.ring.end)
            let bytes = encode(snapshot)
            let decoded = try SessionSnapshot.decode(bytes)
            XCTAssertEqual(decoded, snapshot)
            XCTAssertEqual(encode(decoded), bytes, "one encoding per snapshot")
        }
    }

    /// A record without the new fields (any record an older binary wrote) is a session without
    /// GMCP; and a session without GMCP writes the record it always did.
    func testAbsentGMCPFieldsMeanOffAndEmpty() throws {
        let golden = try SessionSnapshot.decode(SessionSnapshotTests.goldenVersion1)
        let telnet = try XCTUnwrap(golden.telnet)
        XCTAssertFalse(telnet.gmcp)
        XCTAssertEqual(telnet.gmcpVersion, "")
        XCTAssertEqual(telnet.gmcpMessages, [])
        XCTAssertNil(golden.gmcp)
        XCTAssertEqual(TelnetFilter.State(), TelnetFilter.State(gmcp: false, gmcpVersion: "", gmcpMessages: []))
        XCTAssertFalse(TelnetFilter(restoring: telnet).gmcp)
        // A filter made without GMCP writes no GMCP field; the default values write none either.
        var filter = TelnetFilter(clientAddress: "203.0.113.7")
        _ = feed(&filter, [IAC, WILL, GMCPOPT, IAC, SB, GMCPOPT, 0x41, IAC, SE][...])
        var snapshot = SessionSnapshotTests.goldenSnapshot
        snapshot.telnet = filter.snapshot()
        let bytes = encode(snapshot)
        let fields = try SnapshotReader.fields(bytes, SnapshotReader.headerSize..<bytes.count, known: SessionSnapshot.Tag.known)
        let group = try SnapshotReader.fields(bytes, try XCTUnwrap(fields.found[SessionSnapshot.Tag.telnet]),
                                              known: SessionSnapshot.TelnetTag.known)
        XCTAssertEqual(Set(group.found.keys), Set(1...16))
        XCTAssertNil(fields.found[SessionSnapshot.Tag.gmcp])
        // An empty log is written (a GMCP session that has no message yet) and read back as such.
        snapshot.gmcp = GMCPLog.State()
        XCTAssertEqual(try SessionSnapshot.decode(encode(snapshot)).gmcp, GMCPLog.State())
    }

    /// An older binary (tags 1-20, telnet 1-16) reads a newer record with GMCP: nothing in it is
    /// must-understand; what it keeps is the session without GMCP.
    func testAnOlderReaderSkipsTheGMCPFields() throws {
        var rng = SplitMix64(seed: 202)
        var snapshot = randomSnapshot(&rng)
        snapshot.telnet = randomGMCPTelnet(&rng)
        snapshot.telnet?.gmcpMessages = [randomGMCPMessage(&rng)]
        snapshot.gmcp = randomGMCPLog(&rng, end: snapshot.ring.end)
        let bytes = encode(snapshot)
        let old = try SnapshotReader.record(bytes, magic: SessionSnapshot.magic, version: 1, known: Set(1...20))
        XCTAssertNil(old.found[SessionSnapshot.Tag.gmcp])
        let telnet = try SnapshotReader.fields(bytes, try XCTUnwrap(old.found[SessionSnapshot.Tag.telnet]), known: Set(1...16))
        XCTAssertEqual(Set(telnet.found.keys), Set(1...16))
        for tag in [SessionSnapshot.Tag.gmcp, SessionSnapshot.TelnetTag.gmcp, SessionSnapshot.TelnetTag.gmcpVersion,
                    SessionSnapshot.TelnetTag.gmcpMessages] {
            XCTAssertEqual(tag & SnapshotTag.mustUnderstand, 0)
        }
        // What the older reader keeps of the telnet state is a filter that refuses GMCP.
        var older = try XCTUnwrap(snapshot.telnet)
        older.gmcp = false
        older.gmcpVersion = ""
        older.gmcpMessages = []
        older.phase = .data
        let filter = TelnetFilter(restoring: older)
        XCTAssertFalse(filter.gmcpEnabled)
        XCTAssertFalse(filter.snapshot().enabledHim.contains(GMCPOPT))
    }

    func testMalformedGMCPFieldsAreRefused() throws {
        var rng = SplitMix64(seed: 203)
        var snapshot = randomSnapshot(&rng)
        snapshot.status = .open
        snapshot.ring = ByteRing.State(base: 100, acked: 100, limit: 1000, bytes: randomBytes(50, &rng))
        snapshot.delivered = 100
        snapshot.telnet = nil
        func withGMCP(_ g: GMCPLog.State) -> SnapshotError? {
            var s = snapshot
            s.gmcp = g
            return decodeError(encode(s))
        }
        func m(_ seq: UInt64, _ offset: UInt64, _ package: String = "A") -> GMCPLog.Message {
            GMCPLog.message(seq: seq, offset: offset, package: Array(package.utf8), payload: nil)
        }
        XCTAssertNil(withGMCP(GMCPLog.State(next: 2, delivered: 2, messages: [m(0, 100), m(1, 150)])))
        XCTAssertEqual(withGMCP(GMCPLog.State(next: 2, delivered: 3)), .inconsistent("gmcp delivered beyond next"))
        XCTAssertEqual(withGMCP(GMCPLog.State(next: 1, delivered: 0, messages: [m(0, 100), m(1, 100)])),
                       .inconsistent("more gmcp messages than seqs"))
        XCTAssertEqual(withGMCP(GMCPLog.State(next: 2, delivered: 0, messages: [m(0, 120), m(1, 110)])),
                       .inconsistent("gmcp offsets"), "offsets never go down")
        XCTAssertEqual(withGMCP(GMCPLog.State(next: 1, delivered: 0, messages: [m(0, 151)])),
                       .inconsistent("gmcp offsets"), "nor past the ring's end")
        let latest = GMCPLog.Latest(package: Array("A".utf8), payload: nil, seq: 0)
        XCTAssertEqual(withGMCP(GMCPLog.State(next: 1, delivered: 0, latest: [latest, latest])), .inconsistent("gmcp state"))
        XCTAssertEqual(withGMCP(GMCPLog.State(next: 0, delivered: 0, latest: [latest])), .inconsistent("gmcp state"))

        // Damaged entries: cut, a flag that is not 0 or 1, a length past the field.
        let good = encode({ var s = snapshot; s.gmcp = GMCPLog.State(next: 1, delivered: 0, messages: [m(0, 100, "Char")]); return s }())
        let fields = try SnapshotReader.fields(good, SnapshotReader.headerSize..<good.count, known: SessionSnapshot.Tag.known)
        let group = try XCTUnwrap(fields.found[SessionSnapshot.Tag.gmcp])
        func replacingGroup(_ body: [UInt8]) -> [UInt8] {
            let start = group.lowerBound - 6
            let rest = Array(good[SnapshotReader.headerSize..<start]) + field(SessionSnapshot.Tag.gmcp, body) + good[group.upperBound...]
            return appending(rest, to: Array(good.prefix(SnapshotReader.headerSize)))
        }
        var w = SnapshotWriter()
        w.u64(SessionSnapshot.GMCPTag.next, 1)
        w.u64(SessionSnapshot.GMCPTag.delivered, 0)
        let head = w.out
        let entry: [UInt8] = [100, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0] + Array("Char".utf8)
        XCTAssertNil(decodeError(replacingGroup(head + field(3, entry) + field(4, []))))
        XCTAssertEqual(decodeError(replacingGroup(head + field(3, Array(entry.dropLast())) + field(4, []))), .malformed(3))
        XCTAssertEqual(decodeError(replacingGroup(head + field(3, Array(entry.prefix(16))) + field(4, []))), .malformed(3))
        var flagged = entry
        flagged[8] = 2
        XCTAssertEqual(decodeError(replacingGroup(head + field(3, flagged) + field(4, []))), .malformed(3))
        var noPayloadButLength = entry
        noPayloadButLength[13] = 1
        XCTAssertEqual(decodeError(replacingGroup(head + field(3, noPayloadButLength + [0x41]) + field(4, []))), .malformed(3))
        XCTAssertEqual(decodeError(replacingGroup(head + field(3, entry))), .missingField(4))
        XCTAssertEqual(decodeError(replacingGroup(field(3, entry) + field(4, []))), .missingField(1))

        // The filter's messages: an empty package is no message.
        var t = snapshot
        t.telnet = TelnetFilter.State(gmcp: true, gmcpMessages: [GMCPMessage(package: "A", payload: "1")])
        let telnetGood = encode(t)
        XCTAssertEqual(try SessionSnapshot.decode(telnetGood), t)
        var w2 = SnapshotWriter()
        w2.field(SessionSnapshot.TelnetTag.gmcpMessages) { v in v.u64(0); v.u32(2); v.bytes([0x20, 0x31]) }
        let badMessage = w2.out
        var withBad = t
        withBad.telnet?.gmcpMessages = []
        let record = encode(withBad)
        let f2 = try SnapshotReader.fields(record, SnapshotReader.headerSize..<record.count, known: SessionSnapshot.Tag.known)
        let tg = try XCTUnwrap(f2.found[SessionSnapshot.Tag.telnet])
        let newGroup = Array(record[tg]) + badMessage
        let rest = Array(record[SnapshotReader.headerSize..<(tg.lowerBound - 6)]) + field(SessionSnapshot.Tag.telnet, newGroup)
            + record[tg.upperBound...]
        XCTAssertEqual(decodeError(appending(rest, to: Array(record.prefix(SnapshotReader.headerSize)))),
                       .malformed(SessionSnapshot.TelnetTag.gmcpMessages))
    }

    /// A GMCP stream cut at every byte: the filter restored from its snapshot (through the
    /// record) goes on exactly as the original, messages included, and so does the log.
    func testARestoredGMCPFilterAndLogGoOnExactlyAsTheOriginals() throws {
        func gmcp(_ s: String) -> [UInt8] { [IAC, SB, GMCPOPT] + Array(s.utf8) + [IAC, SE] }
        let stream: [UInt8] = Array("Welcome\r\n".utf8) + [IAC, WILL, GMCPOPT, IAC, DO, TTYPE] + gmcp("Char.Vitals {\"hp\":1}")
            + Array("HP ".utf8) + [IAC, SB, GMCPOPT] + Array("Raw ".utf8) + [IAC, IAC, 0x31, IAC, SE] + [IAC, SB, TTYPE, 1, IAC, SE]
            + gmcp("Core.Ping") + Array("> ".utf8) + [IAC, WONT, GMCPOPT] + gmcp("Dropped 1") + [IAC, WILL, GMCPOPT]
            + gmcp("Room.Info {\"num\": 5}") + Array("end".utf8)
        func make() -> TelnetFilter { TelnetFilter(clientAddress: "192.0.2.1", gmcp: true, gmcpVersion: "3.1") }
        /// Feeds and logs as a session would; returns the data.
        func step(_ filter: inout TelnetFilter, _ log: inout GMCPLog, _ end: inout UInt64, _ bytes: ArraySlice<UInt8>) -> [UInt8] {
            let data = feed(&filter, bytes)
            for m in filter.gmcpMessages { log.append(m, offset: end + UInt64(m.position)) }
            filter.gmcpMessages.removeAll()
            end += UInt64(data.count)
            return data
        }
        var whole = make(), wholeLog = GMCPLog(), wholeEnd: UInt64 = 0
        let wholeData = step(&whole, &wholeLog, &wholeEnd, stream[...])
        XCTAssertEqual(wholeLog.next, 4)
        var sawMidMessage = false
        for cut in 0...stream.count {
            var original = make(), log = GMCPLog(), end: UInt64 = 0
            let before = step(&original, &log, &end, stream[..<cut])
            var snapshot = SessionSnapshotTests.goldenSnapshot
            snapshot.ring = ByteRing.State(base: 0, acked: 0, limit: 4096, bytes: before)
            snapshot.delivered = 0
            snapshot.telnet = original.snapshot()
            snapshot.gmcp = log.snapshot()
            if snapshot.telnet!.phase == .sbData && snapshot.telnet!.subnegotiationOption == GMCPOPT
                && !snapshot.telnet!.subnegotiationData.isEmpty { sawMidMessage = true }
            let decoded = try SessionSnapshot.decode(encode(snapshot))
            XCTAssertEqual(decoded, snapshot, "cut \(cut)")
            var restored = TelnetFilter(restoring: try XCTUnwrap(decoded.telnet))
            var restoredLog = GMCPLog(restoring: try XCTUnwrap(decoded.gmcp))
            var restoredEnd = end
            XCTAssertEqual(restored.snapshot(), original.snapshot(), "cut \(cut)")
            let after = step(&original, &log, &end, stream[cut...])
            XCTAssertEqual(step(&restored, &restoredLog, &restoredEnd, stream[cut...]), after, "cut \(cut)")
            XCTAssertEqual(restored.replies, original.replies, "cut \(cut)")
            XCTAssertEqual(restoredLog.snapshot(), log.snapshot(), "cut \(cut)")
            XCTAssertEqual(log.snapshot(), wholeLog.snapshot(), "cut \(cut)")
            XCTAssertEqual(before + after, wholeData, "cut \(cut)")
        }
        XCTAssertTrue(sawMidMessage)
    }
}
