/// The bytes a target sent, by absolute offset (SPEC §1).
///
/// Holds offsets `[base, end)`. `[acked, end)` is unacknowledged and never dropped: once it
/// reaches `limit` bytes, `room` is 0 and the session stops reading from its target.
/// `[base, acked)` is history, kept for replay and evicted oldest first when new bytes need
/// the room. Storage is a power-of-two circle that starts empty and grows on demand, so an
/// idle session that was sent nothing holds no buffer at all.
public struct ByteRing {
    public private(set) var base: UInt64 = 0
    public private(set) var acked: UInt64 = 0
    public private(set) var end: UInt64 = 0
    /// `buffer-size`: the most bytes held, history included.
    public let limit: Int
    private var storage: [UInt8] = []
    static let minimumCapacity = 256

    public init(limit: Int) {
        precondition(limit > 0)
        self.limit = limit
    }

    public var count: Int { Int(end - base) }
    public var unacknowledged: Int { Int(end - acked) }
    public var historyCount: Int { Int(acked - base) }
    /// How many more bytes may arrive before the target must be paused.
    public var room: Int { limit - unacknowledged }
    /// Bytes of memory held.
    public var capacity: Int { storage.count }

    /// Appends bytes, evicting history if the total would pass `limit`.
    /// At most `room` bytes may be appended.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        let n = bytes.count
        guard n > 0 else { return }
        precondition(n <= room, "append beyond room: backpressure was not applied")
        let overflow = count + n - limit
        if overflow > 0 { base += UInt64(overflow) }  // history only: n <= room guarantees it
        if count + n > storage.count { grow(to: count + n) }
        let position = Int(end & UInt64(storage.count - 1))
        storage.withUnsafeMutableBytes { ByteRing.copy(bytes, into: $0, at: position) }
        end += UInt64(n)
    }

    /// `acked = max(acked, offset)`; `offset` must lie in `[base, end]`.
    public mutating func acknowledge(upTo offset: UInt64) {
        precondition(offset <= end)
        if offset > acked { acked = offset }
    }

    /// Whether `offset` can be read: `.ok`, `.evicted` (below base) or `.beyondEnd`.
    public func check(_ offset: UInt64) -> OffsetCheck {
        if offset < base { return .evicted }
        if offset > end { return .beyondEnd }
        return .ok
    }

    public enum OffsetCheck { case ok, evicted, beyondEnd }

    /// Calls `body` with the bytes `[from, min(end, from + max))` as at most two pieces.
    public func withBytes<R>(from: UInt64, max: Int,
                             _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> R) -> R {
        precondition(from >= base && from <= end)
        let n = Int(min(end - from, UInt64(max)))
        let empty = UnsafeRawBufferPointer(start: nil, count: 0)
        guard n > 0 else { return body(empty, empty) }
        let mask = storage.count - 1
        let start = Int(from & UInt64(mask))
        let first = min(n, storage.count - start)
        return storage.withUnsafeBytes { all in
            let a = UnsafeRawBufferPointer(rebasing: all[start..<start + first])
            let b = first < n ? UnsafeRawBufferPointer(rebasing: all[0..<n - first]) : empty
            return body(a, b)
        }
    }

    /// The byte at `offset`, which must be buffered.
    public func byte(at offset: UInt64) -> UInt8 {
        precondition(offset >= base && offset < end)
        return storage[Int(offset & UInt64(storage.count - 1))]
    }

    /// How many bytes at the end of `[from, to)` are the start of a UTF-8 character that has
    /// not arrived whole yet (0 to 3). Text is decoded up to there; the rest waits in the ring.
    public func incompleteUTF8Tail(from: UInt64, to: UInt64) -> Int {
        var k: UInt64 = 1
        while k <= 3, to >= from + k {
            let b = byte(at: to - k)
            if b < 0x80 { return 0 }
            if b & 0xC0 != 0x80 {  // a lead byte: how long its character is
                let length: UInt64 = b >= 0xF5 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 ? 2 : 1
                return length > k ? Int(k) : 0
            }
            k += 1
        }
        return 0
    }

    /// The bytes `[from, from + max)` as an array (tests and small reads).
    public func bytes(from: UInt64, max: Int = .max) -> [UInt8] {
        withBytes(from: from, max: max) { Array($0) + Array($1) }
    }

    private mutating func grow(to needed: Int) {
        var capacity = Swift.max(storage.count, ByteRing.minimumCapacity)
        while capacity < needed { capacity *= 2 }
        // Re-place the live bytes so that offset o sits at o & (capacity - 1).
        var placed = [UInt8](repeating: 0, count: capacity)
        let position = Int(base & UInt64(capacity - 1))
        withBytes(from: base, max: count) { a, b in
            placed.withUnsafeMutableBytes { dst in
                ByteRing.copy(a, into: dst, at: position)
                ByteRing.copy(b, into: dst, at: (position + a.count) & (capacity - 1))
            }
        }
        storage = placed
    }

    /// Copies `src` into the circle `dst` starting at `position`, wrapping at the end.
    private static func copy(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer, at position: Int) {
        guard src.count > 0 else { return }
        let first = Swift.min(src.count, dst.count - position)
        dst.baseAddress!.advanced(by: position).copyMemory(from: src.baseAddress!, byteCount: first)
        if first < src.count {
            dst.baseAddress!.copyMemory(from: src.baseAddress! + first, byteCount: src.count - first)
        }
    }
}

// MARK: Hand-over (SPEC §9)

extension ByteRing {
    /// A ring as values: its offsets, its limit and the bytes `[base, end)` in order (the
    /// circle's layout is not part of it). What an in-place upgrade carries (`SessionSnapshot`).
    public struct State: Equatable, Sendable {
        public var base: UInt64
        public var acked: UInt64
        /// `buffer-size` of the session.
        public var limit: Int
        /// The buffered bytes, `[base, end)`.
        public var bytes: [UInt8]
        public var end: UInt64 { base + UInt64(bytes.count) }

        public init(base: UInt64, acked: UInt64, limit: Int, bytes: [UInt8]) {
            self.base = base
            self.acked = acked
            self.limit = limit
            self.bytes = bytes
        }

        /// Whether a ring can hold this: `limit > 0`, at most `limit` bytes, `acked` in
        /// `[base, end]`, and `end` representable.
        public var isConsistent: Bool {
            guard limit > 0, bytes.count <= limit, UInt64.max - base >= UInt64(bytes.count) else { return false }
            return acked >= base && acked <= end
        }
    }

    public func snapshot() -> State {
        State(base: base, acked: acked, limit: limit, bytes: bytes(from: base))
    }

    /// A ring holding what `state` describes (which must be consistent). Storage is sized for
    /// the bytes only, as if they had just arrived.
    public init(restoring state: State) {
        precondition(state.isConsistent, "an inconsistent ring state")
        self.init(limit: state.limit)
        base = state.base
        acked = state.base
        end = state.base
        state.bytes.withUnsafeBytes { append($0) }  // count <= limit = room: no eviction
        acked = state.acked
    }
}
