//! Job outputs: the PEFT adapter, tokenizer files and summary in `/opt/ml/model`,
//! the optional merged model, and summary, metrics + loss curve in `/opt/ml/output/data`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::DType;

use crate::data::ReadReport;
use crate::error::{io_err, TrainError};
use crate::lora::{peft_config_json, save_adapter_tensors, save_safetensors, LoraConfig};
use crate::model::Model;
use crate::report::{loss_curve_svg, MetricRecord};
use crate::sagemaker::MlPaths;
use crate::spec::JobSpec;
use crate::train::Outcome;

/// Files copied next to the adapter so the output directory loads on its own.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "tokenizer.model",
    "spiece.model",
];

pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::BadInput(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(io_err(path))
}

/// `adapter_model.safetensors` + `adapter_config.json` in PEFT format.
pub fn write_adapter(dir: &Path, model: &Model, lora: &LoraConfig, base_name: &str) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    save_adapter_tensors(&dir.join("adapter_model.safetensors"), &model.adapters())?;
    write_json(&dir.join("adapter_config.json"), &peft_config_json(lora, base_name, model.task_type()))
}

/// Copy the tokenizer and chat-template files that exist in the base model directory.
pub fn copy_tokenizer_files(base_dir: &Path, out: &Path) -> Result<Vec<String>, TrainError> {
    let mut copied = vec![];
    for f in TOKENIZER_FILES {
        let src = base_dir.join(f);
        if src.exists() {
            let dst = out.join(f);
            std::fs::copy(&src, &dst).map_err(io_err(&dst))?;
            copied.push(f.to_string());
        }
    }
    Ok(copied)
}

/// Merged model (W + scale·B·A) as HF safetensors + config.json (+ tokenizer files), in the base's dtype
/// (bf16 unless the base config says float32; always bf16 for an NF4 base). Large models are sharded with an index.
pub fn write_merged(dir: &Path, model: &Model, base_dir: &Path) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let config_text =
        std::fs::read_to_string(base_dir.join("config.json")).map_err(io_err(&base_dir.join("config.json")))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&config_text).map_err(|e| TrainError::BadInput(e.to_string()))?;
    let declared =
        config.get("torch_dtype").or_else(|| config.get("dtype")).and_then(|v| v.as_str()).unwrap_or("bfloat16");
    // An NF4 (QLoRA) base is dequantised and always written in bf16.
    let (dtype, dtype_name) = if declared == "float32" && !model.is_quantized() {
        (DType::F32, "float32")
    } else {
        (DType::BF16, "bfloat16")
    };
    if let Some(obj) = config.as_object_mut() {
        obj.remove("quantization_config");
        obj.insert("torch_dtype".into(), dtype_name.into());
    }
    write_json(&dir.join("config.json"), &config)?;
    let tensors = model.merged_state_dict(dtype)?;
    // Shards of at most 4 GiB, as transformers does for large checkpoints.
    let max_shard: usize = 4 << 30;
    let mut shards: Vec<BTreeMap<String, candle_core::Tensor>> = vec![BTreeMap::new()];
    let mut size = 0usize;
    for (name, t) in tensors {
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        if size + bytes > max_shard && !shards.last().is_some_and(|s| s.is_empty()) {
            shards.push(BTreeMap::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().map(|s| s.insert(name, t));
    }
    if shards.len() == 1 {
        save_safetensors(&dir.join("model.safetensors"), &shards[0])?;
    } else {
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut total = 0usize;
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
            for (k, t) in shard {
                weight_map.insert(k.clone(), file.clone().into());
                total += t.elem_count() * t.dtype().size_in_bytes();
            }
            save_safetensors(&dir.join(&file), shard)?;
        }
        write_json(
            &dir.join("model.safetensors.index.json"),
            &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }
    copy_tokenizer_files(base_dir, dir)?;
    Ok(dir.to_path_buf())
}

/// metrics.jsonl (one record per line) and loss_curve.svg.
pub fn write_metrics(dir: &Path, history: &[MetricRecord]) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lines: Vec<String> = history.iter().filter_map(|r| serde_json::to_string(r).ok()).collect();
    let path = dir.join("metrics.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").map_err(io_err(&path))?;
    let svg = dir.join("loss_curve.svg");
    std::fs::write(&svg, loss_curve_svg(history)).map_err(io_err(&svg))
}

/// What `training_summary.json` reports about a finished job.
pub struct Summary<'a> {
    pub spec: &'a JobSpec,
    pub base_name: &'a str,
    pub family: &'a str,
    pub device: String,
    pub dtype: DType,
    pub outcome: &'a Outcome,
    pub data: &'a ReadReport,
    /// SHA-256 of the training files (`data::fingerprint`).
    pub data_sha256: Option<&'a str>,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub trainable_parameters: usize,
    /// Data-parallel ranks (1: one device).
    pub ranks: usize,
    pub wall_time_secs: f64,
    pub merged: Option<&'a Path>,
    /// The test-set evaluation block (`eval::summary_json`), when the job had a test channel.
    pub evaluation: Option<serde_json::Value>,
}

impl Summary<'_> {
    /// The last training loss and the last validation loss the loop logged.
    pub fn final_losses(&self) -> (Option<f64>, Option<f64>) {
        let history = &self.outcome.state.history;
        (history.iter().rev().find_map(|r| r.loss), history.iter().rev().find_map(|r| r.eval_loss))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (final_loss, final_eval_loss) = self.final_losses();
        let o = self.outcome;
        serde_json::json!({
            "status": "completed",
            "method": self.spec.resolved.get("method"),
            "base_model": self.base_name,
            "model_family": self.family,
            "device": self.device,
            "dtype": format!("{:?}", self.dtype),
            "steps": o.state.step,
            "total_steps": o.total_steps,
            "epochs_completed": o.epochs_completed,
            "tokens_seen": o.state.tokens_seen,
            "train_examples": self.train_examples,
            "validation_examples": self.validation_examples,
            "trainable_parameters": self.trainable_parameters,
            "ranks": self.ranks,
            "effective_batch_size": self.spec.per_device_batch_size * self.spec.gradient_accumulation_steps * self.ranks,
            "final_train_loss": final_loss,
            "final_eval_loss": final_eval_loss,
            "wall_time_secs": self.wall_time_secs,
            "training_time_secs": o.state.elapsed_secs,
            "resumed_from": o.resumed_from.as_ref().map(|p| p.display().to_string()),
            "merged_model": self.merged.map(|p| p.display().to_string()),
            "data": {"format": self.data.format.name(), "files": self.data.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                     "rows": self.data.records.len(), "skipped_rows": self.data.skipped.len(), "sha256": self.data_sha256},
            "evaluation": self.evaluation,
            "hyperparameters": self.spec.resolved,
            "history": o.state.history,
        })
    }
}

/// `training_summary.json`, beside the adapter and in `output/data` (what SageMaker uploads as output).
pub fn write_summary(paths: &MlPaths, summary: &Summary) -> Result<(), TrainError> {
    let value = summary.to_json();
    write_json(&paths.model_dir().join("training_summary.json"), &value)?;
    write_json(&paths.output_data_dir().join("training_summary.json"), &value)
}
