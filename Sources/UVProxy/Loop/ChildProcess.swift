import CUV
#if canImport(Glibc)
import Glibc
#endif

/// A process this one started (`uv_spawn`), reaped by the loop: `onExit` gets its exit status
/// and the signal that ended it (0 if none).
public final class ChildProcess: LoopHandle {
    private var onExit: ((Int64, Int32) -> Void)?
    public private(set) var pid: Int32 = 0
    public private(set) var hasExited = false

    /// Starts `path` with `arguments` (argv, the first one included) and `environment`
    /// (`NAME=value`). The child shares this process's stdin, stdout and stderr; `passing[i]`
    /// becomes its descriptor `3 + i`.
    public init(loop: EventLoop, path: String, arguments: [String], environment: [String], passing: [Int32],
                onExit: @escaping (Int64, Int32) -> Void) throws {
        super.init(loop: loop, byteCount: MemoryLayout<uv_process_t>.size)
        var stdio = [uv_stdio_container_t](repeating: uv_stdio_container_t(), count: 3 + passing.count)
        for (i, fd) in ([0, 1, 2] + passing).enumerated() {
            stdio[i].flags = UV_INHERIT_FD
            stdio[i].data.fd = fd
        }
        let argv = (arguments.map { strdup($0) } + [nil])
        let envp = (environment.map { strdup($0) } + [nil])
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        let rc = path.withCString { file -> Int32 in
            argv.withUnsafeBufferPointer { args in
                envp.withUnsafeBufferPointer { env in
                    stdio.withUnsafeMutableBufferPointer { stdio in
                        var options = uv_process_options_t()
                        options.exit_cb = { process, status, signal in
                            let child = LoopHandle.owner(UnsafeMutableRawPointer(process), as: ChildProcess.self)
                            child.hasExited = true
                            let callback = child.onExit
                            child.onExit = nil
                            child.close()
                            callback?(status, signal)
                        }
                        options.file = file
                        options.args = UnsafeMutablePointer(mutating: args.baseAddress)
                        options.env = UnsafeMutablePointer(mutating: env.baseAddress)
                        options.stdio_count = Int32(stdio.count)
                        options.stdio = stdio.baseAddress
                        return uv_spawn(loop.raw, raw.assumingMemoryBound(to: uv_process_t.self), &options)
                    }
                }
            }
        }
        // uv_spawn initialises the handle even when it fails: it must be closed either way.
        adopt()
        guard rc == 0 else {
            close()
            throw UVError(rc, "spawn \(path)")
        }
        pid = raw.assumingMemoryBound(to: uv_process_t.self).pointee.pid
        self.onExit = onExit
    }

    /// Sends `signal` to the child (if it still runs).
    public func kill(_ signal: Int32) {
        guard !hasExited, !isClosing else { return }
        uv_process_kill(raw.assumingMemoryBound(to: uv_process_t.self), signal)
    }

    override func didClose() { onExit = nil }
}
