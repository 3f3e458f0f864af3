//! One training job end to end under the `/opt/ml` contract, read top to bottom in [`run`]:
//! resolve the spec, check the contract, pick the device, load the base model, load the data,
//! load the model with its adapters, train, write the outputs.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;

use crate::data::{self, Example, ReadReport, TokenizerBundle};
use crate::device::JobDevice;
use crate::error::TrainError;
use crate::model::{hub, Decoder, LoadOptions, ModelConfig};
use crate::output::{self, Summary};
use crate::rng::Rng;
use crate::sagemaker::{self, MlPaths, ResourceConfig, StopFlag};
use crate::spec::{JobSpec, Method, Origin, Sources};
use crate::train::grpo::{self, GrpoInputs, PromptRow};
use crate::train::sft::{self, SftInputs};
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

/// Run one job. Errors carry the exit code; the caller writes the failure file.
pub fn run(opts: JobOptions) -> Result<JobResult, TrainError> {
    let started = Instant::now();
    let paths = &opts.paths;
    paths.clear_stale_failure();
    let spec = resolve_spec(paths, &opts.env, &opts.cli)?;
    let resources = check_contract(paths)?;
    let device = JobDevice::select(&opts.env)?;
    device.enter();
    let dtype = device.dtype(spec.dtype);
    announce(paths, &resources, &device, dtype, &spec)?;
    let base = load_base(&spec, paths)?;
    let data = load_data(&spec, paths, &base.tok)?;
    let model = load_model(&spec, &base, dtype, &device)?;
    let outcome = train(&spec, paths, &base, &model, &data, &opts.stop)?;
    device.report_launches();
    write_outputs(&spec, paths, &base, &model, &data, &outcome, &device, dtype, started)
}

/// The job's channels and hosts as SageMaker describes them; one host only, output dirs made.
fn check_contract(paths: &MlPaths) -> Result<ResourceConfig, TrainError> {
    sagemaker::read_input_data_config(paths)?;
    let resources = sagemaker::read_resource_config(paths)?;
    if resources.hosts.len() > 1 {
        return Err(TrainError::Unsupported(format!(
            "{} hosts in resourceconfig.json; multi-host training is not supported yet: use instance_count=1",
            resources.hosts.len()
        )));
    }
    paths.ensure_output_dirs()?;
    Ok(resources)
}

fn announce(
    paths: &MlPaths,
    resources: &ResourceConfig,
    device: &JobDevice,
    dtype: DType,
    spec: &JobSpec,
) -> Result<(), TrainError> {
    let channels = sagemaker::read_input_data_config(paths)?;
    tracing::info!(
        "oxtune train {} | root {} | host {} | device {} | dtype {:?} | channels {:?}",
        env!("CARGO_PKG_VERSION"),
        paths.root.display(),
        resources.current_host,
        device.name(),
        dtype,
        channels.keys().collect::<Vec<_>>()
    );
    tracing::info!("Hyperparameters: {}", serde_json::to_string(&spec.resolved).unwrap_or_default());
    Ok(())
}

/// The base model's directory, config and tokenizer.
struct Base {
    dir: PathBuf,
    cfg: ModelConfig,
    tok: TokenizerBundle,
}

fn load_base(spec: &JobSpec, paths: &MlPaths) -> Result<Base, TrainError> {
    let dir = hub::resolve_base_model(&spec.base_model, paths)?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    if let Some(window) = cfg.effective_sliding_window() {
        if spec.max_seq_length > window {
            return Err(TrainError::Unsupported(format!(
                "max_seq_length {} exceeds the model's sliding_window {window}; sliding-window attention is not implemented yet: use max_seq_length ≤ {window}",
                spec.max_seq_length
            )));
        }
    }
    let tok = TokenizerBundle::load(&dir)?;
    tok.check_matches_model(cfg.vocab_size, &dir)?;
    tracing::info!(
        "Base model: {} ({} family, {} layers, hidden {}, vocab {})",
        dir.display(),
        cfg.family()?.name(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size
    );
    Ok(Base { dir, cfg, tok })
}

/// The training data, read and checked before any model is loaded: SFT examples (with a
/// validation set from its channel or split off) or GRPO prompts.
struct TrainData {
    read: ReadReport,
    train: Vec<Example>,
    validation: Vec<Example>,
    grpo_prompts: Option<Vec<PromptRow>>,
}

fn load_data(spec: &JobSpec, paths: &MlPaths, tok: &TokenizerBundle) -> Result<TrainData, TrainError> {
    let train_dir = paths.train_channel()?;
    let read = data::read_path(&train_dir, &spec.data)?;
    report_read("train", &read);
    if spec.method == Method::Grpo {
        let prompts = grpo::prompt_rows(&read.records, tok, spec)?;
        tracing::info!("train: {} prompts for GRPO", prompts.len());
        return Ok(TrainData { read, train: vec![], validation: vec![], grpo_prompts: Some(prompts) });
    }
    let train_tok = data::tokenize(&read.records, tok, &spec.data)?;
    report_tokens("train", &train_tok);
    let (train, validation) = match paths.optional_channel("validation") {
        Some(dir) => {
            let val_read = data::read_path(&dir, &spec.data)?;
            report_read("validation", &val_read);
            let val = data::tokenize(&val_read.records, tok, &spec.data)?;
            report_tokens("validation", &val);
            (train_tok.examples, val.examples)
        }
        None if spec.validation_split > 0.0 => {
            let (t, v) = data::split_validation(train_tok.examples, spec.validation_split, spec.seed);
            tracing::info!(
                "validation: {} examples held out of the training data (validation_split={})",
                v.len(),
                spec.validation_split
            );
            (t, v)
        }
        None => (train_tok.examples, vec![]),
    };
    if train.is_empty() {
        return Err(TrainError::BadInput(format!(
            "no training examples left in {} after tokenisation (all rows were empty, had no completion tokens, or were skipped)",
            train_dir.display()
        )));
    }
    Ok(TrainData { read, train, validation, grpo_prompts: None })
}

/// The base weights (NF4 for QLoRA: quantised while loading; a bitsandbytes 4-bit checkpoint
/// loads as NF4 regardless) with freshly initialised LoRA adapters.
fn load_model(spec: &JobSpec, base: &Base, dtype: DType, device: &JobDevice) -> Result<Decoder, TrainError> {
    let lora_cfg = spec.lora_config();
    let mut init_rng = Rng::derive(spec.seed, "lora-init");
    let load_opts = LoadOptions { quantize_nf4: spec.nf4_options() };
    let model =
        Decoder::load_with(&base.dir, &base.cfg, dtype, &device.device, Some((&lora_cfg, &mut init_rng)), &load_opts)?;
    if model.is_quantized() {
        tracing::info!(
            "QLoRA: decoder projections are NF4 (blocksize 64, double quant {}), compute dtype {:?}",
            spec.bnb_4bit_use_double_quant || base.cfg.quantization_config.is_some(),
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

fn train(
    spec: &JobSpec,
    paths: &MlPaths,
    base: &Base,
    model: &Decoder,
    data: &TrainData,
    stop: &StopFlag,
) -> Result<Outcome, TrainError> {
    let checkpoint_dir = paths.checkpoint_dir();
    match &data.grpo_prompts {
        Some(prompts) => {
            let rewards = grpo::build_rewards(spec, &paths.data_dir())?;
            let mut eos_ids = base.cfg.eos_token_ids();
            eos_ids.extend(base.tok.eos_id());
            grpo::train(GrpoInputs {
                spec,
                model,
                tok: &base.tok,
                prompts,
                rewards: &rewards,
                eos_ids,
                checkpoint_dir: &checkpoint_dir,
                output_data_dir: &paths.output_data_dir(),
                stop,
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
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    spec: &JobSpec,
    paths: &MlPaths,
    base: &Base,
    model: &Decoder,
    data: &TrainData,
    outcome: &Outcome,
    device: &JobDevice,
    dtype: DType,
    started: Instant,
) -> Result<JobResult, TrainError> {
    let model_dir = paths.model_dir();
    let base_name = if spec.base_model.is_empty() { base.dir.display().to_string() } else { spec.base_model.clone() };
    output::write_adapter(&model_dir, model, &spec.lora_config(), &base_name)?;
    output::copy_tokenizer_files(&base.dir, &model_dir)?;
    let merged = if spec.merge_adapter {
        Some(output::write_merged(&model_dir.join("merged"), model, &base.dir)?)
    } else {
        None
    };
    let summary = Summary {
        spec,
        base_name: &base_name,
        family: base.cfg.family()?.name(),
        device: device.name(),
        dtype,
        outcome,
        data: &data.read,
        train_examples: data.train.len(),
        validation_examples: data.validation.len(),
        trainable_parameters: model.trainable_param_count(),
        wall_time_secs: started.elapsed().as_secs_f64(),
        merged: merged.as_deref(),
    };
    output::write_summary(paths, &summary)?;
    output::write_metrics(&paths.output_data_dir(), &outcome.state.history)?;
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
