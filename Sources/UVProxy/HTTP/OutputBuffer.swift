#if canImport(Glibc)
import Glibc
#endif

/// A growable byte buffer for building response heads: appends are a capacity check and a
/// memcpy, without an array's uniqueness checks. One per connection, reused for every response.
final class OutputBuffer {
    private var base: UnsafeMutablePointer<UInt8>
    private(set) var count = 0
    private var capacity: Int

    init(capacity: Int = 512) {
        self.capacity = capacity
        base = .allocate(capacity: capacity)
    }

    deinit { base.deallocate() }

    @inline(__always) func removeAll() { count = 0 }

    @inline(__always) private func reserve(_ n: Int) {
        if count + n > capacity { grow(count + n) }
    }

    /// Frees the storage (a connection that has become a stream writes no more heads); an
    /// append after it allocates again.
    func release() {
        base.deallocate()
        base = .allocate(capacity: 0)
        capacity = 0
        count = 0
    }

    private func grow(_ needed: Int) {
        var newCapacity = Swift.max(capacity * 2, 256)
        while newCapacity < needed { newCapacity *= 2 }
        let grown = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        grown.update(from: base, count: count)
        base.deallocate()
        base = grown
        capacity = newCapacity
    }

    @inline(__always) func append(_ literal: StaticString) {
        let n = literal.utf8CodeUnitCount
        reserve(n)
        memcpy(base + count, literal.utf8Start, n)
        count += n
    }

    @inline(__always) func append(_ byte: UInt8) {
        reserve(1)
        base[count] = byte
        count += 1
    }

    func append<C: Collection>(contentsOf bytes: C) where C.Element == UInt8 {
        reserve(bytes.count)
        for b in bytes {
            base[count] = b
            count += 1
        }
    }

    func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append(raw: $0) }
    }

    func append(raw bytes: UnsafeRawBufferPointer) {
        guard let src = bytes.baseAddress, bytes.count > 0 else { return }
        reserve(bytes.count)
        memcpy(base + count, src, bytes.count)
        count += bytes.count
    }

    /// Decimal digits of `n`, two at a time.
    func appendDecimal(_ n: UInt64) {
        reserve(20)
        var digits = 1
        var threshold: UInt64 = 10
        while digits < 20 && n >= threshold { digits += 1; threshold &*= 10 }
        var v = n
        var i = count + digits
        OutputBuffer.pairs.withUnsafeBufferPointer { pairs in
            while v >= 100 {
                let r = Int(v % 100) * 2
                v /= 100
                i -= 2
                base[i] = pairs[r]
                base[i + 1] = pairs[r + 1]
            }
            if v >= 10 {
                let r = Int(v) * 2
                base[i - 2] = pairs[r]
                base[i - 1] = pairs[r + 1]
            } else {
                base[i - 1] = UInt8(48 + v)
            }
        }
        count += digits
    }

    /// "00", "01", … "99".
    private static let pairs: [UInt8] = {
        var table: [UInt8] = []
        for n in 0..<100 {
            let tens = UInt8(48 + n / 10)
            let ones = UInt8(48 + n % 10)
            table.append(tens)
            table.append(ones)
        }
        return table
    }()

    /// The bytes written so far, valid until the next append or reset.
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }
}
