//! The trainer's process in a local job: finding `train`, starting it (binary or `docker run`),
//! signalling it, and supervising it: streaming its output, SIGTERM at the max runtime or a
//! simulated interruption, SIGKILL after the grace period.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::MlTree;
use crate::error::Error;
use crate::format::fmt_duration;
use crate::jobfile::{Job, Source};
use crate::redact::Redactor;

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

/// The container engine that runs an image: Docker, or podman (same commands, GPUs through CDI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    pub fn program(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }

    /// The engine asked for, else `docker` when it is on PATH, else `podman`.
    pub fn choose(explicit: Option<Engine>) -> Result<Engine, Error> {
        Engine::choose_on(explicit, std::env::var_os("PATH").as_deref())
    }

    /// [`Engine::choose`] against a given PATH value.
    pub fn choose_on(explicit: Option<Engine>, path: Option<&std::ffi::OsStr>) -> Result<Engine, Error> {
        let on_path = |e: Engine| path.is_some_and(|p| std::env::split_paths(p).any(|d| d.join(e.program()).is_file()));
        match explicit {
            Some(e) if on_path(e) => Ok(e),
            Some(e) => Err(Error::Failed(format!(
                "--engine {0}: `{0}` is not on PATH; install it (Debian: apt-get install {0}) or choose the other engine",
                e.program()
            ))),
            None => [Engine::Docker, Engine::Podman].into_iter().find(|e| on_path(*e)).ok_or_else(|| {
                Error::Failed(
                    "running an image needs a container engine: neither `docker` nor `podman` is on PATH \
                     (install one, or run the train binary without --image)"
                        .into(),
                )
            }),
        }
    }

    /// The `run` flags that hand the job the host's GPUs (`gpus` as `docker run --gpus` takes it).
    fn gpu_flags(self, gpus: &str) -> Vec<String> {
        match (self, gpus) {
            (_, "none") => vec![],
            (Engine::Docker, g) => vec!["--gpus".into(), g.into()],
            // podman reaches NVIDIA GPUs through CDI (`nvidia-ctk cdi generate`).
            (Engine::Podman, g) => vec!["--device".into(), format!("nvidia.com/gpu={g}")],
        }
    }
}

pub(super) enum Runner {
    Binary(PathBuf),
    Container { engine: Engine, image: String, gpus: String },
}

impl Runner {
    /// What runs the job, for the log.
    pub(super) fn describe(&self) -> String {
        match self {
            Runner::Binary(b) => b.display().to_string(),
            Runner::Container { engine, image, .. } => format!("{} image {image}", engine.program()),
        }
    }
}

pub(super) fn spawn(runner: &Runner, job: &Job, tree: &MlTree, container: &str) -> Result<Child, Error> {
    let arn = format!("arn:aws:sagemaker:local:000000000000:training-job/{}", job.job_name);
    let mut cmd = match runner {
        Runner::Binary(bin) => {
            let mut c = Command::new(bin);
            c.arg("train").arg("--ml-root").arg(&tree.root);
            c.env("OXTUNE_ML_ROOT", &tree.root);
            c
        }
        Runner::Container { engine, image, gpus } => {
            let mut c = Command::new(engine.program());
            c.args(["run", "--rm", "--name", container]);
            c.args(engine.gpu_flags(gpus));
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
                // Name only: the engine reads the value from its own environment, so secrets never
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
            Runner::Container { engine, .. } => {
                format!("cannot start {0}: {e} (is {0} installed and running?)", engine.program())
            }
        })
    })
}

fn signal(child: &Child, runner: &Runner, container: &str, sig: i32) {
    match runner {
        Runner::Binary(_) => unsafe {
            libc::kill(child.id() as i32, sig);
        },
        Runner::Container { engine, .. } => {
            let name = if sig == libc::SIGKILL { "KILL" } else { "TERM" };
            let _ = Command::new(engine.program())
                .args(["kill", "--signal", name, container])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub(super) enum AttemptEnd {
    Exited(std::process::ExitStatus),
}

#[derive(PartialEq, Eq, Debug, Clone, Copy)]
pub(super) enum Why {
    None,
    MaxRuntime,
    Interrupt,
}

#[allow(clippy::too_many_arguments)]
/// Stream the child's output until it exits; signal it at `deadline` (max runtime) or `interrupt_at`.
pub(super) fn supervise(
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
