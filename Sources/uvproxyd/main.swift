import ArgumentParser
import Configuration
import Foundation
import Logging
import UVProxy
import UVProxyConfig
#if canImport(Glibc)
import Glibc
#endif

/// The command line of SPEC §4.
struct UVProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uvproxyd",
        abstract: "HTTP-to-TCP session proxy: lets HTTP clients play on long-lived TCP (MUD) servers."
    )

    // Options are optional so that an unset one can come from the environment (SPEC §4:
    // flags win over UVPROXYD_* variables, which win over the defaults).
    @Option(help: "Address to listen on (HOST:PORT). Default 127.0.0.1:8181.") var listen: String?
    @Option(help: "The default target (HOST:PORT). Default 127.0.0.1:9000.") var upstream: String?
    @Option(help: "More named targets (NAME=HOST:PORT), repeatable.") var target: [String] = []
    @Option(help: "Configuration file (YAML); flags win over it.") var config: String?
    @Option(help: "Most open sessions. Default 10000.") var maxSessions: Int?
    @Option(help: "Bytes buffered per session. Default 1048576.") var bufferSize: Int?
    @Option(help: "Seconds before an untouched session is closed (0: never). Default 600.") var idleTimeout: Double?
    @Option(help: "Seconds a closed session stays readable. Default 60.") var linger: Double?
    @Option(help: "Longest long-poll, in seconds. Default 60.") var maxWait: Double?
    @Option(help: "Seconds to wait for a target connection. Default 10.") var connectTimeout: Double?
    @Option(help: "Bearer token required on every endpoint but /healthz, /openapi.yaml and the page (one that starts with '-': --token=VALUE).") var token: String?
    @Option(help: "Allowed CORS origin.") var corsOrigin: String?
    @Flag(help: "Speak telnet to the targets.") var telnet = false
    @Option(help: "Charset of the targets' text: UTF-8 (default), ISO-8859-1/latin1, IBM437/cp437.") var charset: String?
    @Option(help: "trace, debug, info, notice, warning, error or critical. Default info.") var logLevel: String?
    @Option(help: "text or json (one JSON object per line). Default text.") var logFormat: String?
    @Flag(help: "Log the client address from X-Forwarded-For (only behind a reverse proxy you run).") var trustProxy = false
    @Flag(help: "Start the built-in demo game and make it the default target.") var demo = false
    @Flag(help: "Serve the web client page at /.") var web = false
    @Option(help: "Seconds a graceful shutdown may take. Default 10.") var shutdownTimeout: Double?
    @Option(help: "Most client connections held at once (beyond: 503). Default 10000.") var maxConnections: Int?
    @Option(help: "Most open sessions per client address (beyond: 429); 0: no limit. Default 0.")
    var maxSessionsPerClient: Int?
    @Option(help: "Seconds a connection may go without the client taking any byte of its responses. Default 60.")
    var sendTimeout: Double?
    @Option(help: """
        A Host name accepted besides localhost and loopback addresses when there is no token and the listen address \
        is loopback (DNS rebinding check); repeatable.
        """) var allowedHost: [String] = []
    @Flag(help: """
        Every client connection starts with a PROXY protocol header, v1 or v2 (behind HAProxy, nginx stream or a cloud
        balancer); one without a valid header is closed.
        """) var acceptProxyProtocol = false
    @Option(help: "Send the default target a PROXY protocol header (v1 or v2) naming the player first.")
    var proxyProtocol: String?
    @Flag(help: "Speak GMCP (telnet option 201) with the default target; implies --telnet for it (SPEC §7).")
    var gmcp = false
    @Option(help: "This daemon's name among several ([a-z0-9]{1,16}): session ids start with NAME- (SPEC §9).")
    var nodeId: String?
    @Option(help: "Seconds a drain (SIGUSR1) waits for the last session to end. Default 3600.")
    var drainTimeout: Double?

    /// What was given on the command line, by config key; the loader puts it above the
    /// environment and the file. A boolean flag that is absent leaves the setting to them.
    func makeLoader(environment: [String: String]) -> ConfigLoader {
        var flags: [String: ConfigContent] = [:]
        func set(_ key: String, _ value: ConfigContent?) { if let value { flags[key] = value } }
        set("listen", listen.map { .string($0) })
        set("upstream", upstream.map { .string($0) })
        set("max-sessions", maxSessions.map { .int($0) })
        set("buffer-size", bufferSize.map { .int($0) })
        set("idle-timeout", idleTimeout.map { .double($0) })
        set("linger", linger.map { .double($0) })
        set("max-wait", maxWait.map { .double($0) })
        set("connect-timeout", connectTimeout.map { .double($0) })
        set("token", token.map { .string($0) })
        set("cors-origin", corsOrigin.map { .string($0) })
        set("telnet", telnet ? .bool(true) : nil)
        set("log-level", logLevel.map { .string($0) })
        set("log-format", logFormat.map { .string($0) })
        set("trust-proxy", trustProxy ? .bool(true) : nil)
        set("charset", charset.map { .string($0) })
        set("demo", demo ? .bool(true) : nil)
        set("web", web ? .bool(true) : nil)
        set("shutdown-timeout", shutdownTimeout.map { .double($0) })
        set("max-connections", maxConnections.map { .int($0) })
        set("max-sessions-per-client", maxSessionsPerClient.map { .int($0) })
        set("send-timeout", sendTimeout.map { .double($0) })
        set("allowed-host", allowedHost.isEmpty ? nil : .stringArray(allowedHost))
        set("accept-proxy-protocol", acceptProxyProtocol ? .bool(true) : nil)
        set("proxy-protocol", proxyProtocol.map { .string($0) })
        set("gmcp", gmcp ? .bool(true) : nil)
        set("node-id", nodeId.map { .string($0) })
        set("drain-timeout", drainTimeout.map { .double($0) })
        return ConfigLoader(flags: flags, flagTargets: target, file: config, environment: environment)
    }
}

/// Exactly one line on stderr, nothing on stdout, non-zero exit (SPEC §4).
func fail(_ message: String) -> Never {
    let line = "uvproxyd: error: " + message.split(whereSeparator: \.isNewline).joined(separator: " ") + "\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    exit(2)
}

// A SIGHUP (systemctl reload) before the daemon's handler is in place must not kill it.
signal(SIGHUP, SIG_IGN)

let command: UVProxyCommand
do {
    // parse(), not parseAsRoot(): --help must arrive as an error to print, not as a HelpCommand.
    command = try UVProxyCommand.parse()
} catch {
    if UVProxyCommand.exitCode(for: error) == .success {
        print(UVProxyCommand.fullMessage(for: error))
        exit(0)
    }
    fail(UVProxyCommand.message(for: error))
}

// SIGHUP reloads with the same flags and environment, re-reading the file.
let loader = command.makeLoader(environment: ProcessInfo.processInfo.environment)
let config: ProxyConfig
do {
    config = try loader.load()
} catch {
    fail("\(error)")
}

let level = Logger.Level(rawValue: config.logLevel.lowercased()) ?? .info
ProxyLogging.bootstrap(format: config.logFormat, level: level)

// Started by an older uvproxyd's SIGUSR2 (SPEC §9): take over its socket and sessions. The
// variable is not passed on to a later upgrade's process.
var takeOver: ProxyDaemon.TakeOver?
if let value = getenv(ProxyDaemon.takeOverVariable) {
    let text = String(cString: value)
    unsetenv(ProxyDaemon.takeOverVariable)
    guard let parsed = ProxyDaemon.TakeOver(parsing: text) else {
        fail("\(ProxyDaemon.takeOverVariable)=\(text): expected CHANNEL,LISTENER descriptors")
    }
    takeOver = parsed
}

let daemon: ProxyDaemon
do {
    daemon = try ProxyDaemon(config: config, logger: Logger(label: "uvproxyd"), takeOver: takeOver)
} catch {
    fail("\(error)")
}
daemon.configLoader = { try loader.load() }
daemon.run()
exit(0)
