//! `oxtune local`: run a job file on this machine exactly as SageMaker would run it.
//!
//! * Synthesises the `/opt/ml` tree under `<work>/opt_ml`: string hyperparameters,
//!   `inputdataconfig.json`, `resourceconfig.json` (current_host `algo-1`),
//!   `checkpointconfig.json` when the job checkpoints, and `input/data/<channel>` (symlinks,
//!   copies with `--copy-channels`, or read-only bind mounts for a container).
//! * Runs `train` as a binary (`--train-bin`, `$OXTUNE_TRAIN_BIN`, next to `oxtune`, or on PATH)
//!   with `--ml-root`, or the image with `docker run [--gpus all] -v <root>:/opt/ml IMAGE train`
//!   (or `podman run`, GPUs through CDI).
//! * Streams the logs, enforces the max runtime with SIGTERM and then SIGKILL after the grace
//!   period (120 s like `StopTrainingJob`), keeps `checkpoints/` across restarts (model/ and
//!   output/ start empty each time, like a new container), and with `--interrupt-after` sends
//!   one SIGTERM mid-run and restarts to prove the trainer resumes — a simulated spot interruption.
//! * Packs `model/` into `model.tar.gz` and `output/data/` into `output.tar.gz` with the `tar`
//!   and `flate2` crates (no external `tar`), under `<work>/output/`, like `<S3OutputPath>/<job>/output/`.

mod process;
mod tree;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::format::fmt_duration;
use crate::jobfile::Job;
use crate::redact::Redactor;
use process::{spawn, supervise, AttemptEnd, Runner, Why};
use tree::{list_dir, reset_dir};

pub use process::{find_train_binary, Engine};
pub use tree::{config_files, pack, synthesise, MlTree};

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub work_dir: PathBuf,
    pub train_bin: Option<PathBuf>,
    pub image: Option<String>,
    /// The engine for `image` (None: docker when on PATH, else podman).
    pub engine: Option<Engine>,
    /// GPUs for the container (`docker run --gpus` value; podman: `--device nvidia.com/gpu=<value>`);
    /// `none` leaves them out.
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

/// Run the job locally; logs go to `out`.
pub fn run(job: &Job, opts: &LocalOptions, redactor: &Redactor, out: &mut dyn Write) -> Result<LocalOutcome, Error> {
    let runner = match &opts.image {
        Some(img) => {
            Runner::Container { engine: Engine::choose(opts.engine)?, image: img.clone(), gpus: opts.gpus.clone() }
        }
        None => Runner::Binary(find_train_binary(opts.train_bin.as_deref())?),
    };
    // Absolute: `run -v` treats a relative source as a named volume, not a directory.
    std::fs::create_dir_all(&opts.work_dir).map_err(Error::io(&opts.work_dir))?;
    let work_dir = opts.work_dir.canonicalize().map_err(Error::io(&opts.work_dir))?;
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
        runner.describe(),
        tree.root.display(),
        fmt_duration(opts.max_runtime.as_secs_f64())
    );
    if job.instance_count > 1 {
        let _ = writeln!(
            out,
            "oxtune: instance_count={} runs as one local host; set num_gpus=N to train N CPU ranks (or N local GPUs) as a dry run of data parallelism",
            job.instance_count
        );
    }
    loop {
        attempts += 1;
        // A (re)started container sees empty model/ and output/, and the checkpoints it had.
        reset_dir(&tree.model_dir())?;
        reset_dir(&tree.output_dir())?;
        std::fs::create_dir_all(tree.output_data_dir()).map_err(Error::io(&tree.output_dir()))?;
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
        std::fs::create_dir_all(&artifacts).map_err(Error::io(&artifacts))?;
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
    use std::path::Path;

    use serde_json::json;

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
