//! What a training loop starts from and saves: the optimizer and the loop state,
//! fresh or restored from the newest checkpoint (adapter, moments, data position, RNGs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, TrainerState};
use crate::error::TrainError;
use crate::model::Model;
use crate::optim::AdamW;
use crate::rng::Rng;
use crate::spec::JobSpec;

pub struct RunState {
    pub opt: AdamW,
    pub state: TrainerState,
    pub resumed_from: Option<PathBuf>,
}

/// Fresh state, or the newest checkpoint in `checkpoint_dir` (refused when its settings differ).
/// `generation` adds GRPO's sampling RNG to a fresh state; `world` is the number of ranks.
pub fn start(
    spec: &JobSpec,
    model: &Model,
    checkpoint_dir: &Path,
    generation: bool,
    world: usize,
) -> Result<RunState, TrainError> {
    let vars = model.trainable_vars();
    let mut opt = AdamW::new(vars.clone(), spec.adamw_config())?;
    let fp = fingerprint(spec, model, world);
    checkpoint::clean_partial(checkpoint_dir);
    if let Some(loaded) = checkpoint::load_latest(checkpoint_dir, vars.len(), model.device())? {
        checkpoint::check_fingerprint(&loaded, &fp)?;
        model.load_adapter_tensors(&loaded.dir.join(checkpoint::ADAPTER_FILE))?;
        opt.m = loaded.moments.0;
        opt.v = loaded.moments.1;
        opt.step = loaded.state.step;
        tracing::info!("Resuming from checkpoint {} at step {}", loaded.dir.display(), loaded.state.step);
        tracing::debug!("resume position: epoch {}, micro-batch {}", loaded.state.epoch, loaded.state.batch_in_epoch);
        return Ok(RunState { opt, state: loaded.state, resumed_from: Some(loaded.dir) });
    }
    let state = TrainerState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        tokens_seen: 0,
        dropout_rng: Rng::derive(spec.seed, "dropout"),
        generation_rng: generation.then(|| Rng::derive(spec.seed, "generation")),
        history: vec![],
        elapsed_secs: 0.0,
        fingerprint: fp,
    };
    Ok(RunState { opt, state, resumed_from: None })
}

/// Write a checkpoint of the current adapter, moments and state; keeps `save_total_limit`.
pub fn save(
    spec: &JobSpec,
    model: &Model,
    checkpoint_dir: &Path,
    state: &TrainerState,
    opt: &AdamW,
) -> Result<PathBuf, TrainError> {
    let adapters = model.adapters();
    Ok(checkpoint::save(
        checkpoint_dir,
        state,
        (&opt.m, &opt.v),
        |p| crate::lora::save_adapter_tensors(p, &adapters),
        spec.save_total_limit,
    )?)
}

/// Settings a checkpoint must share with the job resuming it. `gradient_accumulation_steps` is
/// the micro-batches of a step over all `world` ranks (the same number with one rank), so a job
/// resumes on another world size whose accumulation keeps the effective batch.
pub fn fingerprint(spec: &JobSpec, model: &Model, world: usize) -> BTreeMap<String, String> {
    let mut f: BTreeMap<String, String> = [
        "lora_r",
        "lora_alpha",
        "use_rslora",
        "target_modules",
        "seed",
        "per_device_batch_size",
        "max_seq_length",
        "packing",
        "method",
    ]
    .iter()
    .map(|k| (k.to_string(), spec.resolved.get(*k).cloned().unwrap_or_default()))
    .collect();
    if let Model::Seq2Seq(_) = model {
        // T5 pairs are cut to these lengths (max_seq_length does not apply to them).
        for k in ["max_source_length", "max_target_length"] {
            f.insert(k.into(), spec.resolved.get(k).cloned().unwrap_or_default());
        }
    }
    f.insert("gradient_accumulation_steps".into(), (spec.gradient_accumulation_steps * world).to_string());
    f.insert("trainable_params".into(), model.trainable_param_count().to_string());
    f.insert("model".into(), model.identity());
    f
}

/// With `world` ranks, the per-rank `gradient_accumulation_steps` that keeps the effective batch
/// of the newest checkpoint in `checkpoint_dir` (written on any world size): the job's own value
/// when there is none or it already matches. Refused when the ranks cannot share the checkpoint's
/// micro-batches evenly.
pub fn accumulation_for(spec: &JobSpec, world: usize, checkpoint_dir: &Path) -> Result<usize, TrainError> {
    let own = spec.gradient_accumulation_steps;
    let Some(saved) = checkpoint::latest_state(checkpoint_dir) else { return Ok(own) };
    let Some(per_step) = saved.fingerprint.get("gradient_accumulation_steps").and_then(|v| v.parse::<usize>().ok())
    else {
        return Ok(own);
    };
    if per_step == own * world {
        return Ok(own);
    }
    if per_step % world != 0 {
        return Err(TrainError::BadInput(format!(
            "the checkpoint at step {} takes {per_step} micro-batches per step, which {world} ranks cannot share evenly: resume on a number of ranks that divides {per_step}",
            saved.step
        )));
    }
    tracing::info!(
        "Resuming a checkpoint of {per_step} micro-batches per step on {world} rank(s): gradient_accumulation_steps {own} → {} keeps the effective batch",
        per_step / world
    );
    Ok(per_step / world)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{TrainerState, STATE_FILE};

    /// A checkpoint directory whose state says `per_step` micro-batches per step.
    fn checkpoint_of(per_step: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let state = TrainerState {
            step: 7,
            epoch: 0,
            batch_in_epoch: 0,
            tokens_seen: 0,
            dropout_rng: Rng::new(1),
            generation_rng: None,
            history: vec![],
            elapsed_secs: 0.0,
            fingerprint: [("gradient_accumulation_steps".to_string(), per_step.to_string())].into(),
        };
        let ckpt = dir.path().join("checkpoint-7");
        std::fs::create_dir_all(&ckpt).unwrap();
        std::fs::write(ckpt.join(STATE_FILE), serde_json::to_string(&state).unwrap()).unwrap();
        dir
    }

    #[test]
    fn another_world_size_keeps_the_checkpoints_effective_batch_or_is_refused() {
        let hp = [("gradient_accumulation_steps".to_string(), "2".to_string())].into_iter().collect();
        let spec = JobSpec::from_hyperparameters(&hp).unwrap();
        let none = tempfile::tempdir().unwrap();
        assert_eq!(accumulation_for(&spec, 4, none.path()).unwrap(), 2, "no checkpoint: the job's own value");
        let four = checkpoint_of(4);
        assert_eq!(accumulation_for(&spec, 2, four.path()).unwrap(), 2);
        assert_eq!(accumulation_for(&spec, 1, four.path()).unwrap(), 4);
        assert_eq!(accumulation_for(&spec, 4, four.path()).unwrap(), 1);
        let e = accumulation_for(&spec, 3, four.path()).unwrap_err().to_string();
        assert!(e.contains("4 micro-batches per step, which 3 ranks cannot share evenly"), "{e}");
    }
}
