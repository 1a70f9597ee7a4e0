//! The HTTP handlers. Every request body is read with the server's size limit and parsed here, so
//! that every malformed request — bad JSON, wrong types, unknown roles, too many images for the
//! context, oversized bodies, bad base64, refused paths — gets a 4xx with OpenAI's error object,
//! never a panic.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::AppState;
use crate::openai::{ChatRequest, ChoiceLogprobs, CompletionRequest, Prompt, SamplingParams};
use crate::request::{
    ApiError, PromptText, SamplingFields, chat_turns, prepare, read_json, submit,
};
use crate::respond::{
    Kind, Outcome, StreamFormat, collect, completion_logprobs, now, request_id, stream,
};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let endpoint = request.uri().path().to_string();
            state
                .metrics
                .requests
                .with_label_values(&[endpoint.as_str(), "401"])
                .inc();
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong API key (Authorization: Bearer <key>)",
            )
            .code("invalid_api_key")
            .into_response();
        }
    }
    next.run(request).await
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such endpoint",
    )
}

async fn models(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    count(&state, "/v1/models", StatusCode::OK);
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.config.model_name,
            "object": "model",
            "created": state.started,
            "owned_by": "blip3",
        }],
    }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    state
        .metrics
        .queue_depth
        .set(state.scheduler.queued() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

fn count(state: &AppState, endpoint: &str, status: StatusCode) {
    state
        .metrics
        .requests
        .with_label_values(&[endpoint, status.as_str()])
        .inc();
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let endpoint = "/v1/chat/completions";
    let response = match chat_inner(state.clone(), body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    count(&state, endpoint, response.status());
    response
}

async fn chat_inner(state: Arc<AppState>, body: Body) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: ChatRequest = read_json(&state, body).await?;
    let (turns, urls) = chat_turns(&req)?;
    if !req.logprobs && req.top_logprobs.is_some_and(|k| k > 0) {
        return Err(ApiError::invalid("top_logprobs needs logprobs: true").param("top_logprobs"));
    }
    let top = req.top_logprobs.unwrap_or(0);
    if top > 20 {
        return Err(ApiError::invalid("top_logprobs must be in 0..=20").param("top_logprobs"));
    }
    let s = &req.sampling;
    let max_tokens = req.max_completion_tokens.or(s.max_tokens);
    let fields = sampling_fields(s, max_tokens, top);
    let format = stream_format(s, Kind::Chat, req.logprobs);
    let out = match answer(
        state.clone(),
        arrived,
        PromptText::Chat(turns),
        urls,
        fields,
        format,
        s.stream,
    )
    .await?
    {
        Answer::Streamed(r) => return Ok(r),
        Answer::Done(out) => out,
    };
    Ok(axum::Json(json!({
        "id": request_id(&state, "chatcmpl"),
        "object": "chat.completion",
        "created": now(),
        "model": state.config.model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": out.text},
            "finish_reason": out.finish,
            "logprobs": req.logprobs.then_some(ChoiceLogprobs { content: out.logprobs }),
        }],
        "usage": out.usage,
    }))
    .into_response())
}

/// The sampling fields of a request.
fn sampling_fields(s: &SamplingParams, max_tokens: Option<u32>, top: u32) -> SamplingFields {
    SamplingFields {
        max_tokens,
        temperature: s.temperature,
        top_p: s.top_p,
        seed: s.seed,
        n: s.n,
        stop: s.stop.as_ref().map(|s| s.strings()).unwrap_or_default(),
        top_logprobs: top as usize,
        ignore_eos: s.ignore_eos,
    }
}

fn stream_format(s: &SamplingParams, kind: Kind, logprobs: bool) -> StreamFormat {
    StreamFormat {
        kind,
        logprobs,
        include_usage: s.stream_options.as_ref().is_some_and(|o| o.include_usage),
    }
}

/// A request's answer: a stream already under way, or the finished generation.
enum Answer {
    Streamed(Response),
    Done(Outcome),
}

/// Prepares and queues a request, then streams it or waits for it to finish.
async fn answer(
    state: Arc<AppState>,
    arrived: Instant,
    text: PromptText,
    urls: Vec<String>,
    fields: SamplingFields,
    format: StreamFormat,
    streamed: bool,
) -> Result<Answer, ApiError> {
    let p = prepare(state.clone(), text, urls, fields).await?;
    let (events, cancel) = submit(&state, &p)?;
    if streamed {
        return Ok(Answer::Streamed(stream(
            state, p, events, cancel, arrived, format,
        )));
    }
    let out = collect(&state, &p, events, &cancel, arrived, format.logprobs).await?;
    Ok(Answer::Done(out))
}

async fn completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let endpoint = "/v1/completions";
    let response = match completions_inner(state.clone(), body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    count(&state, endpoint, response.status());
    response
}

async fn completions_inner(state: Arc<AppState>, body: Body) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let req: CompletionRequest = read_json(&state, body).await?;
    let prompt = match &req.prompt {
        Prompt::One(p) => p.clone(),
        Prompt::Many(v) if v.len() == 1 => v[0].clone(),
        Prompt::Many(_) => {
            return Err(ApiError::invalid("one prompt per request is served").param("prompt"));
        }
    };
    let top = req.logprobs.unwrap_or(0);
    if top > 5 {
        return Err(ApiError::invalid("logprobs must be in 0..=5").param("logprobs"));
    }
    let s = &req.sampling;
    // OpenAI's default for completions is 16 tokens.
    let fields = sampling_fields(s, Some(s.max_tokens.unwrap_or(16)), top);
    let with_logprobs = req.logprobs.is_some();
    let format = stream_format(s, Kind::Completion, with_logprobs);
    let text = PromptText::Raw(prompt);
    let out = match answer(
        state.clone(),
        arrived,
        text,
        req.images.clone(),
        fields,
        format,
        s.stream,
    )
    .await?
    {
        Answer::Streamed(r) => return Ok(r),
        Answer::Done(out) => out,
    };
    Ok(axum::Json(json!({
        "id": request_id(&state, "cmpl"),
        "object": "text_completion",
        "created": now(),
        "model": state.config.model_name,
        "choices": [{
            "index": 0,
            "text": out.text,
            "finish_reason": out.finish,
            "logprobs": with_logprobs.then(|| completion_logprobs(&out.logprobs)),
        }],
        "usage": out.usage,
    }))
    .into_response())
}
