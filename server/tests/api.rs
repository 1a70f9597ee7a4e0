//! `blip3 serve` end to end on loopback: a tiny random model (its head widened so greedy choices
//! are clear-cut) behind the server on an ephemeral port; every endpoint, streaming, logprobs,
//! stop strings, cancellation, limits, authentication and every kind of malformed request; and a
//! bounded concurrent load whose replies must each equal the same request served alone.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use blip3_server::{SchedulerConfig, ServeConfig};
use serde_json::{Value, json};

use common::*;

#[test]
fn health_models_metrics_and_the_page() {
    let f = Fixture::new(ServeConfig {
        model_name: "tiny-test".into(),
        ..config()
    });
    let (code, body) = f.get("/health");
    assert_eq!((code, body.contains("ok")), (200, true), "{body}");
    let (code, body) = f.get("/v1/models");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(code, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny-test");
    let (code, page) = f.get("/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>blip3 chat</title>") && page.contains("/app.js"));
    let (code, js) = f.get("/app.js");
    assert_eq!(code, 200);
    assert!(js.contains("/v1/chat/completions"));
    let (code, _) = f.post("/v1/chat/completions", &chat_body("hi", None, 3));
    assert_eq!(code, 200);
    let (code, metrics) = f.get("/metrics");
    assert_eq!(code, 200);
    for name in [
        "blip3_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1",
        "blip3_queue_depth",
        "blip3_active_sequences",
        "blip3_generated_tokens_total",
        "blip3_time_to_first_token_seconds_count 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let (code, body) = f.get("/nowhere");
    assert_eq!(code, 404);
    assert!(body.contains("\"error\""), "{body}");
}

#[test]
fn greedy_chat_equals_generate_and_streams_the_same_text() {
    let f = Fixture::new(config());
    let img = png(90, 40, 3);
    let (code, v) = f.post(
        "/v1/chat/completions",
        &chat_body("What is in the picture?", Some(&img), 24),
    );
    assert_eq!(code, 200, "{v}");
    let text = reply_text(&v);
    assert_eq!(
        text,
        f.generate_reply("What is in the picture?", Some(&img), 24)
    );
    assert_eq!(v["object"], "chat.completion");
    let usage = &v["usage"];
    let completion = usage["completion_tokens"].as_u64().expect("usage");
    assert!((1..=24).contains(&completion), "{usage}");
    assert!(
        usage["prompt_tokens"].as_u64().expect("prompt") > 8,
        "vision tokens are counted"
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + completion)
    );
    let finish = v["choices"][0]["finish_reason"].as_str().expect("finish");
    assert!(finish == "stop" || finish == "length", "{finish}");

    let mut body = chat_body("What is in the picture?", Some(&img), 24);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = f.stream("/v1/chat/completions", &body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut streamed = String::new();
    let mut finish_seen = None;
    let mut usage_seen = None;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).expect("chunk json");
        if let Some(u) = c.get("usage") {
            usage_seen = Some(u.clone());
            continue;
        }
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(s) = c["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(s);
        }
        if let Some(r) = c["choices"][0]["finish_reason"].as_str() {
            finish_seen = Some(r.to_string());
        }
    }
    assert_eq!(streamed, text);
    assert_eq!(finish_seen.as_deref(), Some(finish));
    assert_eq!(usage_seen.as_ref(), Some(usage));
}

#[test]
fn multi_turn_system_and_logprobs() {
    let f = Fixture::new(config());
    let body = json!({"messages": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": [{"type": "text", "text": "Another one?"}]}],
        "temperature": 0, "max_tokens": 6, "logprobs": true, "top_logprobs": 3});
    let (code, v) = f.post("/v1/chat/completions", &body);
    assert_eq!(code, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs");
    assert!(!content.is_empty());
    for entry in content {
        let lp = entry["logprob"].as_f64().expect("logprob");
        assert!(lp <= 0.0, "{entry}");
        let top = entry["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert!(
            (top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-4,
            "{entry}"
        );
    }
    let joined: String = content
        .iter()
        .map(|e| e["token"].as_str().unwrap().to_string())
        .collect();
    assert!(!joined.is_empty());
}

#[test]
fn completions_with_images_and_stop_strings() {
    let f = Fixture::new(config());
    let img = png(40, 90, 9);
    let body = json!({"prompt": "<image>A photo of", "images": [data_url(&img)],
                      "max_tokens": 20, "temperature": 0, "logprobs": 2});
    let (code, v) = f.post("/v1/completions", &body);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().expect("text").to_string();
    assert_eq!(
        v["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .map(Vec::len),
        v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .map(Vec::len)
    );
    // A stop string from the middle of the greedy reply cuts it there.
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[3..5].iter().collect();
        let cut = text.find(&stop).expect("stop inside");
        let mut with_stop = body.clone();
        with_stop["stop"] = json!([stop]);
        let (code, v) = f.post("/v1/completions", &with_stop);
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["choices"][0]["text"].as_str(), Some(&text[..cut]));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        // Streamed, the same cut.
        with_stop["stream"] = json!(true);
        let events = f.stream("/v1/completions", &with_stop);
        let streamed: String = events[..events.len() - 1]
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
            .collect();
        assert_eq!(streamed, &text[..cut]);
    }
}

#[test]
fn every_malformed_request_gets_an_openai_error() {
    let allowed = tempfile::tempdir().expect("tempdir");
    std::fs::write(allowed.path().join("ok.png"), png(20, 20, 1)).expect("write");
    let f = Fixture::new(ServeConfig {
        allow_root: Some(allowed.path().to_path_buf()),
        ..config()
    });
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("x.png"), png(20, 20, 1)).expect("write");
    let user = |content: Value| json!({"messages": [{"role": "user", "content": content}], "max_tokens": 2});
    let img = |url: String| {
        user(
            json!([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]),
        )
    };
    let many_images: Vec<Value> = (0..80)
        .map(|_| json!({"type": "image_url", "image_url": {"url": data_url(&png(90, 40, 2))}}))
        .collect();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("bad json", "{\"messages\": [".into(), 400, "not valid"),
        ("wrong type", json!({"messages": "hello"}).to_string(), 400, "not valid"),
        ("no messages", json!({"messages": []}).to_string(), 400, "empty"),
        ("unknown role", json!({"messages": [{"role": "tool", "content": "x"}]}).to_string(), 400, "role"),
        ("last not user", json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}).to_string(), 400, "last message"),
        ("n = 2", json!({"messages": [{"role": "user", "content": "a"}], "n": 2}).to_string(), 400, "n > 1"),
        ("temperature", json!({"messages": [{"role": "user", "content": "a"}], "temperature": 9}).to_string(), 400, "temperature"),
        ("top_p", json!({"messages": [{"role": "user", "content": "a"}], "top_p": 0}).to_string(), 400, "top_p"),
        ("max_tokens 0", json!({"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}).to_string(), 400, "max_tokens"),
        ("max_tokens past context", json!({"messages": [{"role": "user", "content": "a"}], "max_tokens": 100000}).to_string(), 400, "context"),
        ("bad base64", img("data:image/png;base64,@@@@".into()).to_string(), 400, "base64"),
        ("not an image", img(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(b"hello"))).to_string(), 400, "image 1"),
        ("remote url", img("https://example.com/cat.jpg".into()).to_string(), 400, "remote"),
        ("path outside the root", img(outside.path().join("x.png").display().to_string()).to_string(), 400, "refused"),
        ("more images than the context holds", user(json!(many_images)).to_string(), 400, "context"),
        ("markers and images disagree", user(json!("<image> <image> two markers")).to_string(), 400, "image"),
        ("oversized body", json!({"messages": [{"role": "user", "content": "x".repeat(2 << 20)}]}).to_string(), 413, "limit"),
        ("completion: no prompt", json!({"max_tokens": 2}).to_string(), 400, "not valid"),
    ];
    for (what, body, status, needle) in cases {
        let path = if what.starts_with("completion") {
            "/v1/completions"
        } else {
            "/v1/chat/completions"
        };
        let (code, v) = f.post_raw(path, &body, None);
        assert_eq!(code, status, "{what}: {v}");
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error object: {v}"));
        assert!(v["error"]["type"].is_string(), "{what}: {v}");
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
    }
    // An allowed local file works, as a path and as a file:// URL.
    let local = allowed.path().join("ok.png");
    for url in [
        local.display().to_string(),
        format!("file://{}", local.display()),
    ] {
        let (code, v) = f.post("/v1/chat/completions", &img(url));
        assert_eq!(code, 200, "{v}");
    }
    // The server is still alive after all that.
    assert_eq!(f.get("/health").0, 200);
}

#[test]
fn api_key_is_required_when_set() {
    let f = Fixture::new(ServeConfig {
        api_key: Some("sekrit".into()),
        ..config()
    });
    let body = chat_body("hi", None, 2).to_string();
    let (code, v) = f.post_raw("/v1/chat/completions", &body, None);
    assert_eq!(code, 401, "{v}");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(
        f.post_raw("/v1/chat/completions", &body, Some("wrong")).0,
        401
    );
    assert_eq!(
        f.post_raw("/v1/chat/completions", &body, Some("sekrit")).0,
        200
    );
    // The health check and the page stay open.
    assert_eq!(f.get("/health").0, 200);
    assert_eq!(f.get("/").0, 200);
}

#[test]
fn a_full_queue_answers_429_and_a_cancelled_stream_frees_its_slot() {
    // A context of 32k positions: the long request below would take many seconds to finish.
    let f = Arc::new(Fixture::with_model(
        ServeConfig {
            scheduler: SchedulerConfig {
                max_seqs: 1,
                max_queue: 1,
                max_prefill_tokens: 1,
            },
            ..config()
        },
        model_dir_with_context(Some(32_768)),
    ));
    // A long streaming request holds the only slot; read its first chunk, then hang up.
    // Nearly the whole context, past end-of-text: far longer than the rest of the test takes.
    let budget = 32_000;
    let mut long = chat_body("tell me a long story", None, budget);
    long["ignore_eos"] = json!(true);
    long["stream"] = json!(true);
    // A plain socket, so that hanging up below closes the connection for certain.
    let body = long.to_string();
    let mut socket = std::net::TcpStream::connect(f.server.addr).expect("connect");
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reader = BufReader::new(socket.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("line") > 0,
            "no event before EOF"
        );
        if line.starts_with("data: ") {
            break;
        }
    }
    // The role chunk is sent as soon as the request is accepted, possibly while it still waits
    // for the scheduler: wait until it holds the slot.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = f.get("/metrics");
        if m.contains("blip3_active_sequences 1") && m.contains("blip3_queue_depth 0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the long request never took the slot:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // While it runs: one request waits in the queue, the next is refused with 429.
    let waiting = {
        let f = f.clone();
        std::thread::spawn(move || f.post("/v1/chat/completions", &chat_body("a", None, 2)))
    };
    // Once the waiting request is in the queue, the next one is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f.get("/metrics").1.contains("blip3_queue_depth 1") {
        assert!(Instant::now() < deadline, "the second request never queued");
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut refused = false;
    while Instant::now() < deadline && !refused {
        let (code, v) = f.post("/v1/chat/completions", &chat_body("b", None, 2));
        if code == 429 {
            assert_eq!(v["error"]["type"], "rate_limit_error");
            refused = true;
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(refused, "no 429 while the slot and the queue were full");
    socket.shutdown(std::net::Shutdown::Both).expect("hang up");
    drop(reader);
    drop(socket);
    // The hung-up stream leaves the batch, so the queued request gets the slot and completes.
    let (code, v) = waiting.join().expect("thread");
    assert_eq!(code, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = f.get("/metrics");
        if m.contains("blip3_active_sequences 0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled stream kept its slot:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, m) = f.get("/metrics");
    let generated: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("blip3_generated_tokens_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("counter");
    assert!(
        generated < budget as f64,
        "the cancelled stream ran to its budget ({generated} tokens)"
    );
    assert!(
        m.contains("blip3_sequences_cancelled_total 1"),
        "the hung-up stream was not counted as cancelled:\n{m}"
    );
}

fn rss_bytes() -> u64 {
    let mut s = String::new();
    if std::fs::File::open("/proc/self/statm")
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_err()
    {
        return 0;
    }
    s.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Concurrent streaming clients (BLIP3_LOAD_CLIENTS, default 16) each sending requests
/// (BLIP3_LOAD_REQUESTS in all, default 96): no errors, every reply equal to the same request
/// served alone, memory flat. The figures of the full run (64 clients, 1,000 requests) are in
/// docs/serving.md.
#[test]
fn concurrent_load_replies_equal_the_same_requests_served_alone() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let clients = env("BLIP3_LOAD_CLIENTS", 16);
    let total = env("BLIP3_LOAD_REQUESTS", 96).max(4);
    let f = Arc::new(Fixture::new(ServeConfig {
        scheduler: SchedulerConfig {
            max_seqs: 32,
            max_queue: 1024,
            max_prefill_tokens: 512,
        },
        ..config()
    }));
    let prompts: Vec<(String, Option<Vec<u8>>, u32)> = (0..12)
        .map(|i| {
            let image = (i % 3 != 0).then(|| png(30 + 13 * i as u32, 60 - 3 * i as u32, i as u8));
            (
                format!("question {i}: what do you see?"),
                image,
                4 + (i as u32 * 5) % 20,
            )
        })
        .collect();
    // Served alone, one at a time.
    let alone: Vec<String> = prompts
        .iter()
        .map(|(t, img, n)| {
            let (code, v) = f.post("/v1/chat/completions", &chat_body(t, img.as_deref(), *n));
            assert_eq!(code, 200, "{v}");
            reply_text(&v)
        })
        .collect();
    let before = rss_bytes();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Resident memory when a quarter, half, three quarters and all of the requests are answered.
    let completed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let marks = Arc::new(std::sync::Mutex::new(Vec::<(usize, u64)>::new()));
    let prompts = Arc::new(prompts);
    let alone = Arc::new(alone);
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (f, next, prompts, alone) =
                (f.clone(), next.clone(), prompts.clone(), alone.clone());
            let (completed, marks) = (completed.clone(), marks.clone());
            std::thread::spawn(move || {
                let mut done = 0;
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if k >= total {
                        return done;
                    }
                    let i = k % prompts.len();
                    let (t, img, n) = &prompts[i];
                    let mut body = chat_body(t, img.as_deref(), *n);
                    body["stream"] = json!(true);
                    let events = f.stream("/v1/chat/completions", &body);
                    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
                    let text: String = events[..events.len() - 1]
                        .iter()
                        .map(|e| serde_json::from_str::<Value>(e).expect("chunk"))
                        .filter_map(|c| {
                            c["choices"][0]["delta"]["content"]
                                .as_str()
                                .map(str::to_string)
                        })
                        .collect();
                    assert_eq!(
                        text, alone[i],
                        "request {k} (prompt {i}) differs from the same request served alone"
                    );
                    done += 1;
                    let n = 1 + completed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if (1..=4).any(|q| n == total * q / 4)
                        && let Ok(mut m) = marks.lock()
                    {
                        m.push((n, rss_bytes()));
                    }
                }
            })
        })
        .collect();
    let served: usize = handles.into_iter().map(|h| h.join().expect("client")).sum();
    assert_eq!(served, total);
    let secs = started.elapsed().as_secs_f64();
    let mut marks = marks.lock().expect("marks").clone();
    marks.sort();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let trace: Vec<String> = marks
        .iter()
        .map(|(n, b)| format!("{n}: {:.0} MiB", mib(*b)))
        .collect();
    eprintln!(
        "load: {clients} clients, {total} requests in {secs:.1} s ({:.0} requests/s), every reply \
         equal to the request served alone; RSS {:.0} MiB before, {}",
        total as f64 / secs,
        mib(before),
        trace.join(", ")
    );
    // Flat: after the first quarter (allocator pools and caches warm up), memory stays put.
    assert_eq!(
        marks.len(),
        4,
        "memory was not sampled at each quarter: {trace:?}"
    );
    let (quarter, end) = (marks[0].1, marks[3].1);
    assert!(
        end < quarter + (64 << 20),
        "memory grew from {:.0} MiB to {:.0} MiB over the load",
        mib(quarter),
        mib(end)
    );
    let (_, m) = f.get("/metrics");
    assert!(m.contains("blip3_active_sequences 0"), "{m}");
}
