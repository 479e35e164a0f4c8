/// A session's GMCP messages from its target (SPEC §7), as a value with no I/O: the last ones in
/// order, each numbered, for `GET /sessions/{id}/gmcp`, and the latest payload of each
/// `Package.Message`, for `GET /sessions/{id}/gmcp/state`.
///
/// **The log.** Every message appended gets the next `seq` (from 0, never reused) and keeps the
/// session offset it arrived at. The log holds the last `limits.messages` (256) messages, and
/// fewer when they would hold more than `limits.messageBytes` bytes of names and payloads: the
/// oldest go first, the newest always stays. `base` is the oldest `seq` still held, `next` the
/// one the next message gets; `since(k)` answers the messages from `k` on, or that `k` was
/// evicted (with `base`, for `409` and `X-Gmcp-Base`), or that it lies ahead of `next`.
/// `delivered` is where a read without `since` starts (the caller moves it as it answers).
///
/// **The state.** For each package name (as sent, byte for byte: `Char.Vitals` and
/// `char.vitals` are two), the payload of its latest message, kept whatever the log evicts. A
/// target can invent names without end, so this is bounded too: at most `limits.packages`
/// names, and at most `limits.stateBytes` bytes of names and payloads. Past either bound the
/// names updated least recently are forgotten first (the state keeps what the game sent last,
/// which is what a reloaded page most needs); a single message whose name and payload alone
/// are over `limits.stateBytes` is not kept in the state at all, and an older payload of its
/// name is forgotten with it (it is out of date).
///
/// **Memory.** `heldBytes` is what the log and the state hold (names and payloads; the few
/// dozen bytes of bookkeeping per message are not counted), for the caller to count against the
/// session's limits. With the default limits it is at most 1 MiB + 256 KiB plus one message
/// (64 KiB): `limits.messageBytes` may be passed by the newest message alone, and
/// `limits.stateBytes` never is.
public struct GMCPLog {
    public struct Limits: Equatable, Sendable {
        /// Messages kept in the log (SPEC §7: 256).
        public var messages: Int
        /// Bytes of names and payloads kept in the log.
        public var messageBytes: Int
        /// Package names kept in the state.
        public var packages: Int
        /// Bytes of names and payloads kept in the state.
        public var stateBytes: Int

        public init(messages: Int = 256, messageBytes: Int = 1 << 20, packages: Int = 256, stateBytes: Int = 256 << 10) {
            precondition(messages >= 1 && messageBytes >= 0 && packages >= 0 && stateBytes >= 0)
            self.messages = messages
            self.messageBytes = messageBytes
            self.packages = packages
            self.stateBytes = stateBytes
        }
    }

    /// One message in the log.
    public struct Message: Equatable, Sendable {
        public let seq: UInt64
        /// The session offset it arrived at (the text bytes before it).
        public let offset: UInt64
        /// The package name, then the payload, one after the other.
        let bytes: [UInt8]
        let packageCount: Int
        let hasPayload: Bool
        /// The payload is JSON (`JSON.isValid`): `data`, not `raw`.
        public let isJSON: Bool

        init(seq: UInt64, offset: UInt64, package: some Collection<UInt8>, payload: (some Collection<UInt8>)?) {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(package.count + (payload?.count ?? 0))
            bytes += package
            if let payload { bytes += payload }
            self.seq = seq
            self.offset = offset
            self.bytes = bytes
            packageCount = package.count
            hasPayload = payload != nil
            isJSON = payload.map { JSON.isValid($0) } ?? false
        }

        public var package: ArraySlice<UInt8> { bytes[..<packageCount] }
        /// The payload as sent; nil without one.
        public var payload: ArraySlice<UInt8>? { hasPayload ? bytes[packageCount...] : nil }
        /// What it counts in `messageBytes`.
        public var byteCount: Int { bytes.count }

        /// Appends the message as the API shows it (SPEC §7):
        /// `{"seq":…,"offset":…,"package":"…","data":…}`, without `offset` when `includeOffset`
        /// is false (SSE's `event: gmcp`). `data` is the payload's JSON, on one line
        /// (`JSON.appendMinified`), or `null` without a payload; a payload that is not JSON
        /// comes as `"raw":"…"` instead, a JSON string of its text read as UTF-8 (invalid bytes
        /// as U+FFFD). The package is a JSON string the same way.
        public func appendJSON(into out: inout [UInt8], includeOffset: Bool = true) {
            out.append(contentsOf: "{\"seq\":".utf8)
            JSON.appendDecimal(seq, into: &out)
            if includeOffset {
                out.append(contentsOf: ",\"offset\":".utf8)
                JSON.appendDecimal(offset, into: &out)
            }
            out.append(contentsOf: ",\"package\":".utf8)
            JSON.appendString(package, into: &out)
            out.append(contentsOf: hasPayload && !isJSON ? ",\"raw\":".utf8 : ",\"data\":".utf8)
            GMCPLog.appendValue(payload, isJSON: isJSON, into: &out)
            out.append(UInt8(ascii: "}"))
        }
    }

    /// The latest payload of one package name.
    public struct Latest: Equatable, Sendable {
        public let package: [UInt8]
        public let payload: [UInt8]?
        public let isJSON: Bool
        /// The `seq` of the message it came from.
        public let seq: UInt64

        public init(package: [UInt8], payload: [UInt8]?, seq: UInt64) {
            self.init(package: package, payload: payload, seq: seq, isJSON: payload.map { JSON.isValid($0) } ?? false)
        }

        init(package: [UInt8], payload: [UInt8]?, seq: UInt64, isJSON: Bool) {
            self.package = package
            self.payload = payload
            self.seq = seq
            self.isJSON = isJSON
        }

        var byteCount: Int { package.count + (payload?.count ?? 0) }
    }

    public let limits: Limits
    /// The messages `[base, next)` from `entries[start]` on; the slots before `start` are
    /// evicted (empty) and compacted away now and then.
    private var entries: [Message] = []
    private var start = 0
    /// The `seq` the next message gets.
    public private(set) var next: UInt64 = 0
    /// Where a read without `since` starts: the caller sets it to the `next` of what it
    /// answered (SPEC §7: "without since it starts after the last message read").
    public var delivered: UInt64 = 0
    /// Bytes of names and payloads in the log.
    public private(set) var messageBytes = 0
    /// The latest payload per package name, and its bytes.
    private var latestByPackage: [[UInt8]: Latest] = [:]
    public private(set) var stateBytes = 0

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// How many messages the log holds.
    public var count: Int { entries.count - start }
    /// The oldest `seq` held (`next` when the log is empty).
    public var base: UInt64 { next - UInt64(count) }
    /// What the log and the state hold, for the session's limits (see the type's comment).
    public var heldBytes: Int { messageBytes + stateBytes }
    /// How many package names the state holds.
    public var packageCount: Int { latestByPackage.count }

    // MARK: Adding

    /// Adds a message that arrived at session offset `offset` (offsets never go down from one
    /// message to the next); returns its `seq`.
    @discardableResult
    public mutating func append(offset: UInt64, package: some Collection<UInt8>,
                                payload: (some Collection<UInt8>)?) -> UInt64 {
        let message = Message(seq: next, offset: offset, package: package, payload: payload)
        next += 1
        entries.append(message)
        messageBytes += message.byteCount
        while count > limits.messages || (messageBytes > limits.messageBytes && count > 1) { evictOldest() }
        remember(Latest(package: Array(message.package), payload: message.payload.map { Array($0) }, seq: message.seq,
                        isJSON: message.isJSON))
        return message.seq
    }

    /// Adds a message from `TelnetFilter`, which arrived at session offset `offset`.
    @discardableResult
    public mutating func append(_ message: GMCPMessage, offset: UInt64) -> UInt64 {
        append(offset: offset, package: message.package, payload: message.payload)
    }

    private mutating func evictOldest() {
        messageBytes -= entries[start].byteCount
        entries[start] = Message(seq: 0, offset: 0, package: [UInt8](), payload: nil as [UInt8]?)
        start += 1
        if start == entries.count || (start >= 32 && start * 2 >= entries.count) {
            entries.removeFirst(start)
            start = 0
        }
    }

    private mutating func remember(_ entry: Latest) {
        if let old = latestByPackage.removeValue(forKey: entry.package) { stateBytes -= old.byteCount }
        guard entry.byteCount <= limits.stateBytes, limits.packages > 0 else { return }
        while !latestByPackage.isEmpty
            && (latestByPackage.count >= limits.packages || stateBytes + entry.byteCount > limits.stateBytes) {
            forgetLeastRecent()
        }
        latestByPackage[entry.package] = entry
        stateBytes += entry.byteCount
    }

    /// Forgets the package updated least recently (one pass: there are at most
    /// `limits.packages`).
    private mutating func forgetLeastRecent() {
        guard let oldest = latestByPackage.min(by: { $0.value.seq < $1.value.seq }) else { return }
        latestByPackage.removeValue(forKey: oldest.key)
        stateBytes -= oldest.value.byteCount
    }

    // MARK: Reading

    /// What a read from `seq` gets.
    public enum Lookup: Equatable {
        /// The messages from `seq` on, oldest first (empty when `seq` is `next`).
        case messages(ArraySlice<Message>)
        /// `seq` was evicted: the oldest held is `base` (SPEC §7: `409`, `X-Gmcp-Base`).
        case evicted(base: UInt64)
        /// `seq` is past `next`: no message has it yet, nor will the next.
        case ahead(next: UInt64)
    }

    public func since(_ seq: UInt64) -> Lookup {
        if seq < base { return .evicted(base: base) }
        if seq > next { return .ahead(next: next) }
        return .messages(entries[(start + Int(seq - base))...])
    }

    /// The seq of the first message held that came at or after text offset `offset` (`next`
    /// when none did): where a reader that starts at that offset without a seq starts.
    public func first(atOrAfter offset: UInt64) -> UInt64 {
        var seq = next
        while seq > base, let previous = message(seq - 1), previous.offset >= offset { seq -= 1 }
        return seq
    }

    /// The message `seq`, if the log holds it.
    public func message(_ seq: UInt64) -> Message? {
        guard seq >= base && seq < next else { return nil }
        return entries[start + Int(seq - base)]
    }

    /// The latest payload of `package`, if the state holds it.
    public func latest(_ package: some Collection<UInt8>) -> Latest? { latestByPackage[Array(package)] }

    /// The state, by package name (byte order).
    public var state: [Latest] {
        latestByPackage.values.sorted { $0.package.lexicographicallyPrecedes($1.package) }
    }

    /// Appends the state as the API shows it (SPEC §7, `/gmcp/state`): one JSON object from
    /// each package name to its latest `data` (on one line), `null` for a message without
    /// payload, and for a payload that is not JSON its text as a JSON string (as `raw` is in a
    /// message). Names in byte order. Two names that differ only in invalid UTF-8 can come out
    /// as the same key.
    public func appendStateJSON(into out: inout [UInt8]) {
        out.append(UInt8(ascii: "{"))
        for (i, entry) in state.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            JSON.appendString(entry.package, into: &out)
            out.append(UInt8(ascii: ":"))
            GMCPLog.appendValue(entry.payload?[...], isJSON: entry.isJSON, into: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    /// A payload as a JSON value: its JSON on one line, `null` without one, or its text as a
    /// JSON string when it is not JSON.
    static func appendValue(_ payload: ArraySlice<UInt8>?, isJSON: Bool, into out: inout [UInt8]) {
        guard let payload else { return out.append(contentsOf: "null".utf8) }
        if isJSON {
            JSON.appendMinified(payload, into: &out)
        } else {
            JSON.appendString(payload, into: &out)
        }
    }
}

// MARK: Hand-over (SPEC §9)

extension GMCPLog {
    /// Everything a log holds, as plain values: what an in-place upgrade carries
    /// (`SessionSnapshot.gmcp`).
    public struct State: Equatable, Sendable {
        public var next: UInt64
        public var delivered: UInt64
        /// The messages held, oldest first, their `seq`s running up to `next - 1`.
        public var messages: [Message]
        /// The state, by package name (byte order).
        public var latest: [Latest]

        public init(next: UInt64 = 0, delivered: UInt64 = 0, messages: [Message] = [], latest: [Latest] = []) {
            self.next = next
            self.delivered = delivered
            self.messages = messages
            self.latest = latest
        }
    }

    public func snapshot() -> State {
        State(next: next, delivered: delivered, messages: Array(entries[start...]), latest: state)
    }

    /// A log that goes on where the one `state` was taken from left off, within `limits` (which
    /// may be smaller than the old process's: the oldest messages and the least recently
    /// updated names go first, as they would have). `state` is taken as `SessionSnapshot`
    /// checks it: message `seq`s consecutive up to `next - 1`, names unique.
    public init(restoring state: State, limits: Limits = Limits()) {
        self.limits = limits
        next = state.next
        delivered = min(state.delivered, state.next)
        entries = state.messages.count <= state.next ? state.messages : Array(state.messages.suffix(Int(state.next)))
        messageBytes = entries.reduce(0) { $0 + $1.byteCount }
        while count > 0 && (count > limits.messages || (messageBytes > limits.messageBytes && count > 1)) { evictOldest() }
        for entry in state.latest.sorted(by: { $0.seq < $1.seq }) { remember(entry) }
    }

    /// A message as a snapshot holds it.
    public static func message(seq: UInt64, offset: UInt64, package: [UInt8], payload: [UInt8]?) -> Message {
        Message(seq: seq, offset: offset, package: package, payload: payload)
    }
}
