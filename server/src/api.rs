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
use crate::openai::{ChatRequest, ChoiceLogprobs, CompletionRequest, Prompt};
use crate::request::{
    ApiError, PromptText, SamplingFields, chat_turns, prepare, read_json, submit,
};
use crate::respond::{Kind, StreamFormat, collect, completion_logprobs, now, request_id, stream};

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
    let fields = SamplingFields {
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        n: req.n,
        stop: req.stop.as_ref().map(|s| s.strings()).unwrap_or_default(),
        top_logprobs: top as usize,
        ignore_eos: req.ignore_eos,
    };
    let p = prepare(state.clone(), PromptText::Chat(turns), urls, fields).await?;
    let (events, cancel) = submit(&state, &p)?;
    if req.stream {
        let usage = req.stream_options.is_some_and(|o| o.include_usage);
        return Ok(stream(
            state,
            p,
            events,
            cancel,
            arrived,
            StreamFormat {
                kind: Kind::Chat,
                logprobs: req.logprobs,
                include_usage: usage,
            },
        ));
    }
    let out = collect(&state, &p, events, &cancel, arrived, req.logprobs).await?;
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
    let fields = SamplingFields {
        max_tokens: Some(req.max_tokens.unwrap_or(16)),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        n: req.n,
        stop: req.stop.as_ref().map(|s| s.strings()).unwrap_or_default(),
        top_logprobs: top as usize,
        ignore_eos: req.ignore_eos,
    };
    let with_logprobs = req.logprobs.is_some();
    let p = prepare(
        state.clone(),
        PromptText::Raw(prompt),
        req.images.clone(),
        fields,
    )
    .await?;
    let (events, cancel) = submit(&state, &p)?;
    if req.stream {
        let usage = req.stream_options.is_some_and(|o| o.include_usage);
        return Ok(stream(
            state,
            p,
            events,
            cancel,
            arrived,
            StreamFormat {
                kind: Kind::Completion,
                logprobs: with_logprobs,
                include_usage: usage,
            },
        ));
    }
    let out = collect(&state, &p, events, &cancel, arrived, with_logprobs).await?;
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
