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
    @Option(help: "Bearer token required on every endpoint but /healthz.") var token: String?
    @Option(help: "Allowed CORS origin.") var corsOrigin: String?
    @Flag(help: "Speak telnet to the targets.") var telnet = false
    @Option(help: "trace, debug, info, notice, warning, error or critical. Default info.") var logLevel: String?
    @Option(help: "text or json (one JSON object per line). Default text.") var logFormat: String?
    @Flag(help: "Log the client address from X-Forwarded-For (only behind a reverse proxy you run).") var trustProxy = false
    @Flag(help: "Start the built-in demo game and make it the default target.") var demo = false
    @Flag(help: "Serve the web client page at /.") var web = false
    @Option(help: "Seconds a graceful shutdown may take. Default 10.") var shutdownTimeout: Double?

    /// `UVPROXYD_` + the key in upper case with `-` as `_`.
    static func environment(_ key: String) -> (name: String, value: String)? {
        let name = "UVPROXYD_" + String(key.uppercased().map { $0 == "-" ? "_" : $0 })
        guard let raw = getenv(name) else { return nil }
        return (name, String(cString: raw))
    }

    /// The flag if given, else the environment variable (parsed, or a one-line error), else nil.
    static func pick<T>(_ flag: T?, _ key: String, _ parse: (String) -> T?) throws -> T? {
        if let flag { return flag }
        guard let (name, text) = environment(key) else { return nil }
        guard let value = parse(text) else { throw ConfigError("\(name): '\(text)' is not a valid \(key)") }
        return value
    }

    static func flag(_ given: Bool, _ key: String) throws -> Bool {
        if given { return true }
        guard let (name, text) = environment(key) else { return false }
        switch text.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off", "": return false
        default: throw ConfigError("\(name): '\(text)' is not true or false")
        }
    }

    func makeConfig() throws -> ProxyConfig {
        if config != nil {
            throw ConfigError("config: configuration files are not supported yet; use flags or UVPROXYD_* variables")
        }
        typealias C = UVProxyCommand
        var c = ProxyConfig()
        c.listen = try C.pick(listen, "listen", { $0 }) ?? c.listen
        c.upstream = try C.pick(upstream, "upstream", { $0 }) ?? c.upstream
        var targets = target
        if targets.isEmpty, let (_, text) = C.environment("target") {
            targets = text.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
        }
        for t in targets {
            let (name, address) = try ProxyConfig.parseTarget(t)
            c.targets[name] = TargetConfig(address: address)
        }
        c.maxSessions = try C.pick(maxSessions, "max-sessions", { Int($0) }) ?? c.maxSessions
        c.bufferSize = try C.pick(bufferSize, "buffer-size", { Int($0) }) ?? c.bufferSize
        c.idleTimeout = try C.pick(idleTimeout, "idle-timeout", { Double($0) }) ?? c.idleTimeout
        c.linger = try C.pick(linger, "linger", { Double($0) }) ?? c.linger
        c.maxWait = try C.pick(maxWait, "max-wait", { Double($0) }) ?? c.maxWait
        c.connectTimeout = try C.pick(connectTimeout, "connect-timeout", { Double($0) }) ?? c.connectTimeout
        c.token = try C.pick(token, "token", { $0 })
        c.corsOrigin = try C.pick(corsOrigin, "cors-origin", { $0 })
        c.telnet = try C.flag(telnet, "telnet")
        c.logLevel = try C.pick(logLevel, "log-level", { $0 }) ?? c.logLevel
        c.logFormat = try C.pick(logFormat, "log-format", { $0 }) ?? c.logFormat
        c.trustProxy = try C.flag(trustProxy, "trust-proxy")
        c.demo = try C.flag(demo, "demo")
        c.web = try C.flag(web, "web")
        c.shutdownTimeout = try C.pick(shutdownTimeout, "shutdown-timeout", { Double($0) }) ?? c.shutdownTimeout
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
ProxyLogging.bootstrap(format: config.logFormat, level: level)

let daemon: ProxyDaemon
do {
    daemon = try ProxyDaemon(config: config, logger: Logger(label: "uvproxyd"))
} catch {
    fail("\(error)")
}
daemon.run()
exit(0)
