//! Data parallelism through burn-train's multi-device strategy: two flex devices with batch `b`
//! each end with the same weights as one device with batch `2b` (within 1e-5); the same with the
//! devices of two `blip3 worker` processes on loopback (Burn's remote backend over WebSocket),
//! alone or beside a local device; a worker that dies or hangs stops the run with an error naming
//! it, and the run resumes to the uninterrupted result; workers refuse a wrong token, and an
//! unreachable worker is an error naming its address.
//!
//! The loss is a mean over label tokens per device batch and the devices' gradients are averaged,
//! as in the reference (per-rank mean, DDP averaging), which equals the doubled batch exactly when
//! the halves hold equally many label tokens; every answer here has the same label count.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use blip3_data::sample::{Origin, Role, Turn};
use blip3_data::template::ChatTemplate;
use blip3_data::tokenizer::Blip3Tokenizer;
use blip3_model::loader::load_checkpoint;
use blip3_model::params::{max_param_diff, param_values};
use blip3_train::config::{OptimizerPlacement, Stage, Strategy, TrainConfig};
use blip3_train::remote::RemoteAddress;
use blip3_train::{RunOptions, train};
use burn::prelude::*;

/// Answers whose conversations carry the same number of label tokens (checked below).
const ANSWERS: [&str; 4] = ["red", "ring", "yes", "no"];
const QUESTION: &str = "<image>\nWhat is it?";

fn corpus(dir: &Path) {
    let tok = Blip3Tokenizer::tiny().unwrap();
    let lens: Vec<usize> = ANSWERS
        .iter()
        .map(|a| {
            let turns = [
                Turn {
                    role: Role::User,
                    text: QUESTION.into(),
                },
                Turn {
                    role: Role::Assistant,
                    text: a.to_string(),
                },
            ];
            let e = ChatTemplate::default()
                .encode_conversation(&tok, &turns, &[8], &Origin::default())
                .unwrap();
            e.labels.iter().filter(|&&l| l != -100).count()
        })
        .collect();
    assert!(
        lens.iter().all(|&l| l == lens[0]),
        "answers must have equal label counts: {lens:?}"
    );
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut rows = Vec::new();
    for i in 0..32 {
        let c = i % 4;
        let rgb = [[220, 30, 30], [30, 200, 40], [30, 40, 220], [230, 220, 30]][c];
        let (w, h) = (40 + (i * 7) % 30, 36 + (i * 5) % 20);
        image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb(rgb))
            .save(dir.join(format!("img/{i}.png")))
            .unwrap();
        rows.push(serde_json::json!({
            "id": format!("s{i}"),
            "image": format!("img/{i}.png"),
            "conversations": [
                {"from": "human", "value": QUESTION},
                {"from": "gpt", "value": ANSWERS[c]}
            ]
        }));
    }
    std::fs::write(dir.join("sft.json"), serde_json::to_string(&rows).unwrap()).unwrap();
    std::fs::write(
        dir.join("mix.yaml"),
        "seed: 5\nsources:\n  - name: colors\n    kind: llava\n    paths: [\"sft.json\"]\n    image_root: \".\"\n    weight: 1\n",
    )
    .unwrap();
}

fn weights(dir: &Path) -> Vec<Vec<f32>> {
    param_values(&load_checkpoint(dir, &Device::flex()).unwrap())
}

fn config(dir: &Path, out: &str, devices: usize, batch: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new(Stage::Sft, dir.join("mix.yaml"));
    cfg.out_dir = dir.join(out);
    cfg.seed = 9;
    cfg.data.batch_size = batch;
    cfg.data.num_workers = 1;
    cfg.data.max_len = 256;
    cfg.data.length_grouping = false;
    cfg.optim.lr = 1e-3;
    cfg.optim.total_steps = 6;
    cfg.optim.warmup_steps = 1;
    cfg.optim.grad_clip = Some(1.0);
    cfg.checkpoint.every_steps = 3;
    cfg.checkpoint.export_hf = false;
    cfg.monitor.renderer = blip3_train::config::Renderer::Quiet;
    if devices > 1 {
        cfg.devices.count = devices;
        cfg.devices.strategy = Strategy::Multi;
    }
    cfg
}

/// The initial weights of the runs (same seed, same preset).
fn weights_of_initial() -> Vec<Vec<f32>> {
    let tok = Blip3Tokenizer::tiny().unwrap();
    let device = Device::flex();
    device.seed(9);
    param_values(&blip3_model::XGenMMConfig::tiny(tok.initial_len()).init(&device))
}

#[test]
fn two_flex_devices_equal_one_device_with_the_doubled_batch() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let one = train(&config(tmp, "one", 1, 4), &RunOptions::default()).unwrap();
    let two = train(&config(tmp, "two", 2, 2), &RunOptions::default()).unwrap();
    assert_eq!(one.steps, 6);
    assert_eq!(two.steps, 6);
    let (a, b) = (weights(&one.final_dir), weights(&two.final_dir));
    let worst = max_param_diff(&a, &b).expect("same parameter shapes");
    assert!(worst <= 1e-5, "multi-device weights differ by {worst}");
    // Training did move the weights (a tiny learning rate would make the comparison vacuous).
    let moved = max_param_diff(&weights_of_initial(), &a).expect("same parameter shapes");
    assert!(moved > 1e-3, "weights moved by only {moved}");
}

/// Training runs seed the process-wide flex generator: tests that train in this process take
/// turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const TOKEN_ENV: &str = "BLIP3_TEST_WORKER_TOKEN";
const TOKEN: &str = "loopback-test-token";

/// A `blip3 worker` process on a free loopback port, killed when dropped.
struct Worker {
    child: Child,
    address: String,
}

impl Worker {
    fn start() -> Worker {
        Worker::start_on("127.0.0.1:0")
    }

    fn start_on(listen: &str) -> Worker {
        let worker = Worker::spawn(&["--listen", listen]);
        assert!(
            worker.address.starts_with("ws://127.0.0.1:"),
            "{}",
            worker.address
        );
        worker
    }

    /// Starts `blip3 worker ARGS` with the test token and reads the address from its start line.
    fn spawn(args: &[&str]) -> Worker {
        let mut child = common::blip3()
            .arg("worker")
            .args(args)
            .args(["--token-env", TOKEN_ENV, "--log", "info"])
            .env(TOKEN_ENV, TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start blip3 worker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("worker start line");
        let address = line
            .trim()
            .rsplit_once(" at ")
            .map(|(_, a)| a.to_string())
            .unwrap_or_else(|| panic!("unexpected worker start line {line:?}"));
        Worker { child, address }
    }
}

impl Worker {
    /// Sends a signal (`STOP`, `CONT`, ...) to the worker process.
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Trains through the `blip3 train` binary (the workers' token in its environment only).
fn train_cli(cfg: &TrainConfig, dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string_pretty(cfg).expect("config")).expect("write config");
    common::succeeded(
        common::blip3()
            .args(["train", "--config"])
            .arg(&path)
            .args(["--log", "warn"])
            .env(TOKEN_ENV, TOKEN),
    );
    cfg.out_dir.join("final")
}

/// A stage config training on `remote` workers (and `local` local devices) with `batch` each.
fn remote_config(
    tmp: &Path,
    out: &str,
    local: usize,
    remote: &[&Worker],
    batch: usize,
) -> TrainConfig {
    let mut cfg = config(tmp, out, 1, batch);
    cfg.devices.count = local;
    cfg.devices.strategy = Strategy::Multi;
    cfg.devices.remote = remote.iter().map(|w| w.address.clone()).collect();
    cfg.devices.remote_token_env = TOKEN_ENV.into();
    cfg
}

#[test]
fn two_loopback_workers_equal_one_worker_with_the_doubled_batch() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let (w1, w2) = (Worker::start(), Worker::start());

    // One worker's device with batch 4 against two workers' devices with batch 2 each (the first
    // worker holds the main replica: weights, clipping and the optimizer step).
    let one = train_cli(
        &remote_config(tmp, "one-remote", 0, &[&w1], 4),
        tmp,
        "one-remote",
    );
    let two = train_cli(
        &remote_config(tmp, "two-remote", 0, &[&w1, &w2], 2),
        tmp,
        "two-remote",
    );
    let one = weights(&one);
    let worst = max_param_diff(&one, &weights(&two)).expect("same shapes");
    assert!(
        worst <= 1e-5,
        "two workers vs one: weights differ by {worst}"
    );
    let moved = max_param_diff(&weights_of_initial(), &one).expect("same shapes");
    assert!(moved > 1e-3, "weights moved by only {moved}");

    // Against local training: a worker's flex device runs Burn's remote backend, which composes
    // softmax and SiLU from elementary ops where local Flex has fused kernels (1-ulp
    // differences, docs/scaling.md); AdamW's normalised first steps amplify them on parameters
    // whose gradients are near zero, to about 2e-4 after 6 steps. So the local comparisons
    // bound that gap instead of requiring 1e-5: one local device with batch 4 against one
    // worker, and a local main device beside a worker (batch 2 each).
    let local = train(&config(tmp, "local", 1, 4), &RunOptions::default()).unwrap();
    let local = weights(&local.final_dir);
    let gap = max_param_diff(&local, &one).expect("same shapes");
    assert!(gap <= 1e-3, "one worker vs one local device: {gap}");
    let mixed = train_cli(&remote_config(tmp, "mixed", 1, &[&w2], 2), tmp, "mixed");
    let gap = max_param_diff(&local, &weights(&mixed)).expect("same shapes");
    assert!(
        gap <= 1e-3,
        "local main + worker vs one local device: {gap}"
    );
}

#[test]
fn sharded_optimizer_state_gives_the_same_weights() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let one = train(&config(tmp, "one", 1, 4), &RunOptions::default()).unwrap();
    let mut sharded = config(tmp, "sharded", 2, 2);
    sharded.devices.optimizer = OptimizerPlacement::Sharded;
    let two = train(&sharded, &RunOptions::default()).unwrap();
    let (a, b) = (weights(&one.final_dir), weights(&two.final_dir));
    let worst = max_param_diff(&a, &b).expect("same parameter shapes");
    assert!(
        worst <= 1e-5,
        "sharded optimizer state: weights differ by {worst}"
    );
    // The runs clip (grad_clip 1.0; the tiny model's gradient norms are above 1 in these steps),
    // so a norm taken per shard instead of over all of them would have changed the weights.

    // The same over two loopback workers (the first one is the main device).
    let (w1, w2) = (Worker::start(), Worker::start());
    let one_remote = train_cli(&remote_config(tmp, "one-r", 0, &[&w1], 4), tmp, "one-r");
    let mut two_remote = remote_config(tmp, "two-r", 0, &[&w1, &w2], 2);
    two_remote.devices.optimizer = OptimizerPlacement::Sharded;
    let two_remote = train_cli(&two_remote, tmp, "two-r");
    let worst = max_param_diff(&weights(&one_remote), &weights(&two_remote)).expect("shapes");
    assert!(
        worst <= 1e-5,
        "sharded over workers: weights differ by {worst}"
    );
}

/// How the second worker fails in [`interrupt_then_resume`].
#[derive(Clone, Copy, PartialEq)]
enum Failure {
    /// The process dies (its connections close).
    Killed,
    /// The process stops (SIGSTOP): its connections stay open and nothing answers.
    Hung,
}

/// Trains over two workers, fails the second one once the first checkpoint is on disk, checks the
/// error names it, restarts the workers and resumes; the result must equal an uninterrupted run.
fn interrupt_then_resume(failure: Failure) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let w1 = Worker::start();
    let mut w2 = Some(Worker::start());
    let mut cfg = remote_config(tmp, "uninterrupted", 0, &[&w1, w2.as_ref().unwrap()], 2);
    cfg.optim.total_steps = 60;
    cfg.checkpoint.every_steps = 10;
    // A hung worker is noticed after this long without progress (then probed for 10 s); healthy
    // steps take well under it, and a slow one only costs a probe that every worker answers.
    cfg.devices.remote_timeout_s = 10;
    let uninterrupted = weights(&train_cli(&cfg, tmp, "uninterrupted"));

    // The same run, its second worker failed once the first checkpoint is on disk.
    cfg.out_dir = tmp.join("interrupted");
    let path = tmp.join("interrupted.toml");
    std::fs::write(&path, toml::to_string_pretty(&cfg).unwrap()).unwrap();
    let run = |resume: bool| {
        let mut cmd = common::blip3();
        cmd.args(["train", "--config"])
            .arg(&path)
            .args(["--log", "warn"]);
        if resume {
            cmd.arg("--resume");
        }
        cmd.env(TOKEN_ENV, TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    let mut trainer = run(false).spawn().unwrap();
    let checkpoints = cfg.out_dir.join("checkpoints");
    let started = std::time::Instant::now();
    while !std::fs::read_dir(&checkpoints)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("state-"))
        })
        .unwrap_or(false)
    {
        assert!(
            started.elapsed().as_secs() < 120,
            "no checkpoint was written"
        );
        assert!(
            trainer.try_wait().unwrap().is_none(),
            "the run ended before a checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let failed = w2.as_ref().unwrap().address.clone();
    let port = failed.rsplit(':').next().unwrap().to_string();
    let failed_at = std::time::Instant::now();
    match failure {
        Failure::Killed => w2 = None,
        Failure::Hung => w2.as_ref().unwrap().signal("STOP"),
    }
    // The trainer must end on its own (a hung worker used to block it forever).
    while trainer.try_wait().unwrap().is_none() {
        if failed_at.elapsed().as_secs() > 120 {
            let _ = trainer.kill();
            panic!("the trainer still waits 120 s after its worker failed");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = trainer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run went on without its worker");
    // The failed worker is among those named. A healthy worker can be named beside it: its
    // probe may time out too, on a loaded machine or while it waits on the failed peer.
    let named: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.split_once("not answering: "))
        .flat_map(|(_, rest)| rest.split(" (").next().unwrap_or("").split(", "))
        .collect();
    assert!(
        named.contains(&failed.as_str()),
        "the error does not name the failed worker {failed}: {stderr}"
    );
    if failure == Failure::Hung {
        assert!(stderr.contains("no training progress"), "{stderr}");
    }

    // The workers come back on their addresses (the survivor too: Burn's workers keep their
    // connections to each other, and the one to the failed worker is stale); the run resumes
    // from its last checkpoint and ends with the weights of the uninterrupted run.
    let port1 = w1.address.rsplit(':').next().unwrap().to_string();
    drop(w1);
    drop(w2);
    let _w1 = Worker::start_on(&format!("127.0.0.1:{port1}"));
    let _w2 = Worker::start_on(&format!("127.0.0.1:{port}"));
    common::succeeded(&mut run(true));
    let resumed = weights(&cfg.out_dir.join("final"));
    let worst = max_param_diff(&uninterrupted, &resumed).expect("same shapes");
    assert!(
        worst <= 1e-5,
        "resumed run differs from the uninterrupted one by {worst}"
    );
}

#[test]
fn a_dead_worker_stops_the_run_by_name_and_resume_matches_an_uninterrupted_run() {
    interrupt_then_resume(Failure::Killed);
}

#[test]
fn a_hung_worker_times_out_by_name_and_resume_matches_an_uninterrupted_run() {
    interrupt_then_resume(Failure::Hung);
}

#[test]
fn a_launched_job_trains_over_its_ranks_like_listed_workers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    let listed = {
        let (w1, w2) = (Worker::start(), Worker::start());
        train_cli(
            &remote_config(tmp, "listed", 0, &[&w1, &w2], 2),
            tmp,
            "listed",
        )
    };

    // The same run as a job of three processes started with torchrun's variables: rank 0 trains
    // (no local device; strategy single becomes multi), ranks 1 and 2 serve a flex device each,
    // register at the rendezvous, and exit when the run ends.
    let mut cfg = config(tmp, "launched", 1, 2);
    cfg.devices.count = 0;
    cfg.devices.remote_token_env = TOKEN_ENV.into();
    let path = tmp.join("launched.toml");
    std::fs::write(&path, toml::to_string_pretty(&cfg).unwrap()).unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port().to_string();
    drop(free);
    let mut ranks: Vec<(usize, Child)> = [2, 0, 1]
        .into_iter()
        .map(|rank| {
            let child = common::blip3()
                .args(["launch", "--config"])
                .arg(&path)
                .args(["--log", "warn", "--worker-listen", "127.0.0.1:0"])
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "3")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env(TOKEN_ENV, TOKEN)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start blip3 launch");
            (rank, child)
        })
        .collect();
    let started = std::time::Instant::now();
    while ranks
        .iter_mut()
        .any(|(_, c)| c.try_wait().unwrap().is_none())
    {
        if started.elapsed().as_secs() > 300 {
            for (_, c) in &mut ranks {
                let _ = c.kill();
            }
            panic!("the launched job did not end within 300 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for (rank, child) in ranks {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {rank} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let worst = max_param_diff(&weights(&listed), &weights(&cfg.out_dir.join("final")))
        .expect("same shapes");
    assert!(
        worst <= 1e-5,
        "launched job vs listed workers: weights differ by {worst}"
    );
}

#[test]
fn an_iroh_worker_trains_like_a_websocket_worker_and_checks_the_token() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    corpus(tmp);
    // Iroh (QUIC over UDP, no relays) on a free loopback port, its key kept in the temp dir.
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let key = tmp.join("worker.key");
    let iroh = Worker::spawn(&[
        "--transport",
        "iroh",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--identity",
        key.to_str().expect("a UTF-8 temp path"),
    ]);
    assert!(
        iroh.address.starts_with("iroh://")
            && iroh.address.ends_with(&format!("@127.0.0.1:{port}")),
        "{}",
        iroh.address
    );
    let parsed = RemoteAddress::parse(&iroh.address).unwrap();
    let err = parsed
        .connect("not-the-token")
        .expect_err("wrong token")
        .to_string();
    assert!(err.contains(&iroh.address), "{err}");

    // One iroh worker and one WebSocket worker, batch 4 each: the same remote backend behind two
    // transports, so the same weights.
    let ws = Worker::start();
    let over_iroh = train_cli(&remote_config(tmp, "iroh", 0, &[&iroh], 4), tmp, "iroh");
    let over_ws = train_cli(&remote_config(tmp, "ws", 0, &[&ws], 4), tmp, "ws");
    let worst = max_param_diff(&weights(&over_iroh), &weights(&over_ws)).expect("same shapes");
    assert!(
        worst <= 1e-5,
        "iroh vs websocket worker: weights differ by {worst}"
    );
}

#[test]
fn workers_refuse_a_wrong_token_and_unreachable_workers_are_named() {
    let worker = Worker::start();
    let address = RemoteAddress::parse(&worker.address).unwrap();
    let err = address
        .connect("not-the-token")
        .expect_err("wrong token")
        .to_string();
    assert!(err.contains(&worker.address), "{err}");
    assert!(err.contains("rejected the credential"), "{err}");
    let err = address.connect("").expect_err("no token").to_string();
    assert!(err.contains("rejected the credential"), "{err}");
    assert!(address.connect(TOKEN).is_ok());

    // Nothing listens on a port just released: Burn retries for about 16 s, then gives up.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let url = format!("ws://127.0.0.1:{port}");
    let err = RemoteAddress::parse(&url)
        .unwrap()
        .connect(TOKEN)
        .expect_err("nothing listening")
        .to_string();
    assert!(err.contains(&url), "{err}");

    // A worker without a token refuses to start instead of serving everyone.
    let out = common::blip3()
        .args([
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--token-env",
            "BLIP3_TEST_UNSET_TOKEN",
        ])
        .env_remove("BLIP3_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BLIP3_TEST_UNSET_TOKEN"));
}

#[test]
fn the_remote_benchmark_runs_and_records_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("remote.jsonl");
    common::succeeded(
        common::blip3()
            .args(["bench", "remote", "--configs", "tiny", "--workers", "1,2"])
            .args(["--steps", "2", "--out"])
            .arg(tmp.path().join("scratch"))
            .arg("--results")
            .arg(&results),
    );
    let rows = common::json_lines(&results);
    let workers: Vec<u64> = rows
        .iter()
        .map(|r| r["workers"].as_u64().unwrap())
        .collect();
    assert_eq!(workers, [1, 2]);
    for r in &rows {
        let trainable = r["trainable_params"].as_u64().unwrap();
        assert!(trainable > 0, "{r}");
        assert_eq!(
            r["bytes_per_replica_per_step"].as_u64().unwrap(),
            8 * trainable
        );
        assert!(r["ms_per_step"].as_f64().unwrap().is_finite(), "{r}");
    }
    assert_eq!(rows[0]["efficiency_vs_one_worker"].as_f64(), Some(1.0));
}
