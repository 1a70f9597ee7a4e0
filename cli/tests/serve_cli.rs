//! The serving commands as a user runs them, on a tiny random model saved like a user's
//! checkpoint: `blip3 serve` answers a greedy chat request with exactly the text `blip3 generate`
//! prints for the same prompt, and names a missing model directory; `blip3 chat` keeps a
//! conversation (system sentence, images, save) whose first reply equals `generate`'s and drops the
//! oldest turns when the context is full; `blip3 bench serve` runs end to end on a small load and
//! records what it measured.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{blip3, generate_json, json_lines, succeeded, tiny_model_dir_with, wide_png};

/// The tiny model with a widened head, so that greedy replies are clear-cut.
fn tiny_model_dir(dir: &Path) {
    tiny_model_dir_with(dir, 23, Some(40.0));
}

/// A `blip3 serve` process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `blip3 serve` on a free port and waits for it to answer `/health`.
fn serve(model: &Path) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = blip3()
        .args(["serve", "--model"])
        .arg(model)
        .args(["--port", &port.to_string(), "--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = ureq::get(&format!("{base}/health")).call()
            && r.status() == 200
        {
            return (server, base);
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            let mut err = String::new();
            if let Some(e) = server.0.stderr.take() {
                for line in BufReader::new(e).lines().map_while(Result::ok) {
                    err.push_str(&line);
                    err.push('\n');
                }
            }
            panic!("blip3 serve exited ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "blip3 serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_greedy_server_reply_equals_blip3_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_dir(&model);
    let img = wide_png(tmp.path());
    let prompt = "What color is the circle?";
    let image = img.display().to_string();
    let generated = generate_json(
        &model,
        &[
            "--image",
            &image,
            "--prompt",
            prompt,
            "--max-new-tokens",
            "12",
        ],
    );
    let expected = generated["text"].as_str().unwrap().to_string();
    assert!(!expected.is_empty(), "generate gave an empty reply");

    // The same image as a local file: the server needs --allow-root for that, so send it as a
    // data: URL instead, as clients do.
    let bytes = std::fs::read(&img).unwrap();
    use base64::Engine;
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    let (_server, base) = serve(&model);
    let body = json!({
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": prompt},
        ]}],
        "temperature": 0,
        "max_tokens": 12,
    });
    let reply: Value = ureq::post(&format!("{base}/v1/chat/completions"))
        .send_json(body)
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(
        reply["choices"][0]["message"]["content"].as_str(),
        Some(expected.as_str()),
        "server {reply} vs generate {generated}"
    );
    // generate counts text tokens (one `<image>` id per image) and vision tokens apart; the API's
    // usage counts the positions the model saw, each image's marker replaced by its tokens.
    let positions = generated["prompt_tokens"].as_u64().unwrap()
        + generated["vision_tokens"].as_u64().unwrap()
        - 1;
    assert_eq!(
        reply["usage"]["prompt_tokens"].as_u64(),
        Some(positions),
        "the same prompt positions"
    );
}

#[test]
fn serving_a_missing_model_directory_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-model");
    let out = blip3()
        .args(["serve", "--model"])
        .arg(&missing)
        .args(["--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_serving_benchmark_runs_and_records_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("serve.jsonl");
    let stdout = succeeded(
        blip3()
            .args(["bench", "serve", "--configs", "tiny", "--clients", "1,3"])
            .args(["--requests-per-client", "2", "--max-tokens", "5"])
            .args(["--baseline-clients", "3", "--out"])
            .arg(&out_file),
    );
    assert!(stdout.contains("continuous batching"), "{stdout}");
    let rows = json_lines(&out_file);
    let shape: Vec<(String, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["mode"].as_str().unwrap().to_string(),
                r["clients"].as_u64().unwrap(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("batched".into(), 1, 2),
            ("batched".into(), 3, 6),
            ("one-at-a-time".into(), 3, 6)
        ]
    );
    for r in &rows {
        assert_eq!(r["errors"], 0, "{r}");
        // ignore_eos: every request generates exactly --max-tokens tokens.
        assert_eq!(
            r["generated_tokens"].as_u64(),
            Some(r["requests"].as_u64().unwrap() * 5),
            "{r}"
        );
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        let (p50, p99) = (
            r["ttft_p50_ms"].as_f64().unwrap(),
            r["ttft_p99_ms"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p99 >= p50, "{r}");
    }
}

/// Runs `blip3 chat` with `lines` on its standard input; returns (stdout, stderr).
fn chat(model: &Path, extra: &[&str], lines: &[String]) -> (String, String) {
    use std::io::Write;
    let mut child = blip3()
        .args(["chat", "--model"])
        .arg(model)
        .args(extra)
        .args(["--log", "warn"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn chat_keeps_the_conversation_and_its_first_reply_equals_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_dir(&model);
    let img = tmp.path().join("square.png");
    image::RgbImage::from_fn(48, 48, |x, y| {
        image::Rgb([(x * 5) as u8, 90, (y * 5) as u8])
    })
    .save(&img)
    .unwrap();
    let saved = tmp.path().join("conversation.json");
    let (_, stderr) = chat(
        &model,
        &["--max-new-tokens", "10"],
        &[
            "/system Answer in one word.".into(),
            format!("/image {}", img.display()),
            "What is this?".into(),
            "/bogus".into(),
            "And the colour?".into(),
            format!("/save {}", saved.display()),
            "/quit".into(),
            "never read".into(),
        ],
    );
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let messages = v["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
    assert_eq!(messages[1]["content"], "<image>\nWhat is this?");
    assert_eq!(messages[1]["images"][0], img.display().to_string());
    assert_eq!(messages[3]["content"], "And the colour?");

    // The first exchange is the prompt `generate --system ... --image ...` builds.
    let image = img.display().to_string();
    let g = generate_json(
        &model,
        &[
            "--image",
            &image,
            "--system",
            "Answer in one word.",
            "--prompt",
            "What is this?",
            "--max-new-tokens",
            "10",
        ],
    );
    assert_eq!(
        messages[2]["content"], g["text"],
        "chat's first reply vs generate"
    );
}

#[test]
fn chat_drops_the_oldest_turns_when_the_context_is_full() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model_dir(&model);
    let saved = tmp.path().join("conversation.json");
    // The tiny model holds 2048 positions; each message takes a few hundred and the reply budget
    // most of the rest, so the second message only fits without the first exchange.
    let long = "tell me more ".repeat(120);
    let (_, stderr) = chat(
        &model,
        &["--max-new-tokens", "1500"],
        &[
            format!("first {long}"),
            format!("second {long}"),
            format!("/save {}", saved.display()),
        ],
    );
    assert!(stderr.contains("no longer fits the context"), "{stderr}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let messages = v["messages"].as_array().unwrap();
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .starts_with("second"),
        "the first exchange was dropped: {v}"
    );
    assert_eq!(messages.len(), 2);
}
