//! The OpenAI API schema, as much of it as blip3 serves: chat completions (messages whose
//! `content` is a string or a list of `text` and `image_url` parts), text completions, the model
//! list, and the error object every 4xx/5xx carries. Field names follow
//! <https://platform.openai.com/docs/api-reference>; unknown request fields are ignored, as the
//! OpenAI server does.

use serde::{Deserialize, Serialize};

/// `stop`: one string or a list of up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// An image part's URL: a `data:` URL or, where allowed, a local file.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageUrl {
    /// `data:image/png;base64,...`, `file:///...` or a path.
    pub url: String,
    /// Accepted and ignored (every image goes through the model's any-res pipeline).
    #[serde(default)]
    pub detail: Option<String>,
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image.
    ImageUrl {
        /// Where it is.
        image_url: ImageUrl,
    },
}

/// A message's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Text and image parts, in order.
    Parts(Vec<ContentPart>),
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (`developer` is read as `system`).
    pub role: String,
    /// What is said.
    pub content: Content,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// The settings both generation endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingParams {
    /// The model name (any value is accepted; the server serves one model).
    #[serde(default)]
    pub model: Option<String>,
    /// Tokens to generate at most.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0 = greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Choices to generate (only 1 is served).
    #[serde(default)]
    pub n: Option<u32>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Extension (as in vLLM): keep generating past the end-of-text tokens until `max_tokens`
    /// (benchmarks use it so every request generates the same number of tokens).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling and streaming settings.
    #[serde(flatten)]
    pub sampling: SamplingParams,
    /// Return the chosen tokens' log-probabilities.
    #[serde(default)]
    pub logprobs: bool,
    /// Also the most likely alternatives (0..=20), with `logprobs`.
    #[serde(default)]
    pub top_logprobs: Option<u32>,
}

/// A completion's prompt: one string (lists of one are accepted).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    One(String),
    /// A batch of prompts (only one is served).
    Many(Vec<String>),
}

/// `POST /v1/completions`: raw text with `<image>` markers, for base models.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The raw prompt.
    pub prompt: Prompt,
    /// Images for the prompt's `<image>` markers, in order (a blip3 extension: URLs as in
    /// `image_url` parts).
    #[serde(default)]
    pub images: Vec<String>,
    /// Sampling and streaming settings.
    #[serde(flatten)]
    pub sampling: SamplingParams,
    /// The number of most likely tokens to report per position (0..=5).
    #[serde(default)]
    pub logprobs: Option<u32>,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt positions (text tokens plus vision tokens).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

/// One alternative token.
#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token's text.
    pub bytes: Vec<u8>,
}

/// One generated token with its log-probability.
#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token's text.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position.
    pub top_logprobs: Vec<TopLogprob>,
}

/// A chat choice's log-probabilities.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceLogprobs {
    /// One entry per generated token.
    pub content: Vec<TokenLogprob>,
}

/// The error body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// OpenAI's error object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorObject {
    /// What is wrong, for people.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A short machine-readable code.
    pub code: Option<String>,
}
