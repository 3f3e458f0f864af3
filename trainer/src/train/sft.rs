//! The supervised fine-tuning loop: micro-batches → loss on target tokens →
//! accumulated LoRA gradients → clip → AdamW → metrics, validation and checkpoints. The same loop
//! trains a decoder-only model on token sequences and T5 on input/target pairs.
//!
//! Gradient accumulation is exact: every micro-batch's summed token loss is
//! divided by the target-token count of the whole optimizer step, so the
//! accumulated gradient equals the gradient of the full batch. Data-parallel
//! ranks split a step's micro-batches (rank r takes every world-th one, from
//! the r-th) and sum their gradients: the step is the same as on one rank.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::data::{Batch, BatchSpec, MicroBatch, TrainSet};
use crate::dist::{self, Collective};
use crate::error::TrainError;
use crate::model::{Decoder, ForwardCtx, Model};
use kernels::recompute::SideGrads;

use crate::optim::accumulate;
use crate::report::MetricRecord;
use crate::rng::Rng;
use crate::sagemaker::StopFlag;
use crate::spec::JobSpec;
use crate::track::Tracker;

use super::frame::{self, FrameInputs, RoundCx, RoundEnd, Rounds};
use super::schedule::{epoch_order, epochs_done, Schedule};
use super::Outcome;

pub struct SftInputs<'a> {
    pub spec: &'a JobSpec,
    pub model: &'a Model,
    pub train: &'a TrainSet,
    pub validation: &'a TrainSet,
    pub pad_id: u32,
    pub checkpoint_dir: &'a Path,
    pub stop: &'a StopFlag,
    /// The data-parallel group ([`dist::Solo`]: one rank).
    pub dist: &'a dyn Collective,
    /// Experiment tracking ([`Tracker::off`] when none).
    pub tracker: &'a Tracker,
}

/// Tensors of one micro-batch on the model's device.
pub struct BatchTensors {
    pub input_ids: Tensor,
    pub positions: Tensor,
    pub segment_ids: Tensor,
    pub targets: Tensor,
    pub mask: Tensor,
}

impl BatchTensors {
    pub fn new(b: &Batch, device: &Device) -> candle_core::Result<BatchTensors> {
        let shape = (b.batch, b.seq);
        Ok(BatchTensors {
            input_ids: Tensor::from_slice(&b.input_ids, shape, device)?,
            positions: Tensor::from_slice(&b.positions, shape, device)?,
            segment_ids: Tensor::from_slice(&b.segment_ids, shape, device)?,
            targets: Tensor::from_slice(&b.targets, shape, device)?,
            mask: Tensor::from_slice(&b.target_mask, b.batch * b.seq, device)?,
        })
    }
}

/// Σ −log p(target) over the batch's target tokens (a scalar tensor, still attached to the graph).
pub fn summed_nll(model: &Decoder, t: &BatchTensors, ctx: &mut ForwardCtx) -> candle_core::Result<Tensor> {
    let hidden = model.hidden(&t.input_ids, &t.positions, Some(&t.segment_ids), ctx)?;
    let logp = model.target_log_probs(&hidden, &t.targets)?;
    logp.mul(&t.mask)?.sum_all()?.neg()
}

/// Σ −log p(target) over a micro-batch of either kind, with the model of that kind.
pub fn micro_batch_nll(model: &Model, b: &MicroBatch, ctx: &mut ForwardCtx) -> candle_core::Result<Tensor> {
    match (model, b) {
        (Model::Causal(m), MicroBatch::Causal(b)) => summed_nll(m, &BatchTensors::new(b, &m.device)?, ctx),
        (Model::Seq2Seq(m), MicroBatch::Seq2Seq(b)) => {
            let shape = (b.batch, b.source_len);
            let ids = Tensor::from_slice(&b.source_ids, shape, &m.device)?;
            let mask = Tensor::from_slice(&b.source_mask, shape, &m.device)?;
            m.summed_nll(&ids, &mask, &b.labels, ctx)
        }
        _ => Err(candle_core::Error::Msg("internal error: a micro-batch made for the other model kind".into())),
    }
}

/// Micro-batches of an epoch, grouped into optimizer steps (a group never spans two epochs).
fn epoch_plan(inp: &SftInputs, epoch: u64) -> Vec<MicroBatch> {
    let spec = batch_spec(inp.spec, inp.pad_id);
    inp.train.batches(&epoch_order(inp.train.len(), inp.spec.seed, epoch), &spec)
}

fn batch_spec(spec: &JobSpec, pad_id: u32) -> BatchSpec {
    BatchSpec {
        batch_size: spec.per_device_batch_size,
        max_seq_length: spec.max_seq_length,
        packing: spec.packing,
        pad_id,
    }
}

/// Validation loss: mean −log p over all target tokens, adapters on, no dropout.
pub fn evaluate(model: &Model, examples: &TrainSet, spec: &JobSpec, pad_id: u32) -> Result<Option<f64>, TrainError> {
    if examples.is_empty() {
        return Ok(None);
    }
    let order: Vec<usize> = (0..examples.len()).collect();
    let (mut nll, mut tokens) = (0f64, 0usize);
    for b in examples.batches(&order, &batch_spec(spec, pad_id)) {
        let mut ctx = ForwardCtx::eval();
        nll += micro_batch_nll(model, &b, &mut ctx)?.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        tokens += b.target_tokens();
    }
    Ok((tokens > 0).then(|| nll / tokens as f64))
}

pub fn train(inp: SftInputs) -> Result<Outcome, TrainError> {
    let spec = inp.spec;
    let ga = spec.gradient_accumulation_steps.max(1);
    let micro_per_epoch = epoch_plan(&inp, 0).len();
    if micro_per_epoch == 0 {
        return Err(TrainError::BadInput("the training set produced no batches".into()));
    }
    // One optimizer step takes `ga` micro-batches on every rank.
    let schedule = Schedule::new(spec, micro_per_epoch.div_ceil(ga * inp.dist.world()) as u64);
    let frame = FrameInputs {
        spec,
        model: inp.model,
        checkpoint_dir: inp.checkpoint_dir,
        stop: inp.stop,
        schedule,
        generation: false,
        dist: inp.dist,
        tracker: inp.tracker,
    };
    let mut rounds = SftRounds {
        vars: inp.model.trainable_vars(),
        inp,
        ga,
        micro_per_epoch,
        plan: Vec::new(),
        log: LogWindow::new(),
    };
    frame::run(frame, &mut rounds)
}

/// Loss and tokens since the last METRIC line.
struct LogWindow {
    loss: f64,
    steps: u64,
    tokens: u64,
    /// Seconds in the gradient all-reduce (several ranks).
    reducing: f64,
    since: Instant,
}

impl LogWindow {
    fn new() -> LogWindow {
        LogWindow { loss: 0.0, steps: 0, tokens: 0, reducing: 0.0, since: Instant::now() }
    }
}

/// SFT in the frame: a round is one optimizer step over `gradient_accumulation_steps` micro-batches.
struct SftRounds<'a> {
    inp: SftInputs<'a>,
    vars: Vec<candle_core::Var>,
    ga: usize,
    micro_per_epoch: usize,
    plan: Vec<MicroBatch>,
    log: LogWindow,
}

impl Rounds for SftRounds<'_> {
    fn plan_epoch(&mut self, epoch: u64) -> usize {
        self.plan = epoch_plan(&self.inp, epoch);
        self.plan.len()
    }

    fn announce(&self, schedule: &Schedule) {
        tracing::info!(
            "Training: {} examples, {} micro-batches/epoch, gradient accumulation {}, {} optimizer steps (warmup {}), {} trainable parameters",
            self.inp.train.len(), self.micro_per_epoch, self.ga, schedule.total_steps, schedule.warmup_steps, self.inp.model.trainable_param_count()
        );
    }

    fn round(&mut self, cx: &mut RoundCx) -> Result<RoundEnd, TrainError> {
        let (spec, model) = (self.inp.spec, self.inp.model);
        let (rank, world) = (cx.dist.rank(), cx.dist.world());
        let state = &mut *cx.state;
        let group_end = (state.batch_in_epoch + self.ga * world).min(self.plan.len());
        let group = &self.plan[state.batch_in_epoch..group_end];
        // Every rank knows the whole step's target tokens, so the summed gradient is the step's.
        let step_targets: usize = group.iter().map(MicroBatch::target_tokens).sum();
        let mut grads: Vec<Tensor> = Vec::new();
        let mut step_loss = 0f64;
        let mut step_tokens = 0u64;
        // One rank: the dropout stream runs through the step's micro-batches as it always has.
        let (mut rng, next_state_rng) = state.dropout_rng.for_rank("dropout", rank, world);
        for b in group.iter().skip(rank).step_by(world) {
            if world == 1 && cx.stop.is_set() {
                // Drop the partial step: the checkpoint holds the state after the last complete one.
                return Ok(RoundEnd::Stopped);
            }
            if b.target_tokens() == 0 || step_targets == 0 {
                continue;
            }
            let side = spec.gradient_checkpointing.then(SideGrads::new);
            let mut ctx = ForwardCtx::train(rng, side.clone());
            let nll = micro_batch_nll(model, b, &mut ctx)?;
            rng = ctx.dropout_rng.take().unwrap_or_else(|| Rng::new(0));
            let loss = (nll / step_targets as f64)?;
            step_loss += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            accumulate(&mut grads, &loss.backward()?, &self.vars, side.as_ref())?;
            step_tokens += b.tokens() as u64;
        }
        if world > 1 {
            let mut scalars = [step_loss, step_tokens as f64, f64::from(u8::from(cx.stop.is_set()))];
            let t = Instant::now();
            dist::reduce_step(cx.dist, &mut grads, &self.vars, &mut scalars)?;
            self.log.reducing += t.elapsed().as_secs_f64();
            if scalars[2] > 0.0 {
                return Ok(RoundEnd::Stopped);
            }
            (step_loss, step_tokens) = (scalars[0], scalars[1].round() as u64);
        }
        let rng = next_state_rng.unwrap_or(rng);
        if !step_loss.is_finite() {
            return Err(TrainError::Diverged(format!(
                "loss is {step_loss} at step {}; lower learning_rate (now {}) or check the data",
                state.step + 1,
                spec.learning_rate
            )));
        }
        let lr = cx.schedule.lr(state.step);
        let grad_norm = if grads.is_empty() { 0.0 } else { cx.opt.step(&grads, lr, spec.max_grad_norm)? };
        drop(grads);
        state.dropout_rng = rng;
        state.step += 1;
        state.batch_in_epoch = group_end;
        state.tokens_seen += step_tokens;
        let log = &mut self.log;
        log.loss += step_loss;
        log.steps += 1;
        log.tokens += step_tokens;
        let epoch_f = epochs_done(state.epoch, state.batch_in_epoch, self.plan.len());

        if cx.schedule.log_now(state.step) {
            let secs = log.since.elapsed().as_secs_f64().max(1e-9);
            // tokens/s: every rank's tokens of the window (the reduced step counts).
            let rec = MetricRecord {
                step: state.step,
                epoch: epoch_f,
                loss: Some(log.loss / log.steps as f64),
                lr: Some(lr),
                grad_norm: Some(grad_norm),
                tokens_per_sec: Some(log.tokens as f64 / secs),
                // Several ranks: the share of the window spent summing gradients.
                extra: match world {
                    1 => Default::default(),
                    _ => [("allreduce_share".to_string(), log.reducing / secs)].into(),
                },
                ..Default::default()
            };
            if rank == 0 {
                tracing::info!("{}", rec.line());
            }
            state.history.push(rec);
            *log = LogWindow::new();
        }
        cx.progress.update(state.step, step_loss);
        if cx.schedule.eval_now(state.step) {
            if let Some(eval_loss) = evaluate(model, self.inp.validation, spec, self.inp.pad_id)? {
                let rec =
                    MetricRecord { step: state.step, epoch: epoch_f, eval_loss: Some(eval_loss), ..Default::default() };
                if rank == 0 {
                    tracing::info!("{}", rec.line());
                }
                state.history.push(rec);
            }
        }
        Ok(RoundEnd::Done)
    }
}
