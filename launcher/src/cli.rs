//! The `oxtune` command line: argument definitions and the command implementations.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::aws::{AwsOptions, ErrorContext, ErrorKind};
use crate::calibration::Calibration;
use crate::catalogue::{find_model, Catalogue, PriceTable};
use crate::estimate::{self, Checkpointing, EstimateInput, GrpoParams, Method, TokenCount};
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

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CkptArg {
    Auto,
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct EstimateArgs {
    /// Job file to take hyperparameters, model and data from (flags override it).
    pub job_file: Option<PathBuf>,
    /// Base model: a catalogue name (see --list-models), a Hub id, a config.json or a model directory.
    #[arg(long)]
    pub model: Option<String>,
    /// lora | qlora | grpo.
    #[arg(long)]
    pub method: Option<String>,
    /// Training data file or directory (tokenised exactly when a tokenizer is available).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Training tokens per epoch, instead of --data.
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Tokenizer directory (tokenizer.json …) for exact token counts.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub epochs: Option<f64>,
    #[arg(long)]
    pub max_steps: Option<u64>,
    #[arg(long)]
    pub max_seq_length: Option<u64>,
    /// Per-device micro-batch size.
    #[arg(long)]
    pub batch: Option<u64>,
    #[arg(long)]
    pub grad_accum: Option<u64>,
    #[arg(long)]
    pub lora_r: Option<u64>,
    #[arg(long)]
    pub packing: Option<bool>,
    /// Gradient checkpointing: auto = only where it is needed to fit.
    #[arg(long, value_enum, default_value = "auto")]
    pub gradient_checkpointing: CkptArg,
    /// Only these instance types (repeatable); default all.
    #[arg(long = "instance")]
    pub instances: Vec<String>,
    /// Instances per job.
    #[arg(long, default_value_t = 1)]
    pub instance_count: u32,
    /// GRPO: prompts in the dataset (default: rows of --data).
    #[arg(long)]
    pub prompts: Option<u64>,
    /// GRPO: mean prompt length in tokens.
    #[arg(long)]
    pub prompt_length: Option<u64>,
    /// Hyperparameter KEY=VALUE (repeatable), as in the job file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Calibration file (default: benches/calibration.toml compiled in, or $OXTUNE_CALIBRATION).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Print the catalogue of known models and exit.
    #[arg(long)]
    pub list_models: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PricesArgs {
    #[command(subcommand)]
    pub action: Option<PricesAction>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PricesAction {
    /// Download the public AWS price list for a region and cache its training rates.
    Refresh {
        /// Read this downloaded index.csv instead of downloading.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Price-list URL (default: the AWS bulk offer file of the region).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job file (TOML).
    pub job_file: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
    /// Print the CreateTrainingJob request as JSON and stop (no AWS call, no upload).
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse the job if its estimated cost exceeds this many USD.
    #[arg(long)]
    pub max_cost: Option<f64>,
    /// Follow the job after creating it (like `oxtune wait`).
    #[arg(long)]
    pub wait: bool,
    /// Calibration file for the estimate.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub job: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// InProgress | Completed | Failed | Stopping | Stopped.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub name_contains: Option<String>,
    /// Created within this long, e.g. 2d, 12h.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub max: usize,
    /// Skip the per-job describe (no instance/cost columns; one call in total).
    #[arg(long)]
    pub brief: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    pub job: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub job: String,
    /// Follow until the job reaches a final status.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only events newer than this, e.g. 30m.
    #[arg(long)]
    pub since: Option<String>,
    /// Poll interval when following.
    #[arg(long, default_value = "5s")]
    pub poll: String,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    pub job: String,
    /// Give up after this long (exit 3).
    #[arg(long)]
    pub timeout: Option<String>,
    #[arg(long, default_value = "15s")]
    pub poll: String,
    /// Also print the job's log lines.
    #[arg(long)]
    pub logs: bool,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    #[arg(required = true, num_args = 2..)]
    pub jobs: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Input file (CSV, TSV, JSON, JSONL, TXT) or directory.
    pub input: PathBuf,
    /// Output JSONL (default: <input>.<target>.jsonl).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "messages")]
    pub to: crate::prepare::Target,
    /// Input format: auto, alpaca, prompt_completion, messages, sharegpt, text.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Key/column of the prompt (or instruction).
    #[arg(long)]
    pub prompt_field: Option<String>,
    /// Key/column of the completion (or output).
    #[arg(long)]
    pub completion_field: Option<String>,
    #[arg(long)]
    pub system_field: Option<String>,
    /// TXT: the whole file is one document.
    #[arg(long)]
    pub text_file: bool,
    /// Validate and report only.
    #[arg(long)]
    pub check: bool,
    /// Tokenizer/model directory for a token-length histogram.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 1024)]
    pub max_seq_length: usize,
    #[arg(long)]
    pub json: bool,
}

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
    /// Run the job's image (`image` in the job file, or --image) with Docker instead of the
    /// binary; giving --image on the command line implies it.
    #[arg(long)]
    pub docker: bool,
    /// `docker run --gpus` value (`none` for CPU images).
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

/// A command failure: message and exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn invalid(m: impl Into<String>) -> Failure {
        Failure { code: EXIT_INVALID, message: m.into() }
    }
    pub fn error(m: impl Into<String>) -> Failure {
        Failure { code: EXIT_ERROR, message: m.into() }
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

// ---------------------------------------------------------------- estimate

/// A model config from a catalogue name, Hub id, config.json or model directory.
pub fn resolve_model(
    name: &str,
    base_dir: &Path,
) -> Result<(String, trainer::model::config::ModelConfig, Option<PathBuf>), String> {
    let p = {
        let raw = Path::new(name);
        if raw.is_absolute() {
            raw.to_path_buf()
        } else {
            base_dir.join(raw)
        }
    };
    if p.is_dir() && p.join("config.json").is_file() {
        let cfg = trainer::model::config::ModelConfig::from_file(&p.join("config.json")).map_err(|e| e.to_string())?;
        return Ok((p.display().to_string(), cfg, Some(p)));
    }
    if p.is_file() {
        let cfg = trainer::model::config::ModelConfig::from_file(&p).map_err(|e| e.to_string())?;
        let dir = p.parent().map(Path::to_path_buf);
        return Ok((p.display().to_string(), cfg, dir));
    }
    match find_model(name) {
        Some(m) => {
            let cfg = m.model_config().map_err(|e| format!("{}: {e}", m.id))?;
            Ok((format!("{} ({})", m.id, m.hub_id), cfg, None))
        }
        None => Err(format!(
            "unknown model `{name}`: not a catalogue name, nor a config.json / model directory. Known: {}",
            crate::catalogue::MODELS.iter().map(|m| m.id).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Token count of a data file: exact with a tokenizer, else estimated from bytes.
pub fn count_data_tokens(
    data: &Path,
    tokenizer_dir: Option<&Path>,
    spec: &trainer::spec::JobSpec,
    cal: &Calibration,
) -> Result<TokenCount, String> {
    let bytes = data_bytes(data)?;
    if let Some(dir) = tokenizer_dir {
        if dir.join("tokenizer.json").is_file() {
            match exact_tokens(data, dir, spec) {
                Ok(tc) => return Ok(TokenCount { data_bytes: Some(bytes), ..tc }),
                Err(e) => eprintln!("warning: exact token count failed ({e}); estimating from bytes"),
            }
        }
    }
    // Rows: the trainer's reader counts them exactly, without a tokenizer.
    let rows = trainer::data::read_path(data, &trainer::data::DataSpec { skip_bad_rows: true, ..spec.data.clone() })
        .map(|r| r.records.len() as u64)
        .ok();
    let tokens = (bytes as f64 / cal.trainer.bytes_per_token).ceil() as u64;
    Ok(TokenCount {
        tokens,
        samples: rows,
        exact: false,
        source: format!(
            "estimated from {} at {} bytes/token ({}); give --tokenizer DIR for an exact count",
            crate::format::fmt_bytes(bytes),
            cal.trainer.bytes_per_token,
            cal.trainer.bytes_per_token_source
        ),
        data_bytes: Some(bytes),
    })
}

fn data_bytes(p: &Path) -> Result<u64, String> {
    Ok(crate::upload::list_local(p)?.iter().map(|f| f.size).sum())
}

/// Tokenise exactly as the job will (trainer::data::count_tokens).
fn exact_tokens(data: &Path, tokenizer_dir: &Path, spec: &trainer::spec::JobSpec) -> Result<TokenCount, String> {
    let t = crate::tokens::tokenize_file(data, tokenizer_dir, &spec.data)?;
    Ok(TokenCount {
        tokens: t.tokens,
        samples: Some(t.samples),
        exact: true,
        source: format!("tokenised with {}", tokenizer_dir.display()),
        data_bytes: None,
    })
}

/// Hyperparameters → the estimate's input. `hp` has been validated by JobSpec.
#[allow(clippy::too_many_arguments)]
pub fn estimate_input(
    spec: &trainer::spec::JobSpec,
    model_name: String,
    config: trainer::model::config::ModelConfig,
    tokens: TokenCount,
    checkpointing: Checkpointing,
    instance_count: u32,
    prompts: Option<u64>,
    prompt_length: Option<u64>,
) -> EstimateInput {
    let method = Method::from_spec(spec.method);
    let targets: Vec<&'static str> = match &spec.target_modules {
        trainer::spec::Targets::AllLinear => trainer::spec::LINEAR_MODULES.to_vec(),
        trainer::spec::Targets::Names(n) => {
            trainer::spec::LINEAR_MODULES.iter().copied().filter(|m| n.iter().any(|x| x == m)).collect()
        }
    };
    let grpo = (method == Method::Grpo).then(|| {
        let rows = prompts.or(tokens.samples).unwrap_or(1).max(1);
        let plen = prompt_length
            .or_else(|| tokens.mean_len().map(|m| m.round() as u64))
            .unwrap_or(256)
            .min(spec.grpo.max_prompt_length as u64);
        GrpoParams {
            num_generations: spec.grpo.num_generations as u64,
            max_completion_length: spec.grpo.max_completion_length as u64,
            prompt_length: plen.max(1),
            prompts: rows,
        }
    });
    let checkpointing = match (checkpointing, spec.resolved.get("gradient_checkpointing").map(|v| v.as_str())) {
        (Checkpointing::Auto, Some("true")) => Checkpointing::On,
        (Checkpointing::Auto, Some("false")) => Checkpointing::Off,
        (c, _) => c,
    };
    EstimateInput {
        model_name,
        config,
        method,
        lora_r: spec.lora_r,
        targets,
        max_seq_length: spec.max_seq_length as u64,
        batch: spec.per_device_batch_size as u64,
        grad_accum: spec.gradient_accumulation_steps as u64,
        epochs: spec.epochs,
        max_steps: spec.max_steps,
        packing: spec.packing,
        checkpointing,
        tokens,
        grpo,
        instance_count,
    }
}

fn validate_hyperparameters(hp: &BTreeMap<String, String>) -> Result<trainer::spec::JobSpec, Failure> {
    trainer::spec::JobSpec::from_hyperparameters(hp).map_err(|e| Failure::invalid(format!("hyperparameters: {e}")))
}

fn cmd_estimate(cli: &Cli, a: &EstimateArgs) -> Res {
    if a.list_models {
        let mut rows = vec![vec!["name".to_string(), "Hub id".into(), "params".into(), "config source".into()]];
        for m in crate::catalogue::MODELS {
            let params = m
                .model_config()
                .map(|c| format!("{:.2}B", c.param_count() as f64 / 1e9))
                .unwrap_or_else(|_| "not supported".into());
            rows.push(vec![m.id.into(), m.hub_id.into(), params, m.unsupported.unwrap_or(m.source).into()]);
        }
        print!("{}", crate::format::table(&rows));
        return Ok(EXIT_OK);
    }
    let cal = Calibration::load(a.calibration.as_deref()).map_err(Failure::invalid)?;
    let (job, file) = match &a.job_file {
        Some(p) => {
            let f = jobfile::read_job_file(p).map_err(Failure::invalid)?;
            let o = Overrides { exact_name: true, name: Some("estimate".into()), ..Default::default() };
            (Some(jobfile::resolve(Some((p, f.clone())), &o, &env_var, 0).map_err(Failure::invalid)?), Some(f))
        }
        None => (None, None),
    };
    let base_dir = job.as_ref().map(|j| j.base_dir.clone()).unwrap_or_else(|| PathBuf::from("."));
    let mut hp = job.as_ref().map(|j| j.hyperparameters.clone()).unwrap_or_default();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            hp.insert(k.to_string(), v);
        }
    };
    put("method", a.method.clone());
    put("epochs", a.epochs.map(|v| v.to_string()));
    put("max_steps", a.max_steps.map(|v| v.to_string()));
    put("max_seq_length", a.max_seq_length.map(|v| v.to_string()));
    put("per_device_batch_size", a.batch.map(|v| v.to_string()));
    put("gradient_accumulation_steps", a.grad_accum.map(|v| v.to_string()));
    put("lora_r", a.lora_r.map(|v| v.to_string()));
    put("packing", a.packing.map(|v| v.to_string()));
    for s in &a.set {
        let (k, v) =
            s.split_once('=').ok_or_else(|| Failure::invalid(format!("--set `{s}` must look like KEY=VALUE")))?;
        hp.insert(k.trim().to_string(), v.to_string());
    }
    let spec = validate_hyperparameters(&hp)?;
    let (model_name, config, model_dir) =
        model_for(a.model.as_deref(), job.as_ref(), &spec, &base_dir).map_err(Failure::invalid)?;
    let tokenizer_dir = a.tokenizer.clone().or(model_dir);
    let data = a.data.clone().or_else(|| job.as_ref().and_then(train_channel_path));
    let tokens = match (a.tokens.or(file.as_ref().and_then(|f| f.estimate.tokens)), &data) {
        (Some(t), _) => TokenCount { tokens: t, samples: None, exact: true, source: "given".into(), data_bytes: None },
        (None, Some(d)) => count_data_tokens(d, tokenizer_dir.as_deref(), &spec, &cal).map_err(Failure::invalid)?,
        (None, None) => return Err(Failure::invalid(
            "the estimate needs the data size: --data FILE (or a local `train` channel in the job file) or --tokens N",
        )),
    };
    let ckpt = match a.gradient_checkpointing {
        CkptArg::Auto => Checkpointing::Auto,
        CkptArg::On => Checkpointing::On,
        CkptArg::Off => Checkpointing::Off,
    };
    let input = estimate_input(&spec, model_name, config, tokens, ckpt, a.instance_count, a.prompts, a.prompt_length);
    let region = offline_region(&cli.region, job.as_ref().and_then(|j| j.region.as_deref()));
    let prices = prices_for(&region)?;
    let catalogue = Catalogue::embedded();
    for i in &a.instances {
        if catalogue.instance(i).is_none() {
            return Err(Failure::invalid(format!("unknown instance type `{i}`; see `oxtune prices`")));
        }
    }
    let e = estimate::estimate(&input, &catalogue, &prices, &cal, &a.instances);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
    } else {
        print!("{}", estimate::render(&e));
    }
    Ok(EXIT_OK)
}

fn train_channel_path(job: &Job) -> Option<PathBuf> {
    job.channels.iter().find(|c| c.name == "train" || c.name == "training").and_then(|c| match &c.source {
        Source::Local(p) => Some(p.clone()),
        Source::S3(_) => None,
    })
}

/// --model, else [estimate] model, else base_model, else a local `model` channel.
fn model_for(
    explicit: Option<&str>,
    job: Option<&Job>,
    spec: &trainer::spec::JobSpec,
    base_dir: &Path,
) -> Result<(String, trainer::model::config::ModelConfig, Option<PathBuf>), String> {
    if let Some(m) = explicit {
        return resolve_model(m, Path::new("."));
    }
    if let Some(m) = job.and_then(|j| j.estimate.model.clone()) {
        return resolve_model(&m, base_dir);
    }
    if !spec.base_model.is_empty() {
        return resolve_model(&spec.base_model, base_dir);
    }
    if let Some(Source::Local(p)) = job.and_then(|j| j.channels.iter().find(|c| c.name == "model")).map(|c| &c.source) {
        return resolve_model(&p.display().to_string(), base_dir);
    }
    Err("the estimate needs the base model: --model NAME (see `oxtune estimate --list-models`), `base_model`, or `[estimate] model = ...` in the job file".into())
}

// ---------------------------------------------------------------- prices

fn cmd_prices(cli: &Cli, a: &PricesArgs) -> Res {
    let region = offline_region(&cli.region, None);
    let table = match &a.action {
        Some(PricesAction::Refresh { file, url }) => {
            let t = crate::prices::refresh(&region, url.as_deref(), file.as_deref()).map_err(Failure::error)?;
            eprintln!(
                "cached {} training rates for {region} in {}",
                t.prices.len(),
                crate::prices::cache_file(&region).display()
            );
            t
        }
        None => prices_for(&region)?,
    };
    if a.json {
        let rows: BTreeMap<&String, serde_json::Value> = table
            .prices
            .iter()
            .map(|(k, p)| (k, serde_json::json!({ "usd_per_hour": p.usd, "source": table.sources.get(&p.src).cloned().unwrap_or_else(|| p.src.clone()) })))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "region": table.region, "origin": table.origin, "date": table.date, "prices": rows }))
                .unwrap_or_default()
        );
    } else {
        print!("{}", crate::prices::render(&table, &Catalogue::embedded()));
    }
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------- submit

/// Everything checked before the network: the request, the estimate and warnings.
pub struct Prepared {
    pub job: Job,
    pub request: crate::request::CreateTrainingJobRequest,
    pub estimate_line: Option<String>,
    pub estimated_cost: Option<f64>,
    pub worst_case_cost: Option<f64>,
    pub region: Option<String>,
}

/// Resolve, validate every limit and the hyperparameters, and price the job — no network.
pub fn prepare_submission(cli: &Cli, a: &SubmitArgs, now: u64) -> Result<Prepared, Failure> {
    let f = jobfile::read_job_file(&a.job_file).map_err(Failure::invalid)?;
    let job = jobfile::resolve(Some((&a.job_file, f)), &a.overrides, &env_var, now).map_err(Failure::invalid)?;
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
    let mut problems = Vec::new();
    let spec = match trainer::spec::JobSpec::from_hyperparameters(&job.hyperparameters) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("hyperparameters: {e}"));
            None
        }
    };
    // Local channels must exist; planned URIs stand in for the upload.
    let mut uris = BTreeMap::new();
    for c in &job.channels {
        if let Source::Local(p) = &c.source {
            if !p.exists() {
                problems.push(format!("channel `{}`: {} does not exist", c.name, p.display()));
            }
            match crate::request::planned_channel_uri(&job, &c.name) {
                Some(u) => {
                    uris.insert(c.name.clone(), u);
                }
                None => problems.push(format!(
                    "channel `{}` is a local path, so it must be uploaded: set `output_path` (or `input_prefix`) in [sagemaker]",
                    c.name
                )),
            }
        }
    }
    let request = match crate::request::build(&job, &uris) {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    if let Some(r) = &request {
        problems.extend(crate::limits::check_request(r));
    }
    let region = cli
        .region
        .clone()
        .or(job.region.clone())
        .or_else(|| env_var("AWS_REGION"))
        .or_else(|| env_var("AWS_DEFAULT_REGION"));
    if let (Some(img), Some(region)) = (&job.image, &region) {
        if let Ok(Some(img_region)) = crate::limits::check_image_uri(img) {
            if &img_region != region {
                problems.push(format!(
                    "the image is in {img_region} but the job runs in {region}; SageMaker pulls training images from ECR in the job's region — push the image to {region} or run the job in {img_region}"
                ));
            }
        }
    }
    let catalogue = Catalogue::embedded();
    match catalogue.instance(&job.instance_type) {
        None => eprintln!("warning: {} is not in oxtune's catalogue; no memory check or price", job.instance_type),
        Some(i) => {
            let g = catalogue.gpu_of(i);
            if let Some(why) = &g.unsupported {
                problems.push(format!("{} is not supported: {why}", job.instance_type));
            }
        }
    }
    if !problems.is_empty() {
        let mut m = format!(
            "the job is not valid ({} problem{}); nothing was sent to AWS:",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for p in &problems {
            m.push_str(&format!("\n  - {p}"));
        }
        return Err(Failure::invalid(m));
    }
    let request = request.expect("no problems means the request was built");
    let spec = spec.expect("no problems means the spec is valid");

    // Price: estimate + worst case (max runtime × rate).
    let price_region = region.clone().unwrap_or_else(|| "us-east-1".into());
    let prices = crate::prices::load(&price_region).ok();
    let rate = prices.as_ref().and_then(|p| p.rate(&job.instance_type));
    let worst_case_cost = rate.map(|r| r * job.instance_count as f64 * job.max_runtime_s as f64 / 3600.0);
    let cal = Calibration::load(a.calibration.as_deref()).map_err(Failure::invalid)?;
    let mut estimate_line = None;
    let mut estimated_cost = None;
    let est = (|| -> Result<estimate::Row, String> {
        let (name, config, model_dir) = model_for(None, Some(&job), &spec, &job.base_dir)?;
        let tokens = match (job.estimate.tokens, train_channel_path(&job)) {
            (Some(t), _) => {
                TokenCount { tokens: t, samples: None, exact: true, source: "given".into(), data_bytes: None }
            }
            (None, Some(d)) => count_data_tokens(&d, model_dir.as_deref(), &spec, &cal)?,
            (None, None) => {
                return Err("the train channel is on S3; add `[estimate] tokens = N` for an estimate".into())
            }
        };
        let input = estimate_input(&spec, name, config, tokens, Checkpointing::Auto, job.instance_count, None, None);
        let prices = prices.clone().ok_or_else(|| format!("no prices for region {price_region}"))?;
        let e = estimate::estimate(&input, &catalogue, &prices, &cal, std::slice::from_ref(&job.instance_type));
        e.rows.into_iter().next().ok_or_else(|| format!("{} is not in the catalogue", job.instance_type))
    })();
    match est {
        Ok(row) => {
            if !row.fits {
                return Err(Failure::invalid(format!(
                    "{} will not fit this job: {}; nothing was sent to AWS (see `oxtune estimate` for instances that fit)",
                    job.instance_type, row.reason
                )));
            }
            let spot = if job.spot {
                row.cost_spot.map(|c| format!(", spot ≈ {}", fmt_usd(c))).unwrap_or_default()
            } else {
                String::new()
            };
            estimate_line = Some(format!(
                "estimate: {} on {} × {} ({}), {} on-demand{spot}",
                fmt_duration(row.billable_seconds),
                job.instance_count,
                job.instance_type,
                row.reason,
                row.cost_on_demand.map(fmt_usd).unwrap_or_else(|| "unpriced".into())
            ));
            estimated_cost = if job.spot { row.cost_spot_high.or(row.cost_on_demand) } else { row.cost_on_demand };
            if row.billable_seconds > job.max_runtime_s as f64 {
                eprintln!(
                    "warning: the estimate ({}) exceeds max_runtime ({}): the job may be stopped before it finishes",
                    fmt_duration(row.billable_seconds),
                    fmt_duration(job.max_runtime_s as f64)
                );
            }
        }
        Err(e) => eprintln!("note: no estimate: {e}"),
    }
    if let Some(max) = a.max_cost {
        match estimated_cost {
            Some(c) if c > max => {
                return Err(Failure::invalid(format!(
                    "refusing: the estimated cost {} exceeds --max-cost {}; nothing was sent to AWS",
                    fmt_usd(c),
                    fmt_usd(max)
                )))
            }
            Some(_) => {}
            None => {
                return Err(Failure::invalid(
                    "refusing: --max-cost needs a cost estimate, and there is none (see the note above); nothing was sent to AWS",
                ))
            }
        }
        if let Some(w) = worst_case_cost.filter(|w| *w > max) {
            eprintln!(
                "warning: max_runtime {} allows up to {} (> --max-cost {}); lower max_runtime to cap the bill",
                fmt_duration(job.max_runtime_s as f64),
                fmt_usd(w),
                fmt_usd(max)
            );
        }
    }
    Ok(Prepared { job, request, estimate_line, estimated_cost, worst_case_cost, region })
}

fn cmd_submit(cli: &Cli, a: &SubmitArgs) -> Res {
    let now = crate::clock::now_epoch() as u64;
    let p = prepare_submission(cli, a, now)?;
    if a.dry_run {
        println!("{}", p.request.redacted_json(&p.job.passed_env));
        if let Some(l) = &p.estimate_line {
            eprintln!("{l}");
        }
        if let Some(w) = p.worst_case_cost {
            eprintln!("worst case (max runtime {}): {}", fmt_duration(p.job.max_runtime_s as f64), fmt_usd(w));
        }
        eprintln!("dry run: nothing was uploaded or created");
        return Ok(EXIT_OK);
    }
    let opts =
        AwsOptions::new(p.region.clone(), cli.profile.clone().or(p.job.profile.clone()), cli.endpoint_url.clone());
    block_on(async move {
        let clients = crate::aws::connect(&opts).await.map_err(Failure::error)?;
        let uris = crate::upload::upload_job_channels(&clients.s3, &p.job, &clients.region, false)
            .await
            .map_err(Failure::error)?;
        let request = crate::request::build(&p.job, &uris).map_err(Failure::invalid)?;
        let ctx = ErrorContext {
            operation: "CreateTrainingJob".into(),
            region: clients.region.clone(),
            instance_type: Some(p.job.instance_type.clone()),
            spot: p.job.spot,
            role: p.job.role.clone(),
            job: Some(p.job.job_name.clone()),
        };
        request.send(&clients.sagemaker).await.map_err(|e| Failure::error(crate::aws::explain(&e, &ctx).1))?;
        println!("{}", p.job.job_name);
        eprintln!("created training job {} in {}", p.job.job_name, clients.region);
        eprintln!("console: {}", crate::aws::console_url(&clients.region, &p.job.job_name));
        if let Some(l) = &p.estimate_line {
            eprintln!("{l}");
        }
        if a.wait {
            let prices = crate::prices::load(&clients.region)
                .unwrap_or_else(|_| crate::catalogue::embedded_prices("us-east-1").expect("embedded"));
            let opts = crate::jobs::WaitOptions { poll: Duration::from_secs(15), timeout: None, show_logs: true };
            let mut out = std::io::stdout();
            let (code, _) =
                crate::jobs::wait(&clients, &p.job.job_name, &opts, &prices, &mut out, &redactor_for(&p.job)).await?;
            return Ok(code);
        }
        Ok(EXIT_OK)
    })
}

fn redactor_for(job: &Job) -> Redactor {
    let mut r = Redactor::from_env();
    for (k, v) in &job.environment {
        if crate::redact::is_secret_name(k) || job.passed_env.contains(k) {
            r.add(v);
        }
    }
    r
}

// ---------------------------------------------------------------- follow

async fn connect(o: AwsOptions) -> Result<crate::aws::Clients, Failure> {
    crate::aws::connect(&o).await.map_err(Failure::error)
}

fn region_prices(region: &str) -> PriceTable {
    crate::prices::load(region).unwrap_or_else(|_| PriceTable {
        region: region.into(),
        origin: "no price table".into(),
        date: String::new(),
        prices: BTreeMap::new(),
        sources: BTreeMap::new(),
    })
}

async fn cmd_status(o: AwsOptions, a: &StatusArgs, _cli: &Cli) -> Res {
    let clients = connect(o).await?;
    let info = crate::jobs::describe(&clients, &a.job).await?;
    let prices = region_prices(&clients.region);
    let cost = crate::jobs::job_cost(&info, &prices, crate::clock::now_epoch());
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "job": info, "cost": cost })).unwrap_or_default()
        );
    } else {
        print!("{}", crate::jobs::render_status(&info, cost.as_ref()));
    }
    Ok(EXIT_OK)
}

async fn cmd_list(o: AwsOptions, a: &ListArgs, _cli: &Cli) -> Res {
    let created_after = match &a.since {
        Some(s) => Some(
            crate::clock::now_epoch()
                - parse_duration(s).map_err(|e| Failure::invalid(format!("--since: {e}")))?.as_secs_f64(),
        ),
        None => None,
    };
    let clients = connect(o).await?;
    let prices = region_prices(&clients.region);
    let f = crate::jobs::ListFilter {
        status: a.status.clone(),
        name_contains: a.name_contains.clone(),
        created_after,
        max: a.max,
        details: !a.brief,
    };
    let rows = crate::jobs::list(&clients, &f, &prices).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
    } else {
        print!("{}", crate::jobs::render_list(&rows));
    }
    Ok(EXIT_OK)
}

async fn cmd_stop(o: AwsOptions, a: &StopArgs) -> Res {
    let clients = connect(o).await?;
    match crate::jobs::stop(&clients, &a.job).await? {
        crate::jobs::StopOutcome::Requested => {
            println!(
                "stop requested for {}: it goes Stopping → Stopped (the trainer gets SIGTERM and 120 s to checkpoint)",
                a.job
            );
        }
        crate::jobs::StopOutcome::AlreadyFinished(status) => {
            println!("{} is not running ({status}); nothing to stop", a.job);
        }
    }
    Ok(EXIT_OK)
}

async fn cmd_logs(o: AwsOptions, a: &LogsArgs) -> Res {
    let since = match &a.since {
        Some(s) => Some(
            ((crate::clock::now_epoch()
                - parse_duration(s).map_err(|e| Failure::invalid(format!("--since: {e}")))?.as_secs_f64())
                * 1000.0) as i64,
        ),
        None => None,
    };
    let poll = parse_duration(&a.poll).map_err(|e| Failure::invalid(format!("--poll: {e}")))?;
    let clients = connect(o).await?;
    let mut out = std::io::stdout();
    crate::jobs::logs(&clients, &a.job, a.follow, since, poll, &mut out, &Redactor::from_env()).await?;
    Ok(EXIT_OK)
}

async fn cmd_wait(o: AwsOptions, a: &WaitArgs, _cli: &Cli) -> Res {
    let timeout = a
        .timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| Failure::invalid(format!("--timeout: {e}")))?;
    let poll = parse_duration(&a.poll).map_err(|e| Failure::invalid(format!("--poll: {e}")))?;
    let clients = connect(o).await?;
    let prices = region_prices(&clients.region);
    let opts = crate::jobs::WaitOptions { poll, timeout, show_logs: a.logs };
    let mut out = std::io::stdout();
    let (code, _) = crate::jobs::wait(&clients, &a.job, &opts, &prices, &mut out, &Redactor::from_env()).await?;
    Ok(code)
}

async fn cmd_compare(o: AwsOptions, a: &CompareArgs, _cli: &Cli) -> Res {
    let clients = connect(o).await?;
    let mut infos = Vec::new();
    for j in &a.jobs {
        infos.push(crate::jobs::describe(&clients, j).await?);
    }
    let c = crate::jobs::compare(&infos, &region_prices(&clients.region));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
    } else {
        print!("{}", crate::jobs::render_comparison(&c));
    }
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------- prepare-data

fn cmd_prepare(a: &PrepareArgs) -> Res {
    let opts = crate::prepare::PrepareOptions {
        input: a.input.clone(),
        output: a.output.clone(),
        format: a.format.clone(),
        to: a.to,
        fields: crate::prepare::FieldOverrides {
            prompt: a.prompt_field.clone(),
            completion: a.completion_field.clone(),
            system: a.system_field.clone(),
        },
        text_file: a.text_file,
        check_only: a.check,
        tokenizer: a.tokenizer.clone(),
        max_seq_length: a.max_seq_length,
    };
    let mut report = crate::prepare::prepare(&opts).map_err(Failure::invalid)?;
    if let (Some(tok), Some(out)) = (&a.tokenizer, report.output.clone()) {
        // Untruncated lengths, so examples over max_seq_length show up in the last bucket.
        let mut spec = crate::prepare::data_spec(&opts).map_err(Failure::invalid)?;
        spec.max_seq_length = 1 << 30;
        spec.skip_bad_rows = true;
        match crate::tokens::tokenize_file(Path::new(&out), tok, &spec) {
            Ok(t) => {
                let mut stats = crate::prepare::histogram(&t.lengths, a.max_seq_length as u64);
                stats.tokenizer = tok.display().to_string();
                report.token_lengths = Some(stats);
            }
            Err(e) => eprintln!("warning: no token histogram: {e}"),
        }
    } else if a.tokenizer.is_some() && a.check {
        eprintln!("note: the token histogram is computed on the converted output; run without --check");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", crate::prepare::render_report(&report));
    }
    Ok(if report.rows_written == 0 { EXIT_INVALID } else { EXIT_OK })
}

// ---------------------------------------------------------------- local

fn cmd_local(_cli: &Cli, a: &LocalArgs) -> Res {
    let f = jobfile::read_job_file(&a.job_file).map_err(Failure::invalid)?;
    let job = jobfile::resolve(Some((&a.job_file, f)), &a.overrides, &env_var, crate::clock::now_epoch() as u64)
        .map_err(Failure::invalid)?;
    for w in &job.warnings {
        if !w.contains("max_runtime") {
            eprintln!("warning: {w}");
        }
    }
    validate_hyperparameters(&job.hyperparameters)?;
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
            image: if a.docker || a.overrides.image.is_some() {
                Some(job.image.clone().ok_or_else(|| {
                    Failure::invalid("--docker needs an image: --image IMAGE or `image` in [sagemaker]")
                })?)
            } else {
                None
            },
            gpus: a.gpus.clone(),
            max_runtime: job.max_runtime(),
            stop_grace: grace,
            interrupt_after,
            interrupt_after_step: a.interrupt_after_step,
            fresh: a.fresh,
            copy_channels: a.copy_channels,
        };
    let mut out = std::io::stdout();
    let outcome = crate::local::run(&job, &opts, &redactor_for(&job), &mut out).map_err(Failure::error)?;
    let _ = out.flush();
    let status = match outcome.status {
        crate::local::LocalStatus::Completed => "Completed",
        crate::local::LocalStatus::Failed => "Failed",
        crate::local::LocalStatus::Stopped => "Stopped (MaxRuntimeExceeded)",
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
    Ok(outcome.exit_code_for_cli())
}
