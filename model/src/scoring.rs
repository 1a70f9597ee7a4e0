//! Likelihood scoring on the model's outputs: the log-probability of label tokens (position `t`
//! predicts label `t + 1`, label −100 ignored), per token or summed per sequence. Training uses it
//! for its losses and evaluation for likelihood-based benchmarks (e.g. preference accuracy).
//! Only kept positions are gathered before the log-softmax, which runs in f32.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_softmax;

/// The ignored label value.
pub const IGNORE: i64 = -100;

/// Positions kept by the shifted scoring: `(row, position, target)` for every `labels[row][t + 1]`
/// that is not ignored.
pub fn kept_positions(labels: &[Vec<i64>]) -> Vec<(usize, usize, i64)> {
    let mut out = Vec::new();
    for (b, row) in labels.iter().enumerate() {
        for t in 0..row.len().saturating_sub(1) {
            let y = row[t + 1];
            if y != IGNORE {
                out.push((b, t, y));
            }
        }
    }
    out
}

/// Log-probability of each kept target under `logits` `[B, S, V]`, as a `[N]` tensor, plus the
/// row of each entry.
pub fn target_logprobs(logits: Tensor<3>, labels: &[Vec<i64>]) -> (Tensor<1>, Vec<usize>) {
    let [b, s, v] = logits.dims();
    let kept = kept_positions(labels);
    let device = logits.device();
    if kept.is_empty() {
        return (Tensor::zeros([0], &device), Vec::new());
    }
    let rows: Vec<i64> = kept.iter().map(|&(r, t, _)| (r * s + t) as i64).collect();
    let targets: Vec<i64> = kept.iter().map(|&(_, _, y)| y).collect();
    let n = kept.len();
    let flat = logits.reshape([b * s, v]);
    let picked = flat.select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device),
    );
    let logp = log_softmax(picked.cast(DType::F32), 1);
    let idx = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    (
        logp.gather(1, idx).reshape([n]),
        kept.iter().map(|k| k.0).collect(),
    )
}

/// Sum of target log-probabilities per row `[B]` (the log-likelihood of each sequence's labels).
pub fn sequence_logprobs(logits: Tensor<3>, labels: &[Vec<i64>]) -> Tensor<1> {
    let b = labels.len();
    let device = logits.device();
    let (lp, rows) = target_logprobs(logits, labels);
    let n = rows.len();
    if n == 0 {
        return Tensor::zeros([b], &device);
    }
    // One-hot [B, N] row assignment: [B, N] x [N, 1] -> [B, 1].
    let mut onehot = vec![0f32; b * n];
    for (j, &r) in rows.iter().enumerate() {
        onehot[r * n + j] = 1.0;
    }
    let m = Tensor::<2>::from_data(TensorData::new(onehot, [b, n]), &device);
    m.matmul(lp.reshape([n, 1])).reshape([b])
}
