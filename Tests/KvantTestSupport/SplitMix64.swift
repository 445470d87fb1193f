import Foundation

/// The one seeded random number generator of the tests (SplitMix64, Steele et al. 2014), so every
/// failure reproduces from its seed. Also a `RandomNumberGenerator` for `Int.random(in:using:)`.
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    public mutating func nextUniform() -> Double { Double(next() >> 11) / Double(1 << 53) }

    /// Standard normal (Box–Muller).
    public mutating func nextGaussian() -> Double {
        let u1 = max(nextUniform(), 1e-12), u2 = nextUniform()
        return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
    }

    /// Uniform in [-1, 1).
    public mutating func unit() -> Float { Float(nextUniform() * 2 - 1) }

    /// `n` values uniform in [-scale, scale).
    public mutating func floats(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in unit() * scale } }
}
