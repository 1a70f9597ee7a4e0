//! The Phi-3 chat template of xGen-MM and the training labels that go with it.
//!
//! # Conversations (SFT)
//!
//! A conversation is rendered as text the way the reference does it (LAVIS `xgen-mm` branch,
//! `open_flamingo/train/sft_data_utils.py`, `preprocess_phi_3_new`):
//!
//! * a system turn with [`DEFAULT_SYSTEM_PROMPT`] is put first unless the first turn is a system
//!   turn;
//! * system → `<|system|>\n{text}<|end|>\n`, user → `<|user|>\n{text}<|end|>\n<|assistant|>\n`,
//!   assistant → `{text}<|end|>\n`;
//! * every occurrence of the bos string (`<s>`) is deleted from the rendered text (the reference's
//!   template starts with the bos string and then deletes it everywhere, user text included), and
//!   the text is encoded with the tokenizer's own special tokens (BOS in front).
//!
//! Labels follow the reference's round bookkeeping, re-implemented step by step: the text is split
//! on `<|end|>\n`; each piece gets its `<|end|>\n` back and is encoded on its own. A piece that
//! contains `<|assistant|>\n` is an assistant round: its tokens, minus the token count of
//! `<|assistant|>\n` encoded alone, are trained (the answer, its `<|end|>` and the newline token
//! after it, if the tokenizer makes one: Phi-3's chat tokens strip the whitespace that follows
//! them, see [`crate::tokenizer`], so with the tiny tokenizer there is no newline token). A
//! piece that contains `<|user|>` is a user round: `<|assistant|>\n` is appended, and all its tokens
//! are ignored, minus the leading BOS for every round but the first. Anything else (the system
//! round) is ignored whole, BOS included. Tokens after the last round are ignored. If the rounds do
//! not add up to the number of non-pad ids of the full encoding, the reference ignores the whole
//! sample; we return a [`SampleError`] instead so that the loader skips and counts it (a literal
//! `<pad>` in the text is such a case, as in the reference). Finally, as the reference's
//! loss does, pad tokens and the three media tokens (`<image>`, `<image placeholder>`,
//! `<|endofchunk|>`) are always ignored. [`IGNORE_INDEX`] (-100) marks ignored positions.
//!
//! The reference skips exactly one leading token of later user rounds; we skip
//! [`Blip3Tokenizer::special_prefix_len`] tokens, which is the same for a tokenizer that prepends
//! BOS and stays correct for one that does not.
//!
//! Single-image samples are normalised first, as in the reference: when a sample has exactly one
//! image and its first user turn does not contain exactly one `<image>`, all markers are removed
//! from that turn, the text is trimmed and `<image>\n` is put in front ([`normalize_single_image`]).
//!
//! # Pre-training text
//!
//! The pre-training data module is not part of the reference release. We follow OpenFlamingo, the
//! code base the reference descends from: a caption is `<image>{caption, trimmed}<|endofchunk|>` +
//! eos, an interleaved document is its text (with `<image>` and `<|endofchunk|>` markers) ending in
//! `<|endofchunk|>` + eos, both encoded with BOS. Labels are the ids themselves except pad and the
//! three media tokens, as in the reference's `NextTokenPrediction` loss (the legacy OpenFlamingo
//! masking of text before the first image is not applied; the reference loss does not apply it).
//!
//! # Images and truncation
//!
//! The model replaces each `<image>` id by the image's vision tokens ((1+G)·128 for any-res), so a
//! sample's real length is its id count with every image id counted as its image's token count.
//! The number of `<image>` ids must equal the number of images given, else the sample fails with
//! [`BadKind::ImageCountMismatch`]. Truncation to `max_len` (default [`DEFAULT_MAX_LEN`] = 2048)
//! counts that real length. Unlike the reference, which cuts the text ids at 2048 wherever that
//! falls, we first drop whole trailing exchanges (user turn + answer) of a conversation; if the
//! first exchange alone is too long, or for pre-training text, we keep the longest prefix of ids
//! that fits. An `<image>` id is either kept with all its vision tokens or dropped with its image,
//! so an image is never cut in half; [`Encoded::num_images`] says how many of the sample's first
//! images remain. A sample left with nothing to train is an error.
//!
//! # Generation prompts
//!
//! [`ChatTemplate::encode_prompt`] renders the turns the same way (system turn included) and ends
//! with `<|assistant|>\n`; generation then stops on `<|end|>` ([`Blip3Tokenizer::end_id`]).

use crate::error::{BadKind, SampleError};
use crate::sample::{Origin, Role, Turn};
use crate::tokenizer::{
    ASSISTANT_TOKEN, Blip3Tokenizer, END_OF_CHUNK_TOKEN, END_TOKEN, IMAGE_TOKEN, SYSTEM_TOKEN,
    USER_TOKEN,
};

/// The system sentence the reference puts in front of every conversation without a system turn.
pub const DEFAULT_SYSTEM_PROMPT: &str = "A chat between a curious user and an artificial \
    intelligence assistant. The assistant gives helpful, detailed, and polite answers to the \
    user's questions.";

/// The label of positions the loss ignores.
pub const IGNORE_INDEX: i64 = -100;

/// The default maximum sequence length, vision tokens included.
pub const DEFAULT_MAX_LEN: usize = 2048;

/// A tokenized training sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids; each `<image>` id stands for one image's vision tokens.
    pub input_ids: Vec<u32>,
    /// One label per id: the id to predict there, or [`IGNORE_INDEX`].
    pub labels: Vec<i64>,
    /// How many images the kept ids refer to: the sample's first `num_images` images (fewer than
    /// the sample had when truncation dropped trailing images).
    pub num_images: usize,
    /// Whether trailing turns or tokens were dropped to fit the maximum length.
    pub truncated: bool,
}

impl Encoded {
    /// The number of labels the loss can use: not ignored and not at position 0 (the language
    /// model shifts labels by one, so the first position is never predicted).
    pub fn trained_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }

    /// The sequence length once every `<image>` id is replaced by its image's vision tokens;
    /// `image_tokens` gives each image's token count, in marker order.
    pub fn expanded_len(&self, image_id: u32, image_tokens: &[usize]) -> usize {
        expanded_prefix_lens(&self.input_ids, image_id, image_tokens)
            .last()
            .copied()
            .unwrap_or(0)
    }
}

/// The chat template: the system sentence used when a conversation has none, and the maximum
/// sequence length (vision tokens included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// The system sentence put first when a conversation does not start with a system turn.
    pub system_prompt: String,
    /// The maximum sequence length, vision tokens included.
    pub max_len: usize,
}

impl Default for ChatTemplate {
    fn default() -> Self {
        ChatTemplate {
            system_prompt: DEFAULT_SYSTEM_PROMPT.to_string(),
            max_len: DEFAULT_MAX_LEN,
        }
    }
}

impl ChatTemplate {
    /// The reference template: default system sentence, maximum length 2048.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same template with another maximum length.
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Renders `turns` as text (system turn added when absent), without BOS and before the removal
    /// of bos strings.
    pub fn render_text(&self, turns: &[Turn]) -> String {
        let mut text = String::new();
        if turns.first().map(|t| t.role) != Some(Role::System) {
            push_turn(&mut text, Role::System, &self.system_prompt);
        }
        for turn in turns {
            push_turn(&mut text, turn.role, &turn.text);
        }
        text
    }

    /// Tokenizes a conversation for supervised training: ids and labels as described in the
    /// module documentation. `image_tokens` gives each image's vision-token count, in marker order;
    /// `origin` names the sample in errors.
    pub fn encode_conversation(
        &self,
        tok: &Blip3Tokenizer,
        turns: &[Turn],
        image_tokens: &[usize],
        origin: &Origin,
    ) -> Result<Encoded, SampleError> {
        if turns.is_empty() {
            return Err(invalid(origin, "conversation has no turns"));
        }
        let mut turns = turns.to_vec();
        normalize_single_image(&mut turns, image_tokens.len());
        let text = remove_bos_strings(tok, self.render_text(&turns));
        let input_ids = encode(tok, &text, origin)?;
        check_image_count(tok, &input_ids, image_tokens.len(), origin)?;

        let (mut labels, exchange_ends) = conversation_labels(tok, &text, &input_ids, origin)?;
        ignore_always(tok, &input_ids, &mut labels);
        let encoded = Encoded {
            input_ids,
            labels,
            num_images: image_tokens.len(),
            truncated: false,
        };
        self.fit(tok, encoded, image_tokens, &exchange_ends, origin)
    }

    /// Tokenizes a prompt for generation: the rendered turns (system turn added when absent),
    /// ending with `<|assistant|>\n`. The last turn must be a user turn, and the number of `<image>`
    /// ids must be `num_images`. No truncation.
    pub fn encode_prompt(
        &self,
        tok: &Blip3Tokenizer,
        turns: &[Turn],
        num_images: usize,
        origin: &Origin,
    ) -> Result<Vec<u32>, SampleError> {
        match turns.last() {
            Some(turn) if turn.role == Role::User => {}
            _ => {
                return Err(invalid(
                    origin,
                    "a generation prompt must end with a user turn",
                ));
            }
        }
        let text = remove_bos_strings(tok, self.render_text(turns));
        let ids = encode(tok, &text, origin)?;
        check_image_count(tok, &ids, num_images, origin)?;
        Ok(ids)
    }

    /// Tokenizes an image-caption pair for pre-training: `<image>{caption}<|endofchunk|>` + eos,
    /// with BOS. `image_tokens` is the image's vision-token count.
    pub fn encode_caption(
        &self,
        tok: &Blip3Tokenizer,
        caption: &str,
        image_tokens: usize,
        origin: &Origin,
    ) -> Result<Encoded, SampleError> {
        let caption = caption.trim();
        if caption.is_empty() {
            return Err(invalid(origin, "empty caption"));
        }
        let text = format!(
            "{IMAGE_TOKEN}{caption}{END_OF_CHUNK_TOKEN}{}",
            tok.eos_token()
        );
        self.encode_pretraining(tok, &text, &[image_tokens], origin)
    }

    /// Tokenizes an interleaved document for pre-training: its text (with `<image>` markers, one
    /// per image, and `<|endofchunk|>` between chunks), ending in `<|endofchunk|>` (added when
    /// missing) and eos, with BOS. `image_tokens` gives each image's vision-token count.
    pub fn encode_interleaved(
        &self,
        tok: &Blip3Tokenizer,
        text: &str,
        image_tokens: &[usize],
        origin: &Origin,
    ) -> Result<Encoded, SampleError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(invalid(origin, "empty document"));
        }
        let mut full = text.to_string();
        if !full.ends_with(END_OF_CHUNK_TOKEN) {
            full.push_str(END_OF_CHUNK_TOKEN);
        }
        full.push_str(tok.eos_token());
        self.encode_pretraining(tok, &full, image_tokens, origin)
    }

    /// Encodes rendered pre-training text: labels are the ids except pad and media tokens.
    fn encode_pretraining(
        &self,
        tok: &Blip3Tokenizer,
        text: &str,
        image_tokens: &[usize],
        origin: &Origin,
    ) -> Result<Encoded, SampleError> {
        let input_ids = encode(tok, text, origin)?;
        check_image_count(tok, &input_ids, image_tokens.len(), origin)?;
        let mut labels: Vec<i64> = input_ids.iter().map(|&id| i64::from(id)).collect();
        ignore_always(tok, &input_ids, &mut labels);
        let encoded = Encoded {
            input_ids,
            labels,
            num_images: image_tokens.len(),
            truncated: false,
        };
        self.fit(tok, encoded, image_tokens, &[], origin)
    }

    /// Truncates `encoded` to `max_len` (vision tokens counted): at the latest of `cut_points`
    /// (ends of exchanges) that fits and keeps something to train, else at the longest prefix
    /// that fits. Fails when nothing trainable is left.
    fn fit(
        &self,
        tok: &Blip3Tokenizer,
        mut encoded: Encoded,
        image_tokens: &[usize],
        cut_points: &[usize],
        origin: &Origin,
    ) -> Result<Encoded, SampleError> {
        let image_id = tok.image_token_id();
        let lens = expanded_prefix_lens(&encoded.input_ids, image_id, image_tokens);
        let total = lens.last().copied().unwrap_or(0);
        if total > self.max_len {
            let trains = |end: usize| {
                encoded.labels[..end]
                    .iter()
                    .skip(1)
                    .any(|&l| l != IGNORE_INDEX)
            };
            let at_exchange = cut_points.iter().rev().copied().find(|&end| {
                end <= encoded.input_ids.len() && lens[end] <= self.max_len && trains(end)
            });
            let cut = match at_exchange {
                Some(end) => end,
                // lens is non-decreasing and lens[0] == 0, so some prefix always fits.
                None => lens.iter().rposition(|&l| l <= self.max_len).unwrap_or(0),
            };
            encoded.input_ids.truncate(cut);
            encoded.labels.truncate(cut);
            encoded.num_images = encoded
                .input_ids
                .iter()
                .filter(|&&id| id == image_id)
                .count();
            encoded.truncated = true;
            if encoded.trained_tokens() == 0 {
                return Err(invalid(
                    origin,
                    format!(
                        "nothing left to train after truncating {total} tokens (vision tokens \
                         included) to {}",
                        self.max_len
                    ),
                ));
            }
        }
        if encoded.trained_tokens() == 0 {
            return Err(invalid(
                origin,
                "no token to train on (no assistant answer?)",
            ));
        }
        Ok(encoded)
    }
}

/// The reference's single-image rule: when a sample has exactly one image and its first user turn
/// does not contain exactly one `<image>`, remove every marker from that turn, trim it and put
/// `<image>\n` in front. Returns whether the turn changed. Samples with zero or several images are
/// left alone (their markers are checked against the image count later).
pub fn normalize_single_image(turns: &mut [Turn], num_images: usize) -> bool {
    if num_images != 1 {
        return false;
    }
    let Some(turn) = turns.iter_mut().find(|t| t.role == Role::User) else {
        return false;
    };
    if turn.text.matches(IMAGE_TOKEN).count() == 1 {
        return false;
    }
    let stripped = turn.text.replace(IMAGE_TOKEN, "");
    turn.text = format!("{IMAGE_TOKEN}\n{}", stripped.trim());
    true
}

/// `lens[p]` = the length of `ids[..p]` once the k-th `<image>` id counts `image_tokens[k]`
/// (1 for an image beyond the list, which the count check rules out).
fn expanded_prefix_lens(ids: &[u32], image_id: u32, image_tokens: &[usize]) -> Vec<usize> {
    let mut lens = Vec::with_capacity(ids.len() + 1);
    lens.push(0);
    let mut images = image_tokens.iter();
    let mut total = 0usize;
    for &id in ids {
        let cost = if id == image_id {
            images.next().copied().unwrap_or(1)
        } else {
            1
        };
        total = total.saturating_add(cost);
        lens.push(total);
    }
    lens
}

/// Appends one rendered turn to `text`.
fn push_turn(text: &mut String, role: Role, content: &str) {
    match role {
        Role::System => {
            text.push_str(SYSTEM_TOKEN);
            text.push('\n');
            text.push_str(content);
            text.push_str(END_TOKEN);
            text.push('\n');
        }
        Role::User => {
            text.push_str(USER_TOKEN);
            text.push('\n');
            text.push_str(content);
            text.push_str(END_TOKEN);
            text.push('\n');
            text.push_str(ASSISTANT_TOKEN);
            text.push('\n');
        }
        Role::Assistant => {
            text.push_str(content);
            text.push_str(END_TOKEN);
            text.push('\n');
        }
    }
}

/// Deletes every bos string from the rendered text, as the reference does.
fn remove_bos_strings(tok: &Blip3Tokenizer, text: String) -> String {
    match tok.bos_token() {
        Some(bos) if !bos.is_empty() && text.contains(bos) => text.replace(bos, ""),
        _ => text,
    }
}

/// Labels from the reference's per-round bookkeeping, and the token positions where each
/// assistant round ends (the places a conversation can be cut between exchanges).
fn conversation_labels(
    tok: &Blip3Tokenizer,
    text: &str,
    input_ids: &[u32],
    origin: &Origin,
) -> Result<(Vec<i64>, Vec<usize>), SampleError> {
    let assistant_sep = format!("{ASSISTANT_TOKEN}\n");
    let round_end = format!("{END_TOKEN}\n");
    let assistant_prefix = encode(tok, &assistant_sep, origin)?.len();

    let mut labels: Vec<i64> = input_ids.iter().map(|&id| i64::from(id)).collect();
    let mut ignore = |from: usize, to: usize| {
        let to = to.min(labels.len());
        if from < to {
            labels[from..to].fill(IGNORE_INDEX);
        }
    };
    let mut cur = 0usize;
    let mut exchange_ends = Vec::new();
    for (i, piece) in text.split(round_end.as_str()).enumerate() {
        if piece.is_empty() {
            break;
        }
        let round = format!("{piece}{round_end}");
        if round.contains(&assistant_sep) {
            let n = encode(tok, &round, origin)?
                .len()
                .saturating_sub(assistant_prefix);
            cur += n;
            exchange_ends.push(cur);
        } else if round.contains(USER_TOKEN) {
            let round = format!("{round}{assistant_sep}");
            let mut n = encode(tok, &round, origin)?.len();
            if i > 0 {
                n = n.saturating_sub(tok.special_prefix_len());
            }
            ignore(cur, cur + n);
            cur += n;
        } else {
            let n = encode(tok, &round, origin)?.len();
            ignore(cur, cur + n);
            cur += n;
        }
    }
    ignore(cur, usize::MAX);

    let total = input_ids.iter().filter(|&&id| id != tok.pad_id()).count();
    if cur != total {
        return Err(invalid(
            origin,
            format!(
                "tokenization mismatch: the rounds give {cur} tokens, the whole text {total}; \
                 the reference ignores such a sample"
            ),
        ));
    }
    Ok((labels, exchange_ends))
}

/// Ignores pad and the three media tokens, as the reference's losses do.
fn ignore_always(tok: &Blip3Tokenizer, ids: &[u32], labels: &mut [i64]) {
    let media = tok.media_ids();
    for (label, id) in labels.iter_mut().zip(ids) {
        if *id == tok.pad_id() || media.contains(id) {
            *label = IGNORE_INDEX;
        }
    }
}

/// Fails with [`BadKind::ImageCountMismatch`] unless `ids` hold exactly `num_images` `<image>` ids.
fn check_image_count(
    tok: &Blip3Tokenizer,
    ids: &[u32],
    num_images: usize,
    origin: &Origin,
) -> Result<(), SampleError> {
    let markers = ids.iter().filter(|&&id| id == tok.image_token_id()).count();
    if markers == num_images {
        return Ok(());
    }
    Err(SampleError::new(
        &origin.file,
        &origin.key,
        BadKind::ImageCountMismatch,
        format!("{markers} {IMAGE_TOKEN} markers for {num_images} images"),
    ))
}

/// Encodes with special tokens; a tokenizer failure makes the sample invalid.
fn encode(tok: &Blip3Tokenizer, text: &str, origin: &Origin) -> Result<Vec<u32>, SampleError> {
    tok.encode(text, true)
        .map_err(|e| invalid(origin, e.to_string()))
}

/// A [`BadKind::Invalid`] sample error.
fn invalid(origin: &Origin, msg: impl Into<String>) -> SampleError {
    SampleError::new(&origin.file, &origin.key, BadKind::Invalid, msg)
}
