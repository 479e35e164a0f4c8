/// The real `UpstreamLink`: a session's TCP connection to its target.
///
/// Bytes read go straight into the session's ring (`Session.receive`), never more than the
/// ring's room, so a client that stops acknowledging stops the target through TCP.
final class Upstream: UpstreamLink, TCPStreamDelegate, DeadlineOwner {
    private let stream: TCPStream
    private let session: Session
    /// Ending gracefully: input is being delivered, what the target sends is discarded.
    private var finishing = false
    var deadline: UInt64 = 0
    var deadlineSlot = -1

    init(loop: EventLoop, session: Session) throws {
        stream = try TCPStream(loop: loop)
        self.session = session
        stream.delegate = self
    }

    func connect(to address: SocketAddress) { stream.connect(to: address) }

    func send(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) { stream.write(a, b) }

    var queuedBytes: Int { stream.queuedWriteBytes }

    func pauseReading() { stream.stopReading() }

    func resumeReading() { stream.startReading() }

    /// FIN after the queued input, keep reading (a close with unread bytes would send a reset,
    /// and a reset throws away input the target has not read yet), and report once the kernel
    /// holds nothing more for the target.
    func finish() {
        guard !finishing else { return }
        finishing = true
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
        if status == 0 { stream.enableKeepAlive(seconds: 60) }
        session.table.upstreamConnected(session, status: status)
    }

    func stream(_ stream: TCPStream, didRead bytes: UnsafeRawBufferPointer) {
        if !finishing { session.receive(bytes) }
    }

    func streamReadLimit(_ stream: TCPStream) -> Int { finishing ? EventLoop.readSlabSize : session.readRoom }

    func stream(_ stream: TCPStream, didEnd error: Int32) {
        session.table.upstreamEnded(session, error: error)
    }
}
