import CUV
#if canImport(Glibc)
import Glibc
#endif

/// Looks `HOST:PORT` texts up without blocking the loop: literal addresses at once, names with
/// `uv_getaddrinfo` on libuv's thread pool (only C runs there; the completion runs on the
/// loop). A reload uses it, so a slow resolver delays the reload, not every client.
/// Start-up resolves synchronously: nothing is being served yet.
enum AddressResolver {
    typealias Outcome = [String: Result<SocketAddress, AddressError>]

    /// Calls `completion` on the loop once every text has an outcome.
    static func resolve(_ texts: Set<String>, loop: EventLoop, completion: @escaping (Outcome) -> Void) {
        let batch = Batch(completion)
        for text in texts {
            guard let (host, port) = SocketAddress.split(text) else {
                batch.outcome[text] = .failure(AddressError("'\(text)' is not HOST:PORT"))
                continue
            }
            if let literal = SocketAddress(literal: host, port: port) {
                batch.outcome[text] = .success(literal)
                continue
            }
            batch.pending += 1
            lookUp(text, host: host, port: port, loop: loop, batch: batch)
        }
        batch.finishIfDone()
    }

    /// What one `resolve` call is waiting for.
    private final class Batch {
        var outcome: Outcome = [:]
        var pending = 0
        let completion: (Outcome) -> Void
        init(_ completion: @escaping (Outcome) -> Void) { self.completion = completion }

        func finishIfDone() {
            if pending == 0 { completion(outcome) }
        }
    }

    /// One lookup in flight: what its callback needs, kept alive by the request's `data`.
    private final class Lookup {
        let text: String
        let host: String
        let port: Int
        let batch: Batch
        init(_ text: String, _ host: String, _ port: Int, _ batch: Batch) {
            self.text = text
            self.host = host
            self.port = port
            self.batch = batch
        }
    }

    private static func lookUp(_ text: String, host: String, port: Int, loop: EventLoop, batch: Batch) {
        let request = UnsafeMutablePointer<uv_getaddrinfo_t>.allocate(capacity: 1)
        request.pointee.data = Unmanaged.passRetained(Lookup(text, host, port, batch)).toOpaque()
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        let name = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        let rc = uv_getaddrinfo(loop.raw, request, { request, status, result in
            let lookup = Unmanaged<Lookup>.fromOpaque(request!.pointee.data).takeRetainedValue()
            request!.deallocate()
            if status == 0, let first = result, let address = first.pointee.ai_addr {
                let resolved = SocketAddress(host: lookup.host, port: lookup.port, raw: address,
                                             length: Int(first.pointee.ai_addrlen))
                lookup.batch.outcome[lookup.text] = .success(resolved)
            } else {
                lookup.batch.outcome[lookup.text] = .failure(AddressError("cannot resolve host '\(lookup.host)'"))
            }
            uv_freeaddrinfo(result)
            lookup.batch.pending -= 1
            lookup.batch.finishIfDone()
        }, name, String(port), &hints)
        if rc != 0 {
            Unmanaged<Lookup>.fromOpaque(request.pointee.data).release()
            request.deallocate()
            batch.outcome[text] = .failure(AddressError("cannot resolve host '\(host)': \(UVError.name(rc))"))
            batch.pending -= 1
        }
    }
}
