//! Data parallelism: the collective the training loops reduce their gradients with. Every rank
//! computes the gradient of its share of a step's micro-batches (each normalised by the target
//! tokens of the whole step over all ranks), the shares are summed over the ranks in one flat
//! buffer — so the reduced gradient is the whole step's, as one rank with every micro-batch would
//! compute it — and every rank applies the same optimizer step to the same numbers.
//!
//! [`Collective`] is the seam: [`Solo`] for one rank, [`threads::ThreadGroup`] for ranks that are
//! threads of one process (tests and CPU runs: sums in rank order, so results reproduce bit for
//! bit), [`tcp::TcpGroup`] for ranks that are processes, and [`nccl::NcclGroup`] on GPUs.

#[cfg(feature = "cuda")]
pub mod nccl;
pub mod nccl_env;
pub mod tcp;
pub mod threads;
pub mod topology;
pub mod worker;

use candle_core::{DType, Device, Tensor, Var};

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
    /// [`Collective::all_reduce_sum`] of a flat f32 tensor, wherever it lives: through host memory
    /// here; NCCL sums a GPU tensor on its device.
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor, DistError> {
        all_reduce_via_host(self, t)
    }
}

/// An all-reduce of a tensor through a host buffer (what every collective but NCCL does).
pub fn all_reduce_via_host<C: Collective + ?Sized>(c: &C, t: &Tensor) -> Result<Tensor, DistError> {
    let mut buf = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    c.all_reduce_sum(&mut buf)?;
    Ok(Tensor::from_vec(buf, t.shape(), t.device())?)
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

/// The collective of a worker's ranks on `device`: NCCL over the TCP group on a GPU, the TCP
/// group itself on the CPU.
pub fn for_device(tcp: tcp::TcpGroup, device: &Device) -> Result<Box<dyn Collective>, DistError> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => Ok(Box::new(nccl::NcclGroup::new(tcp, d)?)),
        _ => Ok(Box::new(tcp)),
    }
}

/// Sums a step's gradients (one per var, in var order; a var without one counts zeros) and the
/// `scalars` (loss, tokens, a stop vote…) over the ranks in one collective call.
pub fn reduce_step(
    c: &dyn Collective,
    grads: &mut Vec<Tensor>,
    vars: &[Var],
    scalars: &mut [f64],
) -> Result<(), DistError> {
    let device = vars.first().map_or(Device::Cpu, |v| v.device().clone());
    let mut parts = Vec::with_capacity(vars.len() + 1);
    for (i, v) in vars.iter().enumerate() {
        parts.push(match grads.get(i) {
            Some(g) => g.flatten_all()?.to_dtype(DType::F32)?,
            None => Tensor::zeros(v.elem_count(), DType::F32, &device)?,
        });
    }
    let values: Vec<f32> = scalars.iter().map(|&s| s as f32).collect();
    parts.push(Tensor::from_vec(values, scalars.len(), &device)?);
    let sum = c.all_reduce_tensor(&Tensor::cat(&parts, 0)?)?;
    let mut at = 0;
    let mut out = Vec::with_capacity(vars.len());
    for v in vars {
        let n = v.elem_count();
        out.push(sum.narrow(0, at, n)?.reshape(v.shape())?.to_dtype(v.dtype())?);
        at += n;
    }
    let reduced = sum.narrow(0, at, scalars.len())?.to_vec1::<f32>()?;
    for (s, r) in scalars.iter_mut().zip(reduced) {
        *s = f64::from(r);
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
