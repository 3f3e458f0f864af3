//! Chunked lm_head + log-softmax at the targets, without ever holding the full logits.
//!
//! Shapes: h [n, d], w [v, d] (frozen lm_head), targets [n] u32 → logp [n] f32 (f64 for f64 h).
//! Per chunk of at most `chunk_rows` rows (z = h wᵀ in w's dtype, then f32):
//! Forward:  lse_i = m_i + ln Σ_j exp(z_ij − m_i) (m_i = max_j z_ij), logp_i = z_{i,t_i} − lse_i.
//! Backward: dz_i = g_i · (onehot(t_i) − p_i), dh = dz w = g_i · (w_{t_i} − u_i), u_i = Σ_j p_ij w_j.
//!           No gradient for w (frozen).
//! CPU: g is a per-row scalar, so the forward computes u = p w (one GEMM, while p exists) when h needs
//! a gradient, and the backward is a gather and a row scale: two head GEMMs per step, as an
//! unfused lm_head + cross-entropy has, where recomputing the logits in the backward took three.
//! CUDA (bf16): the forward saves lse [n]; the backward recomputes each chunk's logits and turns them
//! into dz in place (a fused kernel), then dh = dz w.
//! Memory: at most a few chunk_rows × v buffers live at once; the graph keeps h, w, targets and u
//! [n, d] (CPU) or lse [n] (CUDA), never n × v logits.

use candle_core::{bail, DType, Result, Tensor, D};

use crate::{compute_dtype, custom_backward};

pub fn linear_log_probs(h: &Tensor, w: &Tensor, targets: &Tensor, chunk_rows: usize) -> Result<Tensor> {
    crate::profile::forward("linear_log_probs", || {
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
        let (logp, u) = if fused_cpu::eligible(&head) {
            fused_cpu::forward(&head, h.track_op())?
        } else {
            head.forward(h.track_op())?
        };
        let Some(u) = u else { return Ok(logp) };
        custom_backward::unary("linear_log_probs", &h, logp, move |g| head.backward(&u, g))
    })
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

    /// (logp [n], u [n, d] when `grad`): u_i = Σ_j p_ij w_j, the softmax-weighted head row, made
    /// from each chunk's probabilities while they exist, so the backward needs no logits at all.
    fn forward(&self, grad: bool) -> Result<(Tensor, Option<Tensor>)> {
        let (mut logps, mut us) = (Vec::new(), Vec::new());
        for (start, len) in self.chunks()? {
            let z = self.logits(start, len)?;
            let m = z.max_keepdim(D::Minus1)?;
            let e = z.broadcast_sub(&m)?.exp()?;
            let sum = e.sum_keepdim(D::Minus1)?;
            let lse = (sum.log()? + m)?;
            let z_t = z.gather(&self.targets(start, len)?, D::Minus1)?;
            drop(z);
            logps.push((z_t - &lse)?.squeeze(1)?);
            if grad {
                let p = e.broadcast_div(&sum)?.to_dtype(self.w.dtype())?;
                drop(e);
                us.push(p.matmul(&self.w)?.to_dtype(self.compute_dtype())?);
            }
        }
        let u = if grad { Some(Tensor::cat(&us, 0)?) } else { None };
        Ok((Tensor::cat(&logps, 0)?, u))
    }

    /// dh_i = g_i · Σ_j (onehot(t_i) − p_ij) w_j = g_i · (w_{t_i} − u_i).
    fn backward(&self, u: &Tensor, g: &Tensor) -> Result<Tensor> {
        let c = self.compute_dtype();
        let w_t = self.w.index_select(&self.targets, 0)?.to_dtype(c)?;
        let g = g.to_dtype(c)?.reshape((u.dim(0)?, 1))?;
        (w_t - u)?.broadcast_mul(&g)?.to_dtype(self.w.dtype())
    }
}

/// f32 on the CPU: one logits buffer for every chunk, each row's softmax in place on rayon's threads
/// (max, exp and sum in one pass), and u = p w straight from that buffer.
mod fused_cpu {
    use candle_core::{bail, DType, Result, Tensor};
    use rayon::prelude::*;

    use super::ChunkedHead;
    use crate::cpu::{self, vmath, Mat};

    pub fn eligible(head: &ChunkedHead) -> bool {
        cpu::eligible(&[&head.h, &head.w])
    }

    /// As [`ChunkedHead::forward`].
    pub fn forward(head: &ChunkedHead, grad: bool) -> Result<(Tensor, Option<Tensor>)> {
        let (n, d) = head.h.dims2()?;
        let v = head.w.dim(0)?;
        let targets = head.targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
            bail!("linear_log_probs: target id {t} is outside the head's {v} rows")
        }
        let mut z = vec![0f32; head.chunk_rows.min(n) * v];
        let mut logp = vec![0f32; n];
        let mut u = vec![0f32; if grad { n * d } else { 0 }];
        cpu::read(&head.h, |h| {
            cpu::read(&head.w, |w| -> Result<()> {
                for (start, len) in head.chunks()? {
                    let z = &mut z[..len * v];
                    let h = Mat::rows(&h[start * d..(start + len) * d], len, d);
                    cpu::matmul(z, v, h, Mat::rows(w, v, d).t(), 1.0, false, true)?;
                    let rows = z.par_chunks_mut(v).zip(&mut logp[start..start + len]).zip(&targets[start..start + len]);
                    rows.for_each(|((row, logp), &t)| {
                        let m = vmath::max(row);
                        let z_t = row[t as usize];
                        let sum = vmath::exp_shifted(row, m);
                        *logp = z_t - (m + sum.ln());
                        if grad {
                            vmath::scale(row, 1.0 / sum);
                        }
                    });
                    if grad {
                        let u = &mut u[start * d..(start + len) * d];
                        cpu::matmul(u, d, Mat::rows(z, len, v), Mat::rows(w, v, d), 1.0, false, true)?;
                    }
                }
                Ok(())
            })
        })???;
        let u = if grad { Some(cpu::tensor(u, &[n, d])?) } else { None };
        Ok((cpu::tensor(logp, &[n])?, u))
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
