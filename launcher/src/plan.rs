//! The job plan: what `oxtune estimate` and `oxtune submit` work out before any AWS call — the base
//! model's config, the training tokens, the estimator's input, and for `submit` the checked
//! CreateTrainingJob request with its estimated and worst-case cost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use trainer::model::Arch;
use trainer::spec::JobSpec;

use crate::calibration::Calibration;
use crate::catalogue::{find_model, Catalogue, PriceTable};
use crate::error::Error;
use crate::estimate::{Checkpointing, EstimateInput, GrpoParams, Row, TokenCount};
use crate::format::{fmt_duration, fmt_usd};
use crate::jobfile::{self, Job, Overrides, Source};
use crate::request::CreateTrainingJobRequest;

/// The base model of an estimate: its display name, config, and directory when it is local (where
/// the tokenizer for exact token counts is).
pub struct ModelRef {
    pub name: String,
    pub config: Arch,
    pub dir: Option<PathBuf>,
}

/// A model config from a catalogue name, Hub id, config.json or model directory.
pub fn resolve_model(name: &str, base_dir: &Path) -> Result<ModelRef, Error> {
    let p = {
        let raw = Path::new(name);
        if raw.is_absolute() {
            raw.to_path_buf()
        } else {
            base_dir.join(raw)
        }
    };
    let config_of = |file: &Path| Arch::from_file(file).map_err(|e| Error::Invalid(e.to_string()));
    if p.is_dir() && p.join("config.json").is_file() {
        let config = config_of(&p.join("config.json"))?;
        return Ok(ModelRef { name: p.display().to_string(), config, dir: Some(p) });
    }
    if p.is_file() {
        let config = config_of(&p)?;
        return Ok(ModelRef { name: p.display().to_string(), config, dir: p.parent().map(Path::to_path_buf) });
    }
    match find_model(name) {
        Some(m) => {
            let config = m.arch().map_err(|e| Error::Invalid(format!("{}: {e}", m.id)))?;
            Ok(ModelRef { name: format!("{} ({})", m.id, m.hub_id), config, dir: None })
        }
        None => Err(Error::Invalid(format!(
            "unknown model `{name}`: not a catalogue name, nor a config.json / model directory. Known: {}",
            crate::catalogue::MODELS.iter().map(|m| m.id).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The model to estimate for: `explicit` (--model), else `[estimate] model`, else `base_model`,
/// else a local `model` channel.
pub fn model_for(
    explicit: Option<&str>,
    job: Option<&Job>,
    spec: &JobSpec,
    base_dir: &Path,
) -> Result<ModelRef, Error> {
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

/// The local path of the job's train channel (None when it is on S3 or absent).
pub fn train_channel_path(job: &Job) -> Option<PathBuf> {
    job.channels.iter().find(|c| c.name == "train" || c.name == "training").and_then(|c| match &c.source {
        Source::Local(p) => Some(p.clone()),
        Source::S3(_) => None,
    })
}

/// What the estimate needs beyond the spec: the model, the data and the run's shape.
pub struct EstimateParts {
    pub model: ModelRef,
    pub tokens: TokenCount,
    /// None: as the job's gradient_checkpointing says (what the trainer will do).
    pub checkpointing: Option<Checkpointing>,
    pub instance_count: u32,
    /// GRPO: prompts in the dataset (default: the data's rows).
    pub prompts: Option<u64>,
    /// GRPO: mean prompt length in tokens (default: the data's mean).
    pub prompt_length: Option<u64>,
}

/// T5 with a given token count (no data to split): the share of encoder-input tokens assumed —
/// the inputs of summarisation and question answering are several times their targets.
pub const ASSUMED_SOURCE_SHARE: f64 = 0.75;

/// The estimator's input for a validated spec.
pub fn estimate_input(spec: &JobSpec, parts: EstimateParts) -> EstimateInput {
    let EstimateParts { model, tokens, checkpointing, instance_count, prompts, prompt_length } = parts;
    let modules = model.config.linear_modules();
    let targets: Vec<&'static str> = match &spec.target_modules {
        trainer::lora::Targets::AllLinear => modules.to_vec(),
        trainer::lora::Targets::Names(n) => modules.iter().copied().filter(|m| n.iter().any(|x| x == m)).collect(),
    };
    let source_share = tokens.source_share.unwrap_or(ASSUMED_SOURCE_SHARE);
    let grpo = (spec.method == trainer::spec::Method::Grpo).then(|| {
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
    let seq2seq = model.config.is_seq2seq();
    // Unless asked otherwise, what the trainer will do: the job's gradient_checkpointing (off by default).
    let checkpointing = match (checkpointing, spec.gradient_checkpointing) {
        // The trainer has no activation checkpointing for T5 yet.
        _ if seq2seq => Checkpointing::Off,
        (Some(c), _) => c,
        (None, true) => Checkpointing::On,
        (None, false) => Checkpointing::Off,
    };
    EstimateInput {
        model_name: model.name,
        config: model.config,
        source_share,
        method: spec.method,
        lora_r: spec.lora_r,
        targets,
        // A T5 pair is at most an input and a target long.
        max_seq_length: match seq2seq {
            true => (spec.max_source_length + spec.max_target_length) as u64,
            false => spec.max_seq_length as u64,
        },
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

/// The hyperparameters as the job will read them.
pub fn validate_hyperparameters(hp: &BTreeMap<String, String>) -> Result<JobSpec, Error> {
    JobSpec::from_hyperparameters(hp).map_err(|e| Error::Invalid(format!("hyperparameters: {e}")))
}

/// What `submit` is asked to do, besides the job file.
pub struct SubmitOptions<'a> {
    pub job_file: &'a Path,
    pub overrides: &'a Overrides,
    /// `--region`: wins over the job file and the environment.
    pub region: Option<String>,
    pub calibration: Option<&'a Path>,
    pub max_cost: Option<f64>,
    /// Now, in epoch seconds (the job name's timestamp).
    pub now: u64,
}

/// A job checked before the network: the request, the estimate and the costs.
pub struct SubmitPlan {
    pub job: Job,
    pub request: CreateTrainingJobRequest,
    pub estimate_line: Option<String>,
    pub estimated_cost: Option<f64>,
    pub worst_case_cost: Option<f64>,
    pub region: Option<String>,
}

/// Resolve the job, check every limit and the hyperparameters, and price it — no network.
/// Warnings and notes go to `warn` as they are found; every problem that makes the job invalid is
/// collected into one `Error::Invalid`.
pub fn submission(
    o: &SubmitOptions,
    env: &dyn Fn(&str) -> Option<String>,
    warn: &mut dyn FnMut(String),
) -> Result<SubmitPlan, Error> {
    let f = jobfile::read_job_file(o.job_file)?;
    let job = jobfile::resolve(Some((o.job_file, f)), o.overrides, env, o.now)?;
    for w in &job.warnings {
        warn(format!("warning: {w}"));
    }
    let region =
        o.region.clone().or(job.region.clone()).or_else(|| env("AWS_REGION")).or_else(|| env("AWS_DEFAULT_REGION"));
    let (spec, request) = checked_request(&job, region.as_deref(), warn)?;
    let price_region = region.clone().unwrap_or_else(|| "us-east-1".into());
    let prices = crate::prices::load(&price_region).ok();
    let rate = prices.as_ref().and_then(|p| p.rate(&job.instance_type));
    let worst_case_cost = rate.map(|r| r * job.instance_count as f64 * job.max_runtime_s as f64 / 3600.0);
    let cal = Calibration::load(o.calibration)?;
    let (estimate_line, estimated_cost) = match estimate_row(&job, &spec, &cal, prices.as_ref(), &price_region) {
        Ok(row) => priced(&job, &row, warn)?,
        Err(e) => {
            warn(format!("note: no estimate: {e}"));
            (None, None)
        }
    };
    if let Some(max) = o.max_cost {
        check_max_cost(&job, max, estimated_cost, worst_case_cost, warn)?;
    }
    Ok(SubmitPlan { job, request, estimate_line, estimated_cost, worst_case_cost, region })
}

/// The spec and the request, or every problem found: hyperparameters, local channels, the
/// request's limits, the image's region and the instance type.
fn checked_request(
    job: &Job,
    region: Option<&str>,
    warn: &mut dyn FnMut(String),
) -> Result<(JobSpec, CreateTrainingJobRequest), Error> {
    let mut problems = Vec::new();
    let spec = validate_hyperparameters(&job.hyperparameters).map_err(|e| problems.push(e.to_string())).ok();
    // Local channels must exist; planned URIs stand in for the upload.
    let mut uris = BTreeMap::new();
    for c in &job.channels {
        if let Source::Local(p) = &c.source {
            if !p.exists() {
                problems.push(format!("channel `{}`: {} does not exist", c.name, p.display()));
            }
            match crate::request::planned_channel_uri(job, &c.name) {
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
    let request = crate::request::build(job, &uris).map_err(|e| problems.push(e.to_string())).ok();
    if let Some(r) = &request {
        problems.extend(crate::limits::check_request(r));
    }
    if let (Some(img), Some(region)) = (&job.image, region) {
        if let Ok(Some(img_region)) = crate::limits::check_image_uri(img) {
            if img_region != region {
                problems.push(format!(
                    "the image is in {img_region} but the job runs in {region}; SageMaker pulls training images from ECR in the job's region — push the image to {region} or run the job in {img_region}"
                ));
            }
        }
    }
    let catalogue = Catalogue::embedded();
    match catalogue.instance(&job.instance_type) {
        None if crate::limits::check_instance_type(&job.instance_type, crate::limits::InstanceUse::Training)
            .is_ok() =>
        {
            warn(format!("warning: {} is not in oxtune's catalogue; no memory check or price", job.instance_type))
        }
        None => {}
        Some(i) => {
            if let Some(why) = &catalogue.gpu_of(i).unsupported {
                problems.push(format!("{} is not supported: {why}", job.instance_type));
            }
        }
    }
    match (spec, request) {
        (Some(spec), Some(request)) if problems.is_empty() => Ok((spec, request)),
        _ => {
            let mut m = format!(
                "the job is not valid ({} problem{}); nothing was sent to AWS:",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            for p in &problems {
                m.push_str(&format!("\n  - {p}"));
            }
            Err(Error::Invalid(m))
        }
    }
}

/// The estimate of the job on its own instance type.
fn estimate_row(
    job: &Job,
    spec: &JobSpec,
    cal: &Calibration,
    prices: Option<&PriceTable>,
    price_region: &str,
) -> Result<Row, Error> {
    let model = model_for(None, Some(job), spec, &job.base_dir)?;
    let tokens = match (job.estimate.tokens, train_channel_path(job)) {
        (Some(t), _) => TokenCount::given(t),
        (None, Some(d)) => {
            crate::tokens::count_data_tokens(&d, model.dir.as_deref(), spec, cal, model.config.is_seq2seq())?
        }
        (None, None) => {
            return Err(Error::Invalid(
                "the train channel is on S3; add `[estimate] tokens = N` for an estimate".into(),
            ))
        }
    };
    let parts = EstimateParts {
        model,
        tokens,
        checkpointing: None,
        instance_count: job.instance_count,
        prompts: None,
        prompt_length: None,
    };
    let input = estimate_input(spec, parts);
    let prices = prices.ok_or_else(|| Error::Invalid(format!("no prices for region {price_region}")))?;
    let e = crate::estimate::estimate(
        &input,
        &Catalogue::embedded(),
        prices,
        cal,
        std::slice::from_ref(&job.instance_type),
    );
    e.rows.into_iter().next().ok_or_else(|| Error::Invalid(format!("{} is not in the catalogue", job.instance_type)))
}

/// The estimate line and the cost the `--max-cost` check uses; a job that does not fit is invalid.
fn priced(job: &Job, row: &Row, warn: &mut dyn FnMut(String)) -> Result<(Option<String>, Option<f64>), Error> {
    if !row.fits {
        return Err(Error::Invalid(format!(
            "{} will not fit this job: {}; nothing was sent to AWS (see `oxtune estimate` for instances that fit)",
            job.instance_type, row.reason
        )));
    }
    let spot = if job.spot {
        row.cost_spot.map(|c| format!(", spot ≈ {}", fmt_usd(c))).unwrap_or_default()
    } else {
        String::new()
    };
    let line = format!(
        "estimate: {} on {} × {} ({}), {} on-demand{spot}",
        fmt_duration(row.billable_seconds),
        job.instance_count,
        job.instance_type,
        row.reason,
        row.cost_on_demand.map(fmt_usd).unwrap_or_else(|| "unpriced".into())
    );
    let cost = if job.spot { row.cost_spot_high.or(row.cost_on_demand) } else { row.cost_on_demand };
    if row.billable_seconds > job.max_runtime_s as f64 {
        warn(format!(
            "warning: the estimate ({}) exceeds max_runtime ({}): the job may be stopped before it finishes",
            fmt_duration(row.billable_seconds),
            fmt_duration(job.max_runtime_s as f64)
        ));
    }
    Ok((Some(line), cost))
}

/// `--max-cost`: refuse a job whose estimate is over it or has no estimate; warn when the runtime
/// limit allows more.
fn check_max_cost(
    job: &Job,
    max: f64,
    estimated: Option<f64>,
    worst_case: Option<f64>,
    warn: &mut dyn FnMut(String),
) -> Result<(), Error> {
    match estimated {
        Some(c) if c > max => {
            return Err(Error::Invalid(format!(
                "refusing: the estimated cost {} exceeds --max-cost {}; nothing was sent to AWS",
                fmt_usd(c),
                fmt_usd(max)
            )))
        }
        Some(_) => {}
        None => {
            return Err(Error::Invalid(
                "refusing: --max-cost needs a cost estimate, and there is none (see the note above); nothing was sent to AWS"
                    .into(),
            ))
        }
    }
    if let Some(w) = worst_case.filter(|w| *w > max) {
        warn(format!(
            "warning: max_runtime {} allows up to {} (> --max-cost {}); lower max_runtime to cap the bill",
            fmt_duration(job.max_runtime_s as f64),
            fmt_usd(w),
            fmt_usd(max)
        ));
    }
    Ok(())
}
