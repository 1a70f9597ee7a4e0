//! The mixture's random number generator: SplitMix64, whose whole state is one `u64`, so that it
//! can be saved in a [`super::MixturePosition`] and restored exactly.

use crate::rng::{GAMMA, SplitMix64, mix};

/// A SplitMix64 generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rng(SplitMix64);

impl Rng {
    /// A generator with the given state.
    pub(crate) fn from_state(state: u64) -> Self {
        Rng(SplitMix64::new(state))
    }

    /// The state, to save in a position.
    pub(crate) fn state(&self) -> u64 {
        self.0.state
    }

    /// An independent generator for `(seed, purpose, a, b)`.
    pub(crate) fn stream(seed: u64, purpose: &str, a: u64, b: u64) -> Self {
        let mut h = mix(seed ^ GAMMA);
        for byte in purpose.bytes() {
            h = mix(h ^ u64::from(byte));
        }
        h = mix(h ^ a.wrapping_mul(GAMMA));
        h = mix(h ^ b.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        Rng::from_state(h)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A uniform integer in `0..n` (`n > 0`; 0 for `n == 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
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
