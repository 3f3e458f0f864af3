//! Helpers the launcher's test modules share.

use std::path::{Path, PathBuf};

/// The entry names of a `.tar.gz` (as `model.tar.gz` / `output.tar.gz`), sorted.
pub fn tar_names(p: &Path) -> Vec<String> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap()));
    let mut v: Vec<String> = ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    v.sort();
    v
}

/// The real CPU `train` binary, as `cargo test --workspace` builds it (target/<profile>/train), or
/// `$OXTUNE_TRAIN_BIN`. Missing: a failure in CI, a loud skip elsewhere (`None`).
pub fn train_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OXTUNE_TRAIN_BIN") {
        return Some(PathBuf::from(p));
    }
    // target/<profile>/deps/it-<hash> → target/<profile>/train
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("train");
    if candidate.is_file() {
        return Some(candidate);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "the `train` binary is missing ({}): build the workspace (`cargo test --workspace`) or set OXTUNE_TRAIN_BIN",
            candidate.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED a test with the real trainer: no `train` binary at {} (run `cargo build -p trainer` or set OXTUNE_TRAIN_BIN) ***\n",
        candidate.display()
    );
    None
}

/// The trainer's demo tree (tiny random Llama, tokenizer, data) written by `train demo --steps 1`
/// under `dir`; returns its `input/data` (the channels a job file can point at).
pub fn demo_channels(train: &Path, dir: &Path) -> PathBuf {
    let demo = dir.join("demo");
    let out = std::process::Command::new(train)
        .args(["demo", "--steps", "1", "--ml-root"])
        .arg(&demo)
        .env("OXTUNE_DEVICE", "cpu")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "train demo failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    demo.join("input/data").canonicalize().unwrap()
}
