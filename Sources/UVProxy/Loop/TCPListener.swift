import CUV
#if canImport(Glibc)
import Glibc
#endif

/// A listening TCP socket; hands each accepted connection to `onAccept` as a `TCPStream`.
///
/// It accepts itself (a uv poll handle on its own socket) rather than through `uv_listen`, so
/// that a failed accept is seen: libuv 1.44 sheds connections at `EMFILE` (its "emfile trick",
/// src/unix/stream.c) without telling the listen callback. The same trick is done here and
/// counted: out of descriptors, one spare descriptor (`/dev/null`) is closed, every pending
/// connection is accepted and closed at once (the client sees the connection end rather than
/// waiting in the backlog), and the spare is opened again. The socket is level-triggered, so a
/// connection left pending would wake the loop on every turn: if the spare is gone, or accept
/// fails otherwise, the listener stops polling for `pauseMs` instead of spinning.
public final class TCPListener: LoopHandle {
    private var onAccept: ((TCPStream) -> Void)?
    /// Accepts that failed: the libuv error (`UV_EMFILE`…) and how many connections it cost.
    public var onAcceptError: ((_ error: Int32, _ count: Int) -> Void)?
    private var fd: Int32
    /// The spare descriptor given up to shed connections when the process has none left.
    private var spare: Int32 = -1
    private var pauseTimer: LoopTimer?
    static let pauseMs: UInt64 = 100
    /// Accepts per wake-up, so a connection flood cannot hold the loop.
    static let acceptsPerTurn = 256

    public convenience init(loop: EventLoop, address: SocketAddress, backlog: Int32 = 1024,
                onAccept: @escaping (TCPStream) -> Void) throws {
        let family = address.withSockaddr { Int32($0.pointee.sa_family) }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw UVError(-errno, "socket") }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        let length = socklen_t(family == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
        if address.withSockaddr({ bind(fd, $0, length) }) != 0 || Glibc.listen(fd, backlog) != 0 {
            let code = -errno
            Glibc.close(fd)
            throw UVError(code, "bind \(address)")
        }
        try self.init(loop: loop, listening: fd, polling: true, onAccept: onAccept)
    }

    /// Takes over `fd`, a socket that listens already (handed over by an older process, SPEC
    /// §9): the listener owns it from now on. Without `polling` it accepts nothing until
    /// `resumePolling()`; connections wait in the backlog meanwhile.
    public init(loop: EventLoop, listening fd: Int32, polling: Bool, onAccept: @escaping (TCPStream) -> Void) throws {
        self.fd = fd
        super.init(loop: loop, byteCount: MemoryLayout<uv_poll_t>.size)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let rc = uv_poll_init_socket(loop.raw, raw.assumingMemoryBound(to: uv_poll_t.self), fd)
        guard rc == 0 else {
            Glibc.close(fd)
            throw UVError(rc, "uv_poll_init_socket")
        }
        adopt()
        self.onAccept = onAccept
        spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
        self.polling = polling
        if polling { startPolling() }
    }

    /// The listening socket (to hand to a new process, which gets its own descriptor for it).
    public var fileDescriptor: Int32 { fd }

    /// Whether the listener accepts (`pausePolling`/`resumePolling`).
    public private(set) var polling = false

    /// Accepts nothing until `resumePolling()`: new connections wait in the kernel's backlog.
    public func pausePolling() {
        guard polling, !isClosing else { return }
        polling = false
        pauseTimer?.stop()
        uv_poll_stop(raw.assumingMemoryBound(to: uv_poll_t.self))
    }

    public func resumePolling() {
        guard !polling, !isClosing else { return }
        polling = true
        startPolling()
    }

    private func startPolling() {
        guard !isClosing else { return }
        uv_poll_start(raw.assumingMemoryBound(to: uv_poll_t.self), Int32(UV_READABLE.rawValue)) { poll, status, _ in
            let listener = LoopHandle.owner(UnsafeMutableRawPointer(poll), as: TCPListener.self)
            if status != 0 {
                listener.onAcceptError?(status, 1)
                listener.pause()
            } else {
                listener.acceptPending()
            }
        }
    }

    /// Stops polling for `pauseMs`: what is pending waits in the backlog meanwhile.
    private func pause() {
        guard !isClosing else { return }
        uv_poll_stop(raw.assumingMemoryBound(to: uv_poll_t.self))
        if pauseTimer == nil {
            pauseTimer = try? LoopTimer(loop: loop)
            pauseTimer?.onFire = { [unowned self] in
                if self.spare < 0 { self.spare = open("/dev/null", O_RDONLY | O_CLOEXEC) }
                if self.polling { self.startPolling() }
            }
        }
        guard let pauseTimer else { return startPolling() }  // no timer: better busy than deaf
        pauseTimer.start(after: TCPListener.pauseMs)
    }

    private func acceptPending() {
        var failed = 0
        var lastError: Int32 = 0
        for _ in 0..<TCPListener.acceptsPerTurn {
            guard !isClosing else { break }
            let client = cuv_accept(fd)
            if client >= 0 {
                guard let stream = try? TCPStream(loop: loop) else {
                    Glibc.close(client)
                    failed += 1
                    continue
                }
                let rc = uv_tcp_open(stream.tcp, client)
                guard rc == 0 else {
                    Glibc.close(client)
                    stream.close()
                    failed += 1
                    lastError = rc
                    continue
                }
                stream.setNoDelay()
                onAccept?(stream)
                continue
            }
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK { break }
            if e == EINTR || e == ECONNABORTED { continue }  // the client gave up: nothing to do
            lastError = -e
            if e == EMFILE || e == ENFILE {
                failed += shed()
            } else {
                failed += 1  // ENOBUFS, ENOMEM…: try again a little later
                pause()
            }
            break
        }
        if failed > 0 { onAcceptError?(lastError, failed) }
    }

    /// Out of descriptors: gives up the spare, accepts and closes every pending connection,
    /// takes the spare again. Returns how many connections were turned away.
    private func shed() -> Int {
        guard spare >= 0 else {
            pause()
            return 1
        }
        Glibc.close(spare)
        spare = -1
        var shed = 0
        while true {
            let client = cuv_accept(fd)
            if client >= 0 {
                Glibc.close(client)
                shed += 1
                continue
            }
            if errno == EINTR || errno == ECONNABORTED { continue }
            break
        }
        spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if spare < 0 { pause() }
        return max(shed, 1)
    }

    /// The address actually bound (resolves port 0).
    public var localAddress: SocketAddress {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) }
        }
        return SocketAddress(storage)
    }

    /// Stops polling and closes the socket at once, as `uv_close` does a TCP handle's: a
    /// connection arriving from now on is refused rather than left in the backlog.
    public override func close() {
        guard !isClosing else { return }
        super.close()
        pauseTimer?.close()
        pauseTimer = nil
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        if spare >= 0 { Glibc.close(spare) }
        spare = -1
    }

    override func didClose() {
        onAccept = nil
        onAcceptError = nil
        if fd >= 0 { Glibc.close(fd) }  // close() has done it; kept for safety
        fd = -1
    }
}
