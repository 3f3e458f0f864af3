//! `oxtune estimate`: memory, time and cost of a job on every instance type, before any AWS call;
//! and the model/token/input resolution that `submit` reuses.

use super::*;
use crate::error::Error;

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

/// A model config from a catalogue name, Hub id, config.json or model directory.
pub fn resolve_model(
    name: &str,
    base_dir: &Path,
) -> Result<(String, trainer::model::config::ModelConfig, Option<PathBuf>), Error> {
    let p = {
        let raw = Path::new(name);
        if raw.is_absolute() {
            raw.to_path_buf()
        } else {
            base_dir.join(raw)
        }
    };
    if p.is_dir() && p.join("config.json").is_file() {
        let cfg = trainer::model::config::ModelConfig::from_file(&p.join("config.json"))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        return Ok((p.display().to_string(), cfg, Some(p)));
    }
    if p.is_file() {
        let cfg = trainer::model::config::ModelConfig::from_file(&p).map_err(|e| Error::Invalid(e.to_string()))?;
        let dir = p.parent().map(Path::to_path_buf);
        return Ok((p.display().to_string(), cfg, dir));
    }
    match find_model(name) {
        Some(m) => {
            let cfg = m.model_config().map_err(|e| Error::Invalid(format!("{}: {e}", m.id)))?;
            Ok((format!("{} ({})", m.id, m.hub_id), cfg, None))
        }
        None => Err(Error::Invalid(format!(
            "unknown model `{name}`: not a catalogue name, nor a config.json / model directory. Known: {}",
            crate::catalogue::MODELS.iter().map(|m| m.id).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Token count of a data file: exact with a tokenizer, else estimated from bytes.
pub fn count_data_tokens(
    data: &Path,
    tokenizer_dir: Option<&Path>,
    spec: &trainer::spec::JobSpec,
    cal: &Calibration,
) -> Result<TokenCount, Error> {
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

pub(super) fn data_bytes(p: &Path) -> Result<u64, Error> {
    Ok(crate::upload::list_local(p)?.iter().map(|f| f.size).sum())
}

/// Tokenise exactly as the job will (trainer::data::count_tokens).
pub(super) fn exact_tokens(
    data: &Path,
    tokenizer_dir: &Path,
    spec: &trainer::spec::JobSpec,
) -> Result<TokenCount, Error> {
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
        trainer::lora::Targets::AllLinear => trainer::lora::LINEAR_MODULES.to_vec(),
        trainer::lora::Targets::Names(n) => {
            trainer::lora::LINEAR_MODULES.iter().copied().filter(|m| n.iter().any(|x| x == m)).collect()
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

pub(super) fn validate_hyperparameters(hp: &BTreeMap<String, String>) -> Result<trainer::spec::JobSpec, Failure> {
    trainer::spec::JobSpec::from_hyperparameters(hp).map_err(|e| Failure::invalid(format!("hyperparameters: {e}")))
}

pub(super) fn cmd_estimate(cli: &Cli, a: &EstimateArgs) -> Res {
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
    let e = crate::estimate::estimate(&input, &catalogue, &prices, &cal, &a.instances);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
    } else {
        print!("{}", crate::estimate::render(&e));
    }
    Ok(EXIT_OK)
}

pub(super) fn train_channel_path(job: &Job) -> Option<PathBuf> {
    job.channels.iter().find(|c| c.name == "train" || c.name == "training").and_then(|c| match &c.source {
        Source::Local(p) => Some(p.clone()),
        Source::S3(_) => None,
    })
}

/// --model, else [estimate] model, else base_model, else a local `model` channel.
pub(super) fn model_for(
    explicit: Option<&str>,
    job: Option<&Job>,
    spec: &trainer::spec::JobSpec,
    base_dir: &Path,
) -> Result<(String, trainer::model::config::ModelConfig, Option<PathBuf>), Error> {
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
    Err(Error::Invalid("the estimate needs the base model: --model NAME (see `oxtune estimate --list-models`), `base_model`, or `[estimate] model = ...` in the job file".into()))
}
