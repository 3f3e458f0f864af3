//! The job spec: one typed schema, resolved from CLI flags > environment
//! (`OXTUNE_HP_<KEY>`) > `hyperparameters.json` > defaults.
//!
//! The schema is the table [`PARAMS`]; parsing, aliases, "did you mean"
//! suggestions, the README reference table and the launcher's validation all
//! read it, so a parameter is declared in exactly one place.

mod eval;
mod grpo;
mod resolve;
mod table;

use std::collections::BTreeMap;

use crate::data::DataSpec;
use crate::lora::LoraConfig;
use crate::optim::AdamWConfig;
use crate::quant::Nf4Options;

use crate::choice::choice_enum;
use crate::lora::Targets;
pub use eval::EvalSpec;
pub use grpo::{GrpoSpec, REWARD_FUNCS};
pub use resolve::{parse_bool, BadValue, Origin, Sources, SpecError, ENV_PREFIX};
pub use table::{edit_distance, lookup, markdown_table, suggest, Kind, ParamDef, PARAMS};

choice_enum! {
    /// `method`: how the job trains.
    pub enum Method {
        Lora = "lora",
        Qlora = "qlora",
        Grpo = "grpo",
    }
}

choice_enum! {
    /// `lr_scheduler`: the learning-rate schedule after warmup.
    pub enum Scheduler {
        Constant = "constant",
        Linear = "linear",
        Cosine = "cosine",
    }
}

choice_enum! {
    /// `dtype`: the compute dtype of the frozen base.
    pub enum DTypeChoice {
        Auto = "auto",
        Bf16 = "bf16",
        F32 = "f32",
    }
}

choice_enum! {
    /// `bnb_4bit_quant_type`: the 4-bit code of QLoRA bases (fp4 is refused: not implemented).
    pub enum QuantType {
        Nf4 = "nf4",
        Fp4 = "fp4",
    }
}

choice_enum! {
    /// `optimizer`: AdamW with decoupled weight decay (`adamw_torch` is transformers' name for it).
    pub enum Optimizer {
        AdamW = "adamw" | "adamw_torch",
    }
}

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
    /// T5: encoder input and decoder target lengths (`max_source_length` unset = `max_seq_length`).
    pub max_source_length: usize,
    pub max_target_length: usize,
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
    /// Ranks per host (0 = every GPU; CPU ranks on a host without GPUs).
    pub num_gpus: usize,
    pub grpo: GrpoSpec,
    /// Evaluation on the test channel.
    pub eval: EvalSpec,
    /// Every parameter's final value as text, canonical names, for the summary.
    pub resolved: BTreeMap<String, String>,
}

impl JobSpec {
    /// What every adapter of the model shares (the spec builds LoRA's own config).
    /// LoRA settings for a model whose linear modules are `modules` (all-linear = every one of
    /// them); a named target the model does not have is refused with the names it has.
    pub fn lora_config(&self, modules: &[&str]) -> Result<LoraConfig, String> {
        let targets = match &self.target_modules {
            Targets::AllLinear => modules.iter().map(|s| s.to_string()).collect(),
            Targets::Names(n) => {
                if let Some(bad) = n.iter().find(|t| !modules.contains(&t.as_str())) {
                    return Err(format!(
                        "target_modules: this model has no `{bad}` module; its linear modules are {} (or all-linear)",
                        modules.join(", ")
                    ));
                }
                n.clone()
            }
        };
        Ok(LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            use_rslora: self.use_rslora,
            targets,
        })
    }

    /// The optimizer's settings.
    pub fn adamw_config(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_epsilon,
            weight_decay: self.weight_decay,
        }
    }

    /// QLoRA: how the base is quantised while loading (None: a bf16/f32 base).
    pub fn nf4_options(&self) -> Option<Nf4Options> {
        self.load_in_4bit
            .then_some(Nf4Options { double_quant: self.bnb_4bit_use_double_quant, ..Nf4Options::default() })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Every choice parameter's allowed values are its enum's names, and every one of them
    /// resolves to the variant it names (fp4 is refused on purpose, by its own message).
    #[test]
    fn every_choice_round_trips_through_the_table() {
        use crate::choice::Choice;

        fn check<C: Choice>(param: &str, of: impl Fn(&JobSpec) -> C) {
            let def = lookup(param).unwrap();
            let Kind::Choice(names) = def.kind else { panic!("{param} is not a choice") };
            assert_eq!(names, C::NAMES, "{param}: the table lists the enum's names");
            for v in C::ALL {
                assert!(names.contains(&v.name()), "{param}: {v:?} has a name in the table");
            }
            for name in names {
                let want = C::parse(name).unwrap();
                assert_eq!(C::parse(&name.to_uppercase()), Some(want), "{param}={name}: any case");
                // GRPO trains whole groups: a batch that holds one.
                let mut pairs = vec![(param, *name), ("num_generations", "4")];
                if param == "loss_type" || param == "scale_rewards" {
                    pairs.push(("method", "grpo"));
                }
                match JobSpec::from_hyperparameters(&hp(&pairs)) {
                    Ok(spec) => assert_eq!(of(&spec), want, "{param}={name}"),
                    Err(e) => {
                        assert_eq!((param, *name), ("bnb_4bit_quant_type", "fp4"), "{param}={name}: {e}");
                        assert!(e.to_string().contains("not implemented"), "{e}");
                    }
                }
            }
        }
        check("method", |s| s.method);
        check("lr_scheduler", |s| s.lr_scheduler);
        check("dtype", |s| s.dtype);
        check("optimizer", |_| Optimizer::AdamW);
        check("bnb_4bit_quant_type", |_| QuantType::Nf4);
        check("format", |s| s.data.format);
        check("train_on", |s| s.data.train_on);
        check("text_mode", |s| s.data.text_mode);
        check("loss_type", |s| s.grpo.loss_type);
        check("scale_rewards", |s| s.grpo.scale_rewards);
        let choices = PARAMS.iter().filter(|p| matches!(p.kind, Kind::Choice(_))).count();
        assert_eq!(choices, 10, "a new choice parameter gets a line above");
    }

    #[test]
    fn defaults_resolve() {
        let spec = JobSpec::from_hyperparameters(&BTreeMap::new()).unwrap();
        assert_eq!(spec.method, Method::Lora);
        assert_eq!(spec.lora_r, 16);
        assert_eq!(spec.target_modules, Targets::AllLinear);
        assert_eq!(spec.max_steps, None);
        assert!((spec.lora_config(crate::lora::LINEAR_MODULES).unwrap().scale() - 2.0).abs() < 1e-12);
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
