//! The `oxtune` command line: argument definitions and the command implementations.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod estimate;
mod jobs;
mod local;
mod prepare;
mod prices;
mod submit;

pub use estimate::*;
pub use jobs::*;
pub use local::*;
pub use prepare::*;
pub use prices::*;
pub use submit::*;

use crate::aws::{AwsOptions, ErrorContext, ErrorKind};
use crate::calibration::Calibration;
use crate::catalogue::{find_model, Catalogue, PriceTable};
use crate::estimate::{Checkpointing, EstimateInput, GrpoParams, Method, TokenCount};
use crate::format::{fmt_duration, fmt_usd, parse_duration};
use crate::jobfile::{self, Job, Overrides, Source};
use crate::redact::Redactor;

/// Exit codes shared by the commands.
pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
/// Invalid input (job file, flags, limits, hyperparameters): nothing was sent to AWS.
pub const EXIT_INVALID: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "oxtune",
    version,
    about = "Estimate, submit, follow, stop and locally run oxtune fine-tuning jobs on Amazon SageMaker",
    long_about = "Estimate, submit, follow, stop and locally run oxtune fine-tuning jobs on Amazon SageMaker.\n\nEvery job is validated and priced before any AWS call, and the same job file runs locally with `oxtune local`."
)]
pub struct Cli {
    /// AWS region (default: the job file's, then AWS_REGION / your profile's).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// AWS named profile (default: AWS_PROFILE or `default`).
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Send every AWS call to this endpoint (emulators such as moto). AWS_ENDPOINT_URL and
    /// AWS_ENDPOINT_URL_SAGEMAKER / _S3 / _CLOUDWATCH_LOGS are honoured too.
    #[arg(long, global = true)]
    pub endpoint_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// GPU memory, time and cost of a job on every instance type (no AWS call).
    Estimate(EstimateArgs),
    /// The instance catalogue with on-demand training prices; `prices refresh` updates them.
    Prices(PricesArgs),
    /// Validate, upload local data, and create the SageMaker training job.
    Submit(SubmitArgs),
    /// Status, history, billable time, cost, metrics and artifacts of a job.
    Status(StatusArgs),
    /// Recent training jobs with instance, duration and cost.
    List(ListArgs),
    /// Stop a job (an already finished job is reported, not an error).
    Stop(StopArgs),
    /// Print the job's CloudWatch logs; -f follows until the job ends.
    Logs(LogsArgs),
    /// Wait for a job, showing progress; exit 0 completed, 1 failed, 2 stopped, 3 timed out.
    Wait(WaitArgs),
    /// Hyperparameters and final metrics of jobs side by side.
    Compare(CompareArgs),
    /// Convert and validate training data (trainer JSONL or Amazon Bedrock formats).
    PrepareData(PrepareArgs),
    /// Run the job file on this machine under a synthesised /opt/ml.
    Local(LocalArgs),
}

/// A command failure: message and exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn invalid(m: impl std::fmt::Display) -> Failure {
        Failure { code: EXIT_INVALID, message: m.to_string() }
    }
    pub fn error(m: impl std::fmt::Display) -> Failure {
        Failure { code: EXIT_ERROR, message: m.to_string() }
    }
}

/// A library error: invalid input exits 2 (nothing was sent), everything else 1.
impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Failure {
        if e.is_invalid_input() {
            Failure::invalid(e)
        } else {
            Failure::error(e)
        }
    }
}

impl From<(ErrorKind, String)> for Failure {
    fn from((_, m): (ErrorKind, String)) -> Failure {
        Failure::error(m)
    }
}

type Res = Result<i32, Failure>;

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Region for offline work (prices): flag, job file, environment, else us-east-1.
fn offline_region(cli_region: &Option<String>, job_region: Option<&str>) -> String {
    cli_region
        .clone()
        .or_else(|| job_region.map(str::to_string))
        .or_else(|| env_var("AWS_REGION"))
        .or_else(|| env_var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into())
}

pub fn run(cli: Cli) -> Res {
    let aws =
        |region: Option<String>, profile: Option<String>| AwsOptions::new(region, profile, cli.endpoint_url.clone());
    match &cli.command {
        Command::Estimate(a) => cmd_estimate(&cli, a),
        Command::Prices(a) => cmd_prices(&cli, a),
        Command::Submit(a) => cmd_submit(&cli, a),
        Command::Status(a) => block_on(cmd_status(aws(cli.region.clone(), cli.profile.clone()), a, &cli)),
        Command::List(a) => block_on(cmd_list(aws(cli.region.clone(), cli.profile.clone()), a, &cli)),
        Command::Stop(a) => block_on(cmd_stop(aws(cli.region.clone(), cli.profile.clone()), a)),
        Command::Logs(a) => block_on(cmd_logs(aws(cli.region.clone(), cli.profile.clone()), a)),
        Command::Wait(a) => block_on(cmd_wait(aws(cli.region.clone(), cli.profile.clone()), a, &cli)),
        Command::Compare(a) => block_on(cmd_compare(aws(cli.region.clone(), cli.profile.clone()), a, &cli)),
        Command::PrepareData(a) => cmd_prepare(a),
        Command::Local(a) => cmd_local(&cli, a),
    }
}

fn block_on<F: std::future::Future<Output = Res>>(f: F) -> Res {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::error(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(f)
}

fn prices_for(region: &str) -> Result<PriceTable, Failure> {
    crate::prices::load(region).map_err(Failure::invalid)
}
