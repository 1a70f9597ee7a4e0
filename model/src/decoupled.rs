//! The decoupled vocabulary of xGen-MM (docs/model.md, "Vocabulary and the decoupled embedding
//! and head"): the original embedding table and output head serve ids below
//! `initial_tokenizer_len`; a few additional rows (`<image>`, `<image placeholder>`,
//! `<|endofchunk|>`) live in separate small parameters.
//!
//! Weights are kept in the checkpoint's layout (`[rows, width]` for both the table and the head),
//! so the loader maps them without transposition.

use blip3_shaders::matvec::row_matmul;
use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::embedding;

/// Token embedding with an original table and `n` additional rows.
#[derive(Module, Debug)]
pub struct DecoupledEmbedding {
    /// The original table `[vocab_size, width]` (rows past `initial_len` are unused).
    pub weight: Param<Tensor<2>>,
    /// The additional rows, looked up at `id - initial_len`.
    pub additional_embedding: Option<Embedding>,
    initial_len: usize,
}

/// Output head: original logits (with bias) truncated to `initial_len`, then the additional
/// logits appended.
#[derive(Module, Debug)]
pub struct DecoupledLinear {
    /// The original head `[vocab_size, width]` (PyTorch layout).
    pub weight: Param<Tensor<2>>,
    /// The original head's bias `[vocab_size]` (present in xGen-MM, absent in plain Phi-3).
    pub bias: Option<Param<Tensor<1>>>,
    /// The head of the additional tokens.
    pub additional_fc: Option<Linear>,
    initial_len: usize,
}

impl DecoupledEmbedding {
    /// A new embedding: `vocab_size` rows in the table, of which the first `initial_len` are used,
    /// plus `additional` rows.
    pub fn new(
        vocab_size: usize,
        width: usize,
        initial_len: usize,
        additional: usize,
        device: &Device,
    ) -> Self {
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        Self {
            weight: init.init([vocab_size, width], device),
            additional_embedding: (additional > 0).then(|| {
                EmbeddingConfig::new(additional, width)
                    .with_initializer(init)
                    .init(device)
            }),
            initial_len,
        }
    }

    /// Number of ids served (`initial_len + additional`).
    pub fn num_ids(&self) -> usize {
        self.initial_len
            + self
                .additional_embedding
                .as_ref()
                .map_or(0, |e| e.weight.dims()[0])
    }

    /// `[B, T]` ids → `[B, T, width]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let table = self.weight.val();
        let Some(extra) = &self.additional_embedding else {
            return embedding(table, ids);
        };
        let [b, t] = ids.dims();
        let [_, width] = table.dims();
        let n_extra = extra.weight.dims()[0] as i64;
        let is_extra = ids.clone().greater_equal_elem(self.initial_len as i64);
        let base = embedding(table, ids.clone().mask_fill(is_extra.clone(), 0));
        let extra_ids = (ids - self.initial_len as i64).clamp(0, n_extra - 1);
        let added = extra.forward(extra_ids).cast(base.dtype());
        base.mask_where(is_extra.unsqueeze_dim::<3>(2).expand([b, t, width]), added)
    }
}

impl DecoupledLinear {
    /// A new head mirroring [`DecoupledEmbedding::new`]; `bias` adds the original head's bias.
    pub fn new(
        vocab_size: usize,
        width: usize,
        initial_len: usize,
        additional: usize,
        bias: bool,
        device: &Device,
    ) -> Self {
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        Self {
            weight: init.init([vocab_size, width], device),
            bias: bias.then(|| Initializer::Zeros.init([vocab_size], device)),
            additional_fc: (additional > 0).then(|| {
                LinearConfig::new(width, additional)
                    .with_bias(bias)
                    .with_initializer(init)
                    .init(device)
            }),
            initial_len,
        }
    }

    /// Width of the output (`initial_len + additional`).
    pub fn num_outputs(&self) -> usize {
        self.initial_len
            + self
                .additional_fc
                .as_ref()
                .map_or(0, |l| l.weight.dims()[1])
    }

    /// `[B, T, width]` → `[B, T, initial_len + additional]` logits.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let w = self.weight.val();
        let x = x.cast(w.dtype());
        let [b, t, d] = x.dims();
        // A 2-D product against the whole (transposed) table, surplus columns dropped afterwards:
        // on CPU a batched product against a broadcast weight, or a transposed view of a
        // row-narrowed table, made the backend copy the whole head (~100 MB for Phi-3) every call
        // (8x slower decoding). A single row is split over the CPU threads (`row_matmul`).
        let mut logits = row_matmul(x.clone().reshape([b * t, d]), w.transpose())
            .reshape([b, t, self.weight.dims()[0]])
            .narrow(2, 0, self.initial_len);
        if let Some(bias) = &self.bias {
            logits = logits + bias.val().narrow(0, 0, self.initial_len).unsqueeze::<3>();
        }
        match &self.additional_fc {
            Some(fc) => Tensor::cat(vec![logits, fc.forward(x)], 2),
            None => logits,
        }
    }
}
