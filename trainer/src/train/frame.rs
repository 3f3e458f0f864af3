//! The frame every training loop runs in: start fresh or resume, then round after round until the
//! schedule is done — checkpoint and stop on SIGTERM, roll over to the next epoch, keep the elapsed
//! time, save on the save cadence — and hand back the outcome. A loop (SFT, GRPO) supplies only
//! its epochs and its rounds ([`Rounds`]), so checkpointing and SIGTERM safety come with it.

use std::path::Path;
use std::time::Instant;

use crate::checkpoint::TrainerState;
use crate::dist::Collective;
use crate::error::TrainError;
use crate::model::Model;
use crate::optim::AdamW;
use crate::report::Progress;
use crate::sagemaker::StopFlag;
use crate::spec::JobSpec;
use crate::track::Tracker;

use super::schedule::{epochs_done, Schedule};
use super::state::{self, RunState};
use super::Outcome;

/// What one loop does inside the frame.
pub trait Rounds {
    /// Prepares `epoch` (its micro-batches, its prompt order) and returns how many units it has.
    fn plan_epoch(&mut self, epoch: u64) -> usize;
    /// The loop's opening log line, once the state is known.
    fn announce(&self, schedule: &Schedule);
    /// One round from `cx.state.batch_in_epoch`: it advances the step, the position in the epoch
    /// and the metrics, or returns [`RoundEnd::Stopped`] having changed nothing (SIGTERM seen
    /// between micro-batches: the partial step is dropped).
    fn round(&mut self, cx: &mut RoundCx) -> Result<RoundEnd, TrainError>;
}

/// How a round ended.
pub enum RoundEnd {
    Done,
    Stopped,
}

/// What a round works on.
pub struct RoundCx<'a> {
    pub state: &'a mut TrainerState,
    pub opt: &'a mut AdamW,
    pub schedule: &'a Schedule,
    pub progress: &'a mut Progress,
    pub stop: &'a StopFlag,
    /// Units in the current epoch.
    pub epoch_len: usize,
    /// The ranks this loop trains with (one: [`crate::dist::Solo`]).
    pub dist: &'a dyn Collective,
}

/// Where and how a loop runs.
pub struct FrameInputs<'a> {
    pub spec: &'a JobSpec,
    pub model: &'a Model,
    pub checkpoint_dir: &'a Path,
    pub stop: &'a StopFlag,
    pub schedule: Schedule,
    /// GRPO: the state carries the sampling RNG.
    pub generation: bool,
    pub dist: &'a dyn Collective,
    /// Gets every METRIC record as the history grows.
    pub tracker: &'a Tracker,
}

/// Runs `rounds` to the end of the schedule (or to SIGTERM: `TrainError::Interrupted` after the
/// checkpoint of the last complete step is written). With several ranks, rank 0 alone writes
/// checkpoints, and the ranks stop together: a round takes their vote (a rank that stopped on its
/// own would leave the others waiting in a collective).
pub fn run(inp: FrameInputs, rounds: &mut impl Rounds) -> Result<Outcome, TrainError> {
    let FrameInputs { spec, model, checkpoint_dir, stop, schedule, generation, dist, tracker } = inp;
    let writes = dist.rank() == 0;
    let RunState { mut opt, mut state, resumed_from } =
        state::start(spec, model, checkpoint_dir, generation, dist.world())?;
    if resumed_from.is_some() {
        // The attempt that wrote the checkpoint logged its history already.
        tracker.skip_history(state.history.len());
    }
    rounds.announce(&schedule);
    let started = Instant::now();
    let base_elapsed = state.elapsed_secs;
    let mut progress = Progress::new(schedule.total_steps, state.step);
    let mut epoch_len = rounds.plan_epoch(state.epoch);
    while !schedule.is_done(state.step) {
        if state.batch_in_epoch >= epoch_len {
            state.epoch += 1;
            state.batch_in_epoch = 0;
            epoch_len = rounds.plan_epoch(state.epoch);
        }
        let end = if stop.is_set() && dist.world() == 1 {
            RoundEnd::Stopped
        } else {
            let mut cx = RoundCx {
                state: &mut state,
                opt: &mut opt,
                schedule: &schedule,
                progress: &mut progress,
                stop,
                epoch_len,
                dist,
            };
            // A rank that fails releases the others from the step's collective.
            rounds.round(&mut cx).inspect_err(|e| dist.abort(&e.to_string()))?
        };
        state.elapsed_secs = base_elapsed + started.elapsed().as_secs_f64();
        tracker.history(&state.history);
        let saving = matches!(end, RoundEnd::Stopped) || schedule.save_now(state.step);
        if cfg!(debug_assertions) && saving && dist.world() > 1 {
            crate::dist::check_replicas(dist, &model.trainable_vars(), state.step)?;
        }
        if let RoundEnd::Stopped = end {
            let dir = match writes {
                true => state::save(spec, model, checkpoint_dir, &state, &opt)?,
                false => checkpoint_dir.to_path_buf(),
            };
            return Err(TrainError::Interrupted { step: state.step, checkpoint: dir.display().to_string() });
        }
        if writes && schedule.save_now(state.step) {
            let dir = state::save(spec, model, checkpoint_dir, &state, &opt)?;
            tracing::info!("checkpoint saved: {}", dir.display());
        }
    }
    let epochs_completed = epochs_done(state.epoch, state.batch_in_epoch, epoch_len);
    Ok(Outcome { state, total_steps: schedule.total_steps, epochs_completed, resumed_from })
}
