//! Evaluation: generate a completion for every held-out case with the model (batched, with the KV
//! cache of `generate`), then score it against the case's reference — exact match, ROUGE
//! exactly as Python's `rouge-score` (`rouge`, with NLTK's Porter stemmer in `porter`) and any
//! reward functions. The job runs it after training (and before, with `eval_baseline`); `train
//! evaluate` runs it on local files.

pub mod porter;
pub mod rouge;
pub mod score;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::data::{self, DataError, Record, TokenizerBundle};
use crate::generate::{cut_at_stop, generate, Finish, SamplingConfig};
use crate::model::Model;
use crate::rewards::{score_weighted, RewardError, RewardFn, RewardInput};
use crate::rng::Rng;
use rouge::RougeOptions;
use score::{CaseScores, ExactMatchOptions};

/// How evaluation generates and scores.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub max_new_tokens: usize,
    /// 0 = greedy (the default).
    pub temperature: f64,
    pub top_p: f64,
    pub batch_size: usize,
    /// A prediction ends before the first of these strings (besides EOS).
    pub stop_strings: Vec<String>,
    /// Prompts keep their last this-many tokens.
    pub max_prompt_tokens: usize,
    /// Cases scored (0 = all).
    pub max_cases: usize,
    pub exact_match: ExactMatchOptions,
    pub rouge: RougeOptions,
    /// The column a reward's reference answer is read from; the case's reference fills it when absent.
    pub answer_field: String,
    pub seed: u64,
}

impl EvalConfig {
    /// The options the scores were computed with, recorded beside them.
    pub fn options_json(&self) -> Value {
        json!({
            "generation": if self.temperature > 0.0 { format!("sampling, temperature {}, top_p {}", self.temperature, self.top_p) } else { "greedy".to_string() },
            "max_new_tokens": self.max_new_tokens,
            "stop_strings": self.stop_strings,
            "exact_match_normalisation": self.exact_match.describe(),
            "rouge": self.rouge.describe(),
        })
    }
}

/// One held-out case: the prompt, its reference and the columns rewards may read.
#[derive(Debug, Clone)]
pub struct EvalCase {
    pub source: data::RowRef,
    pub prompt: data::Prompt,
    pub reference: String,
    pub columns: Map<String, Value>,
}

/// Cases from test-channel records. Every row must have a reference (a completion, an assistant
/// turn last, or the `answer_field` column): a row without one is a bad row, found before training.
/// `encoder`: the prompts are a T5 encoder's input ([`data::encoder_prompt_of`]), else a decoder's.
pub fn cases(
    records: &[Record],
    tok: &TokenizerBundle,
    cfg: &EvalConfig,
    encoder: bool,
) -> Result<Vec<EvalCase>, DataError> {
    let take = if cfg.max_cases > 0 { cfg.max_cases.min(records.len()) } else { records.len() };
    let mut out = Vec::with_capacity(take);
    for r in &records[..take] {
        let prompt = data::prompt_for(r, tok, cfg.max_prompt_tokens, encoder)?;
        let column =
            r.extra.get(&cfg.answer_field).map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string()));
        let Some(reference) = prompt.reference.clone().or(column) else {
            return Err(DataError::BadRow {
                path: r.source.file.clone(),
                line: r.source.line,
                problem: format!(
                    "test row without a reference: give a completion (prompt/completion, alpaca output, a final assistant turn) or an `{}` column",
                    cfg.answer_field
                ),
            });
        };
        let mut columns = r.extra.clone();
        columns.entry(cfg.answer_field.clone()).or_insert_with(|| Value::String(reference.clone()));
        out.push(EvalCase { source: r.source.clone(), prompt, reference, columns });
    }
    Ok(out)
}

/// One case's prediction and scores.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub text: String,
    pub tokens: usize,
    pub finish: Finish,
    pub scores: CaseScores,
}

/// The predictions of one model over the cases, in case order, with their means.
#[derive(Debug, Clone)]
pub struct EvalRun {
    pub predictions: Vec<Prediction>,
    pub metrics: BTreeMap<String, f64>,
    pub generated_tokens: usize,
    pub secs: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("generation failed: {0}")]
    Generate(#[from] candle_core::Error),
    #[error(transparent)]
    Reward(#[from] RewardError),
}

/// Rewards with their weights (as the job trains on them); empty = no reward scores.
pub type WeightedRewards<'a> = &'a [(RewardFn, f64)];

/// Generate and score every case. `adapters` = the tuned model (false: the base, for the baseline).
/// Cases are generated longest prompt first in batches of `batch_size` (less padding), reported in
/// their own order.
pub fn run(
    model: &Model,
    tok: &TokenizerBundle,
    cases: &[EvalCase],
    cfg: &EvalConfig,
    eos_ids: &[u32],
    rewards: WeightedRewards,
    adapters: bool,
) -> Result<EvalRun, EvalError> {
    let started = Instant::now();
    let sampling = SamplingConfig {
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        top_k: 0,
        max_new_tokens: cfg.max_new_tokens.max(1),
        eos_ids: eos_ids.to_vec(),
        stop_strings: cfg.stop_strings.clone(),
    };
    let mut rng = Rng::derive(cfg.seed, "eval");
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cases[i].prompt.ids.len()));
    let mut texts: Vec<Option<(String, usize, Finish)>> = vec![None; cases.len()];
    let mut generated = 0usize;
    for chunk in order.chunks(cfg.batch_size.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|&i| cases[i].prompt.ids.clone()).collect();
        let out = generate(model, tok, &prompts, &sampling, &mut rng, adapters)?;
        for (&i, c) in chunk.iter().zip(out) {
            generated += c.ids.len();
            texts[i] = Some((cut_at_stop(&c.text, &cfg.stop_strings), c.ids.len(), c.finish));
        }
        let done = texts.iter().filter(|t| t.is_some()).count();
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            "eval{}: {done}/{} cases, {:.1} generated tokens/s",
            if adapters { "" } else { " (base model)" },
            cases.len(),
            generated as f64 / secs.max(1e-9)
        );
    }
    let texts: Vec<(String, usize, Finish)> = texts.into_iter().map(|t| t.expect("every case generated")).collect();
    let mut predictions: Vec<Prediction> = cases
        .iter()
        .zip(texts)
        .map(|(c, (text, tokens, finish))| {
            let scores = score::score_text(&c.reference, &text, cfg.exact_match, cfg.rouge);
            Prediction { text, tokens, finish, scores }
        })
        .collect();
    add_rewards(cases, &mut predictions, rewards)?;
    let all: Vec<CaseScores> = predictions.iter().map(|p| p.scores.clone()).collect();
    Ok(EvalRun {
        metrics: score::aggregate(&all),
        predictions,
        generated_tokens: generated,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Each reward function over all predictions (one call each, so an external program runs once),
/// and their weighted sum as `reward`.
fn add_rewards(
    cases: &[EvalCase],
    predictions: &mut [Prediction],
    rewards: WeightedRewards,
) -> Result<(), RewardError> {
    if rewards.is_empty() {
        return Ok(());
    }
    let inputs: Vec<RewardInput> = cases
        .iter()
        .zip(predictions.iter())
        .map(|(c, p)| RewardInput {
            prompt: &c.prompt.text,
            completion: &p.text,
            completion_tokens: p.tokens,
            columns: &c.columns,
        })
        .collect();
    let scored = score_weighted(rewards.iter().map(|(f, w)| (f, *w)), &inputs)?;
    drop(inputs);
    for (i, p) in predictions.iter_mut().enumerate() {
        for (name, values) in &scored.per_fn {
            let key = name.split(':').next().unwrap_or("external");
            p.scores.rewards.insert(key.to_string(), values[i]);
        }
        p.scores.rewards.insert("reward".into(), scored.total[i]);
    }
    Ok(())
}

fn finish_name(f: Finish) -> &'static str {
    match f {
        Finish::Eos => "eos",
        Finish::StopString => "stop_string",
        Finish::Length => "length",
    }
}

/// `eval_predictions.jsonl`: one line per case — where it came from, prompt, reference, prediction,
/// its scores, and the base model's prediction and scores when a baseline ran.
pub fn write_predictions(
    path: &Path,
    cases: &[EvalCase],
    tuned: &EvalRun,
    baseline: Option<&EvalRun>,
) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (i, (c, p)) in cases.iter().zip(&tuned.predictions).enumerate() {
        let mut line = json!({
            "index": i,
            "source": c.source.to_string(),
            "prompt": c.prompt.text,
            "reference": c.reference,
            "prediction": p.text,
            "finish": finish_name(p.finish),
            "completion_tokens": p.tokens,
            "scores": p.scores,
        });
        if let Some(b) = baseline.and_then(|b| b.predictions.get(i)) {
            line["baseline_prediction"] = json!(b.text);
            line["baseline_scores"] = json!(b.scores);
        }
        serde_json::to_writer(&mut f, &line)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

/// The summary's `evaluation` block: case count, options, the tuned model's means, and with a
/// baseline its means and the gain (tuned − base) per metric.
pub fn summary_json(cfg: &EvalConfig, cases: usize, tuned: &EvalRun, baseline: Option<&EvalRun>) -> Value {
    let mut v = json!({
        "cases": cases,
        "options": cfg.options_json(),
        "metrics": tuned.metrics,
        "generated_tokens": tuned.generated_tokens,
        "generation_secs": tuned.secs,
    });
    if let Some(b) = baseline {
        let gain: BTreeMap<&String, f64> =
            tuned.metrics.iter().filter_map(|(k, t)| b.metrics.get(k).map(|bv| (k, t - bv))).collect();
        v["baseline_metrics"] = json!(b.metrics);
        v["gain"] = json!(gain);
    }
    v
}
