#if canImport(Glibc)
import Glibc
#endif

/// Byte comparisons against literals without going through `String` (hot path: routing and
/// header matching run on every request).
extension ArraySlice where Element == UInt8 {
    @inline(__always) func equals(_ literal: StaticString) -> Bool {
        guard count == literal.utf8CodeUnitCount else { return false }
        guard count > 0 else { return true }
        return withUnsafeBufferPointer { memcmp($0.baseAddress!, literal.utf8Start, count) == 0 }
    }

    @inline(__always) func hasPrefix(_ literal: StaticString) -> Bool {
        guard count >= literal.utf8CodeUnitCount else { return false }
        guard literal.utf8CodeUnitCount > 0 else { return true }
        return withUnsafeBufferPointer { memcmp($0.baseAddress!, literal.utf8Start, literal.utf8CodeUnitCount) == 0 }
    }

    /// Case-insensitive for ASCII letters; `literal` must be lower case.
    @inline(__always) func equalsIgnoringCase(_ literal: StaticString) -> Bool {
        let n = literal.utf8CodeUnitCount
        guard count == n else { return false }
        return withUnsafeBufferPointer { bytes in
            let lower = literal.utf8Start
            var i = 0
            while i < n {
                guard asciiLower(bytes[i]) == lower[i] else { return false }
                i &+= 1
            }
            return true
        }
    }
}

extension Array where Element == UInt8 {
    @inline(__always) func equals(_ literal: StaticString) -> Bool { self[...].equals(literal) }

    /// `==` by `memcmp` (the generic `==` compares element by element).
    @inline(__always) func sameBytes(as other: [UInt8]) -> Bool {
        guard count == other.count else { return false }
        guard count > 0 else { return true }
        return withUnsafeBufferPointer { a in other.withUnsafeBufferPointer { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }
    }
}
