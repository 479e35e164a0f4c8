import CUV

/// The operating system's CSPRNG (`getrandom(2)` through `uv_random`, which blocks until the
/// kernel's pool is seeded and never returns weaker bytes).
public enum SystemRandom {
    /// Two random 64-bit words.
    public static func words() -> (UInt64, UInt64) {
        var words: (UInt64, UInt64) = (0, 0)
        let rc = withUnsafeMutableBytes(of: &words) { uv_random(nil, nil, $0.baseAddress, 16, 0, nil) }
        precondition(rc == 0, "the OS random source failed: \(UVError.name(rc))")
        return words
    }
}
