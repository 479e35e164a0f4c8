import Logging
#if canImport(Glibc)
import Glibc
#endif

/// SIGUSR2 (SPEC §9): an in-place upgrade that drops nobody. Both sides are here: the old
/// process that hands over, and the new one that takes over.
///
/// 1. The old process starts the binary at its own path (which may have been replaced) with its
///    own arguments, passing it one end of a Unix socket pair (`IPCPipe`) as descriptor 3 and
///    the listening socket as descriptor 4, named in `UVPROXYD_TAKE_OVER=3,4`.
/// 2. The new process reads its configuration and resolves its targets as at any start, takes
///    the listening socket without accepting on it yet, and answers `ready` (`HandOverReply`).
///    Until then nothing has changed in the old process: a new binary that fails to start, to
///    read its configuration or to answer within `upgradeTimeoutMs` is killed and logged, and
///    the old process goes on serving.
/// 3. On `ready`, in one loop turn, the old process stops accepting (new connections wait in
///    the kernel's backlog), answers every client connection what it waits for and lets each
///    close after its current response, fails creates still connecting with 503 (the client
///    creates again), and for each session takes its snapshot, sends the record with a
///    duplicate of its target socket, closes its own handle (no FIN: the duplicate holds the
///    socket) and lets the session go. Nothing reads from a target between the snapshot and
///    the close, so what a target sends meanwhile waits in the kernel for the new process.
/// 4. The new process rebuilds each session (`SessionTable.adopt`, with an `Upstream` on the
///    received socket that first writes what the old one still owed the target), starts
///    accepting, and answers `taken`. The old process closes its listening socket and shuts
///    down as on SIGTERM, with no session left: it exits 0 once its client connections have
///    closed.
///
/// The point of no return is step 3. A new process that dies after it (a crash while adopting)
/// loses the sessions it had not adopted; the old one then accepts again, so the service
/// stays up. docs/OPERATIONS.md ("Upgrade in place") has the operator's side.
extension ProxyDaemon {
    /// The environment variable that tells a new process what it takes over.
    public static let takeOverVariable = "UVPROXYD_TAKE_OVER"
    /// The version the hand-over records name (logs).
    static let versionText = "uvproxyd (state format \(SessionSnapshot.formatVersion))"

    // MARK: The old process

    /// SIGUSR2: starts the new binary and hands everything over once it is ready.
    public func upgrade() {
        guard upgradeOut == nil, takeOverIn == nil else {
            return logger.warning("upgrade already in progress: this SIGUSR2 is ignored")
        }
        guard shutdownTimer == nil, drainTimer == nil else {
            return logger.warning("upgrade refused: the daemon is draining or shutting down")
        }
        guard demo == nil else {
            return logger.warning("upgrade refused: the demo game runs inside this process and cannot be handed over")
        }
        guard let listenFD = server.listenerDescriptor else { return }
        let path = executablePath
        logger.notice("upgrade: starting \(path)", metadata: ["open": "\(table.openCount)", "lingering": "\(table.closedCount)"])
        do {
            let (mine, theirs) = try makeSocketPair()
            defer { close(theirs) }
            var environment = ProxyDaemon.environment().filter { !$0.hasPrefix(ProxyDaemon.takeOverVariable + "=") }
            environment.append("\(ProxyDaemon.takeOverVariable)=3,4")
            let child: ChildProcess
            do {
                child = try ChildProcess(loop: loop, path: path, arguments: arguments, environment: environment,
                                         passing: [theirs, listenFD]) { [unowned self] status, signal in
                    self.upgradeChildExited(status: status, signal: signal)
                }
            } catch {
                close(mine)
                throw error
            }
            do {
                try beginUpgrade(channel: mine, child: child)
            } catch {
                child.kill(SIGKILL)
                throw error
            }
        } catch {
            logger.warning("upgrade failed: cannot start \(path): \(error); still serving")
        }
    }

    /// Waits on `channel` for the new process (`child`, or one the caller started: the tests)
    /// to say `ready`, then hands everything over.
    func beginUpgrade(channel: Int32, child: ChildProcess?) throws {
        let pipe = try IPCPipe(loop: loop, fd: channel)
        let out = UpgradeOut(pipe: pipe, child: child, started: loop.now)
        upgradeOut = out
        let timer = try LoopTimer(loop: loop)
        out.timer = timer
        timer.onFire = { [unowned self] in self.upgradeTimedOut() }
        timer.start(after: upgradeTimeoutMs)
        pipe.startReading(onRead: { [unowned self] bytes in self.upgradeRead(bytes) },
                          onEnd: { [unowned self] _ in self.upgradeChannelEnded() })
    }

    private func upgradeRead(_ bytes: UnsafeRawBufferPointer) {
        guard let out = upgradeOut else { return }
        out.reader.append(bytes)
        do {
            while let record = try out.reader.next() {
                let reply = try HandOverReply.decode(record)
                switch (reply.kind, out.phase) {
                case (.ready, .starting):
                    guard reply.nodeID == (config.nodeId ?? "") else {
                        return abortUpgrade("the new process's node-id '\(reply.nodeID)' is not this one's '\(config.nodeId ?? "")'")
                    }
                    handOver(out)
                case (.taken, .handedOver):
                    return upgradeDone(out, sessions: reply.sessionCount)
                default:
                    return abortUpgrade("the new process said \(reply.kind) out of turn")
                }
            }
        } catch {
            abortUpgrade("the new process sent a bad record: \(error)")
        }
    }

    /// The point of no return. In this turn the clients are let go and the header says how many
    /// records follow; then the sessions go over in batches (`sendSessions`).
    private func handOver(_ out: UpgradeOut) {
        out.handOverStarted = EventLoop.hrtime
        out.phase = .handedOver
        server.pauseAccepting()
        for connection in server.allConnections { api.releaseForUpgrade(connection) }
        table.failPendingCreates(.shuttingDown)
        out.queue = table.allSessions
        var header: [UInt8] = []
        DaemonSnapshot(nodeID: config.nodeId ?? "", sessionCount: UInt64(out.queue.count), loopTimeMs: loop.now,
                       writerVersion: ProxyDaemon.versionText).encode(into: &header)
        out.pipe.write(header)
        sendSessions(out)
    }

    /// Sends sessions until `handOverBatch` records are in flight; each write's completion
    /// sends more. A session waiting for its turn is served as before (no client request comes
    /// any more: only its target's bytes, which go into the record when its turn comes).
    ///
    /// Each session, in one turn: a second descriptor for its target connection, its snapshot
    /// (`TCPStream.unwrittenBytes` holds only until libuv writes again), the close of its own
    /// handle (no FIN: the duplicate holds the socket), and the record, encoded at once so that
    /// the buffered bytes are held once, in the record waiting for the pipe. A session that can
    /// have no second descriptor while none is in flight (out of descriptors) is closed and
    /// handed over closed: its client reads its bytes and the reason.
    private func sendSessions(_ out: UpgradeOut) {
        guard out.phase == .handedOver else { return }
        while out.sent < out.queue.count && out.inFlight < handOverBatch {
            let session = out.queue[out.sent]
            var socket: TCPStream?
            if session.state == .open, let upstream = session.link as? Upstream {
                do {
                    socket = try upstream.duplicateStream()
                } catch {
                    if out.inFlight > 0 { break }  // descriptors come back as writes complete
                    table.close(session, reason: .shutdown)
                    out.closedForLackOfDescriptors += 1
                }
            }
            var record: [UInt8] = []
            session.snapshot(now: loop.now)?.encode(into: &record)
            session.link?.close()
            table.release(session)
            out.sent += 1
            out.inFlight += 1
            let rc = out.pipe.write(record, handle: socket) { [unowned self] status in
                socket?.close()
                out.inFlight -= 1
                guard status == 0 else {
                    return self.abortUpgrade("cannot write to the new process: \(UVError.name(status))")
                }
                self.sendSessions(out)
            }
            if rc != 0 {
                socket?.close()
                return abortUpgrade("cannot write to the new process: \(UVError.name(rc))")
            }
        }
        guard !out.allSent, out.sent == out.queue.count else { return }
        out.allSent = true
        out.queue = []
        var metadata: Logger.Metadata = [
            "sessions": "\(out.sent)", "pid": "\(out.child?.pid ?? 0)",
            "handover_ms": "\((EventLoop.hrtime - out.handOverStarted) / 1_000_000)",
        ]
        if out.closedForLackOfDescriptors > 0 { metadata["closed_no_descriptor"] = "\(out.closedForLackOfDescriptors)" }
        logger.notice("upgrade: sessions handed over to the new process", metadata: metadata)
    }

    private func upgradeDone(_ out: UpgradeOut, sessions: UInt64) {
        logger.notice("upgrade: the new process serves; this one exits when its connections have closed", metadata: [
            "pid": "\(out.child?.pid ?? 0)", "sessions": "\(sessions)", "ms": "\(loop.now - out.started)",
        ])
        out.phase = .done
        out.timer?.close()
        out.pipe.close()
        server.stopAccepting()
        shutdown()
    }

    /// The upgrade failed: the new process is stopped and this one serves on.
    func abortUpgrade(_ why: String) {
        guard let out = upgradeOut, out.phase != .done else { return }
        upgradeOut = nil
        let phase = out.phase
        out.phase = .aborted  // no more records: the sessions not sent yet stay here
        out.queue = []
        out.timer?.close()
        out.pipe.close()
        out.child?.kill(SIGKILL)
        server.resumeAccepting()
        if phase == .handedOver {
            logger.error("upgrade failed after the hand-over began: \(why); the sessions handed over are lost; accepting again", metadata: [
                "sessions": "\(out.sent)", "kept": "\(table.openCount + table.closedCount)",
            ])
        } else {
            logger.warning("upgrade failed: \(why); still serving")
        }
    }

    private func upgradeTimedOut() {
        guard let out = upgradeOut else { return }
        abortUpgrade(out.phase == .starting
            ? "the new process was not ready within \(upgradeTimeoutMs / 1000) s"
            : "the new process did not take over within \(upgradeTimeoutMs / 1000) s")
    }

    private func upgradeChannelEnded() {
        guard let out = upgradeOut, out.phase != .done else { return }
        // A process that is exiting closes its channel first: its exit status says more.
        if let child = out.child, !child.hasExited { return }
        abortUpgrade("the new process closed its channel")
    }

    private func upgradeChildExited(status: Int64, signal: Int32) {
        guard let out = upgradeOut, out.phase != .done else { return }
        abortUpgrade("the new process exited (status \(status)\(signal != 0 ? ", signal \(signal)" : ""))")
    }

    /// This process's environment, as `NAME=value`.
    static func environment() -> [String] {
        var out: [String] = []
        var p = environ
        while let entry = p.pointee {
            out.append(String(cString: entry))
            p += 1
        }
        return out
    }

    /// The path this binary was started from (`/proc/self/exe`), read at start: a binary
    /// replaced at that path since is the one an upgrade starts.
    static func ownExecutablePath() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return CommandLine.arguments.first ?? "uvproxyd" }
        let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return path.hasSuffix(" (deleted)") ? String(path.dropLast(10)) : path
    }

    // MARK: The new process

    /// Starts taking over from the old process: says `ready`, then reads its sessions.
    func startTakeOver(channel: Int32) {
        let pipe: IPCPipe
        do {
            pipe = try IPCPipe(loop: loop, fd: channel)
        } catch {
            logger.error("upgrade: cannot open the channel to the old process: \(error); serving without its sessions")
            return server.resumeAccepting()
        }
        let inbound = TakeOverIn(pipe: pipe, started: EventLoop.hrtime)
        takeOverIn = inbound
        var ready: [UInt8] = []
        HandOverReply(kind: .ready, nodeID: config.nodeId ?? "", version: ProxyDaemon.versionText).encode(into: &ready)
        pipe.write(ready)
        pipe.startReading(onRead: { [unowned self] bytes in self.takeOverRead(bytes) },
                          onEnd: { [unowned self] error in
                              self.takeOverFinished(cutShort: "the old process closed the channel (\(UVError.name(error)))")
                          })
    }

    private func takeOverRead(_ bytes: UnsafeRawBufferPointer) {
        guard let inbound = takeOverIn else { return }
        inbound.reader.append(bytes)
        do {
            while let record = try inbound.reader.next() {
                guard let header = inbound.header else {
                    let header = try DaemonSnapshot.decode(record)
                    inbound.header = header
                    logger.info("upgrade: taking over", metadata: [
                        "sessions": "\(header.sessionCount)", "from": "\(header.writerVersion)",
                    ])
                    if header.sessionCount == 0 { return takeOverFinished(cutShort: nil) }
                    continue
                }
                take(try SessionSnapshot.decode(record), inbound)
                inbound.received += 1
                if inbound.received == header.sessionCount { return takeOverFinished(cutShort: nil) }
            }
        } catch {
            takeOverFinished(cutShort: "a bad record: \(error)")
        }
    }

    /// Rebuilds one session from its record and the socket that came with it.
    private func take(_ snapshot: SessionSnapshot, _ inbound: TakeOverIn) {
        var socket: TCPStream?
        if snapshot.status == .open {
            socket = try? inbound.pipe.acceptStream()
            guard socket != nil else {
                inbound.lost += 1
                return logger.warning("upgrade: an open session came without its connection", metadata: [
                    "session": "\(ProxyDaemon.shortID(snapshot.id))",
                ])
            }
        }
        // A target a reload removed: the session goes on with it as it was (new sessions cannot
        // name it). Only an older writer's record lacks it.
        let kept = snapshot.target.map {
            Target(name: snapshot.targetName, address: SocketAddress($0.address), telnet: $0.telnet, charset: $0.charset,
                   gmcp: $0.gmcp)
        }
        guard let target = api.settings.target(named: snapshot.targetName) ?? kept else {
            socket?.close()
            inbound.lost += 1
            return logger.warning("upgrade: the session's target is not in this configuration; its connection is closed", metadata: [
                "session": "\(ProxyDaemon.shortID(snapshot.id))", "target": "\(snapshot.targetName)",
            ])
        }
        do {
            try table.adopt(snapshot, target: target) { session in
                socket.map { Upstream(session: session, adopting: $0, telnet: snapshot.telnet, unwrittenOutput: snapshot.unwrittenOutput) }
            }
            inbound.taken += 1
        } catch {
            socket?.close()
            inbound.lost += 1
            logger.warning("upgrade: session not taken: \(error)", metadata: ["session": "\(ProxyDaemon.shortID(snapshot.id))"])
        }
    }

    /// Every session is in (or the channel ended early): accept, and tell the old process.
    private func takeOverFinished(cutShort: String?) {
        guard let inbound = takeOverIn else { return }
        takeOverIn = nil
        guard inbound.header != nil else {
            // The old process gave up before it handed anything over (it serves on, or is gone).
            logger.error("upgrade: \(cutShort ?? "no state"), before the hand-over; this process stops")
            inbound.pipe.close()
            return shutdown()
        }
        // Handles that came without a record that took them.
        while let stray = try? inbound.pipe.acceptStream() { stray.close() }
        server.resumeAccepting()
        // systemd follows this process as the unit's main one from now on (before the old exits).
        SystemdNotify.send("MAINPID=\(getpid())\nREADY=1")
        var taken: [UInt8] = []
        HandOverReply(kind: .taken, nodeID: config.nodeId ?? "", sessionCount: UInt64(inbound.taken),
                      version: ProxyDaemon.versionText).encode(into: &taken)
        let pipe = inbound.pipe
        pipe.write(taken) { _ in pipe.close() }
        let metadata: Logger.Metadata = [
            "sessions": "\(inbound.taken)", "lost": "\(inbound.lost)",
            "ms": "\((EventLoop.hrtime - inbound.started) / 1_000_000)",
        ]
        if let cutShort {
            logger.error("upgrade: the hand-over was cut short (\(cutShort)); serving what was taken", metadata: metadata)
        } else {
            logger.notice("upgrade: took over from the old process; serving", metadata: metadata)
        }
    }
}

/// The old process's side of an upgrade in progress.
final class UpgradeOut {
    enum Phase { case starting, handedOver, done, aborted }
    let pipe: IPCPipe
    let child: ChildProcess?
    let started: UInt64
    var timer: LoopTimer?
    var phase = Phase.starting
    var reader = SnapshotStreamReader(maxRecordBytes: 64 * 1024)
    /// The hand-over: the sessions in the order they go, how many went, how many records the
    /// pipe has not taken yet.
    var queue: [Session] = []
    var sent = 0
    var inFlight = 0
    var allSent = false
    var closedForLackOfDescriptors = 0
    var handOverStarted: UInt64 = 0

    init(pipe: IPCPipe, child: ChildProcess?, started: UInt64) {
        self.pipe = pipe
        self.child = child
        self.started = started
    }
}

/// The new process's side: what it has read of the old one's state.
final class TakeOverIn {
    let pipe: IPCPipe
    let started: UInt64
    /// Records as large as the largest session buffer allowed (1 GiB), with room for its fields.
    var reader = SnapshotStreamReader(maxRecordBytes: (1 << 30) + (1 << 20))
    var header: DaemonSnapshot?
    var received: UInt64 = 0
    var taken = 0
    var lost = 0

    init(pipe: IPCPipe, started: UInt64) {
        self.pipe = pipe
        self.started = started
    }
}
