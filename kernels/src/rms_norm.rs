//! RMS norm with a frozen weight (HF Llama semantics).
//!
//! Shapes: x [..., d], weight [d] → y [..., d] in x's dtype. Per row, in f32 (`c` = compute dtype):
//! Forward:  r = 1 / sqrt(mean(x²) + eps), n = x·r, y = cast(n → dtype(x)) · weight.
//! Backward: gn = dy · weight, dx = r · (gn − n · mean(gn · n)) (the cast is treated as identity).
//!           No gradient for weight (frozen).
//! Memory traffic: forward reads x, writes y (+ one copy of y); backward reads x and dy, writes dx.
//! The graph keeps only x (it recomputes r and n), not the f32 intermediates autograd would keep.

use candle_core::{bail, Result, Tensor, D};

use crate::{compute_dtype, cpu, custom_backward};

pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    crate::profile::forward("rms_norm", || {
        let d = x.dim(D::Minus1)?;
        if weight.dims() != [d] {
            bail!("rms_norm: weight {:?} != [{d}] for x {:?}", weight.dims(), x.dims())
        }
        let w = weight.detach().to_dtype(x.dtype())?;
        let xd = x.detach();
        if let Some(dev) = gpu::eligible(&xd) {
            let (xd, w) = (xd.contiguous()?, w.contiguous()?);
            let (y, rstd) = gpu::forward(&dev, &xd, &w, eps)?;
            return custom_backward::unary("rms_norm", x, y, move |dy| gpu::backward(&dev, &xd, &w, &rstd, dy));
        }
        if cpu::eligible(&[&xd, &w]) {
            let (xd, w) = (xd.contiguous()?, w.contiguous()?);
            let y = fused_cpu::forward(&xd, &w, eps)?;
            return custom_backward::unary("rms_norm", x, y, move |dy| fused_cpu::backward(&xd, &w, eps, dy));
        }
        let y = forward(&xd, &w, eps)?;
        custom_backward::unary("rms_norm", x, y, move |dy| backward(&xd, &w, eps, dy))
    })
}

/// (n, r): the normalised rows and 1/rms, both in the compute dtype.
fn normalise(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let xf = x.to_dtype(compute_dtype(x.dtype()))?;
    let r = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok((xf.broadcast_mul(&r)?, r))
}

fn forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let (n, _) = normalise(x, eps)?;
    n.to_dtype(x.dtype())?.broadcast_mul(w)
}

fn backward(x: &Tensor, w: &Tensor, eps: f64, dy: &Tensor) -> Result<Tensor> {
    let (n, r) = normalise(x, eps)?;
    let c = n.dtype();
    let gn = dy.to_dtype(c)?.broadcast_mul(&w.to_dtype(c)?)?;
    let dot = (&gn * &n)?.mean_keepdim(D::Minus1)?;
    let dx = (gn - n.broadcast_mul(&dot)?)?.broadcast_mul(&r)?;
    dx.to_dtype(x.dtype())
}

/// f32 on the CPU: one pass per row each way, rows spread over rayon's threads.
mod fused_cpu {
    use candle_core::{DType, Result, Tensor};
    use rayon::prelude::*;

    use crate::cpu::{self, vmath};
    use crate::custom_backward::Value;

    /// Rows per parallel piece.
    const ROWS: usize = 16;

    fn rstd(x: &[f32], eps: f64) -> f32 {
        (1.0 / ((vmath::dot(x, x) as f64 / x.len() as f64) + eps).sqrt()) as f32
    }

    pub fn forward(x: &Tensor, w: &Tensor, eps: f64) -> Result<Value> {
        let d = w.elem_count();
        let mut y = vec![0f32; x.elem_count()];
        cpu::read(x, |x| {
            cpu::read(w, |w| {
                y.par_chunks_mut(ROWS * d).zip(x.par_chunks(ROWS * d)).for_each(|(y, x)| {
                    for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                        let r = rstd(x, eps);
                        y.iter_mut().zip(x).zip(w).for_each(|((y, x), w)| *y = x * r * w);
                    }
                })
            })
        })??;
        Ok(Value::host(y, x.dims()))
    }

    /// dx = r·(gn − n·mean(gn·n)), gn = dy·w, n = x·r.
    pub fn backward(x: &Tensor, w: &Tensor, eps: f64, dy: &Tensor) -> Result<Tensor> {
        let d = w.elem_count();
        let mut dx = dy.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        cpu::read(x, |x| {
            cpu::read(w, |w| {
                dx.par_chunks_mut(ROWS * d).zip(x.par_chunks(ROWS * d)).for_each(|(dx, x)| {
                    let mut gn = vec![0f32; d];
                    for (dx, x) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                        let r = rstd(x, eps);
                        gn.iter_mut().zip(&*dx).zip(w).for_each(|((g, dy), w)| *g = dy * w);
                        let mean = vmath::dot(&gn, x) * r / d as f32;
                        dx.iter_mut().zip(&gn).zip(x).for_each(|((dx, g), x)| *dx = r * (g - x * r * mean));
                    }
                })
            })
        })??;
        cpu::tensor(dx, x.dims())
    }
}

/// Fused kernels (`cuda/rms_norm.cu`): bf16 on CUDA; the forward also saves 1/rms per row.
mod gpu {
    use candle_core::{DType, Result, Tensor, D};

    use crate::launch::{self, Arg, Gpu};

    pub fn eligible(x: &Tensor) -> Option<Gpu> {
        Gpu::of(x).filter(|_| x.dtype() == DType::BF16)
    }

    fn rows(x: &Tensor) -> Result<(usize, usize)> {
        let d = x.dim(D::Minus1)?;
        Ok((x.elem_count() / d.max(1), d))
    }

    pub fn forward(dev: &Gpu, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let (rows, d) = rows(x)?;
        let y = dev.output(x.shape(), DType::BF16)?;
        let rstd = dev.output(rows, DType::F32)?;
        let args = [
            Arg::Buf(launch::buf(x)?),
            Arg::Buf(launch::buf(w)?),
            Arg::Buf(launch::buf(&y)?),
            Arg::Buf(launch::buf(&rstd)?),
            Arg::I32(rows as i32),
            Arg::I32(d as i32),
            Arg::F32(eps as f32),
        ];
        dev.launch(&launch::rms_norm::OXT_RMS_NORM_FWD_BF16, (rows as u32, 1, 1), 0, &args)?;
        Ok((y, rstd))
    }

    pub fn backward(dev: &Gpu, x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let (rows, d) = rows(x)?;
        let dy = dy.to_dtype(DType::BF16)?.contiguous()?;
        let dx = dev.output(x.shape(), DType::BF16)?;
        let args = [
            Arg::Buf(launch::buf(x)?),
            Arg::Buf(launch::buf(w)?),
            Arg::Buf(launch::buf(&dy)?),
            Arg::Buf(launch::buf(rstd)?),
            Arg::Buf(launch::buf(&dx)?),
            Arg::I32(rows as i32),
            Arg::I32(d as i32),
        ];
        dev.launch(&launch::rms_norm::OXT_RMS_NORM_BWD_BF16, (rows as u32, 1, 1), 0, &args)?;
        Ok(dx)
    }
}
