import CUV
#if canImport(Glibc)
import Glibc
#endif

/// One end of a Unix socket that carries bytes and TCP handles between two processes (libuv's
/// IPC pipe: `uv_pipe_init` with ipc, `uv_write2`, `uv_accept`), as node's cluster module passes
/// sockets to its workers. The in-place upgrade (SPEC §9) hands its sessions over one.
///
/// A handle sent with a write travels with that write's first bytes; the receiver finds it in
/// the pipe's pending queue (`acceptStream`) by the time it has read those bytes. Handles
/// queue in the order they were sent.
public final class IPCPipe: LoopHandle {
    private var onRead: ((UnsafeRawBufferPointer) -> Void)?
    private var onEnd: ((Int32) -> Void)?
    private var ended = false

    /// Wraps `fd` (a connected `AF_UNIX` stream socket; the pipe owns it from now on).
    public init(loop: EventLoop, fd: Int32) throws {
        super.init(loop: loop, byteCount: MemoryLayout<uv_pipe_t>.size)
        let pipe = raw.assumingMemoryBound(to: uv_pipe_t.self)
        var rc = uv_pipe_init(loop.raw, pipe, 1)
        guard rc == 0 else {
            Glibc.close(fd)
            throw UVError(rc, "uv_pipe_init")
        }
        adopt()
        rc = uv_pipe_open(pipe, fd)
        guard rc == 0 else {
            Glibc.close(fd)
            close()
            throw UVError(rc, "uv_pipe_open")
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)  // inherited without it: no later child gets it
    }

    private var stream: UnsafeMutablePointer<uv_stream_t> { raw.assumingMemoryBound(to: uv_stream_t.self) }

    /// Calls `onRead` with every read (valid during the call only) and `onEnd` once, at end of
    /// file (`UVError.eof`) or an error.
    public func startReading(onRead: @escaping (UnsafeRawBufferPointer) -> Void, onEnd: @escaping (Int32) -> Void) {
        self.onRead = onRead
        self.onEnd = onEnd
        let rc = uv_read_start(stream, { handle, _, buf in
            let pipe = LoopHandle.owner(UnsafeMutableRawPointer(handle), as: IPCPipe.self)
            buf!.pointee = uv_buf_init(pipe.loop.readSlab.assumingMemoryBound(to: CChar.self), UInt32(EventLoop.readSlabSize))
        }, { handle, nread, buf in
            let pipe = LoopHandle.owner(UnsafeMutableRawPointer(handle), as: IPCPipe.self)
            if nread > 0 {
                pipe.onRead?(UnsafeRawBufferPointer(start: buf!.pointee.base, count: nread))
            } else if nread < 0 {
                pipe.end(Int32(nread))
            }
        })
        if rc != 0 { end(rc) }
    }

    private func end(_ error: Int32) {
        guard !ended, !isClosing else { return }
        ended = true
        uv_read_stop(stream)
        let callback = onEnd
        onEnd = nil
        onRead = nil
        callback?(error)
    }

    /// Writes `bytes`, with `handle`'s socket if given (the receiver gets its own descriptor for
    /// it; this side's stays open until closed). `completion` gets 0 or a libuv error once the
    /// kernel has the bytes. Writes go out in order.
    @discardableResult
    public func write(_ bytes: [UInt8], handle: TCPStream? = nil, completion: ((Int32) -> Void)? = nil) -> Int32 {
        guard !isClosing else { return UVError.cancelled }
        return WriteRequest(bytes: bytes, completion: completion).start(on: stream, sendHandle: handle?.stream)
    }

    /// Handles received and not taken yet.
    public var pendingHandles: Int { isClosing ? 0 : Int(uv_pipe_pending_count(raw.assumingMemoryBound(to: uv_pipe_t.self))) }

    /// The next handle received, as a TCP stream; nil if none is pending or it is not TCP.
    public func acceptStream() throws -> TCPStream? {
        let pipe = raw.assumingMemoryBound(to: uv_pipe_t.self)
        guard !isClosing, uv_pipe_pending_count(pipe) > 0 else { return nil }
        guard uv_pipe_pending_type(pipe) == UV_TCP else { return nil }
        let tcp = try TCPStream(loop: loop)
        let rc = uv_accept(stream, tcp.stream)
        guard rc == 0 else {
            tcp.close()
            throw UVError(rc, "uv_accept (IPC)")
        }
        return tcp
    }

    override func didClose() {
        onRead = nil
        onEnd = nil
    }
}

/// One `uv_write2` and the bytes it writes, kept alive until its callback.
private final class WriteRequest {
    let bytes: [UInt8]
    let completion: ((Int32) -> Void)?
    let request = UnsafeMutablePointer<uv_write_t>.allocate(capacity: 1)

    init(bytes: [UInt8], completion: ((Int32) -> Void)?) {
        self.bytes = bytes
        self.completion = completion
    }

    func start(on stream: UnsafeMutablePointer<uv_stream_t>, sendHandle: UnsafeMutablePointer<uv_stream_t>?) -> Int32 {
        request.pointee.data = Unmanaged.passRetained(self).toOpaque()
        let rc = bytes.withUnsafeBytes { b -> Int32 in
            // libuv copies the uv_buf_t array, not the bytes: `self.bytes` outlives the write.
            var buf = uv_buf_init(UnsafeMutablePointer(mutating: b.baseAddress?.assumingMemoryBound(to: CChar.self)), UInt32(b.count))
            return uv_write2(request, stream, &buf, 1, sendHandle) { request, status in
                let owner = Unmanaged<WriteRequest>.fromOpaque(request!.pointee.data).takeRetainedValue()
                owner.completion?(status)
            }
        }
        if rc != 0 { Unmanaged<WriteRequest>.fromOpaque(request.pointee.data).release() }
        return rc
    }

    deinit { request.deallocate() }
}

/// A pair of connected Unix stream sockets, both close-on-exec: one end for this process's
/// `IPCPipe`, the other for a child (`ChildProcess` maps it into the child, which clears the flag there).
public func makeSocketPair() throws -> (Int32, Int32) {
    var fds: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
        throw UVError(-errno, "socketpair")
    }
    return (fds[0], fds[1])
}
