import ArgumentParser
import Logging
import UVProxy
#if canImport(Glibc)
import Glibc
#endif

/// The command line of SPEC §4.
struct UVProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uvproxyd",
        abstract: "HTTP-to-TCP session proxy: lets HTTP clients play on long-lived TCP (MUD) servers."
    )

    @Option(help: "Address to listen on (HOST:PORT).") var listen: String = "127.0.0.1:8181"
    @Option(help: "The default target (HOST:PORT).") var upstream: String = "127.0.0.1:9000"
    @Option(help: "More named targets (NAME=HOST:PORT), repeatable.") var target: [String] = []
    @Option(help: "Configuration file (YAML); flags win over it.") var config: String?
    @Option(help: "Most open sessions.") var maxSessions: Int = 10_000
    @Option(help: "Bytes buffered per session.") var bufferSize: Int = 1_048_576
    @Option(help: "Seconds before an untouched session is closed (0: never).") var idleTimeout: Double = 600
    @Option(help: "Seconds a closed session stays readable.") var linger: Double = 60
    @Option(help: "Longest long-poll, in seconds.") var maxWait: Double = 60
    @Option(help: "Seconds to wait for a target connection.") var connectTimeout: Double = 10
    @Option(help: "Bearer token required on every endpoint but /healthz.") var token: String?
    @Option(help: "Allowed CORS origin.") var corsOrigin: String?
    @Flag(help: "Speak telnet to the targets.") var telnet = false
    @Option(help: "trace, debug, info, notice, warning, error or critical.") var logLevel: String = "info"
    @Flag(help: "Start the built-in demo game and make it the default target.") var demo = false
    @Flag(help: "Serve the web client page at /.") var web = false
    @Option(help: "Seconds a graceful shutdown may take.") var shutdownTimeout: Double = 10

    func makeConfig() throws -> ProxyConfig {
        var c = ProxyConfig()
        c.listen = listen
        c.upstream = upstream
        for t in target {
            let (name, address) = try ProxyConfig.parseTarget(t)
            c.targets[name] = address
        }
        c.maxSessions = maxSessions
        c.bufferSize = bufferSize
        c.idleTimeout = idleTimeout
        c.linger = linger
        c.maxWait = maxWait
        c.connectTimeout = connectTimeout
        c.token = token
        c.corsOrigin = corsOrigin
        c.telnet = telnet
        c.logLevel = logLevel
        c.demo = demo
        c.web = web
        c.shutdownTimeout = shutdownTimeout
        if config != nil {
            throw ConfigError("config: configuration files are not supported yet; use flags")
        }
        return c
    }
}

/// Exactly one line on stderr, nothing on stdout, non-zero exit (SPEC §4).
func fail(_ message: String) -> Never {
    let line = "uvproxyd: error: " + message.split(whereSeparator: \.isNewline).joined(separator: " ") + "\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    exit(2)
}

let command: UVProxyCommand
do {
    command = try UVProxyCommand.parseAsRoot() as! UVProxyCommand
} catch {
    if UVProxyCommand.exitCode(for: error) == .success {
        print(UVProxyCommand.fullMessage(for: error))
        exit(0)
    }
    fail(UVProxyCommand.message(for: error))
}

let config: ProxyConfig
do {
    config = try command.makeConfig()
    try config.validate()
} catch {
    fail("\(error)")
}

let level = Logger.Level(rawValue: config.logLevel.lowercased()) ?? .info
LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = level
    return handler
}

let daemon: ProxyDaemon
do {
    daemon = try ProxyDaemon(config: config, logger: Logger(label: "uvproxyd"))
} catch {
    fail("\(error)")
}
daemon.run()
exit(0)
