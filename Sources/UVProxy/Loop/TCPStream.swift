import CUV
#if canImport(Glibc)
import Glibc
#endif

/// What a `TCPStream` reports. Every call happens on the loop thread, from a libuv callback.
public protocol TCPStreamDelegate: AnyObject {
    /// Bytes read. They live in the loop's shared read slab: valid only during this call.
    func stream(_ stream: TCPStream, didRead bytes: UnsafeRawBufferPointer)
    /// The peer closed (`UVError.eof`) or the stream failed. Called once; reading has stopped.
    func stream(_ stream: TCPStream, didEnd error: Int32)
    /// Every queued write has reached the kernel.
    func streamDidDrainWrites(_ stream: TCPStream)
    /// Most bytes the next read may deliver (backpressure for upstream sessions).
    func streamReadLimit(_ stream: TCPStream) -> Int
    /// An outgoing connect finished with `status` (0 or a libuv error).
    func stream(_ stream: TCPStream, didConnect status: Int32)
}

extension TCPStreamDelegate {
    public func streamDidDrainWrites(_ stream: TCPStream) {}
    public func streamReadLimit(_ stream: TCPStream) -> Int { EventLoop.readSlabSize }
    public func stream(_ stream: TCPStream, didConnect status: Int32) {}
}

/// A TCP connection (accepted or outgoing).
///
/// Writes first try `uv_try_write` straight from the caller's buffers (no copy at all when the
/// kernel takes everything, the common case). What the kernel refuses is copied, once, into the
/// stream's send queue: two growable buffers, one being written by the stream's single
/// `uv_write` in flight, the other collecting what comes meanwhile, which becomes the next
/// write. So a stream holds its unsent bytes and nothing else: no allocation and no request
/// header per refused write, and the count the limits use (`queuedWriteBytes`) is what it
/// really holds. Both buffers are freed once everything has reached the kernel.
public final class TCPStream: LoopHandle {
    public var delegate: TCPStreamDelegate?
    public private(set) var isReading = false
    private var ended = false
    private var onShutdown: (() -> Void)?
    /// Being written by the one `uv_write` in flight (its memory must not move meanwhile).
    private var writing = SendBuffer()
    /// Refused bytes that wait for the write in flight to finish.
    private var waiting = SendBuffer()
    private var writeInFlight = false
    /// One write request, reused: at most one write is in flight.
    private var writeRequest: UnsafeMutablePointer<uv_write_t>?
    /// `shutdown` was asked for while bytes were still queued here: FIN goes after them.
    private var shutdownPending = false
    /// `connect`'s first bytes that the kernel did not take before the connection was up.
    private var unsentFirst: [UInt8]?
    /// `connect`'s early send failed with this (see `connect`).
    private var earlyError: Int32 = 0
    /// Every byte handed to the kernel so far (progress: minus `unsentBytes`, what the peer took).
    public private(set) var bytesToKernel: UInt64 = 0

    public init(loop: EventLoop) throws {
        super.init(loop: loop, byteCount: MemoryLayout<uv_tcp_t>.size)
        let rc = uv_tcp_init(loop.raw, raw.assumingMemoryBound(to: uv_tcp_t.self))
        guard rc == 0 else { throw UVError(rc, "uv_tcp_init") }
        adopt()
    }

    var stream: UnsafeMutablePointer<uv_stream_t> { raw.assumingMemoryBound(to: uv_stream_t.self) }

    /// A second stream on a duplicate of this one's socket, for sending it to another process
    /// (`IPCPipe.write(_:handle:)`): this stream can close at once, the socket stays open
    /// (no FIN, no reset) until the duplicate closes too.
    public func duplicate() throws -> TCPStream {
        var fd: uv_os_fd_t = -1
        guard !isClosing else { throw UVError(UVError.cancelled, "duplicate") }
        let rc = uv_fileno(handle, &fd)
        guard rc == 0 else { throw UVError(rc, "uv_fileno") }
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw UVError(-errno, "dup") }
        let other = try TCPStream(loop: loop)
        let opened = uv_tcp_open(other.tcp, copy)
        guard opened == 0 else {
            Glibc.close(copy)
            other.close()
            throw UVError(opened, "uv_tcp_open")
        }
        return other
    }
    var tcp: UnsafeMutablePointer<uv_tcp_t> { raw.assumingMemoryBound(to: uv_tcp_t.self) }

    /// Bytes accepted by `write` that the kernel has not taken yet.
    public var queuedWriteBytes: Int { writing.count + waiting.count }

    /// The bytes accepted by `write` that the kernel has not taken yet, in order: the end of
    /// the write in flight that libuv has not written (its `write_queue_size` counts down as the
    /// kernel takes parts of it), then the waiting bytes. For handing the connection to another
    /// process (SPEC §9): true until the loop runs again, so take it in the turn that closes
    /// this stream, or the bytes may reach the peer twice.
    public func unwrittenBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(queuedWriteBytes)
        if writeInFlight, writing.count > 0, let base = writing.base {
            let left = min(Int(uv_stream_get_write_queue_size(stream)), writing.count)
            out.append(contentsOf: UnsafeBufferPointer(start: base + (writing.count - left), count: left))
        }
        if waiting.count > 0, let base = waiting.base {
            out.append(contentsOf: UnsafeBufferPointer(start: base, count: waiting.count))
        }
        return out
    }

    /// Memory this stream's send queue holds (its buffers' capacity).
    public var sendQueueCapacity: Int { writing.capacity + waiting.capacity }
    func setNoDelay() { uv_tcp_nodelay(tcp, 1) }

    /// The address of the other end (asked of the kernel when needed: logs only).
    public var peerAddress: SocketAddress? {
        guard !isClosing else { return nil }
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { uv_tcp_getpeername(tcp, $0, &length) }
        }
        return rc == 0 ? SocketAddress(storage) : nil
    }

    public func enableKeepAlive(seconds: UInt32) { uv_tcp_keepalive(tcp, 1, seconds) }

    // MARK: Connect

    /// Connects; `first` (if any) is the connection's first bytes, such as a PROXY header.
    ///
    /// They are handed to the kernel at once if it takes them, before the connect's callback:
    /// to a game on the same host the connection is already up by then (loopback completes the
    /// handshake inside `connect`), and bytes that come before the game has accepted the
    /// connection arrive with it, often sparing the game a wake-up of its own for them. Otherwise
    /// (`EAGAIN` while the handshake is under way, over a network) they are kept and written
    /// first thing once it is up. An error from that early send (the connection was refused
    /// meanwhile: `send` then takes the socket's error, which libuv would have read next) is the
    /// connect's outcome unless libuv reports one of its own.
    public func connect(to address: SocketAddress, first: UnsafeRawBufferPointer = .init(start: nil, count: 0)) {
        let request = UnsafeMutablePointer<uv_connect_t>.allocate(capacity: 1)
        let rc = address.withSockaddr { addr in
            uv_tcp_connect(request, tcp, addr) { request, status in
                let handle = request!.pointee.handle
                request!.deallocate()
                let stream = LoopHandle.owner(UnsafeMutableRawPointer(handle), as: TCPStream.self)
                guard !stream.isClosing else { return }
                stream.connected(status)
            }
        }
        if rc != 0 {
            request.deallocate()
            delegate?.stream(self, didConnect: rc)
            return
        }
        guard first.count > 0 else { return }
        var fd: uv_os_fd_t = -1
        let sent = TCPStream.sendsFirstBytesEarly && uv_fileno(handle, &fd) == 0
            ? Glibc.send(fd, first.baseAddress, first.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) : 0
        if sent > 0 { bytesToKernel &+= UInt64(sent) }
        if sent == first.count { return }
        if sent < 0, errno != EAGAIN, errno != EWOULDBLOCK {
            earlyError = -errno
        } else {
            unsentFirst = Array(UnsafeRawBufferPointer(rebasing: first[max(sent, 0)...]))
        }
    }

    /// Off in tests of the other path: every first byte then waits for the connect's callback.
    nonisolated(unsafe) static var sendsFirstBytesEarly = true

    private func connected(_ libuvStatus: Int32) {
        let status = libuvStatus != 0 ? libuvStatus : earlyError
        earlyError = 0
        if status == 0 {
            setNoDelay()
            if let bytes = unsentFirst {
                unsentFirst = nil
                bytes.withUnsafeBytes { _ = write($0) }
            }
        }
        delegate?.stream(self, didConnect: status)
    }

    // MARK: Read

    public func startReading() {
        guard !isReading, !isClosing, !ended else { return }
        let rc = uv_read_start(stream, { handle, suggested, buf in
            LoopHandle.withOwner(UnsafeMutableRawPointer(handle), as: TCPStream.self) { stream in
                let limit = min(stream.delegate?.streamReadLimit(stream) ?? 0, EventLoop.readSlabSize)
                buf!.pointee = uv_buf_init(stream.loop.readSlab.assumingMemoryBound(to: CChar.self), UInt32(max(limit, 0)))
            }
        }, { handle, nread, buf in
            LoopHandle.withOwner(UnsafeMutableRawPointer(handle), as: TCPStream.self) { stream in
                if nread > 0 {
                    stream.delegate?.stream(stream, didRead: UnsafeRawBufferPointer(start: buf!.pointee.base, count: nread))
                } else if nread == Int(UV_ENOBUFS.rawValue) {
                    stream.stopReading()  // the delegate allowed no bytes: it resumes reading itself
                } else if nread < 0 {
                    stream.end(Int32(nread))
                }
            }
        })
        if rc == 0 { isReading = true } else { end(rc) }
    }

    public func stopReading() {
        guard isReading else { return }
        isReading = false
        if !isClosing { uv_read_stop(stream) }
    }

    private func end(_ error: Int32) {
        guard !ended, !isClosing else { return }
        ended = true
        stopReading()
        delegate?.stream(self, didEnd: error)
    }

    // MARK: Write

    /// Writes up to three buffers in order. Returns 0 or a libuv error (the stream then also
    /// reports `didEnd` unless it is closing).
    @discardableResult
    public func write(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer = .init(start: nil, count: 0),
                      _ c: UnsafeRawBufferPointer = .init(start: nil, count: 0)) -> Int32 {
        guard !isClosing else { return UVError.cancelled }
        let total = a.count + b.count + c.count
        guard total > 0 else { return 0 }
        var written = 0
        if !writeInFlight {  // nothing queued: bytes may go straight to the kernel
            var bufs = (TCPStream.buf(a), TCPStream.buf(b), TCPStream.buf(c))
            let n = withUnsafeMutablePointer(to: &bufs) {
                $0.withMemoryRebound(to: uv_buf_t.self, capacity: 3) { uv_try_write(stream, $0, 3) }
            }
            if n >= 0 {
                written = Int(n)
                bytesToKernel &+= UInt64(n)
            } else if n != UVError.again {
                end(n)
                return n
            }
            if written == total { return 0 }
        }
        // Queue what the kernel did not take, once.
        let before = waiting.capacity
        var skip = written
        for part in [a, b, c] where part.count > 0 {
            if skip >= part.count { skip -= part.count; continue }
            waiting.append(UnsafeRawBufferPointer(rebasing: part[skip...]))
            skip = 0
        }
        loop.sendQueueBytes += waiting.capacity - before
        return writeInFlight ? 0 : startWrite()
    }

    /// Hands the waiting bytes to libuv as the one write in flight.
    private func startWrite() -> Int32 {
        swap(&writing, &waiting)
        if writeRequest == nil { writeRequest = .allocate(capacity: 1) }
        var buf = uv_buf_init(writing.base.map { UnsafeMutableRawPointer($0).assumingMemoryBound(to: CChar.self) },
                              UInt32(writing.count))
        let rc = uv_write(writeRequest, stream, &buf, 1) { request, status in
            let stream = LoopHandle.owner(UnsafeMutableRawPointer(request!.pointee.handle), as: TCPStream.self)
            stream.writeFinished(status)
        }
        if rc != 0 {
            end(rc)
            return rc
        }
        writeInFlight = true
        return 0
    }

    private func writeFinished(_ status: Int32) {
        writeInFlight = false
        guard !isClosing else { return }  // canceled by close: didClose frees the buffers
        if status < 0 {
            end(status)
            return
        }
        bytesToKernel &+= UInt64(writing.count)
        writing.count = 0
        if waiting.count > 0 {
            _ = startWrite()
            return
        }
        // Everything reached the kernel: hold no memory for it any more.
        loop.sendQueueBytes -= writing.capacity + waiting.capacity
        writing.free()
        waiting.free()
        if shutdownPending {
            shutdownPending = false
            startShutdown()
        }
        delegate?.streamDidDrainWrites(self)
    }

    private static func buf(_ p: UnsafeRawBufferPointer) -> uv_buf_t {
        uv_buf_init(UnsafeMutablePointer(mutating: p.baseAddress?.assumingMemoryBound(to: CChar.self)), UInt32(p.count))
    }

    /// Half-closes: sends FIN after the queued writes, then calls `completion` (unless the
    /// stream closed first). Reading goes on.
    public func shutdown(_ completion: (() -> Void)? = nil) {
        guard !isClosing else { return }
        onShutdown = completion
        if writeInFlight {
            shutdownPending = true  // after the queue has reached the kernel (writeFinished)
        } else {
            startShutdown()
        }
    }

    private func startShutdown() {
        let request = UnsafeMutablePointer<uv_shutdown_t>.allocate(capacity: 1)
        let rc = uv_shutdown(request, stream) { request, _ in
            let handle = request!.pointee.handle
            request!.deallocate()
            let stream = LoopHandle.owner(UnsafeMutableRawPointer(handle), as: TCPStream.self)
            guard !stream.isClosing else { return }
            let completion = stream.onShutdown
            stream.onShutdown = nil
            completion?()
        }
        if rc != 0 {
            request.deallocate()
            let completion = onShutdown
            onShutdown = nil
            completion?()
        }
    }

    /// Closes at once with a reset (RST): what the kernel still holds for the peer is dropped.
    public func closeWithReset() {
        // uv_tcp_close_reset refuses a stream that is shutting down, so set SO_LINGER 0 by hand.
        var fd: uv_os_fd_t = -1
        if !isClosing, uv_fileno(handle, &fd) == 0 {
            var off = linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, socklen_t(MemoryLayout<linger>.size))
        }
        close()
    }

    /// Bytes the kernel still holds for the peer: not sent, or sent and not acknowledged
    /// (`SIOCOUTQ`). 0 means everything written has reached the peer.
    public var unsentBytes: Int {
        var fd: uv_os_fd_t = -1
        guard !isClosing, uv_fileno(handle, &fd) == 0 else { return 0 }
        var n: Int32 = 0
        guard ioctl(fd, UInt(TIOCOUTQ), &n) == 0 else { return 0 }
        return Int(n)
    }

    override func didClose() {
        delegate = nil
        onShutdown = nil
        loop.sendQueueBytes -= writing.capacity + waiting.capacity
        writing.free()
        waiting.free()
        writeRequest?.deallocate()
        writeRequest = nil
    }
}

/// A growable byte buffer of a stream's send queue: malloc'd memory, doubled while small and
/// grown in 64 KiB steps past that with realloc (which moves large blocks by remapping pages),
/// so what it holds stays close to what it counts.
struct SendBuffer {
    private(set) var base: UnsafeMutablePointer<UInt8>?
    var count = 0
    private(set) var capacity = 0
    static let step = 64 * 1024

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard let src = bytes.baseAddress, bytes.count > 0 else { return }
        let needed = count + bytes.count
        if needed > capacity {
            var newCapacity = Swift.max(capacity, 4096)
            while newCapacity < needed && newCapacity < SendBuffer.step { newCapacity *= 2 }
            if newCapacity < needed { newCapacity = (needed + SendBuffer.step - 1) / SendBuffer.step * SendBuffer.step }
            guard let grown = realloc(base, newCapacity) else { fatalError("out of memory") }
            base = grown.assumingMemoryBound(to: UInt8.self)
            capacity = newCapacity
        }
        (base! + count).update(from: src.assumingMemoryBound(to: UInt8.self), count: bytes.count)
        count = needed
    }

    mutating func free() {
        Glibc.free(base)
        base = nil
        count = 0
        capacity = 0
    }
}
