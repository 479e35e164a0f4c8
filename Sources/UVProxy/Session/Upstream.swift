/// The real `UpstreamLink`: a session's TCP connection to its target.
///
/// Bytes read go straight into the session's ring (`Session.receive`), never more than the
/// ring's room, so a client that stops acknowledging stops the target through TCP.
final class Upstream: UpstreamLink, TCPStreamDelegate {
    private let stream: TCPStream
    private let session: Session

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

    func close() { stream.close() }

    // MARK: TCPStreamDelegate

    func stream(_ stream: TCPStream, didConnect status: Int32) {
        if status == 0 { stream.enableKeepAlive(seconds: 60) }
        session.table.upstreamConnected(session, status: status)
    }

    func stream(_ stream: TCPStream, didRead bytes: UnsafeRawBufferPointer) {
        session.receive(bytes)
    }

    func streamReadLimit(_ stream: TCPStream) -> Int { session.readRoom }

    func stream(_ stream: TCPStream, didEnd error: Int32) {
        session.table.upstreamEnded(session, error: error)
    }

    func streamDidDrainWrites(_ stream: TCPStream) {
        session.table.upstreamDrained(session)
    }
}
