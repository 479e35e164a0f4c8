import Configuration
import UVProxy
import Yams
#if canImport(Glibc)
import Glibc
#endif

/// The YAML config file, read synchronously and checked against the known keys.
///
/// swift-configuration reads values by key but cannot list the keys a file has, so a misspelt
/// key would be silently ignored; the file's structure is checked here with Yams (which the
/// library parses with) before its values are read through the library.
struct ConfigFile {
    let path: String
    /// The file as a provider; nil for an empty file (no settings).
    let provider: (any ConfigProvider)?
    /// The names in `targets`, in file order.
    let targetNames: [String]

    init(path: String) throws {
        self.path = path
        func fail(_ text: String) -> ConfigError { ConfigError("config \(path): \(text)") }
        let bytes: [UInt8]
        do { bytes = try ConfigFile.read(path) } catch let error as ConfigError { throw fail("cannot read: \(error)") }

        let root: Node?
        do {
            root = try Yams.compose(yaml: String(decoding: bytes, as: UTF8.self))
        } catch {
            throw fail("not valid YAML: \(ConfigFile.describe(error))")
        }
        guard let root, !ConfigFile.isNull(root) else {
            provider = nil
            targetNames = []
            return
        }
        guard let mapping = root.mapping else { throw fail("expected 'key: value' settings at the top level") }
        var targetNames: [String] = []
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { throw fail("a key that is not text, at line \(keyNode.mark?.line ?? 0)") }
            guard ConfigLoader.keys.contains(key) else {
                throw fail("\(key): unknown key\(ConfigFile.suggestion(key, ConfigLoader.keys))")
            }
            if key == "targets" {
                targetNames = try ConfigFile.targets(value, fail)
            } else if ConfigLoader.listKeys.contains(key) {
                guard value.scalar != nil || value.sequence?.allSatisfy({ $0.scalar != nil }) == true else {
                    throw fail("\(key): expected a text or a list of texts, got a \(value.mapping != nil ? "map" : "nested list")")
                }
            } else if value.scalar == nil {
                throw fail("\(key): expected a single value, got a \(value.mapping != nil ? "map" : "list")")
            }
        }
        self.targetNames = targetNames
        // The values are read by the library's own YAML snapshot, from the bytes already read.
        do {
            let snapshot = try YAMLSnapshot(data: bytes.span.bytes, providerName: "config file",
                                            parsingOptions: .init(secretsSpecifier: .specific(["token"])))
            provider = SnapshotProvider(parsed: snapshot)
        } catch {
            throw fail("\(error)")
        }
    }

    /// `targets`: a map from name to `{host, port, telnet, charset, connect-timeout, proxy-protocol, gmcp}`.
    private static func targets(_ node: Node, _ fail: (String) -> ConfigError) throws -> [String] {
        if isNull(node) { return [] }
        guard let mapping = node.mapping else {
            throw fail("targets: expected a map from target name to {host, port, telnet, charset, connect-timeout, proxy-protocol, gmcp}")
        }
        var names: [String] = []
        for (nameNode, entry) in mapping {
            guard let name = nameNode.string else { throw fail("targets: a name that is not text") }
            guard let fields = entry.mapping else {
                throw fail("targets.\(name): expected {host, port, telnet, charset, connect-timeout, proxy-protocol, gmcp}")
            }
            for (fieldNode, value) in fields {
                let field = fieldNode.string ?? "?"
                guard ConfigLoader.targetKeys.contains(field) else {
                    throw fail("targets.\(name).\(field): unknown key\(suggestion(field, ConfigLoader.targetKeys))")
                }
                guard value.scalar != nil else { throw fail("targets.\(name).\(field): expected a single value") }
            }
            names.append(name)
        }
        return names
    }

    private static func isNull(_ node: Node) -> Bool {
        node.scalar != nil && node.tag == Tag(.null)
    }

    /// Yams' errors carry the YAML text over several lines; one line is wanted.
    static func describe(_ error: any Error) -> String {
        switch error {
        case YamlError.scanner(_, let problem, let mark, _), YamlError.parser(_, let problem, let mark, _),
             YamlError.composer(_, let problem, let mark, _):
            return "\(problem) at line \(mark.line), column \(mark.column)"
        case YamlError.duplicatedKeysInMapping(let duplicates, let context):
            return "\(duplicates.joined(separator: ", ")) given twice, at line \(context.mark.line)"
        case YamlError.reader(let problem, _, _, _):
            return problem
        default:
            return "\(error)".split(whereSeparator: \.isNewline).joined(separator: " ")
        }
    }

    /// ` (did you mean max-sessions?)` for a key one or two edits away from a known one.
    static func suggestion(_ key: String, _ known: [String]) -> String {
        let best = known.map { ($0, editDistance(key, $0)) }.min { $0.1 < $1.1 }
        guard let best, best.1 <= 2 else { return "" }
        return " (did you mean \(best.0)?)"
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let substitution = previous + (a[i - 1] == b[j - 1] ? 0 : 1)
                previous = row[j]
                row[j] = min(substitution, row[j] + 1, row[j - 1] + 1)
            }
        }
        return row[b.count]
    }

    /// The whole file, with blocking reads: it is small, and reading it is rare (start-up, SIGHUP).
    static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ConfigError(String(cString: strerror(errno))) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ConfigError(String(cString: strerror(errno)))
            }
            if n == 0 { return bytes }
            bytes += chunk[0..<n]
            guard bytes.count <= 16 << 20 else { throw ConfigError("larger than 16 MiB") }
        }
    }
}

/// A provider over a snapshot parsed from bytes in memory. The library's `FileProvider` reads its
/// file with async I/O only; loading here must be synchronous, on the loop thread.
struct SnapshotProvider<Snapshot: ConfigSnapshot>: ConfigProvider {
    let parsed: Snapshot

    var providerName: String { parsed.providerName }

    func value(forKey key: AbsoluteConfigKey, type: ConfigType) throws -> LookupResult {
        // A list key may hold one text instead of a list of one.
        if type == .stringArray, key.components.count == 1, ConfigLoader.listKeys.contains(key.components[0]),
           let single = try? parsed.value(forKey: key, type: .string),
           case .string(let text)? = single.value?.content {
            return LookupResult(encodedKey: single.encodedKey, value: ConfigValue(.stringArray([text]), isSecret: false))
        }
        return try parsed.value(forKey: key, type: type)
    }

    func fetchValue(forKey key: AbsoluteConfigKey, type: ConfigType) async throws -> LookupResult {
        try value(forKey: key, type: type)
    }

    nonisolated(nonsending) func watchValue<Return: ~Copyable>(
        forKey key: AbsoluteConfigKey, type: ConfigType,
        updatesHandler: nonisolated(nonsending) (ConfigUpdatesAsyncSequence<Result<LookupResult, any Error>, Never>) async throws -> Return
    ) async throws -> Return {
        try await watchValueFromValue(forKey: key, type: type, updatesHandler: updatesHandler)
    }

    func snapshot() -> any ConfigSnapshot { parsed }

    nonisolated(nonsending) func watchSnapshot<Return: ~Copyable>(
        updatesHandler: nonisolated(nonsending) (ConfigUpdatesAsyncSequence<any ConfigSnapshot, Never>) async throws -> Return
    ) async throws -> Return {
        try await watchSnapshotFromSnapshot(updatesHandler: updatesHandler)
    }
}
