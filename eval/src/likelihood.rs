//! Likelihood-based preference accuracy: for each item (an image, a prompt, a faithful answer and
//! an unfaithful one), does the model give the faithful answer the higher log-likelihood? This is
//! the held-out measure of what DPO optimises, and a hallucination test when the unfaithful answer
//! names an object the image lacks.
//!
//! [`synthetic_hallucination_pairs`] reads such items from a synthetic corpus's held-out `eval/`
//! split (pairs made like the DPO training pairs, on held-out images).

use std::path::{Path, PathBuf};

use blip3_data::sample::{Origin, Role, Turn};
use blip3_model::MultimodalInput;
use blip3_model::scoring::sequence_logprobs;
use blip3_processor::image_input;
use burn::tensor::DType;
use serde_json::Value;

use crate::engine::EvalModel;
use crate::error::EvalError;

/// One preference item.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceItem {
    /// Identifier.
    pub key: String,
    /// The image.
    pub image: PathBuf,
    /// The user's question (an `<image>` marker is prepended).
    pub prompt: String,
    /// The faithful answer.
    pub chosen: String,
    /// The unfaithful answer.
    pub rejected: String,
}

/// Scores of a preference benchmark.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreferenceScores {
    /// Share of items whose faithful answer is more likely.
    pub accuracy: f64,
    /// Mean log-likelihood margin (faithful − unfaithful), in nats.
    pub mean_margin: f64,
    /// Items scored.
    pub items: usize,
    /// Items that could not be scored (image or tokenisation failures).
    pub failures: usize,
}

/// Scores `items` with `model` in batches of `batch` items.
pub fn preference_accuracy(
    model: &EvalModel,
    items: &[PreferenceItem],
    batch: usize,
) -> Result<PreferenceScores, EvalError> {
    let template = model.processor.template();
    let tok = model.processor.tokenizer();
    let mut margins = Vec::new();
    let mut failures = 0;
    for chunk in items.chunks(batch.max(1)) {
        let mut input = MultimodalInput::default();
        let mut ok = 0;
        for item in chunk {
            let encoded = (|| -> Result<_, String> {
                let rgb = blip3_data::image::decode_path(&item.image).map_err(|e| e.to_string())?;
                let p = model
                    .processor
                    .image_processor()
                    .process(&rgb)
                    .map_err(|e| e.to_string())?;
                let n_vis = model.model.vision_token_count(p.num_views);
                let origin = Origin {
                    file: item.image.display().to_string(),
                    key: item.key.clone(),
                };
                let mut seqs = Vec::new();
                for answer in [&item.chosen, &item.rejected] {
                    let turns = [
                        Turn {
                            role: Role::User,
                            text: format!("<image>\n{}", item.prompt),
                        },
                        Turn {
                            role: Role::Assistant,
                            text: answer.clone(),
                        },
                    ];
                    let e = template
                        .encode_conversation(tok, &turns, &[n_vis], &origin)
                        .map_err(|e| e.to_string())?;
                    seqs.push((e.input_ids, e.labels));
                }
                Ok((p, seqs))
            })();
            match encoded {
                Ok((p, seqs)) => {
                    let image = image_input(p, &model.device)?;
                    for (ids, labels) in seqs {
                        input.input_ids.push(ids);
                        input.images.push(vec![image.clone()]);
                        input.labels.get_or_insert_with(Vec::new).push(labels);
                    }
                    ok += 1;
                }
                Err(e) => {
                    log::warn!("preference item {}: {e}", item.key);
                    failures += 1;
                }
            }
        }
        if ok == 0 {
            continue;
        }
        let out = model.model.forward(&input)?;
        let labels = out
            .fused
            .labels
            .as_ref()
            .ok_or_else(|| EvalError::Config("no labels".into()))?;
        let lp: Vec<f32> = sequence_logprobs(out.logits, labels)
            .cast(DType::F32)
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| EvalError::Config(format!("reading log-probabilities: {e:?}")))?;
        for pair in lp.chunks_exact(2) {
            margins.push((pair[0] - pair[1]) as f64);
        }
    }
    let n = margins.len();
    Ok(PreferenceScores {
        accuracy: margins.iter().filter(|&&m| m > 0.0).count() as f64 / n.max(1) as f64,
        mean_margin: margins.iter().sum::<f64>() / n.max(1) as f64,
        items: n,
        failures,
    })
}

/// Held-out hallucination pairs of a synthetic corpus directory (`eval/dpo_pairs.jsonl`: pairs
/// built like the DPO training pairs, on held-out images; the rejected answer names an object the
/// image lacks), at most `limit` of them, in file order.
pub fn synthetic_hallucination_pairs(
    corpus: &Path,
    limit: usize,
) -> Result<Vec<PreferenceItem>, EvalError> {
    let path = corpus.join("eval/dpo_pairs.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        if out.len() >= limit {
            break;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            EvalError::format(format!("{}:{}", path.display(), n + 1), e.to_string())
        })?;
        let field = |k: &str| {
            v[k].as_str().map(str::to_string).ok_or_else(|| {
                EvalError::format(
                    format!("{}:{}", path.display(), n + 1),
                    format!("no string field {k:?}"),
                )
            })
        };
        out.push(PreferenceItem {
            key: field("id")?,
            image: corpus.join("eval").join(field("image")?),
            prompt: field("prompt")?,
            chosen: field("chosen")?,
            rejected: field("rejected")?,
        });
    }
    Ok(out)
}
