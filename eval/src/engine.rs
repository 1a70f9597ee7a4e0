//! The evaluation engine: batched, resumable generation over a list of requests.
//!
//! [`EvalModel`] bundles what generation needs: the model, its [`Processor`] (tokenizer, image
//! pipeline and chat template, read from the model directory by `blip3_processor`'s one rule, see
//! docs/model.md §"Model directories") and the model hash of [`crate::fingerprint`].
//!
//! [`Engine::run`] takes the requests of one benchmark, skips those whose answers are already in
//! the [`AnswerStore`] (resume), and generates the rest in batches of `batch_size` with left
//! padding and the KV cache ([`XGenMM::generate`]), greedy unless sampling is configured. Each
//! answer is appended to the store (one flushed JSON line) as soon as its batch finishes. Images
//! are decoded and processed per batch (any-res per the model config) by the processor; prompts
//! are encoded as raw text with BOS (few-shot prompts) or through the Phi-3 chat template. An image that does not decode, a prompt that cannot be
//! encoded, a sequence longer than the model's context or a batch the model rejects become
//! per-item failures (after retrying a rejected batch item by item), never a crash.
//!
//! Generation stops at `<|endofchunk|>` for raw few-shot prompts (OpenFlamingo passes it as
//! `eos_token_id`) and at `<|end|>` for chat prompts, and at EOS in both cases. The generated ids
//! are cut before the first stop id and decoded with special tokens skipped.

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use blip3_data::progress::Progress;
use blip3_data::sample::ImageSource;
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::loader::LoadOptions;
use blip3_model::{AspectMode, GenerationConfig, ImageInput, MultimodalInput, XGenMM};
use blip3_processor::{EncodedPrompt, Processor, PromptFormat};

pub use blip3_processor::TokenizerSource;

use crate::answers::{AnswerRecord, AnswerStore, Failure, FailureKind};
use crate::error::EvalError;
use crate::fingerprint::{Fnv1a64, model_hash};
use crate::prompts::{postprocess_caption, postprocess_vqa};

/// What the report says about the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model directory (or a name for a model built in memory).
    pub source: String,
    /// The model hash, `fnv1a64:<hex>` (see [`crate::fingerprint`]).
    pub hash: String,
    /// The files the hash covers.
    pub hashed_files: Vec<String>,
    /// Where the tokenizer came from.
    pub tokenizer: String,
    /// The base view size in pixels.
    pub image_size: usize,
    /// `anyres` or `fixed`.
    pub image_aspect_ratio: String,
    /// Candidate any-res canvases (width, height) in pixels.
    pub anyres_grids: Vec<(usize, usize)>,
    /// The float dtype of the weights as loaded.
    pub dtype: String,
}

/// A model ready for evaluation: weights, processor and identity.
#[derive(Debug)]
pub struct EvalModel {
    /// The model.
    pub model: XGenMM,
    /// Its tokenizer, image pipeline and chat template.
    pub processor: Processor,
    /// The device the model lives on.
    pub device: Device,
    /// Identity for reports.
    pub info: ModelInfo,
}

impl EvalModel {
    /// Loads a model directory (native checkpoint or HF layout) with its processor
    /// ([`blip3_processor::load`]) and hashes its weight files.
    pub fn load(
        dir: &Path,
        tokenizer: &TokenizerSource,
        device: &Device,
        dtype: Option<DType>,
    ) -> Result<Self, EvalError> {
        let loaded = blip3_processor::load(dir, tokenizer, device, LoadOptions { dtype })?;
        let (hash, hashed_files) = model_hash(dir)?;
        let mut eval = Self::with_processor(
            loaded.model,
            loaded.processor,
            device,
            dir.display().to_string(),
            hash,
        );
        eval.info.hashed_files = hashed_files;
        eval.info.tokenizer = loaded.dir.tokenizer_name;
        Ok(eval)
    }

    /// Wraps a model built in memory. `source` names it in reports and `hash` identifies its
    /// weights (use [`crate::fingerprint::model_hash`] for a saved model). The processor is the
    /// one the model's config implies ([`Processor::for_config`]) and the model's special token
    /// ids are set from the tokenizer, whose vocabulary must match the model's.
    pub fn new(
        model: XGenMM,
        tokenizer: Blip3Tokenizer,
        device: &Device,
        source: String,
        hash: String,
    ) -> Result<Self, EvalError> {
        let processor = Processor::for_config(tokenizer, model.config())?;
        let model = model.with_special_tokens(processor.special_tokens());
        Ok(Self::with_processor(model, processor, device, source, hash))
    }

    fn with_processor(
        model: XGenMM,
        processor: Processor,
        device: &Device,
        source: String,
        hash: String,
    ) -> Self {
        let cfg = model.config();
        let info = ModelInfo {
            source,
            hash,
            hashed_files: Vec::new(),
            tokenizer: processor.tokenizer().source().to_string(),
            image_size: cfg.vision.image_size,
            image_aspect_ratio: match cfg.image_aspect_ratio {
                AspectMode::AnyRes => "anyres".into(),
                AspectMode::Fixed => "fixed".into(),
            },
            anyres_grids: cfg.anyres_grids.clone(),
            dtype: format!("{:?}", model.dtype()),
        };
        EvalModel {
            model,
            processor,
            device: device.clone(),
            info,
        }
    }
}

/// How a prompt is rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    /// Raw text with `<image>` markers, encoded with BOS (few-shot prompts for base models);
    /// generation stops at `<|endofchunk|>`.
    Raw(String),
    /// The text of one user turn, rendered with the Phi-3 chat template (system turn added);
    /// generation stops at `<|end|>`.
    Chat(String),
}

impl Prompt {
    /// The prompt's text.
    pub fn text(&self) -> &str {
        match self {
            Prompt::Raw(t) | Prompt::Chat(t) => t,
        }
    }

    /// How the processor encodes it.
    pub fn format(&self) -> PromptFormat {
        match self {
            Prompt::Raw(_) => PromptFormat::Raw,
            Prompt::Chat(_) => PromptFormat::Chat,
        }
    }
}

/// Post-processing of the decoded generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostProcess {
    /// Trimmed text.
    Trim,
    /// OpenFlamingo's captioning post-processing ([`postprocess_caption`]).
    FewShotCaption,
    /// OpenFlamingo's VQA post-processing ([`postprocess_vqa`]).
    FewShotVqa,
    /// OpenFlamingo's OK-VQA post-processing: the VQA cut, then its NLTK/`inflection` stemming
    /// ([`crate::metrics::okvqa::postprocess_ok_vqa_generation`]).
    FewShotOkVqa,
}

impl PostProcess {
    /// Applies the post-processing.
    pub fn apply(self, text: &str) -> String {
        match self {
            PostProcess::Trim => text.trim().to_string(),
            PostProcess::FewShotCaption => postprocess_caption(text),
            PostProcess::FewShotVqa => postprocess_vqa(text),
            PostProcess::FewShotOkVqa => crate::metrics::okvqa::postprocess_ok_vqa_generation(text),
        }
    }
}

impl Request {
    /// The decoding of the request's protocol: OpenFlamingo's beam search for few-shot
    /// captioning and VQA (every post-processing but [`PostProcess::Trim`]), greedy for
    /// instruction prompts.
    pub fn protocol_beams(&self) -> Beams {
        if self.post == PostProcess::Trim {
            Beams::GREEDY
        } else {
            Beams::OPENFLAMINGO
        }
    }
}

/// One generation to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Unique key within the report, `benchmark/id`.
    pub key: String,
    /// The prompt; it holds one `<image>` marker per image.
    pub prompt: Prompt,
    /// The images, in marker order (in-context examples first, the query image last).
    pub images: Vec<ImageSource>,
    /// The generation budget.
    pub max_new_tokens: usize,
    /// How the answer is derived from the generation.
    pub post: PostProcess,
}

/// Beam-search settings of a request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Beams {
    /// Beams (1: greedy decoding).
    pub num_beams: usize,
    /// HF `length_penalty` of finished beams.
    pub length_penalty: f32,
}

impl Beams {
    /// Greedy decoding (instruction prompts: LLaVA's and lmms-eval's `num_beams=1`).
    pub const GREEDY: Beams = Beams {
        num_beams: 1,
        length_penalty: 1.0,
    };
    /// The OpenFlamingo harness's few-shot decoding (`evaluate.py`: `num_beams=3`,
    /// `length_penalty=0.0`, `min_generation_length=0`, HF's `early_stopping=False`), which the
    /// paper's base-model numbers come from.
    pub const OPENFLAMINGO: Beams = Beams {
        num_beams: 3,
        length_penalty: 0.0,
    };
}

/// Decoding settings shared by a run. By default each request decodes with its protocol's
/// settings ([`Request::protocol_beams`]); `num_beams` / `length_penalty` override them, and a
/// temperature samples with one beam.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Sampling temperature; `None` is greedy decoding.
    pub temperature: Option<f32>,
    /// Top-k filter when sampling.
    pub top_k: Option<usize>,
    /// Top-p filter when sampling.
    pub top_p: Option<f32>,
    /// Sampler seed (row `i` of a batch uses `seed + i`).
    pub seed: u64,
    /// Overrides every request's beam count.
    #[serde(default)]
    pub num_beams: Option<usize>,
    /// Overrides every request's length penalty.
    #[serde(default)]
    pub length_penalty: Option<f32>,
}

impl Sampling {
    /// Checks the settings with [`GenerationConfig::validate`] (temperature finite and `>= 0`,
    /// `top_p` in `(0, 1]`, `top_k` at least 1).
    pub fn validate(&self) -> Result<(), blip3_model::ModelError> {
        let beams = self.beams(Beams::GREEDY);
        GenerationConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            num_beams: beams.num_beams,
            length_penalty: beams.length_penalty,
            ..GenerationConfig::default()
        }
        .validate()
    }

    /// The beam settings for a request whose protocol asks for `protocol`: the overrides, else
    /// the protocol's; sampling (a temperature above 0) decodes one beam unless `num_beams` says
    /// otherwise (which [`Sampling::validate`] refuses).
    pub fn beams(&self, protocol: Beams) -> Beams {
        let sampling = self.temperature.is_some_and(|t| t > 0.0);
        let base = if sampling { Beams::GREEDY } else { protocol };
        Beams {
            num_beams: self.num_beams.unwrap_or(base.num_beams),
            length_penalty: self.length_penalty.unwrap_or(base.length_penalty),
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    /// Prompts per generation batch.
    pub batch_size: usize,
    /// Decoding settings.
    pub sampling: Sampling,
    /// Show progress (a bar on a terminal, periodic log lines otherwise).
    pub progress: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batch_size: 8,
            sampling: Sampling::default(),
            progress: true,
        }
    }
}

/// What one [`Engine::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    /// Requests given.
    pub requests: usize,
    /// Answers generated by this run.
    pub generated: usize,
    /// Items found in the answers file and skipped.
    pub reused: usize,
    /// Items that failed in this run.
    pub failed: usize,
    /// Seconds spent preparing and generating.
    pub seconds: f64,
}

/// The fingerprint of a request under a model and decoding settings: 16 hex digits of FNV-1a
/// over the model hash, the prompt kind and text, each image's location, the generation budget,
/// the post-processing and the sampling settings.
pub fn request_fingerprint(model_hash: &str, request: &Request, sampling: &Sampling) -> String {
    let mut h = Fnv1a64::new();
    h.field(model_hash);
    h.field(match &request.prompt {
        Prompt::Raw(_) => "raw",
        Prompt::Chat(_) => "chat",
    });
    h.field(request.prompt.text());
    for image in &request.images {
        h.field(&image.describe());
    }
    h.field(&request.max_new_tokens.to_string());
    h.field(&format!("{:?}", request.post));
    h.field(&format!("{sampling:?}"));
    h.field(&format!("{:?}", sampling.beams(request.protocol_beams())));
    h.hex()
}

/// Runs requests through a model.
#[derive(Debug)]
pub struct Engine<'a> {
    model: &'a EvalModel,
    options: EngineOptions,
}

/// A request whose inputs are ready for the model.
struct Prepared<'r> {
    request: &'r Request,
    fingerprint: String,
    prompt: EncodedPrompt,
    images: Vec<ImageInput>,
    positions: usize,
}

impl<'a> Engine<'a> {
    /// An engine over `model`.
    pub fn new(model: &'a EvalModel, options: EngineOptions) -> Self {
        Engine { model, options }
    }

    /// The engine's settings.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Generates answers for every request not yet in `store` and appends them to it. `label`
    /// names the benchmark in progress output. A request whose stored answer has another
    /// fingerprint is an error (the file belongs to another model or other settings).
    pub fn run(
        &self,
        label: &str,
        requests: &[Request],
        store: &mut AnswerStore,
    ) -> Result<RunStats, EvalError> {
        // Invalid settings would fail every batch, each recorded as a per-item failure.
        self.options.sampling.validate()?;
        let start = Instant::now();
        let mut stats = RunStats {
            requests: requests.len(),
            ..RunStats::default()
        };
        let mut pending = Vec::new();
        for request in requests {
            let fp = request_fingerprint(&self.model.info.hash, request, &self.options.sampling);
            match store.get(&request.key) {
                Some(rec) if rec.fingerprint == fp => stats.reused += 1,
                Some(_) => {
                    return Err(EvalError::Config(format!(
                        "{} already holds an answer for {} made with another model or other \
                         settings (prompt, shots, images, generation); use another output path \
                         or remove that file",
                        store.path().display(),
                        request.key
                    )));
                }
                None => pending.push((request, fp)),
            }
        }
        let mut progress = Progress::new(label, requests.len() as u64, self.options.progress);
        progress.resume_from(stats.reused as u64);
        let batch_size = self.options.batch_size.max(1);
        let mut i = 0;
        while i < pending.len() {
            // A batch shares the generation budget and stop ids.
            let first = pending[i].0;
            let mut end = i + 1;
            while end < pending.len()
                && end - i < batch_size
                && pending[end].0.max_new_tokens == first.max_new_tokens
                && pending[end].0.protocol_beams() == first.protocol_beams()
                && same_kind(&pending[end].0.prompt, &first.prompt)
            {
                end += 1;
            }
            let mut ready = Vec::with_capacity(end - i);
            for (request, fp) in &pending[i..end] {
                match self.prepare(request, fp.clone()) {
                    Ok(p) => ready.push(p),
                    Err(failure) => {
                        stats.failed += 1;
                        store.append(failed_record(request, fp.clone(), failure))?;
                    }
                }
            }
            self.generate_batch(ready, store, &mut stats)?;
            progress.inc((end - i) as u64);
            i = end;
        }
        progress.finish();
        stats.seconds = start.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Decodes and processes the images and encodes the prompt of one request.
    fn prepare<'r>(
        &self,
        request: &'r Request,
        fingerprint: String,
    ) -> Result<Prepared<'r>, Failure> {
        let processor = &self.model.processor;
        let mut images = Vec::with_capacity(request.images.len());
        for src in &request.images {
            let input = processor
                .image_from_source(src, &self.model.device)
                .map_err(|e| Failure {
                    kind: FailureKind::Image,
                    message: image_message(src, e),
                })?;
            images.push(input);
        }
        let prompt = processor
            .encode(request.prompt.format(), request.prompt.text(), images.len())
            .map_err(|e| Failure {
                kind: FailureKind::Prompt,
                message: format!("{}: {e}", request.key),
            })?;
        let positions = processor
            .check_context(&prompt, &images, request.max_new_tokens)
            .map_err(|e| Failure {
                kind: FailureKind::Model,
                message: format!("{}: {e}", request.key),
            })?;
        Ok(Prepared {
            request,
            fingerprint,
            prompt,
            images,
            positions,
        })
    }

    /// Generates a batch and records its answers; when the model rejects the batch, retries its
    /// items one by one so that only the offending item fails.
    fn generate_batch(
        &self,
        ready: Vec<Prepared<'_>>,
        store: &mut AnswerStore,
        stats: &mut RunStats,
    ) -> Result<(), EvalError> {
        if ready.is_empty() {
            return Ok(());
        }
        match self.generate(&ready) {
            Ok(outputs) => {
                for (p, ids) in ready.iter().zip(outputs) {
                    store.append(self.answer_record(p, ids))?;
                    stats.generated += 1;
                }
            }
            Err(e) if ready.len() == 1 => {
                let p = &ready[0];
                stats.failed += 1;
                let failure = Failure {
                    kind: FailureKind::Model,
                    message: format!("{}: {e}", p.request.key),
                };
                store.append(failed_record(p.request, p.fingerprint.clone(), failure))?;
            }
            Err(e) => {
                log::warn!(
                    "a batch of {} failed ({e}); retrying item by item",
                    ready.len()
                );
                for p in ready {
                    self.generate_batch(vec![p], store, stats)?;
                }
            }
        }
        Ok(())
    }

    /// One model call.
    fn generate(
        &self,
        ready: &[Prepared<'_>],
    ) -> Result<Vec<(Vec<u32>, String)>, blip3_model::ModelError> {
        let input = MultimodalInput {
            input_ids: ready.iter().map(|p| p.prompt.ids.clone()).collect(),
            images: ready.iter().map(|p| p.images.clone()).collect(),
            labels: None,
        };
        let s = &self.options.sampling;
        let beams = s.beams(ready[0].request.protocol_beams());
        let sampling = GenerationConfig {
            max_new_tokens: ready[0].request.max_new_tokens,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            seed: s.seed,
            num_beams: beams.num_beams,
            length_penalty: beams.length_penalty,
            ..GenerationConfig::default()
        };
        let mut cfg = self
            .model
            .processor
            .generation_config(&sampling, &ready[0].prompt);
        cfg.stop_ids = self.stop_ids(&ready[0]);
        let out = self.model.model.generate(&input, &cfg, |_, _| true)?;
        Ok(out
            .into_iter()
            .map(|g| (g.token_ids, format!("{:?}", g.finish)))
            .collect())
    }

    /// The ids that end a request's answer: the prompt's, except that few-shot protocols stop at
    /// `<|endofchunk|>` only, as OpenFlamingo passes it as the only `eos_token_id` (EOS does not
    /// end an answer there and is dropped when decoding; with beams, the candidate pool
    /// `(1 + stop ids) * beams` counts one stop id).
    fn stop_ids(&self, p: &Prepared<'_>) -> Vec<u32> {
        let mut ids = p.prompt.stop_ids.clone();
        if p.request.post != PostProcess::Trim {
            let eoc = self.model.processor.tokenizer().endofchunk_id();
            ids.retain(|&id| id == eoc);
        }
        ids
    }

    /// The record of a generated answer: ids cut before the first stop id, decoded without
    /// special tokens, post-processed.
    fn answer_record(&self, p: &Prepared<'_>, (ids, finish): (Vec<u32>, String)) -> AnswerRecord {
        let generated = ids.len();
        let decoded = self.model.processor.decode_reply(&ids, &self.stop_ids(p));
        let (output, failure) = match decoded {
            Ok(text) => (Some(text), None),
            Err(e) => (
                None,
                Some(Failure {
                    kind: FailureKind::Model,
                    message: format!("{}: {e}", p.request.key),
                }),
            ),
        };
        AnswerRecord {
            key: p.request.key.clone(),
            fingerprint: p.fingerprint.clone(),
            answer: output.as_deref().map(|o| p.request.post.apply(o)),
            output,
            failure,
            prompt_tokens: p.positions,
            generated_tokens: generated,
            finish: Some(finish),
        }
    }
}

/// A failed image's message, naming the image once.
fn image_message(src: &ImageSource, e: blip3_processor::ProcessorError) -> String {
    match e {
        // Data errors already name the file or member.
        blip3_processor::ProcessorError::Data(e) => e.to_string(),
        e => format!("{}: {e}", src.describe()),
    }
}

/// Whether two prompts stop on the same ids.
fn same_kind(a: &Prompt, b: &Prompt) -> bool {
    matches!(
        (a, b),
        (Prompt::Raw(_), Prompt::Raw(_)) | (Prompt::Chat(_), Prompt::Chat(_))
    )
}

/// The record of a failed request.
fn failed_record(request: &Request, fingerprint: String, failure: Failure) -> AnswerRecord {
    AnswerRecord {
        key: request.key.clone(),
        fingerprint,
        output: None,
        answer: None,
        failure: Some(failure),
        prompt_tokens: 0,
        generated_tokens: 0,
        finish: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(post: PostProcess) -> Request {
        Request {
            key: "bench/1".into(),
            prompt: Prompt::Raw("<image>Output:".into()),
            images: Vec::new(),
            max_new_tokens: 20,
            post,
        }
    }

    #[test]
    fn few_shot_requests_decode_with_openflamingo_beams_unless_overridden() {
        let few_shot = request(PostProcess::FewShotCaption);
        assert_eq!(few_shot.protocol_beams(), Beams::OPENFLAMINGO);
        assert_eq!(
            request(PostProcess::FewShotVqa).protocol_beams(),
            Beams::OPENFLAMINGO
        );
        assert_eq!(request(PostProcess::Trim).protocol_beams(), Beams::GREEDY);
        assert_eq!(Beams::OPENFLAMINGO.num_beams, 3);
        assert_eq!(Beams::OPENFLAMINGO.length_penalty, 0.0);

        let default = Sampling::default();
        assert_eq!(
            default.beams(few_shot.protocol_beams()),
            Beams::OPENFLAMINGO
        );
        let one_beam = Sampling {
            num_beams: Some(1),
            ..Sampling::default()
        };
        assert_eq!(
            one_beam.beams(Beams::OPENFLAMINGO),
            Beams {
                num_beams: 1,
                length_penalty: 0.0
            }
        );
        let sampled = Sampling {
            temperature: Some(0.7),
            ..Sampling::default()
        };
        assert_eq!(sampled.beams(Beams::OPENFLAMINGO), Beams::GREEDY);
        sampled.validate().expect("sampling with one beam is valid");
        let both = Sampling {
            temperature: Some(0.7),
            num_beams: Some(3),
            ..Sampling::default()
        };
        assert!(both.validate().is_err(), "sampled beams are refused");
        // Answers decoded with other settings are not reused when resuming.
        assert_ne!(
            request_fingerprint("m", &few_shot, &default),
            request_fingerprint("m", &few_shot, &one_beam)
        );
    }
}
