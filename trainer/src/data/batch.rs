//! Batching (causal shift, packing or length-grouped padding) and the validation split.

use super::Example;
use crate::rng::SplitMix64;

/// One micro-batch, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<u32>,
    /// The next token of every position (0 on padding).
    pub targets: Vec<u32>,
    /// 1.0 where the target counts in the loss.
    pub target_mask: Vec<f32>,
    /// Position ids; restart at 0 for every sample (0 on padding).
    pub positions: Vec<u32>,
    /// 1, 2, … per sample within a row; 0 = padding. Attention stays within a segment.
    pub segment_ids: Vec<u32>,
    /// Number of positions with target_mask 1.
    pub target_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpec {
    /// Rows per batch.
    pub batch_size: usize,
    pub max_seq_length: usize,
    /// Pack several samples per row (rows are exactly `max_seq_length` long).
    pub packing: bool,
    pub pad_id: u32,
}

/// A sample after the causal shift: inputs x[0..n-1], targets x[1..n], mask loss_mask[1..n].
struct Shifted<'a> {
    inputs: &'a [u32],
    targets: &'a [u32],
    mask: &'a [u8],
}

impl<'a> Shifted<'a> {
    /// `None` for samples with fewer than 2 tokens; longer than `max` positions are cut.
    fn new(ex: &'a Example, max: usize) -> Option<Shifted<'a>> {
        let n = ex.input_ids.len().min(ex.loss_mask.len());
        if n < 2 {
            return None;
        }
        let m = (n - 1).min(max);
        Some(Shifted { inputs: &ex.input_ids[..m], targets: &ex.input_ids[1..=m], mask: &ex.loss_mask[1..=m] })
    }

    fn len(&self) -> usize {
        self.inputs.len()
    }
}

/// Rows under construction: each row is a list of samples laid out left to right.
fn build(rows: &[Vec<&Shifted>], seq: usize, pad_id: u32) -> Batch {
    let n = rows.len() * seq;
    let mut b = Batch {
        batch: rows.len(),
        seq,
        input_ids: vec![pad_id; n],
        targets: vec![0; n],
        target_mask: vec![0.0; n],
        positions: vec![0; n],
        segment_ids: vec![0; n],
        target_tokens: 0,
    };
    for (r, row) in rows.iter().enumerate() {
        let mut at = r * seq;
        for (s, sample) in row.iter().enumerate() {
            for i in 0..sample.len() {
                b.input_ids[at + i] = sample.inputs[i];
                b.targets[at + i] = sample.targets[i];
                let m = sample.mask[i] != 0;
                b.target_mask[at + i] = if m { 1.0 } else { 0.0 };
                b.target_tokens += usize::from(m);
                b.positions[at + i] = i as u32;
                b.segment_ids[at + i] = s as u32 + 1;
            }
            at += sample.len();
        }
    }
    b
}

/// Cut examples (taken in `order`) into batches. Deterministic given `order`.
///
/// * `packing = true`: rows of exactly `max_seq_length` positions are filled greedily in
///   order (next-fit): a sample that does not fit in the current row starts a new one, so a
///   sample is never split across rows; each sample keeps its own positions (from 0) and segment
///   id; the rest of a row is padding. `batch_size` rows per batch (the last may have fewer).
/// * `packing = false`: within consecutive windows of `64 * batch_size` indices of `order`,
///   samples are sorted by length (longest first, stable), cut into batches of `batch_size`
///   and each batch is padded to its longest sample; windows stay in order.
///
/// Samples with fewer than 2 tokens are skipped; samples longer than `max_seq_length`
/// positions (after the shift) are cut to it.
pub fn make_batches(examples: &[Example], order: &[usize], spec: &BatchSpec) -> Vec<Batch> {
    let max = spec.max_seq_length.max(1);
    let bs = spec.batch_size.max(1);
    let samples: Vec<Shifted> =
        order.iter().filter_map(|&i| examples.get(i)).filter_map(|ex| Shifted::new(ex, max)).collect();
    let mut out = Vec::new();
    if spec.packing {
        let mut rows: Vec<Vec<&Shifted>> = Vec::new();
        let mut current: Vec<&Shifted> = Vec::new();
        let mut used = 0;
        for s in &samples {
            if used + s.len() > max && !current.is_empty() {
                rows.push(std::mem::take(&mut current));
                used = 0;
            }
            used += s.len();
            current.push(s);
        }
        if !current.is_empty() {
            rows.push(current);
        }
        for chunk in rows.chunks(bs) {
            out.push(build(chunk, max, spec.pad_id));
        }
    } else {
        for window in samples.chunks(64 * bs) {
            let mut sorted: Vec<&Shifted> = window.iter().collect();
            sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
            for chunk in sorted.chunks(bs) {
                let seq = chunk.iter().map(|s| s.len()).max().unwrap_or(0);
                let rows: Vec<Vec<&Shifted>> = chunk.iter().map(|s| vec![*s]).collect();
                out.push(build(&rows, seq, spec.pad_id));
            }
        }
    }
    out
}

/// Uniform index below `n` from 53 random bits.
fn below(rng: &mut SplitMix64, n: usize) -> usize {
    (((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) * n as f64) as usize % n.max(1)
}

/// Hold out `round(fraction * n)` examples (at least 1 when `fraction > 0` and there are at
/// least 2 examples; never all of them), chosen by a seeded shuffle. Returns
/// `(train, validation)`, both in their original order. Deterministic in `seed`.
pub fn split_validation<T>(examples: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = examples.len();
    if fraction.is_nan() || fraction <= 0.0 || n < 2 {
        return (examples, vec![]);
    }
    let n_val = ((fraction.min(1.0) * n as f64).round() as usize).clamp(1, n - 1);
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(seed ^ 0x7661_6C69_6461_7465); // "validate"
    for i in (1..n).rev() {
        let j = below(&mut rng, i + 1);
        idx.swap(i, j);
    }
    let mut is_val = vec![false; n];
    for &i in &idx[..n_val] {
        is_val[i] = true;
    }
    let (mut train, mut val) = (Vec::with_capacity(n - n_val), Vec::with_capacity(n_val));
    for (i, ex) in examples.into_iter().enumerate() {
        if is_val[i] {
            val.push(ex);
        } else {
            train.push(ex);
        }
    }
    (train, val)
}
