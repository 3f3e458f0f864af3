//! The SageMaker container (`container/`): what the real container run (`tests/container/image.sh`,
//! podman, in the test command) cannot check.
//!
//! Image: the Dockerfile is parsed and checked (exec-form entrypoint, the Debian 12 base of every stage
//! that reaches the image, the build stage's cargo flags, labels), and `container/runtime-libs.txt`
//! against the binaries, the wheels the CUDA toolchain pins and what the runtime stage copies.
//!
//! Entrypoint: the CUDA forward-compatibility switch, with faked driver versions — no real run can
//! have an older NVIDIA driver. It runs `container/entrypoint.sh` as PID 1 of fresh namespaces
//! (`tests/container/run-as-container.sh`) with a stand-in for train.
//!
//! The release binary comes from `OXTUNE_RELEASE_TRAIN` (`tests/run.sh` builds it and sets it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::common::text;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The release `train`, as the image ships it (not the test-profile build cargo made for this test).
fn release_train() -> PathBuf {
    let Some(path) = std::env::var_os("OXTUNE_RELEASE_TRAIN") else {
        panic!(
            "OXTUNE_RELEASE_TRAIN is not set: the container tests need the release binary. Run ./tests/run.sh \
             (it builds it), or `cargo build --release -p trainer --bin train` and \
             OXTUNE_RELEASE_TRAIN=$PWD/target/release/train cargo test -p trainer --test it container::"
        )
    };
    let path = PathBuf::from(path);
    assert!(path.is_file(), "OXTUNE_RELEASE_TRAIN={} is not a file: build it first", path.display());
    path
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

struct Instruction {
    keyword: String,
    args: String,
}

struct Stage {
    name: Option<String>,
    /// The image, with global ARG defaults substituted.
    from: String,
    instructions: Vec<Instruction>,
}

/// Enough of the Dockerfile grammar for these checks: comments, line continuations, global ARGs
/// (substituted into FROM) and stages. Anything unexpected fails the test rather than being skipped.
fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical: Vec<String> = vec![];
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue; // comments (and directives) are dropped even inside a continued instruction
        }
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(current.is_empty(), "the Dockerfile ends inside a continued line");
    let mut global_args: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<Stage> = vec![];
    for line in logical {
        let line = line.trim();
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_string());
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let image = substitute(words[0], &global_args);
            let name = match words.as_slice() {
                [_, r#as, name] if r#as.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                _ => panic!("unexpected FROM: {args}"),
            };
            stages.push(Stage { name, from: image, instructions: vec![] });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(Instruction { keyword, args });
        } else {
            assert_eq!(keyword, "ARG", "only ARG may come before the first FROM");
            let (k, v) = args.split_once('=').unwrap_or((&args, ""));
            global_args.insert(k.to_string(), unquote(v).to_string());
        }
    }
    stages
}

fn substitute(s: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = s.to_string();
    for (k, v) in args {
        out = out.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
    }
    assert!(!out.contains('$'), "unresolved variable in {s}");
    out
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

impl Stage {
    fn all(&self, keyword: &str) -> impl Iterator<Item = &str> + '_ {
        let keyword = keyword.to_string();
        self.instructions.iter().filter(move |i| i.keyword == keyword).map(|i| i.args.as_str())
    }

    fn one(&self, keyword: &str) -> &str {
        let found: Vec<&str> = self.all(keyword).collect();
        assert_eq!(found.len(), 1, "expected one {keyword} in stage {:?}, found {found:?}", self.name);
        found[0]
    }

    /// `NAME=value` pairs of ENV, LABEL or ARG instructions (values unquoted).
    fn pairs(&self, keyword: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for args in self.all(keyword) {
            for (k, v) in split_pairs(args) {
                out.insert(k, v);
            }
        }
        out
    }

    /// COPY instructions as (flags, sources, destination).
    fn copies(&self) -> Vec<(Vec<String>, Vec<String>, String)> {
        self.all("COPY")
            .map(|args| {
                let words: Vec<String> = args.split_whitespace().map(String::from).collect();
                let (flags, rest): (Vec<String>, Vec<String>) = words.into_iter().partition(|w| w.starts_with("--"));
                let (dest, sources) = rest.split_last().expect("COPY has a destination");
                (flags, sources.to_vec(), dest.clone())
            })
            .collect()
    }
}

/// Splits `A=1 B="two words" C=3` into pairs.
fn split_pairs(args: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = args.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').unwrap_or_else(|| panic!("expected NAME=value in `{args}`"));
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or_else(|| panic!("unclosed quote in `{args}`"));
            (&q[..end], &q[end + 1..])
        } else {
            after.split_once(char::is_whitespace).unwrap_or((after, ""))
        };
        out.push((key.trim().to_string(), value.to_string()));
        rest = next.trim_start();
    }
    out
}

struct Image {
    stages: Vec<Stage>,
}

impl Image {
    fn load() -> Image {
        Image { stages: parse_dockerfile(&read("container/Dockerfile")) }
    }

    fn runtime(&self) -> &Stage {
        self.stages.last().expect("the Dockerfile has stages")
    }

    fn stage(&self, name: &str) -> &Stage {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no stage `{name}`"))
    }

    /// ENTRYPOINT as its exec-form list.
    fn entrypoint(&self) -> Vec<String> {
        let raw = self.runtime().one("ENTRYPOINT");
        serde_json::from_str(raw)
            .unwrap_or_else(|_| panic!("ENTRYPOINT must be exec form (a JSON list) so train is PID 1; got {raw}"))
    }

    /// Where the runtime stage puts a file copied from the build context or another stage.
    fn destination_of(&self, source_suffix: &str) -> String {
        let found: Vec<String> = self
            .runtime()
            .copies()
            .into_iter()
            .filter(|(_, sources, _)| sources.iter().any(|s| s.ends_with(source_suffix)))
            .map(|(_, _, dest)| dest)
            .collect();
        assert_eq!(found.len(), 1, "expected one COPY of *{source_suffix} in the runtime stage, found {found:?}");
        found[0].clone()
    }
}

/// Where the image has its entrypoint script and train.
struct Layout {
    entrypoint_at: String,
    train_at: String,
    /// The image's own ENV (docker passes it to the process).
    env: BTreeMap<String, String>,
}

fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let image = Image::load();
        let entrypoint = image.entrypoint();
        assert_eq!(entrypoint.len(), 1, "the entrypoint takes every argument from the command: {entrypoint:?}");
        let entrypoint_at = entrypoint[0].clone();
        assert_eq!(image.destination_of("container/entrypoint.sh"), entrypoint_at, "ENTRYPOINT runs container/entrypoint.sh");
        let train_at = image.destination_of("/train");
        let script = read("container/entrypoint.sh");
        assert!(
            script.lines().any(|l| l.trim() == format!("exec {train_at} \"$@\"")),
            "the entrypoint must end with `exec {train_at} \"$@\"` (exec keeps train PID 1; \"$@\" passes SageMaker's arguments)"
        );
        Layout { entrypoint_at, train_at, env: image.runtime().pairs("ENV") }
    })
}

#[test]
fn dockerfile_entrypoint_is_exec_form_with_train_as_default_command() {
    let image = Image::load();
    let l = layout();
    assert!(
        l.entrypoint_at.starts_with('/') && l.train_at == "/usr/local/bin/train",
        "train on PATH at {}",
        l.train_at
    );
    let cmd: Vec<String> = serde_json::from_str(image.runtime().one("CMD")).expect("CMD in exec form");
    assert_eq!(cmd, ["train"], "`docker run IMAGE` runs the job, as SageMaker's `docker run IMAGE train` does");
    let flags = image.runtime().copies().into_iter().find(|(_, _, d)| *d == l.entrypoint_at).unwrap().0;
    assert!(flags.contains(&"--chmod=0755".to_string()), "the entrypoint is executable whatever the checkout's mode");
}

#[test]
fn dockerfile_builds_on_debian_12_labelled_and_reproducible() {
    let image = Image::load();
    // Every stage that reaches the image is the Debian 12 base (CI passes its mmdebstrap-made one);
    // the build stage is Rust on the same Debian, so train links against the glibc it runs with.
    for name in ["cuda-libs", "prebuilt", "runtime"] {
        assert_eq!(image.stage(name).from, "debian:bookworm-slim", "stage {name} starts from BASE_IMAGE (Debian 12)");
    }
    let rust = &image.stage("build").from;
    let pinned = regex::Regex::new(r"^rust:1\.\d+\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$").unwrap();
    assert!(pinned.is_match(rust), "the Rust image is bookworm, pinned by tag and digest: {rust}");
    assert_eq!(image.stage("train").from, "build", "by default train is compiled in the build stage (TRAIN_FROM)");
    let train_src: Vec<String> = image.stage("prebuilt").copies().into_iter().flat_map(|(_, s, _)| s).collect();
    assert_eq!(train_src, ["container/prebuilt/train"], "the prebuilt stage takes the train CI built");

    let runtime = image.runtime();
    let args = runtime.pairs("ARG");
    let labels = runtime.pairs("LABEL");
    let label = |k: &str| labels.get(k).unwrap_or_else(|| panic!("label {k} missing: {labels:?}")).clone();
    assert_eq!(label("org.opencontainers.image.version"), "${VERSION}");
    assert_eq!(args["VERSION"], env!("CARGO_PKG_VERSION"), "the image version is the workspace version");
    let workspace = read("Cargo.toml");
    assert!(
        workspace.contains(&format!("repository = \"{}\"", label("org.opencontainers.image.source"))),
        "the source label is the workspace's repository"
    );
    let toolchain = read("kernels/scripts/cuda-toolchain.sh");
    let nvcc = regex::Regex::new(r#""nvidia-cuda-nvcc==(\d+\.\d+)\."#).unwrap();
    assert_eq!(
        label("oxtune.cuda.version"),
        nvcc.captures(&toolchain).expect("cuda-toolchain.sh pins nvcc")[1],
        "the CUDA label names the CUDA the build compiles with"
    );

    let build = image.stage("build");
    let cargo: Vec<&str> = build.all("RUN").filter(|r| r.contains("cargo build")).collect();
    assert_eq!(cargo.len(), 1, "{cargo:?}");
    for flag in ["--locked", "--release", "-p trainer", "--bin train", "--features cuda", "cuda-toolchain.sh"] {
        assert!(cargo[0].contains(flag), "the build runs `{flag}`: {}", cargo[0]);
    }
    let env = build.pairs("ENV");
    assert_eq!(env.get("CUDA_COMPUTE_CAP").map(String::as_str), Some("80"), "PTX for compute_80: every 8.0+ GPU");

    let ignore: Vec<String> = read(".dockerignore").lines().map(|l| l.trim().to_string()).collect();
    for must in ["target", ".git", ".cuda"] {
        assert!(ignore.iter().any(|l| l == must), ".dockerignore keeps `{must}` out of the build context");
    }
    assert!(!ignore.iter().any(|l| l == "Cargo.lock" || l == "*.lock"), "Cargo.lock must reach the build");
    assert!(!ignore.iter().any(|l| l == "container" || l.starts_with("container/")), "container/ reaches the build");
    assert!(repo().join("Cargo.lock").is_file());
    // cargo loads every workspace member's manifest, so none may be left out of the context.
    let members: Vec<String> =
        regex::Regex::new(r#"(?s)members\s*=\s*\[(.*?)\]"#).unwrap().captures(&workspace).expect("workspace members")
            [1]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect();
    for member in &members {
        for pattern in ignore.iter().map(|l| l.trim_end_matches('/')) {
            assert!(
                !(member == pattern || member.starts_with(&format!("{pattern}/"))),
                ".dockerignore `{pattern}` leaves workspace member `{member}` out of the build context"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Runtime libraries

struct LibRow {
    lib: String,
    needed_by: String,
    /// `driver`, `debian`, or a wheel pin `name==version`.
    provided_by: String,
}

struct Manifest {
    rows: Vec<LibRow>,
}

fn manifest() -> Manifest {
    let mut rows = vec![];
    for line in read("container/runtime-libs.txt").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(words.len() >= 3, "runtime-libs.txt: `{line}` needs library, needed-by, provided-by");
        assert!(
            ["driver", "debian"].contains(&words[2]) || words[2].contains("=="),
            "runtime-libs.txt: unknown provider in `{line}` (driver, debian or a wheel pin)"
        );
        rows.push(LibRow { lib: words[0].into(), needed_by: words[1].into(), provided_by: words[2].into() });
    }
    Manifest { rows }
}

impl Manifest {
    fn direct(&self) -> BTreeSet<String> {
        self.rows.iter().filter(|r| r.needed_by == "train").map(|r| r.lib.clone()).collect()
    }

    fn wheel_pins(&self) -> BTreeSet<String> {
        self.rows.iter().filter(|r| r.provided_by.contains("==")).map(|r| r.provided_by.clone()).collect()
    }
}

/// NEEDED entries of an ELF file, with `readelf -d`.
fn needed(binary: &Path) -> BTreeSet<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| panic!("cannot run readelf (binutils) for the runtime-library check: {e}"));
    assert!(out.status.success(), "readelf -d {}: {}", binary.display(), text(&out));
    let found: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect();
    assert!(!found.is_empty(), "{} has no NEEDED entries: not a dynamic executable?", binary.display());
    found
}

#[test]
fn every_runtime_library_is_provided_by_the_runtime_stage() {
    let m = manifest();
    let image = Image::load();
    let runtime = image.runtime();
    let libs: BTreeSet<String> = m.rows.iter().map(|r| r.lib.clone()).collect();
    assert_eq!(libs.len(), m.rows.len(), "runtime-libs.txt lists a library twice");
    for r in &m.rows {
        assert!(
            r.needed_by == "train" || libs.contains(&r.needed_by),
            "{} is needed by {}, which runtime-libs.txt does not list",
            r.lib,
            r.needed_by
        );
    }
    // Wheels: the versions the CUDA toolchain (and so CI's CUDA build) pins, so the image runs the
    // libraries train is compiled against.
    let toolchain = read("kernels/scripts/cuda-toolchain.sh");
    for pin in m.wheel_pins() {
        assert!(toolchain.contains(&format!("\"{pin}\"")), "{pin} is not what kernels/scripts/cuda-toolchain.sh pins");
    }
    // The cuda-libs stage fetches exactly the manifest's wheel rows; the runtime stage copies them into
    // a directory in the loader's configuration and checks with ldd that train resolves.
    let fetch = image.stage("cuda-libs");
    assert!(
        fetch
            .all("RUN")
            .any(|r| r.contains("fetch-cuda-libs.py") && r.contains("runtime-libs.txt") && r.contains("/out/lib")),
        "the cuda-libs stage runs fetch-cuda-libs.py over runtime-libs.txt into /out/lib"
    );
    let lib_dir = runtime
        .copies()
        .into_iter()
        .find(|(flags, sources, _)| flags.contains(&"--from=cuda-libs".to_string()) && sources == &["/out/lib/"])
        .map(|(_, _, dest)| dest)
        .expect("the runtime stage copies /out/lib/ from the cuda-libs stage");
    let lib_dir = lib_dir.trim_end_matches('/');
    assert!(
        runtime
            .all("RUN")
            .any(|r| r.contains(&format!("echo {lib_dir} > /etc/ld.so.conf.d/")) && r.contains("ldconfig")),
        "{lib_dir} must be added to the loader's configuration (ld.so.conf.d + ldconfig)"
    );
    assert!(
        runtime.all("RUN").any(|r| r.contains("ldd /usr/local/bin/train") && r.contains("not found")),
        "the runtime stage checks with ldd that train resolves every library"
    );
    // `driver`: never shipped; the NVIDIA container toolkit mounts it when asked for `compute`.
    let caps = runtime.pairs("ENV").get("NVIDIA_DRIVER_CAPABILITIES").cloned().unwrap_or_default();
    assert!(caps.split(',').any(|c| c == "compute" || c == "all"), "NVIDIA_DRIVER_CAPABILITIES={caps:?} lacks compute");
}

#[test]
fn release_binary_needs_only_listed_libraries() {
    let m = manifest();
    let cpu = needed(&release_train());
    let listed = m.direct();
    let unlisted: Vec<&String> = cpu.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "the release train needs {unlisted:?}, which container/runtime-libs.txt does not list"
    );
}

#[test]
fn cuda_binary_needs_exactly_the_listed_libraries() {
    let path = std::env::var_os("OXTUNE_CUDA_TRAIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/cuda/release/train"));
    if !path.exists() {
        eprintln!(
            "SKIPPED (this part only): no CUDA build at {} — build it with kernels/scripts/cuda-toolchain.sh and \
             `CARGO_TARGET_DIR=target/cuda cargo build --release -p trainer --bin train --features cuda` to compare \
             its NEEDED entries with container/runtime-libs.txt",
            path.display()
        );
        return;
    }
    assert_eq!(
        needed(&path),
        manifest().direct(),
        "NEEDED of {} vs the `train` rows of runtime-libs.txt",
        path.display()
    );
}

// ---------------------------------------------------------------------------------------------
// The contract, as PID 1

/// Fails loudly (never skips) when namespaces cannot be made here.
fn namespaces_work() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECK.get_or_init(|| {
        let out = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc", "true"])
            .output()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("unshare failed ({}): {}", out.status, text(&out).trim()))
        }
    });
    if let Err(e) = result {
        panic!(
            "{e}\nThe container contract test runs train as PID 1 in new user, mount and PID namespaces, as a container \
             engine does. It needs util-linux `unshare` and unprivileged user namespaces \
             (kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)."
        );
    }
}

/// The environment of the process in a SageMaker container: what docker sets, the image's ENV, the
/// two variables SageMaker adds, and the job's `Environment` — nothing else.
fn container_env(job_environment: &[(&str, &str)]) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    // docker: PATH (its default: Debian's image sets none), HOSTNAME, HOME.
    env.insert("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.insert("HOSTNAME".into(), "algo-1".into());
    env.insert("HOME".into(), "/root".into());
    env.extend(layout().env.clone());
    env.insert("TRAINING_JOB_NAME".into(), "oxtune-contract".into());
    env.insert(
        "TRAINING_JOB_ARN".into(),
        "arn:aws:sagemaker:us-east-1:123456789012:training-job/oxtune-contract".into(),
    );
    for (k, v) in job_environment {
        env.insert(k.to_string(), v.to_string());
    }
    assert!(!env.keys().any(|k| k.starts_with("SM_") || k == "SAGEMAKER_BASE_DIR" || k == "OXTUNE_ML_ROOT"));
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

struct Run<'a> {
    ml: &'a Path,
    train: PathBuf,
    environment: &'a [(&'a str, &'a str)],
    driver: Option<&'a str>,
    compat: Option<&'a str>,
}

impl<'a> Run<'a> {
    fn new(ml: &'a Path) -> Run<'a> {
        Run { ml, train: release_train(), environment: &[], driver: None, compat: None }
    }

    /// `docker run -v <ml>:/opt/ml IMAGE <args>`.
    fn command(&self, args: &[&str]) -> Command {
        namespaces_work();
        let l = layout();
        let mut c = Command::new("bash");
        c.arg(repo().join("tests/container/run-as-container.sh"));
        c.arg("--ml").arg(self.ml).arg("--train").arg(&self.train);
        c.args(["--train-at", &l.train_at, "--entrypoint-at", &l.entrypoint_at]);
        c.arg("--entrypoint").arg(repo().join("container/entrypoint.sh"));
        if let Some(v) = self.driver {
            c.args(["--driver-version", v]);
        }
        if let Some(v) = self.compat {
            c.args(["--compat-version", v]);
        }
        for kv in container_env(self.environment) {
            c.args(["--env", &kv]);
        }
        c.arg("--").args(args).stdin(Stdio::null());
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("start run-as-container.sh")
    }
}

/// A stand-in for train that reports how the entrypoint started it.
fn fake_train(dir: &Path) -> PathBuf {
    let path = dir.join("fake-train");
    std::fs::write(
        &path,
        "#!/bin/sh\necho \"pid=$$\"\necho \"ld=${LD_LIBRARY_PATH:-}\"\nfor a in \"$@\"; do echo \"arg=$a\"; done\n",
    )
    .unwrap();
    std::process::Command::new("chmod").arg("755").arg(&path).status().unwrap();
    path
}

#[test]
fn entrypoint_execs_train_as_pid1_and_enables_cuda_compat_only_for_older_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_train(dir.path());
    let base_ld = "";
    let compat_ld = "/usr/local/cuda/compat".to_string();
    let cases: &[(Option<&str>, Option<&str>, &str)] = &[
        (None, Some("580.82.07"), base_ld),                  // no GPU visible
        (Some("535.183.01"), Some("580.82.07"), &compat_ld), // older data-center driver: compat on
        (Some("570.172.08"), Some("580.82.07"), &compat_ld),
        (Some("580.82.07"), Some("580.82.07"), base_ld), // same driver: nothing to do
        (Some("580.95.05"), Some("580.82.07"), base_ld), // newer driver: compat would break it
        (Some("535.183.01"), None, base_ld),             // no compat package in the image
    ];
    for &(driver, compat, want_ld) in cases {
        let run = Run { train: fake.clone(), driver, compat, ..Run::new(dir.path()) };
        let out = run.output(&["train", "--lora_r", "two words"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            got,
            ["pid=1", &format!("ld={want_ld}"), "arg=train", "arg=--lora_r", "arg=two words"],
            "driver {driver:?}, compat {compat:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stderr).contains("forward-compatibility");
        assert_eq!(said, want_ld != base_ld, "the entrypoint says when it enables compat: {}", text(&out));
    }
}
