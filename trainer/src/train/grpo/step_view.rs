//! What a GRPO step's METRIC line reports: every rank's rewards, reward parts and completion
//! lengths, gathered in rank order (one rank: its own).

use crate::dist::{self, Collective};
use crate::error::TrainError;
use crate::generate::{Completion, Finish};
use crate::rewards::WeightedScores;

/// Rewards, their parts and completion lengths of a whole step, every rank's in rank order.
pub(super) struct StepView {
    pub(super) rewards: Vec<f64>,
    pub(super) per_fn: Vec<(String, Vec<f64>)>,
    pub(super) lengths: Vec<f64>,
    pub(super) truncated: usize,
    pub(super) tokens: usize,
}

impl StepView {
    /// This rank's numbers, gathered from every rank when there are several.
    pub(super) fn gather(
        rewards: &WeightedScores,
        completions: &[Completion],
        d: &dyn Collective,
    ) -> Result<StepView, TrainError> {
        let lengths: Vec<f64> = completions.iter().map(|c| c.ids.len() as f64).collect();
        let truncated: Vec<f64> = completions.iter().map(|c| f64::from(u8::from(c.finish == Finish::Length))).collect();
        if d.world() == 1 {
            return Ok(StepView {
                rewards: rewards.total.clone(),
                per_fn: rewards.per_fn.clone(),
                tokens: lengths.iter().sum::<f64>() as usize,
                truncated: truncated.iter().sum::<f64>() as usize,
                lengths,
            });
        }
        // Per rank: totals, each function's scores, lengths, truncation flags (n values each).
        let mut parts: Vec<&[f64]> = vec![&rewards.total];
        parts.extend(rewards.per_fn.iter().map(|(_, v)| v.as_slice()));
        parts.extend([lengths.as_slice(), truncated.as_slice()]);
        let k = parts.len();
        let flat: Vec<f32> = parts.iter().flat_map(|p| p.iter().map(|x| *x as f32)).collect();
        let mut view = StepView {
            rewards: vec![],
            per_fn: rewards.per_fn.iter().map(|(n, _)| (n.clone(), vec![])).collect(),
            lengths: vec![],
            truncated: 0,
            tokens: 0,
        };
        for got in dist::all_gather(d, &flat)? {
            let n = got.len() / k;
            let col = |i: usize| got[i * n..(i + 1) * n].iter().map(|x| f64::from(*x));
            view.rewards.extend(col(0));
            for (j, (_, v)) in view.per_fn.iter_mut().enumerate() {
                v.extend(col(1 + j));
            }
            view.lengths.extend(col(k - 2));
            view.truncated += col(k - 1).sum::<f64>() as usize;
        }
        view.tokens = view.lengths.iter().sum::<f64>() as usize;
        Ok(view)
    }
}
