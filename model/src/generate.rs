//! Text generation: greedy or temperature / top-k / top-p sampling with a seed, or beam search
//! (the `beam` module); batched prompts with left padding, a KV cache (each new token costs one
//! position), stop ids supplied by the caller from the tokenizer (`<|end|>`, EOS), and a callback
//! that receives tokens as they come.

use burn::prelude::*;

use crate::error::ModelError;
use crate::phi3::KvCache;
use crate::xgenmm::{MultimodalInput, XGenMM};

/// When a prompt's beam search stops (HF `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EarlyStopping {
    /// HF `False` (the default): stop once `num_beams` hypotheses are finished and the best
    /// running beam, scored at the current length, cannot beat the worst of them.
    #[default]
    Heuristic,
    /// HF `True`: stop as soon as `num_beams` hypotheses are finished.
    AllFinished,
    /// HF `"never"`: like `Heuristic`, but with `length_penalty > 0` the running beam is scored at
    /// the longest possible length (the canonical beam search).
    Never,
}

/// Decoding settings. The beam-search fields follow Hugging Face's `GenerationConfig` names and
/// defaults (`num_beams` 1, `length_penalty` 1.0, `early_stopping` False).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    /// Maximum tokens generated per row.
    pub max_new_tokens: usize,
    /// Sampling temperature; `None` or `0` means greedy decoding.
    pub temperature: Option<f32>,
    /// Keep only the `k` most likely tokens before sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` before sampling.
    pub top_p: Option<f32>,
    /// Seed of the sampler.
    pub seed: u64,
    /// Ids that end a row (from the tokenizer: `<|end|>`, EOS). The stop id is included in the
    /// output.
    pub stop_ids: Vec<u32>,
    /// Id fed to rows that already stopped (masked out).
    pub pad_id: u32,
    /// Record this many top log-probabilities per generated step (0 = none; not with beams).
    pub top_logprobs: usize,
    /// Beams per prompt; 1 decodes greedily or samples, more runs [`XGenMM::beam_search`].
    pub num_beams: usize,
    /// Exponent of the generated length that divides a finished hypothesis's summed
    /// log-probability (0: no normalisation, > 0 favours longer replies).
    pub length_penalty: f32,
    /// When a prompt's beam search stops.
    pub early_stopping: EarlyStopping,
    /// Hypotheses returned per prompt by [`XGenMM::beam_search`] (at most `num_beams`);
    /// [`XGenMM::generate`] returns the best one.
    pub num_return_sequences: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: None,
            top_k: None,
            top_p: None,
            seed: 0,
            stop_ids: Vec::new(),
            pad_id: 0,
            top_logprobs: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            num_return_sequences: 1,
        }
    }
}

impl GenerationConfig {
    /// Checks the sampling settings: `temperature` a finite number `>= 0` (0 means greedy),
    /// `top_p` in `(0, 1]`, `top_k` at least 1. [`XGenMM::generate`] calls it; callers that take
    /// these values from users can call it before loading a model to fail early.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::Input(msg));
        if let Some(t) = self.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return bad(format!(
                "temperature {t} is out of range: expected a finite number >= 0 (0 = greedy)"
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!(
                "top_p {p} is out of range: expected a number in (0, 1] (1 keeps every token)"
            ));
        }
        if self.top_k == Some(0) {
            return bad(
                "top_k 0 is out of range: expected at least 1 (unset keeps every token)".into(),
            );
        }
        if self.num_beams == 0 {
            return bad("num_beams 0 is out of range: expected at least 1 (1 = no beams)".into());
        }
        if !self.length_penalty.is_finite() {
            return bad(format!(
                "length_penalty {} is out of range: expected a finite number",
                self.length_penalty
            ));
        }
        if self.num_return_sequences == 0 || self.num_return_sequences > self.num_beams {
            return bad(format!(
                "num_return_sequences {} is out of range: expected 1..={} (num_beams)",
                self.num_return_sequences, self.num_beams
            ));
        }
        if self.num_beams > 1 {
            if self.temperature.is_some_and(|t| t > 0.0) {
                return bad(format!(
                    "num_beams {} with temperature {:?}: beam search is deterministic; \
                     sampling beams is not supported (unset the temperature)",
                    self.num_beams, self.temperature
                ));
            }
            if self.top_logprobs > 0 {
                return bad(format!(
                    "num_beams {} with top_logprobs {}: log-probabilities are reported for \
                     greedy and sampled decoding only",
                    self.num_beams, self.top_logprobs
                ));
            }
        }
        Ok(())
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FinishReason {
    /// A stop id was produced.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

/// One generated row.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Generated ids only (the stop id included when produced).
    pub token_ids: Vec<u32>,
    /// Per step, up to `top_logprobs` pairs `(id, natural-log probability)`, highest first.
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Prompt positions (text tokens plus inserted vision tokens).
    pub prompt_len: usize,
    /// Vision embeddings inserted in the prompt.
    pub vision_tokens: usize,
    /// With beam search, the best hypothesis's length-penalised score (HF `sequences_scores`).
    pub sequence_score: Option<f32>,
}

/// A small deterministic generator (SplitMix64) so sampling is reproducible across platforms.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeds the generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next token from one row of logits.
pub fn pick_token(logits: &[f32], cfg: &GenerationConfig, rng: &mut SplitMix64) -> u32 {
    let greedy = cfg.temperature.is_none_or(|t| t <= 0.0);
    if greedy {
        // First maximum wins ties, as torch.argmax does.
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let t = cfg.temperature.unwrap_or(1.0) as f64;
    let mut cand: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, v as f64 / t))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(k) = cfg.top_k.filter(|&k| k > 0) {
        cand.truncate(k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 - max).exp()).collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if let Some(p) = cfg.top_p.filter(|&p| p > 0.0 && p < 1.0) {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, q) in probs.iter().enumerate() {
            acc += q;
            if acc >= p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let s: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= s);
    }
    let r = rng.next_f64();
    let mut acc = 0.0;
    for (i, q) in probs.iter().enumerate() {
        acc += q;
        if r < acc {
            return cand[i].0 as u32;
        }
    }
    cand[probs.len() - 1].0 as u32
}

/// `ln(sum(exp(logits)))` of a row, in f64 and shifted by the maximum for stability.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + logits
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// The natural-log probability of `id` under a row of logits (`log_softmax(logits)[id]`).
pub fn log_prob(logits: &[f32], id: u32) -> f32 {
    (logits[id as usize] as f64 - log_sum_exp(logits)) as f32
}

/// The `k` highest natural-log probabilities of a row, highest first.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let lse = log_sum_exp(logits);
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.into_iter()
        .map(|i| (i as u32, (logits[i] as f64 - lse) as f32))
        .collect()
}

/// The rows of a `[B, V]` logits tensor as f32 vectors.
pub(crate) fn rows(logits: Tensor<2>) -> Result<Vec<Vec<f32>>, ModelError> {
    let [b, v] = logits.dims();
    let data = logits
        .cast(burn::tensor::DType::F32)
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Input(format!("cannot read logits: {e:?}")))?;
    Ok((0..b).map(|i| data[i * v..(i + 1) * v].to_vec()).collect())
}

impl XGenMM {
    /// Generates a continuation for every prompt of the batch (left padding, KV cache).
    ///
    /// `on_token(row, id)` is called for each generated token in order; returning `false` stops
    /// that row (reason [`FinishReason::Cancelled`]). With `num_beams > 1` the row's tokens are
    /// only known when its search ends: they are passed to `on_token` then, and the result is the
    /// best hypothesis of [`XGenMM::beam_search`].
    pub fn generate(
        &self,
        input: &MultimodalInput,
        cfg: &GenerationConfig,
        mut on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Generated>, ModelError> {
        cfg.validate()?;
        if cfg.num_beams > 1 {
            return self.generate_with_beams(input, cfg, on_token);
        }
        let b = input.input_ids.len();
        let mut cache = KvCache::new();
        let (logits, fused) = self.prefill(input, &mut cache)?;
        let mut out: Vec<Generated> = (0..b)
            .map(|i| Generated {
                token_ids: Vec::new(),
                top_logprobs: Vec::new(),
                finish: FinishReason::Length,
                prompt_len: fused.mask[i].iter().filter(|&&m| m).count(),
                vision_tokens: fused.vision_tokens[i],
                sequence_score: None,
            })
            .collect();
        let mut rngs: Vec<SplitMix64> = (0..b)
            .map(|i| SplitMix64::new(cfg.seed.wrapping_add(i as u64)))
            .collect();
        let mut active = vec![true; b];
        let mut logits = rows(logits)?;
        for _step in 0..cfg.max_new_tokens {
            let mut next = vec![cfg.pad_id; b];
            for i in 0..b {
                if !active[i] {
                    continue;
                }
                let tok = pick_token(&logits[i], cfg, &mut rngs[i]);
                if cfg.top_logprobs > 0 {
                    out[i]
                        .top_logprobs
                        .push(top_logprobs(&logits[i], cfg.top_logprobs));
                }
                out[i].token_ids.push(tok);
                next[i] = tok;
                if cfg.stop_ids.contains(&tok) {
                    active[i] = false;
                    out[i].finish = FinishReason::Stop;
                }
                if !on_token(i, tok) && active[i] {
                    active[i] = false;
                    out[i].finish = FinishReason::Cancelled;
                }
            }
            if !active.iter().any(|&a| a)
                || out.iter().all(|o| o.token_ids.len() >= cfg.max_new_tokens)
            {
                break;
            }
            // Rows that stopped this step still feed their last token (masked out afterwards is
            // unnecessary: their outputs are ignored), finished rows feed padding.
            let real: Vec<bool> = active.clone();
            let l = self.decode_step(&next, &real, &mut cache)?;
            logits = rows(l)?;
        }
        Ok(out)
    }

    /// [`XGenMM::generate`] through beam search: the best hypothesis per prompt, its tokens
    /// replayed through `on_token`.
    fn generate_with_beams(
        &self,
        input: &MultimodalInput,
        cfg: &GenerationConfig,
        mut on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Generated>, ModelError> {
        let searched = self.beam_search(input, cfg)?;
        Ok(searched
            .into_iter()
            .enumerate()
            .map(|(row, out)| {
                let best = out.hypotheses.into_iter().next();
                let (mut token_ids, mut finish, score) = match best {
                    Some(h) => (h.token_ids, h.finish, Some(h.score)),
                    None => (Vec::new(), FinishReason::Length, None),
                };
                if let Some(cut) = token_ids.iter().position(|&t| !on_token(row, t)) {
                    token_ids.truncate(cut + 1);
                    finish = FinishReason::Cancelled;
                }
                Generated {
                    token_ids,
                    top_logprobs: Vec::new(),
                    finish,
                    prompt_len: out.prompt_len,
                    vision_tokens: out.vision_tokens,
                    sequence_score: score,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        let cfg = GenerationConfig::default();
        let mut rng = SplitMix64::new(0);
        assert_eq!(pick_token(&[0.0, 2.0, 2.0, 1.0], &cfg, &mut rng), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_sampling_is_seeded() {
        let logits = [0.1, 0.5, 3.0, 0.2];
        let cfg = GenerationConfig {
            temperature: Some(1.0),
            top_k: Some(1),
            ..Default::default()
        };
        assert_eq!(pick_token(&logits, &cfg, &mut SplitMix64::new(9)), 2);
        let cfg = GenerationConfig {
            temperature: Some(5.0),
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut r = SplitMix64::new(3);
            (0..20).map(|_| pick_token(&logits, &cfg, &mut r)).collect()
        };
        let b: Vec<u32> = {
            let mut r = SplitMix64::new(3);
            (0..20).map(|_| pick_token(&logits, &cfg, &mut r)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&t| t != 2), "high temperature should explore");
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // p(2) ~ 0.99: top_p 0.5 keeps only token 2.
        let logits = [0.0, 0.0, 6.0, 0.0];
        let cfg = GenerationConfig {
            temperature: Some(1.0),
            top_p: Some(0.5),
            ..Default::default()
        };
        let mut r = SplitMix64::new(1);
        assert!((0..50).all(|_| pick_token(&logits, &cfg, &mut r) == 2));
    }

    #[test]
    fn validate_rejects_out_of_range_sampling_settings() {
        let with = |temperature, top_k, top_p| GenerationConfig {
            temperature,
            top_k,
            top_p,
            ..Default::default()
        };
        for ok in [
            with(None, None, None),
            with(Some(0.0), None, None),
            with(Some(0.7), Some(1), Some(1.0)),
            with(Some(2.0), Some(50), Some(0.01)),
        ] {
            ok.validate().unwrap();
        }
        let cases = [
            (
                with(Some(f32::NAN), None, None),
                "temperature NaN",
                "finite number >= 0",
            ),
            (
                with(Some(f32::INFINITY), None, None),
                "temperature inf",
                ">= 0",
            ),
            (with(Some(-0.5), None, None), "temperature -0.5", ">= 0"),
            (with(Some(1.0), None, Some(2.0)), "top_p 2", "(0, 1]"),
            (with(Some(1.0), None, Some(0.0)), "top_p 0", "(0, 1]"),
            (with(Some(1.0), None, Some(f32::NAN)), "top_p NaN", "(0, 1]"),
            (with(Some(1.0), Some(0), None), "top_k 0", "at least 1"),
        ];
        for (cfg, what, range) in cases {
            let msg = cfg.validate().unwrap_err().to_string();
            assert!(msg.contains(what) && msg.contains(range), "{msg}");
        }
    }

    #[test]
    fn logprobs_are_normalised() {
        let lp = top_logprobs(&[1.0, 2.0, 3.0], 3);
        assert_eq!(lp[0].0, 2);
        let total: f32 = lp.iter().map(|x| x.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }
}
