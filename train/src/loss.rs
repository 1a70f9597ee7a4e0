//! Losses: the causal-LM cross-entropy that ignores label −100 (Burn's has no ignore index) and
//! the sigmoid DPO loss, on the label log-probabilities of [`blip3_model::scoring`].
//!
//! Labels are given on the host, aligned with the logits' positions (the model's expanded
//! sequence). Position `t` predicts label `t + 1`, as the reference's LM shifts labels inside.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_sigmoid;

pub use blip3_model::scoring::{IGNORE, kept_positions, sequence_logprobs, target_logprobs};

/// Mean negative log-likelihood over kept positions and the number of kept positions.
/// Returns a zero loss (still connected to the graph) when nothing is kept.
pub fn causal_lm_loss(logits: Tensor<3>, labels: &[Vec<i64>]) -> (Tensor<1>, usize) {
    let (lp, _) = target_logprobs(logits.clone(), labels);
    let n = lp.dims()[0];
    if n == 0 {
        return ((logits.sum() * 0.0).cast(DType::F32).reshape([1]), 0);
    }
    (lp.sum().neg().reshape([1]) / n as f64, n)
}

/// Outputs of the DPO loss.
#[derive(Debug, Clone)]
pub struct DpoTerms {
    /// Mean loss `−log σ(β·((π_c − ρ_c) − (π_r − ρ_r)))` (`[1]`).
    pub loss: Tensor<1>,
    /// Implicit rewards of the chosen answers `β·(π_c − ρ_c)` (`[B]`, detached).
    pub chosen_rewards: Tensor<1>,
    /// Implicit rewards of the rejected answers (`[B]`, detached).
    pub rejected_rewards: Tensor<1>,
}

/// The sigmoid DPO loss from policy and reference sequence log-probabilities (`[B]` each; the
/// reference ones carry no gradient).
pub fn dpo_loss(
    policy_chosen: Tensor<1>,
    policy_rejected: Tensor<1>,
    ref_chosen: Tensor<1>,
    ref_rejected: Tensor<1>,
    beta: f64,
) -> DpoTerms {
    let chosen = policy_chosen - ref_chosen.detach();
    let rejected = policy_rejected - ref_rejected.detach();
    let logits = (chosen.clone() - rejected.clone()) * beta;
    let loss = log_sigmoid(logits).neg().mean().reshape([1]);
    DpoTerms {
        loss,
        chosen_rewards: (chosen * beta).detach(),
        rejected_rewards: (rejected * beta).detach(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(device: &Device) -> Tensor<3> {
        let data: Vec<f32> = (0..2 * 4 * 5)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        Tensor::from_data(TensorData::new(data, [2, 4, 5]), device)
    }

    /// The loss equals a direct computation from the definition.
    #[test]
    fn masked_ce_matches_definition() {
        let dev = Device::flex();
        let l = logits(&dev);
        let labels = vec![vec![IGNORE, 3, IGNORE, 1], vec![IGNORE, IGNORE, 4, IGNORE]];
        let (loss, n) = causal_lm_loss(l.clone(), &labels);
        assert_eq!(n, 3);
        let v: Vec<f32> = l.into_data().try_into_vec_as::<f32>().unwrap();
        let lp = |b: usize, t: usize, y: usize| {
            let row = &v[(b * 4 + t) * 5..(b * 4 + t + 1) * 5];
            let m = row.iter().cloned().fold(f32::MIN, f32::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            row[y] - lse
        };
        let expect = -(lp(0, 0, 3) + lp(0, 2, 1) + lp(1, 1, 4)) / 3.0;
        let got = loss.into_scalar::<f32>();
        assert!((got - expect).abs() < 1e-6, "{got} vs {expect}");
    }

    #[test]
    fn dpo_matches_formula() {
        let dev = Device::flex();
        let t = |v: [f32; 2]| Tensor::<1>::from_floats(v, &dev);
        let terms = dpo_loss(
            t([-3.0, -5.0]),
            t([-4.0, -4.5]),
            t([-3.5, -5.2]),
            t([-3.8, -4.0]),
            0.1,
        );
        let z = |pc: f64, pr: f64, rc: f64, rr: f64| 0.1 * ((pc - rc) - (pr - rr));
        let ls = |x: f64| -(1.0 / (1.0 + (-x).exp())).ln();
        let expect = (ls(z(-3.0, -4.0, -3.5, -3.8)) + ls(z(-5.0, -4.5, -5.2, -4.0))) / 2.0;
        let got = terms.loss.into_scalar::<f32>() as f64;
        assert!((got - expect).abs() < 1e-6, "{got} vs {expect}");
    }
}
