//! Beam search with Hugging Face `generate(num_beams=K)` semantics (transformers 5.x).
//!
//! Each prompt keeps `K` running beams and a list of `K` finished hypotheses. One step:
//!
//! 1. every running beam's next-token log-probabilities (`log_softmax`, f32) are added to its
//!    running score (a sum of log-probabilities; at the start beam 0 scores 0 and the others
//!    `-1e9`, so the first step expands one beam only);
//! 2. the best `max(2, 1 + n_stop) · K` candidates over all `K · V` continuations are kept, best
//!    first (ties: lower beam, then lower token id);
//! 3. a candidate "hits" when its token is a stop id or the row reaches `max_new_tokens`; among
//!    the first `K` candidates, hits become finished hypotheses scored
//!    `sum_logprobs / generated_len ^ length_penalty` (the stop token counts in the length), merged
//!    with the earlier ones, keeping the best `K`;
//! 4. the best `K` candidates that did not hit continue; the KV cache rows are reordered to follow
//!    them (rows are gathered, never recomputed).
//!
//! The search of a prompt ends as [`EarlyStopping`] says: `AllFinished` (HF `True`) once `K`
//! hypotheses are finished; `Heuristic` (HF `False`, the default) once additionally the best
//! running beam, scored at the current length, cannot beat the worst finished one; `Never`
//! likewise but scored at `max_new_tokens` when `length_penalty > 0`. The additive `-1e9` masks
//! and the order of the updates follow HF's implementation, so that the same logits give the same
//! tokens; the fixtures in `tests/fixtures/model/beam_*` check this against HF `generate`.

use crate::error::ModelError;
use crate::generate::{EarlyStopping, FinishReason, GenerationConfig, rows};
use crate::phi3::KvCache;
use crate::xgenmm::{MultimodalInput, XGenMM};

/// A finished beam-search hypothesis.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamHypothesis {
    /// Generated ids (the stop id included when produced).
    pub token_ids: Vec<u32>,
    /// `sum of log-probabilities / len(token_ids) ^ length_penalty` (HF `sequences_scores`).
    pub score: f32,
    /// [`FinishReason::Stop`] when the last id is a stop id, else [`FinishReason::Length`].
    pub finish: FinishReason,
}

/// The beam-search result of one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamSearchOutput {
    /// The best `num_return_sequences` hypotheses, best first.
    pub hypotheses: Vec<BeamHypothesis>,
    /// Prompt positions (text tokens plus inserted vision tokens).
    pub prompt_len: usize,
    /// Vision embeddings inserted in the prompt.
    pub vision_tokens: usize,
}

/// HF's "impossible" score, added to mask candidates out.
const MASKED: f32 = -1.0e9;

/// The search state of one prompt (HF's per-batch-item tensors).
struct PromptBeams {
    /// Generated ids of each running beam.
    running: Vec<Vec<u32>>,
    /// Summed log-probabilities of each running beam (best first after the first step).
    running_scores: Vec<f32>,
    /// Finished hypotheses, best first, with their length-penalised scores.
    finished: Vec<Vec<u32>>,
    finished_scores: Vec<f32>,
    /// Which finished slots hold a real hypothesis.
    finished_real: Vec<bool>,
    /// HF `is_early_stop_heuristic_unsatisfied`: an open beam may still improve the result.
    improvable: bool,
}

impl PromptBeams {
    fn new(k: usize) -> Self {
        let mut running_scores = vec![MASKED; k];
        running_scores[0] = 0.0;
        PromptBeams {
            running: vec![Vec::new(); k],
            running_scores,
            finished: vec![Vec::new(); k],
            finished_scores: vec![MASKED; k],
            finished_real: vec![false; k],
            improvable: true,
        }
    }

    fn all_finished(&self) -> bool {
        self.finished_real.iter().all(|&f| f)
    }
}

/// One candidate continuation: summed score, source beam, token.
#[derive(Clone, Copy)]
struct Candidate {
    score: f32,
    beam: usize,
    token: u32,
}

/// `log_softmax` of a row, rounded to f32.
fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&v| (v as f64 - lse) as f32).collect()
}

/// The `n` best of `items` by score, best first; ties keep the earlier item first (what
/// `torch.topk` gives on CPU).
fn top_n<T>(items: &[T], n: usize, score: impl Fn(&T) -> f32) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.sort_by(|&a, &b| {
        score(&items[b])
            .total_cmp(&score(&items[a]))
            .then(a.cmp(&b))
    });
    idx.truncate(n);
    idx
}

/// The best `n` continuations of all beams of a prompt (`beam_logprobs[j][v] + scores[j]`).
fn best_continuations(beam_logprobs: &[Vec<f32>], scores: &[f32], n: usize) -> Vec<Candidate> {
    // Each beam contributes at most `n` candidates, so a per-beam preselection is exact.
    let mut pool = Vec::with_capacity(beam_logprobs.len() * n);
    for (beam, (lp, &base)) in beam_logprobs.iter().zip(scores).enumerate() {
        let summed: Vec<f32> = lp.iter().map(|&l| l + base).collect();
        let mut order: Vec<usize> = (0..summed.len()).collect();
        let n = n.min(order.len());
        if n < order.len() {
            order.select_nth_unstable_by(n, |&a, &b| {
                summed[b].total_cmp(&summed[a]).then(a.cmp(&b))
            });
            order.truncate(n);
        }
        pool.extend(order.into_iter().map(|t| Candidate {
            score: summed[t],
            beam,
            token: t as u32,
        }));
    }
    // Flat index order (beam, then token) breaks ties, as in HF's flattened top-k.
    pool.sort_by_key(|c| (c.beam, c.token));
    top_n(&pool, n, |c| c.score)
        .into_iter()
        .map(|i| pool[i])
        .collect()
}

impl XGenMM {
    /// Beam search over every prompt of the batch (see the module documentation for the exact
    /// rules). Needs `cfg.num_beams >= 1` and greedy settings (no temperature); returns per
    /// prompt the best `cfg.num_return_sequences` hypotheses.
    pub fn beam_search(
        &self,
        input: &MultimodalInput,
        cfg: &GenerationConfig,
    ) -> Result<Vec<BeamSearchOutput>, ModelError> {
        cfg.validate()?;
        let k = cfg.num_beams.max(1);
        let batch = input.input_ids.len();
        let mut cache = KvCache::new();
        let (first, fused) = self.prefill(input, &mut cache)?;
        let summary = |i: usize| {
            (
                fused.mask[i].iter().filter(|&&m| m).count(),
                fused.vision_tokens[i],
            )
        };
        let mut stop_ids = cfg.stop_ids.clone();
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let keep = 2.max(1 + stop_ids.len()) * k;
        let mut beams: Vec<PromptBeams> = (0..batch).map(|_| PromptBeams::new(k)).collect();

        if cfg.max_new_tokens > 0 {
            // Every beam of a prompt starts from the prompt's cache row: gathered, not recomputed.
            let expand: Vec<usize> = (0..batch).flat_map(|i| std::iter::repeat_n(i, k)).collect();
            cache.retain_rows(&expand)?;
            let first = rows(first)?;
            let mut logits: Vec<Vec<f32>> = expand.iter().map(|&i| first[i].clone()).collect();
            let mut generated = 0;
            loop {
                generated += 1;
                let mut all_hit = true;
                let mut sources = Vec::with_capacity(batch * k);
                let mut next_tokens = Vec::with_capacity(batch * k);
                for (p, state) in beams.iter_mut().enumerate() {
                    let beam_logprobs: Vec<Vec<f32>> =
                        (0..k).map(|j| log_softmax(&logits[p * k + j])).collect();
                    let cands = best_continuations(&beam_logprobs, &state.running_scores, keep);
                    let hits: Vec<bool> = cands
                        .iter()
                        .map(|c| {
                            stop_ids.binary_search(&c.token).is_ok()
                                || generated >= cfg.max_new_tokens
                        })
                        .collect();
                    all_hit &= hits.iter().all(|&h| h);
                    update_finished(state, &cands, &hits, k, generated, cfg);
                    // The best K candidates that did not hit continue.
                    let masked: Vec<f32> = cands
                        .iter()
                        .zip(&hits)
                        .map(|(c, &h)| c.score + if h { MASKED } else { 0.0 })
                        .collect();
                    let chosen = top_n(&masked, k, |&s| s);
                    let running: Vec<Vec<u32>> = chosen
                        .iter()
                        .map(|&c| {
                            let mut ids = state.running[cands[c].beam].clone();
                            ids.push(cands[c].token);
                            ids
                        })
                        .collect();
                    state.running_scores = chosen.iter().map(|&c| masked[c]).collect();
                    state.running = running;
                    for &c in &chosen {
                        sources.push(p * k + cands[c].beam);
                        next_tokens.push(cands[c].token);
                    }
                }
                // HF's stopping test, after the step: can any prompt still improve?
                for state in beams.iter_mut() {
                    update_improvable(state, generated, cfg);
                }
                let improvable = beams.iter().any(|s| s.improvable);
                let open = !(cfg.early_stopping == EarlyStopping::AllFinished
                    && beams.iter().all(PromptBeams::all_finished));
                if !(improvable && open && !all_hit) {
                    break;
                }
                cache.retain_rows(&sources)?;
                let real = vec![true; next_tokens.len()];
                logits = rows(self.decode_step(&next_tokens, &real, &mut cache)?)?;
            }
        }

        let n = cfg.num_return_sequences.clamp(1, k);
        Ok(beams
            .into_iter()
            .enumerate()
            .map(|(p, state)| {
                let (prompt_len, vision_tokens) = summary(p);
                let hypotheses = (0..k)
                    .filter(|&s| state.finished_real[s] || cfg.max_new_tokens == 0)
                    .take(n)
                    .map(|s| {
                        let token_ids = state.finished[s].clone();
                        let stopped = token_ids
                            .last()
                            .is_some_and(|t| stop_ids.binary_search(t).is_ok());
                        BeamHypothesis {
                            score: if state.finished_real[s] {
                                state.finished_scores[s]
                            } else {
                                0.0
                            },
                            finish: if stopped {
                                FinishReason::Stop
                            } else {
                                FinishReason::Length
                            },
                            token_ids,
                        }
                    })
                    .collect();
                BeamSearchOutput {
                    hypotheses,
                    prompt_len,
                    vision_tokens,
                }
            })
            .collect())
    }
}

/// HF `_update_finished_beams`: the first `k` candidates that hit become finished hypotheses
/// (length-penalised), merged with the earlier ones; the best `k` stay.
fn update_finished(
    state: &mut PromptBeams,
    cands: &[Candidate],
    hits: &[bool],
    k: usize,
    generated: usize,
    cfg: &GenerationConfig,
) {
    let norm = (generated as f64).powf(cfg.length_penalty as f64) as f32;
    let full = state.all_finished() && cfg.early_stopping == EarlyStopping::AllFinished;
    let mut merged: Vec<(f32, bool, Vec<u32>)> = (0..k)
        .map(|s| {
            (
                state.finished_scores[s],
                state.finished_real[s],
                std::mem::take(&mut state.finished[s]),
            )
        })
        .collect();
    for (c, (cand, &hit)) in cands.iter().zip(hits).enumerate() {
        let just_finished = hit && c < k;
        let mut score = cand.score / norm;
        if full {
            score += MASKED;
        }
        if !state.improvable {
            score += MASKED;
        }
        if !just_finished {
            score += MASKED;
        }
        // Only candidates that can be chosen need their ids.
        let ids = if just_finished {
            let mut ids = state.running[cand.beam].clone();
            ids.push(cand.token);
            ids
        } else {
            Vec::new()
        };
        merged.push((score, just_finished, ids));
    }
    let best = top_n(&merged, k, |m| m.0);
    let mut merged: Vec<Option<(f32, bool, Vec<u32>)>> = merged.into_iter().map(Some).collect();
    for (slot, i) in best.into_iter().enumerate() {
        if let Some((score, real, ids)) = merged[i].take() {
            state.finished_scores[slot] = score;
            state.finished_real[slot] = real;
            state.finished[slot] = ids;
        }
    }
}

/// HF `_check_early_stop_heuristic`: whether the best running beam could still beat the worst
/// finished hypothesis (sticky once false).
fn update_improvable(state: &mut PromptBeams, generated: usize, cfg: &GenerationConfig) {
    let length = if cfg.early_stopping == EarlyStopping::Never && cfg.length_penalty > 0.0 {
        cfg.max_new_tokens
    } else {
        generated
    };
    let norm = (length as f64).powf(cfg.length_penalty as f64) as f32;
    let best_possible = state.running_scores[0] / norm;
    let worst = state
        .finished_scores
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min);
    let beatable = state
        .finished_real
        .iter()
        .any(|&real| best_possible > if real { worst } else { MASKED });
    state.improvable &= beatable;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_are_ranked_over_all_beams_with_index_ties() {
        let lp = vec![vec![-1.0, -0.5, -3.0], vec![-0.1, -0.5, -2.0]];
        let cands = best_continuations(&lp, &[0.0, -1.0], 3);
        let got: Vec<(usize, u32)> = cands.iter().map(|c| (c.beam, c.token)).collect();
        // Scores: b0 [-1, -0.5, -3], b1 [-1.1, -1.5, -3]: -0.5 (0,1), -1 (0,0), -1.1 (1,0).
        assert_eq!(got, vec![(0, 1), (0, 0), (1, 0)]);
        // A tie keeps the lower flat index first.
        let cands = best_continuations(&[vec![-1.0, -1.0], vec![-1.0, -2.0]], &[0.0, 0.0], 3);
        let got: Vec<(usize, u32)> = cands.iter().map(|c| (c.beam, c.token)).collect();
        assert_eq!(got, vec![(0, 0), (0, 1), (1, 0)]);
    }

    #[test]
    fn log_softmax_is_normalised() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
