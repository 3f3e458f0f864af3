//! `oxtune local`: run a job file on this machine exactly as SageMaker would run it.
//!
//! * Synthesises the `/opt/ml` tree under `<work>/opt_ml`: string hyperparameters,
//!   `inputdataconfig.json`, `resourceconfig.json` (current_host `algo-1`),
//!   `checkpointconfig.json` when the job checkpoints, and `input/data/<channel>` (symlinks,
//!   copies with `--copy-channels`, or read-only bind mounts for Docker).
//! * Runs `train` as a binary (`--train-bin`, `$OXTUNE_TRAIN_BIN`, next to `oxtune`, or on PATH)
//!   with `--ml-root`, or the image with `docker run [--gpus all] -v <root>:/opt/ml IMAGE train`.
//! * Streams the logs, enforces the max runtime with SIGTERM and then SIGKILL after the grace
//!   period (120 s like `StopTrainingJob`), keeps `checkpoints/` across restarts (model/ and
//!   output/ start empty each time, like a new container), and with `--interrupt-after` sends
//!   one SIGTERM mid-run and restarts to prove the trainer resumes — a simulated spot interruption.
//! * Packs `model/` into `model.tar.gz` and `output/data/` into `output.tar.gz` with the `tar`
//!   and `flate2` crates (no external `tar`), under `<work>/output/`, like `<S3OutputPath>/<job>/output/`.

use crate::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::format::fmt_duration;
use crate::jobfile::{Job, Source};
use crate::redact::Redactor;

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub work_dir: PathBuf,
    pub train_bin: Option<PathBuf>,
    pub image: Option<String>,
    /// `docker run --gpus` value; `none` leaves the flag out.
    pub gpus: String,
    pub max_runtime: Duration,
    pub stop_grace: Duration,
    pub interrupt_after: Option<Duration>,
    /// Simulate the interruption once the trainer has logged `METRIC step=N` (N or later) instead
    /// of after a fixed time (deterministic for tests and slow machines).
    pub interrupt_after_step: Option<u64>,
    /// Delete checkpoints from earlier runs first.
    pub fresh: bool,
    pub copy_channels: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalStatus {
    Completed,
    Failed,
    /// MaxRuntimeExceeded.
    Stopped,
}

#[derive(Debug, Clone)]
pub struct LocalOutcome {
    pub status: LocalStatus,
    pub exit_code: Option<i32>,
    pub attempts: u32,
    pub failure_reason: Option<String>,
    pub model_tar: Option<PathBuf>,
    pub output_tar: Option<PathBuf>,
    pub ml_root: PathBuf,
    /// Checkpoint entries seen before the restart (proof material for the resume).
    pub checkpoints_before_restart: Vec<String>,
}

impl LocalOutcome {
    pub fn exit_code_for_cli(&self) -> i32 {
        match self.status {
            LocalStatus::Completed => 0,
            LocalStatus::Failed => 1,
            LocalStatus::Stopped => 2,
        }
    }
}

/// The `/opt/ml` layout of one job: the trainer's own path type, so both sides agree on it.
pub type MlTree = trainer::sagemaker::MlPaths;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    Error::io(path)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), Error> {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap_or_default() + "\n").map_err(io(path))
}

/// The files SageMaker writes under `input/config/`.
pub fn config_files(job: &Job) -> Vec<(&'static str, serde_json::Value)> {
    let mut input = serde_json::Map::new();
    for c in &job.channels {
        let mut m = serde_json::Map::new();
        if let Some(ct) = &c.content_type {
            m.insert("ContentType".into(), json!(ct));
        }
        m.insert("TrainingInputMode".into(), json!(c.input_mode.clone().unwrap_or_else(|| job.input_mode.clone())));
        m.insert("S3DistributionType".into(), json!(c.distribution));
        m.insert("RecordWrapperType".into(), json!("None"));
        if let Some(comp) = &c.compression {
            m.insert("CompressionType".into(), json!(comp));
        }
        input.insert(c.name.clone(), serde_json::Value::Object(m));
    }
    let hosts: Vec<String> = (1..=job.instance_count.max(1)).map(|i| format!("algo-{i}")).collect();
    let resource = json!({
        "current_host": "algo-1",
        "current_instance_type": job.instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [{ "instance_group_name": "homogeneousCluster", "instance_type": job.instance_type, "hosts": hosts }],
        "network_interface_name": "eth0"
    });
    let mut files = vec![
        ("hyperparameters.json", serde_json::to_value(&job.hyperparameters).unwrap_or_default()),
        ("inputdataconfig.json", serde_json::Value::Object(input)),
        ("resourceconfig.json", resource),
    ];
    if let Some(uri) = job.effective_checkpoint_uri().or_else(|| job.spot.then(|| "s3://local/checkpoints".to_string()))
    {
        files.push(("checkpointconfig.json", json!({ "LocalPath": "/opt/ml/checkpoints/", "S3Uri": uri })));
    }
    files
}

/// Create the tree; channels become symlinks (binary) or copies; Docker mounts them instead.
pub fn synthesise(job: &Job, root: &Path, link_channels: bool, copy: bool, fresh: bool) -> Result<MlTree, Error> {
    let t = MlTree::new(root);
    for d in [t.config_dir(), t.data_dir(), t.checkpoint_dir()] {
        std::fs::create_dir_all(&d).map_err(io(&d))?;
    }
    if fresh {
        let c = t.checkpoint_dir();
        std::fs::remove_dir_all(&c).map_err(io(&c))?;
        std::fs::create_dir_all(&c).map_err(io(&c))?;
    }
    for (name, v) in config_files(job) {
        write_json(&t.config_dir().join(name), &v)?;
    }
    let cp = t.config_dir().join("checkpointconfig.json");
    if !config_files(job).iter().any(|(n, _)| *n == "checkpointconfig.json") && cp.exists() {
        std::fs::remove_file(&cp).map_err(io(&cp))?;
    }
    // Channels: rebuilt every run.
    let data = t.data_dir();
    std::fs::remove_dir_all(&data).map_err(io(&data))?;
    std::fs::create_dir_all(&data).map_err(io(&data))?;
    for c in &job.channels {
        let src = match &c.source {
            Source::Local(p) => p.canonicalize().map_err(|e| Error::Failed(format!("channel `{}`: {}: {e}", c.name, p.display())))?,
            Source::S3(uri) => {
                return Err(Error::Failed(format!(
                    "channel `{}` is {uri}; `oxtune local` needs local data: `aws s3 sync {uri} ./{}` and pass --channel {}=./{}",
                    c.name, c.name, c.name, c.name
                )))
            }
        };
        let dest = data.join(&c.name);
        if !link_channels {
            std::fs::create_dir_all(&dest).map_err(io(&dest))?; // Docker mounts over it
            continue;
        }
        if copy {
            copy_into(&src, &dest)?;
        } else if src.is_dir() {
            std::os::unix::fs::symlink(&src, &dest).map_err(io(&dest))?;
        } else {
            std::fs::create_dir_all(&dest).map_err(io(&dest))?;
            let name = src.file_name().ok_or_else(|| Error::Failed(format!("channel `{}`: bad path", c.name)))?;
            std::os::unix::fs::symlink(&src, dest.join(name)).map_err(io(&dest))?;
        }
    }
    Ok(t)
}

fn copy_into(src: &Path, dest: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    if src.is_file() {
        let to = dest.join(src.file_name().unwrap_or_default());
        std::fs::copy(src, &to).map_err(io(&to))?;
        return Ok(());
    }
    for e in std::fs::read_dir(src).map_err(io(src))? {
        let e = e.map_err(io(src))?;
        let p = e.path();
        if p.is_dir() {
            copy_into(&p, &dest.join(e.file_name()))?;
        } else {
            let to = dest.join(e.file_name());
            std::fs::copy(&p, &to).map_err(io(&to))?;
        }
    }
    Ok(())
}

/// `--train-bin`, `$OXTUNE_TRAIN_BIN`, `train` next to this executable, else `train` on PATH.
pub fn find_train_binary(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::Failed(format!("--train-bin {} does not exist", p.display())))
        };
    }
    if let Some(p) = std::env::var_os("OXTUNE_TRAIN_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            for cand in [dir.join("train"), dir.parent().map(|d| d.join("train")).unwrap_or_default()] {
                if cand.is_file() {
                    return Ok(cand);
                }
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("train");
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    Err(Error::Failed("cannot find the `train` binary: build it (`cargo build --release -p trainer`), pass --train-bin PATH, or run with --image IMAGE".into()))
}

enum Runner {
    Binary(PathBuf),
    Docker { image: String, gpus: String },
}

fn spawn(runner: &Runner, job: &Job, tree: &MlTree, container: &str) -> Result<Child, Error> {
    let arn = format!("arn:aws:sagemaker:local:000000000000:training-job/{}", job.job_name);
    let mut cmd = match runner {
        Runner::Binary(bin) => {
            let mut c = Command::new(bin);
            c.arg("train").arg("--ml-root").arg(&tree.root);
            c.env("OXTUNE_ML_ROOT", &tree.root);
            c
        }
        Runner::Docker { image, gpus } => {
            let mut c = Command::new("docker");
            c.args(["run", "--rm", "--name", container]);
            if gpus != "none" {
                c.args(["--gpus", gpus]);
            }
            // Files written under /opt/ml belong to you, not root.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            c.args(["--user", &format!("{uid}:{gid}")]);
            c.arg("-v").arg(format!("{}:/opt/ml", tree.root.display()));
            for ch in &job.channels {
                if let Source::Local(p) = &ch.source {
                    let src = p.canonicalize().map_err(|e| Error::Failed(format!("{}: {e}", p.display())))?;
                    let target = if src.is_dir() {
                        format!("/opt/ml/input/data/{}", ch.name)
                    } else {
                        format!(
                            "/opt/ml/input/data/{}/{}",
                            ch.name,
                            src.file_name().unwrap_or_default().to_string_lossy()
                        )
                    };
                    c.arg("-v").arg(format!("{}:{target}:ro", src.display()));
                }
            }
            c.args(["-e", "TRAINING_JOB_NAME", "-e", "TRAINING_JOB_ARN"]);
            for k in job.environment.keys() {
                // Name only: docker reads the value from its own environment, so secrets never
                // appear on a command line (`ps`).
                c.args(["-e", k]);
            }
            c.arg(image).arg("train");
            c
        }
    };
    cmd.env("TRAINING_JOB_NAME", &job.job_name).env("TRAINING_JOB_ARN", arn);
    for (k, v) in &job.environment {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().map_err(|e| {
        Error::Failed(match runner {
            Runner::Binary(b) => format!("cannot start {}: {e}", b.display()),
            Runner::Docker { .. } => format!("cannot start docker: {e} (is Docker installed and running?)"),
        })
    })
}

fn signal(child: &Child, runner: &Runner, container: &str, sig: i32) {
    match runner {
        Runner::Binary(_) => unsafe {
            libc::kill(child.id() as i32, sig);
        },
        Runner::Docker { .. } => {
            let name = if sig == libc::SIGKILL { "KILL" } else { "TERM" };
            let _ = Command::new("docker")
                .args(["kill", "--signal", name, container])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

enum AttemptEnd {
    Exited(std::process::ExitStatus),
}

#[derive(PartialEq, Eq, Debug, Clone, Copy)]
enum Why {
    None,
    MaxRuntime,
    Interrupt,
}

#[allow(clippy::too_many_arguments)]
/// Stream the child's output until it exits; signal it at `deadline` (max runtime) or `interrupt_at`.
fn supervise(
    mut child: Child,
    runner: &Runner,
    container: &str,
    deadline: Instant,
    interrupt_at: Option<Instant>,
    interrupt_step: Option<u64>,
    grace: Duration,
    redactor: &Redactor,
    out: &mut dyn Write,
) -> Result<(AttemptEnd, Why), Error> {
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    if let Some(stderr) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    drop(tx);
    let mut why = Why::None;
    let mut term_sent: Option<Instant> = None;
    let mut killed = false;
    let mut step_reached = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if let (Some(n), Some(m)) = (interrupt_step, crate::jobs::parse_metric_line(&line)) {
                    step_reached |= m.get("step").is_some_and(|s| *s >= n as f64);
                }
                let _ = writeln!(out, "{}", redactor.redact(&line));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(status) = child.try_wait().map_err(|e| Error::Failed(format!("waiting for the trainer: {e}")))? {
            // Drain what is left.
            for r in readers {
                let _ = r.join();
            }
            for line in rx.try_iter() {
                let _ = writeln!(out, "{}", redactor.redact(&line));
            }
            return Ok((AttemptEnd::Exited(status), why));
        }
        let now = Instant::now();
        if term_sent.is_none() {
            if now >= deadline {
                why = Why::MaxRuntime;
            } else if interrupt_at.is_some_and(|t| now >= t) || step_reached {
                why = Why::Interrupt;
            }
            if why != Why::None {
                let _ = writeln!(
                    out,
                    "oxtune: {} — sending SIGTERM (SIGKILL after {})",
                    if why == Why::MaxRuntime { "max runtime reached" } else { "simulated spot interruption" },
                    fmt_duration(grace.as_secs_f64())
                );
                signal(&child, runner, container, libc::SIGTERM);
                term_sent = Some(now);
            }
        } else if !killed && term_sent.is_some_and(|t| now.duration_since(t) >= grace) {
            let _ = writeln!(
                out,
                "oxtune: the trainer did not exit within {} of SIGTERM — sending SIGKILL",
                fmt_duration(grace.as_secs_f64())
            );
            signal(&child, runner, container, libc::SIGKILL);
            killed = true;
        }
    }
}

fn list_dir(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn reset_dir(d: &Path) -> Result<(), Error> {
    if d.exists() {
        std::fs::remove_dir_all(d).map_err(io(d))?;
    }
    std::fs::create_dir_all(d).map_err(io(d))
}

/// `tar czf out -C dir .` with the tar/flate2 crates.
pub fn pack(dir: &Path, out: &Path) -> Result<(), Error> {
    let f = std::fs::File::create(out).map_err(io(out))?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(true);
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(io(dir))?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            tar.append_dir_all(&name, &p).map_err(io(&p))?;
        } else {
            tar.append_path_with_name(&p, &name).map_err(io(&p))?;
        }
    }
    let gz = tar.into_inner().map_err(io(out))?;
    gz.finish().map_err(io(out))?;
    Ok(())
}

/// Run the job locally; logs go to `out`.
pub fn run(job: &Job, opts: &LocalOptions, redactor: &Redactor, out: &mut dyn Write) -> Result<LocalOutcome, Error> {
    let runner = match &opts.image {
        Some(img) => Runner::Docker { image: img.clone(), gpus: opts.gpus.clone() },
        None => Runner::Binary(find_train_binary(opts.train_bin.as_deref())?),
    };
    // Absolute: `docker run -v` treats a relative source as a named volume, not a directory.
    std::fs::create_dir_all(&opts.work_dir).map_err(io(&opts.work_dir))?;
    let work_dir = opts.work_dir.canonicalize().map_err(io(&opts.work_dir))?;
    let root = work_dir.join("opt_ml");
    let link = matches!(runner, Runner::Binary(_));
    let tree = synthesise(job, &root, link, opts.copy_channels, opts.fresh)?;
    let started = Instant::now();
    let deadline = started + opts.max_runtime;
    let mut attempts = 0u32;
    let mut interrupt_pending = opts.interrupt_after;
    let mut interrupt_step = opts.interrupt_after_step;
    let mut checkpoints_before_restart = Vec::new();
    let _ = writeln!(
        out,
        "oxtune: running {} locally ({}) under {}; max runtime {}",
        job.job_name,
        match &runner {
            Runner::Binary(b) => b.display().to_string(),
            Runner::Docker { image, .. } => format!("docker image {image}"),
        },
        tree.root.display(),
        fmt_duration(opts.max_runtime.as_secs_f64())
    );
    loop {
        attempts += 1;
        // A (re)started container sees empty model/ and output/, and the checkpoints it had.
        reset_dir(&tree.model_dir())?;
        reset_dir(&tree.output_dir())?;
        std::fs::create_dir_all(tree.output_data_dir()).map_err(io(&tree.output_dir()))?;
        let container = format!("oxtune-{}-{attempts}", job.job_name);
        let attempt_start = Instant::now();
        let child = spawn(&runner, job, &tree, &container)?;
        let interrupt_at = interrupt_pending.map(|d| attempt_start + d);
        let (AttemptEnd::Exited(status), why) = supervise(
            child,
            &runner,
            &container,
            deadline,
            interrupt_at,
            interrupt_step,
            opts.stop_grace,
            redactor,
            out,
        )?;
        let code = status.code();
        let _ = writeln!(
            out,
            "oxtune: attempt {attempts} ended after {} with {}",
            fmt_duration(attempt_start.elapsed().as_secs_f64()),
            match code {
                Some(c) => format!("exit code {c}"),
                None => "a signal (killed)".to_string(),
            }
        );
        if why == Why::Interrupt {
            interrupt_pending = None;
            interrupt_step = None;
            checkpoints_before_restart = list_dir(&tree.checkpoint_dir());
            let _ = writeln!(
                out,
                "oxtune: checkpoints kept for the restart: {}",
                if checkpoints_before_restart.is_empty() {
                    "none (the trainer saved nothing!)".into()
                } else {
                    checkpoints_before_restart.join(", ")
                }
            );
            if Instant::now() < deadline {
                let _ = writeln!(out, "oxtune: restarting like a spot instance replacement (attempt {})", attempts + 1);
                continue;
            }
        }
        let failure_text =
            std::fs::read_to_string(tree.failure_file()).ok().map(|t| t.chars().take(1024).collect::<String>());
        let (status_kind, failure_reason) =
            if why == Why::MaxRuntime || (why == Why::Interrupt && Instant::now() >= deadline) {
                (LocalStatus::Stopped, None)
            } else if code == Some(0) {
                (LocalStatus::Completed, None)
            } else {
                let reason = format!(
                    "AlgorithmError: {}, exit code: {}",
                    failure_text.as_deref().map(str::trim).unwrap_or(""),
                    code.map(|c| c.to_string()).unwrap_or_else(|| "killed".into())
                );
                (LocalStatus::Failed, Some(reason))
            };
        // Pack like SageMaker: model on completion or stop, output data always.
        let artifacts = work_dir.join("output");
        std::fs::create_dir_all(&artifacts).map_err(io(&artifacts))?;
        let model_tar = if status_kind != LocalStatus::Failed {
            let p = artifacts.join("model.tar.gz");
            pack(&tree.model_dir(), &p)?;
            Some(p)
        } else {
            None
        };
        let output_tar = artifacts.join("output.tar.gz");
        pack(&tree.output_data_dir(), &output_tar)?;
        return Ok(LocalOutcome {
            status: status_kind,
            exit_code: code,
            attempts,
            failure_reason,
            model_tar,
            output_tar: Some(output_tar),
            ml_root: tree.root.clone(),
            checkpoints_before_restart,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobfile::{resolve, JobFile, Overrides};

    fn job(dir: &Path) -> Job {
        std::fs::write(dir.join("train.jsonl"), "{\"text\":\"hi\"}\n").unwrap();
        let f: JobFile = toml::from_str(
            "name = \"t\"\n[sagemaker]\ninstance_type = \"ml.g5.xlarge\"\n[hyperparameters]\nepochs = 1\n[channels]\ntrain = \"train.jsonl\"\n",
        )
        .unwrap();
        resolve(Some((&dir.join("job.toml"), f)), &Overrides { exact_name: true, ..Default::default() }, &|_| None, 0)
            .unwrap()
    }

    #[test]
    fn synthesised_tree_matches_sagemaker() {
        let d = tempfile::tempdir().unwrap();
        let j = job(d.path());
        let t = synthesise(&j, &d.path().join("opt_ml"), true, false, false).unwrap();
        let hp: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(t.config_dir().join("hyperparameters.json")).unwrap())
                .unwrap();
        assert_eq!(hp, json!({"epochs": "1"}));
        let rc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(t.config_dir().join("resourceconfig.json")).unwrap())
                .unwrap();
        assert_eq!(rc["current_host"], "algo-1");
        assert_eq!(rc["hosts"], json!(["algo-1"]));
        let idc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(t.config_dir().join("inputdataconfig.json")).unwrap())
                .unwrap();
        assert_eq!(idc["train"]["TrainingInputMode"], "File");
        assert_eq!(std::fs::read_to_string(t.data_dir().join("train/train.jsonl")).unwrap(), "{\"text\":\"hi\"}\n");
        assert!(!t.config_dir().join("checkpointconfig.json").exists());
    }

    #[test]
    fn packs_tar_gz() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("model");
        std::fs::create_dir_all(m.join("sub")).unwrap();
        std::fs::write(m.join("adapter_config.json"), "{}").unwrap();
        std::fs::write(m.join("sub/x.bin"), [1u8, 2, 3]).unwrap();
        let out = d.path().join("model.tar.gz");
        pack(&m, &out).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap()));
        let mut names: Vec<String> =
            ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        names.sort();
        assert_eq!(names, ["adapter_config.json", "sub/", "sub/x.bin"]);
    }
}
