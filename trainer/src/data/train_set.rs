//! Training examples of either model kind — one token sequence with a loss mask (decoder-only
//! families) or an encoder input with its decoder target (T5) — and the micro-batches the
//! training loop takes from them, so one loop serves both.

use super::batch::{make_batches, split_validation, Batch, BatchSpec};
use super::seq2seq::{make_seq2seq_batches, Seq2SeqBatch, Seq2SeqExample};
use super::Example;

#[derive(Debug, Clone)]
pub enum TrainSet {
    Causal(Vec<Example>),
    Seq2Seq(Vec<Seq2SeqExample>),
}

/// One micro-batch of a [`TrainSet`].
#[derive(Debug, Clone)]
pub enum MicroBatch {
    Causal(Batch),
    Seq2Seq(Seq2SeqBatch),
}

impl TrainSet {
    pub fn len(&self) -> usize {
        match self {
            TrainSet::Causal(v) => v.len(),
            TrainSet::Seq2Seq(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty set of the same kind.
    pub fn empty_like(&self) -> TrainSet {
        match self {
            TrainSet::Causal(_) => TrainSet::Causal(vec![]),
            TrainSet::Seq2Seq(_) => TrainSet::Seq2Seq(vec![]),
        }
    }

    /// [`split_validation`] of either kind: `(train, validation)`.
    pub fn split_validation(self, fraction: f64, seed: u64) -> (TrainSet, TrainSet) {
        match self {
            TrainSet::Causal(v) => {
                let (t, v) = split_validation(v, fraction, seed);
                (TrainSet::Causal(t), TrainSet::Causal(v))
            }
            TrainSet::Seq2Seq(v) => {
                let (t, v) = split_validation(v, fraction, seed);
                (TrainSet::Seq2Seq(t), TrainSet::Seq2Seq(v))
            }
        }
    }

    /// Micro-batches of the examples taken in `order` (packing and `max_seq_length` apply to the
    /// decoder families; sequence-to-sequence pairs were cut to their lengths when tokenised).
    pub fn batches(&self, order: &[usize], spec: &BatchSpec) -> Vec<MicroBatch> {
        match self {
            TrainSet::Causal(v) => make_batches(v, order, spec).into_iter().map(MicroBatch::Causal).collect(),
            TrainSet::Seq2Seq(v) => make_seq2seq_batches(v, order, spec.batch_size, spec.pad_id)
                .into_iter()
                .map(MicroBatch::Seq2Seq)
                .collect(),
        }
    }
}

impl MicroBatch {
    /// Tokens the loss counts.
    pub fn target_tokens(&self) -> usize {
        match self {
            MicroBatch::Causal(b) => b.target_tokens,
            MicroBatch::Seq2Seq(b) => b.target_tokens,
        }
    }

    /// Tokens the model reads, padding excluded (throughput).
    pub fn tokens(&self) -> usize {
        match self {
            MicroBatch::Causal(b) => b.segment_ids.iter().filter(|s| **s != 0).count(),
            MicroBatch::Seq2Seq(b) => b.tokens,
        }
    }
}
