import XCTest
@testable import UVProxy

/// An `UpstreamLink` that records what the session asks of it: the session state machine
/// runs here with no socket, the way SwiftNIO tests handlers on an EmbeddedChannel.
final class FakeLink: UpstreamLink {
    var connectedTo: SocketAddress?
    var sent: [UInt8] = []
    var queuedBytes = 0
    var paused = false
    var closed = false
    var finishing = false
    var pauses = 0

    func connect(to address: SocketAddress) { connectedTo = address }
    func send(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) { sent += Array(a) + Array(b) }
    func pauseReading() { paused = true; pauses += 1 }
    func resumeReading() { paused = false }
    func close() { closed = true }
    func finish() { finishing = true }
    var aborted = false
    func abort() { aborted = true; closed = true }
}

final class RecordingObserver: SessionObserver {
    var changes = 0
    var replaced = 0
    func sessionDidChange(_ session: Session) { changes += 1 }
    func sessionObserverReplaced(_ session: Session) { replaced += 1 }
}

final class SessionTests: XCTestCase {
    var now: UInt64 = 1_000
    var deadlines = DeadlineQueue.manual()
    var links: [FakeLink] = []
    var table: SessionTable!
    let target = Target(name: "default", address: try! SocketAddress(host: "127.0.0.1", port: 9), connectTimeoutMs: 500)

    override func setUp() {
        var settings = SessionSettings()
        settings.bufferSize = 100
        settings.idleTimeoutMs = 10_000
        settings.lingerMs = 5_000
        settings.maxSessions = 2
        deadlines = DeadlineQueue.manual()
        links = []
        capturedSessions = []
        table = SessionTable(settings: settings, deadlines: deadlines, clock: { [unowned self] in self.now }) { _ in FakeLink() }
        makeTable()
    }

    func advance(_ ms: UInt64) {
        now += ms
        deadlines.fire(now: now)
    }

    /// Creates and connects a session.
    func open() throws -> (Session, FakeLink) {
        var result: Result<Session, CreateError>?
        table.create(target: target) { result = $0 }
        XCTAssertNil(result, "answered only once the connect outcome is known")
        let link = links.last!
        XCTAssertNotNil(link.connectedTo)
        let session = try XCTUnwrap(capturedSessions.last)
        table.upstreamConnected(session, status: 0)
        XCTAssertEqual(try result?.get().id, session.id)
        return (session, link)
    }

    /// Sessions handed to the link factory (sessions being created are not in the table yet).
    var capturedSessions: [Session] = []

    func receive(_ s: Session, _ text: String) {
        Array(text.utf8).withUnsafeBytes { s.receive($0) }
    }

    func input(_ s: Session, _ text: String, seq: UInt64? = nil) -> Session.InputResult {
        Array(text.utf8).withUnsafeBytes { s.sendInput($0, .init(start: nil, count: 0), seq: seq) }
    }

    private func makeTable() {
        table = SessionTable(settings: table.settings, deadlines: deadlines, clock: { [unowned self] in self.now }) { [unowned self] session in
            self.capturedSessions.append(session)
            let link = FakeLink()
            self.links.append(link)
            return link
        }
    }

    func testCreateConnectsAndCountsOpenSessions() throws {
        let (s, link) = try open()
        XCTAssertTrue(s.isOpen)
        XCTAssertFalse(link.paused)
        XCTAssertEqual(table.openCount, 1)
        XCTAssertTrue(table.session(s.id) === s)
    }

    /// The client's address is on the session before its link is made (telnet mode reads it
    /// when the link is made, for MNES), and apart from the per-client limit's key.
    func testOriginIsSetBeforeTheLinkIsMade() throws {
        var seen: [String] = []
        var sessions: [Session] = []
        table = SessionTable(settings: table.settings, deadlines: deadlines, clock: { [unowned self] in self.now }) { session in
            seen.append(session.clientAddress)
            sessions.append(session)
            return FakeLink()
        }
        table.create(target: target, origin: SocketAddress(literal: "198.51.100.4", port: 0)) { _ in }
        table.create(target: target) { _ in }
        XCTAssertEqual(seen, ["198.51.100.4", ""])
        XCTAssertEqual(sessions.map(\.clientAddress), ["198.51.100.4", ""])
        XCTAssertNil(sessions[0].client, "no per-client limit here: the origin is not its key")
    }

    func testTheClientAddressIsABareIP() throws {
        var sessions: [Session] = []
        var settings = table.settings
        settings.maxSessions = 100
        table = SessionTable(settings: settings, deadlines: deadlines, clock: { [unowned self] in self.now }) { session in
            sessions.append(session)
            return FakeLink()
        }
        for text in ["127.0.0.1", "[::1]", "[2001:db8::7]", "[::ffff:192.0.2.9]", "::FFFF:192.0.2.9", "203.0.113.5"] {
            table.create(target: target, origin: try XCTUnwrap(SocketAddress(literal: text, port: 4000))) { _ in }
        }
        XCTAssertEqual(sessions.map(\.clientAddress),
                       ["127.0.0.1", "::1", "2001:db8::7", "192.0.2.9", "192.0.2.9", "203.0.113.5"],
                       "no brackets; a dual-stack listener's IPv4 client as IPv4")
        XCTAssertEqual(sessions.count, 6)
        XCTAssertEqual(sessions.last?.origin, ProxyProtocol.Endpoint(address: [203, 0, 113, 5], port: 4000))
        XCTAssertEqual(sessions.dropFirst(3).first?.origin, ProxyProtocol.Endpoint(address: [192, 0, 2, 9], port: 4000))
    }

    func testRefusedConnectLeavesNoSessionAndNoSlot() {
        var result: Result<Session, CreateError>?
        table.create(target: target) { result = $0 }
        table.upstreamConnected(capturedSessions[0], status: -111)
        XCTAssertEqual(result.map { r -> CreateError? in if case .failure(let e) = r { return e }; return nil }, .failed("ECONNREFUSED"))
        XCTAssertEqual(table.openCount, 0)
        XCTAssertTrue(links[0].closed)
        XCTAssertEqual(table.counters.connectFailures, 1)
    }

    func testConnectTimeout() {
        var result: Result<Session, CreateError>?
        table.create(target: target) { result = $0 }
        advance(499)
        XCTAssertNil(result)
        advance(1)
        XCTAssertEqual(result.map { r -> CreateError? in if case .failure(let e) = r { return e }; return nil }, .timedOut)
        XCTAssertEqual(table.openCount, 0)
        XCTAssertTrue(links[0].closed)
    }

    func testMaxSessionsCountsOpenOnly() throws {
        let (a, _) = try open()
        _ = try open()
        var result: Result<Session, CreateError>?
        table.create(target: target) { result = $0 }
        XCTAssertEqual(result.map { r -> CreateError? in if case .failure(let e) = r { return e }; return nil }, .full)
        table.close(a, reason: .eof)
        _ = try open()  // a closed, lingering session does not take a slot
        XCTAssertEqual(table.openCount, 2)
        XCTAssertEqual(table.closedCount, 1)
    }

    func testBackpressurePausesAtBufferSizeAndResumesOnAck() throws {
        let (s, link) = try open()
        receive(s, String(repeating: "x", count: 60))
        XCTAssertFalse(link.paused)
        XCTAssertEqual(s.readRoom, 40)
        receive(s, String(repeating: "y", count: 40))
        XCTAssertTrue(link.paused, "unacknowledged bytes reached buffer-size")
        XCTAssertEqual(s.readRoom, 0)
        s.acknowledge(upTo: 10)
        XCTAssertFalse(link.paused)
        XCTAssertEqual(s.readRoom, 10)
        XCTAssertEqual(table.counters.backpressurePauses, 1)
    }

    func testTargetCloseKeepsBytesReadableThenLingerRemoves() throws {
        let (s, link) = try open()
        receive(s, "bye")
        table.upstreamEnded(s, error: UVError.eof)
        XCTAssertEqual(s.closeReason, .eof)
        XCTAssertTrue(link.closed)
        XCTAssertEqual(s.ring.bytes(from: 0), Array("bye".utf8))
        XCTAssertEqual(table.openCount, 0)
        advance(4_999)
        XCTAssertNotNil(table.session(s.id))
        advance(1)
        XCTAssertNil(table.session(s.id))
        XCTAssertEqual(table.closedCount, 0)
    }

    func testResetAndErrorReasons() {
        XCTAssertEqual(CloseReason(uvError: UVError.connectionReset).text, "reset")
        XCTAssertEqual(CloseReason(uvError: UVError.eof).text, "eof")
        XCTAssertEqual(CloseReason(uvError: UVError.timedOut).text, "error: ETIMEDOUT")
    }

    func testIdleTimeoutIsLazyAndCountsTouches() throws {
        let (s, _) = try open()
        advance(6_000)
        s.lastTouched = now      // a request touched it
        advance(4_000)           // the original deadline passes: rescheduled, not closed
        XCTAssertTrue(s.isOpen)
        advance(6_000)
        XCTAssertEqual(s.closeReason, .idleTimeout)
    }

    func testWaitingReadCountsAsTouch() throws {
        let (s, _) = try open()
        let w = RecordingObserver()
        s.setWaiter(w)
        advance(25_000)
        XCTAssertTrue(s.isOpen)
        s.removeWaiter(w)
        advance(10_000)
        XCTAssertEqual(s.closeReason, .idleTimeout)
    }

    func testObserversWakeOnDataAndCloseAndAreReplaced() throws {
        let (s, _) = try open()
        let first = RecordingObserver(), second = RecordingObserver()
        s.setWaiter(first)
        s.setWaiter(second)
        XCTAssertEqual(first.replaced, 1, "a newer read supersedes an older one")
        receive(s, "data")
        XCTAssertEqual(second.changes, 1)
        XCTAssertNil(s.waiter, "a long-poll is answered once")
        let third = RecordingObserver()
        s.setWaiter(third)
        table.close(s, reason: .reset)
        XCTAssertEqual(third.changes, 1)
    }

    func testSeqDeduplication() throws {
        let (s, link) = try open()
        XCTAssertEqual(input(s, "a\r\n", seq: 1), .queued)
        XCTAssertEqual(input(s, "a\r\n", seq: 1), .duplicate)
        XCTAssertEqual(input(s, "b\r\n", seq: 5), .queued, "seq may skip ahead")
        XCTAssertEqual(input(s, "c\r\n", seq: 3), .duplicate)
        XCTAssertEqual(input(s, "d\r\n"), .queued, "no seq: always sent")
        XCTAssertEqual(input(s, "e\r\n", seq: 6), .queued)
        XCTAssertEqual(String(decoding: link.sent, as: UTF8.self), "a\r\nb\r\nd\r\ne\r\n")
    }

    func testInputRefusedWhenClosedOrQueueFull() throws {
        let (s, link) = try open()
        link.queuedBytes = 101
        XCTAssertEqual(input(s, "x"), .full)
        link.queuedBytes = 100
        XCTAssertEqual(input(s, "x"), .queued)
        table.close(s, reason: .eof)
        XCTAssertEqual(input(s, "x"), .closed)
    }

    func testDeleteRemovesAtOnceAndDrainsQueuedInput() throws {
        let (s, link) = try open()
        link.queuedBytes = 10
        let w = RecordingObserver()
        s.setWaiter(w)
        table.delete(s)
        XCTAssertNil(table.session(s.id))
        XCTAssertEqual(s.closeReason, .deleted)
        XCTAssertEqual(w.changes, 1, "a waiting read is answered")
        XCTAssertFalse(link.closed, "queued input is still written")
        XCTAssertTrue(link.finishing, "the connection ends with FIN after the input, not a reset")
        advance(5_000)
        XCTAssertTrue(link.closed, "at most 5 seconds")
        XCTAssertTrue(link.aborted, "then a reset: the connection really closes")
        XCTAssertEqual(table.openCount, 0)
        XCTAssertEqual(table.closedCount, 0)
        XCTAssertEqual(table.draining, 0)
    }

    /// Drains in progress are counted, a deleted session's too (no longer in the table): a
    /// shutdown waits for them all.
    func testDrainsAreCountedDeletedOrNot() throws {
        let (deleted, deletedLink) = try open()
        let (closing, _) = try open()
        deletedLink.queuedBytes = 10
        table.delete(deleted)
        XCTAssertEqual(table.draining, 1)
        XCTAssertEqual(table.closeAll(reason: .shutdown), 2, "the deleted session's drain counts")
        table.upstreamFinished(deleted)
        XCTAssertEqual(table.draining, 1)
        table.upstreamFinished(closing)
        XCTAssertEqual(table.draining, 0)
    }

    func testShutdownClosesOpenSessionsAndFailsPendingCreates() throws {
        let (s, link) = try open()
        var result: Result<Session, CreateError>?
        table.create(target: target) { result = $0 }
        table.closeAll(reason: .shutdown)
        XCTAssertEqual(s.closeReason, .shutdown)
        XCTAssertTrue(link.finishing, "input still queued is delivered")
        XCTAssertEqual(result.map { r -> CreateError? in if case .failure(let e) = r { return e }; return nil }, .shuttingDown)
        XCTAssertTrue(links.last!.closed, "the pending connect is abandoned")
        XCTAssertEqual(table.openCount, 0)
    }

    func testDeleteClosesAsSoonAsInputIsDelivered() throws {
        let (s, link) = try open()
        link.queuedBytes = 10
        table.delete(s)
        link.queuedBytes = 0
        table.upstreamFinished(s)
        XCTAssertTrue(link.closed)
    }
}

final class DeadlineQueueTests: XCTestCase {
    final class Owner: DeadlineOwner {
        var deadline: UInt64 = 0
        var deadlineSlot = -1
        var fired: [UInt64] = []
        func deadlineReached(now: UInt64) { fired.append(now) }
    }

    func testFiresInOrderAndSupportsMoveAndCancel() {
        let q = DeadlineQueue.manual()
        let owners = (0..<50).map { _ in Owner() }
        for (i, o) in owners.enumerated() { q.schedule(o, at: UInt64((i * 7919) % 50 + 1)) }
        q.cancel(owners[10])
        q.schedule(owners[20], at: 1_000)
        XCTAssertEqual(q.count, 49)
        var order: [UInt64] = []
        for t in 1...60 {
            q.fire(now: UInt64(t))
            for o in owners where o.fired.last == UInt64(t) { order.append(o.deadline) }
        }
        XCTAssertEqual(order, order.sorted())
        XCTAssertTrue(owners[10].fired.isEmpty)
        XCTAssertTrue(owners[20].fired.isEmpty)
        XCTAssertEqual(q.count, 1)
        q.fire(now: 1_000)
        XCTAssertEqual(owners[20].fired, [1_000])
        XCTAssertEqual(q.count, 0)
    }
}
