//! The `oxtune` command line: argument definitions, exit codes and rendering only — the work is
//! the library's. One file per command group; a command file imports the library, clap and the
//! few shared pieces below, never another command file.

use clap::{Parser, Subcommand};

use crate::aws::AwsOptions;
use crate::catalogue::PriceTable;
use crate::error::Error;

mod deploy;
mod estimate;
mod jobs;
mod local;
mod prepare;
mod prices;
mod registry;
mod submit;

/// Exit codes, one table for every command (the README's "Exit codes" lists the same).
pub const EXIT_OK: i32 = 0;
/// A failure: an AWS error, a local run that broke, a job that ended `Failed` (`wait`, `local`), an
/// endpoint that ended `Failed` (`deploy --wait`).
pub const EXIT_ERROR: i32 = 1;
/// Invalid input (job file, flags, limits, hyperparameters, data): nothing was sent to AWS.
pub const EXIT_INVALID: i32 = 2;
/// `wait --timeout` (or `deploy --wait --timeout`) gave up while the job (endpoint) was still starting.
pub const EXIT_TIMEOUT: i32 = 3;
/// The job was stopped: StopTrainingJob, max runtime or spot max wait exceeded (`wait`, `local`).
pub const EXIT_STOPPED: i32 = 4;

#[derive(Debug, Parser)]
#[command(
    name = "oxtune",
    version,
    about = "Estimate, submit, follow, stop, locally run and deploy oxtune fine-tuning jobs on Amazon SageMaker",
    long_about = "Estimate, submit, follow, stop, locally run and deploy oxtune fine-tuning jobs on Amazon SageMaker.\n\nEvery job is validated and priced before any AWS call, and the same job file runs locally with `oxtune local`."
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
    Estimate(estimate::EstimateArgs),
    /// The instance catalogue with on-demand training prices; `prices refresh` updates them.
    Prices(prices::PricesArgs),
    /// Validate, upload local data, and create the SageMaker training job.
    Submit(submit::SubmitArgs),
    /// Status, history, billable time, cost, metrics and artifacts of a job.
    Status(jobs::StatusArgs),
    /// Recent training jobs with instance, duration and cost.
    List(jobs::ListArgs),
    /// Stop a job (an already finished job is reported, not an error).
    Stop(jobs::StopArgs),
    /// Print the job's CloudWatch logs; -f follows until the job ends.
    Logs(jobs::LogsArgs),
    /// Wait for a job, showing progress; exit 0 completed, 1 failed, 3 timed out, 4 stopped.
    Wait(jobs::WaitArgs),
    /// Hyperparameters and final metrics of jobs side by side.
    Compare(jobs::CompareArgs),
    /// Convert and validate training data (trainer JSONL or Amazon Bedrock formats).
    PrepareData(prepare::PrepareArgs),
    /// Run the job file on this machine under a synthesised /opt/ml.
    Local(local::LocalArgs),
    /// Put a finished job's merged model behind a real-time SageMaker endpoint.
    Deploy(deploy::DeployArgs),
    /// Send prompts to an endpoint (and score them when the file has references).
    Invoke(deploy::InvokeArgs),
    /// This region's oxtune endpoints with status, instance, age and cost so far.
    Endpoints(deploy::EndpointsArgs),
    /// Delete an endpoint, its config and its model.
    Undeploy(deploy::UndeployArgs),
    /// Register a finished job as a new version of a model package group (SageMaker Model Registry).
    Register(registry::RegisterArgs),
    /// A model package group's versions with approval, status and evaluation scores.
    Models(registry::ModelsArgs),
    /// Approve a registered version (then `oxtune deploy GROUP` serves it).
    Approve(registry::ApprovalArgs),
    /// Reject a registered version.
    Reject(registry::ApprovalArgs),
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
impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        if e.is_invalid_input() {
            Failure::invalid(e)
        } else {
            Failure::error(e)
        }
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
    // One client configuration for the commands that only follow jobs (submit adds the job file's).
    let aws = AwsOptions::new(cli.region.clone(), cli.profile.clone(), cli.endpoint_url.clone());
    match &cli.command {
        Command::Estimate(a) => estimate::run(&cli, a),
        Command::Prices(a) => prices::run(&cli, a),
        Command::Submit(a) => submit::run(&cli, a),
        Command::Status(a) => block_on(jobs::status(&aws, a)),
        Command::List(a) => block_on(jobs::list(&aws, a)),
        Command::Stop(a) => block_on(jobs::stop(&aws, a)),
        Command::Logs(a) => block_on(jobs::logs(&aws, a)),
        Command::Wait(a) => block_on(jobs::wait(&aws, a)),
        Command::Compare(a) => block_on(jobs::compare(&aws, a)),
        Command::PrepareData(a) => prepare::run(a),
        Command::Local(a) => local::run(a),
        Command::Deploy(a) => block_on(deploy::deploy(&aws, a)),
        Command::Invoke(a) => block_on(deploy::invoke(&aws, a)),
        Command::Endpoints(a) => block_on(deploy::list(&aws, a)),
        Command::Undeploy(a) => block_on(deploy::undeploy(&aws, a)),
        Command::Register(a) => block_on(registry::register(&aws, a)),
        Command::Models(a) => block_on(registry::models(&aws, a)),
        Command::Approve(a) => block_on(registry::set_approval(&aws, a, crate::registry::Approval::Approved)),
        Command::Reject(a) => block_on(registry::set_approval(&aws, a, crate::registry::Approval::Rejected)),
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

/// The exit code of a job that reached its end (`wait`, `submit --wait`).
fn job_end_code(end: crate::jobs::JobEnd) -> i32 {
    match end {
        crate::jobs::JobEnd::Completed => EXIT_OK,
        crate::jobs::JobEnd::Failed => EXIT_ERROR,
        crate::jobs::JobEnd::Stopped => EXIT_STOPPED,
        crate::jobs::JobEnd::TimedOut => EXIT_TIMEOUT,
    }
}
