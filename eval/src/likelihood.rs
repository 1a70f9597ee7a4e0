//! Likelihood-based preference accuracy: for each item (an image, a prompt, a faithful answer and
//! an unfaithful one), does the model give the faithful answer the higher log-likelihood? This is
//! the held-out measure of what DPO optimises, and a hallucination test when the unfaithful answer
//! names an object the image lacks.
//!
//! [`synthetic_hallucination_pairs`] builds such items from a synthetic corpus's held-out `eval/`
//! split: the first reference caption of an image is the faithful answer, and the same caption
//! with one object's shape replaced by a shape absent from the image is the hallucinated one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use blip3_data::sample::{Origin, Role, Turn};
use blip3_data::template::ChatTemplate;
use blip3_model::scoring::sequence_logprobs;
use blip3_model::{ImageInput, MultimodalInput};
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
    let template = ChatTemplate::default();
    let tok = &model.tokenizer;
    let mut margins = Vec::new();
    let mut failures = 0;
    for chunk in items.chunks(batch.max(1)) {
        let mut input = MultimodalInput::default();
        let mut ok = 0;
        for item in chunk {
            let encoded = (|| -> Result<_, String> {
                let rgb = blip3_data::image::decode_path(&item.image).map_err(|e| e.to_string())?;
                let p = model.processor.process(&rgb).map_err(|e| e.to_string())?;
                let n_vis = model.model.vision_token_count(p.num_views);
                let origin = Origin { file: item.image.display().to_string(), key: item.key.clone() };
                let mut seqs = Vec::new();
                for answer in [&item.chosen, &item.rejected] {
                    let turns = [
                        Turn { role: Role::User, text: format!("<image>\n{}", item.prompt) },
                        Turn { role: Role::Assistant, text: answer.clone() },
                    ];
                    let e = template.encode_conversation(tok, &turns, &[n_vis], &origin).map_err(|e| e.to_string())?;
                    seqs.push((e.input_ids, e.labels));
                }
                Ok((p, seqs))
            })();
            match encoded {
                Ok((p, seqs)) => {
                    let [v, c, s, _] = p.shape();
                    let image = ImageInput::from_host(
                        p.pixels,
                        v,
                        c,
                        s,
                        (p.grid_cols as usize, p.grid_rows as usize),
                        (p.original_width as usize, p.original_height as usize),
                        &model.device,
                    )?;
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
        let labels = out.fused.labels.as_ref().ok_or_else(|| EvalError::Config("no labels".into()))?;
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

/// The shapes of the synthetic corpus (an absent one replaces a present one).
const SHAPES: [&str; 7] = ["circle", "square", "triangle", "star", "cross", "ring", "diamond"];

fn read_json(path: &Path) -> Result<Value, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::format(path.display(), e.to_string()))
}

/// Held-out hallucination pairs from a synthetic corpus directory (see the module docs), at most
/// `limit` of them, in image order.
pub fn synthetic_hallucination_pairs(corpus: &Path, limit: usize) -> Result<Vec<PreferenceItem>, EvalError> {
    let eval = corpus.join("eval");
    let captions = read_json(&eval.join("captions.json"))?;
    let mut first_caption: BTreeMap<i64, String> = BTreeMap::new();
    for a in captions["annotations"].as_array().into_iter().flatten() {
        if let (Some(id), Some(c)) = (a["image_id"].as_i64(), a["caption"].as_str()) {
            first_caption.entry(id).or_insert_with(|| c.to_string());
        }
    }
    let mut files: BTreeMap<String, i64> = BTreeMap::new();
    for im in captions["images"].as_array().into_iter().flatten() {
        if let (Some(id), Some(f)) = (im["id"].as_i64(), im["file_name"].as_str()) {
            files.insert(f.to_string(), id);
        }
    }
    let scenes_path = eval.join("scenes.jsonl");
    let scenes = std::fs::read_to_string(&scenes_path).map_err(|e| EvalError::io(&scenes_path, e))?;
    let mut out = Vec::new();
    for line in scenes.lines() {
        if out.len() >= limit {
            break;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| EvalError::format(scenes_path.display(), e.to_string()))?;
        let Some(image) = v["image"].as_str() else { continue };
        let file = Path::new(image).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        let Some(id) = files.get(&file) else { continue };
        let Some(caption) = first_caption.get(id) else { continue };
        let objects: Vec<(String, String)> = v["scene"]["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| Some((o["color"].as_str()?.to_string(), o["shape"].as_str()?.to_string())))
            .collect();
        let present: Vec<&str> = objects.iter().map(|o| o.1.as_str()).collect();
        let Some(absent) = SHAPES.iter().find(|s| !present.contains(s)) else { continue };
        let Some((color, shape)) = objects.iter().find(|(c, s)| caption.contains(&format!("{c} {s}"))) else {
            continue;
        };
        let rejected = caption.replacen(&format!("{color} {shape}"), &format!("{color} {absent}"), 1);
        out.push(PreferenceItem {
            key: format!("hallucination-{id}"),
            image: eval.join(image),
            prompt: "What is in this picture?".into(),
            chosen: caption.clone(),
            rejected,
        });
    }
    Ok(out)
}
