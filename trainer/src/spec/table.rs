//! The parameter table: every hyperparameter's name, aliases, kind, default and help, in
//! one place. Resolution, "did you mean", the README table and the launcher all read it.

use super::{DTypeChoice, Method, Optimizer, QuantType, Scheduler};
use crate::data::{DataFormat, TextMode, TrainOn};
use crate::grpo_loss::{LossType, ScaleRewards};

/// The kind of a parameter's value, used for parsing and for the docs.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int {
        min: i64,
    },
    Float {
        min: f64,
        max: f64,
    },
    Bool,
    Str,
    /// One of these names: a choice enum's `NAMES` (`crate::choice`), never a list of its own.
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
    ParamDef { name: "method", aliases: &[], kind: Kind::Choice(Method::NAMES), default: "lora",
        help: "Fine-tuning method: `lora`, `qlora` (LoRA on an NF4 4-bit base, bitsandbytes-compatible) or `grpo`." },
    ParamDef { name: "load_in_4bit", aliases: &["load-in-4bit"], kind: Kind::Bool, default: "false",
        help: "QLoRA switch: quantise the base to NF4 while loading; true turns method=lora into qlora (grpo trains on the 4-bit base)." },
    ParamDef { name: "bnb_4bit_use_double_quant", aliases: &["bnb-4bit-use-double-quant"], kind: Kind::Bool, default: "true",
        help: "QLoRA: double quantisation of the NF4 absmax (8-bit, blocks of 256), as bitsandbytes." },
    ParamDef { name: "bnb_4bit_quant_type", aliases: &["bnb-4bit-quant-type"], kind: Kind::Choice(QuantType::NAMES), default: "nf4",
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
    ParamDef { name: "lr_scheduler", aliases: &["lr_scheduler_type", "lr-scheduler", "lr-scheduler-type"], kind: Kind::Choice(Scheduler::NAMES), default: "linear",
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
    ParamDef { name: "max_source_length", aliases: &["max-source-length", "max_input_length", "max-input-length"], kind: Kind::Int { min: 8 }, default: "",
        help: "T5: tokens of the encoder input (longer inputs keep their start and EOS); unset = max_seq_length." },
    ParamDef { name: "max_target_length", aliases: &["max-target-length", "max_output_length", "max-output-length"], kind: Kind::Int { min: 1 }, default: "128",
        help: "T5: tokens of the decoder target (longer targets keep their start and EOS); truncations are counted in the log." },
    ParamDef { name: "packing", aliases: &[], kind: Kind::Bool, default: "false",
        help: "Pack samples into full rows (positions restart, no attention across samples). Off: length-grouped padding." },
    ParamDef { name: "weight_decay", aliases: &["weight-decay"], kind: Kind::Float { min: 0.0, max: F }, default: "0",
        help: "Decoupled AdamW weight decay on LoRA weights." },
    ParamDef { name: "max_grad_norm", aliases: &["max-grad-norm"], kind: Kind::Float { min: 0.0, max: F }, default: "1.0",
        help: "Global gradient-norm clipping; 0 = off." },
    ParamDef { name: "gradient_checkpointing", aliases: &["gradient-checkpointing"], kind: Kind::Bool, default: "false",
        help: "Recompute each decoder layer in the backward instead of keeping its activations (less memory, about one extra forward)." },
    ParamDef { name: "optimizer", aliases: &["optim"], kind: Kind::Choice(Optimizer::NAMES), default: "adamw",
        help: "Optimizer: AdamW with f32 moments (`adamw_torch` is accepted as a synonym)." },
    ParamDef { name: "adam_beta1", aliases: &[], kind: Kind::Float { min: 0.0, max: 0.999999 }, default: "0.9", help: "AdamW beta1." },
    ParamDef { name: "adam_beta2", aliases: &[], kind: Kind::Float { min: 0.0, max: 0.999999 }, default: "0.999", help: "AdamW beta2." },
    ParamDef { name: "adam_epsilon", aliases: &[], kind: Kind::Float { min: 0.0, max: F }, default: "1e-8", help: "AdamW epsilon." },
    ParamDef { name: "seed", aliases: &[], kind: Kind::Int { min: 0 }, default: "42",
        help: "Seed for LoRA init, shuffling, dropout and splits; same seed → identical loss sequence on CPU." },
    ParamDef { name: "num_gpus", aliases: &["num-gpus", "nproc_per_node"], kind: Kind::Int { min: 0 }, default: "0",
        help: "Data parallelism: ranks per host, one process per GPU (0 = every GPU of the host); on a host without GPUs, this many CPU ranks (0 = one). World size = hosts × ranks per host; effective batch = per_device_batch_size × gradient_accumulation_steps × world size." },
    ParamDef { name: "dtype", aliases: &["torch_dtype", "compute_dtype"], kind: Kind::Choice(DTypeChoice::NAMES), default: "auto",
        help: "Compute dtype of the frozen base: auto = bf16 on GPU, f32 on CPU. LoRA weights and optimizer state are always f32. No f16: T5's feed-forward overflows in it and bf16 has the range f16 lacks." },
    ParamDef { name: "format", aliases: &["data_format", "dataset_format"], kind: Kind::Choice(DataFormat::NAMES), default: "auto",
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
    ParamDef { name: "text_mode", aliases: &[], kind: Kind::Choice(TextMode::NAMES), default: "lines",
        help: ".txt files: one sample per line, or the whole file as one document (continued pretraining)." },
    ParamDef { name: "train_on", aliases: &["train-on"], kind: Kind::Choice(TrainOn::NAMES), default: "completion",
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
    // Evaluation on the `test` channel after training.
    ParamDef { name: "eval_max_new_tokens", aliases: &["eval-max-new-tokens", "max_new_tokens"], kind: Kind::Int { min: 1 }, default: "256",
        help: "Evaluation: longest prediction, in tokens." },
    ParamDef { name: "eval_temperature", aliases: &["eval-temperature"], kind: Kind::Float { min: 0.0, max: F }, default: "0",
        help: "Evaluation sampling temperature (0 = greedy, the default)." },
    ParamDef { name: "eval_top_p", aliases: &["eval-top-p"], kind: Kind::Float { min: 0.0, max: 1.0 }, default: "1.0",
        help: "Evaluation nucleus mass when eval_temperature > 0." },
    ParamDef { name: "eval_batch_size", aliases: &["eval-batch-size", "per_device_eval_batch_size"], kind: Kind::Int { min: 1 }, default: "8",
        help: "Evaluation: prompts generated together." },
    ParamDef { name: "eval_stop_strings", aliases: &["eval_stop", "eval-stop-strings"], kind: Kind::List, default: "",
        help: "Evaluation: a prediction ends before the first of these strings (besides EOS)." },
    ParamDef { name: "eval_max_samples", aliases: &["max_eval_samples", "eval-max-samples"], kind: Kind::Int { min: 0 }, default: "0",
        help: "Evaluation: score only the first this-many test rows (0 = all)." },
    ParamDef { name: "eval_baseline", aliases: &["eval-baseline"], kind: Kind::Bool, default: "false",
        help: "Also evaluate the base model (adapters off) before training, so the summary shows the gain." },
    ParamDef { name: "eval_exact_match", aliases: &["eval-exact-match"], kind: Kind::List, default: "strip,whitespace,case",
        help: "Exact-match normalisation of both sides: any of strip, whitespace (collapse runs), case, punctuation; `none` = plain equality." },
    ParamDef { name: "eval_rouge_stemmer", aliases: &["rouge_use_stemmer", "use_stemmer"], kind: Kind::Bool, default: "false",
        help: "ROUGE with the Porter stemmer (rouge-score's use_stemmer=True); recorded with the scores." },
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
    ParamDef { name: "loss_type", aliases: &[], kind: Kind::Choice(LossType::NAMES), default: "dapo",
        help: "GRPO loss normalisation: grpo (per sequence), bnpo (micro-batch tokens), dr_grpo (sequences × max_completion_length), dapo (tokens of the whole step)." },
    ParamDef { name: "scale_rewards", aliases: &[], kind: Kind::Choice(ScaleRewards::NAMES), default: "group",
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

/// Canonical parameter for a user-written key (case-insensitive, `-` and `_` equivalent).
pub fn lookup(key: &str) -> Option<&'static ParamDef> {
    let norm = normalise(key);
    PARAMS.iter().find(|p| p.name == norm || p.aliases.iter().any(|a| normalise(a) == norm))
}

pub(super) fn normalise(key: &str) -> String {
    key.trim().trim_start_matches("--").to_ascii_lowercase().replace('-', "_")
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

pub fn edit_distance(a: &str, b: &str) -> usize {
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

/// The README's hyperparameter table, generated from [`PARAMS`] (a test keeps the README in sync).
pub fn markdown_table() -> String {
    let mut s = String::from("| name | aliases | type | default | meaning |\n|---|---|---|---|---|\n");
    for p in PARAMS {
        let aliases = p.aliases.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ");
        let default = if p.default.is_empty() { "—".to_string() } else { format!("`{}`", p.default) };
        // A choice's `a | b` would split the table's cell.
        let kind = p.kind.describe().replace('|', "\\|");
        s.push_str(&format!("| `{}` | {} | {} | {} | {} |\n", p.name, aliases, kind, default, p.help));
    }
    s
}
