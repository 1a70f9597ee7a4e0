//! VLGuard safety evaluation (test split; file format in docs/data.md, "Dataset formats").
//!
//! Each `instr-resp` entry of `test.json` is one prompt: the image and the instruction, asked
//! through the chat template (`<image>\n{instruction}`). Prompts fall in VLGuard's three
//! splits: `unsafes` (unsafe image), `safe_unsafes` (safe image, unsafe instruction) and
//! `safe_safes` (safe image, safe instruction). Responses are judged with VLGuard's refusal
//! phrases ([`crate::metrics::safety`]): the attack success rate `asr` is the share of
//! non-refusals on the two unsafe splits together (lower is better; the paper's VLGuard number
//! is this, in percent), `asr_unsafes` and `asr_safe_unsafes` per split, and `helpfulness` the
//! share of non-refusals on `safe_safes`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use blip3_data::readers::json_stream::StreamOptions;
use blip3_data::readers::llava::ImageRoots;
use blip3_data::readers::safety::{SafetyOptions, VlGuardReader};
use blip3_data::sample::{RawSample, Role};

use super::{Benchmark, BuildContext, Item, PromptStyle, Scored, Task, Truth, annotation_problem};
use crate::engine::{PostProcess, Prompt, Request};
use crate::error::EvalError;
use crate::metrics::safety::{self, SafetyItem, SafetySplit};

/// Budget of a response: long enough for the refusal phrases, which come first.
pub const MAX_NEW_TOKENS: usize = 64;

/// The file of a safety benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetySpec {
    /// Benchmark name (`vlguard`).
    pub name: String,
    /// The VLGuard `test.json` (or a JSONL copy).
    pub file: PathBuf,
    /// The directory its `image` paths are relative to.
    pub images: PathBuf,
}

/// Loads a VLGuard benchmark; the limit counts prompts.
pub fn build(spec: &SafetySpec, ctx: &BuildContext) -> Result<Benchmark, EvalError> {
    let options = SafetyOptions {
        roots: ImageRoots::new(&spec.images),
        check_images: false,
    };
    let reader = VlGuardReader::open(&spec.file, options, StreamOptions::default())?;
    let max_new_tokens = ctx.budget(MAX_NEW_TOKENS);
    let mut items = Vec::new();
    let mut problems = Vec::new();
    for (_, sample) in reader {
        let sample = match sample {
            Ok(s) => s,
            Err(e) => {
                problems.push(annotation_problem(&spec.name, &e));
                continue;
            }
        };
        if ctx.limit.is_some_and(|n| items.len() >= n) {
            continue;
        }
        let RawSample::Conversation {
            origin,
            images,
            turns,
        } = sample.sample
        else {
            continue;
        };
        let Some(user) = turns.iter().find(|t| t.role == Role::User) else {
            continue;
        };
        let split = match (sample.image_safe, sample.prompt_safe) {
            (false, _) => SafetySplit::Unsafes,
            (true, false) => SafetySplit::SafeUnsafes,
            (true, true) => SafetySplit::SafeSafes,
        };
        items.push(Item {
            request: Request {
                key: format!("{}/{}", spec.name, origin.key),
                prompt: Prompt::Chat(user.text.clone()),
                images,
                max_new_tokens,
                post: PostProcess::Trim,
            },
            truth: Truth::Safety { split },
        });
    }
    Ok(Benchmark {
        name: spec.name.clone(),
        task: Task::Safety,
        style: PromptStyle::Chat,
        shots: 0,
        items,
        problems,
        support: None,
        max_new_tokens,
    })
}

/// VLGuard ASR and helpfulness of the answered prompts (splits without prompts are left out).
pub fn score(name: &str, pairs: &[(&Truth, &str)]) -> Result<Scored, EvalError> {
    let items: Vec<SafetyItem> = pairs
        .iter()
        .filter_map(|(truth, answer)| match truth {
            Truth::Safety { split } => Some(SafetyItem {
                split: *split,
                response: answer.to_string(),
            }),
            _ => None,
        })
        .collect();
    let s = safety::score(&items).map_err(|e| EvalError::metrics(name, e))?;
    let mut metrics = BTreeMap::new();
    for (k, v) in [
        ("asr", s.asr),
        ("asr_unsafes", s.asr_unsafes),
        ("asr_safe_unsafes", s.asr_safe_unsafes),
        ("helpfulness", s.helpfulness),
    ] {
        if let Some(v) = v {
            metrics.insert(k.to_string(), v);
        }
    }
    Ok(Scored {
        metrics,
        breakdown: BTreeMap::new(),
    })
}
