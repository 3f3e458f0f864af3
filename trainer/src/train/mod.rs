//! The training loops and what they share: one schedule (steps, epochs, cadences, learning rate),
//! the state a loop saves and resumes, the frame every loop runs in (resume, SIGTERM, epochs,
//! checkpoints), supervised fine-tuning, and GRPO.

pub mod frame;
pub mod grpo;
pub mod schedule;
pub mod sft;
pub mod state;

use std::path::PathBuf;

use crate::checkpoint::TrainerState;

/// What a finished loop hands to the job's outputs.
pub struct Outcome {
    pub state: TrainerState,
    pub total_steps: u64,
    /// Fractional epochs the loop has consumed: the last METRIC line's `epoch`, and the same after a resume.
    pub epochs_completed: f64,
    pub resumed_from: Option<PathBuf>,
}
