//! One schedule for every loop: how many optimizer steps a job takes (`max_steps`, else `epochs`
//! passes over the data), the learning rate at each step (warmup, then constant, linear or cosine
//! as transformers' schedulers), when to log, evaluate and save, and the seeded order of each
//! epoch. SFT and GRPO differ only in how many optimizer steps one pass over their data takes.

use crate::rng::Rng;
use crate::spec::{JobSpec, Scheduler};

#[derive(Debug, Clone)]
pub struct Schedule {
    pub total_steps: u64,
    pub warmup_steps: u64,
    peak_lr: f64,
    scheduler: Scheduler,
    logging_steps: u64,
    eval_steps: u64,
    save_steps: u64,
}

impl Schedule {
    /// `steps_per_epoch`: optimizer steps one pass over the training data takes.
    pub fn new(spec: &JobSpec, steps_per_epoch: u64) -> Schedule {
        let total_steps =
            spec.max_steps.unwrap_or_else(|| ((spec.epochs * steps_per_epoch as f64).ceil() as u64).max(1));
        let warmup_steps = if spec.warmup_steps > 0 {
            spec.warmup_steps
        } else {
            (spec.warmup_ratio * total_steps as f64).ceil() as u64
        };
        Schedule {
            total_steps,
            warmup_steps,
            peak_lr: spec.learning_rate,
            scheduler: spec.lr_scheduler,
            logging_steps: spec.logging_steps.max(1),
            eval_steps: spec.eval_steps,
            save_steps: spec.save_steps,
        }
    }

    /// Learning rate for optimizer step `step` (0-based: the step about to be taken).
    pub fn lr(&self, step: u64) -> f64 {
        let (peak, warmup) = (self.peak_lr, self.warmup_steps);
        if step < warmup {
            return peak * step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / self.total_steps.saturating_sub(warmup).max(1) as f64;
        match self.scheduler {
            Scheduler::Constant => peak,
            Scheduler::Linear => peak * (1.0 - progress).max(0.0),
            Scheduler::Cosine => peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }

    pub fn is_done(&self, steps_taken: u64) -> bool {
        steps_taken >= self.total_steps
    }

    /// After `steps_taken` steps: write a METRIC line (every `logging_steps`, and the last step).
    pub fn log_now(&self, steps_taken: u64) -> bool {
        steps_taken.is_multiple_of(self.logging_steps) || steps_taken == self.total_steps
    }

    /// Validate now (every `eval_steps` when > 0, and the last step).
    pub fn eval_now(&self, steps_taken: u64) -> bool {
        (self.eval_steps > 0 && steps_taken.is_multiple_of(self.eval_steps)) || steps_taken == self.total_steps
    }

    /// Checkpoint now (every `save_steps` when > 0; the last step is saved as the job's output instead).
    pub fn save_now(&self, steps_taken: u64) -> bool {
        self.save_steps > 0 && steps_taken.is_multiple_of(self.save_steps) && steps_taken < self.total_steps
    }
}

/// Order of the `n` training items in an epoch: a seeded shuffle per epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(seed, &format!("shuffle-epoch-{epoch}")).shuffle(&mut order);
    order
}

/// Epochs done, fractional: `epoch` (0-based) plus the part of it consumed (`position` of `len`).
/// The `epoch` of the METRIC lines and the summary's `epochs_completed` both come from here.
pub fn epochs_done(epoch: u64, position: usize, len: usize) -> f64 {
    epoch as f64 + position as f64 / len.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn schedule(pairs: &[(&str, &str)], steps_per_epoch: u64) -> Schedule {
        let hp: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Schedule::new(&JobSpec::from_hyperparameters(&hp).unwrap(), steps_per_epoch)
    }

    #[test]
    fn learning_rate_follows_warmup_then_the_scheduler() {
        let s = |kind: &str, peak: &str, warmup: &str| {
            schedule(
                &[("max_steps", "100"), ("lr_scheduler", kind), ("learning_rate", peak), ("warmup_steps", warmup)],
                1,
            )
        };
        let linear = s("linear", "1", "10");
        assert_eq!(linear.lr(0), 0.0);
        assert!((linear.lr(5) - 0.5).abs() < 1e-12);
        assert!((linear.lr(10) - 1.0).abs() < 1e-12);
        assert!((linear.lr(55) - 0.5).abs() < 1e-12);
        assert!((s("cosine", "1", "10").lr(55) - 0.5).abs() < 1e-12);
        assert_eq!(s("constant", "2", "0").lr(99), 2.0);
    }

    #[test]
    fn steps_come_from_epochs_unless_max_steps_is_set() {
        assert_eq!(schedule(&[("epochs", "2")], 16).total_steps, 32);
        assert_eq!(schedule(&[("epochs", "0.5")], 5).total_steps, 3);
        assert_eq!(schedule(&[("epochs", "2"), ("max_steps", "7")], 16).total_steps, 7);
        assert_eq!(schedule(&[("epochs", "2"), ("warmup_ratio", "0.1")], 16).warmup_steps, 4);
    }

    #[test]
    fn cadences() {
        let s = schedule(&[("max_steps", "10"), ("logging_steps", "3"), ("eval_steps", "4"), ("save_steps", "5")], 1);
        let at = |f: &dyn Fn(u64) -> bool| (1..=10).filter(|&k| f(k)).collect::<Vec<_>>();
        assert_eq!(at(&|k| s.log_now(k)), vec![3, 6, 9, 10]);
        assert_eq!(at(&|k| s.eval_now(k)), vec![4, 8, 10]);
        assert_eq!(at(&|k| s.save_now(k)), vec![5]);
    }

    #[test]
    fn epochs_done_is_fractional_and_whole_at_an_epoch_end() {
        assert_eq!(epochs_done(1, 16, 16), 2.0);
        assert_eq!(epochs_done(0, 4, 16), 0.25);
        assert_eq!(epochs_done(0, 0, 0), 0.0);
    }
}
