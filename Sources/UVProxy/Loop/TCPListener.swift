import CUV

/// A listening TCP socket; hands each accepted connection to `onAccept` as a `TCPStream`.
public final class TCPListener: LoopHandle {
    private var onAccept: ((TCPStream) -> Void)?

    public init(loop: EventLoop, address: SocketAddress, backlog: Int32 = 1024,
                onAccept: @escaping (TCPStream) -> Void) throws {
        super.init(loop: loop, byteCount: MemoryLayout<uv_tcp_t>.size)
        let tcp = raw.assumingMemoryBound(to: uv_tcp_t.self)
        var rc = uv_tcp_init(loop.raw, tcp)
        guard rc == 0 else { throw UVError(rc, "uv_tcp_init") }
        adopt()
        self.onAccept = onAccept
        rc = address.withSockaddr { uv_tcp_bind(tcp, $0, 0) }
        if rc == 0 {
            rc = uv_listen(UnsafeMutableRawPointer(tcp).assumingMemoryBound(to: uv_stream_t.self), backlog) { server, status in
                let listener = LoopHandle.owner(UnsafeMutableRawPointer(server), as: TCPListener.self)
                guard status == 0 else { return }
                listener.acceptOne()
            }
        }
        guard rc == 0 else {
            close()
            throw UVError(rc, "bind \(address)")
        }
    }

    private func acceptOne() {
        guard !isClosing, let client = try? TCPStream(loop: loop) else { return }
        let rc = uv_accept(raw.assumingMemoryBound(to: uv_stream_t.self), client.stream)
        guard rc == 0 else { client.close(); return }
        client.setNoDelay()
        onAccept?(client)
    }

    /// The address actually bound (resolves port 0).
    public var localAddress: SocketAddress {
        var storage = sockaddr_storage()
        var len = Int32(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                _ = uv_tcp_getsockname(raw.assumingMemoryBound(to: uv_tcp_t.self), $0, &len)
            }
        }
        return SocketAddress(storage)
    }

    override func didClose() { onAccept = nil }
}
