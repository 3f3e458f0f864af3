//! Data parallelism: the collective the training loops reduce their gradients with. Every rank
//! computes the gradient of its share of a step's micro-batches (each normalised by the target
//! tokens of the whole step over all ranks), the shares are summed over the ranks in one flat
//! buffer — so the reduced gradient is the whole step's, as one rank with every micro-batch would
//! compute it — and every rank applies the same optimizer step to the same numbers.
//!
//! [`Collective`] is the seam: [`Solo`] for one rank, [`threads::ThreadGroup`] for ranks that are
//! threads of one process (tests and CPU runs: sums in rank order, so results reproduce bit for
//! bit), and NCCL on GPUs.

pub mod tcp;
pub mod threads;
pub mod topology;
pub mod worker;

use candle_core::{DType, Tensor, Var};

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A rank failed or left: the others stop instead of waiting for it.
    #[error("rank {rank} failed: {reason}")]
    PeerFailed { rank: usize, reason: String },
    #[error("rank {rank} reduced {got} values where rank 0 reduced {want}: the ranks disagree about the step")]
    Mismatch { rank: usize, got: usize, want: usize },
    /// The ranks could not find each other.
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    #[error("{0}")]
    Protocol(String),
    /// The ranks' adapters differ: a bug (every rank must apply the same step to the same numbers).
    #[error("the ranks' adapters differ after step {step} (checksums {sums:?} by rank)")]
    Replicas { step: u64, sums: Vec<u64> },
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

/// One rank's view of the group it trains in.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Sums `buf` elementwise over all ranks, in place; every rank gets the same bits.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), DistError>;
    /// Tells the other ranks this one failed, so none waits for it in a collective.
    fn abort(&self, reason: &str);
}

/// A single rank: nothing to reduce.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }

    fn abort(&self, _reason: &str) {}
}

/// Sums a step's gradients (one per var, in var order; a var without one counts zeros) and the
/// `scalars` (loss, tokens, a stop vote…) over the ranks in one collective call.
pub fn reduce_step(
    c: &dyn Collective,
    grads: &mut Vec<Tensor>,
    vars: &[Var],
    scalars: &mut [f64],
) -> Result<(), DistError> {
    let mut flat: Vec<f32> = Vec::new();
    for (i, v) in vars.iter().enumerate() {
        match grads.get(i) {
            Some(g) => flat.extend(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => flat.extend(std::iter::repeat_n(0f32, v.elem_count())),
        }
    }
    flat.extend(scalars.iter().map(|&s| s as f32));
    c.all_reduce_sum(&mut flat)?;
    let mut at = 0;
    let mut out = Vec::with_capacity(vars.len());
    for v in vars {
        let n = v.elem_count();
        let t = Tensor::from_slice(&flat[at..at + n], v.shape(), v.device())?.to_dtype(v.dtype())?;
        out.push(t);
        at += n;
    }
    for (s, r) in scalars.iter_mut().zip(&flat[at..]) {
        *s = f64::from(*r);
    }
    *grads = out;
    Ok(())
}

/// Checks that every rank holds the same adapter bits (debug builds call it at every save): each
/// rank puts a checksum of its vars into its own slot, one all-reduce gathers them.
pub fn check_replicas(c: &dyn Collective, vars: &[Var], step: u64) -> Result<(), DistError> {
    let mut sum: u64 = 0xcbf2_9ce4_8422_2325;
    for v in vars {
        for x in v.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? {
            sum = (sum ^ u64::from(x.to_bits())).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // Four 16-bit pieces per rank: whole numbers below 2^24 travel through f32 sums exactly.
    let mut slots = vec![0f32; 4 * c.world()];
    for i in 0..4 {
        slots[4 * c.rank() + i] = ((sum >> (16 * i)) & 0xffff) as f32;
    }
    c.all_reduce_sum(&mut slots)?;
    let sums: Vec<u64> =
        slots.chunks(4).map(|p| p.iter().enumerate().map(|(i, x)| (*x as u64) << (16 * i)).sum()).collect();
    match sums.iter().all(|s| *s == sum) {
        true => Ok(()),
        false => Err(DistError::Replicas { step, sums }),
    }
}

/// Every rank's `local` values, in rank order (ranks may hold different counts): one collective
/// for the counts, one for the values, each rank's at its own offset (sums with zeros are exact).
pub fn all_gather(c: &dyn Collective, local: &[f32]) -> Result<Vec<Vec<f32>>, DistError> {
    let mut counts = vec![0f32; c.world()];
    counts[c.rank()] = local.len() as f32;
    c.all_reduce_sum(&mut counts)?;
    let counts: Vec<usize> = counts.iter().map(|n| *n as usize).collect();
    let at: usize = counts[..c.rank()].iter().sum();
    let mut all = vec![0f32; counts.iter().sum()];
    all[at..at + local.len()].copy_from_slice(local);
    c.all_reduce_sum(&mut all)?;
    let mut out = Vec::with_capacity(counts.len());
    let mut from = 0;
    for n in counts {
        out.push(all[from..from + n].to_vec());
        from += n;
    }
    Ok(out)
}
