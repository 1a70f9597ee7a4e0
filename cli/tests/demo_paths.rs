//! The README's main command as a newcomer types it: `blip3 demo` with a relative `--out` (the
//! default is `runs/demo`), run from some working directory; then the files it generated
//! (stage recipes, each stage's `config.toml`) used from a *different* working directory. Every
//! path written into a generated file is relative to that file (docs/training.md, "Paths").

use std::path::Path;
use std::process::Command;

use blip3_train::TrainConfig;

fn blip3(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blip3"));
    c.current_dir(cwd).args(["--log", "warn"]);
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().expect("running blip3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{c:?} failed:\n{text}");
    text
}

/// `blip3 demo` on the tiny corpus, a few steps a stage, no evaluations, into `out`.
fn short_demo(cwd: &Path, out: &Path) -> Command {
    let mut c = blip3(cwd);
    c.args([
        "demo",
        "--corpus",
        "tiny",
        "--steps-scale",
        "0.005",
        "--skip-eval",
    ])
    .arg("--out")
    .arg(out);
    c
}

#[test]
fn demo_with_relative_out_works_and_its_files_work_from_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let other = tmp.path().join("elsewhere/deeper");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&other).unwrap();

    // As a newcomer types it, but tiny and short: relative output folder under the cwd.
    run_ok(short_demo(&home, Path::new("runs/demo")));
    let run = home.join("runs/demo");
    assert!(run.join("safety/final/model.bpk").exists());

    // Generated recipes hold paths relative to themselves: no cwd-relative or absolute paths.
    let recipe = run.join("recipes/pretrain.yaml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(text.contains("\"../corpus/pretrain/captions\""), "{text}");
    assert!(!text.contains("runs/demo"), "{text}");

    // Used from another working directory, through a relative path to the recipe.
    let mut inspect = blip3(&other);
    inspect.args([
        "data",
        "inspect",
        "--recipe",
        "../../home/runs/demo/recipes/pretrain.yaml",
        "--limit",
        "4",
    ]);
    run_ok(inspect);

    // An absolute --out from yet another directory writes the same relative recipes.
    let abs_out = tmp.path().join("abs/demo");
    run_ok(short_demo(&other, &abs_out));
    let abs_recipe = std::fs::read_to_string(abs_out.join("recipes/sft.yaml")).unwrap();
    assert!(
        abs_recipe.contains("\"../corpus/sft/llava.json\""),
        "{abs_recipe}"
    );
    let mut inspect = blip3(&home);
    inspect
        .args(["data", "inspect", "--limit", "4", "--recipe"])
        .arg(abs_out.join("recipes/sft.yaml"));
    run_ok(inspect);

    // Each stage's written config resolves, from anywhere, to the same folders the run used.
    for stage in ["pretrain", "sft", "sft-interleave", "dpo", "safety"] {
        let cfg_path = run.join(stage).join("config.toml");
        let cfg = TrainConfig::load(&cfg_path).unwrap();
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
        assert_eq!(canon(&cfg.out_dir), canon(&run.join(stage)), "{stage}");
        assert!(cfg.data.train.is_file(), "{stage}: {:?}", cfg.data.train);
        let init = Path::new(&cfg.model.init);
        if stage != "pretrain" {
            assert!(init.join("model.bpk").is_file(), "{stage}: {init:?}");
        }
        let raw = std::fs::read_to_string(&cfg_path).unwrap();
        assert!(
            !raw.contains("runs/demo"),
            "{stage} config names cwd paths:\n{raw}"
        );
    }
}
