//! One training job end to end under the `/opt/ml` contract: resolve the spec,
//! find the base model, read and tokenise data, train, write outputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};

use crate::data::{self, TokenizerBundle};
use crate::error::TrainError;
use crate::grpo::{self, GrpoInputs};
use crate::lora::LoraConfig;
use crate::model::{Decoder, LoadOptions, ModelConfig};
use crate::output;
use crate::quant::Nf4Options;
use crate::rng::Rng;
use crate::sagemaker::{self, MlPaths, StopFlag};
use crate::sft::{self, SftInputs};
use crate::spec::{DTypeChoice, JobSpec, Method, Origin, Sources};

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

/// CUDA when built with it and a GPU is present (unless OXTUNE_DEVICE=cpu), else CPU.
pub fn select_device(env: &[(String, String)]) -> Device {
    let forced_cpu = env.iter().any(|(k, v)| k == "OXTUNE_DEVICE" && v.eq_ignore_ascii_case("cpu"));
    #[cfg(feature = "cuda")]
    if !forced_cpu {
        match Device::new_cuda(0) {
            Ok(d) => return d,
            Err(e) => eprintln!("no usable CUDA device ({e}); training on CPU"),
        }
    }
    let _ = forced_cpu;
    Device::Cpu
}

/// The base model directory: `base_model` as a local path or Hub id, else the `model` channel.
pub fn resolve_base_model(spec: &JobSpec, paths: &MlPaths) -> Result<PathBuf, TrainError> {
    let name = spec.base_model.as_str();
    if name.is_empty() {
        return paths.optional_channel("model").ok_or_else(|| {
            TrainError::BadInput(format!(
                "no base model: give the job a `model` channel ({}) with config.json, tokenizer files and *.safetensors, or set base_model",
                paths.channel("model").display()
            ))
        });
    }
    let as_path = Path::new(name);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    if let Some(ch) = paths.optional_channel(name) {
        return Ok(ch);
    }
    if as_path.is_absolute() || name.starts_with('.') {
        return Err(TrainError::BadInput(format!("base_model `{name}` is not a directory")));
    }
    fetch_from_hub(name)
}

#[cfg(feature = "hub")]
fn fetch_from_hub(id: &str) -> Result<PathBuf, TrainError> {
    use hf_hub::api::sync::ApiBuilder;
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let fail = |e: String| {
        TrainError::BadInput(format!(
            "base_model `{id}` is not a local directory or channel, and downloading it from the Hugging Face Hub failed: {e}. \
             Offline jobs must ship the model in the `model` channel; gated models need HF_TOKEN in the job environment"
        ))
    };
    let api = ApiBuilder::from_env().with_token(token).with_progress(false).build().map_err(|e| fail(e.to_string()))?;
    let repo = api.model(id.to_string());
    let config = repo.get("config.json").map_err(|e| fail(e.to_string()))?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        let _ = repo.get(f); // optional files
    }
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            for shard in crate::model::weights::shard_files(index.parent().unwrap_or(Path::new(".")))?
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            {
                repo.get(&shard).map_err(|e| fail(e.to_string()))?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf())
}

#[cfg(not(feature = "hub"))]
fn fetch_from_hub(id: &str) -> Result<PathBuf, TrainError> {
    Err(TrainError::BadInput(format!(
        "base_model `{id}` is not a local directory or channel, and this build has no Hub download (feature `hub`)"
    )))
}

/// Run one job. Errors carry the exit code; the caller writes the failure file.
pub fn run(opts: JobOptions) -> Result<JobResult, TrainError> {
    let started = Instant::now();
    let paths = &opts.paths;
    paths.clear_stale_failure();
    let spec = resolve_spec(paths, &opts.env, &opts.cli)?;
    let channels = sagemaker::read_input_data_config(paths)?;
    let resources = sagemaker::read_resource_config(paths)?;
    if resources.hosts.len() > 1 {
        return Err(TrainError::Unsupported(format!(
            "{} hosts in resourceconfig.json; multi-host training is not supported yet: use instance_count=1",
            resources.hosts.len()
        )));
    }
    paths.ensure_output_dirs()?;
    let device = select_device(&opts.env);
    let dtype = match (spec.dtype, &device) {
        (DTypeChoice::F32, _) => DType::F32,
        (DTypeChoice::Bf16, _) => DType::BF16,
        (DTypeChoice::Auto, Device::Cpu) => DType::F32,
        (DTypeChoice::Auto, _) => DType::BF16,
    };
    println!(
        "oxtune train {} | root {} | host {} | device {} | dtype {:?} | channels {:?}",
        env!("CARGO_PKG_VERSION"),
        paths.root.display(),
        resources.current_host,
        device_name(&device),
        dtype,
        channels.keys().collect::<Vec<_>>()
    );
    println!("Hyperparameters: {}", serde_json::to_string(&spec.resolved).unwrap_or_default());

    let base_dir = resolve_base_model(&spec, paths)?;
    let cfg = ModelConfig::from_file(&base_dir.join("config.json"))?;
    if let Some(window) = cfg.effective_sliding_window() {
        if spec.max_seq_length > window {
            return Err(TrainError::Unsupported(format!(
                "max_seq_length {} exceeds the model's sliding_window {window}; sliding-window attention is not implemented yet: use max_seq_length ≤ {window}",
                spec.max_seq_length
            )));
        }
    }
    let tok = TokenizerBundle::load(&base_dir)?;
    tok.check_matches_model(cfg.vocab_size, &base_dir)?;
    println!(
        "Base model: {} ({} family, {} layers, hidden {}, vocab {})",
        base_dir.display(),
        cfg.family()?.name(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size
    );

    // Data.
    let train_dir = paths.train_channel()?;
    let train_read = data::read_path(&train_dir, &spec.data)?;
    report_read("train", &train_read);
    let grpo_prompts = if spec.method == Method::Grpo {
        let prompts = grpo::prompt_rows(&train_read.records, &tok, &spec)?;
        println!("train: {} prompts for GRPO", prompts.len());
        Some(prompts)
    } else {
        None
    };
    let train_tok = if grpo_prompts.is_some() {
        data::TokenizeReport::default()
    } else {
        let t = data::tokenize(&train_read.records, &tok, &spec.data)?;
        report_tokens("train", &t);
        t
    };
    let (train, validation) = match paths.optional_channel("validation") {
        Some(dir) => {
            let read = data::read_path(&dir, &spec.data)?;
            report_read("validation", &read);
            let val = data::tokenize(&read.records, &tok, &spec.data)?;
            report_tokens("validation", &val);
            (train_tok.examples, val.examples)
        }
        None if spec.validation_split > 0.0 => {
            let (t, v) = data::split_validation(train_tok.examples, spec.validation_split, spec.seed);
            println!(
                "validation: {} examples held out of the training data (validation_split={})",
                v.len(),
                spec.validation_split
            );
            (t, v)
        }
        None => (train_tok.examples, vec![]),
    };
    if train.is_empty() && grpo_prompts.is_none() {
        return Err(TrainError::BadInput(format!(
            "no training examples left in {} after tokenisation (all rows were empty, had no completion tokens, or were skipped)",
            train_dir.display()
        )));
    }

    // Model + adapters.
    let lora_cfg = LoraConfig::from_spec(&spec);
    let mut init_rng = Rng::derive(spec.seed, "lora-init");
    // QLoRA: NF4 base quantised while loading (a bitsandbytes 4-bit checkpoint loads as NF4 regardless).
    let load_opts = LoadOptions {
        quantize_nf4: spec
            .load_in_4bit
            .then_some(Nf4Options { double_quant: spec.bnb_4bit_use_double_quant, ..Nf4Options::default() }),
    };
    let model = Decoder::load_with(&base_dir, &cfg, dtype, &device, Some((&lora_cfg, &mut init_rng)), &load_opts)?;
    if model.is_quantized() {
        println!(
            "QLoRA: decoder projections are NF4 (blocksize 64, double quant {}), compute dtype {:?}",
            spec.bnb_4bit_use_double_quant || cfg.quantization_config.is_some(),
            dtype
        );
    }
    println!(
        "LoRA r={} alpha={} scale={:.4} dropout={} on {:?}: {} trainable parameters",
        lora_cfg.r,
        lora_cfg.alpha,
        lora_cfg.scale(),
        lora_cfg.dropout,
        lora_cfg.targets,
        model.trainable_param_count()
    );

    let checkpoint_dir = paths.checkpoint_dir();
    let outcome = match &grpo_prompts {
        Some(prompts) => {
            let rewards = grpo::build_rewards(&spec, &paths.data_dir())?;
            let mut eos_ids = cfg.eos_token_ids();
            eos_ids.extend(tok.eos_id());
            grpo::train(GrpoInputs {
                spec: &spec,
                model: &model,
                tok: &tok,
                prompts,
                rewards: &rewards,
                eos_ids,
                checkpoint_dir: &checkpoint_dir,
                output_data_dir: &paths.output_data_dir(),
                stop: &opts.stop,
            })?
        }
        None => sft::train(SftInputs {
            spec: &spec,
            model: &model,
            train: &train,
            validation: &validation,
            pad_id: tok.pad_id(),
            checkpoint_dir: &checkpoint_dir,
            stop: &opts.stop,
        })?,
    };

    // Outputs.
    let model_dir = paths.model_dir();
    let base_name = if spec.base_model.is_empty() { base_dir.display().to_string() } else { spec.base_model.clone() };
    output::write_adapter(&model_dir, &model, &lora_cfg, &base_name)?;
    output::copy_tokenizer_files(&base_dir, &model_dir)?;
    let merged = if spec.merge_adapter {
        Some(output::write_merged(&model_dir.join("merged"), &model, &base_dir)?)
    } else {
        None
    };
    let history = &outcome.state.history;
    let final_loss = history.iter().rev().find_map(|r| r.loss);
    let final_eval_loss = history.iter().rev().find_map(|r| r.eval_loss);
    let summary = serde_json::json!({
        "status": "completed",
        "method": spec.resolved.get("method"),
        "base_model": base_name,
        "model_family": cfg.family()?.name(),
        "device": device_name(&device),
        "dtype": format!("{dtype:?}"),
        "steps": outcome.state.step,
        "total_steps": outcome.total_steps,
        "epochs_completed": outcome.state.epoch as f64 + 0.0,
        "tokens_seen": outcome.state.tokens_seen,
        "train_examples": train.len(),
        "validation_examples": validation.len(),
        "trainable_parameters": model.trainable_param_count(),
        "final_train_loss": final_loss,
        "final_eval_loss": final_eval_loss,
        "wall_time_secs": started.elapsed().as_secs_f64(),
        "training_time_secs": outcome.state.elapsed_secs,
        "resumed_from": outcome.resumed_from.as_ref().map(|p| p.display().to_string()),
        "merged_model": merged.as_ref().map(|p| p.display().to_string()),
        "data": {"format": train_read.format.name(), "files": train_read.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                 "rows": train_read.records.len(), "skipped_rows": train_read.skipped.len()},
        "hyperparameters": spec.resolved,
        "history": history,
    });
    output::write_json(&model_dir.join("training_summary.json"), &summary)?;
    let out_data = paths.output_data_dir();
    output::write_json(&out_data.join("training_summary.json"), &summary)?;
    output::write_metrics(&out_data, history)?;
    println!(
        "Done: {} steps, final loss {}, adapter written to {}",
        outcome.state.step,
        final_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "n/a".into()),
        model_dir.join("adapter_model.safetensors").display()
    );
    Ok(JobResult { model_dir, final_loss, final_eval_loss, steps: outcome.state.step })
}

fn report_read(channel: &str, r: &data::ReadReport) {
    println!("{channel}: {} rows from {} file(s), format {}", r.records.len(), r.files.len(), r.format.name());
    if !r.skipped.is_empty() {
        println!("{channel}: skipped {} bad row(s) (skip_bad_rows=true):", r.skipped.len());
        for (row, why) in r.skipped.iter().take(20) {
            println!("  {}:{}: {why}", row.file.display(), row.line);
        }
        if r.skipped.len() > 20 {
            println!("  … and {} more", r.skipped.len() - 20);
        }
    }
}

fn report_tokens(channel: &str, t: &data::TokenizeReport) {
    println!(
        "{channel}: {} examples, {} tokens ({} targets), {} truncated, {} dropped without target tokens",
        t.examples.len(),
        t.total_tokens,
        t.target_tokens,
        t.truncated,
        t.dropped_no_target
    );
}

pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda:0".into(),
        other => format!("{other:?}"),
    }
}
