import Configuration
import UVProxy
import Yams
#if canImport(Glibc)
import Glibc
#endif

/// Reads a `ProxyConfig` from flags, `UVPROXYD_*` environment variables and the YAML config file
/// (SPEC §4) with swift-configuration: flags win over the environment, the environment over the
/// file, the file over the defaults.
///
/// Synchronous, and it starts no threads or tasks: the daemon calls it on its loop thread at
/// start-up and again on SIGHUP (re-reading the file; the flags and environment are the ones the
/// process started with).
public struct ConfigLoader: Sendable {
    /// Settings given as flags, by long name: `["max-sessions": .int(20000), "telnet": .bool(true)]`.
    public var flags: [String: ConfigContent]
    /// `--target NAME=HOST:PORT` flags.
    public var flagTargets: [String]
    /// `--config FILE`; without it, `UVPROXYD_CONFIG` from `environment`.
    public var file: String?
    /// The process environment (only `UVPROXYD_*` is read). A parameter so that tests need not
    /// change the real one.
    public var environment: [String: String]

    public init(flags: [String: ConfigContent] = [:], flagTargets: [String] = [], file: String? = nil,
                environment: [String: String] = [:]) {
        self.flags = flags
        self.flagTargets = flagTargets
        self.file = file
        self.environment = environment
    }

    /// The keys a config file may have: the long flag names, plus `targets`.
    public static let keys = [
        "listen", "upstream", "max-sessions", "buffer-size", "idle-timeout", "linger", "max-wait", "connect-timeout",
        "token", "cors-origin", "telnet", "charset", "log-level", "log-format", "trust-proxy", "demo", "web",
        "shutdown-timeout", "max-connections", "max-sessions-per-client", "send-timeout", "allowed-host",
        "accept-proxy-protocol", "proxy-protocol", "gmcp", "node-id", "drain-timeout", "targets",
    ]
    /// Keys whose value is a list: in the file a YAML list or one text, in the environment
    /// comma-separated, as flags repeated.
    static let listKeys: Set<String> = ["allowed-host"]
    /// The keys of one entry of `targets`.
    public static let targetKeys = ["host", "port", "telnet", "charset", "connect-timeout", "proxy-protocol", "gmcp"]
    static let boolKeys: Set<String> = ["telnet", "trust-proxy", "demo", "web", "accept-proxy-protocol", "gmcp"]

    /// The file this loader reads, if any.
    public var filePath: String? { file ?? environment["UVPROXYD_CONFIG"] }

    /// Reads every source. Throws `ConfigError` with one line that names the key (and the file
    /// or variable it came from) and the problem.
    public func load() throws -> ProxyConfig {
        let document = try filePath.map { try ConfigFile(path: $0) }
        let r = SettingsReader(flags: flags, environment: environment, file: document)
        var c = ProxyConfig()
        c.listen = try r.string("listen") ?? c.listen
        c.upstream = try r.string("upstream") ?? c.upstream
        c.maxSessions = try r.int("max-sessions") ?? c.maxSessions
        c.bufferSize = try r.int("buffer-size") ?? c.bufferSize
        c.idleTimeout = try r.double("idle-timeout") ?? c.idleTimeout
        c.linger = try r.double("linger") ?? c.linger
        c.maxWait = try r.double("max-wait") ?? c.maxWait
        c.connectTimeout = try r.double("connect-timeout") ?? c.connectTimeout
        c.token = try r.string("token")
        c.corsOrigin = try r.string("cors-origin")
        c.telnet = try r.bool("telnet") ?? c.telnet
        c.charset = try r.charset(["charset"]) ?? c.charset
        c.logLevel = try r.string("log-level") ?? c.logLevel
        c.logFormat = try r.string("log-format") ?? c.logFormat
        c.trustProxy = try r.bool("trust-proxy") ?? c.trustProxy
        c.demo = try r.bool("demo") ?? c.demo
        c.web = try r.bool("web") ?? c.web
        c.shutdownTimeout = try r.double("shutdown-timeout") ?? c.shutdownTimeout
        c.maxConnections = try r.int("max-connections") ?? c.maxConnections
        c.maxSessionsPerClient = try r.int("max-sessions-per-client") ?? c.maxSessionsPerClient
        c.sendTimeout = try r.double("send-timeout") ?? c.sendTimeout
        c.allowedHosts = try r.stringList("allowed-host") ?? c.allowedHosts
        c.acceptProxyProtocol = try r.bool("accept-proxy-protocol") ?? c.acceptProxyProtocol
        c.proxyProtocol = try r.proxyProtocol(["proxy-protocol"])
        c.gmcp = try r.bool("gmcp") ?? c.gmcp
        c.nodeId = try r.string("node-id")
        c.drainTimeout = try r.double("drain-timeout") ?? c.drainTimeout

        // Targets: the file's map, then UVPROXYD_TARGET, then --target; a name given again
        // replaces the whole entry.
        if let document {
            for name in document.targetNames {
                c.targets[name] = try r.fileTarget(name)
            }
        }
        if let text = try r.string("target") {
            for item in text.split(whereSeparator: { $0 == "," || $0 == " " }) {
                let (name, address) = try ConfigLoader.named("UVPROXYD_TARGET") { try ProxyConfig.parseTarget(String(item)) }
                c.targets[name] = TargetConfig(address: address)
                r.origins["targets.\(name)"] = .environment
            }
        }
        for item in flagTargets {
            let (name, address) = try ProxyConfig.parseTarget(item)
            c.targets[name] = TargetConfig(address: address)
            r.origins["targets.\(name)"] = .flags
        }
        do {
            try c.validate()
        } catch let error as ConfigError {
            throw r.located(error)
        }
        return c
    }

    /// `UVPROXYD_` + the key in upper case with `_` for `-`.
    public static func variable(_ key: String) -> String {
        "UVPROXYD_" + String(key.uppercased().map { $0 == "-" || $0 == "." ? "_" : $0 })
    }

    /// Prefixes an error with where the value came from (`UVPROXYD_TARGET: …`).
    static func named<T>(_ source: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw ConfigError("\(source): \(error)") }
    }

    /// The spellings of true and false. The environment provider's own set lacks `on`, `off` and
    /// the empty string, which `UVPROXYD_TELNET` took before there was a config file.
    static func environmentBool(_ text: String) -> String? {
        switch text.lowercased() {
        case "on": "true"
        case "off", "": "false"
        default: nil
        }
    }
}

/// Where a setting's value came from, for error messages.
enum Source: Equatable {
    case flags, environment, file
}

/// One `ConfigReader` over flags, environment and file, in that order. `ConfigReader`'s optional
/// getters answer nil both for a missing value and for one that does not convert (the reason goes
/// to the access reporter), so each read checks the reporter and turns a failure into an error
/// that names the key and its source.
final class SettingsReader {
    /// A reader and its providers, in the order it asks them.
    struct Layers {
        let reader: ConfigReader
        let providers: [(provider: any ConfigProvider, source: Source)]
    }

    let all: Layers
    /// The file alone: `targets` entries exist only there.
    let fileOnly: Layers?
    let file: ConfigFile?
    let recorder = AccessRecorder()
    /// Which source supplied each key that was set (for errors found later, by `validate`).
    var origins: [String: Source] = [:]

    init(flags: [String: ConfigContent], environment: [String: String], file: ConfigFile?) {
        var values: [AbsoluteConfigKey: ConfigValue] = [:]
        for (key, content) in flags { values[AbsoluteConfigKey([key])] = ConfigValue(content, isSecret: key == "token") }
        // Only UVPROXYD_* variables, with the boolean spellings the daemon has always taken.
        var variables: [String: String] = [:]
        for (name, value) in environment where name.hasPrefix("UVPROXYD_") {
            let key = String(name.dropFirst("UVPROXYD_".count).lowercased().map { $0 == "_" ? "-" : $0 })
            variables[name] = ConfigLoader.boolKeys.contains(key) ? ConfigLoader.environmentBool(value) ?? value : value
        }
        let env = KeyMappingProvider(
            upstream: EnvironmentVariablesProvider(environmentVariables: variables,
                                                   secretsSpecifier: .specific(["UVPROXYD_TOKEN"]))
        ) { $0.prepending(["uvproxyd"]) }  // max-sessions → UVPROXYD_MAX_SESSIONS
        var providers: [(provider: any ConfigProvider, source: Source)] = [
            (InMemoryProvider(name: "flags", values: values), .flags),
            (env, .environment),
        ]
        if let provider = file?.provider { providers.append((provider, .file)) }
        let recorder = recorder
        all = Layers(reader: ConfigReader(providers: providers.map(\.provider), accessReporter: recorder),
                     providers: providers)
        fileOnly = file?.provider.map {
            Layers(reader: ConfigReader(provider: $0, accessReporter: recorder), providers: [($0, .file)])
        }
        self.file = file
    }

    func string(_ key: String) throws -> String? {
        try read([key], "text", in: all) { $0.string(forKey: $1) }
    }

    func int(_ key: String) throws -> Int? {
        try read([key], "an integer", in: all) { $0.int(forKey: $1) }
    }

    func double(_ key: String) throws -> Double? {
        try read([key], "a number", in: all) { $0.double(forKey: $1) }
    }

    func bool(_ key: String) throws -> Bool? {
        try read([key], "true or false", in: all) { $0.bool(forKey: $1) }
    }

    /// A list of texts, blanks dropped (`UVPROXYD_ALLOWED_HOST=a, b,`).
    func stringList(_ key: String) throws -> [String]? {
        try read([key], "text or a list of text", in: all) { $0.stringArray(forKey: $1) }?
            .filter { !$0.allSatisfy(\.isWhitespace) }
    }

    func charset(_ path: [String], in layers: Layers? = nil) throws -> Charset? {
        guard let name = try read(path, "text", in: layers ?? all, { $0.string(forKey: $1) }) else { return nil }
        guard let charset = Charset(name: name) else {
            throw problem(path, "'\(name)' is not a known charset (UTF-8, ISO-8859-1, IBM437, latin1, cp437)",
                          source: origins[path.joined(separator: ".")] ?? .file)
        }
        return charset
    }

    /// `v1` or `v2` (SPEC §6).
    func proxyProtocol(_ path: [String], in layers: Layers? = nil) throws -> ProxyProtocol.Version? {
        guard let text = try read(path, "text", in: layers ?? all, { $0.string(forKey: $1) }) else { return nil }
        guard let version = ProxyProtocol.Version(rawValue: text.lowercased()) else {
            throw problem(path, "'\(text)' is not a PROXY protocol version (v1 or v2)",
                          source: origins[path.joined(separator: ".")] ?? .file)
        }
        return version
    }

    /// One entry of the file's `targets` map.
    func fileTarget(_ name: String) throws -> TargetConfig {
        let file = fileOnly!
        let path = ["targets", name]
        guard ProxyConfig.isTargetName(name) else {
            throw problem(path, "not a valid target name (letters, digits, '-', '_', '.')", source: .file)
        }
        if name == ProxyConfig.defaultTargetName { throw problem(path, ProxyConfig.defaultTargetNameTaken, source: .file) }
        guard let host = try read(path + ["host"], "text", in: file, { $0.string(forKey: $1) }), !host.isEmpty else {
            throw problem(path, "host is missing", source: .file)
        }
        guard let port = try read(path + ["port"], "an integer", in: file, { $0.int(forKey: $1) }) else {
            throw problem(path, "port is missing", source: .file)
        }
        guard (1...65535).contains(port) else {
            throw problem(path + ["port"], "must be 1 to 65535, got \(port)", source: .file)
        }
        origins["targets.\(name)"] = .file
        return TargetConfig(
            address: host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)",
            telnet: try read(path + ["telnet"], "true or false", in: file, { $0.bool(forKey: $1) }),
            charset: try charset(path + ["charset"], in: file),
            connectTimeout: try read(path + ["connect-timeout"], "a number", in: file, { $0.double(forKey: $1) }),
            proxyProtocol: try proxyProtocol(path + ["proxy-protocol"], in: file),
            gmcp: try read(path + ["gmcp"], "true or false", in: file, { $0.bool(forKey: $1) })
        )
    }

    /// Reads one value; a value that is there but does not convert is an error naming its source.
    private func read<T>(_ path: [String], _ expected: String, in layers: Layers,
                         _ get: (ConfigReader, ConfigKey) -> T?) throws -> T? {
        recorder.last = nil
        let value = get(layers.reader, ConfigKey(path))
        // The providers are asked in order until one has the key or fails: the last one asked answered.
        guard let results = recorder.last?.providerResults, let answered = results.last,
              results.count <= layers.providers.count else { return value }
        // A provider's answer is bad if it failed, or had a value that did not convert.
        func check(_ result: AccessEvent.ProviderResult?, converted: Bool, _ provider: any ConfigProvider, _ source: Source) throws {
            let bad = switch result?.result {
            case .failure?: true
            case .success(let lookup)?: lookup.value != nil && !converted
            case nil: false
            }
            if bad { throw problem(path, "\(rawText(provider, path)) is not \(expected)", source: source) }
        }
        let (provider, source) = layers.providers[results.count - 1]
        try check(answered, converted: value != nil, provider, source)
        if value != nil { origins[path.joined(separator: ".")] = source }
        // The sources the answer overrides are read too: a bad value there is an error all the
        // same (SPEC §4: a bad file or value stops start-up), not hidden by a flag.
        for (lower, lowerSource) in layers.providers[results.count...] {
            recorder.last = nil
            let hidden = get(ConfigReader(provider: lower, accessReporter: recorder), ConfigKey(path))
            try check(recorder.last?.providerResults.last, converted: hidden != nil, lower, lowerSource)
        }
        return value
    }

    /// The value as written, for the message.
    private func rawText(_ provider: any ConfigProvider, _ path: [String]) -> String {
        if case .string(let text)? = (try? provider.value(forKey: AbsoluteConfigKey(path), type: .string))?.value?.content {
            return "'\(text)'"
        }
        return "the value"
    }

    func problem(_ path: [String], _ text: String, source: Source) -> ConfigError {
        let key = path.joined(separator: ".")
        switch source {
        case .file: return ConfigError("config \(file?.path ?? "?"): \(key): \(text)")
        case .environment: return ConfigError("\(ConfigLoader.variable(key)): \(text)")
        case .flags: return ConfigError("--\(key): \(text)")
        }
    }

    /// `validate()`'s messages start with the key (`max-sessions: must be …`); one whose value
    /// came from the file also names the file.
    func located(_ error: ConfigError) -> ConfigError {
        let text = error.description
        guard let colon = text.firstIndex(of: ":") else { return error }
        let components = text[..<colon].split(separator: ".")
        let key = components.prefix(components.first == "targets" ? 2 : 1).joined(separator: ".")
        guard origins[key] == .file, let file else { return error }
        return ConfigError("config \(file.path): \(text)")
    }
}

/// Keeps the last access event (see `SettingsReader`). Used on one thread only: the loader's caller.
final class AccessRecorder: AccessReporter, @unchecked Sendable {
    var last: AccessEvent?
    func report(_ event: AccessEvent) { last = event }
}
