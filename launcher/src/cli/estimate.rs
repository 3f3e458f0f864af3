//! `oxtune estimate`: memory, time and cost of a job on every instance type, before any AWS call.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{env_var, offline_region, prices_for, Cli, Failure, Res, EXIT_OK};
use crate::calibration::Calibration;
use crate::catalogue::Catalogue;
use crate::estimate::{Checkpointing, TokenCount};
use crate::jobfile::{self, Overrides};
use crate::plan::{estimate_input, model_for, train_channel_path, validate_hyperparameters, EstimateParts};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CkptArg {
    /// What the job's `gradient_checkpointing` hyperparameter says (the trainer's default: off).
    Job,
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
    /// Gradient checkpointing: job = as the job's gradient_checkpointing says (what the trainer
    /// will do; off unless set), auto = only where it is needed to fit, on, off.
    #[arg(long, value_enum, default_value = "job")]
    pub gradient_checkpointing: CkptArg,
    /// Only these instance types, each TYPE or N×TYPE / NxTYPE for N instances (repeatable;
    /// e.g. --instance ml.g5.2xlarge --instance ml.g5.12xlarge --instance 2xml.g5.12xlarge); default all.
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

pub(super) fn run(cli: &Cli, a: &EstimateArgs) -> Res {
    if a.list_models {
        let mut rows = vec![vec!["name".to_string(), "Hub id".into(), "params".into(), "config source".into()]];
        for m in crate::catalogue::MODELS {
            let params = m
                .arch()
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
    let spec = validate_hyperparameters(&hp).map_err(Failure::invalid)?;
    let model = model_for(a.model.as_deref(), job.as_ref(), &spec, &base_dir).map_err(Failure::invalid)?;
    let tokenizer_dir = a.tokenizer.clone().or(model.dir.clone());
    let data = a.data.clone().or_else(|| job.as_ref().and_then(train_channel_path));
    let tokens = match (a.tokens.or(file.as_ref().and_then(|f| f.estimate.tokens)), &data) {
        (Some(t), _) => TokenCount::given(t),
        (None, Some(d)) => {
            crate::tokens::count_data_tokens(d, tokenizer_dir.as_deref(), &spec, &cal, model.config.is_seq2seq())
                .map_err(Failure::invalid)?
        }
        (None, None) => return Err(Failure::invalid(
            "the estimate needs the data size: --data FILE (or a local `train` channel in the job file) or --tokens N",
        )),
    };
    let ckpt = match a.gradient_checkpointing {
        CkptArg::Job => None,
        CkptArg::Auto => Some(Checkpointing::Auto),
        CkptArg::On => Some(Checkpointing::On),
        CkptArg::Off => Some(Checkpointing::Off),
    };
    let parts = EstimateParts {
        model,
        tokens,
        checkpointing: ckpt,
        instance_count: a.instance_count,
        prompts: a.prompts,
        prompt_length: a.prompt_length,
    };
    let input = estimate_input(&spec, parts);
    let region = offline_region(&cli.region, job.as_ref().and_then(|j| j.region.as_deref()));
    let prices = prices_for(&region)?;
    let catalogue = Catalogue::embedded();
    for i in &a.instances {
        let (t, _) = crate::estimate::instance_choice(i, a.instance_count).map_err(Failure::invalid)?;
        if catalogue.instance(&t).is_none() {
            return Err(Failure::invalid(format!("unknown instance type `{t}`; see `oxtune prices`")));
        }
    }
    let e = crate::estimate::estimate(&input, &catalogue, &prices, &cal, &a.instances);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
    } else {
        print!("{}", crate::estimate::render(&e));
    }
    Ok(EXIT_OK)
}
