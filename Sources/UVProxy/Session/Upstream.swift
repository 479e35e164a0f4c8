/// The real `UpstreamLink`: a session's TCP connection to its target.
///
/// Bytes read go straight into the session's ring (`Session.receive`), never more than the
/// ring's room, so a client that stops acknowledging stops the target through TCP. In telnet
/// mode a `TelnetFilter` sits in between (it never passes on more than it was given, so the
/// room still holds) and its replies go back to the target.
final class Upstream: UpstreamLink, TCPStreamDelegate, DeadlineOwner {
    private let stream: TCPStream
    private let session: Session
    /// Telnet mode only: other sessions pay one pointer for it.
    private let telnet: TelnetState?
    /// Ending gracefully: input is being delivered, what the target sends is discarded.
    private var finishing = false
    /// Reading is paused: the session's buffer is full (backpressure to the target) …
    private var pausedForRoom = false
    /// … or the target does not read what we owe it (telnet replies, input) past the input
    /// limit: a target that negotiates without reading cannot grow our memory (SPEC §5).
    private var pausedForOwed = false
    var deadline: UInt64 = 0
    var deadlineSlot = -1

    init(loop: EventLoop, session: Session) throws {
        stream = try TCPStream(loop: loop)
        self.session = session
        telnet = session.target.telnet ? TelnetState(session) : nil
        stream.delegate = self
    }

    /// The new process's side of an upgrade (SPEC §9): the connection `stream`, received from
    /// the old process, already connected. The telnet filter carries on from `telnet`, and
    /// `unwrittenOutput` (what the old process owed the target, escaped already) goes out
    /// first, as it is. Reading starts when the table adopts the session.
    init(session: Session, adopting stream: TCPStream, telnet: TelnetFilter.State?, unwrittenOutput: [UInt8]) {
        self.stream = stream
        self.session = session
        self.telnet = session.target.telnet ? TelnetState(restoring: telnet, session) : nil
        stream.delegate = self
        if !unwrittenOutput.isEmpty {
            unwrittenOutput.withUnsafeBytes { _ = stream.write($0) }
            checkOwed()
        }
    }

    /// A second handle on the target connection, to send to a new process; this one may close
    /// at once without the target seeing anything.
    func duplicateStream() throws -> TCPStream { try stream.duplicate() }

    /// Connects to the target; a target that wants a PROXY header gets it as the connection's
    /// first bytes (SPEC §6), before anything of the session can be written.
    func connect(to address: SocketAddress) {
        guard let version = session.target.proxyProtocol else { return stream.connect(to: address) }
        let count: Int
        if let source = session.origin, let destination = session.target.endpoint {
            count = withUnsafeTemporaryAllocation(byteCount: ProxyProtocol.maxHeaderLength, alignment: 1) { buffer in
                let n = ProxyProtocol.writeHeader(version, source: source, destination: destination, into: buffer)
                stream.connect(to: address, first: UnsafeRawBufferPointer(rebasing: buffer[..<n]))
                return n
            }
        } else {
            // The client is not known: v1 `UNKNOWN` / v2 `LOCAL` (the game then sees us).
            let header = ProxyProtocol.localHeader(version)
            header.withUnsafeBytes { stream.connect(to: address, first: $0) }
            count = header.count
        }
        session.table.counters.upstreamSentBytes += UInt64(count)
    }

    func send(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) {
        defer { checkOwed() }
        guard telnet != nil, TelnetFilter.needsEscaping(a) || TelnetFilter.needsEscaping(b) else {
            stream.write(a, b)
            return
        }
        // Telnet: a 255 in input goes as IAC IAC. Rare (Latin-1 ÿ), so a copy is fine.
        var escaped: [UInt8] = []
        escaped.reserveCapacity(a.count + b.count + 8)
        TelnetFilter.escapeInput(a, into: &escaped)
        TelnetFilter.escapeInput(b, into: &escaped)
        escaped.withUnsafeBytes { _ = stream.write($0) }
    }

    var queuedBytes: Int { stream.queuedWriteBytes }

    var gmcpEnabled: Bool { telnet?.filter.gmcpEnabled ?? false }

    /// A GMCP message to the target (SPEC §7), as the whole subnegotiation (already escaped):
    /// written as it is, after the input queued before it.
    func sendTelnet(_ command: [UInt8]) {
        guard telnet != nil, !finishing else { return }
        command.withUnsafeBytes { _ = stream.write($0) }
        session.table.counters.upstreamSentBytes += UInt64(command.count)
        checkOwed()
    }

    /// GMCP a client sent before the target offered it (a WebSocket's `Core.Supports.Set` as it
    /// opens, before the game's greeting): written once GMCP is on. At most `maxHeldGMCP` bytes
    /// per session (a few messages; the rest is dropped, as GMCP sent too early was before);
    /// freed with the connection, and not handed over by an upgrade.
    private var heldGMCP: [UInt8] = []
    static let maxHeldGMCP = 4096

    var heldGMCPBytes: Int { heldGMCP.count }

    func holdGMCP(_ command: [UInt8]) -> Bool {
        guard telnet != nil, !finishing, heldGMCP.count + command.count <= Upstream.maxHeldGMCP else { return false }
        heldGMCP += command
        return true
    }

    func handOverState() -> UpstreamHandOver {
        UpstreamHandOver(telnet: telnet?.filter.snapshot(), unwrittenOutput: stream.unwrittenBytes())
    }

    func pauseReading() {
        pausedForRoom = true
        stream.stopReading()
    }

    func resumeReading() {
        pausedForRoom = false
        if !pausedForOwed { stream.startReading() }
    }

    /// What we owe the target is over the session's input limit: stop reading it until it
    /// reads (`streamDidDrainWrites`).
    private func checkOwed() {
        guard !pausedForOwed, !finishing, stream.queuedWriteBytes > session.ring.limit else { return }
        pausedForOwed = true
        session.table.counters.backpressurePauses += 1
        stream.stopReading()
    }

    func streamDidDrainWrites(_ stream: TCPStream) {
        guard pausedForOwed else { return }
        pausedForOwed = false
        if !pausedForRoom || finishing { stream.startReading() }
    }

    /// FIN after the queued input, keep reading (a close with unread bytes would send a reset,
    /// and a reset throws away input the target has not read yet), and report once the kernel
    /// holds nothing more for the target.
    func finish() {
        guard !finishing else { return }
        finishing = true
        pausedForOwed = false
        stream.startReading()
        stream.shutdown { [unowned self] in self.checkDelivered() }
    }

    private func checkDelivered() {
        if stream.unsentBytes == 0 {
            session.table.upstreamFinished(session)
        } else {
            stream.loop.deadlines.schedule(self, at: stream.loop.now + 20)
        }
    }

    func deadlineReached(now: UInt64) { checkDelivered() }

    func close() {
        stream.loop.deadlines.cancel(self)
        stream.close()
    }

    func abort() {
        stream.loop.deadlines.cancel(self)
        stream.closeWithReset()
    }

    // MARK: TCPStreamDelegate

    func stream(_ stream: TCPStream, didConnect status: Int32) {
        if status == 0 {
            stream.enableKeepAlive(seconds: 60)
        }
        session.table.upstreamConnected(session, status: status)
    }

    func stream(_ stream: TCPStream, didRead bytes: UnsafeRawBufferPointer) {
        guard !finishing else { return }
        guard let telnet else { return session.receive(bytes) }
        session.receive(bytes, through: &telnet.filter)
        // The client's next request may have run meanwhile and ended the connection (finish
        // has sent FIN: nothing more may follow it).
        guard !telnet.filter.replies.isEmpty, !finishing else { return }
        // GMCP held for the target's offer goes right after our answer to it (DO, Core.Hello).
        if !heldGMCP.isEmpty, telnet.filter.gmcpEnabled {
            telnet.filter.replies += heldGMCP
            heldGMCP = []
        }
        telnet.filter.replies.withUnsafeBytes { _ = stream.write($0) }
        session.table.counters.upstreamSentBytes += UInt64(telnet.filter.replies.count)
        telnet.filter.replies.removeAll()  // negotiation is rare after the greeting: free it
        checkOwed()
    }

    func streamReadLimit(_ stream: TCPStream) -> Int { finishing ? EventLoop.readSlabSize : session.readRoom }

    func stream(_ stream: TCPStream, didEnd error: Int32) {
        session.table.upstreamEnded(session, error: error)
    }
}

/// The telnet parser of one upstream connection, in its own object so that sessions without
/// telnet hold none of it.
private final class TelnetState {
    var filter: TelnetFilter

    /// The session's client address (MNES) and whether its target speaks UTF-8 (MTTS).
    init(_ session: Session) {
        filter = TelnetFilter(clientAddress: session.clientAddress, utf8: session.target.charset == .utf8,
                              gmcp: session.target.gmcp, gmcpVersion: UVProxyVersion.text)
    }

    /// Carries on from a handed-over state; a session that had none (its old target did not
    /// speak telnet) starts afresh.
    init(restoring state: TelnetFilter.State?, _ session: Session) {
        if let state {
            filter = TelnetFilter(restoring: state)
        } else {
            filter = TelnetFilter(clientAddress: session.clientAddress, utf8: session.target.charset == .utf8,
                                  gmcp: session.target.gmcp, gmcpVersion: UVProxyVersion.text)
        }
    }
}
