//! One training job end to end under the `/opt/ml` contract, read top to bottom in [`run`]:
//! resolve the spec, check the contract, pick the device, load the base model (a decoder-only
//! family or T5) and check the options its family takes, load the data,
//! load the test set, load the model with its adapters, evaluate the base (`eval_baseline`), train,
//! evaluate the tuned model, write the outputs.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;

use crate::data::{self, ReadReport, TokenizerBundle, TrainSet};
use crate::device::JobDevice;
use crate::dist::worker::WorkerEnv;
use crate::dist::{self, Collective, Solo};
use crate::error::{self, TrainError};
use crate::eval;
use crate::lora::LoraConfig;
use crate::model::{hub, Arch, LoadOptions, Model, ModelError};
use crate::output::{self, Summary};
use crate::report::MetricRecord;
use crate::rewards::RewardFn;
use crate::rng::Rng;
use crate::sagemaker::{self, MlPaths, ResourceConfig, StopFlag};
use crate::spec::{JobSpec, Method, Origin, Sources};
use crate::track::{target, RunEnd, RunSetup, Tracker};
use crate::train::grpo::{self, GrpoInputs, PromptRow};
use crate::train::sft::{self, SftInputs};
use crate::train::state;
use crate::train::Outcome;

/// How the binary invokes a job.
pub struct JobOptions {
    pub paths: MlPaths,
    /// `--key value` pairs from the command line (highest precedence).
    pub cli: Vec<(String, String)>,
    /// Process environment (`OXTUNE_HP_<KEY>` overrides).
    pub env: Vec<(String, String)>,
    pub stop: StopFlag,
}

/// What a finished job reports.
pub struct JobResult {
    pub model_dir: PathBuf,
    pub final_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub steps: u64,
}

/// Spec from hyperparameters.json < environment < CLI.
pub fn resolve_spec(
    paths: &MlPaths,
    env: &[(String, String)],
    cli: &[(String, String)],
) -> Result<JobSpec, TrainError> {
    let mut sources = Sources::default();
    let hp = paths.hyperparameters();
    if hp.exists() {
        sources.push_hyperparameters_file(&hp)?;
    }
    sources.push_env(env.iter().cloned())?;
    for (k, v) in cli {
        sources.push(k, v, Origin::Cli)?;
    }
    Ok(sources.resolve()?)
}

/// Run one job (one rank of it, in a worker a supervisor started: see `crate::supervise`).
/// Errors carry the exit code; the caller writes the failure file. Only rank 0 logs progress,
/// evaluates and writes outputs; every rank trains.
pub fn run(opts: JobOptions) -> Result<JobResult, TrainError> {
    let started = Instant::now();
    let paths = &opts.paths;
    let worker = WorkerEnv::from_env(&opts.env)?;
    if worker.is_none() {
        paths.clear_stale_failure();
    }
    let mut spec = resolve_spec(paths, &opts.env, &opts.cli)?;
    let tracking = target::from_env(&opts.env, &default_run_name(&spec)).map_err(TrainError::BadInput)?;
    let (channels, resources) = check_contract(paths, worker.is_some())?;
    let device = JobDevice::select(&opts.env)?;
    let dist: Box<dyn Collective> = match &worker {
        None => Box::new(Solo),
        Some(w) => dist::for_device(w.connect()?, &device.device)?,
    };
    let lead = dist.rank() == 0;
    if lead {
        paths.ensure_output_dirs()?;
    }
    device.enter();
    let dtype = device.dtype(spec.dtype);
    announce(paths, &channels, &resources, &device, dtype, &spec, dist.as_ref());
    let base = load_base(&spec, paths)?;
    check_family_options(&spec, &base.arch)?;
    let data = load_data(&spec, paths, &base)?;
    let test = load_test(&spec, paths, &base)?.filter(|_| lead);
    let model = load_model(&spec, &base, dtype, &device)?;
    let baseline = evaluate_baseline(&spec, &base, &model, test.as_ref())?;
    spec.gradient_accumulation_steps = state::accumulation_for(&spec, dist.world(), &paths.checkpoint_dir())?;
    spec.resolved.insert("gradient_accumulation_steps".into(), spec.gradient_accumulation_steps.to_string());
    let tracker = match tracking.filter(|_| lead) {
        Some(t) => Tracker::start(t, run_setup(&spec, paths, &base, &model, &data, &opts.env, dist.world())),
        None => Tracker::off(),
    };
    if let Some(b) = &baseline {
        tracker.values(0, &prefixed("baseline_", &b.metrics));
    }
    let outcome = match train(&spec, paths, &base, &model, &data, &opts.stop, dist.as_ref(), &tracker) {
        Ok(o) => o,
        Err(e) => {
            tracker.end(if matches!(e, TrainError::Interrupted { .. }) { RunEnd::Killed } else { RunEnd::Failed });
            return Err(e);
        }
    };
    device.report_launches();
    if !lead {
        let model_dir = paths.model_dir();
        return Ok(JobResult { model_dir, final_loss: None, final_eval_loss: None, steps: outcome.state.step });
    }
    let run = RunFacts { device: &device, dtype, ranks: dist.world(), started };
    let result = write_outputs(&spec, paths, &base, &model, &data, &outcome, Tests { test, baseline }, run, &tracker)?;
    tracker.end(RunEnd::Finished);
    Ok(result)
}

/// A run's name where SageMaker gives no job name: `train-METHOD-UNIXTIME`.
fn default_run_name(spec: &JobSpec) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("train-{}-{secs}", spec.method.name())
}

/// The base model as the summary names it: its Hub id or path, else the `model` channel.
fn base_name(spec: &JobSpec, base: &Base) -> String {
    if spec.base_model.is_empty() {
        base.dir.display().to_string()
    } else {
        spec.base_model.clone()
    }
}

fn prefixed(prefix: &str, m: &std::collections::BTreeMap<String, f64>) -> std::collections::BTreeMap<String, f64> {
    m.iter().map(|(k, v)| (format!("{prefix}{k}"), *v)).collect()
}

/// A tracked run's params (every resolved hyperparameter; the tracker drops secret-looking
/// names) and tags (version, method, base model, fingerprints, SageMaker job).
fn run_setup(
    spec: &JobSpec,
    paths: &MlPaths,
    base: &Base,
    model: &Model,
    data: &TrainData,
    env: &[(String, String)],
    ranks: usize,
) -> RunSetup {
    let mut tags: Vec<(String, String)> = vec![
        ("oxtune.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("oxtune.method".into(), spec.method.name().into()),
        ("oxtune.base_model".into(), base_name(spec, base)),
        ("oxtune.model".into(), model.identity()),
        ("oxtune.ranks".into(), ranks.to_string()),
        ("mlflow.source.name".into(), "oxtune train".into()),
        ("mlflow.source.type".into(), "JOB".into()),
    ];
    if let Some(sha) = &data.sha256 {
        tags.push(("oxtune.data_sha256".into(), sha.clone()));
    }
    if let Ok(sha) = data::fingerprint(&[base.dir.join("config.json")]) {
        tags.push(("oxtune.base_config_sha256".into(), sha));
    }
    for (var, tag) in
        [("TRAINING_JOB_NAME", "sagemaker.training_job_name"), ("TRAINING_JOB_ARN", "sagemaker.training_job_arn")]
    {
        if let Some(v) = sagemaker::env_value(env, var) {
            tags.push((tag.into(), v.into()));
        }
    }
    let params = spec.resolved.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    RunSetup { params, tags, checkpoint_dir: paths.checkpoint_dir() }
}

/// Where and how the job ran, for the summary.
struct RunFacts<'a> {
    device: &'a JobDevice,
    dtype: DType,
    ranks: usize,
    started: Instant,
}

/// The job's channel names and hosts as SageMaker describes them. Several hosts take a worker of
/// a multi-rank job (`train` starts them).
fn check_contract(paths: &MlPaths, worker: bool) -> Result<(Vec<String>, ResourceConfig), TrainError> {
    let channels = sagemaker::read_input_data_config(paths)?.into_keys().collect();
    let resources = sagemaker::read_resource_config(paths)?;
    if resources.hosts.len() > 1 && !worker {
        return Err(TrainError::Unsupported(format!(
            "{} hosts in resourceconfig.json but this process is not a rank of the job: run the job with the `train` binary, which starts one rank per GPU on every host",
            resources.hosts.len()
        )));
    }
    Ok((channels, resources))
}

fn announce(
    paths: &MlPaths,
    channels: &[String],
    resources: &ResourceConfig,
    device: &JobDevice,
    dtype: DType,
    spec: &JobSpec,
    dist: &dyn Collective,
) {
    tracing::info!(
        "oxtune train {} | root {} | host {} | device {}{} | dtype {:?} | channels {:?}",
        env!("CARGO_PKG_VERSION"),
        paths.root.display(),
        resources.current_host,
        device.name(),
        match dist.world() {
            1 => String::new(),
            n => format!(" (rank 0 of {n}; every rank on its own device)"),
        },
        dtype,
        channels
    );
    tracing::info!("Hyperparameters: {}", serde_json::to_string(&spec.resolved).unwrap_or_default());
}

/// Where the base model is: the `model` channel when `base_model` is empty; else a local
/// directory, a channel of that name, or a Hub id.
fn base_model_dir(name: &str, paths: &MlPaths) -> Result<PathBuf, TrainError> {
    if name.is_empty() {
        let dir = paths.optional_channel("model").ok_or_else(|| {
            ModelError::NotFound(format!(
                "no base model: give the job a `model` channel ({}) with config.json, tokenizer files and *.safetensors, or set base_model",
                paths.channel("model").display()
            ))
        })?;
        return Ok(hub::checked_model_dir(dir, "; check what the `model` channel's S3 prefix holds")?);
    }
    let channel = (!std::path::Path::new(name).is_dir()).then(|| paths.optional_channel(name)).flatten();
    let dir = match channel {
        Some(dir) => dir,
        None => hub::local_or_hub(name)?,
    };
    Ok(hub::checked_model_dir(dir, "")?)
}

/// The base model's directory, architecture and tokenizer, and the adapters it gets.
struct Base {
    dir: PathBuf,
    arch: Arch,
    tok: TokenizerBundle,
    lora: LoraConfig,
}

fn load_base(spec: &JobSpec, paths: &MlPaths) -> Result<Base, TrainError> {
    let dir = base_model_dir(&spec.base_model, paths)?;
    let arch = Arch::from_file(&dir.join("config.json"))?;
    if let Some(window) = match &arch {
        Arch::Causal(cfg) => cfg.effective_sliding_window(),
        Arch::Seq2Seq(_) => None,
    } {
        if spec.max_seq_length > window {
            return Err(TrainError::Unsupported(format!(
                "max_seq_length {} exceeds the model's sliding_window {window}; sliding-window attention is not implemented yet: use max_seq_length ≤ {window}",
                spec.max_seq_length
            )));
        }
    }
    let tok = TokenizerBundle::load(&dir)?;
    tok.check_matches_model(arch.vocab_size(), &dir)?;
    let lora = spec.lora_config(arch.linear_modules()).map_err(|e| {
        TrainError::BadInput(format!("{e} ({} family, {})", arch.family_name().unwrap_or("this"), dir.display()))
    })?;
    tracing::info!(
        "Base model: {} ({} family, {}, vocab {})",
        dir.display(),
        arch.family_name()?,
        arch.shape(),
        arch.vocab_size()
    );
    Ok(Base { dir, arch, tok, lora })
}

/// Options a family does not take, refused before any data or weights are read.
fn check_family_options(spec: &JobSpec, arch: &Arch) -> Result<(), TrainError> {
    if !arch.is_seq2seq() {
        return Ok(());
    }
    if spec.packing {
        return Err(TrainError::BadInput(
            "packing=true: T5 pairs are not packed (each input is its own encoder row and each target its own decoder row); set packing=false".into(),
        ));
    }
    if spec.gradient_checkpointing {
        tracing::warn!("gradient_checkpointing is not implemented for T5 yet: training keeps every activation");
    }
    Ok(())
}

/// The training data, read and checked before any model is loaded: SFT examples (with a
/// validation set from its channel or split off) or GRPO prompts.
struct TrainData {
    read: ReadReport,
    train: TrainSet,
    validation: TrainSet,
    grpo_prompts: Option<Vec<PromptRow>>,
    /// The training files' fingerprint (`data::fingerprint`), for the summary and a tracked run.
    sha256: Option<String>,
}

fn load_data(spec: &JobSpec, paths: &MlPaths, base: &Base) -> Result<TrainData, TrainError> {
    let train_dir = paths.train_channel()?;
    let read = data::read_path(&train_dir, &spec.data)?;
    report_read("train", &read);
    let sha256 = data::fingerprint(&read.files).ok();
    if spec.method == Method::Grpo {
        let prompts = grpo::prompt_rows(&read.records, &base.tok, spec, base.arch.is_seq2seq())?;
        tracing::info!("train: {} prompts for GRPO", prompts.len());
        let none = TrainSet::Causal(vec![]);
        return Ok(TrainData { read, train: none.clone(), validation: none, grpo_prompts: Some(prompts), sha256 });
    }
    let train_set = examples("train", &read, spec, base)?;
    let (train, validation) = match paths.optional_channel("validation") {
        Some(dir) => {
            let val_read = data::read_path(&dir, &spec.data)?;
            report_read("validation", &val_read);
            (train_set, examples("validation", &val_read, spec, base)?)
        }
        None if spec.validation_split > 0.0 => {
            let (t, v) = train_set.split_validation(spec.validation_split, spec.seed);
            tracing::info!(
                "validation: {} examples held out of the training data (validation_split={})",
                v.len(),
                spec.validation_split
            );
            (t, v)
        }
        None => {
            let none = train_set.empty_like();
            (train_set, none)
        }
    };
    if train.is_empty() {
        return Err(TrainError::BadInput(format!(
            "no training examples left in {} after tokenisation (all rows were empty, had no completion tokens, or were skipped)",
            train_dir.display()
        )));
    }
    Ok(TrainData { read, train, validation, grpo_prompts: None, sha256 })
}

/// The held-out test channel, read and checked before training (a bad row fails the job now, not
/// after hours of training), with the reward functions evaluation scores.
struct TestSet {
    cases: Vec<eval::EvalCase>,
    config: eval::EvalConfig,
    rewards: Vec<(RewardFn, f64)>,
    eos_ids: Vec<u32>,
}

fn load_test(spec: &JobSpec, paths: &MlPaths, base: &Base) -> Result<Option<TestSet>, TrainError> {
    let Some(dir) = paths.test_channel()? else {
        if spec.eval.baseline {
            tracing::warn!(
                "eval_baseline=true but the job has no test channel ({}): nothing to evaluate",
                sagemaker::TEST_CHANNELS.join(", ")
            );
        }
        return Ok(None);
    };
    let read = data::read_path(&dir, &spec.data)?;
    report_read("test", &read);
    let mut config = spec.eval.config.clone();
    if base.arch.is_seq2seq() {
        // A T5 prompt is the encoder's input: as long as training's inputs, cut at the end.
        config.max_prompt_tokens = spec.max_source_length;
    }
    let cases = eval::cases(&read.records, &base.tok, &config, base.arch.is_seq2seq())?;
    if cases.is_empty() {
        return Err(TrainError::BadInput(format!("the test channel {} has no rows to evaluate", dir.display())));
    }
    let truncated = cases.iter().filter(|c| c.prompt.truncated > 0).count();
    tracing::info!(
        "test: {} cases to evaluate after training{}{}",
        cases.len(),
        if spec.eval.baseline { " and on the base model before it" } else { "" },
        if truncated > 0 {
            format!(" ({truncated} prompts cut to {} tokens)", config.max_prompt_tokens)
        } else {
            String::new()
        }
    );
    let rewards = if spec.eval.rewards {
        let fns = grpo::build_rewards(spec, &paths.data_dir())?;
        fns.into_iter().zip(spec.grpo.reward_weights.iter().copied()).collect()
    } else {
        vec![]
    };
    Ok(Some(TestSet { cases, config, rewards, eos_ids: base.arch.eos_ids(&base.tok) }))
}

/// With `eval_baseline`: the base model (adapters off) on the test set, before training.
fn evaluate_baseline(
    spec: &JobSpec,
    base: &Base,
    model: &Model,
    test: Option<&TestSet>,
) -> Result<Option<eval::EvalRun>, TrainError> {
    let Some(t) = test.filter(|_| spec.eval.baseline) else { return Ok(None) };
    let run = eval::run(model, &base.tok, &t.cases, &t.config, &t.eos_ids, &t.rewards, false)?;
    tracing::info!("{}", metric_line(0, 0.0, "baseline_", &run.metrics));
    Ok(Some(run))
}

/// The test set and, with `eval_baseline`, the base model's run on it.
struct Tests {
    test: Option<TestSet>,
    baseline: Option<eval::EvalRun>,
}

/// After training, once the adapter is on disk: the tuned model on the test set. A failure here
/// does not fail the finished job; it is logged and recorded in the summary instead.
fn evaluate_tuned(base: &Base, model: &Model, tests: &Tests) -> Option<Result<eval::EvalRun, String>> {
    let t = tests.test.as_ref()?;
    let run = eval::run(model, &base.tok, &t.cases, &t.config, &t.eos_ids, &t.rewards, true);
    if let Err(e) = &run {
        tracing::warn!("evaluation failed after training (the adapter is saved): {e}");
    }
    Some(run.map_err(|e| e.to_string()))
}

/// A `METRIC` line of evaluation means (`test_rouge1=…`; `prefix` marks the baseline's).
fn metric_line(step: u64, epoch: f64, prefix: &str, metrics: &std::collections::BTreeMap<String, f64>) -> String {
    let extra = prefixed(prefix, metrics);
    MetricRecord { step, epoch, extra, ..Default::default() }.line()
}

/// The base weights (NF4 for QLoRA: quantised while loading; a bitsandbytes 4-bit checkpoint
/// loads as NF4 regardless) with freshly initialised LoRA adapters.
fn load_model(spec: &JobSpec, base: &Base, dtype: DType, device: &JobDevice) -> Result<Model, TrainError> {
    let lora_cfg = &base.lora;
    let mut init_rng = Rng::derive(spec.seed, "lora-init");
    let load_opts = LoadOptions { quantize_nf4: spec.nf4_options() };
    let model = Model::load(&base.dir, &base.arch, dtype, &device.device, Some((lora_cfg, &mut init_rng)), &load_opts)?;
    if model.is_quantized() {
        let (which, stored) = match &base.arch {
            Arch::Causal(c) => ("decoder projections are", c.quantization_config.is_some()),
            Arch::Seq2Seq(_) => {
                ("projections but the feed-forward output `wo` (kept dense, as transformers keeps it) are", false)
            }
        };
        tracing::info!(
            "QLoRA: {which} NF4 (blocksize 64, double quant {}), compute dtype {:?}",
            spec.bnb_4bit_use_double_quant || stored,
            dtype
        );
    }
    tracing::info!(
        "LoRA r={} alpha={} scale={:.4} dropout={} on {:?}: {} trainable parameters",
        lora_cfg.r,
        lora_cfg.alpha,
        lora_cfg.scale(),
        lora_cfg.dropout,
        lora_cfg.targets,
        model.trainable_param_count()
    );
    Ok(model)
}

#[allow(clippy::too_many_arguments)]
fn train(
    spec: &JobSpec,
    paths: &MlPaths,
    base: &Base,
    model: &Model,
    data: &TrainData,
    stop: &StopFlag,
    dist: &dyn Collective,
    tracker: &Tracker,
) -> Result<Outcome, TrainError> {
    let checkpoint_dir = paths.checkpoint_dir();
    match &data.grpo_prompts {
        Some(prompts) => {
            let rewards = grpo::build_rewards(spec, &paths.data_dir())?;
            grpo::train(GrpoInputs {
                spec,
                model,
                tok: &base.tok,
                prompts,
                rewards: &rewards,
                eos_ids: base.arch.eos_ids(&base.tok),
                checkpoint_dir: &checkpoint_dir,
                output_data_dir: &paths.output_data_dir(),
                stop,
                dist,
                tracker,
            })
        }
        None => sft::train(SftInputs {
            spec,
            model,
            train: &data.train,
            validation: &data.validation,
            pad_id: base.tok.pad_id(),
            checkpoint_dir: &checkpoint_dir,
            stop,
            dist,
            tracker,
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    spec: &JobSpec,
    paths: &MlPaths,
    base: &Base,
    model: &Model,
    data: &TrainData,
    outcome: &Outcome,
    tests: Tests,
    run: RunFacts,
    tracker: &Tracker,
) -> Result<JobResult, TrainError> {
    let model_dir = paths.model_dir();
    let base_name = base_name(spec, base);
    output::write_adapter(&model_dir, model, &base.lora, &base_name)?;
    output::copy_tokenizer_files(&base.dir, &model_dir)?;
    let merged = if spec.merge_adapter {
        Some(output::write_merged(&model_dir.join("merged"), model, &base.dir)?)
    } else {
        None
    };
    output::write_metrics(&paths.output_data_dir(), &outcome.state.history)?;
    let tuned = evaluate_tuned(base, model, &tests);
    let evaluation = match (&tests.test, &tuned) {
        (Some(t), Some(Ok(run))) => {
            let path = paths.output_data_dir().join("eval_predictions.jsonl");
            eval::write_predictions(&path, &t.cases, run, tests.baseline.as_ref()).map_err(error::io_err(&path))?;
            tracing::info!("{}", metric_line(outcome.state.step, outcome.epochs_completed, "", &run.metrics));
            tracker.values(outcome.state.step, &run.metrics);
            tracing::info!("Evaluation: {} cases, predictions in {}", t.cases.len(), path.display());
            Some(eval::summary_json(&t.config, t.cases.len(), run, tests.baseline.as_ref()))
        }
        (_, Some(Err(e))) => Some(serde_json::json!({ "error": e })),
        _ => None,
    };
    let summary = Summary {
        spec,
        base_name: &base_name,
        family: base.arch.family_name()?,
        device: run.device.name(),
        dtype: run.dtype,
        outcome,
        data: &data.read,
        data_sha256: data.sha256.as_deref(),
        train_examples: data.train.len(),
        validation_examples: data.validation.len(),
        trainable_parameters: model.trainable_param_count(),
        ranks: run.ranks,
        wall_time_secs: run.started.elapsed().as_secs_f64(),
        merged: merged.as_deref(),
        evaluation,
    };
    output::write_summary(paths, &summary)?;
    for file in [
        model_dir.join("adapter_config.json"),
        paths.output_data_dir().join("loss_curve.svg"),
        model_dir.join("training_summary.json"),
    ] {
        tracker.artifact(&file);
    }
    let (final_loss, final_eval_loss) = summary.final_losses();
    tracing::info!(
        "Done: {} steps, final loss {}, adapter written to {}",
        outcome.state.step,
        final_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "n/a".into()),
        model_dir.join("adapter_model.safetensors").display()
    );
    Ok(JobResult { model_dir, final_loss, final_eval_loss, steps: outcome.state.step })
}

fn report_read(channel: &str, r: &data::ReadReport) {
    tracing::info!("{channel}: {} rows from {} file(s), format {}", r.records.len(), r.files.len(), r.format.name());
    if !r.skipped.is_empty() {
        tracing::info!("{channel}: skipped {} bad row(s) (skip_bad_rows=true):", r.skipped.len());
        for (row, why) in r.skipped.iter().take(20) {
            tracing::info!("  {}:{}: {why}", row.file.display(), row.line);
        }
        if r.skipped.len() > 20 {
            tracing::info!("  … and {} more", r.skipped.len() - 20);
        }
    }
}

/// A channel's records as training examples of the base model's kind, with what tokenising did.
fn examples(channel: &str, read: &ReadReport, spec: &JobSpec, base: &Base) -> Result<TrainSet, TrainError> {
    if !base.arch.is_seq2seq() {
        let t = data::tokenize(&read.records, &base.tok, &spec.data)?;
        report_tokens(channel, &t);
        return Ok(TrainSet::Causal(t.examples));
    }
    let (src, tgt) = (spec.max_source_length, spec.max_target_length);
    let r = data::seq2seq_examples(&read.records, &base.tok, src, tgt, spec.data.skip_bad_rows)?;
    tracing::info!(
        "{channel}: {} pairs, {} input + {} target tokens, {} inputs cut to max_source_length={src}, {} targets cut to max_target_length={tgt}, {} dropped without a target",
        r.examples.len(),
        r.source_tokens,
        r.target_tokens,
        r.truncated_sources,
        r.truncated_targets,
        r.dropped_no_target
    );
    for (row, why) in r.skipped.iter().take(20) {
        tracing::info!("  skipped {}:{}: {why}", row.file.display(), row.line);
    }
    Ok(TrainSet::Seq2Seq(r.examples))
}

fn report_tokens(channel: &str, t: &data::TokenizeReport) {
    tracing::info!(
        "{channel}: {} examples, {} tokens ({} targets), {} truncated, {} dropped without target tokens",
        t.examples.len(),
        t.total_tokens,
        t.target_tokens,
        t.truncated,
        t.dropped_no_target
    );
}
