//! What the server tests share: a tiny random model saved like a user's checkpoint (its head
//! widened so greedy choices are clear-cut), a server over it on an ephemeral loopback port, HTTP
//! helpers, and the reply `blip3 generate` gives in process for comparison.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};

use base64::Engine;
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::loader::{LoadOptions, save_checkpoint};
use blip3_model::{GenerationConfig, MultimodalInput, XGenMMConfig};
use blip3_processor::{Loaded, TokenizerSource};
use blip3_server::{RunningServer, SchedulerConfig, ServeConfig};
use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use serde_json::{Value, json};

/// Multiplies every parameter of a module by a constant.
pub struct Scale(pub f32);

impl ModuleMapper for Scale {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let s = self.0;
        param.map(move |t| t * s)
    }
}

/// A tiny model saved like a user's checkpoint, with a widened head.
pub fn model_dir() -> tempfile::TempDir {
    model_dir_with_context(None)
}

/// [`model_dir`] with another context length (`max_position_embeddings`), e.g. to let one
/// request generate for much longer than a test step takes.
pub fn model_dir_with_context(context: Option<usize>) -> tempfile::TempDir {
    let tok = Blip3Tokenizer::tiny().expect("tokenizer");
    let device = Device::flex();
    device.seed(11);
    let mut cfg = XGenMMConfig::tiny(tok.initial_len());
    if let Some(n) = context {
        cfg.text.max_position_embeddings = n;
        cfg.text.original_max_position_embeddings = n;
    }
    let mut model = cfg.init(&device);
    model.lang_model.lm_head = model.lang_model.lm_head.map(&mut Scale(40.0));
    let dir = tempfile::tempdir().expect("tempdir");
    save_checkpoint(&model, dir.path()).expect("save");
    tok.save(dir.path()).expect("tokenizer");
    dir
}

pub fn load(dir: &std::path::Path) -> Loaded {
    blip3_processor::load(
        dir,
        &TokenizerSource::ModelDir,
        &Device::flex(),
        LoadOptions::default(),
    )
    .expect("load")
}

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub server: RunningServer,
    pub loaded: Loaded,
}

impl Fixture {
    pub fn new(config: ServeConfig) -> Fixture {
        Fixture::with_model(config, model_dir())
    }

    /// A server over the model saved in `dir`.
    pub fn with_model(config: ServeConfig, dir: tempfile::TempDir) -> Fixture {
        let for_server = load(dir.path());
        let loaded = load(dir.path());
        let server = blip3_server::spawn(
            for_server.model,
            for_server.processor,
            ServeConfig {
                addr: "127.0.0.1:0".parse().expect("addr"),
                ..config
            },
        )
        .expect("server");
        Fixture {
            _dir: dir,
            server,
            loaded,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string(), None)
    }

    pub fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = ureq::post(&self.url(path)).set("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        match req.send_string(body) {
            Ok(r) => (r.status(), r.into_json().expect("json")),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
            Err(e) => panic!("transport error: {e}"),
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        match ureq::get(&self.url(path)).call() {
            Ok(r) => (r.status(), r.into_string().expect("body")),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("transport error: {e}"),
        }
    }

    /// Streams a request; returns the `data:` payloads in order.
    pub fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = ureq::post(&self.url(path))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .expect("stream");
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let mut out = Vec::new();
        for line in BufReader::new(r.into_reader()).lines() {
            let line = line.expect("line");
            if let Some(data) = line.strip_prefix("data: ") {
                out.push(data.to_string());
            }
        }
        out
    }

    /// The reply `blip3 generate` gives: the processor's prompt, greedy, in process.
    pub fn generate_reply(&self, text: &str, png: Option<&[u8]>, max_new_tokens: usize) -> String {
        let p = &self.loaded.processor;
        let mut images = Vec::new();
        if let Some(bytes) = png {
            let rgb = blip3_data::image::decode_bytes(bytes, "img").expect("decode");
            images.push(p.image(&rgb, &Device::flex()).expect("image"));
        }
        let marked = format!("{}{text}", "<image>\n".repeat(images.len()));
        let prompt = p.encode_user(&marked, images.len()).expect("prompt");
        let cfg = p.generation_config(
            &GenerationConfig {
                max_new_tokens,
                ..GenerationConfig::default()
            },
            &prompt,
        );
        let input = MultimodalInput {
            input_ids: vec![prompt.ids.clone()],
            images: vec![images],
            labels: None,
        };
        let g = self
            .loaded
            .model
            .generate(&input, &cfg, |_, _| true)
            .expect("generate");
        p.decode_reply(&g[0].token_ids, &prompt.stop_ids)
            .expect("decode")
    }
}

pub fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed.wrapping_mul(3)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

pub fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub fn chat_body(text: &str, image: Option<&[u8]>, max_tokens: u32) -> Value {
    let mut parts = Vec::new();
    if let Some(b) = image {
        parts.push(json!({"type": "image_url", "image_url": {"url": data_url(b)}}));
    }
    parts.push(json!({"type": "text", "text": text}));
    json!({"model": "blip3", "messages": [{"role": "user", "content": parts}],
           "temperature": 0, "max_tokens": max_tokens})
}

pub fn reply_text(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

pub fn config() -> ServeConfig {
    ServeConfig {
        max_body_bytes: 1 << 20,
        scheduler: SchedulerConfig {
            max_seqs: 8,
            max_queue: 64,
            max_prefill_tokens: 512,
        },
        ..ServeConfig::default()
    }
}
