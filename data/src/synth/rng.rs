//! The corpus's own small random number generator: SplitMix64.
//!
//! Every generated item draws from its own stream, derived from the corpus seed, a stream name and
//! the item's index. Changing how many items one part of the corpus holds therefore never changes
//! the items of another part, and the same seed always gives the same bytes.

use crate::rng::{GAMMA, SplitMix64, mix};

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub(crate) struct Rng(SplitMix64);

impl Rng {
    /// A generator started from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    /// The generator of item `index` of the stream called `name`, for the corpus seed `seed`.
    pub(crate) fn stream(seed: u64, name: &str, index: u64) -> Self {
        let mut h = mix(seed ^ GAMMA);
        for byte in name.bytes() {
            h = mix(h ^ u64::from(byte));
        }
        Rng::new(mix(h ^ index.wrapping_mul(GAMMA)))
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A uniform integer in `0..n`; `n == 0` gives 0.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }

    /// A uniform integer in `lo..=hi` (`lo` when `hi < lo`).
    pub(crate) fn range(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo) as usize + 1) as u32
    }

    /// A uniform float in `[0, 1)` with 24 random bits.
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A uniform float in `[lo, hi)`.
    pub(crate) fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    /// A uniformly chosen element; `None` for an empty slice.
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.below(items.len())])
        }
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(7, "x", 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::stream(7, "x", 3).next_u64(),
            Rng::stream(7, "x", 4).next_u64()
        );
        assert_ne!(
            Rng::stream(7, "x", 3).next_u64(),
            Rng::stream(7, "y", 3).next_u64()
        );
        assert_ne!(
            Rng::stream(7, "x", 3).next_u64(),
            Rng::stream(8, "x", 3).next_u64()
        );
    }
}
