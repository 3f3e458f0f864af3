//! GRPO: sample a group of completions per prompt with the policy (adapters on),
//! score them, normalise rewards within each group, and take clipped policy-gradient
//! steps with a KL term to the reference policy (the same weights, adapters off).

pub mod rewards;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use serde_json::{Map, Value};

use crate::data::{Content, Record, TokenizerBundle};
use crate::error::{io_err, TrainError};
use crate::model::{Decoder, ForwardCtx};
use kernels::recompute::SideGrads;

use crate::grpo_loss::{advantages, grpo_loss, LossConfig, LossStats};
use crate::model::generate::{generate, Completion, Finish, SamplingConfig};
use crate::optim::accumulate;
use crate::report::{MetricRecord, Progress};
use crate::rng::Rng;
use crate::sagemaker::StopFlag;
use crate::spec::JobSpec;
use rewards::{ExternalScorer, RewardFn, RewardInput};

use super::schedule::{epoch_order, epochs_done, Schedule};
use super::state::{self, RunState};
use super::Outcome;

/// One prompt of the dataset, tokenised, with the columns its rewards may read.
#[derive(Debug, Clone)]
pub struct PromptRow {
    pub text: String,
    pub ids: Vec<u32>,
    pub columns: Map<String, Value>,
}

/// Prompts from records: plain text as is (special tokens added), chat messages through the chat template
/// with the generation prompt. Prompts keep their last `max_prompt_length` tokens.
pub fn prompt_rows(records: &[Record], tok: &TokenizerBundle, spec: &JobSpec) -> Result<Vec<PromptRow>, TrainError> {
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        let (text, ids) = match &r.content {
            Content::PromptCompletion { prompt, .. } => (prompt.clone(), tok.encode(prompt, true)?),
            Content::Text(t) => (t.clone(), tok.encode(t, true)?),
            Content::Messages(msgs) => {
                let prompt_msgs: Vec<_> = match msgs.last() {
                    Some(m) if m.role == "assistant" => msgs[..msgs.len() - 1].to_vec(),
                    _ => msgs.clone(),
                };
                let text = tok.render_chat(&prompt_msgs, true)?;
                let ids = tok.encode(&text, false)?;
                (text, ids)
            }
        };
        let keep = spec.grpo.max_prompt_length;
        let ids = if ids.len() > keep { ids[ids.len() - keep..].to_vec() } else { ids };
        if ids.is_empty() {
            return Err(TrainError::BadInput(format!("{}:{}: empty prompt", r.source.file.display(), r.source.line)));
        }
        rows.push(PromptRow { text, ids, columns: r.extra.clone() });
    }
    Ok(rows)
}

/// Reward functions from the spec; `data_root` anchors a relative reward_program path.
pub fn build_rewards(spec: &JobSpec, data_root: &Path) -> Result<Vec<RewardFn>, TrainError> {
    let g = &spec.grpo;
    g.reward_funcs
        .iter()
        .map(|name| {
            Ok(match name.as_str() {
                "exact_match" => RewardFn::ExactMatch { field: g.answer_field.clone() },
                "format" => RewardFn::Format {
                    regex: regex::Regex::new(&g.format_regex).map_err(|e| TrainError::BadInput(format!("format_regex: {e}")))?,
                },
                "length" => RewardFn::Length { max_tokens: g.max_completion_length },
                "json" => RewardFn::Json,
                _ => {
                    let mut parts = g.reward_program.split_whitespace();
                    let prog = parts.next().unwrap_or_default();
                    let path = if Path::new(prog).is_absolute() { PathBuf::from(prog) } else { data_root.join(prog) };
                    if !path.exists() {
                        return Err(TrainError::BadInput(format!(
                            "reward_program {} does not exist; ship it in a channel (paths are relative to {}) or give an absolute path inside the image",
                            path.display(),
                            data_root.display()
                        )));
                    }
                    RewardFn::External(ExternalScorer {
                        program: path,
                        args: parts.map(String::from).collect(),
                        timeout: Duration::from_secs_f64(g.reward_timeout_secs.max(0.001)),
                    })
                }
            })
        })
        .collect()
}

pub struct GrpoInputs<'a> {
    pub spec: &'a JobSpec,
    pub model: &'a Decoder,
    pub tok: &'a TokenizerBundle,
    pub prompts: &'a [PromptRow],
    pub rewards: &'a [RewardFn],
    pub eos_ids: Vec<u32>,
    pub checkpoint_dir: &'a Path,
    pub output_data_dir: &'a Path,
    pub stop: &'a StopFlag,
}

/// One training sequence: prompt + completion, with its advantage.
struct Sequence {
    ids: Vec<u32>,
    prompt_len: usize,
    masked: bool,
    advantage: f64,
}

/// Right-padded tensors of a micro-batch; targets are the next tokens, the mask covers completion tokens.
struct SeqBatch {
    input_ids: Tensor,
    positions: Tensor,
    segment_ids: Tensor,
    targets: Tensor,
    mask: Tensor,
    adv: Tensor,
    width: usize,
    rows: usize,
}

fn seq_batch(seqs: &[&Sequence], pad: u32, device: &candle_core::Device) -> candle_core::Result<SeqBatch> {
    let width = seqs.iter().map(|s| s.ids.len() - 1).max().unwrap_or(1).max(1);
    let (mut ids, mut pos, mut seg, mut tgt, mut mask) = (vec![], vec![], vec![], vec![], vec![]);
    for s in seqs {
        let n = s.ids.len() - 1;
        for i in 0..width {
            let real = i < n;
            ids.push(if real { s.ids[i] } else { pad });
            pos.push(if real { i as u32 } else { 0 });
            seg.push(u32::from(real));
            tgt.push(if real { s.ids[i + 1] } else { 0 });
            // Target i is token i+1: a completion token when i+1 >= prompt_len.
            mask.push(if real && !s.masked && i + 1 >= s.prompt_len { 1f32 } else { 0.0 });
        }
    }
    let shape = (seqs.len(), width);
    Ok(SeqBatch {
        input_ids: Tensor::from_vec(ids, shape, device)?,
        positions: Tensor::from_vec(pos, shape, device)?,
        segment_ids: Tensor::from_vec(seg, shape, device)?,
        targets: Tensor::from_vec(tgt, shape, device)?,
        mask: Tensor::from_vec(mask, shape, device)?,
        adv: Tensor::from_vec(seqs.iter().map(|s| s.advantage as f32).collect::<Vec<_>>(), seqs.len(), device)?,
        width,
        rows: seqs.len(),
    })
}

/// Per-token log-probs [rows, width] of the batch's targets.
/// `checkpoint`: activation checkpointing for a training forward (see `ForwardCtx`).
fn token_log_probs(
    model: &Decoder,
    b: &SeqBatch,
    adapters: bool,
    checkpoint: Option<SideGrads>,
) -> candle_core::Result<Tensor> {
    let mut ctx = ForwardCtx { adapters, dropout_rng: None, checkpoint };
    let hidden = model.hidden(&b.input_ids, &b.positions, Some(&b.segment_ids), &mut ctx)?;
    model.target_log_probs(&hidden, &b.targets)?.reshape((b.rows, b.width))
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64 } else { 0.0 };
    (m, var.sqrt())
}

pub fn train(inp: GrpoInputs) -> Result<Outcome, TrainError> {
    let spec = inp.spec;
    let g = &spec.grpo;
    let model = inp.model;
    let group = g.num_generations;
    let micro = spec.per_device_batch_size;
    let per_round = (spec.per_device_batch_size * spec.gradient_accumulation_steps) / group;
    if inp.prompts.is_empty() {
        return Err(TrainError::BadInput("no prompts in the training data".into()));
    }
    let rounds_per_epoch = inp.prompts.len().div_ceil(per_round) as u64;
    let schedule = Schedule::new(spec, rounds_per_epoch * g.num_iterations as u64);
    let total_steps = schedule.total_steps;
    let vars = model.trainable_vars();
    let RunState { mut opt, mut state, resumed_from } = state::start(spec, model, inp.checkpoint_dir, true)?;
    tracing::info!(
        "GRPO: {} prompts, {} per step × {} generations, {} optimizer steps, rewards {:?} (weights {:?}), loss {:?}, beta {}",
        inp.prompts.len(), per_round, group, total_steps, g.reward_funcs, g.reward_weights, g.loss_type, g.beta
    );
    let sampling = SamplingConfig {
        temperature: g.temperature,
        top_p: g.top_p,
        top_k: g.top_k,
        max_new_tokens: g.max_completion_length,
        eos_ids: inp.eos_ids.clone(),
        stop_strings: g.stop_strings.clone(),
    };
    let started = Instant::now();
    let base_elapsed = state.elapsed_secs;
    let mut progress = Progress::new(total_steps, state.step);
    let mut order = epoch_order(inp.prompts.len(), spec.seed, state.epoch);

    while !schedule.is_done(state.step) {
        if inp.stop.is_set() {
            state.elapsed_secs = base_elapsed + started.elapsed().as_secs_f64();
            let dir = state::save(spec, model, inp.checkpoint_dir, &state, &opt)?;
            return Err(TrainError::Interrupted { step: state.step, checkpoint: dir.display().to_string() });
        }
        if state.batch_in_epoch >= order.len() {
            state.epoch += 1;
            state.batch_in_epoch = 0;
            order = epoch_order(inp.prompts.len(), spec.seed, state.epoch);
        }
        let round_start = Instant::now();
        let end = (state.batch_in_epoch + per_round).min(order.len());
        let chosen: Vec<&PromptRow> = order[state.batch_in_epoch..end].iter().map(|&i| &inp.prompts[i]).collect();
        let row_prompts: Vec<Vec<u32>> =
            chosen.iter().flat_map(|p| std::iter::repeat_n(p.ids.clone(), group)).collect();

        // 1. Generate with the policy.
        let mut gen_rng = state.generation_rng.clone().unwrap_or_else(|| Rng::derive(spec.seed, "generation"));
        let t_gen = Instant::now();
        let completions: Vec<Completion> = generate(model, inp.tok, &row_prompts, &sampling, &mut gen_rng, true)?;
        let gen_secs = t_gen.elapsed().as_secs_f64().max(1e-9);
        let gen_tokens: usize = completions.iter().map(|c| c.ids.len()).sum();

        // 2. Rewards, weighted.
        let inputs: Vec<RewardInput> = completions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let p = chosen[i / group];
                RewardInput {
                    prompt: &p.text,
                    completion: &c.text,
                    completion_tokens: c.ids.len(),
                    columns: &p.columns,
                }
            })
            .collect();
        let mut per_fn: Vec<(String, Vec<f64>)> = vec![];
        let mut total = vec![0f64; completions.len()];
        for (f, w) in inp.rewards.iter().zip(&g.reward_weights) {
            let scores = f.score(&inputs).map_err(|e| TrainError::BadInput(e.to_string()))?;
            for (t, s) in total.iter_mut().zip(&scores) {
                *t += w * s;
            }
            per_fn.push((f.name(), scores));
        }
        let adv = advantages(&total, group, g.scale_rewards);

        // 3. Training sequences and micro-batches.
        let seqs: Vec<Sequence> = completions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let p = &row_prompts[i];
                let mut ids = p.clone();
                ids.extend(&c.ids);
                if c.ids.is_empty() {
                    ids.push(inp.tok.pad_id()); // keep a target position; it is masked out below
                }
                let masked = c.ids.is_empty() || (g.mask_truncated_completions && c.finish == Finish::Length);
                Sequence { ids, prompt_len: p.len(), masked, advantage: adv[i] }
            })
            .collect();
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let batches: Vec<SeqBatch> = refs
            .chunks(micro)
            .map(|c| seq_batch(c, inp.tok.pad_id(), &model.device))
            .collect::<candle_core::Result<_>>()?;
        let step_tokens: f64 =
            batches.iter().map(|b| b.mask.sum_all().and_then(|s| s.to_scalar::<f32>()).unwrap_or(0.0) as f64).sum();
        let detached = |adapters: bool| -> candle_core::Result<Vec<Tensor>> {
            batches.iter().map(|b| Ok(token_log_probs(model, b, adapters, None)?.detach())).collect()
        };
        let old: Option<Vec<Tensor>> = if g.num_iterations > 1 { Some(detached(true)?) } else { None };
        let reference: Option<Vec<Tensor>> = if g.beta != 0.0 { Some(detached(false)?) } else { None };
        let cfg = LossConfig {
            epsilon: g.epsilon,
            epsilon_high: g.epsilon_high,
            beta: g.beta,
            loss_type: g.loss_type,
            max_completion_length: g.max_completion_length,
            accumulation_steps: batches.len(),
            step_tokens,
        };

        // 4. num_iterations optimizer steps on this generation batch.
        for _ in 0..g.num_iterations {
            if schedule.is_done(state.step) {
                break;
            }
            let mut grads: Vec<Tensor> = vec![];
            let mut stats = LossStats::default();
            let mut loss_sum = 0f64;
            for (bi, b) in batches.iter().enumerate() {
                let side = spec.gradient_checkpointing.then(SideGrads::new);
                let logp = token_log_probs(model, b, true, side.clone())?;
                let old_lp = match &old {
                    Some(o) => o[bi].clone(),
                    None => logp.detach(),
                };
                let (loss, s) = grpo_loss(&logp, &old_lp, reference.as_ref().map(|r| &r[bi]), &b.adv, &b.mask, &cfg)?;
                loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                stats.kl += s.kl * s.tokens;
                stats.clip_fraction += s.clip_fraction * s.tokens;
                stats.tokens += s.tokens;
                accumulate(&mut grads, &loss.backward()?, &vars, side.as_ref())?;
            }
            if !loss_sum.is_finite() {
                return Err(TrainError::Diverged(format!("GRPO loss is {loss_sum} at step {}", state.step + 1)));
            }
            let lr = schedule.lr(state.step);
            let grad_norm = opt.step(&grads, lr, spec.max_grad_norm)?;
            state.step += 1;
            state.tokens_seen += gen_tokens as u64;
            let (rmean, rstd) = mean_std(&total);
            let lens: Vec<f64> = completions.iter().map(|c| c.ids.len() as f64).collect();
            let mut extra = BTreeMap::new();
            extra.insert("reward".to_string(), rmean);
            extra.insert("reward_std".to_string(), rstd);
            for (name, scores) in &per_fn {
                let key = name.split(':').next().unwrap_or(name);
                extra.insert(format!("reward_{key}"), mean_std(scores).0);
            }
            extra.insert("kl".into(), stats.kl / stats.tokens.max(1.0));
            extra.insert("clip_fraction".into(), stats.clip_fraction / stats.tokens.max(1.0));
            extra.insert("completion_length".into(), mean_std(&lens).0);
            extra.insert("completion_length_max".into(), lens.iter().cloned().fold(0.0, f64::max));
            let truncated = completions.iter().filter(|c| c.finish == Finish::Length).count();
            extra.insert("truncated_fraction".into(), truncated as f64 / completions.len().max(1) as f64);
            extra.insert("generation_tokens_per_sec".into(), gen_tokens as f64 / gen_secs);
            extra.insert("step_time".into(), round_start.elapsed().as_secs_f64());
            let rec = MetricRecord {
                step: state.step,
                epoch: epochs_done(state.epoch, end, order.len()),
                loss: Some(loss_sum),
                lr: Some(lr),
                grad_norm: Some(grad_norm),
                tokens_per_sec: Some(gen_tokens as f64 / round_start.elapsed().as_secs_f64().max(1e-9)),
                eval_loss: None,
                extra,
            };
            if schedule.log_now(state.step) {
                tracing::info!("{}", rec.line());
            }
            state.history.push(rec);
            progress.update(state.step, loss_sum);
            if g.log_completions_steps > 0 && (state.step % g.log_completions_steps == 0 || state.step == 1) {
                write_samples(inp.output_data_dir, state.step, &chosen, group, &completions, &per_fn, &total, &adv)?;
            }
        }
        state.batch_in_epoch = end;
        state.generation_rng = Some(gen_rng);
        state.elapsed_secs = base_elapsed + started.elapsed().as_secs_f64();
        if schedule.save_now(state.step) {
            state::save(spec, model, inp.checkpoint_dir, &state, &opt)?;
        }
    }
    let epochs_completed = epochs_done(state.epoch, state.batch_in_epoch, order.len());
    Ok(Outcome { state, total_steps, epochs_completed, resumed_from })
}

#[allow(clippy::too_many_arguments)]
fn write_samples(
    dir: &Path,
    step: u64,
    prompts: &[&PromptRow],
    group: usize,
    completions: &[Completion],
    per_fn: &[(String, Vec<f64>)],
    total: &[f64],
    adv: &[f64],
) -> Result<(), TrainError> {
    let dir = dir.join("completions");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut out = String::new();
    for (i, c) in completions.iter().enumerate() {
        let rewards: Map<String, Value> = per_fn.iter().map(|(n, s)| (n.clone(), Value::from(s[i]))).collect();
        let row = serde_json::json!({
            "step": step, "prompt": prompts[i / group].text, "completion": c.text,
            "finish": format!("{:?}", c.finish), "rewards": rewards, "reward": total[i], "advantage": adv[i],
        });
        out.push_str(&row.to_string());
        out.push('\n');
    }
    let path = dir.join(format!("step-{step:06}.jsonl"));
    std::fs::write(&path, out).map_err(io_err(&path))
}
