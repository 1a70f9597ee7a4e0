//! Answering a request: scheduler events turned into an OpenAI completion object (collected to
//! the end) or into server-sent events (streamed, ending with `data: [DONE]`), with stop strings,
//! log-probabilities, usage counts and the time-to-first-token metric.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use blip3_model::FinishReason;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::AppState;
use crate::openai::{TokenLogprob, TopLogprob, Usage};
use crate::reply::ReplyText;
use crate::request::{ApiError, Prepared};
use crate::scheduler::Event;

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn request_id(state: &AppState, prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}",
        state.seeds.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn finish_reason(finish: FinishReason, stopped: bool) -> &'static str {
    match (finish, stopped) {
        (_, true) | (FinishReason::Stop, _) | (FinishReason::Cancelled, _) => "stop",
        (FinishReason::Length, false) => "length",
    }
}

/// A generated token's log-probability entry.
pub(crate) fn token_logprob(
    state: &AppState,
    id: u32,
    logprob: f32,
    top: &[(u32, f32)],
) -> TokenLogprob {
    let text = |id: u32| {
        state
            .processor
            .tokenizer()
            .decode(&[id], false)
            .unwrap_or_default()
    };
    let token = text(id);
    TokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob,
        top_logprobs: top
            .iter()
            .map(|&(t, lp)| {
                let token = text(t);
                TopLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: lp,
                }
            })
            .collect(),
    }
}

/// Records the time to the first token, once per request.
fn first_token(state: &AppState, arrived: Instant, first: &mut bool) {
    if std::mem::take(first) {
        state
            .metrics
            .time_to_first_token
            .observe(arrived.elapsed().as_secs_f64());
    }
}

/// Everything a finished non-streamed generation produced.
pub(crate) struct Outcome {
    pub(crate) text: String,
    pub(crate) finish: &'static str,
    pub(crate) usage: Usage,
    pub(crate) logprobs: Vec<TokenLogprob>,
}

/// Runs a request to the end (non-streamed).
pub(crate) async fn collect(
    state: &AppState,
    p: &Prepared,
    mut events: UnboundedReceiver<Event>,
    cancel: &AtomicBool,
    arrived: Instant,
    with_logprobs: bool,
) -> Result<Outcome, ApiError> {
    let stop_ids = p.prompt.stop_ids.clone();
    let mut reply = ReplyText::new(state.processor.text_stream(&stop_ids), p.stops.clone());
    let mut logprobs = Vec::new();
    let mut prompt_tokens = p.prompt_positions;
    let mut first = true;
    let mut stopped = false;
    while let Some(event) = events.recv().await {
        match event {
            Event::Started { prompt_tokens: n } => prompt_tokens = n,
            Event::Token { id, logprob, top } => {
                first_token(state, arrived, &mut first);
                if stopped || stop_ids.contains(&id) {
                    continue;
                }
                if with_logprobs {
                    logprobs.push(token_logprob(state, id, logprob, &top));
                }
                if reply.push(id).stopped {
                    stopped = true;
                    cancel.store(true, Ordering::SeqCst);
                }
            }
            Event::Done {
                finish,
                completion_tokens,
            } => {
                reply.finish();
                return Ok(Outcome {
                    text: reply.text().to_string(),
                    finish: finish_reason(finish, stopped),
                    usage: Usage {
                        prompt_tokens,
                        completion_tokens,
                        total_tokens: prompt_tokens + completion_tokens,
                    },
                    logprobs,
                });
            }
            Event::Failed(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("the model rejected the request: {e}"),
                ));
            }
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the model thread stopped",
    ))
}

/// What kind of stream chunks to write.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Completion,
}

/// What a stream's chunks look like.
#[derive(Clone, Copy)]
pub(crate) struct StreamFormat {
    /// Chat chunks or text-completion chunks.
    pub(crate) kind: Kind,
    /// Each token's log-probability entry.
    pub(crate) logprobs: bool,
    /// A last chunk with the token counts.
    pub(crate) include_usage: bool,
}

/// Streams a request as server-sent events, ending with `data: [DONE]`.
pub(crate) fn stream(
    state: Arc<AppState>,
    p: Prepared,
    events: UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
    arrived: Instant,
    format: StreamFormat,
) -> Response {
    let StreamFormat {
        kind,
        logprobs: with_logprobs,
        include_usage,
    } = format;
    let (tx, rx) = unbounded_channel::<Result<SseEvent, Infallible>>();
    let id = request_id(
        &state,
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
    );
    tokio::spawn(async move {
        let mut events = events;
        let created = now();
        let model = state.config.model_name.clone();
        let chunk = |delta: Value, finish: Option<&str>, logprobs: Option<Value>| -> SseEvent {
            let body = match kind {
                Kind::Chat => json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
                }),
                Kind::Completion => json!({
                    "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")),
                                 "finish_reason": finish, "logprobs": logprobs}],
                }),
            };
            SseEvent::default().data(body.to_string())
        };
        let stop_ids = p.prompt.stop_ids.clone();
        let mut reply = ReplyText::new(state.processor.text_stream(&stop_ids), p.stops.clone());
        let mut prompt_tokens = p.prompt_positions;
        let mut first = true;
        let mut stopped = false;
        if kind == Kind::Chat
            && tx
                .send(Ok(chunk(
                    json!({"role": "assistant", "content": ""}),
                    None,
                    None,
                )))
                .is_err()
        {
            return;
        }
        loop {
            // Hanging up is noticed even while the sequence produces no visible text (special
            // tokens, a stop string being matched): the connection drops the event receiver.
            let event = tokio::select! {
                _ = tx.closed() => return,
                event = events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            match event {
                Event::Started { prompt_tokens: n } => prompt_tokens = n,
                Event::Token {
                    id: tok,
                    logprob,
                    top,
                } => {
                    first_token(&state, arrived, &mut first);
                    if stopped || stop_ids.contains(&tok) {
                        continue;
                    }
                    let piece = reply.push(tok);
                    if piece.stopped {
                        stopped = true;
                        cancel.store(true, Ordering::SeqCst);
                    }
                    let lp = with_logprobs.then(|| {
                        let entry = token_logprob(&state, tok, logprob, &top);
                        match kind {
                            Kind::Chat => json!({"content": [entry]}),
                            Kind::Completion => completion_logprobs(&[entry]),
                        }
                    });
                    if (!piece.text.is_empty() || lp.is_some())
                        && tx
                            .send(Ok(chunk(json!({"content": piece.text}), None, lp)))
                            .is_err()
                    {
                        // The client went away: dropping `events` cancels the sequence.
                        return;
                    }
                }
                Event::Done {
                    finish,
                    completion_tokens,
                } => {
                    let rest = reply.finish();
                    if !rest.text.is_empty() {
                        let _ = tx.send(Ok(chunk(json!({"content": rest.text}), None, None)));
                    }
                    let _ = tx.send(Ok(chunk(
                        json!({}),
                        Some(finish_reason(finish, stopped)),
                        None,
                    )));
                    if include_usage {
                        let usage = Usage {
                            prompt_tokens,
                            completion_tokens,
                            total_tokens: prompt_tokens + completion_tokens,
                        };
                        let body = json!({"id": id, "object": match kind {
                            Kind::Chat => "chat.completion.chunk", Kind::Completion => "text_completion"},
                            "created": created, "model": model, "choices": [], "usage": usage});
                        let _ = tx.send(Ok(SseEvent::default().data(body.to_string())));
                    }
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]")));
                    return;
                }
                Event::Failed(e) => {
                    let body = json!({"error": {"message": format!("the model rejected the request: {e}"),
                        "type": "invalid_request_error", "param": null, "code": null}});
                    let _ = tx.send(Ok(SseEvent::default().data(body.to_string())));
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]")));
                    return;
                }
            }
        }
    });
    // Comment lines every second keep proxies from timing the stream out and make a hung-up
    // client show as a failed write, which drops the stream.
    Sse::new(UnboundedReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(1)))
        .into_response()
}

/// The legacy completions `logprobs` object for some tokens.
pub(crate) fn completion_logprobs(entries: &[TokenLogprob]) -> Value {
    json!({
        "tokens": entries.iter().map(|e| e.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|e| e.logprob).collect::<Vec<_>>(),
        "top_logprobs": entries.iter().map(|e| {
            e.top_logprobs.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
    })
}
