import Foundation
import XCTest
@testable import UVProxy
import UVProxyConfig

/// The config file, the environment and flags (SPEC §4), and reload.
final class ConfigTests: XCTestCase {
    /// The repository root (this file is Tests/UVProxyTests/ConfigTests.swift).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// A YAML file that is removed when the test ends.
    func writeFile(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "uvproxyd-test-\(UUID().uuidString).yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    /// The error `load()` throws, as text.
    func loadError(_ loader: ConfigLoader, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            let config = try loader.load()
            XCTFail("loaded, expected an error: \(config)", file: file, line: line)
            return ""
        } catch {
            let text = "\(error)"
            XCTAssertFalse(text.contains("\n"), "one line: \(text)", file: file, line: line)
            return text
        }
    }

    // MARK: Sources and precedence

    func testNoSourcesGiveTheDefaults() throws {
        XCTAssertEqual(try ConfigLoader().load(), ProxyConfig())
    }

    func testFlagsWinOverEnvironmentOverFileOverDefaults() throws {
        let path = try writeFile("""
            listen: 127.0.0.1:7001
            max-sessions: 100
            buffer-size: 4096
            idle-timeout: 30
            linger: 5
            telnet: true
            log-level: debug
            """)
        let loader = ConfigLoader(
            flags: ["max-sessions": .int(300), "listen": .string("127.0.0.1:7003")],
            file: path,
            environment: ["UVPROXYD_MAX_SESSIONS": "200", "UVPROXYD_BUFFER_SIZE": "8192",
                          "UVPROXYD_LISTEN": "127.0.0.1:7002", "UVPROXYD_TELNET": "0", "OTHER_MAX_SESSIONS": "1"])
        let c = try loader.load()
        XCTAssertEqual(c.maxSessions, 300, "flag over environment and file")
        XCTAssertEqual(c.listen, "127.0.0.1:7003", "flag over environment and file")
        XCTAssertEqual(c.bufferSize, 8192, "environment over file")
        XCTAssertEqual(c.telnet, false, "environment (0) over file (true)")
        XCTAssertEqual(c.idleTimeout, 30, "file over default")
        XCTAssertEqual(c.linger, 5, "file over default")
        XCTAssertEqual(c.logLevel, "debug", "file over default")
        XCTAssertEqual(c.maxWait, ProxyConfig().maxWait, "default")
        XCTAssertEqual(c.connectTimeout, ProxyConfig().connectTimeout, "default")

        // Without the flag, the environment's value; without both, the file's.
        var noFlags = loader
        noFlags.flags = [:]
        XCTAssertEqual(try noFlags.load().maxSessions, 200)
        noFlags.environment = [:]
        XCTAssertEqual(try noFlags.load().maxSessions, 100)
        XCTAssertEqual(try noFlags.load().telnet, true)
    }

    func testConfigFileFromTheEnvironment() throws {
        let path = try writeFile("max-wait: 7.5\n")
        XCTAssertEqual(try ConfigLoader(environment: ["UVPROXYD_CONFIG": path]).load().maxWait, 7.5)
        // --config wins over UVPROXYD_CONFIG.
        let other = try writeFile("max-wait: 9\n")
        XCTAssertEqual(try ConfigLoader(file: other, environment: ["UVPROXYD_CONFIG": path]).load().maxWait, 9)
    }

    func testEnvironmentKeepsItsBooleanSpellings() throws {
        for (text, value) in [("1", true), ("true", true), ("yes", true), ("on", true), ("ON", true),
                              ("0", false), ("false", false), ("no", false), ("off", false), ("", false)] {
            let c = try ConfigLoader(environment: ["UVPROXYD_TELNET": text, "UVPROXYD_WEB": text]).load()
            XCTAssertEqual(c.telnet, value, "UVPROXYD_TELNET=\(text)")
            XCTAssertEqual(c.web, value, "UVPROXYD_WEB=\(text)")
        }
    }

    func testTargetsFromFileEnvironmentAndFlagsMergeByName() throws {
        let path = try writeFile("""
            targets:
              a: {host: 127.0.0.1, port: 4001, telnet: true}
              b: {host: 127.0.0.1, port: 4002, charset: latin1}
              c: {host: 127.0.0.1, port: 4003}
            """)
        let c = try ConfigLoader(flagTargets: ["c=127.0.0.1:6003", "d=127.0.0.1:6004"], file: path,
                                 environment: ["UVPROXYD_TARGET": "b=127.0.0.1:5002, e=[::1]:5005"]).load()
        XCTAssertEqual(c.targets["a"], TargetConfig(address: "127.0.0.1:4001", telnet: true), "from the file")
        XCTAssertEqual(c.targets["b"], TargetConfig(address: "127.0.0.1:5002"), "the environment replaces the file's entry")
        XCTAssertEqual(c.targets["c"], TargetConfig(address: "127.0.0.1:6003"), "a flag replaces the file's entry")
        XCTAssertEqual(c.targets["d"], TargetConfig(address: "127.0.0.1:6004"))
        XCTAssertEqual(c.targets["e"], TargetConfig(address: "[::1]:5005"))
        XCTAssertEqual(c.targets.count, 5)
    }

    func testTheExampleFileLoadsAndDocumentsEveryKey() throws {
        let path = ConfigTests.root.appendingPathComponent("uvproxyd.example.yaml").path
        let c = try ConfigLoader(file: path).load()
        XCTAssertEqual(c.listen, "127.0.0.1:8181")
        XCTAssertEqual(c.upstream, "127.0.0.1:4000")
        XCTAssertEqual(c.maxSessions, 10_000)
        XCTAssertEqual(c.bufferSize, 1_048_576)
        XCTAssertEqual(c.idleTimeout, 600)
        XCTAssertEqual(c.linger, 60)
        XCTAssertEqual(c.maxWait, 60)
        XCTAssertEqual(c.connectTimeout, 10)
        XCTAssertNil(c.token)
        XCTAssertEqual(c.corsOrigin, "https://play.example.org")
        XCTAssertEqual(c.telnet, false)
        XCTAssertEqual(c.charset, .utf8)
        XCTAssertEqual(c.logLevel, "info")
        XCTAssertEqual(c.logFormat, "text")
        XCTAssertEqual(c.trustProxy, false)
        XCTAssertEqual(c.demo, false)
        XCTAssertEqual(c.web, false)
        XCTAssertEqual(c.shutdownTimeout, 10)
        XCTAssertEqual(c.maxConnections, 10_000)
        XCTAssertEqual(c.maxSessionsPerClient, 0)
        XCTAssertEqual(c.sendTimeout, 60)
        XCTAssertEqual(c.allowedHosts, ["play.example.org"])
        XCTAssertEqual(c.targets, [
            "mud": TargetConfig(address: "127.0.0.1:4000", telnet: true, charset: .latin1, gmcp: true),
            "classic": TargetConfig(address: "localhost:5000", telnet: true, charset: .cp437, connectTimeout: 5),
            "modern": TargetConfig(address: "127.0.0.1:4100", proxyProtocol: .v2),
        ])
        XCTAssertEqual(c.acceptProxyProtocol, false)
        XCTAssertNil(c.proxyProtocol, "shown commented out: a game must expect the header")
        // Every key is shown (the token commented out, so that copying the file sets none).
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let lines = text.split(separator: "\n").map { $0.hasPrefix("# ") ? $0.dropFirst(2) : $0[...] }
        for key in ConfigLoader.keys {
            XCTAssertTrue(lines.contains { $0.hasPrefix(key + ":") }, "the example shows \(key)")
        }
    }

    // MARK: Errors

    func testBadFilesStopWithOneLineNamingTheKey() throws {
        let cases: [(String, String)] = [
            ("max-sessions: lots\n", "max-sessions: 'lots' is not an integer"),
            ("idle-timeout: soon\n", "idle-timeout: 'soon' is not a number"),
            ("telnet: maybe\n", "telnet: 'maybe' is not true or false"),
            ("max-sesions: 5\n", "max-sesions: unknown key (did you mean max-sessions?)"),
            ("frobnicate: 5\n", "frobnicate: unknown key"),
            ("max-sessions: 0\n", "max-sessions: must be 1 to 10000000, got 0"),
            ("charset: klingon\n", "charset: 'klingon' is not a known charset"),
            ("log-format: xml\n", "log-format: must be text or json"),
            ("max-sessions:\n  a: 1\n", "max-sessions: expected a single value, got a map"),
            ("targets:\n  mud: {host: 127.0.0.1, port: 99999}\n", "targets.mud.port: must be 1 to 65535, got 99999"),
            ("targets:\n  mud: {host: 127.0.0.1, port: many}\n", "targets.mud.port: 'many' is not an integer"),
            ("targets:\n  mud: {port: 4000}\n", "targets.mud: host is missing"),
            ("targets:\n  mud: {host: 127.0.0.1, port: 4000, charset: ebcdic}\n", "targets.mud.charset: 'ebcdic' is not a known charset"),
            ("targets:\n  mud: {host: 127.0.0.1, port: 4000, prot: 1}\n", "targets.mud.prot: unknown key (did you mean port?)"),
            ("targets:\n  mud: {host: 127.0.0.1, port: 4000, connect-timeout: -1}\n", "targets.mud.connect-timeout: must be a positive number"),
            ("targets:\n  \"two words\": {host: 127.0.0.1, port: 4000}\n", "targets.two words: not a valid target name"),
            ("targets: [a, b]\n", "targets: expected a map"),
            ("listen: [127.0.0.1\n", "not valid YAML: "),
            ("max-sessions: 5\nmax-sessions: 6\n", "not valid YAML: max-sessions given twice"),
            ("- listen\n- upstream\n", "expected 'key: value' settings at the top level"),
            ("max-connections: 0\n", "max-connections: must be 1 to 10000000, got 0"),
            ("max-connections: many\n", "max-connections: 'many' is not an integer"),
            ("max-sessions-per-client: -1\n", "max-sessions-per-client: must be 0 to 10000000, got -1"),
            ("max-sessions-per-client: x\n", "max-sessions-per-client: 'x' is not an integer"),
            ("send-timeout: 0\n", "send-timeout: must be a positive number of seconds"),
            ("send-timeout: soon\n", "send-timeout: 'soon' is not a number"),
            ("allowed-host: [a, \"b c\"]\n", "allowed-host: 'b c' is not a host name"),
            ("allowed-host: example.org:8181\n", "allowed-host: 'example.org:8181' is not a host name"),
            ("allowed-host:\n  a: 1\n", "allowed-host: expected a text or a list of texts, got a map"),
            ("allowed-host: [[a]]\n", "allowed-host: expected a text or a list of texts, got a nested list"),
        ]
        for (yaml, expected) in cases {
            let path = try writeFile(yaml)
            let message = loadError(ConfigLoader(file: path))
            XCTAssertTrue(message.hasPrefix("config \(path): "), "names the file: \(message)")
            XCTAssertTrue(message.contains(expected), "\(yaml.debugDescription): got '\(message)', expected '\(expected)'")
        }
    }

    /// SPEC §5's settings from each source, flags over environment over file.
    func testLimitsAndAllowedHostsFromEverySource() throws {
        let file = try writeFile("""
            max-connections: 100
            max-sessions-per-client: 3
            send-timeout: 30
            allowed-host: one.example
            """)
        var c = try ConfigLoader(file: file).load()
        XCTAssertEqual(c.maxConnections, 100)
        XCTAssertEqual(c.maxSessionsPerClient, 3)
        XCTAssertEqual(c.sendTimeout, 30)
        XCTAssertEqual(c.allowedHosts, ["one.example"], "one name without a list")

        let list = try writeFile("allowed-host:\n  - a.example\n  - B.example\n")
        XCTAssertEqual(try ConfigLoader(file: list).load().allowedHosts, ["a.example", "B.example"])

        let environment = ["UVPROXYD_MAX_CONNECTIONS": "200", "UVPROXYD_MAX_SESSIONS_PER_CLIENT": "4",
                           "UVPROXYD_SEND_TIMEOUT": "2.5", "UVPROXYD_ALLOWED_HOST": "env.example, two.example,"]
        c = try ConfigLoader(file: file, environment: environment).load()
        XCTAssertEqual(c.maxConnections, 200)
        XCTAssertEqual(c.maxSessionsPerClient, 4)
        XCTAssertEqual(c.sendTimeout, 2.5)
        XCTAssertEqual(c.allowedHosts, ["env.example", "two.example"], "comma-separated, blanks dropped")

        c = try ConfigLoader(flags: ["max-connections": .int(300), "max-sessions-per-client": .int(5),
                                     "send-timeout": .double(7), "allowed-host": .stringArray(["f1", "f2"])],
                             file: file, environment: environment).load()
        XCTAssertEqual(c.maxConnections, 300)
        XCTAssertEqual(c.maxSessionsPerClient, 5)
        XCTAssertEqual(c.sendTimeout, 7)
        XCTAssertEqual(c.allowedHosts, ["f1", "f2"], "flags replace the list, not add to it")
    }

    func testBadLimitValuesNameTheirSource() {
        XCTAssertEqual(loadError(ConfigLoader(environment: ["UVPROXYD_MAX_CONNECTIONS": "lots"])),
                       "UVPROXYD_MAX_CONNECTIONS: 'lots' is not an integer")
        XCTAssertEqual(loadError(ConfigLoader(environment: ["UVPROXYD_SEND_TIMEOUT": "1m"])),
                       "UVPROXYD_SEND_TIMEOUT: '1m' is not a number")
        XCTAssertTrue(loadError(ConfigLoader(environment: ["UVPROXYD_ALLOWED_HOST": "a b"]))
            .hasPrefix("allowed-host: 'a b' is not a host name"))
        XCTAssertTrue(loadError(ConfigLoader(flags: ["max-sessions-per-client": .int(-2)]))
            .hasPrefix("max-sessions-per-client: must be 0 to 10000000, got -2"))
    }

    func testUnreadableFile() {
        let message = loadError(ConfigLoader(file: "/nonexistent/uvproxyd.yaml"))
        XCTAssertEqual(message, "config /nonexistent/uvproxyd.yaml: cannot read: No such file or directory")
    }

    func testAnEmptyFileSetsNothing() throws {
        XCTAssertEqual(try ConfigLoader(file: try writeFile("")).load(), ProxyConfig())
        XCTAssertEqual(try ConfigLoader(file: try writeFile("# nothing yet\n")).load(), ProxyConfig())
    }

    func testBadEnvironmentValuesNameTheVariable() {
        XCTAssertEqual(loadError(ConfigLoader(environment: ["UVPROXYD_MAX_SESSIONS": "lots"])),
                       "UVPROXYD_MAX_SESSIONS: 'lots' is not an integer")
        XCTAssertEqual(loadError(ConfigLoader(environment: ["UVPROXYD_LINGER": "1m"])),
                       "UVPROXYD_LINGER: '1m' is not a number")
        XCTAssertEqual(loadError(ConfigLoader(environment: ["UVPROXYD_TELNET": "maybe"])),
                       "UVPROXYD_TELNET: 'maybe' is not true or false")
        XCTAssertTrue(loadError(ConfigLoader(environment: ["UVPROXYD_TARGET": "nameless"])).hasPrefix("UVPROXYD_TARGET: "))
    }

    /// A bad value in the environment is an error even when the file has a good one: the
    /// environment is read first and must not be skipped silently.
    func testBadEnvironmentValueOverAGoodFileValue() throws {
        let path = try writeFile("max-sessions: 5\n")
        XCTAssertEqual(loadError(ConfigLoader(file: path, environment: ["UVPROXYD_MAX_SESSIONS": "x"])),
                       "UVPROXYD_MAX_SESSIONS: 'x' is not an integer")
    }

    /// A value that a higher source overrides must still be well formed (SPEC §4: a bad file
    /// or value stops start-up): a flag hid a bad file or environment value (black-box probe).
    func testABadValueIsAnErrorEvenWhereAHigherSourceWins() throws {
        XCTAssertEqual(loadError(ConfigLoader(flags: ["max-sessions": .int(5)], environment: ["UVPROXYD_MAX_SESSIONS": "abc"])),
                       "UVPROXYD_MAX_SESSIONS: 'abc' is not an integer")
        let path = try writeFile("idle-timeout: soon\n")
        let message = loadError(ConfigLoader(flags: ["idle-timeout": .double(5)], file: path, environment: ["UVPROXYD_IDLE_TIMEOUT": "6"]))
        XCTAssertEqual(message, "config \(path): idle-timeout: 'soon' is not a number")
        XCTAssertEqual(try ConfigLoader(flags: ["max-sessions": .int(5)], environment: ["UVPROXYD_MAX_SESSIONS": "7"]).load().maxSessions, 5)
    }

    /// `default` is the default target's name: a `targets` entry of that name was taken and never
    /// used (sessions went to `upstream`); it is an error naming the key.
    func testATargetNamedDefaultIsAnError() throws {
        let path = try writeFile("targets:\n  default: {host: 127.0.0.1, port: 4000}\n")
        let message = loadError(ConfigLoader(file: path))
        XCTAssertTrue(message.hasPrefix("config \(path): targets.default: "), message)
        XCTAssertTrue(message.contains("upstream"), message)
        XCTAssertTrue(loadError(ConfigLoader(flagTargets: ["default=127.0.0.1:4000"])).contains("'default' names the default target"))
    }

    // MARK: Targets

    func testPerTargetSettingsReachTheTargets() throws {
        let path = try writeFile("""
            upstream: 127.0.0.1:4000
            telnet: true
            charset: cp437
            connect-timeout: 7
            targets:
              own:
                host: 127.0.0.1
                port: 4001
                telnet: false
                charset: ISO-8859-1
                connect-timeout: 2.5
              inherits:
                host: ::1
                port: 4002
            """)
        let settings = try ConfigLoader(file: path).load().apiSettings()
        let own = try XCTUnwrap(settings.targets["own"])
        XCTAssertEqual(own.address.port, 4001)
        XCTAssertEqual(own.telnet, false)
        XCTAssertEqual(own.charset, .latin1)
        XCTAssertEqual(own.connectTimeoutMs, 2500)
        let inherits = try XCTUnwrap(settings.targets["inherits"])
        XCTAssertEqual(inherits.address.host, "[::1]")
        XCTAssertEqual(inherits.address.port, 4002)
        XCTAssertEqual(inherits.telnet, true)
        XCTAssertEqual(inherits.charset, .cp437)
        XCTAssertEqual(inherits.connectTimeoutMs, 7000)
        XCTAssertEqual(settings.defaultTarget.address.port, 4000)
        XCTAssertEqual(settings.defaultTarget.telnet, true)
        XCTAssertEqual(settings.defaultTarget.charset, .cp437)
    }

    func testProxyProtocolSettingsFromEverySource() throws {
        let path = try writeFile("""
            upstream: 127.0.0.1:4000
            accept-proxy-protocol: true
            proxy-protocol: V2
            targets:
              own:
                host: 127.0.0.1
                port: 4001
                proxy-protocol: v1
              plain:
                host: 127.0.0.1
                port: 4002
            """)
        let c = try ConfigLoader(file: path).load()
        XCTAssertTrue(c.acceptProxyProtocol)
        XCTAssertEqual(c.proxyProtocol, .v2)
        let settings = try c.apiSettings()
        XCTAssertEqual(settings.defaultTarget.proxyProtocol, .v2)
        XCTAssertEqual(settings.targets["own"]?.proxyProtocol, .v1)
        XCTAssertNil(settings.targets["plain"]?.proxyProtocol, "not inherited: a game must expect the header")

        let env = try ConfigLoader(file: path, environment: ["UVPROXYD_PROXY_PROTOCOL": "v1",
                                                             "UVPROXYD_ACCEPT_PROXY_PROTOCOL": "false"]).load()
        XCTAssertEqual(env.proxyProtocol, .v1)
        XCTAssertFalse(env.acceptProxyProtocol)
        let flags = try ConfigLoader(flags: ["proxy-protocol": .string("v2"), "accept-proxy-protocol": .bool(true)],
                                     file: path, environment: ["UVPROXYD_PROXY_PROTOCOL": "v1"]).load()
        XCTAssertEqual(flags.proxyProtocol, .v2)
        XCTAssertTrue(flags.acceptProxyProtocol)

        XCTAssertEqual(loadError(ConfigLoader(environment: ["UVPROXYD_PROXY_PROTOCOL": "v3"])),
                       "UVPROXYD_PROXY_PROTOCOL: 'v3' is not a PROXY protocol version (v1 or v2)")
        let bad = try writeFile("targets:\n  t:\n    host: 127.0.0.1\n    port: 1\n    proxy-protocol: v9\n")
        XCTAssertEqual(loadError(ConfigLoader(file: bad)),
                       "config \(bad): targets.t.proxy-protocol: 'v9' is not a PROXY protocol version (v1 or v2)")
    }

    func testNodeIDAndDrainTimeout() throws {
        let c = try ConfigLoader(file: try writeFile("node-id: eu1\ndrain-timeout: 600\n")).load()
        XCTAssertEqual(c.nodeId, "eu1")
        XCTAssertEqual(c.drainTimeout, 600)
        XCTAssertEqual(try c.apiSettings().idPrefix, Array("eu1-".utf8))
        XCTAssertEqual(ProxyConfig().drainTimeout, 3600)
        for bad in ["EU1", "eu-1", "", "abcdefghijklmnopq"] {
            XCTAssertEqual(loadError(ConfigLoader(flags: ["node-id": .string(bad)])),
                           "node-id: must be 1 to 16 characters of a-z and 0-9, got '\(bad)'")
        }
        XCTAssertTrue(loadError(ConfigLoader(environment: ["UVPROXYD_DRAIN_TIMEOUT": "0"])).hasPrefix("drain-timeout: "))
    }

    // MARK: Reload (ProxyDaemon.apply, in process)

    func testReloadAddsATargetAndALiveSessionKeepsItsBytes() throws {
        let (up, d, c, id, conn) = try sessionOnTestUpstream { $0.maxSessions = 5 }
        let extra = try startUpstream(greeting: "extra here\n")
        try conn.send("before reload\n")
        let first = try c.request("GET", "/sessions/\(id)?since=0&wait=10")
        XCTAssertEqual(first.text, "before reload\n")
        XCTAssertEqual(try c.request("POST", "/sessions?target=extra").status, 400, "not configured yet")

        var new = try d.onLoop { $0.config }
        new.targets["extra"] = TargetConfig(address: "127.0.0.1:\(extra.port)")
        new.maxSessions = 7
        try d.onLoop { try $0.apply(new) }
        XCTAssertEqual(try d.onLoop { $0.table.settings.maxSessions }, 7)

        // The new target works for a new session.
        let newID = try c.createSession(target: "extra")
        XCTAssertEqual(try c.request("GET", "/sessions/\(newID)?since=0&wait=10").text, "extra here\n")

        // The old session kept its connection and its bytes, in both directions.
        try conn.send("after reload\n")
        let next = try c.request("GET", "/sessions/\(id)?since=14&wait=10")
        XCTAssertEqual(next.text, "after reload\n")
        XCTAssertEqual(next.header("X-Session-State"), "open")
        XCTAssertEqual(try c.request("GET", "/sessions/\(id)?since=0").text, "before reload\nafter reload\n")
        XCTAssertEqual(try c.request("POST", "/sessions/\(id)/input", body: "look").status, 204)
        XCTAssertEqual(try conn.receive(until: "look\r\n"), "look\r\n")
        XCTAssertEqual(up.connectionCount, 1, "no new connection to the old target")
    }

    /// With the demo game as the default target, `upstream` is not in force: a reload that
    /// changes it says so instead of reporting it changed, and creates still reach the demo game.
    func testReloadWithTheDemoSaysANewUpstreamIsIgnored() throws {
        let log = LogCapture()
        let d = try startDaemon(log: log) {
            $0.demo = true
            $0.logLevel = "info"  // a reload puts the config's level in force
        }
        let c = try d.client()
        var new = try d.onLoop { $0.config }
        new.upstream = "127.0.0.1:1"
        new.maxWait = 2
        try d.onLoop { try $0.apply(new) }
        XCTAssertNotNil(log.wait(for: "config reloaded: 1 target (default); changed: max-wait"), "\(log.all)")
        XCTAssertNotNil(log.wait(for: "config: upstream changed; ignored while the demo game is the default target"))
        let id = try c.createSession()
        XCTAssertTrue(try c.request("GET", "/sessions/\(id)?since=0&wait=5").text.contains("demo game"))
    }

    func testReloadChangesTokenCorsAndLimitsForNewRequests() throws {
        let (_, d, c, _, _) = try sessionOnTestUpstream { $0.maxSessions = 1 }
        XCTAssertEqual(try c.request("POST", "/sessions").status, 503, "max-sessions 1 is full")
        XCTAssertNil(try c.request("GET", "/healthz").header("Access-Control-Allow-Origin"))

        var new = try d.onLoop { $0.config }
        new.maxSessions = 2
        new.token = "s3cret"
        new.corsOrigin = "https://play.example.org"
        new.maxWait = 0.05
        try d.onLoop { try $0.apply(new) }

        XCTAssertEqual(try c.request("POST", "/sessions").status, 401, "the new token is required")
        let auth = ["Authorization": "Bearer s3cret"]
        let id = try XCTUnwrap(c.request("POST", "/sessions", headers: auth).json?["id"] as? String,
                               "a second session fits the new max-sessions")
        XCTAssertEqual(try c.request("POST", "/sessions", headers: auth).status, 503)
        let health = try c.request("GET", "/healthz")
        XCTAssertEqual(health.header("Access-Control-Allow-Origin"), "https://play.example.org")
        // wait=30 is capped at the new max-wait: the empty answer comes at once.
        let start = Date()
        let read = try c.request("GET", "/sessions/\(id)?since=0&wait=30", headers: auth)
        XCTAssertEqual(read.status, 200)
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
    }

    func testAReloadThatFailsChangesNothing() throws {
        let (_, d, c, id, conn) = try sessionOnTestUpstream { $0.targets["old"] = TargetConfig(address: "127.0.0.1:1") }
        let before = try d.onLoop { $0.config }
        var bad = before
        bad.targets = ["new": TargetConfig(address: "no-such-host.invalid:4000")]
        bad.maxSessions = 3
        XCTAssertThrowsError(try d.onLoop { try $0.apply(bad) }) { error in
            XCTAssertTrue("\(error)".hasPrefix("targets.new: "), "\(error)")
        }
        var invalid = before
        invalid.bufferSize = 10
        XCTAssertThrowsError(try d.onLoop { try $0.apply(invalid) })
        XCTAssertEqual(try d.onLoop { $0.config }, before)
        XCTAssertEqual(try d.onLoop { $0.table.settings.maxSessions }, before.maxSessions)
        XCTAssertEqual(try c.request("POST", "/sessions?target=new").status, 400)
        XCTAssertEqual(try c.request("POST", "/sessions?target=old").status, 502, "the old target is still configured")
        try conn.send("still here\n")
        XCTAssertEqual(try c.request("GET", "/sessions/\(id)?since=0&wait=10").text, "still here\n")
    }

    /// What SIGHUP runs: the loader reads the changed file; a broken file leaves the config alone.
    func testReloadReadsTheFileAgainAndSurvivesABrokenOne() throws {
        let extra = try startUpstream(greeting: "extra\n")
        let (_, d, c, _, _) = try sessionOnTestUpstream()
        let path = try writeFile("max-sessions: 50\n")
        let upstream = try d.onLoop { $0.config.upstream }
        let loader = ConfigLoader(flags: ["upstream": .string(upstream), "listen": .string("127.0.0.1:0"),
                                          "log-level": .string("error")], file: path)
        try d.onLoop { $0.configLoader = { try loader.load() } }

        try """
            max-sessions: 60
            targets:
              extra: {host: 127.0.0.1, port: \(extra.port)}
            """.write(toFile: path, atomically: true, encoding: .utf8)
        try d.onLoop { $0.reload() }
        XCTAssertEqual(try d.onLoop { $0.config.maxSessions }, 60)
        XCTAssertEqual(try d.onLoop { $0.config.upstream }, upstream, "the flag still wins")
        _ = try c.createSession(target: "extra")

        try "max-sessions: lots\n".write(toFile: path, atomically: true, encoding: .utf8)
        try d.onLoop { $0.reload() }
        XCTAssertEqual(try d.onLoop { $0.config.maxSessions }, 60, "the running config stays")
        XCTAssertEqual(try c.request("POST", "/sessions?target=extra").status, 201)
    }

    func testSettingsThatNeedARestartAreKept() throws {
        let (_, d, c, id, _) = try sessionOnTestUpstream()
        var new = try d.onLoop { $0.config }
        new.listen = "127.0.0.1:1"
        new.logFormat = "json"
        new.linger = 30
        try d.onLoop { try $0.apply(new) }
        let now = try d.onLoop { $0.config }
        XCTAssertEqual(now.listen, "127.0.0.1:0")
        XCTAssertEqual(now.logFormat, "text")
        XCTAssertEqual(now.linger, 30, "the rest applies")
        XCTAssertEqual(try c.request("GET", "/sessions/\(id)").status, 200, "still listening where it was")
    }

    /// Sessions opened while the idle timeout was off get one when a reload turns it on.
    func testReloadTurningOnTheIdleTimeoutReachesOpenSessions() throws {
        let (_, d, c, id, conn) = try sessionOnTestUpstream { $0.idleTimeout = 0 }
        var new = try d.onLoop { $0.config }
        new.idleTimeout = 0.2
        try d.onLoop { try $0.apply(new) }
        // The target's end of the connection sees the close (EOF) once the session is idle.
        conn.setTimeout(10)
        XCTAssertEqual(try conn.receive(), [])
        let r = try c.request("GET", "/sessions/\(id)")
        XCTAssertEqual(r.header("X-Session-State"), "closed")
        XCTAssertEqual(r.header("X-Close-Reason"), "idle timeout")
    }
}
