//! The GRPO part of the spec: sampling, the loss and the rewards.

use super::resolve::{bad, parse_bool, Sources, SpecError};
use super::table::edit_distance;
use super::Method;
use crate::grpo_loss::{LossType, ScaleRewards};

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

impl Sources {
    pub(super) fn grpo_spec(&self, method: Method, batch: usize, accumulation: usize) -> Result<GrpoSpec, SpecError> {
        let get = |n: &'static str| self.raw(n);
        let text = |n: &'static str| get(n).0.trim().to_string();
        let float = |n: &'static str| text(n).parse::<f64>().unwrap_or(0.0);
        let int = |n: &'static str| text(n).parse::<f64>().map(|f| f as i64).unwrap_or(0);
        let list = |n: &'static str| self.list(n);
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
            loss_type: self.choice::<LossType>("loss_type")?,
            scale_rewards: self.choice::<ScaleRewards>("scale_rewards")?,
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
