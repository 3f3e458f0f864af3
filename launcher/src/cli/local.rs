//! `oxtune local`: run the job file on this machine under a synthesised `/opt/ml`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{env_var, Failure, Res, EXIT_ERROR, EXIT_OK, EXIT_STOPPED};
use crate::format::parse_duration;
use crate::jobfile::{self, Overrides};
use crate::local::{Engine, LocalStatus};
use crate::plan::validate_hyperparameters;

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// The job file (TOML).
    pub job_file: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    /// Working directory (default ./oxtune-local/<name>); holds opt_ml/ and output/.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The `train` binary (default: next to oxtune, $OXTUNE_TRAIN_BIN, or PATH).
    #[arg(long)]
    pub train_bin: Option<PathBuf>,
    /// Run the job's image (`image` in the job file, or --image) in a container instead of the
    /// binary; giving --image or --engine on the command line implies it.
    #[arg(long)]
    pub docker: bool,
    /// The container engine (default: docker when on PATH, else podman).
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// GPUs for the container: `docker run --gpus` value, or podman's CDI device
    /// `nvidia.com/gpu=<value>` (`none` for CPU images).
    #[arg(long, default_value = "all")]
    pub gpus: String,
    /// Time between SIGTERM and SIGKILL (SageMaker: 120 s).
    #[arg(long, default_value = "120s")]
    pub stop_grace: String,
    /// Simulate a spot interruption: SIGTERM after this long, then restart once.
    #[arg(long)]
    pub interrupt_after: Option<String>,
    /// Simulate the spot interruption once the trainer logged this step (instead of a time).
    #[arg(long)]
    pub interrupt_after_step: Option<u64>,
    /// Start without the checkpoints of earlier runs.
    #[arg(long)]
    pub fresh: bool,
    /// Copy channel data instead of symlinking it.
    #[arg(long)]
    pub copy_channels: bool,
}

pub(super) fn run(a: &LocalArgs) -> Res {
    let f = jobfile::read_job_file(&a.job_file).map_err(Failure::invalid)?;
    let job = jobfile::resolve(Some((&a.job_file, f)), &a.overrides, &env_var, crate::clock::now_epoch() as u64)
        .map_err(Failure::invalid)?;
    for w in &job.warnings {
        if !w.contains("max_runtime") {
            eprintln!("warning: {w}");
        }
    }
    validate_hyperparameters(&job.hyperparameters).map_err(Failure::invalid)?;
    let grace = parse_duration(&a.stop_grace).map_err(|e| Failure::invalid(format!("--stop-grace: {e}")))?;
    let interrupt_after = a
        .interrupt_after
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| Failure::invalid(format!("--interrupt-after: {e}")))?;
    let opts =
        crate::local::LocalOptions {
            work_dir: a.work_dir.clone().unwrap_or_else(|| PathBuf::from("oxtune-local").join(&job.base_name)),
            train_bin: a.train_bin.clone(),
            image: if a.docker || a.engine.is_some() || a.overrides.image.is_some() {
                Some(job.image.clone().ok_or_else(|| {
                    Failure::invalid("--docker needs an image: --image IMAGE or `image` in [sagemaker]")
                })?)
            } else {
                None
            },
            engine: a.engine,
            gpus: a.gpus.clone(),
            max_runtime: job.max_runtime(),
            stop_grace: grace,
            interrupt_after,
            interrupt_after_step: a.interrupt_after_step,
            fresh: a.fresh,
            copy_channels: a.copy_channels,
        };
    let mut out = std::io::stdout();
    let outcome = crate::local::run(&job, &opts, &job.redactor(), &mut out).map_err(Failure::error)?;
    let _ = out.flush();
    let (status, code) = match outcome.status {
        LocalStatus::Completed => ("Completed", EXIT_OK),
        LocalStatus::Failed => ("Failed", EXIT_ERROR),
        LocalStatus::Stopped => ("Stopped (MaxRuntimeExceeded)", EXIT_STOPPED),
    };
    eprintln!("local job {}: {status} after {} attempt(s)", job.job_name, outcome.attempts);
    if let Some(r) = &outcome.failure_reason {
        eprintln!("failure reason: {r}");
    }
    if let Some(m) = &outcome.model_tar {
        eprintln!("model:  {}", m.display());
    }
    if let Some(o) = &outcome.output_tar {
        eprintln!("output: {}", o.display());
    }
    Ok(code)
}
