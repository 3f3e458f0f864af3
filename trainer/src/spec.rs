//! The job spec: one typed schema, resolved from CLI flags > environment
//! (`OXTUNE_HP_<KEY>`) > `hyperparameters.json` > defaults.
//!
//! The schema is the table [`PARAMS`]; parsing, aliases, "did you mean"
//! suggestions, the README reference table and the launcher's validation all
//! read it, so a parameter is declared in exactly one place.

use std::collections::BTreeMap;
use std::fmt;

use crate::data::{DataFormat, DataSpec, FieldMap, TextMode, TrainOn};
use crate::grpo::loss::{LossType, ScaleRewards};

/// Prefix of environment variables that set hyperparameters.
pub const ENV_PREFIX: &str = "OXTUNE_HP_";

/// Where a raw value came from; shown in errors so users know which file or flag to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Cli,
    Env(String),
    Hyperparameters(String),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Cli => write!(f, "command line"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Hyperparameters(path) => write!(f, "{path}"),
            Origin::Default => write!(f, "default"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("unknown hyperparameter `{key}` (from {origin}){}; see the hyperparameter table in the README", suggestion_text(.suggestion))]
    UnknownKey { key: String, origin: Origin, suggestion: Option<String> },
    /// Boxed: the payload is large and every `Result` carrying a SpecError would pay for it.
    #[error(transparent)]
    BadValue(Box<BadValue>),
    #[error("conflicting hyperparameters: {0}")]
    Conflict(String),
    #[error("cannot read {path}: {problem}")]
    File { path: String, problem: String },
}

#[derive(Debug, thiserror::Error)]
#[error("bad value `{value}` for `{key}` (from {origin}): {problem}; allowed: {allowed}")]
pub struct BadValue {
    pub key: String,
    pub value: String,
    pub origin: Origin,
    pub problem: String,
    pub allowed: String,
}

fn suggestion_text(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" — did you mean `{s}`?"),
        None => String::new(),
    }
}

/// The kind of a parameter's value, used for parsing and for the docs.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int { min: i64 },
    Float { min: f64, max: f64 },
    Bool,
    Str,
    Choice(&'static [&'static str]),
    List,
}

impl Kind {
    pub fn describe(&self) -> String {
        match self {
            Kind::Int { min } => format!("integer ≥ {min}"),
            Kind::Float { min, max } if max.is_finite() => format!("number in [{min}, {max}]"),
            Kind::Float { min, .. } => format!("number ≥ {min}"),
            Kind::Bool => "true or false".into(),
            Kind::Str => "text".into(),
            Kind::Choice(c) => c.join(" | "),
            Kind::List => "comma-separated names or a JSON list".into(),
        }
    }
}

/// One parameter of the schema.
#[derive(Debug)]
pub struct ParamDef {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub kind: Kind,
    /// Default as the user would type it; "" means unset.
    pub default: &'static str,
    pub help: &'static str,
}

const F: f64 = f64::INFINITY;

/// The schema. Order is the order of the README table.
pub const PARAMS: &[ParamDef] = &[
    ParamDef { name: "base_model", aliases: &["model_id", "model_name_or_path", "base-model"], kind: Kind::Str, default: "",
        help: "Base model: empty = the `model` channel; a local directory; or a Hugging Face Hub id (downloaded when online, token from HF_TOKEN)." },
    ParamDef { name: "method", aliases: &[], kind: Kind::Choice(&["lora", "qlora", "grpo"]), default: "lora",
        help: "Fine-tuning method: `lora`, `qlora` (LoRA on an NF4 4-bit base, bitsandbytes-compatible) or `grpo`." },
    ParamDef { name: "load_in_4bit", aliases: &["load-in-4bit"], kind: Kind::Bool, default: "false",
        help: "QLoRA switch: quantise the base to NF4 while loading; true turns method=lora into qlora (grpo trains on the 4-bit base)." },
    ParamDef { name: "bnb_4bit_use_double_quant", aliases: &["bnb-4bit-use-double-quant"], kind: Kind::Bool, default: "true",
        help: "QLoRA: double quantisation of the NF4 absmax (8-bit, blocks of 256), as bitsandbytes." },
    ParamDef { name: "bnb_4bit_quant_type", aliases: &["bnb-4bit-quant-type"], kind: Kind::Choice(&["nf4", "fp4"]), default: "nf4",
        help: "QLoRA 4-bit type: `nf4`; `fp4` is refused (not implemented)." },
    ParamDef { name: "lora_r", aliases: &["lora-rank", "lora_rank", "lora-r", "r"], kind: Kind::Int { min: 1 }, default: "16",
        help: "LoRA rank." },
    ParamDef { name: "lora_alpha", aliases: &["lora-alpha"], kind: Kind::Float { min: 0.0, max: F }, default: "32",
        help: "LoRA alpha; scale = alpha/r (or alpha/sqrt(r) with use_rslora)." },
    ParamDef { name: "lora_dropout", aliases: &["lora-dropout"], kind: Kind::Float { min: 0.0, max: 0.99 }, default: "0.05",
        help: "Dropout on the LoRA input." },
    ParamDef { name: "use_rslora", aliases: &["use-rslora"], kind: Kind::Bool, default: "false",
        help: "Rank-stabilised scaling alpha/sqrt(r)." },
    ParamDef { name: "target_modules", aliases: &["target-modules", "lora_target_modules"], kind: Kind::List, default: "all-linear",
        help: "Modules that get adapters: names (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or `all-linear` (all of those; never lm_head)." },
    ParamDef { name: "learning_rate", aliases: &["learning-rate", "lr"], kind: Kind::Float { min: 0.0, max: F }, default: "2e-4",
        help: "Peak learning rate." },
    ParamDef { name: "lr_scheduler", aliases: &["lr_scheduler_type", "lr-scheduler", "lr-scheduler-type"], kind: Kind::Choice(&["constant", "linear", "cosine"]), default: "linear",
        help: "Decay after warmup: constant, linear to 0, or cosine to 0." },
    ParamDef { name: "warmup_ratio", aliases: &["warmup-ratio"], kind: Kind::Float { min: 0.0, max: 1.0 }, default: "0",
        help: "Warmup as a fraction of total steps (give this or warmup_steps)." },
    ParamDef { name: "warmup_steps", aliases: &["warmup-steps"], kind: Kind::Int { min: 0 }, default: "0",
        help: "Warmup in optimizer steps (linear from 0)." },
    ParamDef { name: "epochs", aliases: &["num_train_epochs", "num-train-epochs", "epoch", "num_epochs"], kind: Kind::Float { min: 0.0, max: F }, default: "1",
        help: "Passes over the training data (fractions allowed). Ignored when max_steps is set." },
    ParamDef { name: "max_steps", aliases: &["max-steps"], kind: Kind::Int { min: -1 }, default: "-1",
        help: "Total optimizer steps; -1 = derive from epochs." },
    ParamDef { name: "per_device_batch_size", aliases: &["batch_size", "batch-size", "per_device_train_batch_size", "per-device-train-batch-size", "train_batch_size"], kind: Kind::Int { min: 1 }, default: "4",
        help: "Sequences (rows, when packing) per micro-batch." },
    ParamDef { name: "gradient_accumulation_steps", aliases: &["gradient-accumulation-steps", "grad_accum"], kind: Kind::Int { min: 1 }, default: "1",
        help: "Micro-batches per optimizer step; the gradient equals the full-batch gradient (loss normalised by target tokens of the whole step)." },
    ParamDef { name: "max_seq_length", aliases: &["max_sequence_length", "max-seq-length", "max-sequence-length", "max_length", "max_seq_len"], kind: Kind::Int { min: 8 }, default: "1024",
        help: "Longer samples are truncated (start kept); packed rows have exactly this length." },
    ParamDef { name: "packing", aliases: &[], kind: Kind::Bool, default: "false",
        help: "Pack samples into full rows (positions restart, no attention across samples). Off: length-grouped padding." },
    ParamDef { name: "weight_decay", aliases: &["weight-decay"], kind: Kind::Float { min: 0.0, max: F }, default: "0",
        help: "Decoupled AdamW weight decay on LoRA weights." },
    ParamDef { name: "max_grad_norm", aliases: &["max-grad-norm"], kind: Kind::Float { min: 0.0, max: F }, default: "1.0",
        help: "Global gradient-norm clipping; 0 = off." },
    ParamDef { name: "gradient_checkpointing", aliases: &["gradient-checkpointing"], kind: Kind::Bool, default: "false",
        help: "Recompute each decoder layer in the backward instead of keeping its activations (less memory, about one extra forward)." },
    ParamDef { name: "optimizer", aliases: &["optim"], kind: Kind::Choice(&["adamw", "adamw_torch"]), default: "adamw",
        help: "Optimizer: AdamW with f32 moments (`adamw_torch` is accepted as a synonym)." },
    ParamDef { name: "adam_beta1", aliases: &[], kind: Kind::Float { min: 0.0, max: 0.999999 }, default: "0.9", help: "AdamW beta1." },
    ParamDef { name: "adam_beta2", aliases: &[], kind: Kind::Float { min: 0.0, max: 0.999999 }, default: "0.999", help: "AdamW beta2." },
    ParamDef { name: "adam_epsilon", aliases: &[], kind: Kind::Float { min: 0.0, max: F }, default: "1e-8", help: "AdamW epsilon." },
    ParamDef { name: "seed", aliases: &[], kind: Kind::Int { min: 0 }, default: "42",
        help: "Seed for LoRA init, shuffling, dropout and splits; same seed → identical loss sequence on CPU." },
    ParamDef { name: "dtype", aliases: &["torch_dtype", "compute_dtype"], kind: Kind::Choice(&["auto", "bf16", "f32"]), default: "auto",
        help: "Compute dtype of the frozen base: auto = bf16 on GPU, f32 on CPU. LoRA weights and optimizer state are always f32." },
    ParamDef { name: "format", aliases: &["data_format", "dataset_format"], kind: Kind::Choice(&["auto", "alpaca", "prompt_completion", "messages", "chat", "openai", "sharegpt", "text"]), default: "auto",
        help: "Data format; auto detects it from each file's first record and prints what it found." },
    ParamDef { name: "prompt_field", aliases: &[], kind: Kind::Str, default: "prompt", help: "Key/column of the prompt." },
    ParamDef { name: "completion_field", aliases: &["response_field"], kind: Kind::Str, default: "completion", help: "Key/column of the completion." },
    ParamDef { name: "messages_field", aliases: &[], kind: Kind::Str, default: "messages", help: "Key of the OpenAI-style message list." },
    ParamDef { name: "text_field", aliases: &["dataset_text_field"], kind: Kind::Str, default: "text", help: "Key/column of plain text." },
    ParamDef { name: "instruction_field", aliases: &[], kind: Kind::Str, default: "instruction", help: "Alpaca instruction key/column." },
    ParamDef { name: "input_field", aliases: &[], kind: Kind::Str, default: "input", help: "Alpaca input key/column." },
    ParamDef { name: "output_field", aliases: &[], kind: Kind::Str, default: "output", help: "Alpaca output key/column." },
    ParamDef { name: "system_field", aliases: &[], kind: Kind::Str, default: "system", help: "Optional system-prompt key/column." },
    ParamDef { name: "conversations_field", aliases: &[], kind: Kind::Str, default: "conversations", help: "ShareGPT conversation key." },
    ParamDef { name: "text_mode", aliases: &[], kind: Kind::Choice(&["lines", "file"]), default: "lines",
        help: ".txt files: one sample per line, or the whole file as one document (continued pretraining)." },
    ParamDef { name: "train_on", aliases: &["train-on"], kind: Kind::Choice(&["completion", "all"]), default: "completion",
        help: "Loss on completion/assistant tokens only, or on every token." },
    ParamDef { name: "skip_bad_rows", aliases: &[], kind: Kind::Bool, default: "false",
        help: "Skip malformed rows (counted and reported) instead of failing on the first one." },
    ParamDef { name: "validation_split", aliases: &["val_split", "validation-split"], kind: Kind::Float { min: 0.0, max: 0.5 }, default: "0",
        help: "Fraction of the training data held out for validation when there is no `validation` channel." },
    ParamDef { name: "logging_steps", aliases: &["logging-steps"], kind: Kind::Int { min: 1 }, default: "10",
        help: "Optimizer steps between METRIC lines." },
    ParamDef { name: "eval_steps", aliases: &["eval-steps"], kind: Kind::Int { min: 0 }, default: "0",
        help: "Steps between validation passes; 0 = only at the end." },
    ParamDef { name: "save_steps", aliases: &["save-steps"], kind: Kind::Int { min: 0 }, default: "100",
        help: "Steps between checkpoints in /opt/ml/checkpoints; 0 = only on SIGTERM. A checkpoint is always written on SIGTERM." },
    ParamDef { name: "save_total_limit", aliases: &[], kind: Kind::Int { min: 1 }, default: "2",
        help: "Checkpoints kept (older ones are deleted after a newer one is complete)." },
    ParamDef { name: "merge_adapter", aliases: &["merge_weights", "merge-weights", "merge-adapter"], kind: Kind::Bool, default: "false",
        help: "Also write the merged model (HF safetensors + config.json) into /opt/ml/model/merged." },
    // GRPO (method=grpo); names follow TRL's GRPOConfig.
    ParamDef { name: "num_generations", aliases: &["num-generations"], kind: Kind::Int { min: 2 }, default: "8",
        help: "GRPO: completions sampled per prompt (the group)." },
    ParamDef { name: "max_completion_length", aliases: &["max-completion-length"], kind: Kind::Int { min: 1 }, default: "256",
        help: "GRPO: longest completion, in tokens." },
    ParamDef { name: "max_prompt_length", aliases: &["max-prompt-length"], kind: Kind::Int { min: 1 }, default: "512",
        help: "GRPO: prompts are truncated to their last this-many tokens." },
    ParamDef { name: "temperature", aliases: &[], kind: Kind::Float { min: 0.0, max: F }, default: "1.0",
        help: "GRPO sampling temperature (0 = greedy)." },
    ParamDef { name: "top_p", aliases: &["top-p"], kind: Kind::Float { min: 0.0, max: 1.0 }, default: "1.0", help: "GRPO nucleus sampling mass." },
    ParamDef { name: "top_k", aliases: &["top-k"], kind: Kind::Int { min: 0 }, default: "0", help: "GRPO top-k sampling (0 = off)." },
    ParamDef { name: "stop_strings", aliases: &[], kind: Kind::List, default: "",
        help: "GRPO: a completion ends at the first of these strings (besides EOS)." },
    ParamDef { name: "beta", aliases: &[], kind: Kind::Float { min: 0.0, max: F }, default: "0.0",
        help: "GRPO KL coefficient; the reference policy is the base with adapters off (no second model copy)." },
    ParamDef { name: "epsilon", aliases: &[], kind: Kind::Float { min: 0.0, max: 1.0 }, default: "0.2", help: "GRPO lower clip range." },
    ParamDef { name: "epsilon_high", aliases: &[], kind: Kind::Float { min: 0.0, max: F }, default: "",
        help: "GRPO upper clip range (default: epsilon)." },
    ParamDef { name: "loss_type", aliases: &[], kind: Kind::Choice(&["grpo", "bnpo", "dr_grpo", "dapo"]), default: "dapo",
        help: "GRPO loss normalisation: grpo (per sequence), bnpo (micro-batch tokens), dr_grpo (sequences × max_completion_length), dapo (tokens of the whole step)." },
    ParamDef { name: "scale_rewards", aliases: &[], kind: Kind::Choice(&["group", "batch", "none", "true", "false"]), default: "group",
        help: "GRPO advantage scaling: divide by the group's or the batch's reward std, or not (true = group, false = none)." },
    ParamDef { name: "num_iterations", aliases: &[], kind: Kind::Int { min: 1 }, default: "1",
        help: "GRPO optimizer steps per generation batch (old log-probs stored at generation)." },
    ParamDef { name: "mask_truncated_completions", aliases: &[], kind: Kind::Bool, default: "false",
        help: "GRPO: completions cut at max_completion_length get no loss." },
    ParamDef { name: "reward_funcs", aliases: &["reward_functions"], kind: Kind::List, default: "exact_match",
        help: "GRPO rewards: exact_match, format, length, json, external (comma-separated)." },
    ParamDef { name: "reward_weights", aliases: &[], kind: Kind::List, default: "",
        help: "GRPO: one weight per reward function (default all 1)." },
    ParamDef { name: "answer_field", aliases: &[], kind: Kind::Str, default: "answer",
        help: "GRPO exact_match: the column holding the reference answer (GSM8K `#### 42` is understood)." },
    ParamDef { name: "format_regex", aliases: &[], kind: Kind::Str, default: "(?s)<think>.*</think>\\s*<answer>.*</answer>",
        help: "GRPO format reward: 1 when the completion matches this regex." },
    ParamDef { name: "reward_program", aliases: &[], kind: Kind::Str, default: "",
        help: "GRPO external reward: program path (absolute, or relative to /opt/ml/input/data) plus arguments; reads JSON lines, prints one score per line." },
    ParamDef { name: "reward_timeout", aliases: &[], kind: Kind::Float { min: 0.0, max: F }, default: "120",
        help: "GRPO: seconds the external reward program may take per batch." },
    ParamDef { name: "log_completions_steps", aliases: &[], kind: Kind::Int { min: 0 }, default: "10",
        help: "GRPO: every this many steps, sample completions with their rewards go to output/data/completions/ (0 = never)." },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Lora,
    Qlora,
    Grpo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    Auto,
    Bf16,
    F32,
}

/// LoRA target modules: explicit names or all linear projections of the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    AllLinear,
    Names(Vec<String>),
}

/// GRPO settings (used when method=grpo).
#[derive(Debug, Clone)]
pub struct GrpoSpec {
    pub num_generations: usize,
    pub max_completion_length: usize,
    pub max_prompt_length: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub stop_strings: Vec<String>,
    pub beta: f64,
    pub epsilon: f64,
    pub epsilon_high: f64,
    pub loss_type: LossType,
    pub scale_rewards: ScaleRewards,
    pub num_iterations: usize,
    pub mask_truncated_completions: bool,
    pub reward_funcs: Vec<String>,
    pub reward_weights: Vec<f64>,
    pub answer_field: String,
    pub format_regex: String,
    pub reward_program: String,
    pub reward_timeout_secs: f64,
    pub log_completions_steps: u64,
}

/// Built-in reward function names.
pub const REWARD_FUNCS: &[&str] = &["exact_match", "format", "length", "json", "external"];

/// The typed, validated job spec.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub base_model: String,
    pub method: Method,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub use_rslora: bool,
    pub target_modules: Targets,
    pub learning_rate: f64,
    pub lr_scheduler: Scheduler,
    pub warmup_ratio: f64,
    pub warmup_steps: u64,
    pub epochs: f64,
    pub max_steps: Option<u64>,
    pub per_device_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub max_seq_length: usize,
    pub packing: bool,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub seed: u64,
    pub dtype: DTypeChoice,
    pub data: DataSpec,
    pub validation_split: f64,
    pub logging_steps: u64,
    pub eval_steps: u64,
    pub save_steps: u64,
    pub save_total_limit: usize,
    /// QLoRA: NF4 base (method=qlora, or load_in_4bit).
    pub load_in_4bit: bool,
    /// QLoRA: double-quantise the absmax.
    pub bnb_4bit_use_double_quant: bool,
    pub merge_adapter: bool,
    /// Activation checkpointing per decoder layer.
    pub gradient_checkpointing: bool,
    pub grpo: GrpoSpec,
    /// Every parameter's final value as text, canonical names, for the summary.
    pub resolved: BTreeMap<String, String>,
}

impl JobSpec {
    /// LoRA scale applied to B(A x).
    pub fn lora_scale(&self) -> f64 {
        let r = self.lora_r as f64;
        if self.use_rslora {
            self.lora_alpha / r.sqrt()
        } else {
            self.lora_alpha / r
        }
    }

    /// Validate a SageMaker-style string map (what the launcher sends) exactly as the trainer reads it.
    pub fn from_hyperparameters(hp: &BTreeMap<String, String>) -> Result<JobSpec, SpecError> {
        let mut sources = Sources::default();
        for (k, v) in hp {
            sources.push(k, v, Origin::Hyperparameters("hyperparameters".into()))?;
        }
        sources.resolve()
    }
}

/// Raw key/value pairs collected from every source, keyed by canonical name.
#[derive(Debug, Default)]
pub struct Sources {
    /// canonical name → (value, origin). Later pushes of a higher-precedence source overwrite.
    values: BTreeMap<&'static str, (String, Origin)>,
}

/// Canonical parameter for a user-written key (case-insensitive, `-` and `_` equivalent).
pub fn lookup(key: &str) -> Option<&'static ParamDef> {
    let norm = normalise(key);
    PARAMS.iter().find(|p| p.name == norm || p.aliases.iter().any(|a| normalise(a) == norm))
}

fn normalise(key: &str) -> String {
    key.trim().trim_start_matches("--").to_ascii_lowercase().replace('-', "_")
}

/// Keys SageMaker tooling adds on its own (SDK `sagemaker_*`, tuning jobs' `_tuning_*`); never ours.
fn is_platform_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.starts_with("sagemaker_") || k.starts_with('_')
}

/// Closest known name within a small edit distance, for "did you mean".
pub fn suggest(key: &str) -> Option<String> {
    let norm = normalise(key);
    let mut best: Option<(usize, &str)> = None;
    for p in PARAMS {
        for cand in std::iter::once(&p.name).chain(p.aliases.iter()) {
            let d = edit_distance(&norm, &normalise(cand));
            if d <= 3.max(norm.len() / 4) && best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, p.name));
            }
        }
    }
    best.map(|(_, n)| n.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// SageMaker stores every hyperparameter as a string and SDKs JSON-encode non-strings,
/// so `"\"abc\""` means `abc`; plain text is taken as is (the toolkit's "JSON, else string" rule).
fn unquote(value: &str) -> String {
    let v = value.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        if let Ok(serde_json::Value::String(s)) = serde_json::from_str(v) {
            return s;
        }
    }
    v.to_string()
}

impl Sources {
    /// Add one raw value; unknown keys fail here with a suggestion. Platform keys are ignored.
    pub fn push(&mut self, key: &str, value: &str, origin: Origin) -> Result<(), SpecError> {
        if is_platform_key(key) {
            return Ok(());
        }
        let Some(def) = lookup(key) else {
            return Err(SpecError::UnknownKey { key: key.to_string(), origin, suggestion: suggest(key) });
        };
        self.values.insert(def.name, (unquote(value), origin));
        Ok(())
    }

    /// Read `hyperparameters.json` (object of strings; numbers/bools tolerated for hand-written files).
    pub fn push_hyperparameters_file(&mut self, path: &std::path::Path) -> Result<(), SpecError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError::File { path: shown.clone(), problem: e.to_string() })?;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| SpecError::File {
                path: shown.clone(),
                problem: format!("not a JSON object of strings ({e}); SageMaker writes {{\"key\": \"value\", ...}}"),
            })?;
        for (k, v) in map {
            let value = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            self.push(&k, &value, Origin::Hyperparameters(shown.clone()))?;
        }
        Ok(())
    }

    /// Environment overrides: `OXTUNE_HP_<NAME>` (upper case), e.g. `OXTUNE_HP_LEARNING_RATE=1e-4`.
    /// A dedicated prefix, so other `OXTUNE_*` settings (root, log level, device) never read as hyperparameters.
    pub fn push_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), SpecError> {
        for (k, v) in vars {
            if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
                self.push(rest, &v, Origin::Env(k.clone()))?;
            }
        }
        Ok(())
    }

    fn raw(&self, name: &'static str) -> (String, Origin) {
        match self.values.get(name) {
            Some(v) => v.clone(),
            None => {
                let def = lookup(name).expect("schema name");
                (def.default.to_string(), Origin::Default)
            }
        }
    }

    /// Type-check everything and build the spec.
    pub fn resolve(&self) -> Result<JobSpec, SpecError> {
        let mut resolved = BTreeMap::new();
        for p in PARAMS {
            let (v, origin) = self.raw(p.name);
            check_kind(p, &v, &origin)?;
            resolved.insert(p.name.to_string(), v);
        }
        let get = |n: &'static str| self.raw(n);
        let int = |n: &'static str| -> i64 { get(n).0.trim().parse::<f64>().map(|f| f as i64).unwrap_or(0) };
        let float = |n: &'static str| -> f64 { get(n).0.trim().parse::<f64>().unwrap_or(0.0) };
        let boolean = |n: &'static str| -> bool { parse_bool(&get(n).0).unwrap_or(false) };
        let text = |n: &'static str| -> String { get(n).0 };

        let mut method = match text("method").to_ascii_lowercase().as_str() {
            "qlora" => Method::Qlora,
            "grpo" => Method::Grpo,
            _ => Method::Lora,
        };
        // QLoRA switches: load_in_4bit turns lora into qlora; fp4 is not implemented.
        if text("bnb_4bit_quant_type").trim().eq_ignore_ascii_case("fp4") {
            let (v, origin) = get("bnb_4bit_quant_type");
            return Err(bad(
                "bnb_4bit_quant_type",
                &v,
                &origin,
                "fp4 is not implemented in oxtune (only NF4, the QLoRA default)",
                "nf4",
            ));
        }
        let load_in_4bit = boolean("load_in_4bit") || method == Method::Qlora;
        if load_in_4bit && method == Method::Lora {
            method = Method::Qlora;
            resolved.insert("method".to_string(), "qlora".to_string());
        }
        if load_in_4bit {
            resolved.insert("load_in_4bit".to_string(), "true".to_string());
        }
        let lr_scheduler = match text("lr_scheduler").to_ascii_lowercase().as_str() {
            "constant" => Scheduler::Constant,
            "cosine" => Scheduler::Cosine,
            _ => Scheduler::Linear,
        };
        let dtype = match text("dtype").to_ascii_lowercase().as_str() {
            "bf16" => DTypeChoice::Bf16,
            "f32" => DTypeChoice::F32,
            _ => DTypeChoice::Auto,
        };
        let target_modules = parse_targets(&text("target_modules"), &get("target_modules").1)?;
        let max_steps = match int("max_steps") {
            n if n > 0 => Some(n as u64),
            0 => {
                let (v, origin) = get("max_steps");
                return Err(bad("max_steps", &v, &origin, "0 steps would train nothing", "-1 (use epochs) or ≥ 1"));
            }
            _ => None,
        };
        if max_steps.is_none() && float("epochs") <= 0.0 {
            let (v, origin) = get("epochs");
            return Err(bad("epochs", &v, &origin, "must be > 0 when max_steps is not set", "a positive number"));
        }
        if self.values.contains_key("warmup_ratio") && self.values.contains_key("warmup_steps") {
            return Err(SpecError::Conflict("both warmup_ratio and warmup_steps are set; give only one".into()));
        }
        let format: DataFormat = text("format").parse().map_err(|e: String| {
            let (v, origin) = get("format");
            bad("format", &v, &origin, &e, &Kind::Choice(&[]).describe())
        })?;
        let data = DataSpec {
            format,
            fields: FieldMap {
                prompt: text("prompt_field"),
                completion: text("completion_field"),
                messages: text("messages_field"),
                text: text("text_field"),
                instruction: text("instruction_field"),
                input: text("input_field"),
                output: text("output_field"),
                system: text("system_field"),
                conversations: text("conversations_field"),
            },
            train_on: if text("train_on").eq_ignore_ascii_case("all") { TrainOn::All } else { TrainOn::Completion },
            max_seq_length: int("max_seq_length") as usize,
            skip_bad_rows: boolean("skip_bad_rows"),
            text_mode: if text("text_mode").eq_ignore_ascii_case("file") { TextMode::File } else { TextMode::Lines },
            prompt_only: method == Method::Grpo,
        };
        let grpo =
            self.grpo_spec(method, int("per_device_batch_size") as usize, int("gradient_accumulation_steps") as usize)?;
        Ok(JobSpec {
            base_model: text("base_model").trim().to_string(),
            method,
            lora_r: int("lora_r") as usize,
            lora_alpha: float("lora_alpha"),
            lora_dropout: float("lora_dropout"),
            use_rslora: boolean("use_rslora"),
            target_modules,
            learning_rate: float("learning_rate"),
            lr_scheduler,
            warmup_ratio: float("warmup_ratio"),
            warmup_steps: int("warmup_steps") as u64,
            epochs: float("epochs"),
            max_steps,
            per_device_batch_size: int("per_device_batch_size") as usize,
            gradient_accumulation_steps: int("gradient_accumulation_steps") as usize,
            max_seq_length: int("max_seq_length") as usize,
            packing: boolean("packing"),
            weight_decay: float("weight_decay"),
            max_grad_norm: float("max_grad_norm"),
            adam_beta1: float("adam_beta1"),
            adam_beta2: float("adam_beta2"),
            adam_epsilon: float("adam_epsilon"),
            seed: int("seed") as u64,
            dtype,
            data,
            validation_split: float("validation_split"),
            logging_steps: int("logging_steps") as u64,
            eval_steps: int("eval_steps") as u64,
            save_steps: int("save_steps") as u64,
            save_total_limit: int("save_total_limit") as usize,
            merge_adapter: boolean("merge_adapter"),
            gradient_checkpointing: boolean("gradient_checkpointing"),
            load_in_4bit,
            bnb_4bit_use_double_quant: boolean("bnb_4bit_use_double_quant"),
            grpo,
            resolved,
        })
    }
}

impl Sources {
    fn grpo_spec(&self, method: Method, batch: usize, accumulation: usize) -> Result<GrpoSpec, SpecError> {
        let get = |n: &'static str| self.raw(n);
        let text = |n: &'static str| get(n).0.trim().to_string();
        let float = |n: &'static str| text(n).parse::<f64>().unwrap_or(0.0);
        let int = |n: &'static str| text(n).parse::<f64>().map(|f| f as i64).unwrap_or(0);
        let list = |n: &'static str| -> Result<Vec<String>, SpecError> {
            let (v, origin) = get(n);
            let v = v.trim();
            if v.starts_with('[') {
                return serde_json::from_str::<Vec<serde_json::Value>>(v)
                    .map(|items| {
                        items
                            .into_iter()
                            .map(|i| i.as_str().map(String::from).unwrap_or_else(|| i.to_string()))
                            .collect()
                    })
                    .map_err(|e| bad(n, v, &origin, &format!("not a JSON list ({e})"), &Kind::List.describe()));
            }
            Ok(v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        };
        let reward_funcs = list("reward_funcs")?;
        for f in &reward_funcs {
            if !REWARD_FUNCS.contains(&f.as_str()) {
                let (v, origin) = get("reward_funcs");
                let close =
                    REWARD_FUNCS.iter().min_by_key(|c| edit_distance(f, c)).filter(|c| edit_distance(f, c) <= 3);
                let problem = match close {
                    Some(c) => format!("unknown reward `{f}` — did you mean `{c}`?"),
                    None => format!("unknown reward `{f}`"),
                };
                return Err(bad("reward_funcs", &v, &origin, &problem, &REWARD_FUNCS.join(", ")));
            }
        }
        let weights_raw = list("reward_weights")?;
        let reward_weights = if weights_raw.is_empty() {
            vec![1.0; reward_funcs.len()]
        } else {
            let (v, origin) = get("reward_weights");
            let w: Vec<f64> = weights_raw
                .iter()
                .map(|x| {
                    x.parse::<f64>()
                        .map_err(|_| bad("reward_weights", &v, &origin, &format!("`{x}` is not a number"), "numbers"))
                })
                .collect::<Result<_, _>>()?;
            if w.len() != reward_funcs.len() {
                return Err(bad(
                    "reward_weights",
                    &v,
                    &origin,
                    &format!("{} weights for {} reward functions", w.len(), reward_funcs.len()),
                    "one weight per reward function",
                ));
            }
            w
        };
        let format_regex = get("format_regex").0;
        if let Err(e) = regex::Regex::new(&format_regex) {
            return Err(bad(
                "format_regex",
                &format_regex,
                &get("format_regex").1,
                &format!("invalid regex: {e}"),
                "a regular expression",
            ));
        }
        let reward_program = text("reward_program");
        if reward_funcs.iter().any(|f| f == "external") && reward_program.is_empty() {
            return Err(SpecError::Conflict("reward_funcs includes `external` but reward_program is not set".into()));
        }
        let num_generations = int("num_generations") as usize;
        if method == Method::Grpo && !(batch * accumulation).is_multiple_of(num_generations) {
            return Err(SpecError::Conflict(format!(
                "method=grpo needs per_device_batch_size × gradient_accumulation_steps ({batch} × {accumulation}) to be a multiple of num_generations ({num_generations}): each step trains whole groups"
            )));
        }
        let epsilon = float("epsilon");
        let epsilon_high = if text("epsilon_high").is_empty() { epsilon } else { float("epsilon_high") };
        Ok(GrpoSpec {
            num_generations,
            max_completion_length: int("max_completion_length") as usize,
            max_prompt_length: int("max_prompt_length") as usize,
            temperature: float("temperature"),
            top_p: float("top_p"),
            top_k: int("top_k") as usize,
            stop_strings: list("stop_strings")?,
            beta: float("beta"),
            epsilon,
            epsilon_high,
            loss_type: match text("loss_type").to_ascii_lowercase().as_str() {
                "grpo" => LossType::Grpo,
                "bnpo" => LossType::Bnpo,
                "dr_grpo" => LossType::DrGrpo,
                _ => LossType::Dapo,
            },
            scale_rewards: match text("scale_rewards").to_ascii_lowercase().as_str() {
                "batch" => ScaleRewards::Batch,
                "none" | "false" => ScaleRewards::None,
                _ => ScaleRewards::Group,
            },
            num_iterations: int("num_iterations") as usize,
            mask_truncated_completions: parse_bool(&text("mask_truncated_completions")).unwrap_or(false),
            reward_funcs,
            reward_weights,
            answer_field: text("answer_field"),
            format_regex,
            reward_program,
            reward_timeout_secs: float("reward_timeout"),
            log_completions_steps: int("log_completions_steps") as u64,
        })
    }
}

fn bad(key: &str, value: &str, origin: &Origin, problem: &str, allowed: &str) -> SpecError {
    SpecError::BadValue(Box::new(BadValue {
        key: key.to_string(),
        value: value.to_string(),
        origin: origin.clone(),
        problem: problem.to_string(),
        allowed: allowed.to_string(),
    }))
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn check_kind(p: &ParamDef, v: &str, origin: &Origin) -> Result<(), SpecError> {
    let err = |problem: &str| bad(p.name, v, origin, problem, &p.kind.describe());
    if p.default.is_empty() && v.trim().is_empty() {
        return Ok(()); // optional and unset
    }
    match p.kind {
        Kind::Int { min } => {
            let f: f64 = v.trim().parse().map_err(|_| err("not an integer"))?;
            if f.fract() != 0.0 {
                return Err(err("not a whole number"));
            }
            if (f as i64) < min {
                return Err(err("too small"));
            }
        }
        Kind::Float { min, max } => {
            let f: f64 = v.trim().parse().map_err(|_| err("not a number"))?;
            if !f.is_finite() || f < min || f > max {
                return Err(err("out of range"));
            }
        }
        Kind::Bool => {
            parse_bool(v).ok_or_else(|| err("not a boolean"))?;
        }
        Kind::Choice(choices) => {
            let lower = v.trim().to_ascii_lowercase();
            if !choices.contains(&lower.as_str()) {
                let close =
                    choices.iter().min_by_key(|c| edit_distance(&lower, c)).filter(|c| edit_distance(&lower, c) <= 3);
                let problem = match close {
                    Some(c) => format!("not one of the choices — did you mean `{c}`?"),
                    None => "not one of the choices".into(),
                };
                return Err(err(&problem));
            }
        }
        Kind::Str | Kind::List => {}
    }
    Ok(())
}

/// Module names the decoder has; `all-linear` means all of them (PEFT excludes lm_head too).
pub const LINEAR_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn parse_targets(v: &str, origin: &Origin) -> Result<Targets, SpecError> {
    let v = v.trim();
    let names: Vec<String> = if v.starts_with('[') {
        serde_json::from_str::<Vec<String>>(v).map_err(|e| {
            bad("target_modules", v, origin, &format!("not a JSON list of strings ({e})"), &Kind::List.describe())
        })?
    } else {
        v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    };
    if names.len() == 1 && matches!(names[0].to_ascii_lowercase().as_str(), "all-linear" | "all_linear" | "all") {
        return Ok(Targets::AllLinear);
    }
    if names.is_empty() {
        return Err(bad("target_modules", v, origin, "empty", "module names or all-linear"));
    }
    for n in &names {
        if !LINEAR_MODULES.contains(&n.as_str()) {
            let close = LINEAR_MODULES.iter().min_by_key(|c| edit_distance(n, c)).filter(|c| edit_distance(n, c) <= 3);
            let problem = match close {
                Some(c) => format!("unknown module `{n}` — did you mean `{c}`?"),
                None => format!("unknown module `{n}`"),
            };
            return Err(bad(
                "target_modules",
                v,
                origin,
                &problem,
                &format!("{} or all-linear", LINEAR_MODULES.join(", ")),
            ));
        }
    }
    Ok(Targets::Names(names))
}

/// The README's hyperparameter table, generated from [`PARAMS`] (a test keeps the README in sync).
pub fn markdown_table() -> String {
    let mut s = String::from("| name | aliases | type | default | meaning |\n|---|---|---|---|---|\n");
    for p in PARAMS {
        let aliases = p.aliases.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ");
        let default = if p.default.is_empty() { "—".to_string() } else { format!("`{}`", p.default) };
        s.push_str(&format!("| `{}` | {} | {} | {} | {} |\n", p.name, aliases, p.kind.describe(), default, p.help));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_resolve() {
        let spec = JobSpec::from_hyperparameters(&BTreeMap::new()).unwrap();
        assert_eq!(spec.method, Method::Lora);
        assert_eq!(spec.lora_r, 16);
        assert_eq!(spec.target_modules, Targets::AllLinear);
        assert_eq!(spec.max_steps, None);
        assert!((spec.lora_scale() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn aliases_and_json_strings() {
        let spec = JobSpec::from_hyperparameters(&hp(&[
            ("batch_size", "8"),
            ("max-seq-length", "\"512\""),
            ("lora-rank", "4"),
            ("num-train-epochs", "2"),
            ("learning-rate", "1e-4"),
            ("max_sequence_length", "256"),
            ("target_modules", "[\"q_proj\", \"v_proj\"]"),
            ("sagemaker_program", "ignored.py"),
        ]))
        .unwrap();
        assert_eq!(spec.per_device_batch_size, 8);
        assert_eq!(spec.lora_r, 4);
        assert_eq!(spec.epochs, 2.0);
        assert_eq!(spec.learning_rate, 1e-4);
        assert_eq!(spec.target_modules, Targets::Names(vec!["q_proj".into(), "v_proj".into()]));
        assert_eq!(spec.max_seq_length, 256);
    }

    #[test]
    fn unknown_key_suggests() {
        let err = JobSpec::from_hyperparameters(&hp(&[("learning_rat", "1")])).unwrap_err().to_string();
        assert!(err.contains("learning_rat") && err.contains("did you mean `learning_rate`"), "{err}");
    }

    #[test]
    fn bad_values_name_key_value_and_allowed() {
        let err = JobSpec::from_hyperparameters(&hp(&[("lora_r", "abc")])).unwrap_err().to_string();
        assert!(err.contains("lora_r") && err.contains("abc") && err.contains("integer"), "{err}");
        let err = JobSpec::from_hyperparameters(&hp(&[("lr_scheduler", "cosin")])).unwrap_err().to_string();
        assert!(err.contains("did you mean `cosine`") && err.contains("constant | linear | cosine"), "{err}");
        let err = JobSpec::from_hyperparameters(&hp(&[("target_modules", "q_prj")])).unwrap_err().to_string();
        assert!(err.contains("did you mean `q_proj`"), "{err}");
        let err = JobSpec::from_hyperparameters(&hp(&[("packing", "maybe")])).unwrap_err().to_string();
        assert!(err.contains("true or false"), "{err}");
    }

    #[test]
    fn precedence_cli_over_env_over_file() {
        let mut s = Sources::default();
        s.push("lora_r", "4", Origin::Hyperparameters("hp.json".into())).unwrap();
        s.push_env([
            ("OXTUNE_HP_LORA_R".to_string(), "8".to_string()),
            ("OXTUNE_ML_ROOT".to_string(), "/x".to_string()),
        ])
        .unwrap();
        assert_eq!(s.resolve().unwrap().lora_r, 8);
        s.push("--lora-r", "2", Origin::Cli).unwrap();
        assert_eq!(s.resolve().unwrap().lora_r, 2);
    }

    #[test]
    fn warmup_conflict() {
        let err = JobSpec::from_hyperparameters(&hp(&[("warmup_ratio", "0.1"), ("warmup_steps", "3")])).unwrap_err();
        assert!(err.to_string().contains("warmup"));
    }
}
