//! The evaluation part of the spec: how the test channel is generated and scored.

use super::resolve::{bad, parse_bool, Sources, SpecError};
use super::Method;
use crate::eval::rouge::RougeOptions;
use crate::eval::score::{ExactMatchOptions, EXACT_MATCH_OPTIONS};
use crate::eval::EvalConfig;

/// Evaluation settings (used when the job has a test channel, and by `train evaluate`).
#[derive(Debug, Clone)]
pub struct EvalSpec {
    pub config: EvalConfig,
    /// Also score the base model before training.
    pub baseline: bool,
    /// Score the job's reward functions too: GRPO jobs, and jobs that name `reward_funcs` themselves.
    pub rewards: bool,
}

impl Sources {
    pub(super) fn eval_spec(&self, method: Method) -> Result<EvalSpec, SpecError> {
        let text = |n: &'static str| self.raw(n).0.trim().to_string();
        let float = |n: &'static str| text(n).parse::<f64>().unwrap_or(0.0);
        let int = |n: &'static str| text(n).parse::<f64>().map(|f| f.max(0.0) as usize).unwrap_or(0);
        let boolean = |n: &'static str| parse_bool(&text(n)).unwrap_or(false);
        let names = self.list("eval_exact_match")?;
        let exact_match = ExactMatchOptions::parse(names.iter().map(String::as_str)).map_err(|unknown| {
            let (v, origin) = self.raw("eval_exact_match");
            bad(
                "eval_exact_match",
                &v,
                &origin,
                &format!("unknown normalisation `{unknown}`"),
                &EXACT_MATCH_OPTIONS.join(", "),
            )
        })?;
        Ok(EvalSpec {
            config: EvalConfig {
                max_new_tokens: int("eval_max_new_tokens"),
                temperature: float("eval_temperature"),
                top_p: float("eval_top_p"),
                batch_size: int("eval_batch_size"),
                stop_strings: self.list("eval_stop_strings")?,
                max_prompt_tokens: int("max_seq_length"),
                max_cases: int("eval_max_samples"),
                exact_match,
                rouge: RougeOptions { use_stemmer: boolean("eval_rouge_stemmer") },
                answer_field: text("answer_field"),
                seed: int("seed") as u64,
            },
            baseline: boolean("eval_baseline"),
            rewards: method == Method::Grpo || self.values.contains_key("reward_funcs"),
        })
    }
}
