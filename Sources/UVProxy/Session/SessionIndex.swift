/// Sessions by id: an open-addressing table that uses the id's own bits as the hash.
///
/// Ids are 128 bits from the CSPRNG, so their low bits are already uniform: no hashing on the
/// poll path, and nobody can choose ids that collide. (A client can ask for any id, but a
/// miss only walks the cluster it lands in, short at a load factor of at most 1/2.)
/// Deletion shifts later entries back, so there are no tombstones.
struct SessionIndex {
    private var slots: [Session?] = Array(repeating: nil, count: 64)
    private(set) var count = 0

    @inline(__always) private var mask: Int { slots.count - 1 }

    @inline(__always) private static func home(_ id: SessionID, _ mask: Int) -> Int {
        Int(truncatingIfNeeded: id.lo) & mask
    }

    func find(_ id: SessionID) -> Session? {
        let mask = self.mask
        var i = SessionIndex.home(id, mask)
        while let s = slots[i] {
            if s.id == id { return s }
            i = (i + 1) & mask
        }
        return nil
    }

    /// Inserts a session whose id is not present.
    mutating func insert(_ session: Session) {
        if (count + 1) * 2 > slots.count { grow() }
        place(session)
        count += 1
    }

    private mutating func place(_ session: Session) {
        let mask = self.mask
        var i = SessionIndex.home(session.id, mask)
        while slots[i] != nil { i = (i + 1) & mask }
        slots[i] = session
    }

    mutating func remove(_ id: SessionID) {
        let mask = self.mask
        var i = SessionIndex.home(id, mask)
        while let s = slots[i] {
            if s.id == id { break }
            i = (i + 1) & mask
        }
        guard slots[i] != nil else { return }
        slots[i] = nil
        count -= 1
        // Backward-shift: move later members of the cluster into the gap when their home
        // position does not lie (cyclically) between the gap and them.
        var gap = i
        var j = (i + 1) & mask
        while let s = slots[j] {
            let home = SessionIndex.home(s.id, mask)
            let fromGap = (j - gap) & mask
            let fromHome = (j - home) & mask
            if fromHome >= fromGap {
                slots[gap] = s
                slots[j] = nil
                gap = j
            }
            j = (j + 1) & mask
        }
    }

    private mutating func grow() {
        let old = slots
        slots = Array(repeating: nil, count: old.count * 2)
        for case let s? in old { place(s) }
    }

    /// Every session (shutdown, metrics): O(capacity).
    var all: [Session] { slots.compactMap { $0 } }
}
