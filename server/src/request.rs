//! Reading a request: the body within the server's size limit, the JSON, the sampling fields,
//! the chat turns and their images, and the prompt fitted to the model's context; each failure is
//! an [`ApiError`] carrying OpenAI's error object. Then queueing it with the scheduler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use blip3_data::sample::{Role, Turn};
use blip3_model::{GenerationConfig, ImageInput};
use blip3_processor::EncodedPrompt;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_stream::StreamExt;

use crate::AppState;
use crate::openai::{ChatRequest, Content, ContentPart, ErrorBody, ErrorObject};
use crate::scheduler::{Event, Job, SubmitError};

/// An OpenAI-style error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorObject,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorObject {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: None,
            },
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub(crate) fn param(mut self, param: &str) -> Self {
        self.body.param = Some(param.into());
        self
    }

    pub(crate) fn code(mut self, code: &str) -> Self {
        self.body.code = Some(code.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody { error: self.body })).into_response()
    }
}

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Body,
) -> Result<T, ApiError> {
    let limit = state.config.max_body_bytes;
    // Past the limit the rest of the body is read and dropped (up to a cap) before answering, so
    // that a client still sending gets the 413 rather than a broken connection.
    let drain_cap = limit.saturating_mul(4).max(limit.saturating_add(16 << 20));
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("the request body could not be read: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            bytes.extend_from_slice(&chunk);
        } else if seen > drain_cap {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the server's limit of {limit} bytes"),
        )
        .code("request_too_large"));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid: {e}")))
}

/// A request turned into model input.
pub(crate) struct Prepared {
    pub(crate) prompt: EncodedPrompt,
    pub(crate) images: Vec<ImageInput>,
    pub(crate) sampling: GenerationConfig,
    pub(crate) stops: Vec<String>,
    pub(crate) prompt_positions: usize,
}

/// Common sampling fields of both endpoints.
pub(crate) struct SamplingFields {
    pub(crate) max_tokens: Option<u32>,
    pub(crate) temperature: Option<f32>,
    pub(crate) top_p: Option<f32>,
    pub(crate) seed: Option<u64>,
    pub(crate) n: Option<u32>,
    pub(crate) stop: Vec<String>,
    pub(crate) top_logprobs: usize,
    pub(crate) ignore_eos: bool,
}

pub(crate) fn check_sampling(f: &SamplingFields) -> Result<(), ApiError> {
    if f.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            "n > 1 is not supported by this server; send one request per choice",
        )
        .param("n"));
    }
    if let Some(t) = f.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(
            ApiError::invalid(format!("temperature {t} is out of range [0, 2]"))
                .param("temperature"),
        );
    }
    if let Some(p) = f.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ApiError::invalid(format!("top_p {p} is out of range (0, 1]")).param("top_p"));
    }
    if f.max_tokens == Some(0) {
        return Err(ApiError::invalid("max_tokens must be at least 1").param("max_tokens"));
    }
    if f.stop.len() > 4 {
        return Err(ApiError::invalid("at most 4 stop sequences").param("stop"));
    }
    Ok(())
}

/// Decodes the images, encodes the prompt and fits it to the context (off the async threads).
pub(crate) async fn prepare(
    state: Arc<AppState>,
    text: PromptText,
    image_urls: Vec<String>,
    fields: SamplingFields,
) -> Result<Prepared, ApiError> {
    check_sampling(&fields)?;
    tokio::task::spawn_blocking(move || -> Result<Prepared, ApiError> {
        let processor = &state.processor;
        let mut images = Vec::with_capacity(image_urls.len());
        for (i, url) in image_urls.iter().enumerate() {
            let rgb = state
                .images
                .decode(url)
                .map_err(|e| ApiError::invalid(format!("image {}: {e}", i + 1)))?;
            images.push(
                processor
                    .image(&rgb, &state.device)
                    .map_err(|e| ApiError::invalid(format!("image {}: {e}", i + 1)))?,
            );
        }
        let mut prompt = match &text {
            PromptText::Chat(turns) => processor.encode_chat(turns, images.len()),
            PromptText::Raw(raw) => processor.encode_raw(raw, images.len()),
        }
        .map_err(|e| ApiError::invalid(e.to_string()))?;
        if fields.ignore_eos {
            prompt.stop_ids.clear();
        }
        let context = processor.model_config().text.max_position_embeddings;
        let positions = processor.prompt_positions(&prompt, &images);
        if positions >= context {
            return Err(ApiError::invalid(format!(
                "the prompt takes {positions} positions ({} images included) but the model's \
                 context holds {context}",
                images.len()
            ))
            .code("context_length_exceeded"));
        }
        let max_new_tokens = match fields.max_tokens {
            Some(m) => m as usize,
            None => state.config.default_max_tokens.min(context - positions),
        };
        processor
            .check_context(&prompt, &images, max_new_tokens)
            .map_err(|e| {
                ApiError::invalid(e.to_string())
                    .param("max_tokens")
                    .code("context_length_exceeded")
            })?;
        let seed = fields
            .seed
            .unwrap_or_else(|| state.seeds.fetch_add(0x9E37_79B9, Ordering::Relaxed));
        let sampling = processor.generation_config(
            &GenerationConfig {
                max_new_tokens,
                temperature: Some(fields.temperature.unwrap_or(1.0)),
                top_p: fields.top_p,
                seed,
                top_logprobs: fields.top_logprobs,
                ..GenerationConfig::default()
            },
            &prompt,
        );
        Ok(Prepared {
            prompt,
            images,
            sampling,
            stops: fields.stop,
            prompt_positions: positions,
        })
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e.to_string(),
        )
    })?
}

pub(crate) enum PromptText {
    Chat(Vec<Turn>),
    Raw(String),
}

/// The chat turns and image URLs of a request: images become `<image>\n` markers at their place
/// in the message, so `[image, text]` is the prompt `blip3 generate --image I --prompt TEXT`
/// builds.
pub(crate) fn chat_turns(req: &ChatRequest) -> Result<(Vec<Turn>, Vec<String>), ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty").param("messages"));
    }
    let mut turns = Vec::with_capacity(req.messages.len());
    let mut urls = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role {other:?} is not supported (system, user, assistant)"
                ))
                .param("messages"));
            }
        };
        let text = match &m.content {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match part {
                        ContentPart::Text { text: t } => text.push_str(t),
                        ContentPart::ImageUrl { image_url } => {
                            if role != Role::User {
                                return Err(ApiError::invalid(format!(
                                    "messages[{i}]: images are accepted in user messages only"
                                ))
                                .param("messages"));
                            }
                            text.push_str("<image>\n");
                            urls.push(image_url.url.clone());
                        }
                    }
                }
                text
            }
        };
        turns.push(Turn { role, text });
    }
    if turns.last().map(|t| t.role) != Some(Role::User) {
        return Err(ApiError::invalid("the last message must be a user message").param("messages"));
    }
    Ok((turns, urls))
}

/// Queues a prepared request; its events arrive on the returned channel.
pub(crate) fn submit(
    state: &AppState,
    p: &Prepared,
) -> Result<(UnboundedReceiver<Event>, Arc<AtomicBool>), ApiError> {
    let (tx, rx) = unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let job = Job {
        ids: p.prompt.ids.clone(),
        images: p.images.clone(),
        sampling: p.sampling.clone(),
        events: tx,
        cancel: cancel.clone(),
        positions: p.prompt_positions,
    };
    state.scheduler.submit(job).map_err(|e| match e {
        SubmitError::Full(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            e.to_string(),
        )
        .code("server_busy"),
        SubmitError::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            e.to_string(),
        ),
    })?;
    state
        .metrics
        .queue_depth
        .set(state.scheduler.queued() as i64);
    Ok((rx, cancel))
}
