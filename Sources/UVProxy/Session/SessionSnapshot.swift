/// A session's state as plain values, and its binary form: what an in-place upgrade (SPEC §9,
/// `SIGUSR2`) hands from the old process to the new one beside the target connection itself,
/// which goes over the IPC pipe as a handle. No I/O here.
///
/// **The format** (docs/DESIGN.md, "Session state across an upgrade") is explicit and never
/// Swift's memory layout. Every integer is little-endian. A record is
///
///     magic (4 bytes: "UVPS" for a session, "UVPD" for the daemon header)
///     version  u16   the format version (`formatVersion`)
///     length   u32   how many bytes of fields follow
///     fields         each: tag u16, length u32, value (`length` bytes)
///
/// Values: integers are fixed-size (`u64`: 8 bytes, and so on), a flag is one byte 0 or 1,
/// text is UTF-8, bytes are as they are, and a group (the telnet state) is itself a run of
/// fields.
///
/// **Compatibility.** A newer binary must read an older one's state, so:
/// - A field's tag and meaning never change. A new field gets a new tag, and a reader that
///   does not find it (an older writer) takes the default that means "as before the field
///   existed".
/// - A reader skips fields whose tag it does not know, so an older reader can take a newer
///   writer's record as long as what it drops is safe to drop. A field an older reader must
///   not drop gets a tag with the top bit set (`SnapshotTag.mustUnderstand`): a reader refuses
///   a record with such a tag it does not know.
/// - `formatVersion` changes only for a change that breaks the rules above; a reader refuses a
///   version newer than its own and keeps reading every older one.
/// - A field a reader knows appears at most once in a record (unknown tags may repeat).
///
/// Decoding checks everything: a record that is cut short, too long, malformed or
/// inconsistent (offsets that no ring could hold) throws a `SnapshotError`; nothing traps.
public struct SessionSnapshot: Equatable, Sendable {
    public static let formatVersion: UInt16 = 1
    static let magic: [UInt8] = Array("UVPS".utf8)

    public enum Status: Equatable, Sendable {
        case open
        /// Closed (lingering) for `agoMs` milliseconds before the snapshot.
        case closed(CloseReason, agoMs: UInt64)
    }

    public var id: SessionID
    /// The target by name: the new process takes it from its own configuration.
    public var targetName: String
    /// The target as the session knew it: what the new process goes on with when its
    /// configuration no longer has the name (a reload removed it). nil from an older writer.
    public var target: TargetSettings?

    /// What of a target a session needs once it is connected.
    public struct TargetSettings: Equatable, Sendable {
        public var address: ProxyProtocol.Endpoint
        public var telnet: Bool
        public var gmcp: Bool
        public var charset: Charset

        public init(address: ProxyProtocol.Endpoint, telnet: Bool, gmcp: Bool, charset: Charset) {
            self.address = address
            self.telnet = telnet
            self.gmcp = gmcp
            self.charset = charset
        }
    }
    public var status: Status
    /// The buffered bytes `[base, end)`, `acked` and `buffer-size`.
    public var ring: ByteRing.State
    public var delivered: UInt64
    /// Highest input `seq` accepted.
    public var lastSeq: UInt64
    /// How long before the snapshot a request last touched the session, and the target
    /// connection opened.
    public var lastTouchedAgoMs: UInt64
    public var openedAgoMs: UInt64
    /// The session's pending deadline (idle check, linger) in milliseconds from the snapshot;
    /// nil when none is set.
    public var deadlineInMs: UInt64?
    /// Input bytes queued for the target so far (logs).
    public var sentBytes: UInt64
    /// Reading from the target was stopped because the buffer was full (backpressure).
    public var readingPaused: Bool
    /// The client that created it (the PROXY header's source, MNES's `IPADDRESS`).
    public var origin: ProxyProtocol.Endpoint?
    /// The key it counts under for `max-sessions-per-client`, while it does.
    public var client: String?
    /// Telnet mode: the filter's state.
    public var telnet: TelnetFilter.State?
    /// Bytes owed to the target that the old process's kernel had not taken, as they go on the
    /// wire: the new process writes them to the connection first, as they are.
    public var unwrittenOutput: [UInt8]
    /// GMCP (SPEC §7): the session's log of messages and their latest payloads; nil for a
    /// session without GMCP.
    public var gmcp: GMCPLog.State?

    public init(id: SessionID, targetName: String, status: Status, ring: ByteRing.State, delivered: UInt64 = 0,
                lastSeq: UInt64 = 0, lastTouchedAgoMs: UInt64 = 0, openedAgoMs: UInt64 = 0,
                deadlineInMs: UInt64? = nil, sentBytes: UInt64 = 0, readingPaused: Bool = false,
                origin: ProxyProtocol.Endpoint? = nil, client: String? = nil, telnet: TelnetFilter.State? = nil,
                unwrittenOutput: [UInt8] = [], gmcp: GMCPLog.State? = nil, target: TargetSettings? = nil) {
        self.id = id
        self.targetName = targetName
        self.target = target
        self.status = status
        self.ring = ring
        self.delivered = delivered
        self.lastSeq = lastSeq
        self.lastTouchedAgoMs = lastTouchedAgoMs
        self.openedAgoMs = openedAgoMs
        self.deadlineInMs = deadlineInMs
        self.sentBytes = sentBytes
        self.readingPaused = readingPaused
        self.origin = origin
        self.client = client
        self.telnet = telnet
        self.unwrittenOutput = unwrittenOutput
        self.gmcp = gmcp
    }

    /// The session record's tags (version 1). Never renumber or reuse one.
    ///
    /// Added later, none of them must-understand: `gmcp` (22) is state only the GMCP API reads,
    /// which an older binary does not have; dropped, the session goes on as before GMCP existed
    /// (its filter, having lost GMCP as well, strips the target's GMCP as it always did);
    /// `targetSettings` (23) matters only when the reader's configuration lacks the target's
    /// name, where an older binary closes the session as it always did. 21 is
    /// left unassigned: SessionSnapshotTests writes it as the field of a newer writer that an
    /// older reader skips.
    enum Tag {
        static let id: UInt16 = 1                // 16 bytes: the id's high u64, then its low u64
        static let target: UInt16 = 2            // text
        static let status: UInt16 = 3            // u8: 1 open, 2 closed
        static let closeReason: UInt16 = 4       // closed only: u8 kind (CloseReasonCode), then for `error` the libuv name as text
        static let closedAgo: UInt16 = 5         // closed only: u64 ms
        static let bufferSize: UInt16 = 6        // u64: the ring's limit
        static let base: UInt16 = 7              // u64
        static let acked: UInt16 = 8             // u64
        static let bytes: UInt16 = 9             // the buffered bytes [base, end): end = base + length
        static let delivered: UInt16 = 10        // u64
        static let lastSeq: UInt16 = 11          // u64
        static let lastTouchedAgo: UInt16 = 12   // u64 ms
        static let openedAgo: UInt16 = 13        // u64 ms
        static let deadlineIn: UInt16 = 14       // u64 ms; absent: no deadline
        static let sentBytes: UInt16 = 15        // u64
        static let readingPaused: UInt16 = 16    // flag
        static let origin: UInt16 = 17           // u16 port, then 4 (IPv4) or 16 (IPv6) address bytes in network order; absent: unknown
        static let client: UInt16 = 18           // text; absent: not counted
        static let telnet: UInt16 = 19           // group (TelnetTag); absent: not telnet mode
        static let unwrittenOutput: UInt16 = 20  // bytes
        static let gmcp: UInt16 = 22             // group (GMCPTag); absent: no GMCP (an empty log when the session has it)
        static let targetSettings: UInt16 = 23   // group (TargetTag); absent: an older writer (the name alone)
        static let known: Set<UInt16> = Set(1...20).union([22, 23])
    }

    /// The telnet group's tags (version 1). Never renumber or reuse one.
    ///
    /// 17-19 (GMCP) are written only when they differ from their default, so that a filter
    /// without GMCP is the record it always was; none is must-understand: an older binary has
    /// no GMCP, and without these its filter refuses GMCP (the 201 in `enabledHim` is left off,
    /// `TelnetFilter(restoring:)`) and strips the target's GMCP subnegotiations, a message under
    /// way included, as it always did.
    enum TelnetTag {
        static let phase: UInt16 = 1             // u8: 0 data, 1 after IAC, 2 after WILL/WONT/DO/DONT, 3 after SB, 4 in SB data, 5 IAC in SB data
        static let afterCR: UInt16 = 2           // flag
        static let verb: UInt16 = 3              // u8
        static let sbOption: UInt16 = 4          // u8
        static let sbLength: UInt16 = 5          // u8 (saturating)
        static let sbFirst: UInt16 = 6           // u8
        static let sbKeep: UInt16 = 7            // flag
        static let sbData: UInt16 = 8            // bytes
        static let enabledUs: UInt16 = 9         // option codes we said WILL to, one byte each
        static let enabledHim: UInt16 = 10       // option codes we said DO to, one byte each
        static let ttypeAnswers: UInt16 = 11     // u8
        static let replies: UInt16 = 12          // bytes
        static let clientAddress: UInt16 = 13    // bytes (text as MNES sends it)
        static let utf8: UInt16 = 14             // flag
        static let width: UInt16 = 15            // u16
        static let height: UInt16 = 16           // u16
        static let gmcp: UInt16 = 17             // flag; absent: false (GMCP refused)
        static let gmcpVersion: UInt16 = 18      // text; absent: ""
        static let gmcpMessages: UInt16 = 19     // messages not yet taken, each: u64 position, u32 length, its data; absent: none
        static let known: Set<UInt16> = Set(1...19)
    }

    /// The target group's tags (`TargetSettings`). Never renumber or reuse one.
    enum TargetTag {
        static let address: UInt16 = 1           // u16 port, then 4 (IPv4) or 16 (IPv6) address bytes in network order
        static let telnet: UInt16 = 2            // flag
        static let gmcp: UInt16 = 3              // flag
        static let charset: UInt16 = 4           // text: the IANA name
        static let known: Set<UInt16> = Set(1...4)
    }

    /// The GMCP group's tags (`GMCPLog.State`). Never renumber or reuse one.
    enum GMCPTag {
        static let next: UInt16 = 1              // u64: the seq the next message gets
        static let delivered: UInt16 = 2         // u64
        static let messages: UInt16 = 3          // the log, oldest first (seqs up to next - 1), each:
                                                 //   u64 offset, u8 has payload, u32 package length, u32 payload length, package, payload
        static let latest: UInt16 = 4            // the state, each: u64 seq, u8 has payload, u32 package length,
                                                 //   u32 payload length, package, payload
        static let known: Set<UInt16> = Set(1...4)
    }

    /// `CloseReason` on the wire.
    enum CloseReasonCode {
        static let eof: UInt8 = 1, reset: UInt8 = 2, error: UInt8 = 3, idleTimeout: UInt8 = 4
        static let deleted: UInt8 = 5, shutdown: UInt8 = 6
    }

    // MARK: Encoding

    /// Appends this snapshot's record to `out`.
    public func encode(into out: inout [UInt8]) {
        SnapshotWriter.record(magic: SessionSnapshot.magic, version: SessionSnapshot.formatVersion, into: &out) { w in
            w.field(Tag.id) { $0.u64(id.hi); $0.u64(id.lo) }
            w.text(Tag.target, targetName)
            switch status {
            case .open:
                w.u8(Tag.status, 1)
            case .closed(let reason, let ago):
                w.u8(Tag.status, 2)
                w.field(Tag.closeReason) { v in
                    switch reason {
                    case .eof: v.u8(CloseReasonCode.eof)
                    case .reset: v.u8(CloseReasonCode.reset)
                    case .error(let name): v.u8(CloseReasonCode.error); v.bytes(Array(name.utf8))
                    case .idleTimeout: v.u8(CloseReasonCode.idleTimeout)
                    case .deleted: v.u8(CloseReasonCode.deleted)
                    case .shutdown: v.u8(CloseReasonCode.shutdown)
                    }
                }
                w.u64(Tag.closedAgo, ago)
            }
            w.u64(Tag.bufferSize, UInt64(ring.limit))
            w.u64(Tag.base, ring.base)
            w.u64(Tag.acked, ring.acked)
            w.bytes(Tag.bytes, ring.bytes)
            w.u64(Tag.delivered, delivered)
            w.u64(Tag.lastSeq, lastSeq)
            w.u64(Tag.lastTouchedAgo, lastTouchedAgoMs)
            w.u64(Tag.openedAgo, openedAgoMs)
            if let deadlineInMs { w.u64(Tag.deadlineIn, deadlineInMs) }
            w.u64(Tag.sentBytes, sentBytes)
            w.flag(Tag.readingPaused, readingPaused)
            if let origin { w.field(Tag.origin) { $0.u16(origin.port); $0.bytes(origin.address) } }
            if let client { w.text(Tag.client, client) }
            if let telnet { w.field(Tag.telnet) { SessionSnapshot.encodeTelnet(telnet, &$0) } }
            w.bytes(Tag.unwrittenOutput, unwrittenOutput)
            if let gmcp { w.field(Tag.gmcp) { SessionSnapshot.encodeGMCP(gmcp, &$0) } }
            if let target {
                w.field(Tag.targetSettings) { v in
                    v.field(TargetTag.address) { $0.u16(target.address.port); $0.bytes(target.address.address) }
                    v.flag(TargetTag.telnet, target.telnet)
                    v.flag(TargetTag.gmcp, target.gmcp)
                    v.text(TargetTag.charset, target.charset.description)
                }
            }
        }
    }

    private static func encodeTelnet(_ t: TelnetFilter.State, _ w: inout SnapshotWriter) {
        let phase: UInt8
        switch t.phase {
        case .data: phase = 0
        case .iac: phase = 1
        case .option: phase = 2
        case .sbOption: phase = 3
        case .sbData: phase = 4
        case .sbIAC: phase = 5
        }
        w.u8(TelnetTag.phase, phase)
        w.flag(TelnetTag.afterCR, t.afterCR)
        w.u8(TelnetTag.verb, t.verb)
        w.u8(TelnetTag.sbOption, t.subnegotiationOption)
        w.u8(TelnetTag.sbLength, t.subnegotiationLength)
        w.u8(TelnetTag.sbFirst, t.subnegotiationFirst)
        w.flag(TelnetTag.sbKeep, t.keepsSubnegotiation)
        w.bytes(TelnetTag.sbData, t.subnegotiationData)
        w.bytes(TelnetTag.enabledUs, t.enabledUs)
        w.bytes(TelnetTag.enabledHim, t.enabledHim)
        w.u8(TelnetTag.ttypeAnswers, t.terminalTypeAnswers)
        w.bytes(TelnetTag.replies, t.replies)
        w.bytes(TelnetTag.clientAddress, t.clientAddress)
        w.flag(TelnetTag.utf8, t.utf8)
        w.u16(TelnetTag.width, t.width)
        w.u16(TelnetTag.height, t.height)
        if t.gmcp { w.flag(TelnetTag.gmcp, true) }
        if !t.gmcpVersion.isEmpty { w.text(TelnetTag.gmcpVersion, t.gmcpVersion) }
        if !t.gmcpMessages.isEmpty {
            w.field(TelnetTag.gmcpMessages) { v in
                for m in t.gmcpMessages {
                    v.u64(UInt64(m.position))
                    v.u32(UInt32(m.data.count))
                    v.bytes(m.data)
                }
            }
        }
    }

    private static func encodeGMCP(_ g: GMCPLog.State, _ w: inout SnapshotWriter) {
        w.u64(GMCPTag.next, g.next)
        w.u64(GMCPTag.delivered, g.delivered)
        w.field(GMCPTag.messages) { v in
            for m in g.messages { encodeGMCPEntry(m.offset, Array(m.package), m.payload.map(Array.init), &v) }
        }
        w.field(GMCPTag.latest) { v in
            for l in g.latest { encodeGMCPEntry(l.seq, l.package, l.payload, &v) }
        }
    }

    private static func encodeGMCPEntry(_ number: UInt64, _ package: [UInt8], _ payload: [UInt8]?,
                                        _ v: inout SnapshotWriter) {
        v.u64(number)
        v.u8(payload == nil ? 0 : 1)
        v.u32(UInt32(package.count))
        v.u32(UInt32(payload?.count ?? 0))
        v.bytes(package)
        if let payload { v.bytes(payload) }
    }

    // MARK: Decoding

    /// Reads one record (exactly: no bytes before or after it).
    public static func decode(_ bytes: some Collection<UInt8>) throws(SnapshotError) -> SessionSnapshot {
        let record = Array(bytes)
        let f = try SnapshotReader.record(record, magic: magic, version: formatVersion, known: Tag.known)
        guard let idBytes = f.value(Tag.id) else { throw .missingField(Tag.id) }
        guard idBytes.count == 16 else { throw .malformed(Tag.id) }
        let id = SessionID(hi: SnapshotReader.u64(record, at: idBytes.lowerBound),
                           lo: SnapshotReader.u64(record, at: idBytes.lowerBound + 8))
        let status: Status
        switch try f.requiredU8(Tag.status) {
        case 1:
            guard f.value(Tag.closeReason) == nil, f.value(Tag.closedAgo) == nil else {
                throw .inconsistent("an open session with a close reason")
            }
            status = .open
        case 2:
            guard let r = f.value(Tag.closeReason) else { throw .missingField(Tag.closeReason) }
            guard let kind = r.first.map({ record[$0] }) else { throw .malformed(Tag.closeReason) }
            let rest = record[(r.lowerBound + 1)..<r.upperBound]
            let reason: CloseReason
            switch kind {
            case CloseReasonCode.eof: reason = .eof
            case CloseReasonCode.reset: reason = .reset
            case CloseReasonCode.error:
                guard let name = String(validating: rest, as: UTF8.self) else { throw .malformed(Tag.closeReason) }
                reason = .error(name)
            case CloseReasonCode.idleTimeout: reason = .idleTimeout
            case CloseReasonCode.deleted: reason = .deleted
            case CloseReasonCode.shutdown: reason = .shutdown
            default: throw .malformed(Tag.closeReason)
            }
            guard kind == CloseReasonCode.error || rest.isEmpty else { throw .malformed(Tag.closeReason) }
            status = .closed(reason, agoMs: try f.requiredU64(Tag.closedAgo))
        default:
            throw .malformed(Tag.status)
        }
        let limit = try f.requiredU64(Tag.bufferSize)
        guard limit > 0, limit <= UInt64(Int.max) else { throw .malformed(Tag.bufferSize) }
        let ring = ByteRing.State(base: try f.requiredU64(Tag.base), acked: try f.requiredU64(Tag.acked),
                                  limit: Int(limit), bytes: try f.requiredBytes(Tag.bytes))
        guard ring.isConsistent else { throw .inconsistent("ring offsets") }
        let delivered = try f.requiredU64(Tag.delivered)
        guard delivered <= ring.end else { throw .inconsistent("delivered beyond end") }
        var origin: ProxyProtocol.Endpoint?
        if let o = f.value(Tag.origin) {
            guard o.count == 2 + 4 || o.count == 2 + 16 else { throw .malformed(Tag.origin) }
            origin = ProxyProtocol.Endpoint(address: Array(record[(o.lowerBound + 2)..<o.upperBound]),
                                            port: SnapshotReader.u16(record, at: o.lowerBound))
        }
        var telnet: TelnetFilter.State?
        if let t = f.value(Tag.telnet) {
            telnet = try decodeTelnet(try SnapshotReader.fields(record, t, known: TelnetTag.known))
        }
        var target: TargetSettings?
        if let t = f.value(Tag.targetSettings) {
            let g = try SnapshotReader.fields(record, t, known: TargetTag.known)
            guard let a = g.value(TargetTag.address) else { throw .missingField(TargetTag.address) }
            guard a.count == 2 + 4 || a.count == 2 + 16 else { throw .malformed(TargetTag.address) }
            guard let charset = Charset(name: try g.requiredText(TargetTag.charset)) else { throw .malformed(TargetTag.charset) }
            target = TargetSettings(
                address: ProxyProtocol.Endpoint(address: Array(record[(a.lowerBound + 2)..<a.upperBound]),
                                                port: SnapshotReader.u16(record, at: a.lowerBound)),
                telnet: try g.requiredFlag(TargetTag.telnet), gmcp: try g.requiredFlag(TargetTag.gmcp), charset: charset)
        }
        var gmcp: GMCPLog.State?
        if let g = f.value(Tag.gmcp) {
            gmcp = try decodeGMCP(try SnapshotReader.fields(record, g, known: GMCPTag.known), end: ring.end)
        }
        return SessionSnapshot(
            id: id, targetName: try f.requiredText(Tag.target), status: status, ring: ring, delivered: delivered,
            lastSeq: try f.requiredU64(Tag.lastSeq), lastTouchedAgoMs: try f.requiredU64(Tag.lastTouchedAgo),
            openedAgoMs: try f.requiredU64(Tag.openedAgo), deadlineInMs: try f.u64(Tag.deadlineIn),
            sentBytes: try f.requiredU64(Tag.sentBytes), readingPaused: try f.requiredFlag(Tag.readingPaused),
            origin: origin, client: try f.text(Tag.client), telnet: telnet,
            unwrittenOutput: try f.requiredBytes(Tag.unwrittenOutput), gmcp: gmcp, target: target)
    }

    private static func decodeTelnet(_ f: SnapshotFields) throws(SnapshotError) -> TelnetFilter.State {
        let phase: TelnetFilter.Phase
        switch try f.requiredU8(TelnetTag.phase) {
        case 0: phase = .data
        case 1: phase = .iac
        case 2: phase = .option
        case 3: phase = .sbOption
        case 4: phase = .sbData
        case 5: phase = .sbIAC
        default: throw .malformed(TelnetTag.phase)
        }
        return TelnetFilter.State(
            phase: phase, afterCR: try f.requiredFlag(TelnetTag.afterCR), verb: try f.requiredU8(TelnetTag.verb),
            subnegotiationOption: try f.requiredU8(TelnetTag.sbOption),
            subnegotiationLength: try f.requiredU8(TelnetTag.sbLength),
            subnegotiationFirst: try f.requiredU8(TelnetTag.sbFirst),
            keepsSubnegotiation: try f.requiredFlag(TelnetTag.sbKeep),
            subnegotiationData: try f.requiredBytes(TelnetTag.sbData),
            enabledUs: try f.requiredBytes(TelnetTag.enabledUs), enabledHim: try f.requiredBytes(TelnetTag.enabledHim),
            terminalTypeAnswers: try f.requiredU8(TelnetTag.ttypeAnswers),
            replies: try f.requiredBytes(TelnetTag.replies), clientAddress: try f.requiredBytes(TelnetTag.clientAddress),
            utf8: try f.requiredFlag(TelnetTag.utf8), width: try f.requiredU16(TelnetTag.width),
            height: try f.requiredU16(TelnetTag.height), gmcp: try f.flag(TelnetTag.gmcp) ?? false,
            gmcpVersion: try f.text(TelnetTag.gmcpVersion) ?? "", gmcpMessages: try decodeFilterMessages(f))
    }

    /// The telnet group's messages not yet taken (absent: none).
    private static func decodeFilterMessages(_ f: SnapshotFields) throws(SnapshotError) -> [GMCPMessage] {
        guard let r = f.value(TelnetTag.gmcpMessages) else { return [] }
        var messages: [GMCPMessage] = []
        var i = r.lowerBound
        while i < r.upperBound {
            guard r.upperBound - i >= 12 else { throw .malformed(TelnetTag.gmcpMessages) }
            let position = SnapshotReader.u64(f.bytes, at: i)
            let length = Int(SnapshotReader.u32(f.bytes, at: i + 8))
            i += 12
            guard position <= UInt64(Int.max), r.upperBound - i >= length,
                  let m = GMCPMessage(position: Int(position), data: Array(f.bytes[i..<(i + length)])) else {
                throw .malformed(TelnetTag.gmcpMessages)
            }
            messages.append(m)
            i += length
        }
        return messages
    }

    /// The GMCP group, checked: seqs that fit `next`, offsets that never go down nor past the
    /// ring's `end`, each name once in the state.
    private static func decodeGMCP(_ f: SnapshotFields, end: UInt64) throws(SnapshotError) -> GMCPLog.State {
        let next = try f.requiredU64(GMCPTag.next)
        let delivered = try f.requiredU64(GMCPTag.delivered)
        guard delivered <= next else { throw .inconsistent("gmcp delivered beyond next") }
        let logEntries = try gmcpEntries(f, GMCPTag.messages)
        guard UInt64(logEntries.count) <= next else { throw .inconsistent("more gmcp messages than seqs") }
        var messages: [GMCPLog.Message] = []
        messages.reserveCapacity(logEntries.count)
        var seq = next - UInt64(logEntries.count)
        var lastOffset: UInt64 = 0
        for e in logEntries {
            guard e.number >= lastOffset, e.number <= end else { throw .inconsistent("gmcp offsets") }
            lastOffset = e.number
            messages.append(GMCPLog.message(seq: seq, offset: e.number, package: e.package, payload: e.payload))
            seq += 1
        }
        var latest: [GMCPLog.Latest] = []
        var names = Set<[UInt8]>()
        for e in try gmcpEntries(f, GMCPTag.latest) {
            guard e.number < next, names.insert(e.package).inserted else { throw .inconsistent("gmcp state") }
            latest.append(GMCPLog.Latest(package: e.package, payload: e.payload, seq: e.number))
        }
        return GMCPLog.State(next: next, delivered: delivered, messages: messages, latest: latest)
    }

    private static func gmcpEntries(_ f: SnapshotFields, _ tag: UInt16) throws(SnapshotError)
        -> [(number: UInt64, package: [UInt8], payload: [UInt8]?)] {
        guard let r = f.value(tag) else { throw .missingField(tag) }
        var entries: [(number: UInt64, package: [UInt8], payload: [UInt8]?)] = []
        var i = r.lowerBound
        while i < r.upperBound {
            guard r.upperBound - i >= 17 else { throw .malformed(tag) }
            let number = SnapshotReader.u64(f.bytes, at: i)
            let hasPayload = f.bytes[i + 8]
            let packageLength = Int(SnapshotReader.u32(f.bytes, at: i + 9))
            let payloadLength = Int(SnapshotReader.u32(f.bytes, at: i + 13))
            i += 17
            guard hasPayload <= 1, hasPayload == 1 || payloadLength == 0,
                  r.upperBound - i >= packageLength, r.upperBound - i - packageLength >= payloadLength else {
                throw .malformed(tag)
            }
            let package = Array(f.bytes[i..<(i + packageLength)])
            i += packageLength
            let payload = hasPayload == 1 ? Array(f.bytes[i..<(i + payloadLength)]) : nil
            i += payloadLength
            entries.append((number, package, payload))
        }
        return entries
    }
}

/// The header an old process sends before its sessions' records (SPEC §9): who wrote them and
/// how many follow. The same record shape as a session's, with the magic "UVPD".
public struct DaemonSnapshot: Equatable, Sendable {
    public static let formatVersion: UInt16 = 1
    static let magic: [UInt8] = Array("UVPD".utf8)

    /// The old process's `--node-id` (empty without one): the new process must have the same,
    /// or the ids it is handed are not its own.
    public var nodeID: String
    /// How many session records follow.
    public var sessionCount: UInt64
    /// The old process's loop time when it took the snapshot (logs: every age and remaining
    /// time in the session records is relative to it).
    public var loopTimeMs: UInt64
    /// The old binary's version (logs).
    public var writerVersion: String

    public init(nodeID: String, sessionCount: UInt64, loopTimeMs: UInt64, writerVersion: String) {
        self.nodeID = nodeID
        self.sessionCount = sessionCount
        self.loopTimeMs = loopTimeMs
        self.writerVersion = writerVersion
    }

    enum Tag {
        static let nodeID: UInt16 = 1         // text
        static let sessionCount: UInt16 = 2   // u64
        static let loopTime: UInt16 = 3       // u64 ms
        static let writerVersion: UInt16 = 4  // text
        static let known: Set<UInt16> = Set(1...4)
    }

    public func encode(into out: inout [UInt8]) {
        SnapshotWriter.record(magic: DaemonSnapshot.magic, version: DaemonSnapshot.formatVersion, into: &out) { w in
            w.text(Tag.nodeID, nodeID)
            w.u64(Tag.sessionCount, sessionCount)
            w.u64(Tag.loopTime, loopTimeMs)
            w.text(Tag.writerVersion, writerVersion)
        }
    }

    public static func decode(_ bytes: some Collection<UInt8>) throws(SnapshotError) -> DaemonSnapshot {
        let record = Array(bytes)
        let f = try SnapshotReader.record(record, magic: magic, version: formatVersion, known: Tag.known)
        return DaemonSnapshot(nodeID: try f.requiredText(Tag.nodeID), sessionCount: try f.requiredU64(Tag.sessionCount),
                              loopTimeMs: try f.requiredU64(Tag.loopTime),
                              writerVersion: try f.requiredText(Tag.writerVersion))
    }
}

/// What the new process tells the old one during an upgrade (SPEC §9), in the same record
/// shape with the magic "UVPR": first `ready` (its configuration is read, its targets resolved:
/// the old process may hand over now), then `taken` once it has every session and serves.
public struct HandOverReply: Equatable, Sendable {
    public static let formatVersion: UInt16 = 1
    static let magic: [UInt8] = Array("UVPR".utf8)

    public enum Kind: UInt8, Sendable { case ready = 1, taken = 2 }

    public var kind: Kind
    /// The new process's `--node-id` (empty without one): the old one hands over only to the same.
    public var nodeID: String
    /// `taken`: how many sessions the new process serves now.
    public var sessionCount: UInt64
    /// The new binary's version (logs).
    public var version: String

    public init(kind: Kind, nodeID: String, sessionCount: UInt64 = 0, version: String) {
        self.kind = kind
        self.nodeID = nodeID
        self.sessionCount = sessionCount
        self.version = version
    }

    enum Tag {
        static let kind: UInt16 = 1           // u8
        static let nodeID: UInt16 = 2         // text
        static let sessionCount: UInt16 = 3   // u64
        static let version: UInt16 = 4        // text
        static let known: Set<UInt16> = Set(1...4)
    }

    public func encode(into out: inout [UInt8]) {
        SnapshotWriter.record(magic: HandOverReply.magic, version: HandOverReply.formatVersion, into: &out) { w in
            w.u8(Tag.kind, kind.rawValue)
            w.text(Tag.nodeID, nodeID)
            w.u64(Tag.sessionCount, sessionCount)
            w.text(Tag.version, version)
        }
    }

    public static func decode(_ bytes: some Collection<UInt8>) throws(SnapshotError) -> HandOverReply {
        let record = Array(bytes)
        let f = try SnapshotReader.record(record, magic: magic, version: formatVersion, known: Tag.known)
        guard let kind = Kind(rawValue: try f.requiredU8(Tag.kind)) else { throw .malformed(Tag.kind) }
        return HandOverReply(kind: kind, nodeID: try f.requiredText(Tag.nodeID),
                             sessionCount: try f.requiredU64(Tag.sessionCount), version: try f.requiredText(Tag.version))
    }
}

/// Why a snapshot record was refused.
public enum SnapshotError: Error, Equatable, Sendable {
    /// The bytes end before the record (or a field) does.
    case truncated
    /// Bytes after the record's end.
    case trailingBytes
    /// Not a record of the expected kind.
    case badMagic
    /// Written by a format version this reader does not know.
    case unsupportedVersion(UInt16)
    /// A field this reader needs is missing.
    case missingField(UInt16)
    /// A field has the wrong size or a value out of its range, or appears twice.
    case malformed(UInt16)
    /// A field marked must-understand (`SnapshotTag.mustUnderstand`) that this reader does not know.
    case unknownRequiredField(UInt16)
    /// The fields contradict each other (offsets no ring could hold).
    case inconsistent(String)
    /// A record longer than the reader accepts (`SnapshotStreamReader`).
    case tooLong(UInt64)
}

public enum SnapshotTag {
    /// The top bit of a tag: a reader that does not know the tag must refuse the record
    /// rather than skip the field.
    public static let mustUnderstand: UInt16 = 0x8000
}

// MARK: Records on a byte stream

/// Cuts the records out of a byte stream (the upgrade pipe), however its reads are split. Each
/// record carries its length in its header, so records need no other framing: write them one
/// after the other.
public struct SnapshotStreamReader {
    private var buffer: [UInt8] = []
    private var start = 0
    /// The largest record accepted (fields included): a garbled length cannot make the reader
    /// wait for, or hold, more.
    public let maxRecordBytes: Int

    public init(maxRecordBytes: Int) {
        self.maxRecordBytes = maxRecordBytes
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// Bytes received that are not part of a whole record yet.
    public var pendingCount: Int { buffer.count - start }

    /// The next whole record (magic and header included), or nil until more bytes arrive.
    /// Throws on a header that is not a record's (unknown magic, too long).
    public mutating func next() throws(SnapshotError) -> [UInt8]? {
        let available = buffer.count - start
        guard available >= SnapshotReader.headerSize else { return nil }
        let magic = Array(buffer[start..<start + 4])
        guard magic == SessionSnapshot.magic || magic == DaemonSnapshot.magic || magic == HandOverReply.magic else {
            throw .badMagic
        }
        let length = UInt64(SnapshotReader.u32(buffer, at: start + 6))
        let total = UInt64(SnapshotReader.headerSize) + length
        guard total <= UInt64(maxRecordBytes) else { throw .tooLong(total) }
        guard UInt64(available) >= total else { return nil }
        let record = Array(buffer[start..<start + Int(total)])
        start += Int(total)
        if start > 65536 && start * 2 > buffer.count {  // keep the leftover small
            buffer.removeFirst(start)
            start = 0
        }
        return record
    }
}

// MARK: Writing and reading fields

struct SnapshotWriter {
    var out: [UInt8] = []

    /// A whole record: magic, version, length, then what `body` writes.
    static func record(magic: [UInt8], version: UInt16, into out: inout [UInt8], _ body: (inout SnapshotWriter) -> Void) {
        var w = SnapshotWriter()
        body(&w)
        out.append(contentsOf: magic)
        appendLE(UInt64(version), size: 2, to: &out)
        appendLE(UInt64(w.out.count), size: 4, to: &out)
        out.append(contentsOf: w.out)
    }

    static func appendLE(_ value: UInt64, size: Int, to out: inout [UInt8]) {
        for i in 0..<size { out.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))) }
    }

    /// A field whose value `body` writes (raw values, or fields of a group).
    mutating func field(_ tag: UInt16, _ body: (inout SnapshotWriter) -> Void) {
        var value = SnapshotWriter()
        body(&value)
        SnapshotWriter.appendLE(UInt64(tag), size: 2, to: &out)
        precondition(value.out.count <= Int(UInt32.max), "a snapshot field over 4 GiB")
        SnapshotWriter.appendLE(UInt64(value.out.count), size: 4, to: &out)
        out.append(contentsOf: value.out)
    }

    // Raw values inside a field.
    mutating func u8(_ v: UInt8) { out.append(v) }
    mutating func u16(_ v: UInt16) { SnapshotWriter.appendLE(UInt64(v), size: 2, to: &out) }
    mutating func u32(_ v: UInt32) { SnapshotWriter.appendLE(UInt64(v), size: 4, to: &out) }
    mutating func u64(_ v: UInt64) { SnapshotWriter.appendLE(v, size: 8, to: &out) }
    mutating func bytes(_ v: [UInt8]) { out.append(contentsOf: v) }

    // Whole fields of one value.
    mutating func u8(_ tag: UInt16, _ v: UInt8) { field(tag) { $0.u8(v) } }
    mutating func u16(_ tag: UInt16, _ v: UInt16) { field(tag) { $0.u16(v) } }
    mutating func u64(_ tag: UInt16, _ v: UInt64) { field(tag) { $0.u64(v) } }
    mutating func flag(_ tag: UInt16, _ v: Bool) { field(tag) { $0.u8(v ? 1 : 0) } }
    mutating func bytes(_ tag: UInt16, _ v: [UInt8]) { field(tag) { $0.bytes(v) } }
    mutating func text(_ tag: UInt16, _ v: String) { field(tag) { $0.bytes(Array(v.utf8)) } }
}

enum SnapshotReader {
    /// Magic, version, length.
    static let headerSize = 4 + 2 + 4

    /// Checks a record's header and returns its fields.
    static func record(_ record: [UInt8], magic: [UInt8], version: UInt16,
                       known: Set<UInt16>) throws(SnapshotError) -> SnapshotFields {
        guard record.count >= headerSize else {
            // A prefix of the right magic is a cut record; anything else is not one at all.
            throw record.prefix(4).elementsEqual(magic.prefix(record.count)) ? .truncated : .badMagic
        }
        guard record[0..<4].elementsEqual(magic) else { throw .badMagic }
        let v = u16(record, at: 4)
        guard v >= 1 && v <= version else { throw .unsupportedVersion(v) }
        let length = Int(u32(record, at: 6))
        let available = record.count - headerSize
        guard available >= length else { throw .truncated }
        guard available == length else { throw .trailingBytes }
        return try fields(record, headerSize..<record.count, known: known)
    }

    /// The fields in `range` of `bytes`, by tag.
    static func fields(_ bytes: [UInt8], _ range: Range<Int>, known: Set<UInt16>) throws(SnapshotError) -> SnapshotFields {
        var found: [UInt16: Range<Int>] = [:]
        var i = range.lowerBound
        while i < range.upperBound {
            guard range.upperBound - i >= 6 else { throw .truncated }
            let tag = u16(bytes, at: i)
            let length = Int(u32(bytes, at: i + 2))
            i += 6
            guard range.upperBound - i >= length else { throw .truncated }
            if known.contains(tag) {
                guard found[tag] == nil else { throw .malformed(tag) }
                found[tag] = i..<(i + length)
            } else if tag & SnapshotTag.mustUnderstand != 0 {
                throw .unknownRequiredField(tag)
            }  // else: a newer writer's field, skipped
            i += length
        }
        return SnapshotFields(bytes: bytes, found: found)
    }

    static func u16(_ b: [UInt8], at i: Int) -> UInt16 { UInt16(b[i]) | UInt16(b[i + 1]) << 8 }
    static func u32(_ b: [UInt8], at i: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(b[i + $1]) << (8 * UInt32($1)) }
    }
    static func u64(_ b: [UInt8], at i: Int) -> UInt64 {
        (0..<8).reduce(0) { $0 | UInt64(b[i + $1]) << (8 * UInt64($1)) }
    }
}

/// The known fields of one record or group, with typed access that checks sizes.
struct SnapshotFields {
    let bytes: [UInt8]
    let found: [UInt16: Range<Int>]

    func value(_ tag: UInt16) -> Range<Int>? { found[tag] }

    private func fixed(_ tag: UInt16, size: Int) throws(SnapshotError) -> Int? {
        guard let r = found[tag] else { return nil }
        guard r.count == size else { throw .malformed(tag) }
        return r.lowerBound
    }

    func u64(_ tag: UInt16) throws(SnapshotError) -> UInt64? {
        try fixed(tag, size: 8).map { SnapshotReader.u64(bytes, at: $0) }
    }

    func text(_ tag: UInt16) throws(SnapshotError) -> String? {
        guard let r = found[tag] else { return nil }
        guard let s = String(validating: bytes[r], as: UTF8.self) else { throw .malformed(tag) }
        return s
    }

    func requiredU8(_ tag: UInt16) throws(SnapshotError) -> UInt8 {
        guard let i = try fixed(tag, size: 1) else { throw .missingField(tag) }
        return bytes[i]
    }

    func requiredU16(_ tag: UInt16) throws(SnapshotError) -> UInt16 {
        guard let i = try fixed(tag, size: 2) else { throw .missingField(tag) }
        return SnapshotReader.u16(bytes, at: i)
    }

    func requiredU64(_ tag: UInt16) throws(SnapshotError) -> UInt64 {
        guard let v = try u64(tag) else { throw .missingField(tag) }
        return v
    }

    func requiredFlag(_ tag: UInt16) throws(SnapshotError) -> Bool {
        switch try requiredU8(tag) {
        case 0: return false
        case 1: return true
        default: throw .malformed(tag)
        }
    }

    func flag(_ tag: UInt16) throws(SnapshotError) -> Bool? {
        guard found[tag] != nil else { return nil }
        return try requiredFlag(tag)
    }

    func requiredBytes(_ tag: UInt16) throws(SnapshotError) -> [UInt8] {
        guard let r = found[tag] else { throw .missingField(tag) }
        return Array(bytes[r])
    }

    func requiredText(_ tag: UInt16) throws(SnapshotError) -> String {
        guard let s = try text(tag) else { throw .missingField(tag) }
        return s
    }
}
