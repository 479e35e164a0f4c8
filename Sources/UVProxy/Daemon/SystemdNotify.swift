#if canImport(Glibc)
import Glibc
#endif

/// systemd's readiness protocol (`sd_notify(3)`): one datagram of `NAME=value` lines to the
/// Unix socket named by `$NOTIFY_SOCKET`, which systemd sets for a `Type=notify` unit. Without
/// the variable (not under systemd, or another `Type=`) it does nothing.
///
/// Written here rather than linked from libsystemd: the protocol is one `sendto` and stable,
/// and the daemon would otherwise depend on libsystemd everywhere for it.
///
/// The daemon says `READY=1` once it serves. The new process of an upgrade (SIGUSR2) says
/// `MAINPID=` its own pid before the old process exits, so systemd follows it as the unit's
/// main process (the unit needs `NotifyAccess=all`: the new process is not the main one yet
/// when it says so).
enum SystemdNotify {
    @discardableResult
    static func send(_ state: String) -> Bool {
        guard let value = getenv("NOTIFY_SOCKET") else { return false }
        var path = Array(String(cString: value).utf8)
        guard path.count > 1, path.first == UInt8(ascii: "/") || path.first == UInt8(ascii: "@") else { return false }
        if path[0] == UInt8(ascii: "@") { path[0] = 0 }  // an abstract socket
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.count < capacity else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count)
        let sent = Array(state.utf8).withUnsafeBytes { bytes in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), $0, length)
                }
            }
        }
        return sent == state.utf8.count
    }
}
