//! The mixture's random number generator: SplitMix64, whose whole state is one `u64`, so that it
//! can be saved in a [`super::MixturePosition`] and restored exactly.

/// The SplitMix64 increment.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rng {
    pub(crate) state: u64,
}

impl Rng {
    /// A generator with the given state.
    pub(crate) fn from_state(state: u64) -> Self {
        Rng { state }
    }

    /// An independent generator for `(seed, purpose, a, b)`.
    pub(crate) fn stream(seed: u64, purpose: &str, a: u64, b: u64) -> Self {
        let mut h = mix(seed ^ GAMMA);
        for byte in purpose.bytes() {
            h = mix(h ^ u64::from(byte));
        }
        h = mix(h ^ a.wrapping_mul(GAMMA));
        h = mix(h ^ b.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        Rng { state: h }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// A uniform integer in `0..n` (`n > 0`; 0 for `n == 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform float in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Shuffles `items` (Fisher-Yates).
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}
