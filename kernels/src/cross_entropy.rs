//! Chunked lm_head + log-softmax at the targets, without ever holding the full logits.
//!
//! Shapes: h [n, d], w [v, d] (frozen lm_head), targets [n] u32 → logp [n] f32 (f64 for f64 h).
//! Per chunk of at most `chunk_rows` rows (z = h wᵀ in w's dtype, then f32):
//! Forward:  lse_i = m_i + ln Σ_j exp(z_ij − m_i) (m_i = max_j z_ij), logp_i = z_{i,t_i} − lse_i.
//! Backward: recompute the chunk's z, p = exp(z − lse) (lse saved from the forward),
//!           dz_i = g_i · (onehot(t_i) − p_i), dh = dz w. No gradient for w (frozen).
//! Memory: at most a few chunk_rows × v buffers live at once, forward and backward; the graph keeps
//! h, w, targets and lse [n]. Traffic: w is read once per chunk in the forward and twice per chunk in
//! the backward (recompute + dh); that re-read is the price of never storing n × v logits.

use candle_core::{bail, DType, Result, Tensor, D};

use crate::{compute_dtype, custom_backward};

pub fn linear_log_probs(h: &Tensor, w: &Tensor, targets: &Tensor, chunk_rows: usize) -> Result<Tensor> {
    let (n, d) = h.dims2()?;
    let (_v, dw) = w.dims2()?;
    if d != dw || targets.dims() != [n] || targets.dtype().is_float() || chunk_rows == 0 {
        bail!(
            "linear_log_probs: h {:?}, w {:?}, targets {:?} {:?}, chunk_rows {chunk_rows}",
            h.dims(),
            w.dims(),
            targets.dims(),
            targets.dtype()
        )
    }
    if n == 0 {
        return Tensor::zeros(0, compute_dtype(w.dtype()), h.device());
    }
    let h = if h.dtype() == w.dtype() { h.clone() } else { h.to_dtype(w.dtype())? };
    let head = ChunkedHead { h: h.detach(), w: w.detach(), targets: targets.detach(), chunk_rows };
    if let Some(dev) = gpu::eligible(&head) {
        let head = gpu::Head { dev, head: head.contiguous()? };
        let (logp, lse) = head.forward()?;
        return custom_backward::unary("linear_log_probs", &h, logp, move |g| head.backward(&lse, g));
    }
    let (logp, lse) = head.forward()?;
    custom_backward::unary("linear_log_probs", &h, logp, move |g| head.backward(&lse, g))
}

struct ChunkedHead {
    h: Tensor,
    w: Tensor,
    targets: Tensor,
    chunk_rows: usize,
}

impl ChunkedHead {
    fn compute_dtype(&self) -> DType {
        compute_dtype(self.w.dtype())
    }

    /// (start, len) of each row chunk.
    fn chunks(&self) -> Result<impl Iterator<Item = (usize, usize)>> {
        let (n, step) = (self.h.dim(0)?, self.chunk_rows);
        Ok((0..n).step_by(step).map(move |s| (s, step.min(n - s))))
    }

    /// Logits of rows [start, start + len) in the compute dtype: [len, v].
    fn logits(&self, start: usize, len: usize) -> Result<Tensor> {
        self.h.narrow(0, start, len)?.matmul(&self.w.t()?)?.to_dtype(self.compute_dtype())
    }

    fn targets(&self, start: usize, len: usize) -> Result<Tensor> {
        self.targets.narrow(0, start, len)?.reshape((len, 1))
    }

    /// (logp [n], lse [n, 1]).
    fn forward(&self) -> Result<(Tensor, Tensor)> {
        let (mut logps, mut lses) = (Vec::new(), Vec::new());
        for (start, len) in self.chunks()? {
            let z = self.logits(start, len)?;
            let m = z.max_keepdim(D::Minus1)?;
            let sum = z.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?;
            let lse = (sum.log()? + m)?;
            let z_t = z.gather(&self.targets(start, len)?, D::Minus1)?;
            logps.push((z_t - &lse)?.squeeze(1)?);
            lses.push(lse);
        }
        Ok((Tensor::cat(&logps, 0)?, Tensor::cat(&lses, 0)?))
    }

    fn backward(&self, lse: &Tensor, g: &Tensor) -> Result<Tensor> {
        let mut dh = Vec::new();
        for (start, len) in self.chunks()? {
            let z = self.logits(start, len)?;
            let p = z.broadcast_sub(&lse.narrow(0, start, len)?)?.exp()?;
            drop(z);
            let g = g.narrow(0, start, len)?.to_dtype(p.dtype())?.reshape((len, 1))?;
            // dz = g·(onehot − p): −g·p everywhere, then +g at the target, in place.
            let dz = p.broadcast_mul(&g.neg()?)?;
            drop(p);
            dz.scatter_add_set(&self.targets(start, len)?, &g, D::Minus1)?;
            dh.push(dz.to_dtype(self.w.dtype())?.matmul(&self.w)?);
        }
        Tensor::cat(&dh, 0)
    }
}

/// Fused softmax-CE over each cuBLAS-computed logits chunk (`cuda/cross_entropy.cu`): bf16 on CUDA.
/// The logits chunk is the only [rows, v] buffer; the backward overwrites it with dz in place.
mod gpu {
    use candle_core::{DType, Result, Tensor};

    use super::ChunkedHead;
    use crate::launch::{self, Arg, Gpu};

    pub fn eligible(head: &ChunkedHead) -> Option<Gpu> {
        Gpu::of(&head.h).filter(|_| head.w.dtype() == DType::BF16)
    }

    impl ChunkedHead {
        pub(super) fn contiguous(self) -> Result<Self> {
            Ok(Self {
                h: self.h.contiguous()?,
                w: self.w.contiguous()?,
                targets: self.targets.to_dtype(DType::U32)?.contiguous()?,
                chunk_rows: self.chunk_rows,
            })
        }
    }

    pub struct Head {
        pub dev: Gpu,
        pub head: ChunkedHead,
    }

    impl Head {
        /// bf16 logits [len, v] of one row chunk (cuBLAS).
        fn logits(&self, start: usize, len: usize) -> Result<Tensor> {
            self.head.h.narrow(0, start, len)?.matmul(&self.head.w.t()?)?.contiguous()
        }

        fn targets(&self, start: usize, len: usize) -> Result<Tensor> {
            self.head.targets.narrow(0, start, len)?.contiguous()
        }

        /// (logp [n] f32, lse [n] f32).
        pub fn forward(&self) -> Result<(Tensor, Tensor)> {
            let (mut logps, mut lses) = (Vec::new(), Vec::new());
            for (start, len) in self.head.chunks()? {
                let z = self.logits(start, len)?;
                let v = z.dim(1)?;
                let (logp, lse) = (self.dev.output(len, DType::F32)?, self.dev.output(len, DType::F32)?);
                let t = self.targets(start, len)?;
                let args = [
                    Arg::Buf(launch::buf(&z)?),
                    Arg::Buf(launch::buf(&t)?),
                    Arg::Buf(launch::buf(&logp)?),
                    Arg::Buf(launch::buf(&lse)?),
                    Arg::I32(len as i32),
                    Arg::I32(v as i32),
                ];
                self.dev.launch(&launch::cross_entropy::OXT_CE_FWD_BF16, (len as u32, 1, 1), 0, &args)?;
                logps.push(logp);
                lses.push(lse);
            }
            Ok((Tensor::cat(&logps, 0)?, Tensor::cat(&lses, 0)?))
        }

        pub fn backward(&self, lse: &Tensor, g: &Tensor) -> Result<Tensor> {
            let g = g.to_dtype(DType::F32)?.contiguous()?;
            let mut dh = Vec::new();
            for (start, len) in self.head.chunks()? {
                let z = self.logits(start, len)?;
                let v = z.dim(1)?;
                let (t, lse_c, g_c) = (self.targets(start, len)?, lse.narrow(0, start, len)?, g.narrow(0, start, len)?);
                let args = [
                    Arg::Buf(launch::buf(&z)?),
                    Arg::Buf(launch::buf(&t)?),
                    Arg::Buf(launch::buf(&lse_c)?),
                    Arg::Buf(launch::buf(&g_c)?),
                    Arg::I32(len as i32),
                    Arg::I32(v as i32),
                ];
                // In place: z becomes dz.
                self.dev.launch(&launch::cross_entropy::OXT_CE_BWD_BF16, (len as u32, 1, 1), 0, &args)?;
                dh.push(z.matmul(&self.head.w)?);
            }
            Tensor::cat(&dh, 0)
        }
    }
}
