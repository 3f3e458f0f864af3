//! Resolution: raw values from every source (CLI flags > environment > `hyperparameters.json` >
//! defaults), type-checked against the table and turned into a [`JobSpec`].

use std::collections::BTreeMap;
use std::fmt;

use super::table::{edit_distance, lookup, suggest, Kind, ParamDef, PARAMS};
use super::{DTypeChoice, JobSpec, Method, Optimizer, QuantType, Scheduler};
use crate::choice::Choice;
use crate::data::{DataFormat, DataSpec, FieldMap, TextMode, TrainOn};
use crate::lora::{Targets, LINEAR_MODULES, T5_LINEAR_MODULES};

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

/// Raw key/value pairs collected from every source, keyed by canonical name.
#[derive(Debug, Default)]
pub struct Sources {
    /// canonical name → (value, origin). Later pushes of a higher-precedence source overwrite.
    pub(super) values: BTreeMap<&'static str, (String, Origin)>,
}

/// Keys SageMaker tooling adds on its own (SDK `sagemaker_*`, tuning jobs' `_tuning_*`); never ours.
fn is_platform_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.starts_with("sagemaker_") || k.starts_with('_')
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

    pub(super) fn raw(&self, name: &'static str) -> (String, Origin) {
        match self.values.get(name) {
            Some(v) => v.clone(),
            None => {
                let def = lookup(name).expect("schema name");
                (def.default.to_string(), Origin::Default)
            }
        }
    }

    /// A choice parameter as its enum (its value was checked against the enum's names).
    pub(super) fn choice<C: Choice>(&self, name: &'static str) -> Result<C, SpecError> {
        let (v, origin) = self.raw(name);
        C::parse(&v).ok_or_else(|| bad(name, &v, &origin, "not one of the choices", &C::NAMES.join(" | ")))
    }

    /// A list parameter: a JSON list, or comma-separated names (empty items dropped).
    pub(super) fn list(&self, name: &'static str) -> Result<Vec<String>, SpecError> {
        let (v, origin) = self.raw(name);
        let v = v.trim();
        if v.starts_with('[') {
            return serde_json::from_str::<Vec<serde_json::Value>>(v)
                .map(|items| {
                    items.into_iter().map(|i| i.as_str().map(String::from).unwrap_or_else(|| i.to_string())).collect()
                })
                .map_err(|e| bad(name, v, &origin, &format!("not a JSON list ({e})"), &Kind::List.describe()));
        }
        Ok(v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
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

        let mut method: Method = self.choice("method")?;
        // QLoRA switches: load_in_4bit turns lora into qlora; fp4 is not implemented.
        match self.choice::<QuantType>("bnb_4bit_quant_type")? {
            QuantType::Nf4 => {}
            QuantType::Fp4 => {
                let (v, origin) = get("bnb_4bit_quant_type");
                return Err(bad(
                    "bnb_4bit_quant_type",
                    &v,
                    &origin,
                    "fp4 is not implemented in oxtune (only NF4, the QLoRA default)",
                    "nf4",
                ));
            }
        }
        // One optimizer: AdamW, whichever of its names was given.
        let Optimizer::AdamW = self.choice::<Optimizer>("optimizer")?;
        let load_in_4bit = boolean("load_in_4bit") || method == Method::Qlora;
        if load_in_4bit && method == Method::Lora {
            method = Method::Qlora;
            resolved.insert("method".to_string(), "qlora".to_string());
        }
        if load_in_4bit {
            resolved.insert("load_in_4bit".to_string(), "true".to_string());
        }
        let max_source_length = match int("max_source_length") {
            n if n > 0 => n as usize,
            _ => int("max_seq_length") as usize,
        };
        resolved.insert("max_source_length".to_string(), max_source_length.to_string());
        let lr_scheduler: Scheduler = self.choice("lr_scheduler")?;
        let dtype: DTypeChoice = self.choice("dtype")?;
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
        let format: DataFormat = self.choice("format")?;
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
            train_on: self.choice::<TrainOn>("train_on")?,
            max_seq_length: int("max_seq_length") as usize,
            skip_bad_rows: boolean("skip_bad_rows"),
            text_mode: self.choice::<TextMode>("text_mode")?,
            prompt_only: method == Method::Grpo,
            mapping_help: crate::data::TRAINER_MAPPING_HELP.to_string(),
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
            max_source_length,
            max_target_length: int("max_target_length") as usize,
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
            num_gpus: int("num_gpus") as usize,
            load_in_4bit,
            bnb_4bit_use_double_quant: boolean("bnb_4bit_use_double_quant"),
            eval: self.eval_spec(method)?,
            grpo,
            resolved,
        })
    }
}

pub(super) fn bad(key: &str, value: &str, origin: &Origin, problem: &str, allowed: &str) -> SpecError {
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
                let half = p.name == "dtype" && matches!(lower.as_str(), "f16" | "fp16" | "float16" | "half");
                let problem = match close {
                    // The one choice users reach for that is left out on purpose: say why.
                    _ if half => "f16 is not offered: T5's feed-forward overflows in fp16 (and its range is short \
                         for every family); bf16 runs on every supported GPU"
                        .to_string(),
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
    // Which family the names must belong to is checked once the model is known (JobSpec::lora_config).
    let known: Vec<&str> = LINEAR_MODULES.iter().chain(T5_LINEAR_MODULES).copied().collect();
    for n in &names {
        if !known.contains(&n.as_str()) {
            let close = known.iter().min_by_key(|c| edit_distance(n, c)).filter(|c| edit_distance(n, c) <= 3);
            let problem = match close {
                Some(c) => format!("unknown module `{n}` — did you mean `{c}`?"),
                None => format!("unknown module `{n}`"),
            };
            return Err(bad(
                "target_modules",
                v,
                origin,
                &problem,
                &format!(
                    "{} (Llama, Mistral, Qwen2), {} (T5) or all-linear",
                    LINEAR_MODULES.join(", "),
                    T5_LINEAR_MODULES.join(", ")
                ),
            ));
        }
    }
    Ok(Targets::Names(names))
}
