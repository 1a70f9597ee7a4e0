//! Benchmark prompts and the answer post-processing that goes with them.
//!
//! # Few-shot prompts (base models)
//!
//! The xGen-MM base numbers come from the OpenFlamingo evaluation harness
//! (mlfoundations/open_flamingo, `open_flamingo/eval/evaluate.py` and
//! `eval/models/open_flamingo.py` on `main`, read at 655f693). Its prompts, reproduced here:
//!
//! * captioning example `<image>Output:{caption}<|endofchunk|>`, query `<image>Output:`; the
//!   example caption is the image's first reference caption with Python `strip()`;
//! * VQA example `<image>Question:{question} Short answer:{answer}<|endofchunk|>`, query
//!   `<image>Question:{question} Short answer:`; the example answer is the first of the ten
//!   annotated answers, neither question nor answer is stripped;
//! * since the "RICES + prompt ensembling" update (bcf220c, 2023-08-02) every example is
//!   followed by `\n`, and the examples are concatenated in front of the query;
//! * with `k` shots the `k` example images come first, in example order, and the query image
//!   last; the text is encoded with the tokenizer's special tokens (BOS in front);
//! * **zero-shot** follows Flamingo: the prompt still holds examples (OpenFlamingo's
//!   `compute_effective_num_shots` uses two) but their `<image>` markers are removed, so only the
//!   query image is shown ([`few_shot_prompt`]);
//! * examples are drawn at random from a *query set*, a random subset of the training split
//!   (2048 by default, `get_query_set`); we draw them per item from a stream seeded by the run
//!   seed and the item key ([`sample_demos`]), so a resumed run builds the same prompts;
//! * generation stops at `<|endofchunk|>` only (OpenFlamingo passes it as the sole
//!   `eos_token_id`) and is decoded with special tokens skipped; the caption answer is the text
//!   before the first `Output`, with `"` removed ([`postprocess_caption`]); the VQA answer is the
//!   text before the first `Question`, `Answer` or `Short`, then before the first `", "`
//!   ([`postprocess_vqa`]). OK-VQA answers are then stemmed as OpenFlamingo does (NLTK
//!   tokenizer and POS tagger, WordNet verb lemmas, `inflection.singularize`, its manual table:
//!   [`crate::metrics::okvqa`]).
//! * OpenFlamingo decodes with beam search: 3 beams, `length_penalty` 0.0, HF's default
//!   `early_stopping` (the engine's `Beams::OPENFLAMINGO`). Maximum new tokens:
//!   20 for captioning, 5 for VQA, 10 for TextVQA.
//!
//! # Instruction prompts (instruct models)
//!
//! Instruction benchmarks go through the Phi-3 chat template of xGen-MM
//! ([`blip3_data::ChatTemplate::encode_prompt`], default system turn) with the user turn
//! `<image>\n{text}` (the LLaVA convention: image first, then a newline), as in LLaVA-1.5's
//! evaluation scripts and lmms-eval:
//!
//! * captioning: `Provide a one-sentence caption for the provided image.` (LLaVA-1.5's response
//!   formatting prompt for COCO/TextCaps, used by lmms-eval's `coco_cap`);
//! * short-answer VQA (VQAv2, TextVQA, VizWiz, OK-VQA) and POPE:
//!   `{question}\nAnswer the question using a single word or phrase.` (LLaVA's
//!   `llava_vqav2_mscoco_test-dev2015.jsonl`, `llava_textvqa_val_v051_ocr.jsonl` without the OCR
//!   line, `llava_pope_test.jsonl`; lmms-eval `pope`);
//! * multiple choice, MMBench style (LLaVA `model_vqa_mmbench.py --single-pred-prompt`):
//!   `{hint}\n{question}\nA. {option}\nB. {option}...\nAnswer with the option's letter from the
//!   given choices directly.` (no hint line when the hint is missing);
//! * multiple choice, ScienceQA style (lmms-eval `scienceqa_img`): `Context: {hint}\n` (only
//!   for a non-empty hint) + `{question}\nA. {c0}\nB. {c1}...\nAnswer with the option's letter
//!   from the given choices directly.`;
//! * generation stops at `<|end|>`; the answer is the decoded text, cut at `<|end|>` and trimmed.

use blip3_data::tokenizer::{END_OF_CHUNK_TOKEN, IMAGE_TOKEN};
use blip3_model::generate::SplitMix64;

use crate::fingerprint::Fnv1a64;
use crate::metrics::py_strip;

/// The instruction of chat captioning (LLaVA-1.5, lmms-eval `coco_cap`).
pub const CAPTION_INSTRUCTION: &str = "Provide a one-sentence caption for the provided image.";
/// The short-answer instruction of chat VQA and POPE (LLaVA-1.5, lmms-eval).
pub const SHORT_ANSWER_INSTRUCTION: &str = "Answer the question using a single word or phrase.";
/// The instruction of multiple-choice questions (LLaVA-1.5, lmms-eval).
pub const MC_INSTRUCTION: &str = "Answer with the option's letter from the given choices directly.";
/// How many text-only examples OpenFlamingo puts in a zero-shot prompt.
pub const ZERO_SHOT_TEXT_DEMOS: usize = 2;
/// OpenFlamingo's default query-set size (examples are drawn from this many training items).
pub const QUERY_SET_SIZE: usize = 2048;

/// One in-context example of a few-shot captioning prompt: `<image>Output:{caption}<|endofchunk|>`
/// followed by a newline; the caption is stripped like Python's `str.strip()`.
pub fn caption_example(caption: &str) -> String {
    format!(
        "{IMAGE_TOKEN}Output:{}{END_OF_CHUNK_TOKEN}\n",
        py_strip(caption)
    )
}

/// The query of a few-shot captioning prompt: `<image>Output:`.
pub fn caption_query() -> String {
    format!("{IMAGE_TOKEN}Output:")
}

/// One in-context example of a few-shot VQA prompt:
/// `<image>Question:{question} Short answer:{answer}<|endofchunk|>` followed by a newline.
pub fn vqa_example(question: &str, answer: &str) -> String {
    format!("{IMAGE_TOKEN}Question:{question} Short answer:{answer}{END_OF_CHUNK_TOKEN}\n")
}

/// The query of a few-shot VQA prompt: `<image>Question:{question} Short answer:`.
pub fn vqa_query(question: &str) -> String {
    format!("{IMAGE_TOKEN}Question:{question} Short answer:")
}

/// The full few-shot prompt: the examples concatenated, then the query. With `shots == 0` the
/// examples are text only (their `<image>` markers are removed, as OpenFlamingo does), so the
/// query image is the only image.
pub fn few_shot_prompt(examples: &[String], query: &str, shots: usize) -> String {
    let mut context: String = examples.concat();
    if shots == 0 {
        context = context.replace(IMAGE_TOKEN, "");
    }
    context.push_str(query);
    context
}

/// How many examples a prompt with `shots` shots holds: `shots`, or `zero_shot_text_demos`
/// text-only examples at zero shots.
pub fn effective_shots(shots: usize, zero_shot_text_demos: usize) -> usize {
    if shots == 0 {
        zero_shot_text_demos
    } else {
        shots
    }
}

/// The random stream of item `key` under run seed `seed`.
fn item_rng(seed: u64, key: &str) -> SplitMix64 {
    let mut h = Fnv1a64::new();
    h.update(&seed.to_le_bytes());
    h.field(key);
    SplitMix64::new(h.value())
}

/// Draws `k` distinct indices below `n` from a stream seeded by `seed` (a partial Fisher-Yates
/// shuffle); all of them, shuffled, when `n <= k`.
fn draw(rng: &mut SplitMix64, n: usize, k: usize) -> Vec<usize> {
    let mut pool: Vec<usize> = (0..n).collect();
    let take = k.min(n);
    for i in 0..take {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(take);
    pool
}

/// The query set: `min(size, n)` distinct indices of a support set of `n` items, drawn with
/// `seed` (OpenFlamingo's `get_query_set`), in draw order.
pub fn query_set(n: usize, size: usize, seed: u64) -> Vec<usize> {
    draw(&mut item_rng(seed, "query-set"), n, size)
}

/// The in-context examples of item `key`: `k` distinct entries of `candidates` (indices into a
/// support set) other than those `exclude` rejects (e.g. examples showing the query's own
/// image), drawn from a stream seeded by `seed` and `key`. Fewer than `k` come back when fewer
/// candidates remain.
pub fn sample_demos(
    candidates: &[usize],
    k: usize,
    seed: u64,
    key: &str,
    exclude: impl Fn(usize) -> bool,
) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let allowed: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&i| !exclude(i))
        .collect();
    let mut rng = item_rng(seed, key);
    draw(&mut rng, allowed.len(), k)
        .into_iter()
        .map(|i| allowed[i])
        .collect()
}

/// OpenFlamingo's `postprocess_captioning_generation` followed by its `.replace('"', "")`: the
/// text before the first `Output`, without double quotes.
pub fn postprocess_caption(text: &str) -> String {
    let head = text.split("Output").next().unwrap_or("");
    head.replace('"', "")
}

/// OpenFlamingo's `postprocess_vqa_generation` (it lives with the VQA metric, which OK-VQA's
/// stemming also builds on).
pub use crate::metrics::vqa::postprocess_vqa;

/// The user turn of an instruction prompt: `<image>\n{text}` for each image (one per image, in
/// order), or the text alone without images.
pub fn chat_user_text(text: &str, images: usize) -> String {
    let mut out = String::new();
    for _ in 0..images {
        out.push_str(IMAGE_TOKEN);
        out.push('\n');
    }
    out.push_str(text);
    out
}

/// The chat captioning request (without the image marker).
pub fn chat_caption() -> String {
    CAPTION_INSTRUCTION.to_string()
}

/// A chat short-answer question (without the image marker):
/// `{question}\nAnswer the question using a single word or phrase.`
pub fn chat_short_answer(question: &str) -> String {
    format!("{question}\n{SHORT_ANSWER_INSTRUCTION}")
}

/// An MMBench-style multiple-choice question (without the image marker), LLaVA's layout:
/// `{hint}\n{question}\nA. {a}\nB. {b}...\nAnswer with the option's letter from the given
/// choices directly.`; an empty or missing hint adds no line.
pub fn mc_prompt(question: &str, hint: Option<&str>, options: &[(char, String)]) -> String {
    let mut out = String::new();
    if let Some(h) = hint.filter(|h| !h.is_empty()) {
        out.push_str(h);
        out.push('\n');
    }
    out.push_str(question);
    for (letter, option) in options {
        out.push_str(&format!("\n{letter}. {option}"));
    }
    out.push('\n');
    out.push_str(MC_INSTRUCTION);
    out
}

/// A ScienceQA-style multiple-choice question (without the image marker), lmms-eval's layout:
/// `Context: {hint}\n` for a non-empty hint, the question, the lettered choices, then the
/// instruction.
pub fn scienceqa_prompt(question: &str, hint: Option<&str>, options: &[(char, String)]) -> String {
    let mut out = String::new();
    if let Some(h) = hint.filter(|h| !h.is_empty()) {
        out.push_str(&format!("Context: {h}\n"));
    }
    out.push_str(question);
    for (letter, option) in options {
        out.push_str(&format!("\n{letter}. {option}"));
    }
    out.push('\n');
    out.push_str(MC_INSTRUCTION);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_shot_strings_follow_openflamingo() {
        let ex = vec![caption_example("  A cat. \n"), caption_example("a dog")];
        assert_eq!(ex[0], "<image>Output:A cat.<|endofchunk|>\n");
        let p = few_shot_prompt(&ex, &caption_query(), 2);
        assert_eq!(
            p,
            "<image>Output:A cat.<|endofchunk|>\n<image>Output:a dog<|endofchunk|>\n<image>Output:"
        );
        let p0 = few_shot_prompt(&ex, &caption_query(), 0);
        assert_eq!(
            p0,
            "Output:A cat.<|endofchunk|>\nOutput:a dog<|endofchunk|>\n<image>Output:"
        );
        let v = few_shot_prompt(&[vqa_example("What? ", " red")], &vqa_query("Why?"), 1);
        assert_eq!(
            v,
            "<image>Question:What?  Short answer: red<|endofchunk|>\n<image>Question:Why? Short answer:"
        );
    }

    #[test]
    fn postprocessing_matches_the_python_expressions() {
        // re.split("Question|Answer|Short", s, 1)[0] then re.split(", ", s, 1)[0]
        assert_eq!(postprocess_vqa("red, blue Question:x"), "red");
        assert_eq!(postprocess_vqa("two Short answer:3"), "two ");
        assert_eq!(postprocess_vqa("Answer"), "");
        assert_eq!(postprocess_vqa("a,b"), "a,b");
        // s.split("Output", 1)[0].replace('"', "")
        assert_eq!(
            postprocess_caption("a \"big\" dog\nOutput:x"),
            "a big dog\n"
        );
        assert_eq!(postprocess_caption("plain"), "plain");
    }

    #[test]
    fn demo_sampling_is_seeded_distinct_and_respects_exclusions() {
        let cands: Vec<usize> = (0..50).collect();
        let a = sample_demos(&cands, 8, 42, "coco/1", |i| i % 2 == 0);
        let b = sample_demos(&cands, 8, 42, "coco/1", |i| i % 2 == 0);
        assert_eq!(a, b);
        assert_eq!(a.len(), 8);
        assert!(a.iter().all(|i| i % 2 == 1));
        let mut s = a.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 8);
        assert_ne!(a, sample_demos(&cands, 8, 42, "coco/2", |i| i % 2 == 0));
        assert_ne!(a, sample_demos(&cands, 8, 43, "coco/1", |i| i % 2 == 0));
        assert_eq!(sample_demos(&cands, 8, 1, "k", |i| i > 2).len(), 3);
        let q = query_set(10, 4, 0);
        assert_eq!(q.len(), 4);
        assert_eq!(query_set(3, 2048, 0).len(), 3);
    }

    #[test]
    fn chat_prompts() {
        assert_eq!(
            chat_user_text(&chat_short_answer("Is it red?"), 1),
            "<image>\nIs it red?\nAnswer the question using a single word or phrase."
        );
        let opts = vec![('A', "cat".to_string()), ('B', "dog".to_string())];
        assert_eq!(
            mc_prompt("Which?", Some("Look."), &opts),
            "Look.\nWhich?\nA. cat\nB. dog\nAnswer with the option's letter from the given \
             choices directly."
        );
        assert_eq!(
            scienceqa_prompt("Which?", Some(""), &opts),
            "Which?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices \
             directly."
        );
        assert!(scienceqa_prompt("Q", Some("hot"), &opts).starts_with("Context: hot\nQ\n"));
    }
}
