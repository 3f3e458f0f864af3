//! GRPO: sample a group of completions per prompt with the policy (adapters on),
//! score them, normalise rewards within each group, and take clipped policy-gradient
//! steps with a KL term to the reference policy (the same weights, adapters off).
//! A decoder-only policy scores prompt + completion as one sequence; a T5 policy reads the prompt
//! with its encoder and scores the completion as the decoder's labels.
//!
//! On several ranks each takes its own block of a step's prompts, generates and scores their groups
//! (group normalisation stays within a prompt's group; `scale_rewards=batch` uses the whole step's
//! rewards), the loss is normalised by the whole step's tokens and micro-batches, and the gradients
//! are summed as in SFT: the step is the one one rank would take with every prompt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use serde_json::{Map, Value};

use crate::data::{self, Record, TokenizerBundle};
use crate::error::{io_err, TrainError};
use crate::model::{ForwardCtx, Model};
use kernels::recompute::SideGrads;

use crate::dist::{self, Collective};
use crate::generate::{generate, Completion, Finish, SamplingConfig};
use crate::grpo_loss::{advantages_in_step, grpo_loss, LossConfig, LossStats};
use crate::optim::accumulate;
use crate::report::MetricRecord;
use crate::rewards::{score_weighted, ExternalScorer, RewardFn, RewardInput, WeightedScores};
use crate::rng::Rng;
use crate::sagemaker::StopFlag;
use crate::spec::JobSpec;
use crate::track::Tracker;

use super::frame::{self, FrameInputs, RoundCx, RoundEnd, Rounds};
use super::schedule::{epoch_order, epochs_done, Schedule};
use super::Outcome;

mod step_view;
use step_view::StepView;

/// One prompt of the dataset, tokenised, with the columns its rewards may read.
#[derive(Debug, Clone)]
pub struct PromptRow {
    pub text: String,
    pub ids: Vec<u32>,
    pub columns: Map<String, Value>,
}

/// Prompts from records (`data::prompt_of`): plain text as is (special tokens added), chat
/// messages through the chat template with the generation prompt. Prompts keep their last
/// `max_prompt_length` tokens. `encoder` (T5): the encoder's input (`data::encoder_prompt_of`:
/// text + EOS, the start kept, chat rows refused).
pub fn prompt_rows(
    records: &[Record],
    tok: &TokenizerBundle,
    spec: &JobSpec,
    encoder: bool,
) -> Result<Vec<PromptRow>, TrainError> {
    let max = spec.grpo.max_prompt_length;
    records
        .iter()
        .map(|r| {
            let p = data::prompt_for(r, tok, max, encoder)?;
            Ok(PromptRow { text: p.text, ids: p.ids, columns: r.extra.clone() })
        })
        .collect()
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
    pub model: &'a Model,
    pub tok: &'a TokenizerBundle,
    pub prompts: &'a [PromptRow],
    pub rewards: &'a [RewardFn],
    pub eos_ids: Vec<u32>,
    pub checkpoint_dir: &'a Path,
    pub output_data_dir: &'a Path,
    pub stop: &'a StopFlag,
    /// The data-parallel group ([`dist::Solo`]: one rank).
    pub dist: &'a dyn Collective,
    /// Experiment tracking ([`Tracker::off`] when none).
    pub tracker: &'a Tracker,
}

/// One training sequence: prompt + completion, with its advantage.
struct Sequence {
    ids: Vec<u32>,
    prompt_len: usize,
    masked: bool,
    advantage: f64,
}

/// A micro-batch as the policy reads it; `mask` [rows, width] covers the completion tokens whose
/// log-probs the loss takes, `adv` [rows] their advantages.
struct SeqBatch {
    inputs: PolicyInputs,
    mask: Tensor,
    adv: Tensor,
    width: usize,
    rows: usize,
}

enum PolicyInputs {
    /// Right-padded prompt + completion; targets are the next tokens.
    Causal { input_ids: Tensor, positions: Tensor, segment_ids: Tensor, targets: Tensor },
    /// The prompts for the encoder (right-padded, masked) and the completions as labels (−100 after).
    Seq2Seq { source_ids: Tensor, source_mask: Tensor, labels: Vec<Vec<i64>> },
}

fn seq_batch(
    seqs: &[&Sequence],
    pad: u32,
    device: &candle_core::Device,
    encoder: bool,
) -> candle_core::Result<SeqBatch> {
    if encoder {
        return seq2seq_batch(seqs, pad, device);
    }
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
        inputs: PolicyInputs::Causal {
            input_ids: Tensor::from_vec(ids, shape, device)?,
            positions: Tensor::from_vec(pos, shape, device)?,
            segment_ids: Tensor::from_vec(seg, shape, device)?,
            targets: Tensor::from_vec(tgt, shape, device)?,
        },
        mask: Tensor::from_vec(mask, shape, device)?,
        adv: advantages_of(seqs, device)?,
        width,
        rows: seqs.len(),
    })
}

fn advantages_of(seqs: &[&Sequence], device: &candle_core::Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(seqs.iter().map(|s| s.advantage as f32).collect::<Vec<_>>(), seqs.len(), device)
}

/// T5: the prompt `ids[..prompt_len]` to the encoder, the completion after it as the labels.
fn seq2seq_batch(seqs: &[&Sequence], pad: u32, device: &candle_core::Device) -> candle_core::Result<SeqBatch> {
    let prompts: Vec<&[u32]> = seqs.iter().map(|s| &s.ids[..s.prompt_len]).collect();
    let (ids, keep, src) = data::pad_sources(&prompts, pad);
    let width = seqs.iter().map(|s| s.ids.len() - s.prompt_len).max().unwrap_or(1).max(1);
    let (mut labels, mut mask) = (vec![], vec![]);
    for s in seqs {
        let completion = &s.ids[s.prompt_len..];
        let mut row: Vec<i64> = completion.iter().map(|&t| i64::from(t)).collect();
        row.resize(width, -100);
        labels.push(row);
        mask.extend((0..width).map(|i| if !s.masked && i < completion.len() { 1f32 } else { 0.0 }));
    }
    Ok(SeqBatch {
        inputs: PolicyInputs::Seq2Seq {
            source_ids: Tensor::from_vec(ids, (seqs.len(), src), device)?,
            source_mask: Tensor::from_vec(keep, (seqs.len(), src), device)?,
            labels,
        },
        mask: Tensor::from_vec(mask, (seqs.len(), width), device)?,
        adv: advantages_of(seqs, device)?,
        width,
        rows: seqs.len(),
    })
}

/// Per-token log-probs [rows, width] of the batch's completion tokens.
/// `checkpoint`: activation checkpointing for a training forward (see `ForwardCtx`).
fn token_log_probs(
    model: &Model,
    b: &SeqBatch,
    adapters: bool,
    checkpoint: Option<SideGrads>,
) -> candle_core::Result<Tensor> {
    let mut ctx = ForwardCtx { adapters, dropout_rng: None, checkpoint };
    let logp = match (model, &b.inputs) {
        (Model::Causal(m), PolicyInputs::Causal { input_ids, positions, segment_ids, targets }) => {
            let hidden = m.hidden(input_ids, positions, Some(segment_ids), &mut ctx)?;
            m.target_log_probs(&hidden, targets)?
        }
        (Model::Seq2Seq(m), PolicyInputs::Seq2Seq { source_ids, source_mask, labels }) => {
            m.label_log_probs(source_ids, source_mask, labels, &mut ctx)?
        }
        _ => return Err(candle_core::Error::Msg("internal error: a GRPO batch made for the other model kind".into())),
    };
    logp.reshape((b.rows, b.width))
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
    let per_round = (spec.per_device_batch_size * spec.gradient_accumulation_steps) / g.num_generations;
    if inp.prompts.is_empty() {
        return Err(TrainError::BadInput("no prompts in the training data".into()));
    }
    let rounds_per_epoch = inp.prompts.len().div_ceil(per_round * inp.dist.world()) as u64;
    let frame = FrameInputs {
        spec,
        model: inp.model,
        checkpoint_dir: inp.checkpoint_dir,
        stop: inp.stop,
        schedule: Schedule::new(spec, rounds_per_epoch * g.num_iterations as u64),
        generation: true,
        dist: inp.dist,
        tracker: inp.tracker,
    };
    let sampling = SamplingConfig {
        temperature: g.temperature,
        top_p: g.top_p,
        top_k: g.top_k,
        max_new_tokens: g.max_completion_length,
        eos_ids: inp.eos_ids.clone(),
        stop_strings: g.stop_strings.clone(),
    };
    let mut rounds = GrpoRounds { vars: inp.model.trainable_vars(), inp, per_round, sampling, order: Vec::new() };
    frame::run(frame, &mut rounds)
}

/// GRPO in the frame: a round is one generation batch (`per_round` prompts × the group) and its
/// `num_iterations` optimizer steps.
struct GrpoRounds<'a> {
    inp: GrpoInputs<'a>,
    vars: Vec<candle_core::Var>,
    per_round: usize,
    sampling: SamplingConfig,
    order: Vec<usize>,
}

/// One generation batch: the prompts, their completions and rewards (this rank's), and what the
/// step's METRIC line reports over every rank's.
struct Generated<'r> {
    chosen: Vec<&'r PromptRow>,
    row_prompts: Vec<Vec<u32>>,
    completions: Vec<Completion>,
    rewards: WeightedScores,
    advantages: Vec<f64>,
    secs: f64,
    step: StepView,
}

impl Rounds for GrpoRounds<'_> {
    fn plan_epoch(&mut self, epoch: u64) -> usize {
        self.order = epoch_order(self.inp.prompts.len(), self.inp.spec.seed, epoch);
        self.order.len()
    }

    fn announce(&self, schedule: &Schedule) {
        let g = &self.inp.spec.grpo;
        tracing::info!(
            "GRPO: {} prompts, {} per step × {} generations, {} optimizer steps, rewards {:?} (weights {:?}), loss {:?}, beta {}",
            self.inp.prompts.len(), self.per_round, g.num_generations, schedule.total_steps, g.reward_funcs, g.reward_weights, g.loss_type, g.beta
        );
    }

    fn round(&mut self, cx: &mut RoundCx) -> Result<RoundEnd, TrainError> {
        let round_start = Instant::now();
        let (rank, world) = (cx.dist.rank(), cx.dist.world());
        if world > 1 {
            // The ranks stop together, between rounds as one rank does.
            let mut vote = [f32::from(u8::from(cx.stop.is_set()))];
            cx.dist.all_reduce_sum(&mut vote)?;
            if vote[0] > 0.0 {
                return Ok(RoundEnd::Stopped);
            }
        }
        let end = (cx.state.batch_in_epoch + self.per_round * world).min(self.order.len());
        // Rank r takes the r-th block of the step's prompts (one rank: all of them).
        let mine = self.order[cx.state.batch_in_epoch..end].chunks(self.per_round).nth(rank).unwrap_or(&[]);
        let chosen: Vec<&PromptRow> = mine.iter().map(|&i| &self.inp.prompts[i]).collect();
        let state_rng =
            cx.state.generation_rng.clone().unwrap_or_else(|| Rng::derive(self.inp.spec.seed, "generation"));
        let (mut gen_rng, next_state_rng) = state_rng.for_rank("generation", rank, world);
        let generated = self.generate(chosen, &mut gen_rng, cx.dist)?;
        let batches = self.micro_batches(&generated, cx.dist)?;
        self.optimize(cx, &generated, &batches, round_start, end)?;
        cx.state.batch_in_epoch = end;
        cx.state.generation_rng = Some(next_state_rng.unwrap_or(gen_rng));
        Ok(RoundEnd::Done)
    }
}

/// The micro-batches of a round and what the loss needs besides them.
struct RoundBatches {
    batches: Vec<SeqBatch>,
    /// Log-probs before the first step (`num_iterations` > 1) and of the reference (`beta` ≠ 0).
    old: Option<Vec<Tensor>>,
    reference: Option<Vec<Tensor>>,
    cfg: LossConfig,
}

impl GrpoRounds<'_> {
    /// Sample the group for every chosen prompt with the policy, score and normalise.
    fn generate<'r>(
        &self,
        chosen: Vec<&'r PromptRow>,
        rng: &mut Rng,
        d: &dyn Collective,
    ) -> Result<Generated<'r>, TrainError> {
        let (g, inp) = (&self.inp.spec.grpo, &self.inp);
        let group = g.num_generations;
        let row_prompts: Vec<Vec<u32>> =
            chosen.iter().flat_map(|p| std::iter::repeat_n(p.ids.clone(), group)).collect();
        let t_gen = Instant::now();
        let completions: Vec<Completion> = match row_prompts.is_empty() {
            // A rank past the end of a short last step still takes part in its collectives.
            true => vec![],
            false => generate(inp.model, inp.tok, &row_prompts, &self.sampling, rng, true)?,
        };
        let secs = t_gen.elapsed().as_secs_f64().max(1e-9);
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
        let weighted = inp.rewards.iter().zip(g.reward_weights.iter().copied());
        let rewards = match inputs.is_empty() {
            true => WeightedScores { per_fn: inp.rewards.iter().map(|f| (f.name(), vec![])).collect(), total: vec![] },
            false => score_weighted(weighted, &inputs).map_err(|e| TrainError::BadInput(e.to_string()))?,
        };
        drop(inputs);
        let step = StepView::gather(&rewards, &completions, d)?;
        let advantages = advantages_in_step(&rewards.total, &step.rewards, group, g.scale_rewards);
        Ok(Generated { chosen, row_prompts, completions, rewards, advantages, secs, step })
    }

    /// Prompt + completion sequences in micro-batches, with the detached log-probs the loss compares to.
    fn micro_batches(&self, gen: &Generated, d: &dyn Collective) -> Result<RoundBatches, TrainError> {
        let (spec, model, pad) = (self.inp.spec, self.inp.model, self.inp.tok.pad_id());
        let encoder = model.is_seq2seq();
        let g = &spec.grpo;
        let seqs: Vec<Sequence> = gen
            .completions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let p = &gen.row_prompts[i];
                let mut ids = p.clone();
                ids.extend(&c.ids);
                if c.ids.is_empty() {
                    ids.push(pad); // keep a target position; it is masked out below
                }
                let masked = c.ids.is_empty() || (g.mask_truncated_completions && c.finish == Finish::Length);
                Sequence { ids, prompt_len: p.len(), masked, advantage: gen.advantages[i] }
            })
            .collect();
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let batches: Vec<SeqBatch> = refs
            .chunks(spec.per_device_batch_size)
            .map(|c| seq_batch(c, pad, model.device(), encoder))
            .collect::<candle_core::Result<_>>()?;
        let mut step = [
            batches.iter().map(|b| b.mask.sum_all().and_then(|s| s.to_scalar::<f32>()).unwrap_or(0.0)).sum::<f32>(),
            batches.len() as f32,
        ];
        // The normalisers are the whole step's: every rank's tokens and micro-batches.
        d.all_reduce_sum(&mut step)?;
        let (step_tokens, accumulation_steps) = (f64::from(step[0]), step[1] as usize);
        let detached = |adapters: bool| -> candle_core::Result<Vec<Tensor>> {
            batches.iter().map(|b| Ok(token_log_probs(model, b, adapters, None)?.detach())).collect()
        };
        let old = if g.num_iterations > 1 { Some(detached(true)?) } else { None };
        let reference = if g.beta != 0.0 { Some(detached(false)?) } else { None };
        let cfg = LossConfig {
            epsilon: g.epsilon,
            epsilon_high: g.epsilon_high,
            beta: g.beta,
            loss_type: g.loss_type,
            max_completion_length: g.max_completion_length,
            accumulation_steps,
            step_tokens,
        };
        Ok(RoundBatches { batches, old, reference, cfg })
    }

    /// `num_iterations` optimizer steps on the round's batches, each with its METRIC record.
    fn optimize(
        &self,
        cx: &mut RoundCx,
        gen: &Generated,
        rb: &RoundBatches,
        round_start: Instant,
        end: usize,
    ) -> Result<(), TrainError> {
        let (spec, model) = (self.inp.spec, self.inp.model);
        let g = &spec.grpo;
        for _ in 0..g.num_iterations {
            if cx.schedule.is_done(cx.state.step) {
                break;
            }
            let mut grads: Vec<Tensor> = vec![];
            let mut stats = LossStats::default();
            let mut loss_sum = 0f64;
            for (bi, b) in rb.batches.iter().enumerate() {
                let side = spec.gradient_checkpointing.then(SideGrads::new);
                let logp = token_log_probs(model, b, true, side.clone())?;
                let old_lp = match &rb.old {
                    Some(o) => o[bi].clone(),
                    None => logp.detach(),
                };
                let reference = rb.reference.as_ref().map(|r| &r[bi]);
                let (loss, s) = grpo_loss(&logp, &old_lp, reference, &b.adv, &b.mask, &rb.cfg)?;
                loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                stats.kl += s.kl * s.tokens;
                stats.clip_fraction += s.clip_fraction * s.tokens;
                stats.tokens += s.tokens;
                accumulate(&mut grads, &loss.backward()?, &self.vars, side.as_ref())?;
            }
            if cx.dist.world() > 1 {
                let mut scalars = [loss_sum, stats.kl, stats.clip_fraction, stats.tokens];
                dist::reduce_step(cx.dist, &mut grads, &self.vars, &mut scalars)?;
                [loss_sum, stats.kl, stats.clip_fraction, stats.tokens] = scalars;
            }
            if !loss_sum.is_finite() {
                return Err(TrainError::Diverged(format!("GRPO loss is {loss_sum} at step {}", cx.state.step + 1)));
            }
            let lr = cx.schedule.lr(cx.state.step);
            let grad_norm = if grads.is_empty() { 0.0 } else { cx.opt.step(&grads, lr, spec.max_grad_norm)? };
            cx.state.step += 1;
            cx.state.tokens_seen += gen.step.tokens as u64;
            let rec = MetricRecord {
                step: cx.state.step,
                epoch: epochs_done(cx.state.epoch, end, cx.epoch_len),
                loss: Some(loss_sum),
                lr: Some(lr),
                grad_norm: Some(grad_norm),
                tokens_per_sec: Some(gen.step.tokens as f64 / round_start.elapsed().as_secs_f64().max(1e-9)),
                eval_loss: None,
                extra: round_metrics(gen, &stats, round_start),
            };
            let lead = cx.dist.rank() == 0;
            if lead && cx.schedule.log_now(cx.state.step) {
                tracing::info!("{}", rec.line());
            }
            cx.state.history.push(rec);
            cx.progress.update(cx.state.step, loss_sum);
            let step = cx.state.step;
            // Rank 0 writes its own prompts' completions.
            if lead && g.log_completions_steps > 0 && (step.is_multiple_of(g.log_completions_steps) || step == 1) {
                write_samples(self.inp.output_data_dir, step, gen, g.num_generations)?;
            }
        }
        Ok(())
    }
}

/// GRPO's own fields of a step's METRIC line: rewards, KL, clipping, completion lengths, speed.
fn round_metrics(gen: &Generated, stats: &LossStats, round_start: Instant) -> BTreeMap<String, f64> {
    let v = &gen.step;
    let (rmean, rstd) = mean_std(&v.rewards);
    let lens = &v.lengths;
    let mut extra = BTreeMap::new();
    extra.insert("reward".to_string(), rmean);
    extra.insert("reward_std".to_string(), rstd);
    for (name, scores) in &v.per_fn {
        let key = name.split(':').next().unwrap_or(name);
        extra.insert(format!("reward_{key}"), mean_std(scores).0);
    }
    extra.insert("kl".into(), stats.kl / stats.tokens.max(1.0));
    extra.insert("clip_fraction".into(), stats.clip_fraction / stats.tokens.max(1.0));
    extra.insert("completion_length".into(), mean_std(lens).0);
    extra.insert("completion_length_max".into(), lens.iter().cloned().fold(0.0, f64::max));
    extra.insert("truncated_fraction".into(), v.truncated as f64 / lens.len().max(1) as f64);
    // Every rank generates at once: the step's tokens over this rank's generation time.
    extra.insert("generation_tokens_per_sec".into(), v.tokens as f64 / gen.secs);
    extra.insert("step_time".into(), round_start.elapsed().as_secs_f64());
    extra
}

/// `output/data/completions/step-NNNNNN.jsonl`: every completion of the step with its rewards.
fn write_samples(dir: &Path, step: u64, gen: &Generated, group: usize) -> Result<(), TrainError> {
    let dir = dir.join("completions");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut out = String::new();
    for (i, c) in gen.completions.iter().enumerate() {
        let rewards: Map<String, Value> =
            gen.rewards.per_fn.iter().map(|(n, s)| (n.clone(), Value::from(s[i]))).collect();
        let row = serde_json::json!({
            "step": step, "prompt": gen.chosen[i / group].text, "completion": c.text,
            "finish": format!("{:?}", c.finish), "rewards": rewards, "reward": gen.rewards.total[i], "advantage": gen.advantages[i],
        });
        out.push_str(&row.to_string());
        out.push('\n');
    }
    let path = dir.join(format!("step-{step:06}.jsonl"));
    std::fs::write(&path, out).map_err(io_err(&path))
}
