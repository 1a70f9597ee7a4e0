//! The chat page in a real headless browser: Debian's Chromium driven through ChromeDriver's
//! W3C WebDriver HTTP API. The page loads from the server, an image is chosen in its file input,
//! a question is typed and sent, and the answer must arrive in several streamed updates and equal
//! the reply the same question gets from `blip3 generate` (greedy, in process).
//!
//! Needs `chromedriver` and `chromium` (Debian packages `chromium` and `chromium-driver`;
//! `.ci/run` installs them). Without them the test says so and passes, unless
//! `BLIP3_REQUIRE_BROWSER=1` (set by `.ci/run` once the packages are installed), which makes a
//! missing browser a failure. `BLIP3_CHROMEDRIVER` and `BLIP3_CHROMIUM` override the binaries.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::*;

/// The W3C name of an element reference in WebDriver replies.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A ChromeDriver process on a free port, killed on drop.
struct Driver {
    child: Child,
    base: String,
}

impl Driver {
    fn start(binary: &PathBuf) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = ureq::get(&format!("{base}/status")).call()
                && r.into_json::<Value>()
                    .is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, base }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = ureq::request(method, &url).timeout(Duration::from_secs(120));
        let r = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match r {
            Ok(r) => r.into_json::<Value>().expect("webdriver json")["value"].take(),
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "webdriver {method} {path}: {code} {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("webdriver {method} {path}: {e}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.id)
    }

    fn element(&self, css: &str) -> String {
        let v = self.driver.call(
            "POST",
            &self.path("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn script(&self, script: &str) -> Value {
        self.driver.call(
            "POST",
            &self.path("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}{}", self.driver.base, self.path(""))).call();
    }
}

#[test]
fn the_chat_page_streams_an_answer_about_an_uploaded_image() {
    let required = std::env::var("BLIP3_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let driver_bin = find_binary("BLIP3_CHROMEDRIVER", &["chromedriver"]);
    let chromium = find_binary(
        "BLIP3_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let (Some(driver_bin), Some(chromium)) = (driver_bin, chromium) else {
        assert!(
            !required,
            "BLIP3_REQUIRE_BROWSER=1 but chromedriver/chromium were not found on PATH"
        );
        eprintln!(
            "SKIPPED: no chromedriver and chromium on PATH (apt-get install chromium \
             chromium-driver); the page was not tested in a browser"
        );
        return;
    };

    let f = Fixture::new(config());
    let image = png(96, 64, 9);
    let dir = tempfile::tempdir().expect("tempdir");
    let image_path = dir.path().join("picture.png");
    std::fs::write(&image_path, &image).expect("write image");
    let question = "What is in this picture?";

    let driver = Driver::start(&driver_bin);
    let profile = dir.path().join("profile");
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium.display().to_string(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", profile.display())],
        },
    }}});
    let created = driver.call("POST", "/session", Some(caps));
    let session = Session {
        driver: &driver,
        id: created["sessionId"]
            .as_str()
            .expect("session id")
            .to_string(),
    };

    driver.call(
        "POST",
        &session.path("/url"),
        Some(json!({"url": f.url("/")})),
    );
    assert_eq!(session.script("return document.title"), json!("blip3 chat"));

    // Count the DOM updates of the conversation: a streamed answer changes it many times.
    session.script(
        "window.blip3Updates = 0; new MutationObserver(() => window.blip3Updates++)\
         .observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});",
    );
    let input = session.element("#file");
    driver.call(
        "POST",
        &session.path(&format!("/element/{input}/value")),
        Some(json!({"text": image_path.display().to_string()})),
    );
    // The preview shows once the file is read.
    let deadline = Instant::now() + Duration::from_secs(20);
    while session.script("return document.getElementById('preview').hidden") != json!(false) {
        assert!(Instant::now() < deadline, "the chosen image never showed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = session.element("#text");
    driver.call(
        "POST",
        &session.path(&format!("/element/{text}/value")),
        Some(json!({"text": question})),
    );
    let send = session.element("#send");
    driver.call(
        "POST",
        &session.path(&format!("/element/{send}/click")),
        Some(json!({})),
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    let answer = loop {
        let state = session.script(
            "const a = document.querySelector('.msg.assistant, .msg.error');\
             return a ? {done: a.dataset.done === 'true', error: a.className.includes('error'),\
                         text: a.textContent} : null;",
        );
        if state["error"] == true {
            panic!("the page shows an error: {}", state["text"]);
        }
        if state["done"] == true {
            break state["text"].as_str().expect("text").to_string();
        }
        assert!(Instant::now() < deadline, "no answer on the page: {state}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let updates = session
        .script("return window.blip3Updates")
        .as_u64()
        .unwrap_or(0);
    let shown_image = session.script(
        "const i = document.querySelector('.msg.user img'); return i ? i.src.slice(0, 22) : null",
    );

    let expected = f.generate_reply(question, Some(&image), 256);
    assert!(!expected.is_empty(), "the reference reply is empty");
    assert_eq!(
        answer, expected,
        "the page's answer differs from `blip3 generate`"
    );
    assert_eq!(shown_image, json!("data:image/png;base64,"));
    // The user message and the empty answer bubble, then at least two streamed updates.
    assert!(
        updates >= 4,
        "the answer arrived in {updates} DOM updates; expected it to stream"
    );
}
