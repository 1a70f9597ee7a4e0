//! The decoder's key/value cache for incremental decoding: per layer, the keys and values
//! `[B, kv_heads, S, head_dim]` of every position seen so far (after RoPE), plus each row's
//! attention mask.
//!
//! Keys and values live in buffers with room to spare (`KvBuffers`): a decoding step writes its
//! new position into the buffer in place (`slice_assign` on a buffer nobody else holds) and the
//! attention reads the filled prefix as a view, instead of concatenating the whole cache with
//! the new position at every step (what HF's `DynamicCache` does), which copies `O(S)` per layer
//! per token. A full buffer grows by a quarter (at least [`MIN_GROWTH`] positions), so the
//! copies on growth are amortised.

use burn::prelude::*;

use crate::error::ModelError;

/// Fewest positions a full buffer grows by.
pub const MIN_GROWTH: usize = 128;

/// One layer's cached keys and values: `keys`/`values` are `[B, kv_heads, capacity, head_dim]`,
/// of which the first `len` positions are filled.
#[derive(Debug, Clone)]
pub struct KvBuffers {
    keys: Tensor<4>,
    values: Tensor<4>,
    len: usize,
}

impl KvBuffers {
    /// Buffers holding exactly `keys` and `values` (`[B, kv_heads, S, head_dim]`).
    pub fn new(keys: Tensor<4>, values: Tensor<4>) -> Self {
        let len = keys.dims()[2];
        Self { keys, values, len }
    }

    /// Filled positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers hold before they must grow.
    pub fn capacity(&self) -> usize {
        self.keys.dims()[2]
    }

    /// Forgets the positions from `len` on (none if `len` is not below the filled length),
    /// keeping the buffers: a later [`append`](Self::append) writes over them.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The filled keys and values, `[B, kv_heads, len, head_dim]` (views of the buffers).
    pub fn filled(&self) -> (Tensor<4>, Tensor<4>) {
        (
            self.keys.clone().narrow(2, 0, self.len),
            self.values.clone().narrow(2, 0, self.len),
        )
    }

    /// Writes `keys` and `values` (`[B, kv_heads, T, head_dim]`) after the filled positions,
    /// growing the buffers first when they are full, and returns all filled keys and values
    /// (views). The write is in place while the buffers are held only here: drop the returned
    /// views before the next call.
    pub fn append(&mut self, keys: Tensor<4>, values: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let t = keys.dims()[2];
        let end = self.len + t;
        if end > self.capacity() {
            let capacity = end.max(self.len + (self.len / 4).max(MIN_GROWTH));
            let (filled_keys, filled_values) = self.filled();
            self.keys = grown(filled_keys, capacity);
            self.values = grown(filled_values, capacity);
        }
        let [b, h, _, d] = self.keys.dims();
        let [_, _, _, dv] = self.values.dims();
        // Take the buffers out of `self` (the new rows hold their place for a moment) so that
        // they are uniquely held while written.
        let key_buffer = std::mem::replace(&mut self.keys, keys.clone());
        let value_buffer = std::mem::replace(&mut self.values, values.clone());
        self.keys = key_buffer.slice_assign([0..b, 0..h, self.len..end, 0..d], keys);
        self.values = value_buffer.slice_assign([0..b, 0..h, self.len..end, 0..dv], values);
        self.len = end;
        self.filled()
    }
}

/// `filled` (`[B, H, S, D]`) copied into the first positions of a zeroed `[B, H, capacity, D]`.
fn grown(filled: Tensor<4>, capacity: usize) -> Tensor<4> {
    let [b, h, s, d] = filled.dims();
    let buffer = Tensor::<4>::zeros([b, h, capacity, d], (&filled.device(), filled.dtype()));
    buffer.slice_assign([0..b, 0..h, 0..s, 0..d], filled)
}

/// One layer's slot in the cache: empty before the first forward.
pub(crate) type KvSlot = Option<KvBuffers>;

/// Per-layer key/value cache plus the attention mask seen so far.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<KvSlot>,
    pub(crate) mask: Vec<Vec<bool>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cached positions (including padding).
    pub fn len(&self) -> usize {
        self.mask.first().map_or(0, Vec::len)
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows (sequences) held.
    pub fn rows(&self) -> usize {
        self.mask.len()
    }

    /// Appends the rows of `other` after this cache's rows, for continuous batching: the shorter
    /// of the two is left-padded with masked positions to the common length, which leaves every
    /// row's positions (`cumsum(mask) - 1`) and attention unchanged. Both caches must come from
    /// the same model.
    pub fn append_rows(&mut self, other: KvCache) -> Result<(), ModelError> {
        if other.rows() == 0 {
            return Ok(());
        }
        if self.rows() == 0 {
            *self = other;
            return Ok(());
        }
        if self.layers.len() != other.layers.len() {
            return Err(ModelError::Input(format!(
                "cannot join caches of {} and {} layers",
                self.layers.len(),
                other.layers.len()
            )));
        }
        let len = self.len().max(other.len());
        let (mine, theirs) = (len - self.len(), len - other.len());
        let mut layers = Vec::with_capacity(self.layers.len());
        for (a, b) in std::mem::take(&mut self.layers)
            .into_iter()
            .zip(other.layers)
        {
            layers.push(match (a, b) {
                (Some(a), Some(b)) => {
                    let ((ka, va), (kb, vb)) = (a.filled(), b.filled());
                    Some(KvBuffers::new(
                        Tensor::cat(vec![left_pad_seq(ka, mine), left_pad_seq(kb, theirs)], 0),
                        Tensor::cat(vec![left_pad_seq(va, mine), left_pad_seq(vb, theirs)], 0),
                    ))
                }
                _ => {
                    return Err(ModelError::Input(
                        "cannot join a cache that has not been filled".into(),
                    ));
                }
            });
        }
        self.layers = layers;
        for row in &mut self.mask {
            row.splice(0..0, std::iter::repeat_n(false, mine));
        }
        for mut row in other.mask {
            row.splice(0..0, std::iter::repeat_n(false, theirs));
            self.mask.push(row);
        }
        Ok(())
    }

    /// Keeps only the rows `keep` (indices into the current rows, in the order given; an index
    /// may repeat, which copies the row, as beam search does when a beam splits), then drops
    /// leading positions that no kept row attends to.
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<(), ModelError> {
        if let Some(&bad) = keep.iter().find(|&&r| r >= self.rows()) {
            return Err(ModelError::Input(format!(
                "row {bad} is not in a cache of {} rows",
                self.rows()
            )));
        }
        if keep.is_empty() {
            *self = KvCache::new();
            return Ok(());
        }
        let mask: Vec<Vec<bool>> = keep.iter().map(|&r| self.mask[r].clone()).collect();
        let unused = (0..self.len())
            .take_while(|&c| mask.iter().all(|row| !row[c]))
            .count();
        let len = self.len();
        let device = self
            .layers
            .iter()
            .flatten()
            .next()
            .map(|buffers| buffers.filled().0.device());
        if let Some(device) = device {
            let index = Tensor::<1, Int>::from_data(
                TensorData::new(
                    keep.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                    [keep.len()],
                ),
                &device,
            );
            for slot in self.layers.iter_mut() {
                if let Some(buffers) = slot.take() {
                    let (k, v) = buffers.filled();
                    let k = k.select(0, index.clone()).narrow(2, unused, len - unused);
                    let v = v.select(0, index.clone()).narrow(2, unused, len - unused);
                    *slot = Some(KvBuffers::new(k, v));
                }
            }
        }
        self.mask = mask.into_iter().map(|row| row[unused..].to_vec()).collect();
        Ok(())
    }
}

/// `t` `[B, H, S, D]` with `pad` zero positions before the first.
fn left_pad_seq(t: Tensor<4>, pad: usize) -> Tensor<4> {
    if pad == 0 {
        return t;
    }
    let [b, h, _, d] = t.dims();
    let zeros = Tensor::<4>::zeros([b, h, pad, d], (&t.device(), t.dtype()));
    Tensor::cat(vec![zeros, t], 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn random(s: usize, device: &Device) -> Tensor<4> {
        Tensor::<4>::random([2, 3, s, 4], Distribution::Uniform(-1.0, 1.0), device)
    }

    /// Appending position by position gives the same keys and values as concatenating them,
    /// and the buffers grow a few times, not at every step.
    #[test]
    fn appends_match_concatenation_and_growth_is_amortised() {
        let device = Device::flex();
        let (k0, v0) = (random(5, &device), random(5, &device));
        let mut buffers = KvBuffers::new(k0.clone(), v0.clone());
        let (mut keys, mut values) = (k0, v0);
        let mut capacities = vec![buffers.capacity()];
        for step in 0..300 {
            let t = 1 + step % 3;
            let (k, v) = (random(t, &device), random(t, &device));
            keys = Tensor::cat(vec![keys, k.clone()], 2);
            values = Tensor::cat(vec![values, v.clone()], 2);
            let (got_k, got_v) = buffers.append(k, v);
            assert_eq!(got_k.dims(), keys.dims());
            got_k.into_data().assert_eq(&keys.to_data(), true);
            got_v.into_data().assert_eq(&values.to_data(), true);
            if *capacities.last().unwrap() != buffers.capacity() {
                capacities.push(buffers.capacity());
            }
        }
        assert_eq!(buffers.len(), keys.dims()[2]);
        // Rewinding keeps the buffers; the next append writes over the forgotten positions.
        let capacity = buffers.capacity();
        buffers.truncate(7);
        let (k, v) = (random(2, &device), random(2, &device));
        let (got_k, got_v) = buffers.append(k.clone(), v.clone());
        assert_eq!(buffers.capacity(), capacity);
        let want_k = Tensor::cat(vec![keys.narrow(2, 0, 7), k], 2);
        let want_v = Tensor::cat(vec![values.clone().narrow(2, 0, 7), v], 2);
        got_k.into_data().assert_eq(&want_k.into_data(), true);
        got_v.into_data().assert_eq(&want_v.into_data(), true);
        assert!(buffers.capacity() >= buffers.len());
        // About 600 positions in 300 appends: five growths, each by at least MIN_GROWTH
        // positions (a quarter of the filled length once that is larger), less the 1-3 rows of
        // the append that triggered it.
        assert_eq!(capacities.len(), 6, "{capacities:?}");
        assert!(
            capacities.windows(2).all(|w| w[1] + 3 >= w[0] + MIN_GROWTH),
            "{capacities:?}"
        );
    }
}
