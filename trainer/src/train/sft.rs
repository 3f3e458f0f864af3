//! The supervised fine-tuning loop: micro-batches → loss on target tokens →
//! accumulated LoRA gradients → clip → AdamW → metrics, validation and checkpoints.
//!
//! Gradient accumulation is exact: every micro-batch's summed token loss is
//! divided by the target-token count of the whole optimizer step, so the
//! accumulated gradient equals the gradient of the full batch.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::data::{make_batches, Batch, BatchSpec, Example};
use crate::error::TrainError;
use crate::model::{Decoder, ForwardCtx};
use kernels::recompute::SideGrads;

use crate::optim::accumulate;
use crate::report::{MetricRecord, Progress};
use crate::rng::Rng;
use crate::sagemaker::StopFlag;
use crate::spec::JobSpec;

use super::schedule::{epoch_order, epochs_done, Schedule};
use super::state::{self, RunState};
use super::Outcome;

pub struct SftInputs<'a> {
    pub spec: &'a JobSpec,
    pub model: &'a Decoder,
    pub train: &'a [Example],
    pub validation: &'a [Example],
    pub pad_id: u32,
    pub checkpoint_dir: &'a Path,
    pub stop: &'a StopFlag,
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

/// Micro-batches of an epoch, grouped into optimizer steps (a group never spans two epochs).
fn epoch_plan(inp: &SftInputs, epoch: u64) -> Vec<Batch> {
    let spec = batch_spec(inp.spec, inp.pad_id);
    make_batches(inp.train, &epoch_order(inp.train.len(), inp.spec.seed, epoch), &spec)
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
pub fn evaluate(model: &Decoder, examples: &[Example], spec: &JobSpec, pad_id: u32) -> Result<Option<f64>, TrainError> {
    if examples.is_empty() {
        return Ok(None);
    }
    let order: Vec<usize> = (0..examples.len()).collect();
    let (mut nll, mut tokens) = (0f64, 0usize);
    for b in make_batches(examples, &order, &batch_spec(spec, pad_id)) {
        let t = BatchTensors::new(&b, &model.device)?;
        let mut ctx = ForwardCtx::eval();
        nll += summed_nll(model, &t, &mut ctx)?.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        tokens += b.target_tokens;
    }
    Ok((tokens > 0).then(|| nll / tokens as f64))
}

pub fn train(inp: SftInputs) -> Result<Outcome, TrainError> {
    let spec = inp.spec;
    let model = inp.model;
    let ga = spec.gradient_accumulation_steps.max(1);
    let micro_per_epoch = epoch_plan(&inp, 0).len();
    if micro_per_epoch == 0 {
        return Err(TrainError::BadInput("the training set produced no batches".into()));
    }
    let schedule = Schedule::new(spec, micro_per_epoch.div_ceil(ga) as u64);
    let total_steps = schedule.total_steps;

    let vars = model.trainable_vars();
    let RunState { mut opt, mut state, resumed_from } = state::start(spec, model, inp.checkpoint_dir, false)?;

    tracing::info!(
        "Training: {} examples, {} micro-batches/epoch, gradient accumulation {}, {} optimizer steps (warmup {}), {} trainable parameters",
        inp.train.len(), micro_per_epoch, ga, total_steps, schedule.warmup_steps, model.trainable_param_count()
    );
    let started = Instant::now();
    let base_elapsed = state.elapsed_secs;
    let mut progress = Progress::new(total_steps, state.step);
    let mut plan = epoch_plan(&inp, state.epoch);
    let (mut log_loss, mut log_steps, mut log_tokens, mut log_t0) = (0f64, 0u64, 0u64, Instant::now());

    while !schedule.is_done(state.step) {
        if state.batch_in_epoch >= plan.len() {
            state.epoch += 1;
            state.batch_in_epoch = 0;
            plan = epoch_plan(&inp, state.epoch);
        }
        let group_end = (state.batch_in_epoch + ga).min(plan.len());
        let group = &plan[state.batch_in_epoch..group_end];
        let step_targets: usize = group.iter().map(|b| b.target_tokens).sum();
        let mut grads: Vec<Tensor> = Vec::new();
        let mut step_loss = 0f64;
        let mut step_tokens = 0u64;
        let mut rng = state.dropout_rng.clone();
        for b in group {
            if inp.stop.is_set() {
                // Drop the partial step: the checkpoint holds the state after the last complete one.
                state.elapsed_secs = base_elapsed + started.elapsed().as_secs_f64();
                let dir = state::save(spec, model, inp.checkpoint_dir, &state, &opt)?;
                return Err(TrainError::Interrupted { step: state.step, checkpoint: dir.display().to_string() });
            }
            if b.target_tokens == 0 || step_targets == 0 {
                continue;
            }
            let t = BatchTensors::new(b, &model.device)?;
            let side = spec.gradient_checkpointing.then(SideGrads::new);
            let mut ctx = ForwardCtx::train(rng, side.clone());
            let nll = summed_nll(model, &t, &mut ctx)?;
            rng = ctx.dropout_rng.take().unwrap_or_else(|| Rng::new(0));
            let loss = (nll / step_targets as f64)?;
            step_loss += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            accumulate(&mut grads, &loss.backward()?, &vars, side.as_ref())?;
            step_tokens += b.segment_ids.iter().filter(|s| **s != 0).count() as u64;
        }
        if !step_loss.is_finite() {
            return Err(TrainError::Diverged(format!(
                "loss is {step_loss} at step {}; lower learning_rate (now {}) or check the data",
                state.step + 1,
                spec.learning_rate
            )));
        }
        let lr = schedule.lr(state.step);
        let grad_norm = if grads.is_empty() { 0.0 } else { opt.step(&grads, lr, spec.max_grad_norm)? };
        drop(grads);
        state.dropout_rng = rng;
        state.step += 1;
        state.batch_in_epoch = group_end;
        state.tokens_seen += step_tokens;
        log_loss += step_loss;
        log_steps += 1;
        log_tokens += step_tokens;
        let epoch_f = epochs_done(state.epoch, state.batch_in_epoch, plan.len());

        if schedule.log_now(state.step) {
            let secs = log_t0.elapsed().as_secs_f64().max(1e-9);
            let rec = MetricRecord {
                step: state.step,
                epoch: epoch_f,
                loss: Some(log_loss / log_steps as f64),
                lr: Some(lr),
                grad_norm: Some(grad_norm),
                tokens_per_sec: Some(log_tokens as f64 / secs),
                ..Default::default()
            };
            tracing::info!("{}", rec.line());
            state.history.push(rec);
            (log_loss, log_steps, log_tokens, log_t0) = (0.0, 0, 0, Instant::now());
        }
        progress.update(state.step, step_loss);
        if schedule.eval_now(state.step) {
            if let Some(eval_loss) = evaluate(model, inp.validation, spec, inp.pad_id)? {
                let rec =
                    MetricRecord { step: state.step, epoch: epoch_f, eval_loss: Some(eval_loss), ..Default::default() };
                tracing::info!("{}", rec.line());
                state.history.push(rec);
            }
        }
        state.elapsed_secs = base_elapsed + started.elapsed().as_secs_f64();
        if schedule.save_now(state.step) {
            let dir = state::save(spec, model, inp.checkpoint_dir, &state, &opt)?;
            tracing::info!("checkpoint saved: {}", dir.display());
        }
    }
    let epochs_completed = epochs_done(state.epoch, state.batch_in_epoch, plan.len());
    Ok(Outcome { state, total_steps, epochs_completed, resumed_from })
}
